/* conv_actnorm.c: a convolution followed by actnorm (and optionally a ReLU) in one node, as
 * Glow's coupling networks use them: conv (no bias) -> actnorm -> ReLU.
 *
 *   pre = conv2d(x, W) (stride 1, padding per side, no mask, no bias)
 *   y   = act((pre + bias) * exp(logs)),  act = ReLU with attrs.relu, else the identity
 *
 * Why fused: the fast kernel applies the actnorm to each block of output rows right after the
 * GEMM writes it, while it is in cache, instead of a second pass over the whole activation; and
 * the pre-activation is never kept (the backward needs only y). One activation-sized tensor
 * less on the tape per network layer and one memory pass less in every forward, sampling
 * included.
 *
 * Gradients, with g = dy masked by y > 0 under the ReLU and e = exp(logs):
 *   dbias_k = sum_p g e_k,  dlogs_k = sum_p g y,  dpre = g e,
 * then dx, dW as conv2d's backward of dpre.
 *
 * Reference kernels: conv2d's plain loops in double (cf__conv_ref_forward/backward) and the
 * actnorm in double, every dtype. Fast f32: the conv2d drivers with an epilogue, actnorm's
 * backward pass into a scratch dpre, then the drivers' backward-data and backward-weight.
 *
 * Legend: P = B * Ho * Wo output pixels, K output channels.
 */
#include <string.h>

#include "cf_conv_impl.h"

static cf_status conv_actnorm_infer(cf_ctx *ctx, const void *attrs, int n_in,
                                    cf_tensor *const *in, cf_shape *out)
{
    (void)n_in;
    const cf_conv_actnorm_attrs *a = attrs;
    const cf_tensor *x = in[0], *w = in[1];
    char s[96], t[96], u[96];
    if (x->ndim != 4 || x->shape[1] < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d_actnorm': x %s must be (B, H, W, C) "
                           "with H, W, C >= 1", CF__DESC(x, s));
    if (w->ndim != 4 || w->shape[2] != x->shape[3] || w->shape[0] < 1 || w->shape[1] < 1 ||
        w->shape[3] < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d_actnorm': weight %s must be (KH, KW, "
                           "C, K) with C = %lld, the channels of x %s", CF__DESC(w, s),
                           (long long)x->shape[3], CF__DESC(x, t));
    const int64_t K = w->shape[3];
    if (in[2]->ndim != 1 || in[2]->numel != K || in[3]->ndim != 1 || in[3]->numel != K)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d_actnorm': bias %s and logs %s must "
                           "be (K) with K = %lld, the outputs of weight %s", CF__DESC(in[2], s),
                           CF__DESC(in[3], t), (long long)K, CF__DESC(w, u));
    for (int i = 0; i < 4; i++)
        if (a->pad[i] < 0)
            return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'conv2d_actnorm': padding (%d, %d, %d, %d) "
                               "(top, left, bottom, right) has a negative side", a->pad[0],
                               a->pad[1], a->pad[2], a->pad[3]);
    const int64_t Ho = x->shape[1] + a->pad[0] + a->pad[2] - w->shape[0] + 1;
    const int64_t Wo = x->shape[2] + a->pad[1] + a->pad[3] - w->shape[1] + 1;
    if (Ho < 1 || Wo < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d_actnorm': a %lldx%lld kernel does not "
                           "fit x %s with padding (%d, %d, %d, %d)", (long long)w->shape[0],
                           (long long)w->shape[1], CF__DESC(x, s), a->pad[0], a->pad[1],
                           a->pad[2], a->pad[3]);
    out[0].ndim = 4;
    out[0].shape[0] = x->shape[0], out[0].shape[1] = Ho, out[0].shape[2] = Wo;
    out[0].shape[3] = K;
    return CF_OK;
}

static void geom(cf__conv_geom *g, const cf_node *n)
{
    cf__conv_geom_init(g, n->in[0], n->in[1], CF_ATTRS(n, cf_conv_actnorm_attrs)->pad);
}

static bool relu_of(const cf_node *n)
{
    return CF_ATTRS(n, cf_conv_actnorm_attrs)->relu != 0;
}

/* ---- reference kernels ------------------------------------------------------------------ */

static cf_status conv_actnorm_fwd_ref(cf_node *n)
{
    cf__conv_geom g;
    geom(&g, n);
    const cf_tensor *xt = n->in[0], *wt = n->in[1], *bt = n->in[2], *lt = n->in[3];
    cf_tensor *y = n->out[0];
    const double *x = cf__as_f64(n, xt->dtype, xt->data, xt->numel);
    const double *w = cf__as_f64(n, wt->dtype, wt->data, wt->numel);
    double *pre = cf_node_scratch(n, (size_t)y->numel * sizeof(double));
    if (!x || !w || !pre) return cf_ctx_status(n->ctx);
    cf__conv_ref_forward(&g, x, w, NULL, pre);
    const bool relu = relu_of(n);
    for (int64_t i = 0; i < y->numel; i++) {
        const int64_t k = i % g.K;
        double v = (pre[i] + cf_tensor_get(bt, k)) * exp(cf_tensor_get(lt, k));
        cf_tensor_set(y, i, relu && v < 0 ? 0.0 : v);
    }
    return cf_ctx_status(n->ctx);
}

