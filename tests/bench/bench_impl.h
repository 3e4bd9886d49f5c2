/* bench_impl.h: what the benchmark files share: options, the timer, the peak and the report. */
#ifndef CF_BENCH_IMPL_H
#define CF_BENCH_IMPL_H

#include <stdbool.h>

#include "cincflow.h"

typedef struct bench_opts {
    bool json;          /* one JSON object per line */
    int threads;        /* OpenMP threads for the fast kernels */
    int repeats;        /* timed repeats per case (at least; more while under min_seconds) */
    double min_seconds; /* keep repeating until this much time was measured */
    const char *filter; /* run only cases whose name contains it, or NULL */
    bool reference;     /* time the reference kernels too (for the ratio) */
    double peak;        /* single-core fp32 FMA peak, GFLOP/s, measured at start */
} bench_opts;

/* One measured case. */
typedef struct bench_result {
    const char *name;
    char shape[96];
    double median_s, min_s;
    int repeats;
    double flops;       /* floating-point operations of one run */
    double ref_s;       /* estimated reference time of one full run, or 0 when not measured */
    char ref_note[64];  /* how ref_s was obtained ("same shape", "batch 1, scaled x64") */
} bench_result;

/* Seconds on a monotonic clock. */
double bench_now(void);
/* Median of n values (sorts them). */
double bench_median(double *v, int n);
/* The single-core peak of an FMA loop for the kernel path in use (AVX-512 or AVX2 intrinsics,
 * or scalar on the generic path), GFLOP/s; *isa names the loop. */
double bench_fma_peak(const char **isa);
/* "avx512, libxsmm skx": the kernel path in use and libxsmm's target, for every report line.
 * Static string. */
const char *bench_path(void);
/* Prints a result (text or JSON, per opts). */
void bench_report(const bench_opts *o, const bench_result *r);
/* True when the case should run under --filter. */
bool bench_selected(const bench_opts *o, const char *name);

int bench_conv(const bench_opts *o);
int bench_inverse(const bench_opts *o);
int bench_train(const bench_opts *o);
int bench_sample(const bench_opts *o);

#endif
