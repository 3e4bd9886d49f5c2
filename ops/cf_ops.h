/* cf_ops.h: the built-in ops, as functions that build one tape node each.
 *
 * Every function here is a thin wrapper over cf_op_apply() with the op's registered definition
 * (cf_op_find("add") returns the same definition cf_add uses). Each returns an arena tensor, or
 * NULL once the context holds a failure (bad shapes, arena exhausted): see cf_tensor.h. All
 * inputs of one op share a dtype.
 *
 * Broadcasting (add, sub, mul, div): numpy's rule, shapes aligned on their trailing axes, a
 * size-1 axis stretching to the other's size, so a per-channel bias (C) or (1, 1, 1, C) applies
 * to an NHWC tensor (B, H, W, C); the gradient of a broadcast input is summed over the axes it
 * was stretched along.
 */
#ifndef CF_OPS_H
#define CF_OPS_H

#include "cf_op.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- element-wise, with broadcasting ----------------------------------------------- */
cf_tensor *cf_add(cf_ctx *ctx, cf_tensor *a, cf_tensor *b); /* a + b */
cf_tensor *cf_sub(cf_ctx *ctx, cf_tensor *a, cf_tensor *b); /* a - b */
cf_tensor *cf_mul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b); /* a * b */
cf_tensor *cf_div(cf_ctx *ctx, cf_tensor *a, cf_tensor *b); /* a / b */

/* ---- element-wise, unary ----------------------------------------------------------- */
typedef struct cf_scale_attrs {
    double factor;
} cf_scale_attrs;
cf_tensor *cf_scale(cf_ctx *ctx, cf_tensor *x, double factor); /* factor * x */
cf_tensor *cf_exp(cf_ctx *ctx, cf_tensor *x);
cf_tensor *cf_log(cf_ctx *ctx, cf_tensor *x); /* natural log; x > 0 */
cf_tensor *cf_sigmoid(cf_ctx *ctx, cf_tensor *x);
cf_tensor *cf_log_sigmoid(cf_ctx *ctx, cf_tensor *x); /* log(sigmoid(x)), stable for large |x| */
cf_tensor *cf_relu(cf_ctx *ctx, cf_tensor *x);
cf_tensor *cf_softplus(cf_ctx *ctx, cf_tensor *x); /* log(1 + exp(x)), stable */
cf_tensor *cf_tanh(cf_ctx *ctx, cf_tensor *x);

/* ---- reductions -------------------------------------------------------------------- */
typedef struct cf_reduce_attrs {
    int all; /* 0: over every axis but the batch, giving (B); 1: over everything, a scalar */
} cf_reduce_attrs;
cf_tensor *cf_sum(cf_ctx *ctx, cf_tensor *x);      /* (B, ...) -> (B) */
cf_tensor *cf_mean(cf_ctx *ctx, cf_tensor *x);     /* (B, ...) -> (B) */
cf_tensor *cf_sum_all(cf_ctx *ctx, cf_tensor *x);  /* -> () */
cf_tensor *cf_mean_all(cf_ctx *ctx, cf_tensor *x); /* -> () */

/* ---- shape ------------------------------------------------------------------------- */
/* Joins n tensors (n <= CF_MAX_INPUTS) along the last (channel) axis; other axes must match. */
cf_tensor *cf_concat(cf_ctx *ctx, int n, cf_tensor *const *xs);

typedef struct cf_split_attrs {
    int n;                          /* parts, 1 to CF_MAX_OUTPUTS */
    int64_t sizes[CF_MAX_OUTPUTS];  /* channels of each part; they sum to x's channels */
} cf_split_attrs;
/* Splits x along the last axis into n parts of the given sizes, written to out[0..n).
 * Returns CF_OK or the context's failure. */
cf_status cf_split(cf_ctx *ctx, cf_tensor *x, int n, const int64_t *sizes, cf_tensor **out);

typedef struct cf_reshape_attrs {
    int ndim;
    int64_t shape[CF_MAX_DIMS]; /* one entry may be -1: inferred from the element count */
} cf_reshape_attrs;
/* Same elements, new shape (a view: no copy). */
cf_tensor *cf_reshape(cf_ctx *ctx, cf_tensor *x, int ndim, const int64_t *shape);

/* ---- linear algebra ---------------------------------------------------------------- */
/* a (..., K) times b (K, N) -> (..., N): every leading axis of a is a row. BLAS for f32. */
cf_tensor *cf_matmul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b);

/* ---- densities --------------------------------------------------------------------- */
/* Log-density of a diagonal Gaussian, summed over every axis but the batch: (B, ...) -> (B).
 *   standard:   sum -0.5 * (log(2 pi) + x^2)
 *   with mean and log-scale (shapes of x, or of x with batch 1 to share across the batch):
 *               sum -0.5 * log(2 pi) - logs - 0.5 * ((x - mean) * exp(-logs))^2 */
cf_tensor *cf_gaussian_logp_std(cf_ctx *ctx, cf_tensor *x);
cf_tensor *cf_gaussian_logp(cf_ctx *ctx, cf_tensor *x, cf_tensor *mean, cf_tensor *logs);

/* ---- flow transforms ----------------------------------------------------------------- */
/* Glow's actnorm: (x + bias) * exp(logs), bias and logs of shape (C) for x (..., C); and the
 * same followed by a ReLU, fused (one node, one output tensor). */
typedef struct cf_actnorm_attrs {
    int relu;
} cf_actnorm_attrs;
cf_tensor *cf_actnorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *bias, cf_tensor *logs);
cf_tensor *cf_actnorm_relu(cf_ctx *ctx, cf_tensor *x, cf_tensor *bias, cf_tensor *logs);

/* Coupling transforms (ops/coupling.c). x (B, H, W, C) is cut along channels into blocks; the
 * network output h_k (B, H, W, 2 c_k) transforms block k (the last blocks, in order; the first
 * block, of the remaining channels, passes through):
 *   t = h_k[..., 0::2], l = h_k[..., 1::2], y_k = (x_k + t) * sigmoid(l + 2)
 * and *logdet (B) is the per-image sum of log sigmoid(l + 2). Affine: one network output (the
 * last C - C/2 channels); quad: three (the last three quarters). *y and *logdet are arena
 * tensors, NULL on failure. */
cf_status cf_affine_coupling(cf_ctx *ctx, cf_tensor *x, cf_tensor *h, cf_tensor **y,
                             cf_tensor **logdet);
cf_status cf_quad_coupling(cf_ctx *ctx, cf_tensor *x, cf_tensor *h1, cf_tensor *h2,
                           cf_tensor *h3, cf_tensor **y, cf_tensor **logdet);
/* Inverts one block in place of x, off the tape: x_k = y_k / sigmoid(l + 2) - t, for the
 * block of h's width starting at channel `offset`; other channels of x are left as they are.
 * x and y have the same shape and dtype (x may be y). */
void cf_coupling_inverse_block(cf_tensor *x, const cf_tensor *y, const cf_tensor *h,
                               int64_t offset);

/* The definition behind each built-in, for gradcheck and cf_op_apply. */
#define CF__OP_DECL(upper, name) extern const cf_op_def cf__op_##name;
#include "cf_op_list.h"
CF_OP_LIST(CF__OP_DECL)
#undef CF__OP_DECL

#ifdef __cplusplus
}
#endif
#endif
