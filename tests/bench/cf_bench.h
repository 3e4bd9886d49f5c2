/* cf_bench.h: the benchmarks behind `cincflow bench`.
 *
 *   cincflow bench conv     [--json] [--threads N] [--repeats N] [--filter TEXT] [--no-ref]
 *   cincflow bench inverse  [same flags]
 *
 * One line per case: shape, median time, GFLOP/s, fraction of the single-core fp32 peak
 * measured by an FMA loop in the same run (times the thread count), and the speed ratio to the
 * reference kernel; --json prints one JSON object per line instead. Not run by the test suite.
 */
#ifndef CF_BENCH_H
#define CF_BENCH_H

#ifdef __cplusplus
extern "C" {
#endif

/* argv[0] is the suite ("conv" or "inverse"); returns the process exit status (0 ok, 1 a
 * case failed, 2 bad usage). */
int cf_bench_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
