/* matmul.c: a (..., K) times b (K, N) -> (..., N). Every leading axis of a is a row, so a
 * batch of vectors (B, K) or of pixels (B, H, W, K) times a weight matrix is one GEMM.
 *
 * Legend: M rows of a, K inner, N columns of b. Reference: three plain loops. Fast f32: one
 * OpenBLAS sgemm per product (forward, and two in backward), row-major.
 */
#include <cblas.h>

#include "cf_ops_impl.h"

static cf_status matmul_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                              cf_shape *out)
{
    (void)attrs, (void)n_in;
    const cf_tensor *a = in[0], *b = in[1];
    char s[96], t[96];
    if (a->ndim < 1 || b->ndim != 2 || a->shape[a->ndim - 1] != b->shape[0])
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'matmul': needs a (..., K) and b (K, N), got "
                           "a %s and b %s", CF__DESC(a, s), CF__DESC(b, t));
    cf_shape_of(&out[0], a);
    out[0].shape[a->ndim - 1] = b->shape[1];
    return CF_OK;
}

static void dims(const cf_node *n, int64_t *M, int64_t *K, int64_t *N)
{
    *K = n->in[1]->shape[0];
    *N = n->in[1]->shape[1];
    *M = *K ? n->in[0]->numel / *K : n->out[0]->numel / (*N ? *N : 1);
}

static cf_status matmul_fwd(cf_node *n)
{
    int64_t M, K, N;
    dims(n, &M, &K, &N);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += cf_tensor_get(n->in[0], i * K + k) * cf_tensor_get(n->in[1], k * N + j);
            cf_tensor_set(n->out[0], i * N + j, s);
        }
    return CF_OK;
}

static cf_status matmul_bwd(cf_node *n)
{
    int64_t M, K, N;
    dims(n, &M, &K, &N);
    const cf_tensor *a = n->in[0], *b = n->in[1], *y = n->out[0];
    cf_dtype dt = a->dtype;
    void *da = cf_node_grad_in(n, 0), *db = cf_node_grad_in(n, 1);
    if (da) /* da (M, K) += g (M, N) b^T */
        for (int64_t i = 0; i < M; i++)
            for (int64_t k = 0; k < K; k++) {
                double s = 0;
                for (int64_t j = 0; j < N; j++)
                    s += cf_buf_get(dt, y->grad, i * N + j) * cf_tensor_get(b, k * N + j);
                cf_buf_set(dt, da, i * K + k, cf_buf_get(dt, da, i * K + k) + s);
            }
    if (db) /* db (K, N) += a^T g */
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t i = 0; i < M; i++)
                    s += cf_tensor_get(a, i * K + k) * cf_buf_get(dt, y->grad, i * N + j);
                cf_buf_set(dt, db, k * N + j, cf_buf_get(dt, db, k * N + j) + s);
            }
    return cf_ctx_status(n->ctx);
}

static cf_status matmul_fwd_f32(cf_node *n)
{
    int64_t M, K, N;
    dims(n, &M, &K, &N);
    if (!M || !N) return CF_OK;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f,
                n->in[0]->data, (int)K, n->in[1]->data, (int)N, 0.0f, n->out[0]->data, (int)N);
    return CF_OK;
}

static cf_status matmul_bwd_f32(cf_node *n)
{
    int64_t M, K, N;
    dims(n, &M, &K, &N);
    float *da = cf_node_grad_in(n, 0), *db = cf_node_grad_in(n, 1);
    const float *g = n->out[0]->grad;
    if (!M || !N || !K) return cf_ctx_status(n->ctx);
    if (da)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)K, (int)N, 1.0f, g,
                    (int)N, n->in[1]->data, (int)N, 1.0f, da, (int)K);
    if (db)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)N, (int)M, 1.0f,
                    n->in[0]->data, (int)K, g, (int)N, 1.0f, db, (int)N);
    return cf_ctx_status(n->ctx);
}

static bool matmul_case(int index, cf_op_case *c)
{
    static const int64_t a[][4] = {{5, 3}, {2, 3, 2, 4}, {1, 1}};
    static const int64_t b[][2] = {{3, 4}, {4, 6}, {1, 7}};
    static const int na[] = {2, 4, 2};
    static const char *labels[] = {"matrix", "pixels", "outer"};
    if (index >= 3) return false;
    c->n_in = 2;
    c->ndim[0] = na[index], c->ndim[1] = 2;
    for (int d = 0; d < na[index]; d++) c->shape[0][d] = a[index][d];
    c->shape[1][0] = b[index][0], c->shape[1][1] = b[index][1];
    c->lo[0] = c->lo[1] = -2, c->hi[0] = c->hi[1] = 2;
    c->label = labels[index];
    return true;
}

const cf_op_def cf__op_matmul = {
    .name = "matmul",
    .n_inputs = 2,
    .n_outputs = 1,
    .infer = matmul_infer,
    .forward = matmul_fwd,
    .backward = matmul_bwd,
    .fast = {[CF_F32] = {matmul_fwd_f32, matmul_bwd_f32}},
    .make_case = matmul_case,
    .doc = "a (..., K) times b (K, N)",
};

cf_tensor *cf_matmul(cf_ctx *ctx, cf_tensor *a, cf_tensor *b)
{
    cf_tensor *in[2] = {a, b};
    return cf_op_apply1(ctx, &cf__op_matmul, 2, in, NULL);
}
