/* cincflow.c: the command-line tool.
 *
 *   cincflow gradcheck [--op NAME] [--fast] [--seed N]
 *       checks every registered op (or one) on each of its test cases: backward against
 *       central differences in f64, and the fast f32 kernels against the reference ones.
 *       One line per op, then "N passed, N failed"; exit status 1 if any failed.
 *   cincflow info [--shape HxWxC] [--levels L] [--depth K] [--width N]
 *                 [--coupling quad|affine] [--conv cinc|1x1|emerging]
 *       builds the model and prints its layers, then "params: N, forward GFLOP/image: F".
 *   cincflow train | eval | sample | interpolate | manipulate   (cli_train.c, cli_eval.c)
 *   cincflow ops      lists the registered ops.
 *   cincflow version  prints the version, the kernel path in use (cf_cpu.h: CF_ISA or the
 *                     CPU's best) and libxsmm's target.
 *
 * Exit status: 0 success, 1 a check failed, 2 bad usage.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxsmm.h>

#include "cf_bench.h"
#include "cf_cpu.h"
#include "cli.h"

/* Largest fast-versus-reference difference accepted, relative to the largest reference value:
 * f32 kernels against double-accumulated references on the same f32 inputs. */
#define FAST_TOLERANCE 1e-4

static int usage(FILE *f)
{
    fprintf(f, "usage: cincflow <command> [options]\n"
               "commands:\n"
               "  train --data SPEC [--steps N | --epochs N | --minutes M] [options]\n"
               "                                              train a flow (--help for options)\n"
               "  eval --checkpoint FILE [--data SPEC] [--split test] [--limit N] [--json]\n"
               "                                              test bits/dim\n"
               "  sample --checkpoint FILE -n N --temperature T --out grid.png [--seed S]\n"
               "                                              draw images into a PNG grid\n"
               "  interpolate --checkpoint FILE --from I --to J --out strip.png\n"
               "  manipulate --checkpoint FILE --index I --from-class A --to-class B --out strip.png\n"
               "  gradcheck [--op NAME] [--fast] [--seed N]  check every op's gradient and "
               "fast kernels\n"
               "  info [--shape HxWxC] [--levels L] [--depth K] [--width N]\n"
               "       [--coupling quad|affine] [--conv cinc|1x1|emerging]\n"
               "                                              print a model's layers and size\n"
               "  bench <conv|inverse|train|sample> [--json] [--threads N]  benchmarks (see "
               "BENCHMARKS.md)\n"
               "  ops                                         list the registered ops\n"
               "  version                                     print the version and the kernel path\n");
    return f == stderr ? 2 : 0;
}

/* Parses a non-negative integer flag value; exits 2 with a message naming the flag. */
static unsigned long long parse_u64(const char *flag, const char *text)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text ? text : "", &end, 10);
    if (!text || !*text || *end || errno || text[0] == '-') {
        fprintf(stderr, "cincflow: %s expects a non-negative integer, got '%s'\n", flag,
                text ? text : "");
        exit(2);
    }
    return v;
}

