/* coupling.c: the fused transforms of affine and quad coupling layers.
 *
 * The input x (B, H, W, C) is cut along channels into blocks x_0 .. x_n (n = 1 for affine
 * coupling, n = 3 for quad coupling). Block k >= 1 is transformed with the output h_k of a
 * coupling network (computed by the layer from the blocks before it, with ordinary ops):
 *
 *   t_k = h_k[..., 0::2], l_k = h_k[..., 1::2], s_k = sigmoid(l_k + 2)   (Glow's convention)
 *   y_0 = x_0,  y_k = (x_k + t_k) * s_k
 *   logdet_b = sum over pixels and channels of every log s_k           (per image, (B))
 *
 * Block sizes come from the shapes: h_k has 2 c_k channels, and x_0 takes the rest. Affine
 * coupling (inputs x, h_1) and quad coupling (inputs x, h_1, h_2, h_3) are the same kernel.
 * This op is the whole coupling on the tape: one node, outputs y and logdet.
 *
 * Gradients, per element of block k with g = dy, e = d(logdet_b):
 *   dx_k = g s,  dt = g s,  dl = (g (x_k + t) s + e) (1 - s),  dx_0 = g
 *
 * Not here: the networks (conv ops), the inverse's sequencing (models/), which needs the
 * networks evaluated on recovered blocks: cf_coupling_inverse_block undoes one block.
 *
 * Legend: B batch, P = B*H*W pixels (rows), C channels of x, c_k channels of block k.
 */
#include <string.h>

#include "cf_ops_impl.h"

static cf_status coupling_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                                cf_shape *out)
{
    (void)attrs;
    const cf_tensor *x = in[0];
    const char *name = n_in == 2 ? "affine_coupling" : "quad_coupling";
    char a[96], b[96];
    if (x->ndim < 2)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op '%s': x %s needs a batch and a channel axis",
                           name, CF__DESC(x, a));
    int64_t C = x->shape[x->ndim - 1], used = 0;
    for (int k = 1; k < n_in; k++) {
        const cf_tensor *h = in[k];
        bool ok = h->ndim == x->ndim && h->shape[h->ndim - 1] % 2 == 0;
        for (int d = 0; ok && d < x->ndim - 1; d++) ok = h->shape[d] == x->shape[d];
        if (!ok)
            return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op '%s': network output %d is %s; it must "
                               "match x %s but for an even channel count", name, k,
                               CF__DESC(h, a), CF__DESC(x, b));
        used += h->shape[h->ndim - 1] / 2;
    }
    if (used >= C)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op '%s': the network outputs transform %lld of "
                           "x's %lld channels, leaving no block to condition on", name,
                           (long long)used, (long long)C);
    cf_shape_of(&out[0], x);
    out[1].ndim = 1;
    out[1].shape[0] = x->shape[0];
    return CF_OK;
}

/* Block geometry: offsets of blocks 1..n in x's channels, and their sizes. */
typedef struct blocks {
    int n;                     /* transformed blocks */
    int64_t C, P, per_image;   /* channels, pixel rows, rows per image */
    int64_t off[CF_MAX_INPUTS], size[CF_MAX_INPUTS];
} blocks;

static void geometry(const cf_node *n, blocks *g)
{
    const cf_tensor *x = n->in[0];
    g->n = n->n_in - 1;
    g->C = x->shape[x->ndim - 1];
    g->P = g->C ? x->numel / g->C : 0;
    g->per_image = x->shape[0] ? g->P / x->shape[0] : 0;
    int64_t used = 0;
    for (int k = 1; k <= g->n; k++) used += n->in[k]->shape[n->in[k]->ndim - 1] / 2;
    int64_t off = g->C - used;
    for (int k = 1; k <= g->n; k++) {
        g->size[k] = n->in[k]->shape[n->in[k]->ndim - 1] / 2;
        g->off[k] = off;
        off += g->size[k];
    }
}

static double sig(double v)
{
    return 1.0 / (1.0 + exp(-v));
}
/* log sigmoid, stable */
static double logsig(double v)
{
    return fmin(v, 0.0) - log1p(exp(-fabs(v)));
}

static cf_status coupling_fwd(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    cf_tensor *y = n->out[0], *ld = n->out[1];
    blocks g;
    geometry(n, &g);
    cf_tensor_copy(y, x); /* block 0 passes through; the others are overwritten */
    for (int64_t b = 0; b < x->shape[0]; b++) cf_tensor_set(ld, b, 0.0);
    for (int64_t p = 0; p < g.P; p++) {
        int64_t b = p / g.per_image;
        double acc = 0;
        for (int k = 1; k <= g.n; k++) {
            const cf_tensor *h = n->in[k];
            for (int64_t j = 0; j < g.size[k]; j++) {
                double t = cf_tensor_get(h, p * 2 * g.size[k] + 2 * j);
                double l = cf_tensor_get(h, p * 2 * g.size[k] + 2 * j + 1) + 2.0;
                int64_t i = p * g.C + g.off[k] + j;
                cf_tensor_set(y, i, (cf_tensor_get(x, i) + t) * sig(l));
                acc += logsig(l);
            }
        }
        cf_tensor_set(ld, b, cf_tensor_get(ld, b) + acc);
    }
    return CF_OK;
}

