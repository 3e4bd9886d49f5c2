/* gaussian_logp.c: log-density of a diagonal Gaussian, summed over every axis but the batch.
 *
 *   1 input  (x):             logp_b = sum_i -0.5 * (log(2 pi) + x_i^2)
 *   3 inputs (x, mean, logs): logp_b = sum_i -0.5 * log(2 pi) - logs_i - 0.5 * z_i^2,
 *                             z_i = (x_i - mean_i) * exp(-logs_i)
 *
 * Legend: B batch, N elements per image. mean and logs have x's shape, or x's shape with
 * batch 1 (shared by every image, as a learned top prior is). Gradients:
 *   dx = -z exp(-logs), dmean = z exp(-logs), dlogs = z^2 - 1, each times d(logp_b).
 */
#include "cf_ops_impl.h"

#define HALF_LOG_2PI 0.91893853320467274178

static cf_status logp_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                            cf_shape *out)
{
    (void)attrs;
    const cf_tensor *x = in[0];
    char a[96], b[96];
    if (n_in != 1 && n_in != 3)
        return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'gaussian_logp': takes x, or x, mean and logs "
                           "(got %d inputs)", n_in);
    if (x->ndim < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'gaussian_logp': x %s has no batch axis",
                           CF__DESC(x, a));
    for (int i = 1; i < n_in; i++) {
        const cf_tensor *p = in[i];
        bool ok = p->ndim == x->ndim && (p->shape[0] == x->shape[0] || p->shape[0] == 1);
        for (int d = 1; ok && d < x->ndim; d++) ok = p->shape[d] == x->shape[d];
        if (!ok)
            return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'gaussian_logp': %s %s must have x's "
                               "shape %s (batch may be 1)", i == 1 ? "mean" : "logs",
                               CF__DESC(p, a), CF__DESC(x, b));
    }
    out[0].ndim = 1;
    out[0].shape[0] = x->shape[0];
    return CF_OK;
}

/* Offset of element i of image b in a parameter tensor that may be batch-shared. */
static inline int64_t poff(const cf_tensor *p, int64_t b, int64_t N, int64_t i)
{
    return (p->shape[0] == 1 ? 0 : b * N) + i;
}

static cf_status logp_fwd(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    int64_t B = x->shape[0], N = B ? x->numel / B : 0;
    for (int64_t b = 0; b < B; b++) {
        double s = 0;
        for (int64_t i = 0; i < N; i++) {
            double v = cf_tensor_get(x, b * N + i);
            if (n->n_in == 1) {
                s += -HALF_LOG_2PI - 0.5 * v * v;
            } else {
                double m = cf_tensor_get(n->in[1], poff(n->in[1], b, N, i));
                double ls = cf_tensor_get(n->in[2], poff(n->in[2], b, N, i));
                double z = (v - m) * exp(-ls);
                s += -HALF_LOG_2PI - ls - 0.5 * z * z;
            }
        }
        cf_tensor_set(n->out[0], b, s);
    }
    return CF_OK;
}

static cf_status logp_bwd(cf_node *n)
{
    const cf_tensor *x = n->in[0], *y = n->out[0];
    cf_dtype dt = x->dtype;
    int64_t B = x->shape[0], N = B ? x->numel / B : 0;
    void *dx = cf_node_grad_in(n, 0);
    void *dm = n->n_in == 3 ? cf_node_grad_in(n, 1) : NULL;
    void *dls = n->n_in == 3 ? cf_node_grad_in(n, 2) : NULL;
    for (int64_t b = 0; b < B; b++) {
        double g = cf_buf_get(dt, y->grad, b);
        for (int64_t i = 0; i < N; i++) {
            int64_t k = b * N + i;
            double v = cf_tensor_get(x, k);
            if (n->n_in == 1) {
                if (dx) cf_buf_set(dt, dx, k, cf_buf_get(dt, dx, k) - g * v);
                continue;
            }
            int64_t km = poff(n->in[1], b, N, i), kl = poff(n->in[2], b, N, i);
            double m = cf_tensor_get(n->in[1], km), ls = cf_tensor_get(n->in[2], kl);
            double inv = exp(-ls), z = (v - m) * inv;
            if (dx) cf_buf_set(dt, dx, k, cf_buf_get(dt, dx, k) - g * z * inv);
            if (dm) cf_buf_set(dt, dm, km, cf_buf_get(dt, dm, km) + g * z * inv);
            if (dls) cf_buf_set(dt, dls, kl, cf_buf_get(dt, dls, kl) + g * (z * z - 1.0));
        }
    }
    return cf_ctx_status(n->ctx);
}

