/* prior_layer.c: the learned prior on the flow's final tensor: N(mean, exp(logs)) with mean
 * and logs of shape (1, H, W, C), zero-initialised (a standard normal at first). Forward adds
 * the log-density to io->logp and factors the whole tensor out as the last latent; inverse
 * takes it back, or draws it at io->temperature. Tensors: <name>.mean, <name>.logs. */
#include "cf_models_impl.h"

typedef struct prior_layer {
    cf_layer base;
    cf_tensor *mean, *logs;
} prior_layer;

static cf_status prior_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    prior_layer *l = (prior_layer *)self;
    if (io->n_latents == CF_FLOW_MAX_LATENTS)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "%s: more than %d latents", self->name,
                           CF_FLOW_MAX_LATENTS);
    cf_status st = cf__add_logp(ctx, io, cf_gaussian_logp(ctx, io->x, l->mean, l->logs));
    if (st == CF_OK) io->latents[io->n_latents++] = io->x;
    return st;
}

static cf_status prior_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    prior_layer *l = (prior_layer *)self;
    const int64_t *s = self->in_shape;
    if (io->n_latents > 0) {
        cf_tensor *z = io->latents[--io->n_latents];
        if (!z || z->ndim != 4 || z->shape[1] != s[0] || z->shape[2] != s[1] || z->shape[3] != s[2])
            return cf_ctx_fail(ctx, CF_ERR_SHAPE, "%s: the top latent does not have the "
                               "shape (B, %lld, %lld, %lld)", self->name, (long long)s[0],
                               (long long)s[1], (long long)s[2]);
        io->x = z;
        return CF_OK;
    }
    int64_t B = io->batch;
    if (B < 1) return cf_ctx_fail(ctx, CF_ERR_ARG, "%s: io->batch must say how many images to draw", self->name);
    cf_tensor *z = cf_tensor_new_v(ctx, l->mean->dtype, B, s[0], s[1], s[2]);
    if (!z) return cf_ctx_status(ctx);
    cf__draw_gaussian(z, l->mean, l->logs, io->temperature, io->rng);
    io->x = z;
    return CF_OK;
}

static double prior_flops(const cf_layer *self)
{
    return 4.0 * (double)(self->in_shape[0] * self->in_shape[1] * self->in_shape[2]);
}

static void prior_free(cf_layer *self)
{
    free(self);
}

static const cf_layer_vtable prior_vt = {"prior", prior_forward, prior_inverse, prior_flops,
                                         prior_free};

cf_layer *cf_prior_layer(cf_params *ps, const char *name, const int64_t shape[3])
{
    prior_layer *l = calloc(1, sizeof *l);
    if (!l) {
        cf_set_error(CF_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    int64_t s4[4] = {1, shape[0], shape[1], shape[2]};
    if (!cf__layer_init(&l->base, &prior_vt, name, shape, shape) ||
        !(l->mean = cf__layer_param(&l->base, ps, "mean", 4, s4)) ||
        !(l->logs = cf__layer_param(&l->base, ps, "logs", 4, s4))) {
        free(l);
        return NULL;
    }
    l->base.factors_out = true;
    return &l->base;
}
