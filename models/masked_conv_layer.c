/* masked_conv_layer.c: an invertible masked 3x3 convolution as a flow layer (CInC, or one of
 * the emerging kinds): y = masked_conv(x, W) + b, log|det| = H W sum_o log|Wc[o][o]| with Wc
 * the current-pixel tap, no slogdet. Inverse: the batched triangular solve of cf_conv.h.
 * Init as DESIGN: W ~ N(0, 0.02) plus the identity on the current tap, b = 0; masked entries
 * are set to zero and stay there (their gradient is zero).
 * Tensors: <name>.weight (3, 3, C, C), <name>.bias (C). */
#include "cf_models_impl.h"

typedef struct masked_layer {
    cf_layer base;
    cf_conv_mask mask;
    cf_tensor *weight, *bias;
} masked_layer;

static cf_status masked_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    masked_layer *l = (masked_layer *)self;
    io->x = cf_masked_conv2d(ctx, io->x, l->weight, l->bias, l->mask);
    return cf_flow_io_add_logdet(ctx, io, cf_conv_logdet(ctx, l->weight, l->mask, self->in_shape[0],
                                                  self->in_shape[1]));
}

static cf_status masked_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    masked_layer *l = (masked_layer *)self;
    cf_tensor *y = io->x;
    if (!y) return cf_ctx_status(ctx);
    cf_tensor *x = cf_tensor_new(ctx, y->dtype, y->ndim, y->shape);
    if (!x) return cf_ctx_status(ctx);
    cf_conv_attrs attrs = cf_conv_attrs_masked(l->mask);
    cf_conv_inverse_opts opts = {.kernels = cf_ctx_kernels(ctx)};
    size_t ws = cf_masked_conv_inverse_workspace(y, &attrs);
    if (ws) {
        opts.workspace = cf_ctx_alloc(ctx, ws, "a masked-conv inverse workspace");
        opts.workspace_size = ws;
        if (!opts.workspace) return cf_ctx_status(ctx);
    }
    cf_status st = cf_masked_conv_inverse_ex(x, y, l->weight, l->bias, &attrs, &opts);
    if (st != CF_OK) return cf_ctx_fail(ctx, st, "%s: %s", self->name, cf_last_error());
    io->x = x;
    return CF_OK;
}

static double masked_flops(const cf_layer *self)
{
    const int64_t *s = self->in_shape;
    return cf__conv_flops(s[0], s[1], 3, s[2], s[2]);
}

static const cf_layer_vtable cinc_vt = {"cinc_conv", masked_forward, masked_inverse,
                                        masked_flops, NULL};
static const cf_layer_vtable masked_vt = {"masked_conv", masked_forward, masked_inverse,
                                          masked_flops, NULL};

static const char *const mask_names[CF_CONV_MASK_COUNT] = {
    [CF_CONV_MASK_CINC] = "cinc",
    [CF_CONV_MASK_EMERGING_CAUSAL] = "emerging_causal",
    [CF_CONV_MASK_EMERGING_ANTICAUSAL] = "emerging_anticausal",
};

static cf_layer *masked_build(const cf_layer_args *a, cf_conv_mask mask,
                             const cf_layer_vtable *vt)
{
    masked_layer *l = cf_layer_alloc(sizeof *l, vt, a, a->in_shape);
    if (!l) return NULL;
    int64_t C = a->in_shape[2];
    l->mask = mask;
    if (!(l->weight = cf_layer_param(&l->base, a, "weight", 4, (int64_t[]){3, 3, C, C},
                                     cf_init_custom())) ||
        !(l->bias = cf_layer_param(&l->base, a, "bias", 1, &C, cf_init_const(0))))
        return cf_layer_fail(&l->base);
    /* W ~ N(0, 0.02) on the kept entries plus the identity on the current tap, drawn in HWIO
     * order; masked entries stay zero. */
    int centre = cf_conv_mask_centre(mask);
    int64_t kept = 0;
    for (int kh = 0; kh < 3; kh++)
        for (int kw = 0; kw < 3; kw++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t o = 0; o < C; o++) {
                    int64_t i = ((kh * 3 + kw) * C + c) * C + o;
                    bool keep = cf_conv_mask_keeps(mask, kh, kw, c, o);
                    double v = keep ? 0.02 * cf_rng_normal(a->rng) : 0.0;
                    if (keep && kh == centre && kw == centre && c == o) v += 1.0;
                    cf_tensor_set(l->weight, i, v);
                    kept += keep;
                }
    /* Learnable scalars: the kept weight entries and the bias. */
    l->base.n_learnable = kept + C;
    l->base.n_convs = 1;
    return &l->base;
}

