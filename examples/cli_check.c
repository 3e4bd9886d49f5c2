/* cli_check.c: `cincflow check`, the flow checker (models/cf_check.h) from the command line.
 *
 *   cincflow check [--kind K [--hparams JSON]] [--shape HxWxC] [--plugin P] ...
 *       each registered layer kind (or the one named), built in f64 on a tiny shape (4x4x4
 *       unless --shape; a kind with a "hidden" width gets 8 unless --hparams says otherwise);
 *   cincflow check --arch FILE [--shape HxWxC]
 *       each layer of an architecture, rebuilt in f64 on a small input of the architecture's
 *       channels (the smallest side its squeezes allow, at least 8, unless --shape);
 *   cincflow check [model flags]
 *       each layer of the built-in model of the flags, in f64 on 8x8x1 images, width 8.
 * One line per layer, then "N passed, N failed". Exit status 0 when every layer passed, 1 when
 * one failed, 2 on bad usage (a flag, a kind or architecture the shape cannot take).
 *
 * Not here: the checks themselves (models/check.c).
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* --hparams '{"hidden": 8, "mask": "cinc"}' into a record; false after a message. */
static bool parse_hparams(const char *text, cf_hparams *hp)
{
    cJSON *o = cJSON_Parse(text);
    bool ok = cJSON_IsObject(o);
    const cJSON *v, *obj = ok ? o : NULL;
    cJSON_ArrayForEach(v, obj)
    {
        cf_status st;
        if (cJSON_IsBool(v)) st = cf_hparams_set_bool(hp, v->string, cJSON_IsTrue(v));
        else if (cJSON_IsString(v)) st = cf_hparams_set_string(hp, v->string, v->valuestring);
        else if (cJSON_IsNumber(v) && v->valuedouble == (double)(int64_t)v->valuedouble)
            st = cf_hparams_set_int(hp, v->string, (int64_t)v->valuedouble);
        else if (cJSON_IsNumber(v)) st = cf_hparams_set_float(hp, v->string, v->valuedouble);
        else st = cf_set_error(CF_ERR_ARG, "hyperparameter '%s' is not a number, string or bool",
                               v->string);
        if (st != CF_OK) {
            fprintf(stderr, "cincflow check: --hparams: %s\n", cf_last_error());
            cJSON_Delete(o);
            return false;
        }
    }
    cJSON_Delete(o);
    if (!ok) fprintf(stderr, "cincflow check: --hparams expects a JSON object, got '%s'\n", text);
    return ok;
}

static bool declares(const cf_layer_kind *k, const char *key)
{
    for (int i = 0; i < k->n_hparams; i++)
        if (strcmp(k->hparams[i].key, key) == 0) return true;
    return false;
}

/* Checks kind on shape; prints its line; returns 0 passed, 1 failed, 2 could not build. */
static int check_kind(const cf_layer_kind *k, const int64_t shape[3], const cf_hparams *given,
                      const cf_check_opts *opts)
{
    cf_hparams hp = given ? *given : (cf_hparams){0};
    if (!given && declares(k, "hidden")) cf_hparams_set_int(&hp, "hidden", 8);
    cf_check_result res;
    cf_status st = cf_layer_kind_check(k->name, shape, &hp, opts, stdout, &res);
    if (st == CF_OK || st == CF_ERR_NUMERIC) return st == CF_OK ? 0 : 1;
    printf("SKIP %-24s not checked on %lldx%lldx%lld: %s\n", k->name, (long long)shape[0],
           (long long)shape[1], (long long)shape[2], cf_last_error());
    return 2;
}

/* A small input for an architecture: its channels, the smallest side at least 8 that its
 * squeezes can halve. */
static void small_input(const cf_arch *a, int64_t shape[3])
{
    int squeezes = 0;
    for (int i = 0; i < a->n_layers; i++) squeezes += strcmp(a->layers[i].kind, "squeeze") == 0;
    int64_t side = (int64_t)1 << (squeezes < 20 ? squeezes : 20);
    while (side < 8) side *= 2;
    shape[0] = side < a->shape[0] ? side : a->shape[0];
    shape[1] = side < a->shape[1] ? side : a->shape[1];
    shape[2] = a->shape[2];
}

