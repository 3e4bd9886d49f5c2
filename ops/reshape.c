/* reshape.c: the same elements under a new shape. The output is a view of the input's data
 * (no copy); its gradient is its own buffer, added into the input's in backward. */
#include <string.h>

#include "cf_ops_impl.h"

static cf_status reshape_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                               cf_shape *out)
{
    (void)n_in;
    const cf_reshape_attrs *a = attrs;
    const cf_tensor *x = in[0];
    char s[96];
    if (a->ndim < 0 || a->ndim > CF_MAX_DIMS)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'reshape': %d axes (0 to %d)", a->ndim,
                           CF_MAX_DIMS);
    int infer_at = -1;
    int64_t known = 1;
    out[0].ndim = a->ndim;
    for (int d = 0; d < a->ndim; d++) {
        out[0].shape[d] = a->shape[d];
        if (a->shape[d] == -1 && infer_at < 0) {
            infer_at = d;
        } else if (a->shape[d] < 0) {
            return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'reshape': axis %d has size %lld", d,
                               (long long)a->shape[d]);
        } else {
            known *= a->shape[d];
        }
    }
    if (infer_at >= 0) {
        if (known == 0 || x->numel % known)
            return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'reshape': %s cannot be viewed with axis "
                               "%d inferred", CF__DESC(x, s), infer_at);
        out[0].shape[infer_at] = x->numel / known;
        known = x->numel;
    }
    if (known != x->numel)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'reshape': %s has %lld elements, the new "
                           "shape %lld", CF__DESC(x, s), (long long)x->numel, (long long)known);
    return CF_OK;
}

static cf_status reshape_fwd(cf_node *n)
{
    /* A view: point at the input's data (the output's own zeroed buffer stays unused). */
    n->out[0]->data = n->in[0]->data;
    n->out[0]->flags |= CF_TENSOR_VIEW;
    return CF_OK;
}

static cf_status reshape_bwd(cf_node *n)
{
    const cf_tensor *x = n->in[0], *y = n->out[0];
    void *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    for (int64_t k = 0; k < x->numel; k++)
        cf_buf_set(x->dtype, dx, k, cf_buf_get(x->dtype, dx, k) + cf_buf_get(y->dtype, y->grad, k));
    return CF_OK;
}

static cf_status reshape_bwd_f32(cf_node *n)
{
    float *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    const float *g = n->out[0]->grad;
    int64_t N = n->in[0]->numel;
#pragma omp parallel for schedule(static) if (N > CF__PAR_MIN)
    for (int64_t k = 0; k < N; k++) dx[k] += g[k];
    return CF_OK;
}

static bool reshape_case(int index, cf_op_case *c)
{
    if (index >= 1) return false;
    cf_reshape_attrs *a = (cf_reshape_attrs *)c->attrs;
    c->n_in = 1;
    c->ndim[0] = 4;
    c->shape[0][0] = 2, c->shape[0][1] = 3, c->shape[0][2] = 4, c->shape[0][3] = 5;
    c->lo[0] = -2, c->hi[0] = 2;
    a->ndim = 2, a->shape[0] = 2, a->shape[1] = -1;
    c->label = "flatten";
    return true;
}

const cf_op_def cf__op_reshape = {
    .name = "reshape",
    .n_inputs = 1,
    .n_outputs = 1,
    .attrs_size = sizeof(cf_reshape_attrs),
    .infer = reshape_infer,
    .forward = reshape_fwd,
    .backward = reshape_bwd,
    .fast = {[CF_F32] = {reshape_fwd, reshape_bwd_f32}},
    .make_case = reshape_case,
    .doc = "the same elements under a new shape (a view)",
};

cf_tensor *cf_reshape(cf_ctx *ctx, cf_tensor *x, int ndim, const int64_t *shape)
{
    CF_ASSERT(ndim >= 0 && ndim <= CF_MAX_DIMS, "cf_reshape to %d axes", ndim);
    cf_reshape_attrs a = {.ndim = ndim};
    for (int d = 0; d < ndim; d++) a.shape[d] = shape[d];
    return cf_op_apply1(ctx, &cf__op_reshape, 1, &x, &a);
}
