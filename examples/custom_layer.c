/* custom_layer.c: a new invertible layer kind with its own op, as a plugin, written against the
 * installed headers only (build it with examples/custom_layer/CMakeLists.txt, its own
 * project). No built-in kind is like it.
 *
 * The layer is an invertible leaky ReLU with a learned slope per channel (a "PReLU flow"):
 *
 *     y = x            where x >= 0
 *     y = a_c * x      where x <  0,   a_c = exp(logs[c]) > 0, so the map is a bijection
 *     log|det dy/dx| = sum over the negative elements of logs[c]     (a diagonal Jacobian)
 *     inverse: x = y where y >= 0, y / a_c where y < 0 (the sign is kept)
 *
 * Its forward is one op, `prelu_flow`, registered by the plugin: inputs x (B, H, W, C) and logs
 * (C); outputs y (B, H, W, C) and the per-image log-det (B). The op's backward:
 *     dx = dy (x >= 0) or dy * a_c (x < 0),
 *     dlogs[c] = sum over negative x of (dy * a_c * x + dlogdet_b).
 *
 * Use it:
 *     cmake -S examples/custom_layer -B build-plugin -DCMAKE_PREFIX_PATH=<install prefix>
 *     cmake --build build-plugin                      # -> build-plugin/libcf_prelu.so
 *     cincflow gradcheck --plugin build-plugin/libcf_prelu.so --op prelu_flow
 *     cincflow check --plugin build-plugin/libcf_prelu.so --kind prelu
 *     cincflow train --plugin build-plugin/libcf_prelu.so --arch my_arch.json ...
 * where my_arch.json has layers like {"name": "steps.0.prelu", "kind": "prelu",
 * "hparams": {"slope": 0.7}}.
 */
#include <math.h>

#include <cincflow/cincflow.h>

/* ---- the op ------------------------------------------------------------------------------ */

static cf_status prelu_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                             cf_shape *out)
{
    (void)attrs, (void)n_in;
    const cf_tensor *x = in[0], *logs = in[1];
    if (x->ndim != 4 || logs->ndim != 1 || logs->shape[0] != x->shape[3])
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'prelu_flow': expected x (B, H, W, C) and "
                           "logs (C)");
    cf_shape_of(&out[0], x);
    out[1].ndim = 1;
    out[1].shape[0] = x->shape[0];
    return CF_OK;
}

static cf_status prelu_forward(cf_node *n)
{
    const cf_tensor *x = n->in[0], *logs = n->in[1];
    cf_tensor *y = n->out[0], *ld = n->out[1];
    int64_t C = logs->shape[0], per = x->numel / x->shape[0];
    for (int64_t b = 0; b < x->shape[0]; b++) {
        double sum = 0;
        for (int64_t k = 0; k < per; k++) {
            int64_t i = b * per + k;
            double v = cf_tensor_get(x, i), s = cf_tensor_get(logs, i % C);
            cf_tensor_set(y, i, v >= 0 ? v : exp(s) * v);
            if (v < 0) sum += s;
        }
        cf_tensor_set(ld, b, sum);
    }
    return CF_OK;
}

static cf_status prelu_backward(cf_node *n)
{
    const cf_tensor *x = n->in[0], *logs = n->in[1], *y = n->out[0], *ld = n->out[1];
    void *dx = cf_node_grad_in(n, 0), *dlogs = cf_node_grad_in(n, 1);
    int64_t C = logs->shape[0], per = x->numel / x->shape[0];
    cf_dtype dt = x->dtype;
    for (int64_t i = 0; i < x->numel; i++) {
        double v = cf_tensor_get(x, i), a = exp(cf_tensor_get(logs, i % C));
        double g = cf_buf_get(dt, y->grad, i), gl = cf_buf_get(dt, ld->grad, i / per);
        if (dx) cf_buf_set(dt, dx, i, cf_buf_get(dt, dx, i) + (v >= 0 ? g : g * a));
        if (dlogs && v < 0)
            cf_buf_set(dt, dlogs, i % C, cf_buf_get(dt, dlogs, i % C) + g * a * v + gl);
    }
    return cf_ctx_status(n->ctx);
}