int cli_check(int argc, char **argv)
{
    cli_model m = cli_model_defaults();
    m.shape[0] = 8, m.shape[1] = 8, m.shape[2] = 1;
    m.width = 8;
    int64_t batch = 2, seed = 1, shape[3] = {0, 0, 0};
    double perturb = 0.1;
    const char *kind = NULL, *arch_path = NULL, *hparams = NULL;
    cli_flag flags[CLI_MODEL_FLAGS + 8];
    int n = 0;
    flags[n++] = (cli_flag){"--kind", CLI_STRING, &kind, 0, 0, NULL,
                            "check this registered layer kind (default: every kind)"};
    flags[n++] = (cli_flag){"--hparams", CLI_STRING, &hparams, 0, 0, NULL,
                            "the kind's hyperparameters as JSON ('{\"hidden\": 8}')"};
    flags[n++] = (cli_flag){"--arch", CLI_STRING, &arch_path, 0, 0, NULL,
                            "check each layer of this architecture (JSON, `cincflow arch`)"};
    flags[n++] = (cli_flag){"--batch", CLI_INT, &batch, 1, 64, NULL,
                            "images per random input (default 2)"};
    flags[n++] = (cli_flag){"--seed", CLI_INT, &seed, 1, 1e15, NULL,
                            "inputs, perturbation and initialisation (default 1)"};
    flags[n++] = (cli_flag){"--perturb", CLI_DOUBLE, &perturb, 0, 10, NULL,
                            "std of the noise added to every parameter (default 0.1; 0: none)"};
    const int first_model = n;
    n += cli_model_flags(flags + n, &m);
    flags[first_model].dst = shape;
    flags[first_model].help = "input shape (default: 4x4x4 for kinds, 8x8x1 for the model, a "
                              "small one for --arch)";
    flags[first_model + 3].help = "coupling network width (default 8)";
    int rc = cli_begin("check", "[--kind K [--hparams JSON] | --arch FILE | model flags] "
                       "[--shape HxWxC] [--batch N] [--seed S] [--perturb S]", argc, argv,
                       flags, n);
    if (rc >= 0) return rc;
    bool model_flags = false;
    for (int i = 0; i < argc; i++)
        for (int k = first_model + 1; k < n; k++) model_flags |= strcmp(argv[i], flags[k].name) == 0;
    if ((kind != NULL) + (arch_path != NULL) + model_flags > 1) {
        fprintf(stderr, "cincflow check: give one of --kind, --arch or model flags\n");
        return 2;
    }
    if (hparams && !kind) {
        fprintf(stderr, "cincflow check: --hparams goes with --kind\n");
        return 2;
    }
    cf_check_opts opts = {.batch = batch, .seed = (uint64_t)seed,
                          .perturb = perturb > 0 ? perturb : -1};

    if (!arch_path && !model_flags) { /* layer kinds */
        cf_hparams hp = {0};
        if (hparams && !parse_hparams(hparams, &hp)) return 2;
        const int64_t *s = shape[0] ? shape : (const int64_t[]){4, 4, 4};
        int passed = 0, failed = 0, unbuilt = 0;
        if (kind) {
            const cf_layer_kind *k = cf_layer_kind_find(kind);
            if (!k) {
                fprintf(stderr, "cincflow check: --kind: no layer kind named '%s' (see 'cincflow "
                                "kinds'; a plugin's kinds need --plugin)\n", kind);
                return 2;
            }
            int r = check_kind(k, s, hparams ? &hp : NULL, &opts);
            if (r == 2) return 2;
            r ? failed++ : passed++;
        } else {
            for (int i = 0; i < cf_layer_kind_count(); i++) {
                int r = check_kind(cf_layer_kind_at(i), s, NULL, &opts);
                r == 0 ? passed++ : r == 1 ? failed++ : unbuilt++;
            }
        }
        printf("%d passed, %d failed\n", passed, failed);
        if (unbuilt) printf("(%d kinds could not be built on this shape: try --kind K --shape)\n",
                            unbuilt);
        return failed ? 1 : 0;
    }

    cf_flow *flow = NULL;
    if (arch_path) {
        cf_arch *a = cf_arch_read_file(arch_path);
        if (!a) {
            fprintf(stderr, "cincflow check: --arch %s\n", cf_last_error());
            return 2;
        }
        int64_t in[3];
        if (shape[0]) memcpy(in, shape, sizeof in);
        else small_input(a, in);
        memcpy(a->shape, in, sizeof in);
        for (int i = 0; i < a->n_layers; i++) a->layers[i].has_shapes = false; /* resized */
        flow = cf_flow_from_arch(a, CF_F64, (uint64_t)seed);
        printf("checking %d layers of %s on %lldx%lldx%lld images, f64, batch %lld\n",
               a->n_layers, arch_path, (long long)in[0], (long long)in[1], (long long)in[2],
               (long long)batch);
        cf_arch_free(a);
    } else {
        if (shape[0]) memcpy(m.shape, shape, sizeof m.shape);
        cf_flow_config cfg = cli_model_config(&m);
        cfg.seed = (uint64_t)seed;
        flow = cf_flow_new(&cfg, CF_F64);
        if (flow)
            printf("checking %d layers of the %s/%s model on %lldx%lldx%lld images (L %d, K %d, "
                   "width %lld), f64, batch %lld\n", cf_flow_layer_count(flow),
                   cf_flow_config_conv(&cfg), cf_flow_config_coupling(&cfg), (long long)cfg.height,
                   (long long)cfg.width, (long long)cfg.channels, cfg.levels, cfg.depth,
                   (long long)cfg.hidden, (long long)batch);
    }
    if (!flow) {
        fprintf(stderr, "cincflow check: %s\n", cf_last_error());
        return 2;
    }
    int n_failed = 0;
    cf_status st = cf_flow_check(flow, &opts, stdout, &n_failed);
    cf_flow_free(flow);
    if (st != CF_OK && st != CF_ERR_NUMERIC) {
        fprintf(stderr, "cincflow check: %s\n", cf_last_error());
        return 1;
    }
    return n_failed ? 1 : 0;
}
