/* actnorm.c: Glow's activation normalisation, y = (x + bias) * exp(logs), per channel, with
 * an optional ReLU after it (attrs.relu: y = max((x + bias) * exp(logs), 0)), as the coupling
 * networks use it.
 *
 * One fused node instead of add, exp, mul (and relu): three or four fewer activation-sized
 * tensors on the tape.
 * The log-determinant, H * W * sum(logs) per image, is left to the layer (one sum over C). The
 * data-dependent initialisation (bias = -mean, logs = -log(std + 1e-6)) is the layer's too.
 *
 * Legend: P rows (every axis but the last), C channels. Gradients with g = dy (and, with the
 * ReLU, g = 0 where y = 0):
 *   dx = g exp(logs), dbias_c = sum_p g exp(logs_c), dlogs_c = sum_p g y
 */
#include "cf_ops_impl.h"
#include "cf_simd_impl.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

static cf_status actnorm_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                               cf_shape *out)
{
    (void)attrs, (void)n_in;
    const cf_tensor *x = in[0];
    char a[96], b[96], c[96];
    int64_t C = x->ndim ? x->shape[x->ndim - 1] : 0;
    if (x->ndim < 1 || in[1]->numel != C || in[2]->numel != C || in[1]->ndim != 1 ||
        in[2]->ndim != 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'actnorm': x %s needs bias and logs of shape "
                           "(C), got %s and %s", CF__DESC(x, a), CF__DESC(in[1], b),
                           CF__DESC(in[2], c));
    cf_shape_of(&out[0], x);
    return CF_OK;
}

static bool relu_of(const cf_node *n)
{
    return CF_ATTRS(n, cf_actnorm_attrs)->relu != 0;
}

static cf_status actnorm_fwd(cf_node *n)
{
    const cf_tensor *x = n->in[0], *bias = n->in[1], *logs = n->in[2];
    int64_t C = bias->numel;
    bool relu = relu_of(n);
    for (int64_t i = 0; i < x->numel; i++) {
        double v = (cf_tensor_get(x, i) + cf_tensor_get(bias, i % C)) *
                   exp(cf_tensor_get(logs, i % C));
        cf_tensor_set(n->out[0], i, relu && v < 0 ? 0.0 : v);
    }
    return CF_OK;
}

static cf_status actnorm_bwd(cf_node *n)
{
    const cf_tensor *x = n->in[0], *logs = n->in[2], *y = n->out[0];
    cf_dtype dt = x->dtype;
    int64_t C = logs->numel;
    void *dx = cf_node_grad_in(n, 0), *db = cf_node_grad_in(n, 1), *dl = cf_node_grad_in(n, 2);
    bool relu = relu_of(n);
    for (int64_t i = 0; i < x->numel; i++) {
        int64_t c = i % C;
        double g = cf_buf_get(dt, y->grad, i), e = exp(cf_tensor_get(logs, c));
        if (relu && cf_tensor_get(y, i) <= 0) g = 0;
        if (dx) cf_buf_set(dt, dx, i, cf_buf_get(dt, dx, i) + g * e);
        if (db) cf_buf_set(dt, db, c, cf_buf_get(dt, db, c) + g * e);
        if (dl) cf_buf_set(dt, dl, c, cf_buf_get(dt, dl, c) + g * cf_tensor_get(y, i));
    }
    return cf_ctx_status(n->ctx);
}

static cf_status actnorm_fwd_f32(cf_node *n)
{
    const float *x = n->in[0]->data, *bias = n->in[1]->data, *logs = n->in[2]->data;
    float *y = n->out[0]->data;
    int64_t C = n->in[1]->numel, P = C ? n->in[0]->numel / C : 0;
    float *scale = cf_node_scratch(n, (size_t)C * sizeof(float));
    if (!scale) return cf_ctx_status(n->ctx);
    for (int64_t c = 0; c < C; c++) scale[c] = expf(logs[c]);
    bool relu = relu_of(n);
    /* blocks of rows through the path's loops (cf_simd_impl.h) */
    const cf__simd *kern = cf__simd_get();
    const int64_t rows = 64;
#pragma omp parallel for schedule(static) if (P * C > CF__PAR_MIN)
    for (int64_t p0 = 0; p0 < P; p0 += rows)
        kern->actnorm_rows_fwd(P - p0 < rows ? P - p0 : rows, C, x + p0 * C, y + p0 * C, bias,
                               scale, relu);
    return CF_OK;
}

/* One pass over the rows: dx, and per-channel sums of g and g*y. Rows are cut into one
 * contiguous range per thread; each range sums 64-row blocks in float (vectorised over
 * channels, by the path's loops: cf_simd_impl.h) into double partials, combined in thread
 * order. */
