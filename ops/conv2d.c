/* conv2d.c: 2-D convolution, stride 1, zero padding per side, optional bias, optional fixed
 * weight mask (the masked convolutions of CInC and Emerging flows; see cf_conv.h).
 *
 *   y[b][i][j][k] = bias[k] + sum_{kh, kw, c} x[b][i + kh - top][j + kw - left][c]
 *                                              * W[kh][kw][c][k] * mask[kh][kw][c][k]
 *   dx[b][i + kh - top][j + kw - left][c] += sum_k dy[b][i][j][k] * W[kh][kw][c][k] * mask
 *   dW[kh][kw][c][k] += mask * sum_{b, i, j} x[b][i + kh - top][j + kw - left][c] * dy[b][i][j][k]
 *   dbias[k] += sum_{b, i, j} dy[b][i][j][k]
 *
 * Reference kernels: plain loops in double over every dtype, any kernel size and padding.
 * Fast f32 kernels: libxsmm batch-reduce GEMMs (conv_xsmm.c); backward-data runs the forward
 * driver on dy with the masked taps flipped and transposed and the complementary padding.
 *
 * Not here: the inverse (masked_conv.c), the log-determinant (conv_logdet.c).
 *
 * Legend: B batch, H, W input size, C input channels, K output channels, KH, KW kernel size,
 * Ho, Wo output size, T = KH * KW taps.
 */
#include <string.h>

#include "cf_conv_impl.h"

/* ---- shapes ----------------------------------------------------------------------------- */

static cf_status conv_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                            cf_shape *out)
{
    const cf_conv_attrs *a = attrs;
    const cf_tensor *x = in[0], *w = in[1];
    char s[96], t[96];
    if (n_in != 2 && n_in != 3)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'conv2d': takes x, weight and an optional bias "
                           "(got %d inputs)", n_in);
    if (x->ndim != 4 || x->shape[1] < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d': x %s must be (B, H, W, C) with H, W, "
                           "C >= 1", CF__DESC(x, s));
    if (w->ndim != 4 || w->shape[2] != x->shape[3] || w->shape[0] < 1 || w->shape[1] < 1 ||
        w->shape[3] < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d': weight %s must be (KH, KW, C, K) "
                           "with C = %lld, the channels of x %s", CF__DESC(w, s),
                           (long long)x->shape[3], CF__DESC(x, t));
    if (n_in == 3 && (in[2]->ndim != 1 || in[2]->shape[0] != w->shape[3]))
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d': bias %s must be (K) with K = %lld, "
                           "the outputs of weight %s", CF__DESC(in[2], s),
                           (long long)w->shape[3], CF__DESC(w, t));
    for (int i = 0; i < 4; i++)
        if (a->pad[i] < 0)
            return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'conv2d': padding (%d, %d, %d, %d) (top, "
                               "left, bottom, right) has a negative side", a->pad[0], a->pad[1],
                               a->pad[2], a->pad[3]);
    if (a->mask < CF_CONV_MASK_NONE || a->mask >= CF_CONV_MASK_COUNT)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'conv2d': unknown mask kind %d", (int)a->mask);
    if (a->mask != CF_CONV_MASK_NONE) {
        const cf_conv_attrs want = cf_conv_attrs_masked(a->mask);
        if (w->shape[0] != 3 || w->shape[1] != 3 || w->shape[3] != w->shape[2])
            return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d': the %s mask needs a (3, 3, C, "
                               "C) weight, got %s", cf_conv_mask_name(a->mask), CF__DESC(w, s));
        if (memcmp(want.pad, a->pad, sizeof want.pad) != 0)
            return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'conv2d': the %s mask needs padding (%d, %d, "
                               "%d, %d), got (%d, %d, %d, %d) (use cf_conv_attrs_masked)",
                               cf_conv_mask_name(a->mask), want.pad[0], want.pad[1], want.pad[2],
                               want.pad[3], a->pad[0], a->pad[1], a->pad[2], a->pad[3]);
    }
    const int64_t Ho = x->shape[1] + a->pad[0] + a->pad[2] - w->shape[0] + 1;
    const int64_t Wo = x->shape[2] + a->pad[1] + a->pad[3] - w->shape[1] + 1;
    if (Ho < 1 || Wo < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv2d': a %lldx%lld kernel does not fit x %s "
                           "with padding (%d, %d, %d, %d)", (long long)w->shape[0],
                           (long long)w->shape[1], CF__DESC(x, s), a->pad[0], a->pad[1],
                           a->pad[2], a->pad[3]);
    out[0].ndim = 4;
    out[0].shape[0] = x->shape[0], out[0].shape[1] = Ho, out[0].shape[2] = Wo;
    out[0].shape[3] = w->shape[3];
    return CF_OK;
}

