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
    cf_status st = cf_flow_io_add_logp(ctx, io, cf_gaussian_logp(ctx, io->x, l->mean, l->logs));
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

static const cf_layer_vtable prior_vt = {"prior", prior_forward, prior_inverse, prior_flops,
                                         NULL};

static cf_layer *prior_create(const cf_layer_args *a)
{
    prior_layer *l = cf_layer_alloc(sizeof *l, &prior_vt, a, a->in_shape);
    if (!l) return NULL;
    int64_t s4[4] = {1, a->in_shape[0], a->in_shape[1], a->in_shape[2]};
    cf_init zero = cf_init_const(0);
    if (!(l->mean = cf_layer_param(&l->base, a, "mean", 4, s4, zero)) ||
        !(l->logs = cf_layer_param(&l->base, a, "logs", 4, s4, zero)))
        return cf_layer_fail(&l->base);
    l->base.factors_out = true;
    l->base.terminal = true;
    return &l->base;
}

const cf_layer_kind cf__kind_prior = {
    .name = "prior",
    .summary = "the top prior: factors the whole tensor out under N(mean, exp(logs))",
    .conventions = "mean and logs are (1, H, W, C) NHWC: one learned mean and log-scale per "
                   "position and channel, shared by every image",
    .create = prior_create,
};

cf_layer *cf_prior_layer(cf_params *ps, const char *name, const int64_t shape[3])
{
    return cf_layer_create("prior", ps, name, shape, NULL, NULL);
}