static cf_status coupling_bwd(cf_node *n)
{
    const cf_tensor *x = n->in[0], *y = n->out[0], *ld = n->out[1];
    cf_dtype dt = x->dtype;
    blocks g;
    geometry(n, &g);
    void *dx = cf_node_grad_in(n, 0);
    void *dh[CF_MAX_INPUTS] = {0};
    for (int k = 1; k <= g.n; k++) dh[k] = cf_node_grad_in(n, k);
    for (int64_t p = 0; p < g.P; p++) {
        double e = cf_buf_get(dt, ld->grad, p / g.per_image);
        int64_t c0 = g.off[1];
        for (int64_t c = 0; dx && c < c0; c++)
            cf_buf_set(dt, dx, p * g.C + c,
                       cf_buf_get(dt, dx, p * g.C + c) + cf_buf_get(dt, y->grad, p * g.C + c));
        for (int k = 1; k <= g.n; k++) {
            const cf_tensor *h = n->in[k];
            for (int64_t j = 0; j < g.size[k]; j++) {
                int64_t it = p * 2 * g.size[k] + 2 * j, i = p * g.C + g.off[k] + j;
                double t = cf_tensor_get(h, it), s = sig(cf_tensor_get(h, it + 1) + 2.0);
                double gy = cf_buf_get(dt, y->grad, i), xv = cf_tensor_get(x, i);
                if (dx) cf_buf_set(dt, dx, i, cf_buf_get(dt, dx, i) + gy * s);
                if (dh[k]) {
                    cf_buf_set(dt, dh[k], it, cf_buf_get(dt, dh[k], it) + gy * s);
                    cf_buf_set(dt, dh[k], it + 1,
                               cf_buf_get(dt, dh[k], it + 1) + (gy * (xv + t) * s + e) * (1 - s));
                }
            }
        }
    }
    return cf_ctx_status(n->ctx);
}

static inline float sigf(float v)
{
    return 1.0f / (1.0f + expf(-v));
}

static cf_status coupling_fwd_f32(cf_node *n)
{
    const float *x = n->in[0]->data;
    float *y = n->out[0]->data, *ld = n->out[1]->data;
    blocks g;
    geometry(n, &g);
    int64_t B = n->in[0]->shape[0];
#pragma omp parallel for schedule(static) if (g.P * g.C > CF__PAR_MIN)
    for (int64_t b = 0; b < B; b++) {
        double acc = 0;
        for (int64_t p = b * g.per_image; p < (b + 1) * g.per_image; p++) {
            const float *xp = x + p * g.C;
            float *yp = y + p * g.C;
            memcpy(yp, xp, (size_t)g.off[1] * sizeof(float));
            float part = 0;
            for (int k = 1; k <= g.n; k++) {
                const float *hp = (const float *)n->in[k]->data + p * 2 * g.size[k];
                for (int64_t j = 0; j < g.size[k]; j++) {
                    float l = hp[2 * j + 1] + 2.0f;
                    float s = sigf(l);
                    yp[g.off[k] + j] = (xp[g.off[k] + j] + hp[2 * j]) * s;
                    /* log sigmoid(l) = min(l, 0) - log1p(exp(-|l|)) */
                    part += fminf(l, 0.0f) - log1pf(expf(-fabsf(l)));
                }
            }
            acc += part;
        }
        ld[b] = (float)acc;
    }
    return CF_OK;
}

static cf_status coupling_bwd_f32(cf_node *n)
{
    const float *x = n->in[0]->data, *gy = n->out[0]->grad, *gld = n->out[1]->grad;
    blocks g;
    geometry(n, &g);
    float *dx = cf_node_grad_in(n, 0);
    float *dh[CF_MAX_INPUTS] = {0};
    for (int k = 1; k <= g.n; k++) dh[k] = cf_node_grad_in(n, k);
#pragma omp parallel for schedule(static) if (g.P * g.C > CF__PAR_MIN)
    for (int64_t p = 0; p < g.P; p++) {
        float e = gld[p / g.per_image];
        const float *xp = x + p * g.C, *gp = gy + p * g.C;
        if (dx)
            for (int64_t c = 0; c < g.off[1]; c++) dx[p * g.C + c] += gp[c];
        for (int k = 1; k <= g.n; k++) {
            const float *hp = (const float *)n->in[k]->data + p * 2 * g.size[k];
            float *dhp = dh[k] ? dh[k] + p * 2 * g.size[k] : NULL;
            for (int64_t j = 0; j < g.size[k]; j++) {
                int64_t c = g.off[k] + j;
                float s = sigf(hp[2 * j + 1] + 2.0f), t = hp[2 * j];
                if (dx) dx[p * g.C + c] += gp[c] * s;
                if (dhp) {
                    dhp[2 * j] += gp[c] * s;
                    dhp[2 * j + 1] += (gp[c] * (xp[c] + t) * s + e) * (1.0f - s);
                }
            }
        }
    }
    return cf_ctx_status(n->ctx);
}

