/* bench_main.c: `cincflow bench`: flags, the FMA peak, timing helpers and the report lines.
 *
 * Not here: the cases (bench_conv.c, bench_inverse.c, bench_model.c).
 */
#include <errno.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxsmm.h>

#include "bench_impl.h"
#include "cf_cpu.h"
#include "cf_bench.h"

double bench_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- the FMA peak ----------------------------------------------------------------------- */

/* Runs `iters` rounds of 12 independent FMA chains (named registers, so nothing spills;
 * 12 covers latency x throughput on current cores) and returns GFLOP/s. The accumulators are
 * summed into *sink so the loop is not optimised away. One version per kernel path, compiled
 * for it with GCC's target attribute, so the peak follows the path that runs (cf_cpu.h). */
#define PEAK_CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define PEAK_LOOP(NAME, TARGET, VEC, LANES, SET1)                                              \
    __attribute__((target(TARGET))) static double NAME(long iters, float *sink)                \
    {                                                                                          \
        const VEC a = SET1(0.999999f), b = SET1(1e-7f);                                        \
        PEAK_CHAINS(DECL_##LANES)                                                              \
        const double t0 = bench_now();                                                         \
        for (long it = 0; it < iters; it++) {                                                  \
            PEAK_CHAINS(STEP_##LANES)                                                          \
            __asm__ volatile("" ::: "memory");                                                 \
        }                                                                                      \
        const double dt = bench_now() - t0;                                                    \
        VEC s = acc0;                                                                          \
        PEAK_CHAINS(SUM_##LANES)                                                               \
        float out[LANES];                                                                      \
        memcpy(out, &s, sizeof out);                                                           \
        for (int i = 0; i < LANES; i++) *sink += out[i];                                       \
        return (double)iters * 12 * LANES * 2 / dt * 1e-9;                                     \
    }
#define DECL_16(i) __m512 acc##i = _mm512_set1_ps((float)(i));
#define DECL_8(i) __m256 acc##i = _mm256_set1_ps((float)(i));
#define STEP_16(i) acc##i = _mm512_fmadd_ps(acc##i, a, b);
#define STEP_8(i) acc##i = _mm256_fmadd_ps(acc##i, a, b);
#define SUM_16(i) s = _mm512_add_ps(s, acc##i);
#define SUM_8(i) s = _mm256_add_ps(s, acc##i);
#if defined(__x86_64__) || defined(__i386__)
PEAK_LOOP(fma_loop_avx512, "avx512f,fma", __m512, 16, _mm512_set1_ps)
PEAK_LOOP(fma_loop_avx2, "avx2,fma", __m256, 8, _mm256_set1_ps)
#endif

static double fma_loop_scalar(long iters, float *sink)
{
    float acc[12];
    for (int i = 0; i < 12; i++) acc[i] = (float)i;
    const double t0 = bench_now();
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++) acc[i] = acc[i] * 0.999999f + 1e-7f;
    const double dt = bench_now() - t0;
    for (int i = 0; i < 12; i++) *sink += acc[i];
    return (double)iters * 12 * 2 / dt * 1e-9;
}

double bench_fma_peak(const char **isa)
{
    double (*fma_loop)(long, float *) = fma_loop_scalar;
    *isa = "scalar (generic path)";
#if defined(__x86_64__) || defined(__i386__)
    if (cf_cpu_isa() == CF_ISA_AVX512) fma_loop = fma_loop_avx512, *isa = "AVX-512";
    if (cf_cpu_isa() == CF_ISA_AVX2) fma_loop = fma_loop_avx2, *isa = "AVX2";
#endif
    float sink = 0;
    double best = 0;
    fma_loop(1000000, &sink); /* warm-up: clocks up, caches the code */
    for (int r = 0; r < 7; r++) {
        const double g = fma_loop(20000000, &sink);
        if (g > best) best = g;
    }
    if (sink == 12345.0f) fprintf(stderr, " "); /* keeps sink alive */
    return best;
}

const char *bench_path(void)
{
    static char buf[64];
    if (!buf[0])
        snprintf(buf, sizeof buf, "%s, libxsmm %s", cf_isa_name(cf_cpu_isa()),
                 libxsmm_get_target_arch());
    return buf;
}

/* ---- reporting ---------------------------------------------------------------------------- */

/* --filter TEXT selects the cases whose name contains TEXT; a trailing '$' anchors it at the
 * end of the name (so "train_fashion_b64$" selects that case and not its _recompute twin). */
bool bench_selected(const bench_opts *o, const char *name)
{
    if (!o->filter) return true;
    size_t n = strlen(o->filter);
    if (n > 0 && o->filter[n - 1] == '$') {
        size_t len = strlen(name);
        return len >= n - 1 && strncmp(name + len - (n - 1), o->filter, n - 1) == 0;
    }
    return strstr(name, o->filter) != NULL;
}

void bench_report(const bench_opts *o, const bench_result *r)
{
    const double gflops = r->flops / r->median_s * 1e-9;
    const double frac = gflops / (o->peak * o->threads);
    const double ratio = r->ref_s > 0 ? r->ref_s / r->median_s : 0;
    if (o->json) {
        printf("{\"name\": \"%s\", \"shape\": \"%s\", \"threads\": %d, \"median_s\": %.6g, "
               "\"min_s\": %.6g, \"repeats\": %d, \"gflops\": %.4g, \"peak_fraction\": %.4f, "
               "\"peak_gflops\": %.4g, \"isa\": \"%s\", \"xsmm_target\": \"%s\"",
               r->name, r->shape, o->threads, r->median_s, r->min_s, r->repeats, gflops, frac,
               o->peak * o->threads, cf_isa_name(cf_cpu_isa()), libxsmm_get_target_arch());
        if (ratio > 0)
            printf(", \"ref_ratio\": %.4g, \"ref_note\": \"%s\"", ratio, r->ref_note);
        printf("}\n");
    } else {
        printf("%-30s %-30s %10.4f s %8.1f GFLOP/s %5.1f%% peak", r->name, r->shape, r->median_s,
               gflops, 100 * frac);
        if (ratio > 0) printf("  ref x%-8.0f (%s)", ratio, r->ref_note);
        printf("  [%s]\n", bench_path());
    }
    fflush(stdout);
}

/* ---- main -------------------------------------------------------------------------------- */

static int usage(FILE *f)
{
    fprintf(f, "usage: cincflow bench <conv|inverse|train|sample> [--json] [--threads N] [--repeats N] "
               "[--filter TEXT[$]] [--no-ref]\n"
               "  conv     3x3 and 1x1 convolutions of the paper's CIFAR-10 model and the "
               "Fashion-MNIST model:\n"
               "           forward, backward-data, backward-weight\n"
               "  inverse  masked-conv inverses; cinc_inverse_paper_b100 is the 96 CInC "
               "inverses of the\n"
               "           CIFAR-10 model for 100 images\n"
               "  train    training images/s of the Fashion-MNIST and paper CIFAR-10 models\n"
               "  sample   seconds to draw 100 images from each\n");
    return f == stderr ? 2 : 0;
}

static bool parse_int(const char *flag, const char *text, int lo, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text ? text : "", &end, 10);
    if (!text || !*text || *end || errno || v < lo || v > 1 << 20) {
        fprintf(stderr, "cincflow bench: %s expects an integer >= %d, got '%s'\n", flag, lo,
                text ? text : "");
        return false;
    }
    *out = (int)v;
    return true;
}

int cf_bench_main(int argc, char **argv)
{
    if (argc < 1) return usage(stderr);
    const char *suite = argv[0];
    if (strcmp(suite, "-h") == 0 || strcmp(suite, "--help") == 0) return usage(stdout);
    bench_opts o = {.threads = omp_get_max_threads(), .repeats = 5, .min_seconds = 1.0,
                    .reference = true};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            o.json = true;
        } else if (strcmp(argv[i], "--no-ref") == 0) {
            o.reference = false;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            if (!parse_int("--threads", argv[++i], 1, &o.threads)) return 2;
        } else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
            if (!parse_int("--repeats", argv[++i], 1, &o.repeats)) return 2;
        } else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
            o.filter = argv[++i];
        } else {
            fprintf(stderr, "cincflow bench: unknown or incomplete flag '%s'\n", argv[i]);
            return usage(stderr);
        }
    }
    omp_set_num_threads(o.threads);
    const char *isa = "";
    o.peak = bench_fma_peak(&isa);
    if (o.json)
        printf("{\"name\": \"fma_peak\", \"shape\": \"%s single core\", \"threads\": 1, "
               "\"median_s\": 0, \"gflops\": %.4g, \"peak_fraction\": 1, \"isa\": \"%s\", "
               "\"xsmm_target\": \"%s\"}\n", isa, o.peak, cf_isa_name(cf_cpu_isa()),
               libxsmm_get_target_arch());
    else
        printf("# cincflow bench %s: %d thread(s); kernel path %s (CF_ISA), libxsmm target %s; "
               "single-core fp32 FMA peak %.1f GFLOP/s (%s loop); peak%% is against threads x "
               "that; ref xN is reference time / fast time; [path, libxsmm target] ends each "
               "line\n", suite, o.threads, cf_isa_name(cf_cpu_isa()), libxsmm_get_target_arch(),
               o.peak, isa);
    if (strcmp(suite, "conv") == 0) return bench_conv(&o);
    if (strcmp(suite, "inverse") == 0) return bench_inverse(&o);
    if (strcmp(suite, "train") == 0) return bench_train(&o);
    if (strcmp(suite, "sample") == 0) return bench_sample(&o);
    fprintf(stderr, "cincflow bench: unknown suite '%s'\n", suite);
    return usage(stderr);
}
