/* bench_model.c: whole-model figures: `cincflow bench train` (images/s of a training step:
 * forward, backward and an Adam update) and `cincflow bench sample` (seconds to draw 100
 * images). Cases: the default Fashion-MNIST model (L=2, K=8, width 128, quad, CInC; batch 64,
 * 28x28x1) and the paper's CIFAR-10 model (L=3, K=32, width 512, quad, CInC; 32x32x3), both on
 * synthetic 8-bit images uniformly dequantized.
 *
 * Steps run as `cincflow train` runs them by default: the batch of 64 in forward and backward
 * passes of 16 images per thread (cf_flow_train_step), the gradients added up; the _whole
 * cases take the 64 at once. train_paper_b64 keeps the whole tape when `cincflow train`'s
 * estimate of its activations fits in half of this machine's memory, else it recomputes;
 * _plain always keeps it and _recompute always recomputes each flow step during backward
 * (cf_flow_set_recompute), which is what keeps the paper model under 3.5 GB.
 * Peak resident memory is printed with each case (the process's, so far: run memory-sensitive
 * cases alone, with --filter).
 * Not run by the test suite.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench_impl.h"
#include "cincflow.h"

typedef struct model_case {
    const char *name;
    cf_flow_config cfg;
    int64_t batch;  /* training batch, or images drawn */
    int recompute;  /* training: 0 plain tape, 1 recompute steps in backward, 2 recompute
                     * from inputs rebuilt by the inverses, -1 plain or 1, whichever fits */
    int64_t micro;  /* training: images per forward and backward pass (0: the whole batch;
                     * -1: CF_FLOW_MICRO_PER_THREAD per thread, `cincflow train`'s default) */
} model_case;

static const model_case train_cases[] = {
    {"train_fashion_b64", {.height = 28, .width = 28, .channels = 1, .levels = 2, .depth = 8,
                           .hidden = 128, .seed = 1}, 64, 0, -1},
    {"train_fashion_b64_whole", {.height = 28, .width = 28, .channels = 1, .levels = 2,
                                 .depth = 8, .hidden = 128, .seed = 1}, 64, 0, 0},
    {"train_fashion_b64_recompute", {.height = 28, .width = 28, .channels = 1, .levels = 2,
                                     .depth = 8, .hidden = 128, .seed = 1}, 64, 1, -1},
    {"train_fashion_b64_rebuild", {.height = 28, .width = 28, .channels = 1, .levels = 2,
                                   .depth = 8, .hidden = 128, .seed = 1}, 64, 2, -1},
    {"train_paper_b64", {.height = 32, .width = 32, .channels = 3, .levels = 3, .depth = 32,
                         .hidden = 512, .seed = 1}, 64, -1, -1},
    {"train_paper_b64_recompute", {.height = 32, .width = 32, .channels = 3, .levels = 3,
                                   .depth = 32, .hidden = 512, .seed = 1}, 64, 1, -1},
    {"train_paper_b64_plain", {.height = 32, .width = 32, .channels = 3, .levels = 3,
                               .depth = 32, .hidden = 512, .seed = 1}, 64, 0, -1},
    {"train_paper_b64_whole", {.height = 32, .width = 32, .channels = 3, .levels = 3,
                               .depth = 32, .hidden = 512, .seed = 1}, 64, 0, 0},
};

static const model_case sample_cases[] = {
    {"sample_fashion_n100", {.height = 28, .width = 28, .channels = 1, .levels = 2, .depth = 8,
                             .hidden = 128, .seed = 1}, 100, 0, 0},
    {"sample_paper_n100", {.height = 32, .width = 32, .channels = 3, .levels = 3, .depth = 32,
                           .hidden = 512, .seed = 1}, 100, 0, 0},
};

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

static void shape_of(const model_case *c, char *buf, size_t size)
{
    snprintf(buf, size, "L=%d K=%d width %lld %lldx%lldx%lld batch %lld", c->cfg.levels,
             c->cfg.depth, (long long)c->cfg.hidden, (long long)c->cfg.height,
             (long long)c->cfg.width, (long long)c->cfg.channels, (long long)c->batch);
}