/* ---- reference kernels -------------------------------------------------------------------- */

const double *cf__as_f64(cf_node *n, cf_dtype dt, const void *buf, int64_t numel)
{
    if (dt == CF_F64) return buf;
    double *d = cf_node_scratch(n, (size_t)(numel ? numel : 1) * sizeof(double));
    if (!d) return NULL;
    for (int64_t i = 0; i < numel; i++) d[i] = ((const float *)buf)[i];
    return d;
}

/* Zeroes the entries of a (T, C, K) weight-shaped buffer that the mask drops. */
static void apply_mask_f64(double *w, const cf__conv_geom *g, cf_conv_mask mask)
{
    if (mask == CF_CONV_MASK_NONE) return;
    int64_t e = 0;
    for (int kh = 0; kh < g->KH; kh++)
        for (int kw = 0; kw < g->KW; kw++)
            for (int64_t c = 0; c < g->C; c++)
                for (int64_t k = 0; k < g->K; k++, e++)
                    if (!cf_conv_mask_keeps(mask, kh, kw, c, k)) w[e] = 0.0;
}

/* The masked weight (T, C, K) as doubles, in the arena. */
static double *masked_weight_f64(cf_node *n, const cf__conv_geom *g, cf_conv_mask mask)
{
    const cf_tensor *w = n->in[1];
    double *wm = cf_node_scratch(n, (size_t)w->numel * sizeof(double));
    if (!wm) return NULL;
    for (int64_t e = 0; e < w->numel; e++) wm[e] = cf_tensor_get(w, e);
    apply_mask_f64(wm, g, mask);
    return wm;
}

void cf__conv_ref_forward(const cf__conv_geom *g, const double *x, const double *w,
                          const double *bias, double *y)
{
    for (int64_t b = 0; b < g->B; b++)
        for (int64_t i = 0; i < g->Ho; i++)
            for (int64_t j = 0; j < g->Wo; j++) {
                double *acc = y + ((b * g->Ho + i) * g->Wo + j) * g->K;
                for (int64_t k = 0; k < g->K; k++) acc[k] = bias ? bias[k] : 0.0;
                for (int64_t kh = 0; kh < g->KH; kh++) {
                    const int64_t ih = i + kh - g->pt;
                    if (ih < 0 || ih >= g->H) continue;
                    for (int64_t kw = 0; kw < g->KW; kw++) {
                        const int64_t iw = j + kw - g->pl;
                        if (iw < 0 || iw >= g->W) continue;
                        const double *xp = x + ((b * g->H + ih) * g->W + iw) * g->C;
                        const double *wp = w + (kh * g->KW + kw) * g->C * g->K;
                        for (int64_t c = 0; c < g->C; c++)
                            for (int64_t k = 0; k < g->K; k++) acc[k] += xp[c] * wp[c * g->K + k];
                    }
                }
            }
}

