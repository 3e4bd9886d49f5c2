/* bench_inverse.c: `cincflow bench inverse`: inverses of masked convolutions for a batch of
 * 100 images (sampling), through cf_masked_conv_inverse_ex with a workspace allocated once
 * (as a flow layer does from its arena):
 *   - one CInC inverse at each level of the paper's CIFAR-10 model (16x16x12, 8x8x24,
 *     4x4x48) and the emerging causal and anti-causal ones at 16x16x12;
 *   - cinc_inverse_paper_b100: all 96 CInC inverses of that model (32 layers per level, each
 *     with its own weights, initialised as DESIGN.md says: identity plus N(0, 0.02)).
 * FLOPs are those of the per-pixel products: 2 * B * H * W * C^2 * (taps the mask keeps, the
 * current one included). The reference is timed on the same shapes (one layer per level, then
 * scaled by the 32 layers for the paper total).
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench_impl.h"

#define BATCH 100
#define LAYERS 32

typedef struct inv_case {
    const char *name;
    int64_t H, W, C;
    cf_conv_mask mask;
} inv_case;

static const inv_case levels[] = {
    {"cinc_inverse_16x16x12_b100", 16, 16, 12, CF_CONV_MASK_CINC},
    {"cinc_inverse_8x8x24_b100", 8, 8, 24, CF_CONV_MASK_CINC},
    {"cinc_inverse_4x4x48_b100", 4, 4, 48, CF_CONV_MASK_CINC},
    {"emerging_causal_inverse_16x16x12_b100", 16, 16, 12, CF_CONV_MASK_EMERGING_CAUSAL},
    {"emerging_anticausal_inverse_16x16x12_b100", 16, 16, 12, CF_CONV_MASK_EMERGING_ANTICAUSAL},
};

static cf_tensor *init_weight(int64_t C, cf_conv_mask mask, cf_rng *rng)
{
    cf_tensor *w = cf_tensor_alloc(CF_F32, 4, (int64_t[]){3, 3, C, C});
    if (!w) return NULL;
    cf_tensor_fill_normal(w, rng, 0.0, 0.02);
    const int ce = cf_conv_mask_centre(mask);
    for (int64_t o = 0; o < C; o++) {
        const int64_t e = ((ce * 3 + ce) * C + o) * C + o;
        cf_tensor_set(w, e, cf_tensor_get(w, e) + 1.0);
    }
    return w;
}

static double flops_of(const inv_case *c)
{
    const double taps = c->mask == CF_CONV_MASK_CINC ? 9 : 4;
    return 2.0 * BATCH * (double)(c->H * c->W) * (double)(c->C * c->C) * taps;
}

/* One level's data: LAYERS weights, biases, an input y and an output x. */
typedef struct level_data {
    cf_tensor *w[LAYERS], *b[LAYERS], *y, *x;
} level_data;

static bool level_init(level_data *d, const inv_case *c, int layers, cf_rng *rng)
{
    *d = (level_data){0};
    d->y = cf_tensor_alloc(CF_F32, 4, (int64_t[]){BATCH, c->H, c->W, c->C});
    d->x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){BATCH, c->H, c->W, c->C});
    if (!d->y || !d->x) return false;
    cf_tensor_fill_normal(d->y, rng, 0, 1);
    for (int l = 0; l < layers; l++) {
        d->w[l] = init_weight(c->C, c->mask, rng);
        d->b[l] = cf_tensor_alloc(CF_F32, 1, (int64_t[]){c->C});
        if (!d->w[l] || !d->b[l]) return false;
        cf_tensor_fill_normal(d->b[l], rng, 0, 0.1);
    }
    return true;
}

static void level_free(level_data *d)
{
    for (int l = 0; l < LAYERS; l++) cf_tensor_free(d->w[l]), cf_tensor_free(d->b[l]);
    cf_tensor_free(d->y), cf_tensor_free(d->x);
}

/* Runs `layers` inverses of each of the n levels once; returns seconds or -1 on failure. */
static double run_levels(const inv_case *cs, level_data *ds, int n, int layers,
                         const cf_conv_inverse_opts *opts)
{
    const double t0 = bench_now();
    for (int v = 0; v < n; v++) {
        const cf_conv_attrs a = cf_conv_attrs_masked(cs[v].mask);
        for (int l = 0; l < layers; l++) {
            /* Each layer inverts the previous one's output, as sampling does. */
            const cf_tensor *in = l % 2 ? ds[v].x : ds[v].y;
            cf_tensor *out = l % 2 ? ds[v].y : ds[v].x;
            if (cf_masked_conv_inverse_ex(out, in, ds[v].w[l], ds[v].b[l], &a, opts) != CF_OK) {
                fprintf(stderr, "bench %s: %s\n", cs[v].name, cf_last_error());
                return -1;
            }
        }
    }
    return bench_now() - t0;
}

