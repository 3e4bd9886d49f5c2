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
    return cf__add_logdet(ctx, io, cf_conv_logdet(ctx, l->weight, l->mask, self->in_shape[0],
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

static void masked_free(cf_layer *self)
{
    free(self);
}

static const cf_layer_vtable cinc_vt = {"cinc_conv", masked_forward, masked_inverse,
                                        masked_flops, masked_free};
static const cf_layer_vtable masked_vt = {"masked_conv", masked_forward, masked_inverse,
                                          masked_flops, masked_free};

cf_layer *cf_masked_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                               cf_conv_mask mask, cf_rng *rng)
{
    CF_ASSERT(mask != CF_CONV_MASK_NONE && mask < CF_CONV_MASK_COUNT, "bad mask %d", (int)mask);
    masked_layer *l = calloc(1, sizeof *l);
    if (!l) {
        cf_set_error(CF_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    int64_t C = shape[2];
    l->mask = mask;
    if (!cf__layer_init(&l->base, mask == CF_CONV_MASK_CINC ? &cinc_vt : &masked_vt, name, shape,
                        shape) ||
        !(l->weight = cf__layer_param(&l->base, ps, "weight", 4, (int64_t[]){3, 3, C, C})) ||
        !(l->bias = cf__layer_param(&l->base, ps, "bias", 1, &C))) {
        free(l);
        return NULL;
    }
    int centre = cf_conv_mask_centre(mask);
    int64_t kept = 0;
    for (int kh = 0; kh < 3; kh++)
        for (int kw = 0; kw < 3; kw++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t o = 0; o < C; o++) {
                    int64_t i = ((kh * 3 + kw) * C + c) * C + o;
                    bool keep = cf_conv_mask_keeps(mask, kh, kw, c, o);
                    double v = keep ? 0.02 * cf_rng_normal(rng) : 0.0;
                    if (keep && kh == centre && kw == centre && c == o) v += 1.0;
                    cf_tensor_set(l->weight, i, v);
                    kept += keep;
                }
    /* Learnable scalars: the kept weight entries and the bias. */
    l->base.n_learnable = kept + C;
    l->base.n_convs = 1;
    return &l->base;
}

cf_layer *cf_cinc_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                             cf_rng *rng)
{
    return cf_masked_conv_layer(ps, name, shape, CF_CONV_MASK_CINC, rng);
}