/* Cases: 1x1 images and odd sizes; an odd channel count for affine (blocks 2 and 3). */
static bool coupling_case(int index, cf_op_case *c, int n_blocks)
{
    static const int64_t xs[][4] = {{2, 3, 2, 8}, {1, 1, 1, 4}, {2, 2, 3, 5}};
    int count = n_blocks == 2 ? 3 : 2;
    if (index >= count) return false;
    int64_t C = n_blocks == 2 ? xs[index][3] : 4 * (index + 1);
    c->n_in = n_blocks;
    c->ndim[0] = 4;
    for (int d = 0; d < 3; d++) c->shape[0][d] = xs[index][d];
    c->shape[0][3] = C;
    c->lo[0] = -2, c->hi[0] = 2;
    for (int k = 1; k < n_blocks; k++) {
        c->ndim[k] = 4;
        for (int d = 0; d < 3; d++) c->shape[k][d] = xs[index][d];
        c->shape[k][3] = n_blocks == 2 ? 2 * (C - C / 2) : 2 * (C / 4);
        c->lo[k] = -2.5, c->hi[k] = 1.5;
    }
    c->label = index == 0 ? "image" : index == 1 ? "one pixel" : "odd shape";
    return true;
}

static bool affine_case(int index, cf_op_case *c)
{
    return coupling_case(index, c, 2);
}
static bool quad_case(int index, cf_op_case *c)
{
    return coupling_case(index, c, 4);
}

const cf_op_def cf__op_affine_coupling = {
    .name = "affine_coupling",
    .n_inputs = 2,
    .n_outputs = 2,
    .infer = coupling_infer,
    .forward = coupling_fwd,
    .backward = coupling_bwd,
    .fast = {[CF_F32] = {coupling_fwd_f32, coupling_bwd_f32}},
    .make_case = affine_case,
    .doc = "y = [x_a, (x_b + t) * sigmoid(l + 2)] and per-image log-det, (t, l) from h",
};

const cf_op_def cf__op_quad_coupling = {
    .name = "quad_coupling",
    .n_inputs = 4,
    .n_outputs = 2,
    .infer = coupling_infer,
    .forward = coupling_fwd,
    .backward = coupling_bwd,
    .fast = {[CF_F32] = {coupling_fwd_f32, coupling_bwd_f32}},
    .make_case = quad_case,
    .doc = "four-block coupling: y_k = (x_k + t_k) * sigmoid(l_k + 2), k = 2..4, and log-det",
};

cf_status cf_affine_coupling(cf_ctx *ctx, cf_tensor *x, cf_tensor *h, cf_tensor **y,
                             cf_tensor **logdet)
{
    cf_tensor *in[2] = {x, h}, *out[2];
    cf_status st = cf_op_apply(ctx, &cf__op_affine_coupling, 2, in, NULL, out);
    *y = out[0];
    *logdet = out[1];
    return st;
}

cf_status cf_quad_coupling(cf_ctx *ctx, cf_tensor *x, cf_tensor *h1, cf_tensor *h2,
                           cf_tensor *h3, cf_tensor **y, cf_tensor **logdet)
{
    cf_tensor *in[4] = {x, h1, h2, h3}, *out[2];
    cf_status st = cf_op_apply(ctx, &cf__op_quad_coupling, 4, in, NULL, out);
    *y = out[0];
    *logdet = out[1];
    return st;
}

void cf_coupling_inverse_block(cf_tensor *x, const cf_tensor *y, const cf_tensor *h,
                               int64_t offset)
{
    int64_t C = y->shape[y->ndim - 1], c = h->shape[h->ndim - 1] / 2;
    int64_t P = C ? y->numel / C : 0;
    CF_ASSERT(cf_tensor_same_shape(x, y) && x->dtype == y->dtype && h->dtype == y->dtype,
              "cf_coupling_inverse_block: x and y must match");
    CF_ASSERT(offset >= 0 && offset + c <= C && h->numel == P * 2 * c,
              "cf_coupling_inverse_block: block at channel %lld of %lld channels does not fit h",
              (long long)offset, (long long)C);
    if (y->dtype == CF_F32) {
        const float *yv = y->data, *hv = h->data;
        float *xv = x->data;
#pragma omp parallel for schedule(static) if (P * c > CF__PAR_MIN)
        for (int64_t p = 0; p < P; p++)
            for (int64_t j = 0; j < c; j++) {
                float s = sigf(hv[p * 2 * c + 2 * j + 1] + 2.0f);
                xv[p * C + offset + j] = yv[p * C + offset + j] / s - hv[p * 2 * c + 2 * j];
            }
        return;
    }
    for (int64_t p = 0; p < P; p++)
        for (int64_t j = 0; j < c; j++) {
            double s = sig(cf_tensor_get(h, p * 2 * c + 2 * j + 1) + 2.0);
            int64_t i = p * C + offset + j;
            cf_tensor_set(x, i, cf_tensor_get(y, i) / s - cf_tensor_get(h, p * 2 * c + 2 * j));
        }
}
