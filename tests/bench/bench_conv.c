/* bench_conv.c: `cincflow bench conv`: the convolutions of the paper's CIFAR-10 model (L=3,
 * K=32, width 512, batch 64; coupling networks conv3x3 C/2->512, conv1x1 512->512,
 * conv3x3 512->C at 16x16x12, 8x8x24, 4x4x48) plus a 3x3 512->512, and of the Fashion-MNIST
 * model (L=2, K=8, width 128; 14x14x4 and 7x7x16; affine and quad couplings), each pass timed on its own through the
 * public op API:
 *   fwd   y = conv2d(x, w, b) with grad recording off;
 *   bwdd  the op's backward kernel, called on its tape node, with only x requiring a gradient
 *         (backward-data);
 *   bwdw  the same with only w and b requiring one (backward-weight and bias).
 * (The backward kernels are called directly so the tape's own work, seeding and zeroing
 * activation gradients, is not counted.)
 * FLOPs are 2 * B * Ho * Wo * C * K * KH * KW per pass (border taps counted, as usual).
 * The reference kernels are timed on one image of the batch and scaled by the batch size.
 *
 * Not here: correctness (tests/test_conv.c checks the same kernels against the reference).
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench_impl.h"

typedef struct conv_case {
    const char *name;
    int64_t B, H, W, C, K, k;
} conv_case;

static const conv_case cases[] = {
    /* paper CIFAR-10 model, batch 64 */
    {"paper_l1_3x3_6to512", 64, 16, 16, 6, 512, 3},
    {"paper_l1_3x3_512to512", 64, 16, 16, 512, 512, 3},
    {"paper_l1_1x1_512to512", 64, 16, 16, 512, 512, 1},
    {"paper_l1_3x3_512to12", 64, 16, 16, 512, 12, 3},
    {"paper_l2_3x3_12to512", 64, 8, 8, 12, 512, 3},
    {"paper_l2_3x3_512to512", 64, 8, 8, 512, 512, 3},
    {"paper_l2_1x1_512to512", 64, 8, 8, 512, 512, 1},
    {"paper_l2_3x3_512to24", 64, 8, 8, 512, 24, 3},
    {"paper_l3_3x3_24to512", 64, 4, 4, 24, 512, 3},
    {"paper_l3_3x3_512to512", 64, 4, 4, 512, 512, 3},
    {"paper_l3_1x1_512to512", 64, 4, 4, 512, 512, 1},
    {"paper_l3_3x3_512to48", 64, 4, 4, 512, 48, 3},
    /* Fashion-MNIST model, batch 64 */
    {"fashion_l1_3x3_2to128", 64, 14, 14, 2, 128, 3},
    {"fashion_l1_1x1_128to128", 64, 14, 14, 128, 128, 1},
    {"fashion_l1_3x3_128to4", 64, 14, 14, 128, 4, 3},
    {"fashion_l2_3x3_8to128", 64, 7, 7, 8, 128, 3},
    {"fashion_l2_1x1_128to128", 64, 7, 7, 128, 128, 1},
    {"fashion_l2_3x3_128to16", 64, 7, 7, 128, 16, 3},
    /* the default (quad coupling) Fashion-MNIST model's networks: C/4, C/2, 3C/4 -> 128 in,
     * 128 -> C/2 out */
    {"quad_l1_3x3_1to128", 64, 14, 14, 1, 128, 3},
    {"quad_l1_3x3_2to128", 64, 14, 14, 2, 128, 3},
    {"quad_l1_3x3_3to128", 64, 14, 14, 3, 128, 3},
    {"quad_l1_3x3_128to2", 64, 14, 14, 128, 2, 3},
    {"quad_l2_3x3_2to128", 64, 7, 7, 2, 128, 3},
    {"quad_l2_3x3_4to128", 64, 7, 7, 4, 128, 3},
    {"quad_l2_3x3_6to128", 64, 7, 7, 6, 128, 3},
    {"quad_l2_3x3_128to4", 64, 7, 7, 128, 4, 3},
};

enum { PASS_FWD, PASS_BWD_DATA, PASS_BWD_WEIGHT };
static const char *pass_names[] = {"fwd", "bwdd", "bwdw"};

static void set_requires(cf_tensor *t, bool on)
{
    if (on) {
        cf_tensor_requires_grad(NULL, t);
    } else {
        t->flags &= ~(unsigned)CF_TENSOR_REQUIRES_GRAD;
    }
}

/* Times `pass` of one case at batch B with a kernel family: the median (and min) over repeats
 * (at least `repeats`, and at least min_seconds measured, at most 200). Returns false on
 * failure (printed). */