static cf_status conv_fwd_ref(cf_node *n)
{
    const cf_conv_attrs *a = CF_ATTRS(n, cf_conv_attrs);
    cf__conv_geom g;
    cf__conv_geom_init(&g, n->in[0], n->in[1], a->pad);
    const cf_tensor *xt = n->in[0];
    cf_tensor *y = n->out[0];
    const double *x = cf__as_f64(n, xt->dtype, xt->data, xt->numel);
    const double *w = masked_weight_f64(n, &g, a->mask);
    const double *bias = n->n_in == 3 ? cf__as_f64(n, n->in[2]->dtype, n->in[2]->data, g.K) : NULL;
    double *yd = cf_node_scratch(n, (size_t)(y->numel ? y->numel : 1) * sizeof(double));
    if (!x || !w || (n->n_in == 3 && !bias) || !yd) return cf_ctx_status(n->ctx);
    cf__conv_ref_forward(&g, x, w, bias, yd);
    for (int64_t i = 0; i < y->numel; i++) cf_tensor_set(y, i, yd[i]);
    return cf_ctx_status(n->ctx);
}


void cf__conv_ref_backward(const cf__conv_geom *g, const double *x, const double *w,
                           const double *dy, double *gx, double *gw, double *gb)
{
    for (int64_t b = 0; b < g->B; b++)
        for (int64_t i = 0; i < g->Ho; i++)
            for (int64_t j = 0; j < g->Wo; j++) {
                const double *gy = dy + ((b * g->Ho + i) * g->Wo + j) * g->K;
                if (gb)
                    for (int64_t k = 0; k < g->K; k++) gb[k] += gy[k];
                for (int64_t kh = 0; kh < g->KH; kh++) {
                    const int64_t ih = i + kh - g->pt;
                    if (ih < 0 || ih >= g->H) continue;
                    for (int64_t kw = 0; kw < g->KW; kw++) {
                        const int64_t iw = j + kw - g->pl;
                        if (iw < 0 || iw >= g->W) continue;
                        const int64_t xo = ((b * g->H + ih) * g->W + iw) * g->C;
                        const int64_t wo = (kh * g->KW + kw) * g->C * g->K;
                        for (int64_t c = 0; c < g->C; c++) {
                            if (gx) {
                                double s = 0;
                                for (int64_t k = 0; k < g->K; k++) s += gy[k] * w[wo + c * g->K + k];
                                gx[xo + c] += s;
                            }
                            if (gw)
                                for (int64_t k = 0; k < g->K; k++)
                                    gw[wo + c * g->K + k] += x[xo + c] * gy[k];
                        }
                    }
                }
            }
}

void cf__add_into(cf_dtype dt, void *dst, const double *src, int64_t numel)
{
    for (int64_t i = 0; i < numel; i++) cf_buf_set(dt, dst, i, cf_buf_get(dt, dst, i) + src[i]);
}

static cf_status conv_bwd_ref(cf_node *n)
{
    const cf_conv_attrs *a = CF_ATTRS(n, cf_conv_attrs);
    cf__conv_geom g;
    cf__conv_geom_init(&g, n->in[0], n->in[1], a->pad);
    const cf_tensor *xt = n->in[0], *wt = n->in[1], *y = n->out[0];
    const cf_dtype dt = xt->dtype;
    void *dx = cf_node_grad_in(n, 0), *dw = cf_node_grad_in(n, 1);
    void *db = n->n_in == 3 ? cf_node_grad_in(n, 2) : NULL;
    const double *x = cf__as_f64(n, dt, xt->data, xt->numel);
    const double *dy = cf__as_f64(n, dt, y->grad, y->numel);
    const double *w = masked_weight_f64(n, &g, a->mask);
    double *gx = dx ? cf_node_scratch(n, (size_t)xt->numel * sizeof(double)) : NULL;
    double *gw = dw ? cf_node_scratch(n, (size_t)wt->numel * sizeof(double)) : NULL;
    double *gb = db ? cf_node_scratch(n, (size_t)g.K * sizeof(double)) : NULL;
    if (!x || !dy || !w || (dx && !gx) || (dw && !gw) || (db && !gb)) return cf_ctx_status(n->ctx);
    if (gx) memset(gx, 0, (size_t)xt->numel * sizeof(double));
    if (gw) memset(gw, 0, (size_t)wt->numel * sizeof(double));
    if (gb) memset(gb, 0, (size_t)g.K * sizeof(double));
    cf__conv_ref_backward(&g, x, w, dy, gx, gw, gb);
    if (gw) apply_mask_f64(gw, &g, a->mask);
    if (gx) cf__add_into(dt, dx, gx, xt->numel);
    if (gw) cf__add_into(dt, dw, gw, wt->numel);
    if (gb) cf__add_into(dt, db, gb, g.K);
    return cf_ctx_status(n->ctx);
}

