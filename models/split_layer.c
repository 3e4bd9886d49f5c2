/* split_layer.c: factors half the channels out under a learned conditional prior (Glow's
 * split2d): x = [x_1, z] with x_1 the first C/2 channels; h = zero_conv3x3(x_1) gives
 * mean = h[..., :n] and logs = h[..., n:] (n = C - C/2); forward adds log N(z; mean, exp(logs))
 * to io->logp, pushes z as a latent and passes x_1 on. Inverse: takes the latent back (or draws
 * it at io->temperature) and concatenates. Tensors: <name>.prior.{weight,bias,logs}. */
#include "cf_models_impl.h"

typedef struct split_layer {
    cf_layer base;
    cf__zero_conv prior;
    int64_t kept, out; /* channels kept, channels factored out */
} split_layer;

static cf_status prior_params(split_layer *l, cf_ctx *ctx, cf_tensor *x1, cf_tensor **mean,
                              cf_tensor **logs)
{
    cf_tensor *h = cf__zero_conv_apply(ctx, &l->prior, x1), *parts[2];
    if (!h) return cf_ctx_status(ctx);
    cf_status st = cf_split(ctx, h, 2, (int64_t[]){l->out, l->out}, parts);
    *mean = parts[0], *logs = parts[1];
    return st;
}

static cf_status split_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    split_layer *l = (split_layer *)self;
    if (io->n_latents == CF_FLOW_MAX_LATENTS)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "%s: more than %d latents", self->name,
                           CF_FLOW_MAX_LATENTS);
    cf_tensor *parts[2], *mean = NULL, *logs = NULL;
    if (cf_split(ctx, io->x, 2, (int64_t[]){l->kept, l->out}, parts) != CF_OK)
        return cf_ctx_status(ctx);
    if (prior_params(l, ctx, parts[0], &mean, &logs) != CF_OK) return cf_ctx_status(ctx);
    io->latents[io->n_latents++] = parts[1];
    io->x = parts[0];
    return cf_flow_io_add_logp(ctx, io, cf_gaussian_logp(ctx, parts[1], mean, logs));
}

static cf_status split_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    split_layer *l = (split_layer *)self;
    cf_tensor *x1 = io->x, *z, *mean = NULL, *logs = NULL;
    if (!x1) return cf_ctx_status(ctx);
    if (prior_params(l, ctx, x1, &mean, &logs) != CF_OK) return cf_ctx_status(ctx);
    if (io->n_latents > 0) {
        z = io->latents[--io->n_latents];
        if (!z || z->shape[0] != x1->shape[0] || z->shape[3] != l->out)
            return cf_ctx_fail(ctx, CF_ERR_SHAPE, "%s: the latent given does not fit (%lld "
                               "channels expected)", self->name, (long long)l->out);
    } else {
        z = cf_tensor_new(ctx, mean->dtype, mean->ndim, mean->shape);
        if (!z) return cf_ctx_status(ctx);
        cf__draw_gaussian(z, mean, logs, io->temperature, io->rng);
    }
    io->x = cf_concat(ctx, 2, (cf_tensor *[]){x1, z});
    return cf_ctx_status(ctx);
}

static double split_flops(const cf_layer *self)
{
    const split_layer *l = (const split_layer *)self;
    return cf__conv_flops(self->in_shape[0], self->in_shape[1], 3, l->kept, 2 * l->out);
}

static const cf_layer_vtable split_vt = {"split", split_forward, split_inverse, split_flops,
                                         NULL};

static cf_layer *split_create(const cf_layer_args *a)
{
    const int64_t *shape = a->in_shape;
    if (shape[2] < 2) {
        cf_set_error(CF_ERR_SHAPE, "%s: cannot split images of %lld channel", a->name,
                     (long long)shape[2]);
        return NULL;
    }
    int64_t kept = shape[2] / 2;
    int64_t out[3] = {shape[0], shape[1], kept};
    split_layer *l = cf_layer_alloc(sizeof *l, &split_vt, a, out);
    if (!l) return NULL;
    l->kept = kept;
    l->out = shape[2] - kept;
    if (!cf__zero_conv_init(&l->prior, &l->base, a, "prior", l->kept, 2 * l->out))
        return cf_layer_fail(&l->base);
    l->base.factors_out = true;
    return &l->base;
}

const cf_layer_kind cf__kind_split = {
    .name = "split",
    .summary = "factors the last C - C/2 channels out under N(mean, exp(logs)) conditioned on "
               "the first C/2",
    .conventions = "keeps channels [0, C/2) of NHWC; the latent is channels [C/2, C); "
                   "(mean, logs) = (conv3x3_same(kept, prior.weight HWIO) + prior.bias) * "
                   "exp(3 * prior.logs), output channels [0, C - C/2) are the mean and "
                   "[C - C/2, 2(C - C/2)) the log-scale (not interleaved)",
    .create = split_create,
};

cf_layer *cf_split_layer(cf_params *ps, const char *name, const int64_t shape[3])
{
    return cf_layer_create("split", ps, name, shape, NULL, NULL);
}
