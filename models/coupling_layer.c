/* coupling_layer.c: affine and quad coupling layers (DESIGN.md), each one fused op on the tape
 * plus its networks.
 *
 *   affine: x = [x_a, x_b] (C/2 and C - C/2 channels); h = NN(x_a);
 *           y = [x_a, (x_b + t) * sigmoid(l + 2)]
 *   quad:   x = [x_1, x_2, x_3, x_4] (C/4 each); h_1 = NN_1(x_1), h_2 = NN_2([x_1, x_2]),
 *           h_3 = NN_3([x_1, x_2, x_3]); y_1 = x_1, y_{k+1} = (x_{k+1} + t_k) * sigmoid(l_k + 2)
 *
 * (t, l interleaved in h; cf_affine_coupling / cf_quad_coupling do the transform and the
 * log-det in one node.) The inverse recovers the blocks in order, x_2, then x_3 from NN_2 of
 * the recovered [x_1, x_2], then x_4.
 *
 * Network NN (Glow's): conv3x3 (no bias) + actnorm, ReLU, conv1x1 (no bias) + actnorm, ReLU,
 * zero-initialised conv3x3 scaled by exp(3 logs); each conv + actnorm + ReLU is one
 * conv2d_actnorm node. Weights ~ N(0, 0.05); the actnorms take their data-dependent
 * initialisation on the first batch.
 * Tensors: <name>.nets.<k>.{conv1.weight, actnorm1.{bias,logs}, conv2.weight,
 * actnorm2.{bias,logs}, out.{weight,bias,logs}}; state <name>.nets.<k>.actnorm{1,2}.initialized.
 */
#include <omp.h>

#include "cf_autodiff_impl.h"
#include "cf_models_impl.h"

typedef struct coupling_net {
    cf_tensor *w1, *b1, *s1, *init1;
    cf_tensor *w2, *b2, *s2, *init2;
    cf__zero_conv out;
    int64_t in_channels, out_channels, hidden;
} coupling_net;

typedef struct coupling_layer {
    cf_layer base;
    cf_coupling_kind kind;
    int n_nets;
    int64_t block;       /* quad: C/4; affine: C - C/2 (the transformed block) */
    int64_t first;       /* channels of the first (conditioning) block */
    coupling_net nets[3];
} coupling_layer;

/* conv (no bias) -> actnorm -> ReLU: one fused node once the actnorm is initialised; its
 * data-dependent initialisation needs the convolution's output, so the first batch takes the
 * two separate nodes. */
static cf_tensor *conv_actnorm_relu(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *bias,
                                    cf_tensor *logs, cf_tensor *initialized)
{
    if (!x) return NULL;
    if (cf_tensor_get(initialized, 0) == 0.0)
        return cf__actnorm_apply(ctx, cf_conv2d_same(ctx, x, w, NULL), bias, logs, initialized,
                                 true);
    return cf_conv2d_actnorm(ctx, x, w, bias, logs, true);
}

static cf_tensor *net_apply(cf_ctx *ctx, const coupling_net *n, cf_tensor *x)
{
    cf_tensor *h = conv_actnorm_relu(ctx, x, n->w1, n->b1, n->s1, n->init1);
    h = conv_actnorm_relu(ctx, h, n->w2, n->b2, n->s2, n->init2);
    return cf__zero_conv_apply(ctx, &n->out, h);
}

/* Input channels of network k: the blocks before the one it transforms. */
static int64_t net_inputs(const coupling_layer *l, int k)
{
    return l->first + (int64_t)k * l->block;
}

static cf_status coupling_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    coupling_layer *l = (coupling_layer *)self;
    cf_tensor *x = io->x, *h[3], *y = NULL, *ld = NULL;
    for (int k = 0; k < l->n_nets; k++)
        h[k] = net_apply(ctx, &l->nets[k], cf__channels(ctx, x, 0, net_inputs(l, k)));
    if (cf_ctx_status(ctx) != CF_OK) return cf_ctx_status(ctx);
    if (l->kind == CF_COUPLING_KIND_QUAD)
        cf_quad_coupling(ctx, x, h[0], h[1], h[2], &y, &ld);
    else
        cf_affine_coupling(ctx, x, h[0], &y, &ld);
    io->x = y;
    return cf__add_logdet(ctx, io, ld);
}

/* Images per group of the grad-free inverse (see there): about this many floats per thread in
 * each of the networks' hidden activations. */
#define GROUP_FLOATS (256 * 1024)

static bool nets_initialized(const coupling_layer *l)
{
    for (int k = 0; k < l->n_nets; k++)
        if (cf_tensor_get(l->nets[k].init1, 0) == 0.0 || cf_tensor_get(l->nets[k].init2, 0) == 0.0)
            return false;
    return true;
}

/* Without a tape (sampling, rebuilding inputs), the networks run on groups of images whose
 * hidden activations (GROUP_FLOATS each) stay in cache from one convolution to the next, and
 * each group's arena memory is reused by the next group; with one (or before the actnorms'
 * data-dependent initialisation, which needs the whole batch), on the whole batch. */