/* ---- fast f32 kernels ------------------------------------------------------------------- */

/* The masked weight (T, C, K), or the weight itself when there is no mask. */
static const float *masked_weight_f32(cf_node *n, const cf__conv_geom *g, cf_conv_mask mask)
{
    const float *w = n->in[1]->data;
    if (mask == CF_CONV_MASK_NONE) return w;
    float *wm = cf_node_scratch(n, (size_t)n->in[1]->numel * sizeof(float));
    if (!wm) return NULL;
    int64_t e = 0;
    for (int kh = 0; kh < g->KH; kh++)
        for (int kw = 0; kw < g->KW; kw++)
            for (int64_t c = 0; c < g->C; c++)
                for (int64_t k = 0; k < g->K; k++, e++)
                    wm[e] = cf_conv_mask_keeps(mask, kh, kw, c, k) ? w[e] : 0.0f;
    return wm;
}

bool cf__conv_backward_data_f32(cf_node *n, float *dx, bool acc, const float *dy, const float *w,
                                const cf__conv_geom *g)
{
    /* dx = conv(dy, taps flipped and transposed: wt[KH-1-kh][KW-1-kw][k][c] = W[kh][kw][c][k],
     * padding (KH-1-top, KW-1-left, KH-1-bottom, KW-1-right)). */
    const int64_t T = g->KH * g->KW, cb = (g->C + 63) / 64; /* blocks of 64 input channels */
    float *wt = cf_node_scratch(n, (size_t)(T * g->C * g->K) * sizeof(float));
    if (!wt) return false;
#pragma omp parallel for schedule(static) if (T * g->C * g->K > CF__PAR_MIN)
    for (int64_t tb = 0; tb < T * cb; tb++) {
        const int64_t t = tb / cb, c0 = tb % cb * 64, nc = g->C - c0 < 64 ? g->C - c0 : 64;
        cf__transpose_f32(wt + (T - 1 - t) * g->K * g->C + c0, g->C, w + (t * g->C + c0) * g->K,
                          g->K, nc, g->K, NULL);
    }
    cf__conv_geom gd = *g;
    gd.H = g->Ho, gd.W = g->Wo, gd.C = g->K, gd.K = g->C;
    gd.pt = g->KH - 1 - g->pt, gd.pl = g->KW - 1 - g->pl;
    gd.pb = g->KH - 1 - g->pb, gd.pr = g->KW - 1 - g->pr;
    gd.Hp = gd.H + gd.pt + gd.pb, gd.Wp = gd.W + gd.pl + gd.pr;
    gd.Ho = g->H, gd.Wo = g->W;
    return cf__conv_fast_ok(&gd) && cf__conv_forward_f32(n, dx, dy, wt, NULL, &gd, acc, NULL);
}