bool cf__actnorm_backward_f32(cf_node *n, const float *g, const float *y, const float *logs,
                              int64_t P, int64_t C, bool relu, float *dx, bool set, float *db,
                              float *dl)
{
    bool sums = db || dl;
    const cf__simd *kern = cf__simd_get();
    int nt = P * C > CF__PAR_MIN ? omp_get_max_threads() : 1;
    float *scale = cf_node_scratch(n, (size_t)C * sizeof(float));
    float *block = cf_node_scratch(n, (size_t)(nt * 2 * C) * sizeof(float));
    double *part = cf_node_scratch(n, (size_t)(nt * 2 * C) * sizeof(double));
    if (!scale || !block || !part) return false;
    for (int64_t c = 0; c < C; c++) scale[c] = expf(logs[c]);
    memset(part, 0, (size_t)(nt * 2 * C) * sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        int64_t p_begin = P * t / nt, p_end = P * (t + 1) / nt;
        float *sg = block + (int64_t)t * 2 * C, *sgy = sg + C;
        double *acc = part + (int64_t)t * 2 * C;
        for (int64_t p0 = p_begin; p0 < p_end; p0 += 64) {
            int64_t p1 = p0 + 64 < p_end ? p0 + 64 : p_end;
            for (int64_t c = 0; c < C; c++) sg[c] = sgy[c] = 0.0f;
            kern->actnorm_rows_bwd(p1 - p0, C, g + p0 * C, y + p0 * C, dx ? dx + p0 * C : NULL,
                                   scale, sg, sgy, relu, set);
            if (sums)
                for (int64_t c = 0; c < C; c++) acc[c] += sg[c], acc[C + c] += sgy[c];
        }
    }
    for (int t = 1; t < nt; t++)
        for (int64_t c = 0; c < 2 * C; c++) part[c] += part[(int64_t)t * 2 * C + c];
    for (int64_t c = 0; c < C; c++) {
        if (db) db[c] += (float)(part[c] * scale[c]);
        if (dl) dl[c] += (float)part[C + c];
    }
    return true;
}

static cf_status actnorm_bwd_f32(cf_node *n)
{
    int64_t C = n->in[1]->numel, P = C ? n->in[0]->numel / C : 0;
    bool set;
    float *dx = cf_node_grad_in_ex(n, 0, &set), *db = cf_node_grad_in(n, 1);
    float *dl = cf_node_grad_in(n, 2);
    cf__actnorm_backward_f32(n, n->out[0]->grad, n->out[0]->data, n->in[2]->data, P, C,
                             relu_of(n), dx, set, db, dl);
    return cf_ctx_status(n->ctx);
}

static bool actnorm_case(int index, cf_op_case *c)
{
    static const int64_t xs[][4] = {{2, 3, 2, 4}, {1, 1, 1, 3}, {3, 5, 0, 0}, {2, 3, 2, 4}};
    static const int nd[] = {4, 4, 2, 4};
    if (index >= 4) return false;
    ((cf_actnorm_attrs *)c->attrs)->relu = index == 3;
    c->n_in = 3;
    c->ndim[0] = nd[index];
    for (int d = 0; d < nd[index]; d++) c->shape[0][d] = xs[index][d];
    int64_t C = xs[index][nd[index] - 1];
    c->ndim[1] = c->ndim[2] = 1;
    c->shape[1][0] = c->shape[2][0] = C;
    c->lo[0] = -2, c->hi[0] = 2, c->lo[1] = -1, c->hi[1] = 1, c->lo[2] = -0.5, c->hi[2] = 0.5;
    c->label = index == 0 ? "image" : index == 1 ? "one pixel" : index == 2 ? "matrix" : "with relu";
    return true;
}

const cf_op_def cf__op_actnorm = {
    .name = "actnorm",
    .n_inputs = 3,
    .n_outputs = 1,
    .attrs_size = sizeof(cf_actnorm_attrs),
    .infer = actnorm_infer,
    .forward = actnorm_fwd,
    .backward = actnorm_bwd,
    .fast = {[CF_F32] = {actnorm_fwd_f32, actnorm_bwd_f32}},
    .make_case = actnorm_case,
    .doc = "(x + bias) * exp(logs), per channel",
};

cf_tensor *cf_actnorm(cf_ctx *ctx, cf_tensor *x, cf_tensor *bias, cf_tensor *logs)
{
    cf_tensor *in[3] = {x, bias, logs};
    cf_actnorm_attrs a = {0};
    return cf_op_apply1(ctx, &cf__op_actnorm, 3, in, &a);
}

cf_tensor *cf_actnorm_relu(cf_ctx *ctx, cf_tensor *x, cf_tensor *bias, cf_tensor *logs)
{
    cf_tensor *in[3] = {x, bias, logs};
    cf_actnorm_attrs a = {1};
    return cf_op_apply1(ctx, &cf__op_actnorm, 3, in, &a);
}