static bool time_pass(const conv_case *cc, int64_t B, int pass, cf_kernels kernels, int repeats,
                      double min_seconds, bool warm, double *median, double *min)
{
    cf_rng rng;
    cf_rng_seed(&rng, 42, 0);
    cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){B, cc->H, cc->W, cc->C});
    cf_tensor *w = cf_tensor_alloc(CF_F32, 4, (int64_t[]){cc->k, cc->k, cc->C, cc->K});
    cf_tensor *b = cf_tensor_alloc(CF_F32, 1, (int64_t[]){cc->K});
    cf_ctx *ctx = cf_ctx_new(0);
    if (!x || !w || !b || !ctx) {
        fprintf(stderr, "bench: out of memory\n");
        return false;
    }
    cf_tensor_fill_uniform(x, &rng, -1, 1);
    cf_tensor_fill_normal(w, &rng, 0, 0.05);
    cf_tensor_fill_uniform(b, &rng, -0.1, 0.1);
    set_requires(x, pass == PASS_BWD_DATA);
    set_requires(w, pass == PASS_BWD_WEIGHT);
    set_requires(b, pass == PASS_BWD_WEIGHT);
    cf_ctx_set_kernels(ctx, kernels);
    cf_ctx_set_grad(ctx, pass != PASS_FWD);
    const cf_conv_attrs attrs = {{(int)(cc->k / 2), (int)(cc->k / 2), (int)(cc->k / 2),
                                  (int)(cc->k / 2)}, CF_CONV_MASK_NONE};
    double times[200];
    int n = 0;
    double total = 0;
    bool ok = true;
    for (int r = warm ? -1 : 0; ok && r < 200; r++) {
        cf_ctx_reset(ctx);
        double t0 = bench_now();
        cf_tensor *y = cf_conv2d(ctx, x, w, b, &attrs);
        if (pass != PASS_FWD && y && y->node) {
            /* The op's backward kernel on its tape node, with a constant output gradient. */
            cf_node *nd = y->node;
            float *g = cf_ctx_alloc(ctx, (size_t)y->numel * sizeof(float), "bench seed");
            if (g) {
                for (int64_t e = 0; e < y->numel; e++) g[e] = 1e-3f;
                y->grad = g;
                const cf_kernel_fn bwd = nd->fast && nd->op->fast[CF_F32].backward
                                             ? nd->op->fast[CF_F32].backward
                                             : nd->op->backward;
                t0 = bench_now();
                bwd(nd);
            }
        }
        const double dt = bench_now() - t0;
        if (cf_ctx_status(ctx) != CF_OK) {
            fprintf(stderr, "bench %s: %s\n", cc->name, cf_ctx_error(ctx));
            ok = false;
            break;
        }
        if (r < 0) continue;
        times[n++] = dt;
        total += dt;
        if (n >= repeats && total >= min_seconds) break;
    }
    if (ok) {
        *median = bench_median(times, n);
        *min = times[0];
    }
    cf_ctx_free(ctx);
    cf_tensor_free(x), cf_tensor_free(w), cf_tensor_free(b);
    return ok;
}

int bench_conv(const bench_opts *o)
{
    int failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conv_case *cc = &cases[i];
        for (int pass = 0; pass < 3; pass++) {
            char name[96];
            snprintf(name, sizeof name, "%s_%s", cc->name, pass_names[pass]);
            if (!bench_selected(o, name)) continue;
            bench_result r = {.name = name};
            snprintf(r.shape, sizeof r.shape, "%lldx%lldx%lldx%lld->%lld %lldx%lld",
                     (long long)cc->B, (long long)cc->H, (long long)cc->W, (long long)cc->C,
                     (long long)cc->K, (long long)cc->k, (long long)cc->k);
            r.flops = 2.0 * (double)(cc->B * cc->H * cc->W) * (double)(cc->C * cc->K) *
                      (double)(cc->k * cc->k);
            double median, min;
            if (!time_pass(cc, cc->B, pass, CF_KERNELS_FAST, o->repeats, o->min_seconds, true,
                           &median, &min)) {
                failed++;
                continue;
            }
            r.median_s = median, r.min_s = min, r.repeats = o->repeats;
            if (o->reference) {
                double rm, rmin;
                if (time_pass(cc, 1, pass, CF_KERNELS_REFERENCE, 1, 0, false, &rm, &rmin)) {
                    r.ref_s = rm * (double)cc->B;
                    snprintf(r.ref_note, sizeof r.ref_note, "reference on batch 1, x%lld",
                             (long long)cc->B);
                }
            }
            bench_report(o, &r);
        }
    }
    return failed ? 1 : 0;
}
