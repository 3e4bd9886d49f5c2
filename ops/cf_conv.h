/* cf_conv.h: convolutions, the masked (invertible by construction) convolutions of CInC and
 * Emerging flows, their log-determinant and inverse, and Glow's squeeze.
 *
 * Layouts: activations are NHWC (B, H, W, C); weights are HWIO (KH, KW, C, K), K outputs; a
 * bias has K elements. Stride is 1. Padding is zeros, given per side (top, left, bottom,
 * right), so "same" padding ((1, 1, 1, 1) for 3x3) and CInC's causal padding ((2, 2, 0, 0):
 * output pixel (i, j) sees inputs (i-2..i, j-2..j)) are the same op. The output is
 * (B, H + top + bottom - KH + 1, W + left + right - KW + 1, K).
 *
 *   y[b][i][j][k] = bias[k] + sum_{kh, kw, c} x[b][i + kh - top][j + kw - left][c]
 *                                              * W[kh][kw][c][k] * mask[kh][kw][c][k]
 *
 * Masked convolutions (square 3x3 weights, C == K): the mask is fixed by its kind, and the
 * weight is multiplied by it in forward, so masked entries get a zero gradient (they may hold
 * any value; they are never read). The "current-pixel tap" multiplies the output's own pixel:
 *
 *   CF_CONV_MASK_CINC                 padding (2, 2, 0, 0); all 9 taps; current tap W[2][2]
 *                                     upper-triangular, W[2][2][c][o] = 0 for c < o. Inverse
 *                                     sweeps raster order.
 *   CF_CONV_MASK_EMERGING_CAUSAL      padding (1, 1, 1, 1); taps (0..1, 0..1) (the 2x2 causal
 *                                     neighbourhood); current tap W[1][1] upper-triangular as
 *                                     CInC's. Raster order.
 *   CF_CONV_MASK_EMERGING_ANTICAUSAL  padding (1, 1, 1, 1); taps (1..2, 1..2); current tap
 *                                     W[1][1] lower-triangular, W[1][1][c][o] = 0 for c > o
 *                                     (the causal mask mirrored in space and channels, as
 *                                     Hoogeboom et al. build it). Reverse raster order.
 *
 * In every case the Jacobian dy/dx is triangular with diagonal Wc[o][o] (Wc the current tap),
 * so log|det| = H * W * sum_o log|Wc[o][o]| with no slogdet (cf_conv_logdet).
 *
 * Kernels: reference kernels in plain loops (f64 and f32, any kernel size and padding); fast
 * f32 kernels on libxsmm JIT GEMMs (batch-reduce over taps per output row; one GEMM over all
 * pixels for an unpadded 1x1; im2col and col2im forms for thin channel counts; see
 * ops/conv_xsmm.c), OpenMP over images, used by contexts in CF_KERNELS_FAST mode for kernels up
 * to 7x7 whose padding on each side is below the kernel size; other shapes take the reference
 * path. JIT kernels are generated once per shape and cached (thread-safe).
 *
 * Not here: flow layers (models/), parameter initialisation (identity plus N(0, 0.02) on the
 * current tap is the flows' business).
 */
#ifndef CF_CONV_H
#define CF_CONV_H

#include "cf_op.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cf_conv_mask {
    CF_CONV_MASK_NONE = 0,
    CF_CONV_MASK_CINC = 1,
    CF_CONV_MASK_EMERGING_CAUSAL = 2,
    CF_CONV_MASK_EMERGING_ANTICAUSAL = 3,
    CF_CONV_MASK_COUNT
} cf_conv_mask;

/* Attributes of conv2d (copied into the tape node). */
typedef struct cf_conv_attrs {
    int pad[4];        /* zero padding: top, left, bottom, right; each >= 0 */
    cf_conv_mask mask; /* CF_CONV_MASK_NONE, or a kind that fixes the padding (see above) */
} cf_conv_attrs;

/* Attributes of conv2d_actnorm. */
typedef struct cf_conv_actnorm_attrs {
    int pad[4]; /* zero padding: top, left, bottom, right; each >= 0 */
    int relu;   /* 1: a ReLU after the actnorm */
} cf_conv_actnorm_attrs;

/* Attributes of conv_logdet. */
typedef struct cf_conv_logdet_attrs {
    cf_conv_mask mask;     /* a masked kind (not NONE) */
    int64_t height, width; /* spatial size of the images the conv is applied to */
} cf_conv_logdet_attrs;

/* ---- masks ----------------------------------------------------------------------------- */

/* The attributes of a masked convolution: its padding and mask. mask NONE gives "same"
 * padding for a 3x3 kernel, (1, 1, 1, 1). */
cf_conv_attrs cf_conv_attrs_masked(cf_conv_mask mask);
/* Short name of a mask kind ("cinc", "emerging_causal", ...); "?" for a bad value. */
const char *cf_conv_mask_name(cf_conv_mask mask);
/* 1 when weight entry [kh][kw][c][o] of a 3x3 masked kernel is kept, else 0 (always 1 for
 * NONE). */