static cf_status logp_fwd_f32(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    int64_t B = x->shape[0], N = B ? x->numel / B : 0;
    const float *xv = x->data;
    float *y = n->out[0]->data;
#pragma omp parallel for schedule(static) if (x->numel > CF__PAR_MIN)
    for (int64_t b = 0; b < B; b++) {
        const float *xb = xv + b * N;
        double s = 0;
        if (n->n_in == 1) {
            for (int64_t i = 0; i < N; i++) s += (double)(xb[i] * xb[i]);
            s = -0.5 * s - HALF_LOG_2PI * (double)N;
        } else {
            const float *m = (const float *)n->in[1]->data + (n->in[1]->shape[0] == 1 ? 0 : b * N);
            const float *ls = (const float *)n->in[2]->data + (n->in[2]->shape[0] == 1 ? 0 : b * N);
            for (int64_t i = 0; i < N; i++) {
                float z = (xb[i] - m[i]) * expf(-ls[i]);
                s += (double)(-ls[i] - 0.5f * z * z);
            }
            s -= HALF_LOG_2PI * (double)N;
        }
        y[b] = (float)s;
    }
    return CF_OK;
}

static cf_status logp_bwd_f32(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    int64_t B = x->shape[0], N = B ? x->numel / B : 0;
    const float *xv = x->data, *g = n->out[0]->grad;
    float *dx = cf_node_grad_in(n, 0);
    float *dm = n->n_in == 3 ? cf_node_grad_in(n, 1) : NULL;
    float *dls = n->n_in == 3 ? cf_node_grad_in(n, 2) : NULL;
    bool shared = n->n_in == 3 && (n->in[1]->shape[0] == 1 || n->in[2]->shape[0] == 1);
    /* Batch-shared parameters accumulate across images: keep that serial over the batch. */
#pragma omp parallel for schedule(static) if (x->numel > CF__PAR_MIN && !shared)
    for (int64_t b = 0; b < B; b++) {
        const float *xb = xv + b * N;
        float gb = g[b];
        if (n->n_in == 1) {
            if (dx)
                for (int64_t i = 0; i < N; i++) dx[b * N + i] -= gb * xb[i];
            continue;
        }
        int64_t om = n->in[1]->shape[0] == 1 ? 0 : b * N, ol = n->in[2]->shape[0] == 1 ? 0 : b * N;
        const float *m = (const float *)n->in[1]->data + om, *ls = (const float *)n->in[2]->data + ol;
        for (int64_t i = 0; i < N; i++) {
            float inv = expf(-ls[i]), z = (xb[i] - m[i]) * inv;
            if (dx) dx[b * N + i] -= gb * z * inv;
            if (dm) dm[om + i] += gb * z * inv;
            if (dls) dls[ol + i] += gb * (z * z - 1.0f);
        }
    }
    return cf_ctx_status(n->ctx);
}

static bool logp_case(int index, cf_op_case *c)
{
    if (index >= 3) return false;
    c->n_in = index == 0 ? 1 : 3;
    for (int i = 0; i < c->n_in; i++) {
        c->ndim[i] = 4;
        c->shape[i][0] = (index == 2 && i > 0) ? 1 : 2;
        c->shape[i][1] = 3, c->shape[i][2] = 2, c->shape[i][3] = 4;
        c->lo[i] = -1.5, c->hi[i] = 1.5;
    }
    c->label = index == 0 ? "standard" : index == 1 ? "mean and log-scale" : "batch-shared prior";
    return true;
}

const cf_op_def cf__op_gaussian_logp = {
    .name = "gaussian_logp",
    .n_inputs = CF_OP_VARIADIC,
    .n_outputs = 1,
    .infer = logp_infer,
    .forward = logp_fwd,
    .backward = logp_bwd,
    .fast = {[CF_F32] = {logp_fwd_f32, logp_bwd_f32}},
    .make_case = logp_case,
    .doc = "diagonal Gaussian log-density summed per image",
};

cf_tensor *cf_gaussian_logp_std(cf_ctx *ctx, cf_tensor *x)
{
    return cf_op_apply1(ctx, &cf__op_gaussian_logp, 1, &x, NULL);
}

cf_tensor *cf_gaussian_logp(cf_ctx *ctx, cf_tensor *x, cf_tensor *mean, cf_tensor *logs)
{
    cf_tensor *in[3] = {x, mean, logs};
    return cf_op_apply1(ctx, &cf__op_gaussian_logp, 3, in, NULL);
}
