/* actnorm_layer.c: Glow's actnorm as a flow layer: y = (x + bias) * exp(logs) per channel,
 * log|det| = H * W * sum(logs) per image. Data-dependent initialisation on the first batch
 * (bias = -mean, logs = -log(std + 1e-6)); the "initialized" flag is state.
 * Tensors: <name>.bias (C), <name>.logs (C); state <name>.initialized (). */
#include "cf_models_impl.h"

typedef struct actnorm_layer {
    cf_layer base;
    cf_tensor *bias, *logs, *initialized;
} actnorm_layer;

static cf_status actnorm_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    actnorm_layer *l = (actnorm_layer *)self;
    cf_tensor *x = io->x;
    io->x = cf__actnorm_apply(ctx, x, l->bias, l->logs, l->initialized, false);
    double hw = (double)(self->in_shape[0] * self->in_shape[1]);
    return cf_flow_io_add_logdet(ctx, io, cf_scale(ctx, cf_sum_all(ctx, l->logs), hw));
}

static cf_status actnorm_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    actnorm_layer *l = (actnorm_layer *)self;
    /* x = y * exp(-logs) - bias */
    io->x = cf_sub(ctx, cf_mul(ctx, io->x, cf_exp(ctx, cf_scale(ctx, l->logs, -1.0))), l->bias);
    return cf_ctx_status(ctx);
}

static double actnorm_flops(const cf_layer *self)
{
    return 2.0 * (double)(self->in_shape[0] * self->in_shape[1] * self->in_shape[2]);
}

static const cf_layer_vtable actnorm_vt = {"actnorm", actnorm_forward, actnorm_inverse,
                                           actnorm_flops, NULL};

static cf_layer *actnorm_create(const cf_layer_args *a)
{
    actnorm_layer *l = cf_layer_alloc(sizeof *l, &actnorm_vt, a, a->in_shape);
    if (!l) return NULL;
    int64_t C = a->in_shape[2];
    cf_init zero = cf_init_const(0);
    if (!(l->bias = cf_layer_param(&l->base, a, "bias", 1, &C, zero)) ||
        !(l->logs = cf_layer_param(&l->base, a, "logs", 1, &C, zero)) ||
        !(l->initialized = cf_layer_state(&l->base, a, "initialized", 0, NULL, zero)))
        return cf_layer_fail(&l->base);
    return &l->base;
}

const cf_layer_kind cf__kind_actnorm = {
    .name = "actnorm",
    .summary = "Glow's activation normalisation: y = (x + bias) * exp(logs) per channel, "
               "initialised from the first batch",
    .conventions = "NHWC; bias and logs (C) act on channel c; log|det| = H*W*sum(logs); state "
                   "'initialized' is 1 once the data-dependent initialisation (bias = -mean, "
                   "logs = -log(std + 1e-6)) has run",
    .create = actnorm_create,
};

cf_layer *cf_actnorm_layer(cf_params *ps, const char *name, const int64_t shape[3])
{
    return cf_layer_create("actnorm", ps, name, shape, NULL, NULL);
}
