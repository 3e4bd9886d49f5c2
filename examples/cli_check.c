/* cli_check.c: `cincflow check [model flags] [--batch N] [--seed S] [--perturb S]`: builds the
 * built-in model of the model flags in f64 on a tiny shape (8x8x1 and width 8 unless given)
 * and runs the flow checker (models/cf_check.h) on each of its layers: one line per layer,
 * then "N passed, N failed". Exit status 0 when every layer passed, 1 when one failed, 2 on
 * bad usage (a flag, or a model the shape cannot take).
 *
 * Not yet here: --arch FILE (an architecture as JSON), --kind K (one registered layer kind)
 * and --plugin P (layer kinds from a shared library) belong to the layer registry; they will
 * add their flags to the table below and give cf_flow_check the flow they describe.
 */
#include "cli.h"

int cli_check(int argc, char **argv)
{
    cli_model m = cli_model_defaults();
    m.shape[0] = 8, m.shape[1] = 8, m.shape[2] = 1;
    m.width = 8;
    int64_t batch = 2, seed = 1;
    double perturb = 0.1;
    cli_flag flags[CLI_MODEL_FLAGS + 3];
    int n = cli_model_flags(flags, &m);
    flags[0].help = "image shape (default 8x8x1: the checks build dense Jacobians)";
    flags[3].help = "coupling network width (default 8)";
    flags[n++] = (cli_flag){"--batch", CLI_INT, &batch, 1, 64, NULL,
                            "images per random input (default 2)"};
    flags[n++] = (cli_flag){"--seed", CLI_INT, &seed, 1, 1e15, NULL,
                            "inputs, perturbation and model initialisation (default 1)"};
    flags[n++] = (cli_flag){"--perturb", CLI_DOUBLE, &perturb, 0, 10, NULL,
                            "std of the noise added to every parameter (default 0.1; 0: none)"};
    int rc = cli_begin("check", "[model flags] [--batch N] [--seed S] [--perturb S]", argc, argv,
                       flags, n);
    if (rc >= 0) return rc;

    cf_flow_config cfg = cli_model_config(&m);
    cfg.seed = (uint64_t)seed;
    cf_flow *flow = cf_flow_new(&cfg, CF_F64);
    if (!flow) {
        fprintf(stderr, "cincflow check: %s\n", cf_last_error());
        return 2;
    }
    printf("checking %d layers of the %s/%s model on %lldx%lldx%lld images (L %d, K %d, width "
           "%lld), f64, batch %lld\n", cf_flow_layer_count(flow), cli_conv_name(cfg.conv),
           cli_coupling_name(cfg.coupling), (long long)cfg.height, (long long)cfg.width,
           (long long)cfg.channels, cfg.levels, cfg.depth, (long long)cfg.hidden,
           (long long)batch);
    cf_check_opts opts = {.batch = batch, .seed = (uint64_t)seed,
                          .perturb = perturb > 0 ? perturb : -1};
    int n_failed = 0;
    cf_status st = cf_flow_check(flow, &opts, stdout, &n_failed);
    cf_flow_free(flow);
    if (st != CF_OK && st != CF_ERR_NUMERIC) {
        fprintf(stderr, "cincflow check: %s\n", cf_last_error());
        return 1;
    }
    return n_failed ? 1 : 0;
}
