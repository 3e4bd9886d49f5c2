/* cincflow.c: the command-line tool.
 *
 *   cincflow gradcheck [--op NAME] [--fast] [--seed N]
 *       checks every registered op (or one) on each of its test cases: backward against
 *       central differences in f64, and the fast f32 kernels against the reference ones.
 *       One line per op, then "N passed, N failed"; exit status 1 if any failed.
 *   cincflow check [model flags] [--batch N] [--seed S] [--perturb S]   (cli_check.c)
 *       checks every layer of the model, built in f64 on 8x8x1 images: round trip, log-det
 *       against the dense Jacobian, gradients against finite differences, finite values and
 *       shapes. One line per layer, then "N passed, N failed"; exit status 1 if any failed.
 *   cincflow train | eval | sample | interpolate | manipulate   (cli_train.c, cli_eval.c)
 *   cincflow arch | info   a model's architecture as JSON, its layers and size (cli_arch.c)
 *   cincflow ops      lists the registered ops; `kinds` the registered layer kinds.
 *   --plugin FILE.so  on every command, repeatable: loads a plugin first (cf_plugin.h).
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
               "  train --data SPEC [--steps N | --epochs N | --minutes M] [--arch FILE] [options]\n"
               "                                              train a flow (--help for options)\n"
               "  eval --checkpoint FILE [--data SPEC] [--split test] [--limit N] [--json]\n"
               "                                              test bits/dim\n"
               "  sample --checkpoint FILE -n N --temperature T --out grid.png [--seed S]\n"
               "                                              draw images into a PNG grid\n"
               "  interpolate --checkpoint FILE --from I --to J --out strip.png\n"
               "  manipulate --checkpoint FILE --index I --from-class A --to-class B --out strip.png\n"
               "  gradcheck [--op NAME] [--fast] [--seed N]  check every op's gradient and "
               "fast kernels\n"
               "  check [model flags] [--batch N] [--seed S] check every layer of the model "
               "(f64, tiny)\n"
               "  arch [model flags] [--checkpoint FILE] [--out FILE]\n"
               "                                              a model's architecture as JSON\n"
               "  info [model flags | --arch FILE | --checkpoint FILE]\n"
               "                                              print a model's layers and size\n"
               "  bench <conv|inverse|train|sample> [--json] [--threads N]  benchmarks (see "
               "BENCHMARKS.md)\n"
               "  ops                                         list the registered ops\n"
               "  kinds                                       list the registered layer kinds\n"
               "  version                                     print the version and the kernel path\n"
               "every command also takes --plugin FILE.so (repeatable): a plugin's ops and layer "
               "kinds\n");
    return f == stderr ? 2 : 0;
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
    int64_t seed = 1;
    cli_flag flags[] = {
        {"--op", CLI_STRING, &only, 0, 0, NULL, "check only this op (see 'cincflow ops')"},
        {"--fast", CLI_BOOL, &opts.fast, 0, 0, NULL, "random directions v^T J u instead of every element"},
        {"--seed", CLI_INT, &seed, 0, 9.2e18, NULL, "test inputs (default 1)"},
    };
    int rc = cli_begin("gradcheck", "[--op NAME] [--fast] [--seed N]", argc, argv, flags,
                       (int)(sizeof flags / sizeof flags[0]));
    if (rc >= 0) return rc;
    opts.seed = (uint64_t)seed;
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

static int cmd_kinds(void)
{
    for (int i = 0; i < cf_layer_kind_count(); i++) {
        const cf_layer_kind *k = cf_layer_kind_at(i);
        printf("%-18s %-10s %s\n", k->name, cf_layer_kind_provider(k), k->summary ? k->summary : "");
        for (int j = 0; j < k->n_hparams; j++) {
            const cf_hparam_spec *h = &k->hparams[j];
            printf("    %-14s %s\n", h->key, h->doc ? h->doc : "");
        }
    }
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

/* Loads every `--plugin FILE` of argv (anywhere after the command) and takes them out of it,
 * so that every command takes --plugin, as often as needed. Returns false after printing the
 * error (exit status 1: the plugin could not be loaded). */
static bool load_plugins(int *argc, char **argv)
{
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        if (i >= 2 && strcmp(argv[i], "--plugin") == 0) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "cincflow %s: --plugin expects a file\n", argv[1]);
                exit(2);
            }
            if (cf_plugin_load(argv[i + 1]) != CF_OK) {
                fprintf(stderr, "cincflow %s: --plugin %s\n", argv[1], cf_last_error());
                return false;
            }
            i++;
            continue;
        }
        argv[out++] = argv[i];
    }
    *argc = out;
    argv[out] = NULL;
    return true;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(stderr);
    if (!load_plugins(&argc, argv)) return 1;
    const char *cmd = argv[1];
    if (strcmp(cmd, "gradcheck") == 0) return cmd_gradcheck(argc - 2, argv + 2);
    if (strcmp(cmd, "info") == 0) return cli_info(argc - 2, argv + 2);
    if (strcmp(cmd, "arch") == 0) return cli_arch(argc - 2, argv + 2);
    if (strcmp(cmd, "check") == 0) return cli_check(argc - 2, argv + 2);
    if (strcmp(cmd, "train") == 0) return cli_train(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0) return cli_eval(argc - 2, argv + 2);
    if (strcmp(cmd, "sample") == 0) return cli_sample(argc - 2, argv + 2);
    if (strcmp(cmd, "interpolate") == 0) return cli_interpolate(argc - 2, argv + 2);
    if (strcmp(cmd, "manipulate") == 0) return cli_manipulate(argc - 2, argv + 2);
    if (strcmp(cmd, "bench") == 0) return cf_bench_main(argc - 2, argv + 2);
    if (strcmp(cmd, "ops") == 0) return cmd_ops();
    if (strcmp(cmd, "kinds") == 0) return cmd_kinds();
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
