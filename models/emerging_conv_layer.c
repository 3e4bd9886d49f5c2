/* emerging_conv_layer.c: the emerging convolution of Hoogeboom et al. (2019) as one layer: a
 * 1x1 invertible convolution, then masked convolutions on the 2x2 causal and the 2x2
 * anti-causal neighbourhoods (cf_conv.h), each with a triangular current-pixel tap. Forward
 * runs the three in order, inverse in reverse (the anti-causal solve sweeps reverse raster
 * order). Tensors: those of <name>.1x1, <name>.causal and <name>.anticausal. */
#include "cf_models_impl.h"

typedef struct emerging_layer {
    cf_layer base;
    cf_layer *parts[3];
} emerging_layer;

static cf_status emerging_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    emerging_layer *l = (emerging_layer *)self;
    for (int i = 0; i < 3; i++) l->parts[i]->vt->forward(l->parts[i], ctx, io);
    return cf_ctx_status(ctx);
}

static cf_status emerging_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    emerging_layer *l = (emerging_layer *)self;
    for (int i = 2; i >= 0 && cf_ctx_status(ctx) == CF_OK; i--)
        l->parts[i]->vt->inverse(l->parts[i], ctx, io);
    return cf_ctx_status(ctx);
}

static double emerging_flops(const cf_layer *self)
{
    const emerging_layer *l = (const emerging_layer *)self;
    double f = 0;
    for (int i = 0; i < 3; i++) f += l->parts[i]->vt->flops(l->parts[i]);
    return f;
}

static void emerging_free(cf_layer *self)
{
    emerging_layer *l = (emerging_layer *)self;
    for (int i = 0; i < 3; i++) cf_layer_free(l->parts[i]);
    free(l);
}

static const cf_layer_vtable emerging_vt = {"emerging_conv", emerging_forward, emerging_inverse,
                                            emerging_flops, emerging_free};

static cf_layer *emerging_create(const cf_layer_args *a)
{
    emerging_layer *l = cf_layer_alloc(sizeof *l, &emerging_vt, a, a->in_shape);
    if (!l) return NULL;
    char sub[CF_NAME_MAX + 16];
    cf_hparams causal = {0}, anticausal = {0};
    cf_hparams_set_string(&causal, "mask", "emerging_causal");
    cf_hparams_set_string(&anticausal, "mask", "emerging_anticausal");
    snprintf(sub, sizeof sub, "%s.1x1", a->name);
    l->parts[0] = cf_layer_create("invconv1x1", a->ps, sub, a->in_shape, NULL, a->rng);
    snprintf(sub, sizeof sub, "%s.causal", a->name);
    l->parts[1] = l->parts[0] ? cf_layer_create("masked_conv", a->ps, sub, a->in_shape, &causal,
                                                a->rng)
                              : NULL;
    snprintf(sub, sizeof sub, "%s.anticausal", a->name);
    l->parts[2] = l->parts[1] ? cf_layer_create("masked_conv", a->ps, sub, a->in_shape,
                                                &anticausal, a->rng)
                              : NULL;
    if (!l->parts[2]) return cf_layer_fail(&l->base);
    /* The walks list the parts' tensors. */
    for (int i = 0; i < 3; i++) {
        cf_layer *p = l->parts[i];
        for (int k = 0; k < p->n_params; k++) l->base.params[l->base.n_params++] = p->params[k];
        for (int k = 0; k < p->n_state; k++) l->base.state[l->base.n_state++] = p->state[k];
        l->base.n_convs += p->n_convs;
        l->base.n_learnable += p->n_learnable;
    }
    return &l->base;
}

const cf_layer_kind cf__kind_emerging_conv = {
    .name = "emerging_conv",
    .summary = "emerging convolution (Hoogeboom et al. 2019): a 1x1, then masked 2x2 causal and "
               "anti-causal convolutions",
    .conventions = "forward applies <name>.1x1 (as invconv1x1), <name>.causal and "
                   "<name>.anticausal (as masked_conv with masks emerging_causal and "
                   "emerging_anticausal) in that order; log|det| is the sum of the three",
    .create = emerging_create,
    .role = "invconv",
    .choice = "emerging",
};

cf_layer *cf_emerging_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                                 cf_rng *rng)
{
    return cf_layer_create("emerging_conv", ps, name, shape, NULL, rng);
}
