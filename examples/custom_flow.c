/* custom_flow.c: declaring a flow architecture of your own against the public headers, and
 * training it for a few steps.
 *
 * A RealNVP-style flow on 16 x 16 gray images: affine couplings with Glow's LU 1x1
 * convolutions (no 3x3 masked convs), and a split schedule unlike Glow's: after the first
 * squeeze, one step, then half the channels leave; after the second squeeze, three steps and
 * another split before the prior. The images are made here: soft discs of random centre and
 * radius, quantized to 8 bits.
 *
 * Run: ./custom_flow [steps]   (prints the layer list and bits/dim per step)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cincflow.h"

#define SIDE 16
#define BATCH 16

/* Adds actnorm, 1x1 conv and affine coupling as step `j` of level `i`. */
static cf_status add_step(cf_flow *f, cf_params *ps, int i, int j, const int64_t *shape,
                          cf_rng *rng)
{
    char name[64];
    snprintf(name, sizeof name, "levels.%d.steps.%d.actnorm", i, j);
    cf_status st = cf_flow_add(f, cf_actnorm_layer(ps, name, shape));
    snprintf(name, sizeof name, "levels.%d.steps.%d.invconv", i, j);
    if (st == CF_OK) st = cf_flow_add(f, cf_invconv1x1_layer(ps, name, shape, rng));
    snprintf(name, sizeof name, "levels.%d.steps.%d.coupling", i, j);
    if (st == CF_OK)
        st = cf_flow_add(f, cf_coupling_layer(ps, name, shape, CF_COUPLING_KIND_AFFINE, 32, rng));
    return st;
}

static cf_flow *build(cf_rng *rng)
{
    int64_t shape[3] = {SIDE, SIDE, 1};
    cf_flow *f = cf_flow_empty(shape, CF_F32);
    if (!f) return NULL;
    cf_params *ps = cf_flow_params(f);
    const int steps[2] = {1, 3};
    cf_status st = CF_OK;
    for (int i = 0; i < 2 && st == CF_OK; i++) {
        char name[64];
        snprintf(name, sizeof name, "levels.%d.squeeze", i);
        st = cf_flow_add(f, cf_squeeze_layer(name, shape));
        shape[0] /= 2, shape[1] /= 2, shape[2] *= 4;
        for (int j = 0; j < steps[i] && st == CF_OK; j++) st = add_step(f, ps, i, j, shape, rng);
        snprintf(name, sizeof name, "levels.%d.split", i);
        if (st == CF_OK) st = cf_flow_add(f, cf_split_layer(ps, name, shape));
        shape[2] /= 2;
    }
    if (st == CF_OK) st = cf_flow_add(f, cf_prior_layer(ps, "prior", shape));
    if (st != CF_OK) {
        fprintf(stderr, "custom_flow: %s\n", cf_last_error());
        cf_flow_free(f);
        return NULL;
    }
    return f;
}

/* A batch of soft discs, dequantized: x = k/256 - 0.5 + U(0, 1/256). */
static void make_batch(cf_tensor *x, cf_rng *rng)
{
    for (int b = 0; b < BATCH; b++) {
        double cy = 4 + 8 * cf_rng_uniform(rng), cx = 4 + 8 * cf_rng_uniform(rng);
        double r = 2 + 3 * cf_rng_uniform(rng);
        for (int i = 0; i < SIDE; i++)
            for (int j = 0; j < SIDE; j++) {
                double d = sqrt((i - cy) * (i - cy) + (j - cx) * (j - cx));
                int k = (int)(255.0 / (1.0 + exp(2.0 * (d - r))));
                cf_tensor_set(x, (b * SIDE + i) * SIDE + j,
                              k / 256.0 - 0.5 + cf_rng_uniform(rng) / 256.0);
            }
    }
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 30;
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    cf_flow *flow = build(&rng);
    if (!flow) return 1;
    cf_flow_print(flow, stdout);
    cf_params *ps = cf_flow_params(flow);
    cf_adam *opt = cf_adam_new(ps, &(cf_adam_opts){.lr = 1e-3, .warmup_steps = 10});
    cf_ctx *ctx = cf_ctx_new(0);
    double first = 0, last = 0;
    for (int step = 0; step < steps; step++) {
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, BATCH, SIDE, SIDE, 1);
        make_batch(x, &rng);
        cf_tensor *bpd = cf_flow_bpd(flow, ctx, x);
        cf_params_zero_grad(ps);
        if (cf_backward(ctx, bpd) != CF_OK) {
            fprintf(stderr, "custom_flow: %s\n", cf_ctx_error(ctx));
            return 1;
        }
        cf_adam_step(opt, NULL);
        last = cf_tensor_get(bpd, 0);
        if (step == 0) first = last;
        printf("step %3d  bits/dim %.4f\n", step, last);
        cf_ctx_reset(ctx);
    }
    printf("bits/dim %.4f -> %.4f\n", first, last);
    cf_ctx_free(ctx);
    cf_adam_free(opt);
    cf_flow_free(flow);
    return last < first ? 0 : 1;
}