/* Checks one op over all its cases; prints its line; returns true when it passed. */
static bool gradcheck_one(const cf_op_def *op, const cf_gradcheck_opts *opts)
{
    int cases = 0, inputs = 0;
    double max_abs = 0, max_rel = 0, fast_err = 0;
    bool passed = true, any_fast = false;
    char why[600] = "";
    cf_op_case c;
    for (int k = 0; cf_op_case_get(op, k, &c); k++) {
        cf_tensor *in[CF_MAX_INPUTS];
        cf_gradcheck_result res;
        cases++;
        if (cf_op_case_inputs(&c, CF_F64, opts->seed + (uint64_t)k, in) != CF_OK) {
            snprintf(why, sizeof why, "%s", cf_last_error());
            passed = false;
            break;
        }
        cf_status st = cf_gradcheck_op(op, c.n_in, in, c.attrs, opts, &res);
        for (int i = 0; i < c.n_in; i++) cf_tensor_free(in[i]);
        inputs += res.inputs_checked;
        max_abs = fmax(max_abs, res.max_abs_err);
        max_rel = fmax(max_rel, res.max_rel_err);
        if (st != CF_OK) {
            snprintf(why, sizeof why, "case %d (%s): %s", k, c.label ? c.label : "", res.message);
            passed = false;
            break;
        }
        if (cf_op_case_inputs(&c, CF_F32, opts->seed + (uint64_t)k, in) != CF_OK) {
            snprintf(why, sizeof why, "%s", cf_last_error());
            passed = false;
            break;
        }
        bool has_fast = false;
        double err = 0;
        st = cf_opcheck_fast(op, c.n_in, in, c.attrs, &has_fast, &err);
        for (int i = 0; i < c.n_in; i++) cf_tensor_free(in[i]);
        any_fast |= has_fast;
        fast_err = fmax(fast_err, err);
        if (st != CF_OK || !(err <= FAST_TOLERANCE)) {
            snprintf(why, sizeof why, "case %d (%s): fast f32 kernels differ from the reference "
                     "by %.3g (tolerance %g)%s%s", k, c.label ? c.label : "", err,
                     FAST_TOLERANCE, st != CF_OK ? ": " : "", st != CF_OK ? cf_last_error() : "");
            passed = false;
            break;
        }
    }
    char fast[32];
    if (any_fast)
        snprintf(fast, sizeof fast, "%.2e", fast_err);
    else
        snprintf(fast, sizeof fast, "-");
    printf("%-16s cases %d  inputs %3d  max abs %.2e  max rel %.2e  fast/ref %-8s  %s\n",
           op->name, cases, inputs, max_abs, max_rel, fast, passed ? "ok" : "FAILED");
    if (!passed) printf("  %s\n", why);
    return passed;
}

static int cmd_gradcheck(int argc, char **argv)
{
    const char *only = NULL;
    cf_gradcheck_opts opts = {.seed = 1};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--op") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else if (strcmp(argv[i], "--fast") == 0) {
            opts.fast = true;
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            opts.seed = parse_u64("--seed", argv[++i]);
        } else {
            fprintf(stderr, "cincflow gradcheck: unknown or incomplete flag '%s'\n", argv[i]);
            return 2;
        }
    }
    int passed = 0, failed = 0;
    if (only) {
        const cf_op_def *op = cf_op_find(only);
        if (!op) {
            fprintf(stderr, "cincflow gradcheck: --op: no op named '%s' (see 'cincflow ops')\n",
                    only);
            return 2;
        }
        gradcheck_one(op, &opts) ? passed++ : failed++;
    } else {
        for (int i = 0; i < cf_op_count(); i++) gradcheck_one(cf_op_at(i), &opts) ? passed++ : failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* Parses "HxWxC" into shape; exits 2 naming the flag when it is not that. */
static void parse_shape(const char *flag, const char *text, int64_t shape[3])
{
    long long h, w, c;
    char tail;
    if (!text || sscanf(text, "%lldx%lldx%lld%c", &h, &w, &c, &tail) != 3 || h < 1 || w < 1 ||
        c < 1 || h > 65536 || w > 65536 || c > 4096) {
        fprintf(stderr, "cincflow: %s expects HxWxC with positive sizes (e.g. 28x28x1), got "
                        "'%s'\n", flag, text ? text : "");
        exit(2);
    }
    shape[0] = h, shape[1] = w, shape[2] = c;
}

/* Parses the model flags shared by commands that build a flow; returns the index of the first
 * argument it did not take, or -1 after printing an error for a bad one. */
static int parse_model_flags(int argc, char **argv, cf_flow_config *cfg)
{
    int64_t shape[3] = {28, 28, 1};
    int i = 0;
    for (; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(f, "--shape") == 0) {
            parse_shape(f, v, shape);
        } else if (strcmp(f, "--levels") == 0) {
            cfg->levels = (int)parse_u64(f, v);
        } else if (strcmp(f, "--depth") == 0) {
            cfg->depth = (int)parse_u64(f, v);
        } else if (strcmp(f, "--width") == 0) {
            cfg->hidden = (int64_t)parse_u64(f, v);
        } else if (strcmp(f, "--coupling") == 0 && v &&
                   (strcmp(v, "quad") == 0 || strcmp(v, "affine") == 0)) {
            cfg->coupling = strcmp(v, "quad") == 0 ? CF_COUPLING_KIND_QUAD : CF_COUPLING_KIND_AFFINE;
        } else if (strcmp(f, "--conv") == 0 && v &&
                   (strcmp(v, "cinc") == 0 || strcmp(v, "1x1") == 0 || strcmp(v, "emerging") == 0)) {
            cfg->conv = strcmp(v, "cinc") == 0  ? CF_INVCONV_KIND_CINC
                        : strcmp(v, "1x1") == 0 ? CF_INVCONV_KIND_1X1
                                                : CF_INVCONV_KIND_EMERGING;
        } else if (strcmp(f, "--coupling") == 0 || strcmp(f, "--conv") == 0) {
            fprintf(stderr, "cincflow: %s expects %s, got '%s'\n", f,
                    strcmp(f, "--coupling") == 0 ? "quad or affine" : "cinc, 1x1 or emerging",
                    v ? v : "");
            return -1;
        } else {
            break;
        }
        i++;
    }
    cfg->height = shape[0], cfg->width = shape[1], cfg->channels = shape[2];
    return i;
}