static cf_status conv_actnorm_bwd_ref(cf_node *n)
{
    cf__conv_geom g;
    geom(&g, n);
    const cf_tensor *xt = n->in[0], *wt = n->in[1], *lt = n->in[3], *y = n->out[0];
    const cf_dtype dt = xt->dtype;
    void *dx = cf_node_grad_in(n, 0), *dw = cf_node_grad_in(n, 1);
    void *db = cf_node_grad_in(n, 2), *dl = cf_node_grad_in(n, 3);
    const double *x = cf__as_f64(n, dt, xt->data, xt->numel);
    const double *w = cf__as_f64(n, wt->dtype, wt->data, wt->numel);
    double *dpre = cf_node_scratch(n, (size_t)y->numel * sizeof(double));
    double *sums = cf_node_scratch(n, (size_t)(2 * g.K) * sizeof(double));
    double *gx = dx ? cf_node_scratch(n, (size_t)xt->numel * sizeof(double)) : NULL;
    double *gw = dw ? cf_node_scratch(n, (size_t)wt->numel * sizeof(double)) : NULL;
    if (!x || !w || !dpre || !sums || (dx && !gx) || (dw && !gw)) return cf_ctx_status(n->ctx);
    memset(sums, 0, (size_t)(2 * g.K) * sizeof(double));
    const bool relu = relu_of(n);
    for (int64_t i = 0; i < y->numel; i++) {
        const int64_t k = i % g.K;
        const double yv = cf_tensor_get(y, i);
        const double gv = relu && yv <= 0 ? 0.0 : cf_buf_get(dt, y->grad, i);
        const double e = exp(cf_tensor_get(lt, k));
        sums[k] += gv * e;       /* dbias */
        sums[g.K + k] += gv * yv; /* dlogs */
        dpre[i] = gv * e;
    }
    if (gx) memset(gx, 0, (size_t)xt->numel * sizeof(double));
    if (gw) memset(gw, 0, (size_t)wt->numel * sizeof(double));
    cf__conv_ref_backward(&g, x, w, dpre, gx, gw, NULL);
    if (gx) cf__add_into(dt, dx, gx, xt->numel);
    if (gw) cf__add_into(wt->dtype, dw, gw, wt->numel);
    if (db) cf__add_into(dt, db, sums, g.K);
    if (dl) cf__add_into(dt, dl, sums + g.K, g.K);
    return cf_ctx_status(n->ctx);
}

/* ---- fast f32 kernels ------------------------------------------------------------------- */

static cf_status conv_actnorm_fwd_f32(cf_node *n)
{
    cf__conv_geom g;
    geom(&g, n);
    if (!cf__conv_fast_ok(&g)) return conv_actnorm_fwd_ref(n);
    const float *logs = n->in[3]->data;
    float *scale = cf_node_scratch(n, (size_t)g.K * sizeof(float));
    if (!scale) return cf_ctx_status(n->ctx);
    for (int64_t k = 0; k < g.K; k++) scale[k] = expf(logs[k]);
    const cf__conv_epilogue epi = {n->in[2]->data, scale, relu_of(n)};
    if (cf__conv_forward_f32(n, n->out[0]->data, n->in[0]->data, n->in[1]->data, NULL, &g, false,
                             &epi))
        return CF_OK;
    /* No JIT kernel for this shape (or no scratch): the output is untouched. */
    return cf_ctx_status(n->ctx) != CF_OK ? cf_ctx_status(n->ctx) : conv_actnorm_fwd_ref(n);
}