static bool prelu_case(int index, cf_op_case *c)
{
    if (index > 0) return false;
    c->n_in = 2;
    c->ndim[0] = 4, c->ndim[1] = 1;
    c->shape[0][0] = 2, c->shape[0][1] = 3, c->shape[0][2] = 3, c->shape[0][3] = 4;
    c->shape[1][0] = 4;
    c->lo[0] = -2, c->hi[0] = 2, c->lo[1] = -1, c->hi[1] = 1;
    c->label = "image";
    return true;
}

static const cf_op_def prelu_op = {
    .name = "prelu_flow",
    .n_inputs = 2,
    .n_outputs = 2,
    .infer = prelu_infer,
    .forward = prelu_forward,
    .backward = prelu_backward,
    .make_case = prelu_case,
    .doc = "invertible leaky ReLU y = x or exp(logs) x, and its per-image log-det",
};

/* ---- the layer kind ------------------------------------------------------------------------ */

typedef struct prelu_layer {
    cf_layer base;
    cf_tensor *logs; /* (C): log of the slope on negative inputs */
} prelu_layer;

static cf_status prelu_layer_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    prelu_layer *l = (prelu_layer *)self;
    cf_tensor *in[2] = {io->x, l->logs}, *out[2];
    if (cf_op_apply(ctx, &prelu_op, 2, in, NULL, out) != CF_OK) return cf_ctx_status(ctx);
    io->x = out[0];
    return cf_flow_io_add_logdet(ctx, io, out[1]);
}

static cf_status prelu_layer_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    prelu_layer *l = (prelu_layer *)self;
    const cf_tensor *y = io->x;
    cf_tensor *x = cf_tensor_new(ctx, y->dtype, y->ndim, y->shape);
    if (!x) return cf_ctx_status(ctx);
    int64_t C = l->logs->numel;
    for (int64_t i = 0; i < y->numel; i++) {
        double v = cf_tensor_get(y, i);
        cf_tensor_set(x, i, v >= 0 ? v : v * exp(-cf_tensor_get(l->logs, i % C)));
    }
    io->x = x;
    return CF_OK;
}

static double prelu_layer_flops(const cf_layer *self)
{
    return (double)(self->in_shape[0] * self->in_shape[1] * self->in_shape[2]);
}

static const cf_layer_vtable prelu_vt = {"prelu", prelu_layer_forward, prelu_layer_inverse,
                                         prelu_layer_flops, NULL};

static cf_layer *prelu_create(const cf_layer_args *a)
{
    prelu_layer *l = cf_layer_alloc(sizeof *l, &prelu_vt, a, a->in_shape);
    if (!l) return NULL;
    int64_t C = a->in_shape[2];
    double slope = cf_hparams_float(a->hp, "slope");
    l->logs = cf_layer_param(&l->base, a, "logs", 1, &C, cf_init_const(log(slope)));
    return l->logs ? &l->base : cf_layer_fail(&l->base);
}

static const cf_hparam_spec prelu_hparams[] = {
    {"slope", CF_HP_FLOAT, .def = 0.5, .min = 1e-3, .max = 1e3,
     .doc = "initial slope on negative inputs (the same for every channel)"},
};

static const cf_layer_kind prelu_kind = {
    .name = "prelu",
    .summary = "invertible leaky ReLU with a learned slope exp(logs[c]) per channel",
    .conventions = "NHWC; y = x where x >= 0, exp(logs[c]) * x where x < 0; log|det| = sum of "
                   "logs[c] over the negative elements; inverse keeps the sign",
    .hparams = prelu_hparams,
    .n_hparams = 1,
    .create = prelu_create,
};

/* ---- the plugin's entry point ---------------------------------------------------------------- */

CF_PLUGIN("cf_prelu")
{
    cf_status st = cf_op_register(&prelu_op);
    if (st == CF_OK) st = cf_layer_kind_register(&prelu_kind);
    return st;
}