static cf_status conv_fwd_f32(cf_node *n)
{
    const cf_conv_attrs *a = CF_ATTRS(n, cf_conv_attrs);
    cf__conv_geom g;
    cf__conv_geom_init(&g, n->in[0], n->in[1], a->pad);
    if (!cf__conv_fast_ok(&g)) return conv_fwd_ref(n);
    const float *w = masked_weight_f32(n, &g, a->mask);
    if (!w) return cf_ctx_status(n->ctx);
    const float *bias = n->n_in == 3 ? n->in[2]->data : NULL;
    if (cf__conv_forward_f32(n, n->out[0]->data, n->in[0]->data, w, bias, &g, false, NULL))
        return CF_OK;
    /* No JIT kernel for this shape (or no scratch): the output is untouched. */
    return cf_ctx_status(n->ctx) != CF_OK ? cf_ctx_status(n->ctx) : conv_fwd_ref(n);
}

static cf_status conv_bwd_f32(cf_node *n)
{
    const cf_conv_attrs *a = CF_ATTRS(n, cf_conv_attrs);
    cf__conv_geom g;
    cf__conv_geom_init(&g, n->in[0], n->in[1], a->pad);
    if (!cf__conv_fast_ok(&g)) return conv_bwd_ref(n);
    const cf_tensor *y = n->out[0];
    const float *dy = y->grad;
    bool dx_fresh; /* dx is written rather than added into (the input's first consumer) */
    float *dx = cf_node_grad_in_ex(n, 0, &dx_fresh), *dw = cf_node_grad_in(n, 1);
    float *db = n->n_in == 3 ? cf_node_grad_in(n, 2) : NULL;
    if (dx) {
        const float *w = masked_weight_f32(n, &g, a->mask);
        if (!w) return cf_ctx_status(n->ctx);
        if (!cf__conv_backward_data_f32(n, dx, !dx_fresh, dy, w, &g))
            return cf_ctx_status(n->ctx) != CF_OK
                       ? cf_ctx_status(n->ctx)
                       : cf_ctx_fail(n->ctx, CF_ERR_STATE, "op 'conv2d': no libxsmm kernel for "
                                     "the backward-data pass of a (%lld, %lld, %lld, %lld) input",
                                     (long long)g.B, (long long)g.H, (long long)g.W,
                                     (long long)g.C);
    }
    if (dw) {
        if (!cf__conv_backward_weight_f32(n, dw, db, n->in[0]->data, dy, &g, a->mask))
            return cf_ctx_fail(n->ctx, CF_ERR_STATE, "op 'conv2d': no libxsmm kernel for the "
                               "backward-weight pass of a (%lld, %lld, %lld, %lld) input",
                               (long long)g.B, (long long)g.H, (long long)g.W, (long long)g.C);
    } else if (db) {
        const int64_t P = g.B * g.Ho * g.Wo;
        for (int64_t p = 0; p < P; p++)
            for (int64_t k = 0; k < g.K; k++) db[k] += dy[p * g.K + k];
    }
    return cf_ctx_status(n->ctx);
}

/* ---- test cases --------------------------------------------------------------------------- */