static cf_layer *cinc_create(const cf_layer_args *a)
{
    return masked_build(a, CF_CONV_MASK_CINC, &cinc_vt);
}

static cf_layer *masked_create(const cf_layer_args *a)
{
    const char *m = cf_hparams_string(a->hp, "mask");
    for (int k = 1; k < CF_CONV_MASK_COUNT; k++)
        if (strcmp(m, mask_names[k]) == 0) return masked_build(a, (cf_conv_mask)k, &masked_vt);
    cf_set_error(CF_ERR_ARG, "%s: unknown mask '%s'", a->name, m);
    return NULL;
}

#define CINC_CONVENTIONS                                                                       \
    "weight is HWIO (3, 3, C_in, C_out); input zero-padded by 2 on top and left only, then a "  \
    "valid 3x3 convolution, so output (i, j) sees inputs (i-2..i, j-2..j); the current-pixel "  \
    "tap weight[2][2][c_in][c_out] is zero for c_in < c_out (as the matrix M[o][c] = "          \
    "weight[2][2][c][o] acting on a pixel's channels it is upper-triangular: output channel o " \
    "reads the current pixel's channels c >= o); log|det| = H*W*sum_o log|weight[2][2][o][o]|; " \
    "y = conv + bias; inverse: pixels in raster order, channels C-1 down to 0"

const cf_layer_kind cf__kind_cinc_conv = {
    .name = "cinc_conv",
    .summary = "CInC: masked 3x3 convolution, invertible by construction (Nagar et al. 2021)",
    .conventions = CINC_CONVENTIONS,
    .create = cinc_create,
    .role = "invconv",
    .choice = "cinc",
};

static const cf_hparam_spec masked_hparams[] = {
    {"mask", CF_HP_STRING, .def_str = "cinc", .choices = "cinc|emerging_causal|emerging_anticausal",
     .doc = "which taps are kept (cf_conv.h): cinc, or the emerging 2x2 causal / anti-causal"},
};

const cf_layer_kind cf__kind_masked_conv = {
    .name = "masked_conv",
    .summary = "a masked 3x3 convolution of any mask kind",
    .conventions = "weight is HWIO (3, 3, C_in, C_out). mask cinc: as cinc_conv. "
                   "emerging_causal: padding 1 on every side, taps (0..1, 0..1) kept, current tap "
                   "weight[1][1][c_in][c_out] zero for c_in < c_out. emerging_anticausal: taps "
                   "(1..2, 1..2), current tap weight[1][1] zero for c_in > c_out, inverse in "
                   "reverse raster order. log|det| = H*W*sum_o log|current[o][o]|",
    .hparams = masked_hparams,
    .n_hparams = 1,
    .create = masked_create,
};

cf_layer *cf_masked_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                               cf_conv_mask mask, cf_rng *rng)
{
    CF_ASSERT(mask != CF_CONV_MASK_NONE && mask < CF_CONV_MASK_COUNT, "bad mask %d", (int)mask);
    if (mask == CF_CONV_MASK_CINC) return cf_layer_create("cinc_conv", ps, name, shape, NULL, rng);
    cf_hparams hp = {0};
    cf_hparams_set_string(&hp, "mask", mask_names[mask]);
    return cf_layer_create("masked_conv", ps, name, shape, &hp, rng);
}

cf_layer *cf_cinc_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                             cf_rng *rng)
{
    return cf_layer_create("cinc_conv", ps, name, shape, NULL, rng);
}