int cf_conv_mask_keeps(cf_conv_mask mask, int kh, int kw, int64_t c, int64_t o);
/* The current-pixel tap of a masked kind (kh = kw = 2 for CInC, 1 for the emerging ones). */
int cf_conv_mask_centre(cf_conv_mask mask);
/* true when the kind is solved in reverse raster order (anti-causal). */
bool cf_conv_mask_reverse(cf_conv_mask mask);

/* ---- ops (each returns an arena tensor, or NULL once the context holds a failure) -------- */

/* x (B, H, W, C), weight (KH, KW, C, K), bias (K) or NULL. A masked kind needs a (3, 3, C, C)
 * weight and its own padding (cf_conv_attrs_masked), else CF_ERR_ARG. */
cf_tensor *cf_conv2d(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias,
                     const cf_conv_attrs *attrs);
/* The same with padding (KH-1)/2 on every side ("same" for odd kernels). */
cf_tensor *cf_conv2d_same(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias);
/* Convolution then actnorm in one node: y = act((conv2d_same(x, weight) + bias) * exp(logs)),
 * act the ReLU when relu, else the identity; bias and logs (K). What Glow's coupling networks
 * compute after each hidden convolution, without keeping the pre-activation (the backward
 * needs only y) and with the actnorm applied while the convolution's output is in cache. */
cf_tensor *cf_conv2d_actnorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias,
                             cf_tensor *logs, bool relu);
/* A masked convolution: cf_conv2d with cf_conv_attrs_masked(mask). */
cf_tensor *cf_masked_conv2d(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias,
                            cf_conv_mask mask);

/* log|det dy/dx| of a masked conv with this (3, 3, C, C) weight on height x width images:
 * height * width * sum_o log|Wc[o][o]|, a scalar (shape ()); add it to every image's log-det
 * (it broadcasts). Gradient: height * width / Wc[o][o] on the current tap's diagonal.
 * A zero or non-finite diagonal entry fails with CF_ERR_SINGULAR naming it. */
cf_tensor *cf_conv_logdet(cf_ctx *ctx, cf_tensor *weight, cf_conv_mask mask, int64_t height,
                          int64_t width);

/* Glow's squeeze: (B, H, W, C) -> (B, H/2, W/2, 4C), output channel c*4 + dy*2 + dx taking
 * input pixel (2i + dy, 2j + dx) channel c. Odd H or W fails with CF_ERR_SHAPE. */
cf_tensor *cf_squeeze(cf_ctx *ctx, cf_tensor *x);
/* Its inverse: (B, H, W, 4C) -> (B, 2H, 2W, C). Channels not a multiple of 4: CF_ERR_SHAPE. */
cf_tensor *cf_unsqueeze(cf_ctx *ctx, cf_tensor *x);

/* ---- inverse of a masked convolution (off the tape) -------------------------------------- */

typedef struct cf_conv_inverse_opts {
    cf_kernels kernels; /* CF_KERNELS_FAST (default): the libxsmm kernel for f32 */
    void *workspace;    /* NULL: allocated and freed inside; else at least
                         * cf_masked_conv_inverse_workspace() bytes, 64-byte aligned, borrowed
                         * (its contents on entry do not matter) */
    size_t workspace_size;
} cf_conv_inverse_opts;

/* Solves y = masked_conv(x, weight) + bias for x, for a whole batch: x and y (B, H, W, C),
 * weight (3, 3, C, C), bias (C) or NULL, attrs as cf_conv_attrs_masked(kind). x is the
 * caller's tensor, written in place (it may be y itself); the others are borrowed and left
 * unchanged. One dtype throughout. Returns CF_OK; CF_ERR_SINGULAR, with cf_last_error()
 * naming the entry, when the current tap has a zero or non-finite diagonal entry (then x is
 * not written, so no NaN appears); CF_ERR_SHAPE / CF_ERR_ARG / CF_ERR_DTYPE for inputs that do
 * not fit; CF_ERR_NOMEM. Fast f32 kernel: batch innermost ([h][w][c][b]), the current tap's
 * inverse folded into the weights, one batch-reduce GEMM per pixel; OpenMP over the batch. */
cf_status cf_masked_conv_inverse(cf_tensor *x, const cf_tensor *y, const cf_tensor *weight,
                                 const cf_tensor *bias, const cf_conv_attrs *attrs);
/* The same with options (opts NULL: the defaults). */
cf_status cf_masked_conv_inverse_ex(cf_tensor *x, const cf_tensor *y, const cf_tensor *weight,
                                    const cf_tensor *bias, const cf_conv_attrs *attrs,
                                    const cf_conv_inverse_opts *opts);
/* Bytes of workspace the fast inverse needs for y's shape (0 for the reference kernels, which
 * need none). */
size_t cf_masked_conv_inverse_workspace(const cf_tensor *y, const cf_conv_attrs *attrs);

#ifdef __cplusplus
}
#endif
#endif
