/* squeeze_layer.c: Glow's squeeze as a flow layer, (H, W, C) -> (H/2, W/2, 4C), channel
 * c*4 + dy*2 + dx; a permutation, so log|det| = 0. No tensors. */
#include "cf_models_impl.h"

static cf_status squeeze_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    (void)self;
    io->x = cf_squeeze(ctx, io->x);
    return cf_ctx_status(ctx);
}

static cf_status squeeze_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    (void)self;
    io->x = cf_unsqueeze(ctx, io->x);
    return cf_ctx_status(ctx);
}

static double squeeze_flops(const cf_layer *self)
{
    (void)self;
    return 0;
}

static const cf_layer_vtable squeeze_vt = {"squeeze", squeeze_forward, squeeze_inverse,
                                           squeeze_flops, NULL};

static cf_layer *squeeze_create(const cf_layer_args *a)
{
    const int64_t *shape = a->in_shape;
    if (shape[0] % 2 || shape[1] % 2) {
        cf_set_error(CF_ERR_SHAPE, "%s: cannot squeeze %lld x %lld x %lld images: height and "
                     "width must be even", a->name, (long long)shape[0], (long long)shape[1],
                     (long long)shape[2]);
        return NULL;
    }
    int64_t out[3] = {shape[0] / 2, shape[1] / 2, shape[2] * 4};
    return cf_layer_alloc(sizeof(cf_layer), &squeeze_vt, a, out);
}

const cf_layer_kind cf__kind_squeeze = {
    .name = "squeeze",
    .summary = "space to channels: (H, W, C) -> (H/2, W/2, 4C), log|det| = 0",
    .conventions = "Glow's order: output channel c*4 + dy*2 + dx holds input (2i+dy, 2j+dx, c)",
    .create = squeeze_create,
};

cf_layer *cf_squeeze_layer(const char *name, const int64_t shape[3])
{
    return cf_layer_create("squeeze", NULL, name, shape, NULL, NULL);
}