/* Median/min over repeats of run_levels. */
static bool measure(const bench_opts *o, const inv_case *cs, level_data *ds, int n, int layers,
                    const cf_conv_inverse_opts *opts, int repeats, double min_seconds,
                    double *median, double *min, int *count)
{
    double times[200], total = 0;
    int k = 0;
    if (run_levels(cs, ds, n, layers, opts) < 0) return false; /* warm-up: JIT, page faults */
    while (k < 200) {
        const double dt = run_levels(cs, ds, n, layers, opts);
        if (dt < 0) return false;
        times[k++] = dt;
        total += dt;
        if (k >= repeats && total >= min_seconds) break;
    }
    (void)o;
    *count = k;
    double lo = times[0];
    for (int i = 1; i < k; i++) lo = times[i] < lo ? times[i] : lo;
    *min = lo;
    *median = bench_median(times, k);
    return true;
}

int bench_inverse(const bench_opts *o)
{
    cf_rng rng;
    cf_rng_seed(&rng, 7, 0);
    const int n_levels = (int)(sizeof levels / sizeof levels[0]);
    level_data ds[sizeof levels / sizeof levels[0]];
    size_t ws = 0;
    for (int v = 0; v < n_levels; v++) {
        if (!level_init(&ds[v], &levels[v], v < 3 ? LAYERS : 1, &rng)) {
            fprintf(stderr, "bench: out of memory\n");
            return 1;
        }
        const cf_conv_attrs a = cf_conv_attrs_masked(levels[v].mask);
        size_t need = cf_masked_conv_inverse_workspace(ds[v].y, &a);
        ws = need > ws ? need : ws;
    }
    void *workspace = aligned_alloc(64, (ws + 63) & ~(size_t)63);
    if (!workspace) return 1;
    const cf_conv_inverse_opts fast = {CF_KERNELS_FAST, workspace, ws};
    const cf_conv_inverse_opts ref = {.kernels = CF_KERNELS_REFERENCE};
    int failed = 0;
    double ref_level[3] = {0, 0, 0};

    for (int v = 0; v < n_levels; v++) {
        if (!bench_selected(o, levels[v].name) &&
            !(v < 3 && bench_selected(o, "cinc_inverse_paper_b100")))
            continue;
        bench_result r = {.name = levels[v].name, .flops = flops_of(&levels[v])};
        snprintf(r.shape, sizeof r.shape, "%dx%lldx%lldx%lld %s", BATCH, (long long)levels[v].H,
                 (long long)levels[v].W, (long long)levels[v].C,
                 cf_conv_mask_name(levels[v].mask));
        if (!measure(o, &levels[v], &ds[v], 1, 1, &fast, o->repeats * 4, o->min_seconds / 4,
                     &r.median_s, &r.min_s, &r.repeats)) {
            failed++;
            continue;
        }
        if (o->reference) {
            const double t = run_levels(&levels[v], &ds[v], 1, 1, &ref);
            if (t > 0) {
                r.ref_s = t;
                snprintf(r.ref_note, sizeof r.ref_note, "reference, same shape");
                if (v < 3) ref_level[v] = t;
            }
        }
        if (bench_selected(o, levels[v].name)) bench_report(o, &r);
    }

    if (bench_selected(o, "cinc_inverse_paper_b100")) {
        bench_result r = {.name = "cinc_inverse_paper_b100"};
        snprintf(r.shape, sizeof r.shape, "%dx(16x16x12,8x8x24,4x4x48) x%d cinc", BATCH, LAYERS);
        for (int v = 0; v < 3; v++) r.flops += LAYERS * flops_of(&levels[v]);
        if (measure(o, levels, ds, 3, LAYERS, &fast, o->repeats, o->min_seconds, &r.median_s,
                    &r.min_s, &r.repeats)) {
            if (ref_level[0] > 0 && ref_level[1] > 0 && ref_level[2] > 0) {
                r.ref_s = LAYERS * (ref_level[0] + ref_level[1] + ref_level[2]);
                snprintf(r.ref_note, sizeof r.ref_note, "reference, 1 layer per level x%d",
                         LAYERS);
            }
            bench_report(o, &r);
        } else {
            failed++;
        }
    }
    for (int v = 0; v < n_levels; v++) level_free(&ds[v]);
    free(workspace);
    return failed ? 1 : 0;
}