static cf_status coupling_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    coupling_layer *l = (coupling_layer *)self;
    cf_tensor *y = io->x;
    if (!y) return cf_ctx_status(ctx);
    cf_tensor *x = cf_tensor_new(ctx, y->dtype, y->ndim, y->shape);
    if (!x) return cf_ctx_status(ctx);
    cf_tensor_copy(x, y);
    const int64_t B = y->shape[0], hw = y->numel / (B ? B : 1) / y->shape[y->ndim - 1];
    int64_t G = B;
    if (!cf_ctx_grad_enabled(ctx) && nets_initialized(l)) {
        const int64_t nt = omp_get_max_threads();
        G = nt * (GROUP_FLOATS / (hw * l->nets[0].hidden));
        if (G < nt) G = nt;
        if (G > B) G = B;
        /* groups of even size: 100 images in 34 + 33 + 33 rather than 41 + 41 + 18 */
        const int64_t groups = (B + G - 1) / G;
        G = ((B + groups - 1) / groups + nt - 1) / nt * nt;
        if (G > B) G = B;
    }
    for (int64_t b0 = 0; b0 < B; b0 += G) {
        const int64_t n = B - b0 < G ? B - b0 : G;
        const cf__mark mark = cf__arena_get_mark(ctx);
        cf_tensor *xg = G == B ? x : cf__batch_view(ctx, x, b0, n);
        cf_tensor *yg = G == B ? y : cf__batch_view(ctx, y, b0, n);
        if (!xg || !yg) return cf_ctx_status(ctx);
        for (int k = 0; k < l->n_nets; k++) {
            cf_tensor *h = net_apply(ctx, &l->nets[k], cf__channels(ctx, xg, 0, net_inputs(l, k)));
            if (!h) return cf_ctx_status(ctx);
            cf_coupling_inverse_block(xg, yg, h, net_inputs(l, k));
        }
        if (G != B) cf__arena_release(ctx, mark);
    }
    io->x = x;
    return CF_OK;
}

static double coupling_flops(const cf_layer *self)
{
    const coupling_layer *l = (const coupling_layer *)self;
    int64_t H = self->in_shape[0], W = self->in_shape[1];
    double f = 0;
    for (int k = 0; k < l->n_nets; k++) {
        const coupling_net *n = &l->nets[k];
        f += cf__conv_flops(H, W, 3, n->in_channels, n->hidden) +
             cf__conv_flops(H, W, 1, n->hidden, n->hidden) +
             cf__conv_flops(H, W, 3, n->hidden, n->out_channels);
    }
    return f;
}

static void coupling_free(cf_layer *self)
{
    free(self);
}

static const cf_layer_vtable affine_vt = {"affine_coupling", coupling_forward,
                                          coupling_inverse, coupling_flops, coupling_free};
static const cf_layer_vtable quad_vt = {"quad_coupling", coupling_forward, coupling_inverse,
                                        coupling_flops, coupling_free};

static bool net_init(coupling_layer *l, cf_params *ps, int k, int64_t cin, int64_t cout,
                     int64_t hidden, cf_rng *rng)
{
    coupling_net *n = &l->nets[k];
    cf_layer *b = &l->base;
    char p[64];
    n->in_channels = cin, n->out_channels = cout, n->hidden = hidden;
#define NET_PARAM(field, suffix, nd, ...)                                                      \
    snprintf(p, sizeof p, "nets.%d.%s", k, suffix);                                            \
    if (!(n->field = cf__layer_param(b, ps, p, nd, (int64_t[]){__VA_ARGS__}))) return false;
#define NET_STATE(field, suffix)                                                               \
    snprintf(p, sizeof p, "nets.%d.%s", k, suffix);                                            \
    if (!(n->field = cf__layer_state(b, ps, p, 0, NULL))) return false;
    NET_PARAM(w1, "conv1.weight", 4, 3, 3, cin, hidden)
    NET_PARAM(b1, "actnorm1.bias", 1, hidden)
    NET_PARAM(s1, "actnorm1.logs", 1, hidden)
    NET_STATE(init1, "actnorm1.initialized")
    NET_PARAM(w2, "conv2.weight", 4, 1, 1, hidden, hidden)
    NET_PARAM(b2, "actnorm2.bias", 1, hidden)
    NET_PARAM(s2, "actnorm2.logs", 1, hidden)
    NET_STATE(init2, "actnorm2.initialized")
#undef NET_PARAM
#undef NET_STATE
    snprintf(p, sizeof p, "nets.%d.out", k);
    if (!cf__zero_conv_init(&n->out, b, ps, p, hidden, cout)) return false;
    cf_tensor_fill_normal(n->w1, rng, 0, 0.05);
    cf_tensor_fill_normal(n->w2, rng, 0, 0.05);
    return true;
}

cf_layer *cf_coupling_layer(cf_params *ps, const char *name, const int64_t shape[3],
                            cf_coupling_kind kind, int64_t hidden, cf_rng *rng)
{
    int64_t C = shape[2];
    bool quad = kind == CF_COUPLING_KIND_QUAD;
    if (quad ? (C < 4 || C % 4) : C < 2) {
        cf_set_error(CF_ERR_SHAPE, "%s: %s coupling needs %s, but the images have %lld "
                     "channels", name, quad ? "quad" : "affine",
                     quad ? "a channel count divisible by 4" : "at least 2 channels",
                     (long long)C);
        return NULL;
    }
    if (hidden < 1) {
        cf_set_error(CF_ERR_ARG, "%s: network width %lld (at least 1)", name, (long long)hidden);
        return NULL;
    }
    coupling_layer *l = calloc(1, sizeof *l);
    if (!l) {
        cf_set_error(CF_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    l->kind = kind;
    l->n_nets = quad ? 3 : 1;
    l->block = quad ? C / 4 : C - C / 2;
    l->first = quad ? C / 4 : C / 2;
    bool ok = cf__layer_init(&l->base, quad ? &quad_vt : &affine_vt, name, shape, shape);
    for (int k = 0; ok && k < l->n_nets; k++)
        ok = net_init(l, ps, k, net_inputs(l, k), 2 * l->block, hidden, rng);
    if (!ok) {
        free(l);
        return NULL;
    }
    return &l->base;
}
