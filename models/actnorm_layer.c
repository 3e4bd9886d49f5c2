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
    return cf__add_logdet(ctx, io, cf_scale(ctx, cf_sum_all(ctx, l->logs), hw));
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

static void actnorm_free(cf_layer *self)
{
    free(self);
}

static const cf_layer_vtable actnorm_vt = {"actnorm", actnorm_forward, actnorm_inverse,
                                           actnorm_flops, actnorm_free};

cf_layer *cf_actnorm_layer(cf_params *ps, const char *name, const int64_t shape[3])
{
    actnorm_layer *l = calloc(1, sizeof *l);
    if (!l) {
        cf_set_error(CF_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    int64_t C = shape[2];
    if (!cf__layer_init(&l->base, &actnorm_vt, name, shape, shape) ||
        !(l->bias = cf__layer_param(&l->base, ps, "bias", 1, &C)) ||
        !(l->logs = cf__layer_param(&l->base, ps, "logs", 1, &C)) ||
        !(l->initialized = cf__layer_state(&l->base, ps, "initialized", 0, NULL))) {
        free(l);
        return NULL;
    }
    return &l->base;
}
