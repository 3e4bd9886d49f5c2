/* cf_models_impl.h: helpers shared by the built-in flow layers (not installed): actnorm's
 * data-dependent initialisation, Glow's zero-initialised convolution, batch views, drawing
 * latents. The layer API itself (cf_layer.h) is public; built-in kinds use it as a user's do. */
#ifndef CF_MODELS_IMPL_H
#define CF_MODELS_IMPL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_flow.h"

/* Actnorm with data-dependent initialisation: when *initialized is 0, sets bias = -mean and
 * logs = -log(std + 1e-6) per channel from x's values (over every axis but the channel), and
 * sets the flag; with a reducer in force (below), the statistics are summed over processes.
 * Then returns actnorm(x, bias, logs), followed by a ReLU when relu is set. */
/* The reducer in force on this thread (fn NULL: one process). cf_flow_log_prob sets its flow's
 * around the layers and restores the previous one after: layers reach it without it passing
 * through every layer's signature. Returns the previous one. */
typedef struct cf__reducer {
    cf_reduce_fn fn;
    void *user;
} cf__reducer;
cf__reducer cf__set_reducer(cf__reducer r);
cf_tensor *cf__actnorm_apply(cf_ctx *ctx, cf_tensor *x, cf_tensor *bias, cf_tensor *logs,
                             cf_tensor *initialized, bool relu);

/* Images [b0, b0 + n) of t (batch first), as a view into its data (an arena header, no
 * copy, not on the tape: for grad-free passes and for inputs). */
cf_tensor *cf__batch_view(cf_ctx *ctx, const cf_tensor *t, int64_t b0, int64_t n);
/* Channels [start, start + count) of x (B, H, W, C), on the tape. */
cf_tensor *cf__channels(cf_ctx *ctx, cf_tensor *x, int64_t start, int64_t count);

/* Glow's conv2d_zeros: (conv3x3_same(x, weight) + bias) * exp(3 logs), all zero-initialised;
 * computed as one conv2d_actnorm node without ReLU, with 3 logs as its log-scale. */
typedef struct cf__zero_conv {
    cf_tensor *weight, *bias, *logs;
} cf__zero_conv;
bool cf__zero_conv_init(cf__zero_conv *z, cf_layer *l, const cf_layer_args *a,
                        const char *prefix, int64_t in_channels, int64_t out_channels);
cf_tensor *cf__zero_conv_apply(cf_ctx *ctx, const cf__zero_conv *z, cf_tensor *x);

/* FLOPs of a k x k "same" convolution on one H x W image from C to K channels. */
static inline double cf__conv_flops(int64_t H, int64_t W, int64_t k, int64_t C, int64_t K)
{
    return 2.0 * (double)(H * W) * (double)(k * k) * (double)C * (double)K;
}

/* A draw of N(mean, (exp(logs) * T)^2) per element, off the tape; mean and logs have x's shape
 * or batch 1. */
void cf__draw_gaussian(cf_tensor *x, const cf_tensor *mean, const cf_tensor *logs, double T,
                       cf_rng *rng);

#endif
