/* cf_ops_impl.h: helpers shared by the built-in ops (not installed).
 *
 * Broadcast iteration for binary ops, and small inline accessors. Reference kernels read and
 * write elements as double through cf_buf_get/cf_buf_set, so one plain loop serves f32 and
 * f64; fast kernels are separate f32 loops.
 */
#ifndef CF_OPS_IMPL_H
#define CF_OPS_IMPL_H

#include <math.h>
#include <stdio.h>

#include "cf_ops.h"

/* Broadcast geometry of out = f(a, b), all aligned to 4 axes (leading size-1 axes added). */
typedef struct cf__bcast {
    int64_t shape[CF_MAX_DIMS];    /* output shape, 4 axes */
    int64_t astride[CF_MAX_DIMS];  /* element strides of a over the output's axes; 0: broadcast */
    int64_t bstride[CF_MAX_DIMS];
    int out_ndim;
} cf__bcast;

/* Computes the broadcast of a and b; false (with a context failure naming op_name and both
 * shapes) when they do not broadcast. */
bool cf__bcast_init(cf__bcast *bc, cf_ctx *ctx, const char *op_name, const cf_tensor *a,
                    const cf_tensor *b);

/* Flat offsets into a and b of output element (i0, i1, i2, i3). */
static inline int64_t cf__bc_a(const cf__bcast *bc, int64_t i0, int64_t i1, int64_t i2,
                               int64_t i3)
{
    return i0 * bc->astride[0] + i1 * bc->astride[1] + i2 * bc->astride[2] + i3 * bc->astride[3];
}
static inline int64_t cf__bc_b(const cf__bcast *bc, int64_t i0, int64_t i1, int64_t i2,
                               int64_t i3)
{
    return i0 * bc->bstride[0] + i1 * bc->bstride[1] + i2 * bc->bstride[2] + i3 * bc->bstride[3];
}

/* Element-wise work below this many elements stays on one thread. */
#define CF__PAR_MIN 32768

/* Actnorm's fast backward over P rows of C channels (actnorm.c), shared with the fused
 * convolution + actnorm (conv_actnorm.c): from g = dy and the output y, dx (written when set,
 * else added into; NULL: none; with set it may be g itself) and db, dl (added into; NULL:
 * none). False when scratch could not be had (the context holds the failure). */
bool cf__actnorm_backward_f32(cf_node *n, const float *g, const float *y, const float *logs,
                              int64_t P, int64_t C, bool relu, float *dx, bool set, float *db,
                              float *dl);

/* Describes a tensor's shape into a local buffer, for messages. */
#define CF__DESC(t, buf) cf_tensor_describe((t), (buf), sizeof(buf))

#endif