static void report(const bench_opts *o, const char *name, const char *shape, double median_s,
                   int repeats, double images, const char *note)
{
    double ips = images / median_s;
    if (o->json)
        printf("{\"name\": \"%s\", \"shape\": \"%s\", \"threads\": %d, \"median_s\": %.6g, "
               "\"repeats\": %d, \"images_per_s\": %.4g, \"peak_rss_mb\": %.0f, \"note\": "
               "\"%s\", \"path\": \"%s\"}\n", name, shape, o->threads, median_s, repeats, ips,
               peak_rss_mb(), note ? note : "", bench_path());
    else
        printf("%-28s %-44s threads %d  median %9.4f s  %8.2f images/s  rss %.0f MB%s%s  [%s]\n",
               name, shape, o->threads, median_s, ips, peak_rss_mb(), note ? "  " : "",
               note ? note : "", bench_path());
    fflush(stdout);
}

static int run_train(const bench_opts *o, const model_case *c)
{
    char shape[128];
    shape_of(c, shape, sizeof shape);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    const int64_t micro = c->micro < 0 ? CF_FLOW_MICRO_PER_THREAD * o->threads : c->micro;
    const int64_t pass = micro && micro < c->batch ? micro : c->batch;
    double need = cf_flow_config_activation_bytes(&c->cfg, pass, false);
    double have = (double)pages * (double)page;
    bool recompute = c->recompute >= 1 || (c->recompute < 0 && need > 0.5 * have);
    cf_flow *flow = cf_flow_new(&c->cfg, CF_F32);
    if (!flow) {
        fprintf(stderr, "bench %s: %s\n", c->name, cf_last_error());
        return 1;
    }
    cf_flow_set_recompute(flow, recompute);
    cf_flow_set_rebuild_inputs(flow, c->recompute == 2);
    cf_params *ps = cf_flow_params(flow);
    cf_adam *opt = cf_adam_new(ps, &(cf_adam_opts){.lr = 1e-4, .clip_norm = 50});
    cf_ctx *ctx = cf_ctx_new(0);
    char spec[64];
    snprintf(spec, sizeof spec, "synthetic:%lldx%lldx%lld:%lld", (long long)c->cfg.height,
             (long long)c->cfg.width, (long long)c->cfg.channels, (long long)(4 * c->batch));
    cf_dataset *ds = cf_dataset_open(spec, "train");
    cf_batcher *b = ds ? cf_batcher_new(ds, &(cf_batcher_opts){.batch = c->batch, .seed = 1}) : NULL;
    cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){c->batch, c->cfg.height, c->cfg.width,
                                                          c->cfg.channels});
    if (!opt || !ctx || !b || !x) {
        fprintf(stderr, "bench %s: %s\n", c->name, cf_last_error());
        return 1;
    }
    /* Actnorm's data-dependent initialisation first, with grad recording off, as `cincflow
     * train` does: the timed steps (and the arena's peak) are those of an initialised flow. */
    cf_batcher_next(b, x, NULL, NULL);
    bool grad_was = cf_ctx_set_grad(ctx, false);
    cf_flow_log_prob(flow, ctx, x, NULL);
    cf_ctx_set_grad(ctx, grad_was);
    if (cf_ctx_status(ctx) != CF_OK) {
        fprintf(stderr, "bench %s: %s\n", c->name, cf_ctx_error(ctx));
        return 1;
    }
    cf_ctx_reset(ctx);
    cf_flow_trim(flow); /* as train does: the resident memory below is the training's */
    bool big = c->cfg.hidden >= 512; /* the paper model: a step takes most of a minute */
    int repeats = big ? (o->repeats < 2 ? o->repeats : 2) : o->repeats, warm = big ? 1 : 2;
    int status = 0;
    double *t = malloc((size_t)repeats * sizeof *t);
    for (int r = 0; r < warm + repeats; r++) {
        cf_batcher_next(b, x, NULL, NULL);
        double t0 = bench_now();
        double loss;
        if (cf_flow_train_step(flow, ctx, x, micro, &loss) != CF_OK) {
            fprintf(stderr, "bench %s: %s\n", c->name, cf_ctx_error(ctx));
            status = 1;
            break;
        }
        cf_adam_step(opt, NULL);
        cf_ctx_reset(ctx);
        if (r >= warm) t[r - warm] = bench_now() - t0;
    }
    if (status == 0) {
        char note[128];
        snprintf(note, sizeof note, "arena peak %.0f MB, passes of %lld images%s",
                 (double)cf_ctx_arena_peak(ctx) / 1e6, (long long)pass,
                 c->recompute == 2 ? ", recompute, rebuilt inputs"
                 : recompute      ? ", recompute"
                                  : "");
        report(o, c->name, shape, bench_median(t, repeats), repeats, (double)c->batch, note);
    }
    free(t);
    cf_tensor_free(x);
    cf_batcher_free(b);
    cf_dataset_free(ds);
    cf_ctx_free(ctx);
    cf_adam_free(opt);
    cf_flow_free(flow);
    return status;
}

