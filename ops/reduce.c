/* reduce.c: sum and mean over every axis but the batch ((B, ...) -> (B)), or over everything
 * (a scalar, attrs.all = 1).
 *
 * Legend: B rows (the batch, or 1 when reducing everything), N elements per row. Sums are
 * accumulated in double in both kernel families, so f32 losses over large batches do not lose
 * digits.
 */
#include "cf_ops_impl.h"

static cf_status reduce_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                              cf_shape *out)
{
    (void)n_in;
    const cf_reduce_attrs *a = attrs;
    if (!a->all && in[0]->ndim < 1) {
        char s[96];
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'sum'/'mean': a per-batch reduction needs a "
                           "batch axis, got %s", CF__DESC(in[0], s));
    }
    out[0].ndim = a->all ? 0 : 1;
    out[0].shape[0] = a->all ? 1 : in[0]->shape[0];
    return CF_OK;
}

/* rows and row length of the reduction */
static void geometry(const cf_node *n, int64_t *B, int64_t *N)
{
    const cf_tensor *x = n->in[0];
    *B = CF_ATTRS(n, cf_reduce_attrs)->all ? 1 : x->shape[0];
    *N = *B ? x->numel / *B : 0;
}

static double divisor(const cf_node *n, int64_t N)
{
    return n->op == &cf__op_mean ? (N ? (double)N : 1.0) : 1.0;
}

static cf_status reduce_fwd(cf_node *n)
{
    int64_t B, N;
    geometry(n, &B, &N);
    double div = divisor(n, N);
    for (int64_t b = 0; b < B; b++) {
        double s = 0;
        for (int64_t i = 0; i < N; i++) s += cf_tensor_get(n->in[0], b * N + i);
        cf_tensor_set(n->out[0], b, s / div);
    }
    return CF_OK;
}

static cf_status reduce_bwd(cf_node *n)
{
    int64_t B, N;
    geometry(n, &B, &N);
    double div = divisor(n, N);
    const cf_tensor *x = n->in[0], *y = n->out[0];
    void *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    for (int64_t b = 0; b < B; b++) {
        double g = cf_buf_get(y->dtype, y->grad, b) / div;
        for (int64_t i = 0; i < N; i++)
            cf_buf_set(x->dtype, dx, b * N + i, cf_buf_get(x->dtype, dx, b * N + i) + g);
    }
    return CF_OK;
}

static cf_status reduce_fwd_f32(cf_node *n)
{
    int64_t B, N;
    geometry(n, &B, &N);
    double div = divisor(n, N);
    const float *x = n->in[0]->data;
    float *y = n->out[0]->data;
    for (int64_t b = 0; b < B; b++) {
        double s = 0;
        const float *xb = x + b * N;
        /* Blocks of 64 summed in float, blocks combined in double: vectorisable and accurate. */
        int64_t i = 0;
        for (; i + 64 <= N; i += 64) {
            float part = 0;
            for (int k = 0; k < 64; k++) part += xb[i + k];
            s += part;
        }
        for (; i < N; i++) s += xb[i];
        y[b] = (float)(s / div);
    }
    return CF_OK;
}

static cf_status reduce_bwd_f32(cf_node *n)
{
    int64_t B, N;
    geometry(n, &B, &N);
    float div = (float)divisor(n, N);
    const float *g = n->out[0]->grad;
    float *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    for (int64_t b = 0; b < B; b++) {
        float gb = g[b] / div;
        float *d = dx + b * N;
#pragma omp parallel for schedule(static) if (N > CF__PAR_MIN)
        for (int64_t i = 0; i < N; i++) d[i] += gb;
    }
    return CF_OK;
}

static bool reduce_case(int index, cf_op_case *c)
{
    if (index >= 3) return false;
    static const int64_t shapes[][4] = {{2, 3, 4, 5}, {3, 70, 0, 0}, {2, 3, 4, 5}};
    c->n_in = 1;
    c->ndim[0] = index == 1 ? 2 : 4;
    for (int d = 0; d < c->ndim[0]; d++) c->shape[0][d] = shapes[index][d];
    c->lo[0] = -2, c->hi[0] = 2;
    ((cf_reduce_attrs *)c->attrs)->all = index == 2;
    c->label = index == 2 ? "all axes" : "per batch";
    return true;
}

#define DEFINE_REDUCE(id, DOC)                                                               \
    const cf_op_def cf__op_##id = {                                                          \
        .name = #id,                                                                         \
        .n_inputs = 1,                                                                         \
        .n_outputs = 1,                                                                        \
        .attrs_size = sizeof(cf_reduce_attrs),                                                 \
        .infer = reduce_infer,                                                                 \
        .forward = reduce_fwd,                                                                 \
        .backward = reduce_bwd,                                                                \
        .fast = {[CF_F32] = {reduce_fwd_f32, reduce_bwd_f32}},                                 \
        .make_case = reduce_case,                                                              \
        .doc = DOC,                                                                            \
    };
DEFINE_REDUCE(sum, "sum over all axes but the batch (or all axes)")
DEFINE_REDUCE(mean, "mean over all axes but the batch (or all axes)")

static cf_tensor *reduce(cf_ctx *ctx, const cf_op_def *op, cf_tensor *x, int all)
{
    cf_reduce_attrs a = {all};
    return cf_op_apply1(ctx, op, 1, &x, &a);
}

cf_tensor *cf_sum(cf_ctx *ctx, cf_tensor *x) { return reduce(ctx, &cf__op_sum, x, 0); }
cf_tensor *cf_mean(cf_ctx *ctx, cf_tensor *x) { return reduce(ctx, &cf__op_mean, x, 0); }
cf_tensor *cf_sum_all(cf_ctx *ctx, cf_tensor *x) { return reduce(ctx, &cf__op_sum, x, 1); }
cf_tensor *cf_mean_all(cf_ctx *ctx, cf_tensor *x) { return reduce(ctx, &cf__op_mean, x, 1); }