static cf_status conv_actnorm_bwd_f32(cf_node *n)
{
    cf__conv_geom g;
    geom(&g, n);
    if (!cf__conv_fast_ok(&g)) return conv_actnorm_bwd_ref(n);
    const cf_tensor *y = n->out[0];
    bool dx_fresh;
    float *dx = cf_node_grad_in_ex(n, 0, &dx_fresh), *dw = cf_node_grad_in(n, 1);
    float *db = cf_node_grad_in(n, 2), *dl = cf_node_grad_in(n, 3);
    /* dpre goes over the output's gradient when the tape has no further use for it (its
     * lines are in cache from the read), else to scratch. */
    float *dpre = n->grad_out_dead & 1u ? y->grad
                                        : cf_node_scratch(n, (size_t)y->numel * sizeof(float));
    if (!dpre) return cf_ctx_status(n->ctx);
    /* dpre = g e written, dbias and dlogs added: actnorm's backward with dpre as its dx. */
    if (!cf__actnorm_backward_f32(n, y->grad, y->data, n->in[3]->data, g.B * g.Ho * g.Wo, g.K,
                                  relu_of(n), dpre, true, db, dl))
        return cf_ctx_status(n->ctx);
    if (dx && !cf__conv_backward_data_f32(n, dx, !dx_fresh, dpre, n->in[1]->data, &g))
        return cf_ctx_status(n->ctx) != CF_OK
                   ? cf_ctx_status(n->ctx)
                   : cf_ctx_fail(n->ctx, CF_ERR_STATE, "op 'conv2d_actnorm': no libxsmm kernel "
                                 "for the backward-data pass of a (%lld, %lld, %lld, %lld) input",
                                 (long long)g.B, (long long)g.H, (long long)g.W, (long long)g.C);
    if (dw && !cf__conv_backward_weight_f32(n, dw, NULL, n->in[0]->data, dpre, &g,
                                            CF_CONV_MASK_NONE))
        return cf_ctx_status(n->ctx) != CF_OK
                   ? cf_ctx_status(n->ctx)
                   : cf_ctx_fail(n->ctx, CF_ERR_STATE, "op 'conv2d_actnorm': no libxsmm kernel "
                                 "for the backward-weight pass of a (%lld, %lld, %lld, %lld) "
                                 "input", (long long)g.B, (long long)g.H, (long long)g.W,
                                 (long long)g.C);
    return cf_ctx_status(n->ctx);
}

/* ---- test cases --------------------------------------------------------------------------- */

static bool conv_actnorm_case(int index, cf_op_case *c)
{
    static const struct {
        int64_t x[4], w[4];
        int pad[4];
        int relu;
        const char *label;
    } cases[] = {
        {{2, 4, 5, 3}, {3, 3, 3, 4}, {1, 1, 1, 1}, 1, "3x3 same, relu"},
        {{1, 3, 4, 2}, {3, 3, 2, 3}, {1, 1, 1, 1}, 0, "3x3 same, no relu"},
        {{2, 2, 3, 4}, {1, 1, 4, 5}, {0, 0, 0, 0}, 1, "1x1, relu"},
        {{1, 3, 3, 2}, {3, 3, 2, 2}, {0, 1, 2, 0}, 0, "pad (0, 1, 2, 0)"},
    };
    if (index < 0 || index >= (int)(sizeof cases / sizeof cases[0])) return false;
    c->n_in = 4;
    c->ndim[0] = c->ndim[1] = 4;
    for (int d = 0; d < 4; d++) c->shape[0][d] = cases[index].x[d], c->shape[1][d] = cases[index].w[d];
    c->ndim[2] = c->ndim[3] = 1;
    c->shape[2][0] = c->shape[3][0] = cases[index].w[3];
    c->lo[0] = -1, c->hi[0] = 1, c->lo[1] = -1, c->hi[1] = 1;
    c->lo[2] = -0.5, c->hi[2] = 0.5, c->lo[3] = -0.5, c->hi[3] = 0.5;
    cf_conv_actnorm_attrs *a = (cf_conv_actnorm_attrs *)c->attrs;
    memcpy(a->pad, cases[index].pad, sizeof a->pad);
    a->relu = cases[index].relu;
    c->label = cases[index].label;
    return true;
}

const cf_op_def cf__op_conv2d_actnorm = {
    .name = "conv2d_actnorm",
    .n_inputs = 4,
    .n_outputs = 1,
    .attrs_size = sizeof(cf_conv_actnorm_attrs),
    .infer = conv_actnorm_infer,
    .forward = conv_actnorm_fwd_ref,
    .backward = conv_actnorm_bwd_ref,
    .fast = {[CF_F32] = {conv_actnorm_fwd_f32, conv_actnorm_bwd_f32}},
    .make_case = conv_actnorm_case,
    .doc = "convolution (no bias) then actnorm and an optional ReLU, in one node",
};

cf_tensor *cf_conv2d_actnorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias,
                             cf_tensor *logs, bool relu)
{
    cf_conv_actnorm_attrs a = {{0, 0, 0, 0}, relu ? 1 : 0};
    if (weight) {
        a.pad[0] = a.pad[2] = (int)((weight->shape[0] - 1) / 2);
        a.pad[1] = a.pad[3] = (int)((weight->shape[1] - 1) / 2);
    }
    cf_tensor *in[4] = {x, weight, bias, logs};
    return cf_op_apply1(ctx, &cf__op_conv2d_actnorm, 4, in, &a);
}
