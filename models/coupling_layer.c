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
    return cf_flow_io_add_logdet(ctx, io, ld);
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
        const cf_ctx_mark mark = cf_ctx_get_mark(ctx);
        cf_tensor *xg = G == B ? x : cf__batch_view(ctx, x, b0, n);
        cf_tensor *yg = G == B ? y : cf__batch_view(ctx, y, b0, n);
        if (!xg || !yg) return cf_ctx_status(ctx);
        for (int k = 0; k < l->n_nets; k++) {
            cf_tensor *h = net_apply(ctx, &l->nets[k], cf__channels(ctx, xg, 0, net_inputs(l, k)));
            if (!h) return cf_ctx_status(ctx);
            cf_coupling_inverse_block(xg, yg, h, net_inputs(l, k));
        }
        if (G != B) cf_ctx_release_to(ctx, mark);
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

static const cf_layer_vtable affine_vt = {"affine_coupling", coupling_forward,
                                          coupling_inverse, coupling_flops, NULL};
static const cf_layer_vtable quad_vt = {"quad_coupling", coupling_forward, coupling_inverse,
                                        coupling_flops, NULL};

static bool net_init(coupling_layer *l, const cf_layer_args *a, int k, int64_t cin, int64_t cout,
                     int64_t hidden)
{
    coupling_net *n = &l->nets[k];
    cf_layer *b = &l->base;
    char p[64];
    cf_init zero = cf_init_const(0), normal = cf_init_normal(0, 0.05);
    n->in_channels = cin, n->out_channels = cout, n->hidden = hidden;
#define NET_PARAM(field, suffix, init, nd, ...)                                                \
    snprintf(p, sizeof p, "nets.%d.%s", k, suffix);                                            \
    if (!(n->field = cf_layer_param(b, a, p, nd, (int64_t[]){__VA_ARGS__}, init))) return false;
#define NET_STATE(field, suffix)                                                               \
    snprintf(p, sizeof p, "nets.%d.%s", k, suffix);                                            \
    if (!(n->field = cf_layer_state(b, a, p, 0, NULL, zero))) return false;
    NET_PARAM(w1, "conv1.weight", normal, 4, 3, 3, cin, hidden)
    NET_PARAM(b1, "actnorm1.bias", zero, 1, hidden)
    NET_PARAM(s1, "actnorm1.logs", zero, 1, hidden)
    NET_STATE(init1, "actnorm1.initialized")
    NET_PARAM(w2, "conv2.weight", normal, 4, 1, 1, hidden, hidden)
    NET_PARAM(b2, "actnorm2.bias", zero, 1, hidden)
    NET_PARAM(s2, "actnorm2.logs", zero, 1, hidden)
    NET_STATE(init2, "actnorm2.initialized")
#undef NET_PARAM
#undef NET_STATE
    snprintf(p, sizeof p, "nets.%d.out", k);
    return cf__zero_conv_init(&n->out, b, a, p, hidden, cout);
}

static cf_layer *coupling_build(const cf_layer_args *a, cf_coupling_kind kind)
{
    int64_t C = a->in_shape[2], hidden = cf_hparams_int(a->hp, "hidden");
    bool quad = kind == CF_COUPLING_KIND_QUAD;
    if (quad ? (C < 4 || C % 4) : C < 2) {
        cf_set_error(CF_ERR_SHAPE, "%s: %s coupling needs %s, but the images have %lld "
                     "channels", a->name, quad ? "quad" : "affine",
                     quad ? "a channel count divisible by 4" : "at least 2 channels",
                     (long long)C);
        return NULL;
    }
    coupling_layer *l = cf_layer_alloc(sizeof *l, quad ? &quad_vt : &affine_vt, a, a->in_shape);
    if (!l) return NULL;
    l->kind = kind;
    l->n_nets = quad ? 3 : 1;
    l->block = quad ? C / 4 : C - C / 2;
    l->first = quad ? C / 4 : C / 2;
    for (int k = 0; k < l->n_nets; k++)
        if (!net_init(l, a, k, net_inputs(l, k), 2 * l->block, hidden))
            return cf_layer_fail(&l->base);
    return &l->base;
}

static cf_layer *quad_create(const cf_layer_args *a)
{
    return coupling_build(a, CF_COUPLING_KIND_QUAD);
}

static cf_layer *affine_create(const cf_layer_args *a)
{
    return coupling_build(a, CF_COUPLING_KIND_AFFINE);
}

static const cf_hparam_spec coupling_hparams[] = {
    {"hidden", CF_HP_INT, .def = 128, .min = 1, .max = 65536,
     .doc = "channels of the coupling networks' hidden layers"},
};

#define NET_CONVENTIONS                                                                        \
    "each network nets.k: conv1 (3x3 same, HWIO) + actnorm1 + ReLU, conv2 (1x1) + actnorm2 + "  \
    "ReLU, out = (conv3x3_same(h, out.weight) + out.bias) * exp(3 * out.logs); its 2n output "  \
    "channels interleave shift and logit: t = h[..., 0::2], l = h[..., 1::2]; scale = "          \
    "sigmoid(l + 2); actnorm here is y = (x + bias) * exp(logs)"

const cf_layer_kind cf__kind_quad_coupling = {
    .name = "quad_coupling",
    .summary = "the CInC paper's quad coupling: four C/4 blocks, each after the first "
               "transformed by a network of the blocks before it",
    .conventions = "x = [x1, x2, x3, x4], channel blocks of C/4 in order; y1 = x1; "
                   "y2 = (x2 + t1) * s1 with nets.0(x1); y3 = (x3 + t2) * s2 with nets.1([x1, x2]); "
                   "y4 = (x4 + t3) * s3 with nets.2([x1, x2, x3]) (inputs are the x blocks, not "
                   "the y ones); log|det| = sum log s; " NET_CONVENTIONS,
    .hparams = coupling_hparams,
    .n_hparams = 1,
    .create = quad_create,
    .role = "coupling",
    .choice = "quad",
};

const cf_layer_kind cf__kind_affine_coupling = {
    .name = "affine_coupling",
    .summary = "Glow's affine coupling: the second half scaled and shifted by a network of the "
               "first",
    .conventions = "x = [xa, xb] with xa the first C/2 channels (rounded down); ya = xa; yb = "
                   "(xb + t) * s with nets.0(xa); log|det| = sum log s; " NET_CONVENTIONS,
    .hparams = coupling_hparams,
    .n_hparams = 1,
    .create = affine_create,
    .role = "coupling",
    .choice = "affine",
};

cf_layer *cf_coupling_layer(cf_params *ps, const char *name, const int64_t shape[3],
                            cf_coupling_kind kind, int64_t hidden, cf_rng *rng)
{
    cf_hparams hp = {0};
    if (hidden < 1) {
        cf_set_error(CF_ERR_ARG, "%s: network width %lld (at least 1)", name, (long long)hidden);
        return NULL;
    }
    cf_hparams_set_int(&hp, "hidden", hidden);
    return cf_layer_create(kind == CF_COUPLING_KIND_AFFINE ? "affine_coupling" : "quad_coupling",
                           ps, name, shape, &hp, rng);
}
