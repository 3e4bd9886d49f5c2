/* cli_arch.c: `cincflow arch` and `cincflow info`, a model's architecture as data and its size.
 *
 *   cincflow arch [model flags] [--checkpoint FILE] [--out FILE]
 *       prints the architecture (cf_arch.h's JSON: layers, kinds, hyperparameters, shapes and
 *       each kind's conventions) of the built-in model of the flags, or of a checkpoint; the
 *       file it writes is what `cincflow train --arch` reads.
 *   cincflow info [model flags] [--arch FILE]
 *       the layer list, then "params: N, forward GFLOP/image: F".
 *
 * Not here: the layer kinds (models/), the JSON (models/arch.c).
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* The flow of the model flags, of --arch or of --checkpoint, with fresh or loaded parameters. */
static cf_flow *model_of(const char *cmd, const cli_model *m, const char *arch_path,
                         const char *ckpt)
{
    cf_flow *flow = NULL;
    if (ckpt) return cli_load_flow(cmd, ckpt, NULL);
    if (arch_path) {
        cf_arch *a = cf_arch_read_file(arch_path);
        flow = a ? cf_flow_from_arch(a, CF_F32, 0) : NULL;
        cf_arch_free(a);
    } else {
        cf_flow_config cfg = cli_model_config(m);
        if (cli_check_memory(cmd, &cfg, 1, false, false)) flow = cf_flow_new(&cfg, CF_F32);
        else return NULL;
    }
    if (!flow) fprintf(stderr, "cincflow %s: %s\n", cmd, cf_last_error());
    return flow;
}

int cli_arch(int argc, char **argv)
{
    cli_model m = cli_model_defaults();
    const char *ckpt = NULL, *out = NULL;
    cli_flag flags[16] = {
        {"--checkpoint", CLI_STRING, &ckpt, 0, 0, NULL, "print this checkpoint's architecture"},
        {"--out", CLI_STRING, &out, 0, 0, NULL, "write it to this file instead of stdout"},
    };
    int n = 2;
    n += cli_model_flags(flags + n, &m);
    int rc = cli_begin("arch", "[model flags] [--checkpoint FILE] [--out FILE]", argc, argv,
                       flags, n);
    if (rc >= 0) return rc;
    for (int i = 0; ckpt && i < argc; i++)
        for (int k = 2; k < n; k++)
            if (strcmp(argv[i], flags[k].name) == 0) {
                fprintf(stderr, "cincflow arch: %s cannot go with --checkpoint (the model is the "
                                "checkpoint's)\n", flags[k].name);
                return 2;
            }
    cf_flow *flow = model_of("arch", &m, NULL, ckpt);
    if (!flow) return ckpt ? 1 : 2;
    cf_arch *a = cf_flow_arch(flow);
    char *json = a ? cf_arch_to_json(a) : NULL;
    cf_arch_free(a);
    cf_flow_free(flow);
    if (!json) {
        fprintf(stderr, "cincflow arch: %s\n", cf_last_error());
        return 1;
    }
    int status = 0;
    FILE *f = out ? fopen(out, "w") : stdout;
    if (!f || fprintf(f, "%s\n", json) < 0 || (out && fclose(f) != 0) ||
        (!out && fflush(stdout) != 0)) {
        fprintf(stderr, "cincflow arch: %s: cannot write the architecture\n",
                out ? out : "standard output");
        status = 1;
    }
    free(json);
    return status;
}

int cli_info(int argc, char **argv)
{
    cli_model m = cli_model_defaults();
    const char *arch = NULL, *ckpt = NULL;
    cli_flag flags[16] = {
        {"--arch", CLI_STRING, &arch, 0, 0, NULL, "an architecture file instead of model flags"},
        {"--checkpoint", CLI_STRING, &ckpt, 0, 0, NULL, "a checkpoint's model"},
    };
    int n = 2;
    n += cli_model_flags(flags + n, &m);
    int rc = cli_begin("info", "[model flags | --arch FILE | --checkpoint FILE]", argc, argv,
                       flags, n);
    if (rc >= 0) return rc;
    cf_flow *flow = model_of("info", &m, arch, ckpt);
    if (!flow) return ckpt ? 1 : 2;
    cf_flow_print(flow, stdout);
    cf_flow_free(flow);
    return 0;
}
