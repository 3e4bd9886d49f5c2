/* conv_logdet.c: log|det| of a masked convolution's Jacobian, without slogdet.
 *
 * For the masks of cf_conv.h the Jacobian dy/dx is triangular (pixels in sweep order, channels
 * in back-substitution order) with diagonal Wc[o][o] at every pixel, Wc the current-pixel tap,
 * so
 *   logdet = height * width * sum_o log|Wc[o][o]|,   d logdet / d Wc[o][o] = height * width / Wc[o][o].
 * The result is one scalar (shape ()): every image of a batch has the same log-det, and the
 * flow layer adds it to each image's by broadcasting.
 *
 * Not here: the convolution itself (conv2d.c). No fast kernel: the work is C logarithms.
 *
 * Legend: C channels; the weight is (3, 3, C, C), tap (ce, ce) the current pixel's.
 */
#include "cf_conv_impl.h"

static cf_status logdet_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                              cf_shape *out)
{
    (void)n_in;
    const cf_conv_logdet_attrs *a = attrs;
    const cf_tensor *w = in[0];
    char s[96];
    if (a->mask <= CF_CONV_MASK_NONE || a->mask >= CF_CONV_MASK_COUNT)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'conv_logdet': mask kind %d (%s) has no "
                           "triangular current tap", (int)a->mask, cf_conv_mask_name(a->mask));
    if (w->ndim != 4 || w->shape[0] != 3 || w->shape[1] != 3 || w->shape[2] != w->shape[3])
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'conv_logdet': weight %s must be (3, 3, C, C)",
                           CF__DESC(w, s));
    if (a->height < 1 || a->width < 1)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'conv_logdet': spatial size %lldx%lld (both "
                           "must be >= 1)", (long long)a->height, (long long)a->width);
    out[0].ndim = 0;
    return CF_OK;
}

/* Flat index of Wc[o][o] in the (3, 3, C, C) weight. */
static int64_t diag_at(const cf_tensor *w, cf_conv_mask mask, int64_t o)
{
    const int64_t C = w->shape[2], ce = cf_conv_mask_centre(mask);
    return ((ce * 3 + ce) * C + o) * C + o;
}

static cf_status logdet_fwd(cf_node *n)
{
    const cf_conv_logdet_attrs *a = CF_ATTRS(n, cf_conv_logdet_attrs);
    const cf_tensor *w = n->in[0];
    const int ce = cf_conv_mask_centre(a->mask);
    double s = 0;
    for (int64_t o = 0; o < w->shape[2]; o++) {
        const double d = cf_tensor_get(w, diag_at(w, a->mask, o));
        if (d == 0.0 || !isfinite(d))
            return cf_ctx_fail(n->ctx, CF_ERR_SINGULAR, "op 'conv_logdet': weight[%d][%d][%lld]"
                               "[%lld] = %g, a diagonal entry of the current-pixel tap; the %s "
                               "convolution is not invertible", ce, ce, (long long)o,
                               (long long)o, d, cf_conv_mask_name(a->mask));
        s += log(fabs(d));
    }
    cf_tensor_set(n->out[0], 0, (double)a->height * (double)a->width * s);
    return CF_OK;
}

static cf_status logdet_bwd(cf_node *n)
{
    const cf_conv_logdet_attrs *a = CF_ATTRS(n, cf_conv_logdet_attrs);
    const cf_tensor *w = n->in[0], *y = n->out[0];
    void *dw = cf_node_grad_in(n, 0);
    if (!dw) return cf_ctx_status(n->ctx);
    const double g = cf_buf_get(y->dtype, y->grad, 0) * (double)a->height * (double)a->width;
    for (int64_t o = 0; o < w->shape[2]; o++) {
        const int64_t e = diag_at(w, a->mask, o);
        cf_buf_set(w->dtype, dw, e, cf_buf_get(w->dtype, dw, e) + g / cf_tensor_get(w, e));
    }
    return CF_OK;
}

static bool logdet_case(int index, cf_op_case *c)
{
    static const struct {
        cf_conv_mask mask;
        int64_t C, h, w;
        double lo, hi;
        const char *label;
    } cases[] = {
        {CF_CONV_MASK_CINC, 3, 4, 4, 0.4, 1.6, "CInC, 3 channels"},
        {CF_CONV_MASK_EMERGING_CAUSAL, 1, 3, 5, 0.5, 2.0, "emerging causal, 1 channel"},
        {CF_CONV_MASK_EMERGING_ANTICAUSAL, 2, 2, 3, -1.6, -0.4, "emerging anti-causal, "
                                                                "negative diagonal"},
    };
    if (index < 0 || index >= (int)(sizeof cases / sizeof cases[0])) return false;
    c->n_in = 1;
    c->ndim[0] = 4;
    c->shape[0][0] = c->shape[0][1] = 3;
    c->shape[0][2] = c->shape[0][3] = cases[index].C;
    c->lo[0] = cases[index].lo, c->hi[0] = cases[index].hi;
    cf_conv_logdet_attrs *a = (cf_conv_logdet_attrs *)c->attrs;
    a->mask = cases[index].mask;
    a->height = cases[index].h, a->width = cases[index].w;
    c->label = cases[index].label;
    return true;
}

const cf_op_def cf__op_conv_logdet = {
    .name = "conv_logdet",
    .n_inputs = 1,
    .n_outputs = 1,
    .attrs_size = sizeof(cf_conv_logdet_attrs),
    .infer = logdet_infer,
    .forward = logdet_fwd,
    .backward = logdet_bwd,
    .make_case = logdet_case,
    .doc = "log|det| of a masked conv: H*W*sum log|diag of the current tap|",
};

cf_tensor *cf_conv_logdet(cf_ctx *ctx, cf_tensor *weight, cf_conv_mask mask, int64_t height,
                          int64_t width)
{
    const cf_conv_logdet_attrs a = {mask, height, width};
    return cf_op_apply1(ctx, &cf__op_conv_logdet, 1, &weight, &a);
}