static int cmd_info(int argc, char **argv)
{
    cf_flow_config cfg = {0};
    int used = parse_model_flags(argc, argv, &cfg);
    if (used < 0) return 2;
    if (used < argc) {
        fprintf(stderr, "cincflow info: unknown flag '%s'\n", argv[used]);
        return 2;
    }
    cf_flow *flow = cf_flow_new(&cfg, CF_F32);
    if (!flow) {
        fprintf(stderr, "cincflow info: %s\n", cf_last_error());
        return 2;
    }
    cf_flow_print(flow, stdout);
    cf_flow_free(flow);
    return 0;
}

static int cmd_ops(void)
{
    for (int i = 0; i < cf_op_count(); i++) {
        const cf_op_def *op = cf_op_at(i);
        printf("%-16s %s\n", op->name, op->doc ? op->doc : "");
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (strcmp(cmd, "gradcheck") == 0) return cmd_gradcheck(argc - 2, argv + 2);
    if (strcmp(cmd, "info") == 0) return cmd_info(argc - 2, argv + 2);
    if (strcmp(cmd, "train") == 0) return cli_train(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0) return cli_eval(argc - 2, argv + 2);
    if (strcmp(cmd, "sample") == 0) return cli_sample(argc - 2, argv + 2);
    if (strcmp(cmd, "interpolate") == 0) return cli_interpolate(argc - 2, argv + 2);
    if (strcmp(cmd, "manipulate") == 0) return cli_manipulate(argc - 2, argv + 2);
    if (strcmp(cmd, "bench") == 0) return cf_bench_main(argc - 2, argv + 2);
    if (strcmp(cmd, "ops") == 0) return cmd_ops();
    if (strcmp(cmd, "version") == 0) {
        const char *req = getenv("CF_ISA");
        const char *xt = getenv("LIBXSMM_TARGET");
        printf("cincflow %s\n", CF_VERSION_STRING);
        printf("kernel path: %s (this CPU supports up to %s; CF_ISA%s%s)\n",
               cf_isa_name(cf_cpu_isa()), cf_isa_name(cf_cpu_isa_supported()),
               req && *req ? "=" : " unset", req && *req ? req : "");
        printf("libxsmm target: %s (LIBXSMM_TARGET%s%s)\n", libxsmm_get_target_arch(),
               xt && *xt ? "=" : " unset", xt && *xt ? xt : "");
        return 0;
    }
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0)
        return usage(stdout);
    fprintf(stderr, "cincflow: unknown command '%s'\n", cmd);
    return usage(stderr);
}