static int run_sample(const bench_opts *o, const model_case *c)
{
    char shape[128];
    shape_of(c, shape, sizeof shape);
    cf_flow *flow = cf_flow_new(&c->cfg, CF_F32);
    cf_ctx *ctx = cf_ctx_new(0);
    if (!flow || !ctx) {
        fprintf(stderr, "bench %s: %s\n", c->name, cf_last_error());
        return 1;
    }
    /* Actnorm's data-dependent initialisation from a forward pass over synthetic images, as
     * training does (sampling an uninitialised flow would initialise it from its own samples),
     * then the networks' zero-initialised output layers moved off zero, as training would. */
    char spec[64];
    snprintf(spec, sizeof spec, "synthetic:%lldx%lldx%lld:%lld", (long long)c->cfg.height,
             (long long)c->cfg.width, (long long)c->cfg.channels, (long long)c->batch);
    cf_dataset *ds = cf_dataset_open(spec, "train");
    cf_batcher *b = ds ? cf_batcher_new(ds, &(cf_batcher_opts){.batch = c->batch, .seed = 1}) : NULL;
    cf_tensor *x0 = cf_tensor_alloc(CF_F32, 4, (int64_t[]){c->batch, c->cfg.height, c->cfg.width,
                                                           c->cfg.channels});
    if (!b || !x0 || cf_batcher_next(b, x0, NULL, NULL) != CF_OK) {
        fprintf(stderr, "bench %s: %s\n", c->name, cf_last_error());
        return 1;
    }
    bool grad_was = cf_ctx_set_grad(ctx, false);
    cf_flow_log_prob(flow, ctx, x0, NULL);
    cf_ctx_set_grad(ctx, grad_was);
    cf_tensor_free(x0);
    cf_batcher_free(b);
    cf_dataset_free(ds);
    if (cf_ctx_status(ctx) != CF_OK) {
        fprintf(stderr, "bench %s: %s\n", c->name, cf_ctx_error(ctx));
        return 1;
    }
    cf_ctx_reset(ctx);
    cf_flow_trim(flow);
    cf_rng rng;
    cf_rng_seed(&rng, 3, 0);
    cf_params *ps = cf_flow_params(flow);
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *p = cf_params_at(ps, i);
        if (strstr(p->name, "out.")) cf_tensor_fill_normal(p, &rng, 0, 0.01);
    }
    int repeats = c->cfg.hidden >= 512 ? (o->repeats < 2 ? o->repeats : 2) : o->repeats;
    int warm = 1, status = 0;
    double *t = malloc((size_t)repeats * sizeof *t);
    for (int r = 0; r < warm + repeats; r++) {
        cf_tensor *x;
        double t0 = bench_now();
        if (cf_flow_sample(flow, ctx, c->batch, 0.7, &rng, &x) != CF_OK) {
            fprintf(stderr, "bench %s: %s\n", c->name, cf_ctx_error(ctx));
            status = 1;
            break;
        }
        if (r >= warm) t[r - warm] = bench_now() - t0;
        cf_ctx_reset(ctx);
    }
    if (status == 0) report(o, c->name, shape, bench_median(t, repeats), repeats, (double)c->batch, NULL);
    free(t);
    cf_ctx_free(ctx);
    cf_flow_free(flow);
    return status;
}

int bench_train(const bench_opts *o)
{
    int status = 0;
    for (size_t i = 0; i < sizeof train_cases / sizeof train_cases[0]; i++)
        if (bench_selected(o, train_cases[i].name)) status |= run_train(o, &train_cases[i]);
    return status;
}

int bench_sample(const bench_opts *o)
{
    int status = 0;
    for (size_t i = 0; i < sizeof sample_cases / sizeof sample_cases[0]; i++)
        if (bench_selected(o, sample_cases[i].name)) status |= run_sample(o, &sample_cases[i]);
    return status;
}