static bool conv_case(int index, cf_op_case *c)
{
    static const struct {
        int64_t x[4], w[4];
        int pad[4];
        cf_conv_mask mask;
        bool bias;
        const char *label;
    } cases[] = {
        {{1, 5, 4, 1}, {3, 3, 1, 2}, {1, 1, 1, 1}, CF_CONV_MASK_NONE, true, "3x3 same, 1 channel"},
        {{2, 3, 5, 3}, {3, 3, 3, 3}, {2, 2, 0, 0}, CF_CONV_MASK_NONE, false, "3x3 causal pad"},
        {{1, 2, 33, 3}, {1, 1, 3, 4}, {0, 0, 0, 0}, CF_CONV_MASK_NONE, true, "1x1, width 33"},
        {{1, 4, 1, 2}, {3, 3, 2, 3}, {1, 1, 1, 1}, CF_CONV_MASK_NONE, true, "3x3, width 1"},
        {{2, 3, 4, 2}, {3, 3, 2, 2}, {0, 1, 2, 0}, CF_CONV_MASK_NONE, false, "pad (0, 1, 2, 0)"},
        {{1, 4, 5, 2}, {3, 3, 2, 2}, {0, 0, 0, 0}, CF_CONV_MASK_NONE, true, "3x3 valid"},
        {{1, 5, 6, 2}, {5, 5, 2, 3}, {2, 2, 2, 2}, CF_CONV_MASK_NONE, true, "5x5 same"},
        {{1, 3, 3, 2}, {1, 1, 2, 2}, {1, 0, 0, 1}, CF_CONV_MASK_NONE, false, "1x1 padded"},
        {{1, 3, 4, 2}, {2, 2, 2, 3}, {1, 1, 0, 0}, CF_CONV_MASK_NONE, true, "2x2 kernel"},
        {{1, 4, 4, 3}, {3, 3, 3, 3}, {2, 2, 0, 0}, CF_CONV_MASK_CINC, true, "CInC mask"},
        {{2, 3, 3, 2}, {3, 3, 2, 2}, {1, 1, 1, 1}, CF_CONV_MASK_EMERGING_CAUSAL, false,
         "emerging causal mask"},
        {{1, 3, 4, 2}, {3, 3, 2, 2}, {1, 1, 1, 1}, CF_CONV_MASK_EMERGING_ANTICAUSAL, true,
         "emerging anti-causal mask"},
    };
    if (index < 0 || index >= (int)(sizeof cases / sizeof cases[0])) return false;
    c->n_in = cases[index].bias ? 3 : 2;
    c->ndim[0] = c->ndim[1] = 4;
    for (int d = 0; d < 4; d++) c->shape[0][d] = cases[index].x[d], c->shape[1][d] = cases[index].w[d];
    c->ndim[2] = 1;
    c->shape[2][0] = cases[index].w[3];
    for (int i = 0; i < c->n_in; i++) c->lo[i] = -1, c->hi[i] = 1;
    cf_conv_attrs *a = (cf_conv_attrs *)c->attrs;
    memcpy(a->pad, cases[index].pad, sizeof a->pad);
    a->mask = cases[index].mask;
    c->label = cases[index].label;
    return true;
}

const cf_op_def cf__op_conv2d = {
    .name = "conv2d",
    .n_inputs = CF_OP_VARIADIC,
    .n_outputs = 1,
    .attrs_size = sizeof(cf_conv_attrs),
    .infer = conv_infer,
    .forward = conv_fwd_ref,
    .backward = conv_bwd_ref,
    .fast = {[CF_F32] = {conv_fwd_f32, conv_bwd_f32}},
    .make_case = conv_case,
    .doc = "2-D convolution (NHWC, HWIO), padding per side, optional bias and mask",
};

cf_tensor *cf_conv2d(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias,
                     const cf_conv_attrs *attrs)
{
    CF_ASSERT(attrs != NULL, "cf_conv2d needs its attributes (cf_conv_attrs)");
    cf_tensor *in[3] = {x, weight, bias};
    return cf_op_apply1(ctx, &cf__op_conv2d, bias ? 3 : 2, in, attrs);
}

cf_tensor *cf_conv2d_same(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias)
{
    cf_conv_attrs a = {{0, 0, 0, 0}, CF_CONV_MASK_NONE};
    if (weight) {
        a.pad[0] = a.pad[2] = (int)((weight->shape[0] - 1) / 2);
        a.pad[1] = a.pad[3] = (int)((weight->shape[1] - 1) / 2);
    }
    return cf_conv2d(ctx, x, weight, bias, &a);
}

cf_tensor *cf_masked_conv2d(cf_ctx *ctx, cf_tensor *x, cf_tensor *weight, cf_tensor *bias,
                            cf_conv_mask mask)
{
    const cf_conv_attrs a = cf_conv_attrs_masked(mask);
    return cf_conv2d(ctx, x, weight, bias, &a);
}
