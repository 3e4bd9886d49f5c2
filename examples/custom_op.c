/* custom_op.c: registering a new op from outside the library, using it in a graph, and
 * gradchecking it, with the public headers only.
 *
 * The op is a "swish" with a learnable per-channel slope:  y = x * sigmoid(beta * x), x of
 * shape (..., C) and beta of shape (C). Its reference kernels work on every dtype through
 * cf_tensor_get/cf_tensor_set; a fast f32 kernel could be added in .fast[CF_F32].
 *
 * Run: ./custom_op   (prints the gradcheck result and a small training loss; exit 0 on success)
 */
#include <math.h>
#include <stdio.h>

#include "cincflow.h"

/* ---- the op ------------------------------------------------------------------------------ */

static cf_status swish_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                             cf_shape *out)
{
    (void)attrs, (void)n_in;
    const cf_tensor *x = in[0], *beta = in[1];
    if (beta->ndim != 1 || x->ndim < 1 || beta->shape[0] != x->shape[x->ndim - 1])
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'swish': beta must have shape (C) with C "
                           "the last axis of x");
    cf_shape_of(&out[0], x);
    return CF_OK;
}

static cf_status swish_forward(cf_node *n)
{
    const cf_tensor *x = n->in[0], *beta = n->in[1];
    int64_t C = beta->shape[0];
    for (int64_t i = 0; i < x->numel; i++) {
        double v = cf_tensor_get(x, i), b = cf_tensor_get(beta, i % C);
        cf_tensor_set(n->out[0], i, v / (1.0 + exp(-b * v)));
    }
    return CF_OK;
}

/* dy/dx = s + b x s (1 - s), dy/db = x^2 s (1 - s), with s = sigmoid(b x). */
static cf_status swish_backward(cf_node *n)
{
    const cf_tensor *x = n->in[0], *beta = n->in[1], *y = n->out[0];
    int64_t C = beta->shape[0];
    void *dx = cf_node_grad_in(n, 0), *dbeta = cf_node_grad_in(n, 1);
    for (int64_t i = 0; i < x->numel; i++) {
        double v = cf_tensor_get(x, i), b = cf_tensor_get(beta, i % C);
        double s = 1.0 / (1.0 + exp(-b * v)), g = cf_buf_get(y->dtype, y->grad, i);
        if (dx) cf_buf_set(x->dtype, dx, i, cf_buf_get(x->dtype, dx, i) + g * (s + b * v * s * (1 - s)));
        if (dbeta)
            cf_buf_set(x->dtype, dbeta, i % C,
                       cf_buf_get(x->dtype, dbeta, i % C) + g * v * v * s * (1 - s));
    }
    return cf_ctx_status(n->ctx);
}

static bool swish_case(int index, cf_op_case *c)
{
    if (index > 0) return false;
    c->n_in = 2;
    c->ndim[0] = 4, c->ndim[1] = 1;
    c->shape[0][0] = 2, c->shape[0][1] = 3, c->shape[0][2] = 3, c->shape[0][3] = 4;
    c->shape[1][0] = 4;
    c->lo[0] = -2, c->hi[0] = 2, c->lo[1] = 0.5, c->hi[1] = 1.5;
    c->label = "image";
    return true;
}

static const cf_op_def swish_op = {
    .name = "swish",
    .n_inputs = 2,
    .n_outputs = 1,
    .infer = swish_infer,
    .forward = swish_forward,
    .backward = swish_backward,
    .make_case = swish_case,
    .doc = "x * sigmoid(beta * x), learnable per-channel beta",
};

static cf_tensor *swish(cf_ctx *ctx, cf_tensor *x, cf_tensor *beta)
{
    cf_tensor *in[2] = {x, beta};
    return cf_op_apply1(ctx, &swish_op, 2, in, NULL);
}

/* ---- using it ---------------------------------------------------------------------------- */

int main(void)
{
    if (cf_op_register(&swish_op) != CF_OK) {
        fprintf(stderr, "custom_op: %s\n", cf_last_error());
        return 1;
    }
    const cf_op_def *found = cf_op_find("swish");
    printf("registered '%s': %s\n", found->name, found->doc);

    /* Gradcheck in f64 on the op's own test case, exactly as `cincflow gradcheck` does. */
    cf_op_case c;
    cf_tensor *in[CF_MAX_INPUTS];
    cf_op_case_get(found, 0, &c);
    if (cf_op_case_inputs(&c, CF_F64, 42, in) != CF_OK) return 1;
    cf_gradcheck_result res;
    cf_status st = cf_gradcheck_op(found, c.n_in, in, NULL, NULL, &res);
    printf("gradcheck swish: %s (%lld values, max abs %.2e, max rel %.2e)%s%s\n",
           st == CF_OK ? "passed" : "FAILED", (long long)res.values_checked, res.max_abs_err,
           res.max_rel_err, st == CF_OK ? "" : ": ", st == CF_OK ? "" : res.message);
    for (int i = 0; i < c.n_in; i++) cf_tensor_free(in[i]);
    if (st != CF_OK) return 1;

    /* In a graph: fit beta so that swish(x) matches a target made with beta = 2. */
    cf_params *ps = cf_params_new(CF_F32);
    cf_tensor *beta = cf_params_add(ps, "act.beta", 1, (int64_t[]){3});
    cf_tensor_fill(beta, 0.5);
    cf_adam *opt = cf_adam_new(ps, &(cf_adam_opts){.lr = 0.05});
    cf_ctx *ctx = cf_ctx_new(0);
    cf_rng rng;
    cf_rng_seed(&rng, 7, 0);
    double first = 0, last = 0;
    for (int step = 0; step < 200; step++) {
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 16, 3);
        cf_tensor *target = cf_tensor_new_v(ctx, CF_F32, 16, 3);
        cf_tensor_fill_uniform(x, &rng, -3, 3);
        for (int64_t i = 0; i < x->numel; i++) {
            double v = cf_tensor_get(x, i);
            cf_tensor_set(target, i, v / (1.0 + exp(-2.0 * v)));
        }
        cf_tensor *diff = cf_sub(ctx, swish(ctx, x, beta), target);
        cf_tensor *loss = cf_mean_all(ctx, cf_mul(ctx, diff, diff));
        cf_params_zero_grad(ps);
        if (cf_backward(ctx, loss) != CF_OK) {
            fprintf(stderr, "custom_op: %s\n", cf_ctx_error(ctx));
            return 1;
        }
        if (step == 0) first = cf_tensor_get(loss, 0);
        last = cf_tensor_get(loss, 0);
        cf_adam_step(opt, NULL);
        cf_ctx_reset(ctx);
    }
    printf("training beta: loss %.5f -> %.5f, beta = (%.3f, %.3f, %.3f), target 2\n", first, last,
           cf_tensor_get(beta, 0), cf_tensor_get(beta, 1), cf_tensor_get(beta, 2));
    bool ok = last < first * 0.05 && fabs(cf_tensor_get(beta, 0) - 2.0) < 0.2;
    cf_ctx_free(ctx);
    cf_adam_free(opt);
    cf_params_free(ps);
    return ok ? 0 : 1;
}
