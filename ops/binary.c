/* binary.c: add, sub, mul, div with numpy broadcasting.
 *
 * Legend: out (shape of the broadcast), a and b (any shapes that broadcast to it). Backward
 * sums the output gradient over the axes an input was stretched along.
 *
 * The fast f32 kernels cover the shapes a flow uses: equal shapes (one flat loop) and a
 * trailing-axis operand such as a per-channel bias or scale (b of C elements repeating every C
 * outputs, or the same for a); other broadcasts take the reference loops.
 */
#include "cf_ops_impl.h"

#include <string.h>

typedef enum binop { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV } binop;

bool cf__bcast_init(cf__bcast *bc, cf_ctx *ctx, const char *op_name, const cf_tensor *a,
                    const cf_tensor *b)
{
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    bc->out_ndim = n;
    int64_t as[CF_MAX_DIMS], bs[CF_MAX_DIMS];
    /* Right-align both shapes on 4 axes. */
    for (int d = 0; d < CF_MAX_DIMS; d++) {
        int da = d - (CF_MAX_DIMS - a->ndim), db = d - (CF_MAX_DIMS - b->ndim);
        as[d] = da >= 0 ? a->shape[da] : 1;
        bs[d] = db >= 0 ? b->shape[db] : 1;
    }
    int64_t sa = 1, sb = 1;
    for (int d = CF_MAX_DIMS - 1; d >= 0; d--) {
        if (as[d] != bs[d] && as[d] != 1 && bs[d] != 1) {
            char x[96], y[96];
            cf_ctx_fail(ctx, CF_ERR_SHAPE, "op '%s': shapes %s and %s do not broadcast (axis %d "
                                           "from the right: %lld vs %lld)", op_name,
                        CF__DESC(a, x), CF__DESC(b, y), CF_MAX_DIMS - d, (long long)as[d],
                        (long long)bs[d]);
            return false;
        }
        bc->shape[d] = as[d] > bs[d] ? as[d] : bs[d];
        if (as[d] == 0 || bs[d] == 0) bc->shape[d] = 0;
        bc->astride[d] = as[d] == 1 ? 0 : sa;
        bc->bstride[d] = bs[d] == 1 ? 0 : sb;
        sa *= as[d];
        sb *= bs[d];
    }
    return true;
}

static cf_status binary_infer(cf_ctx *ctx, const char *name, cf_tensor *const *in, cf_shape *out)
{
    cf__bcast bc;
    if (!cf__bcast_init(&bc, ctx, name, in[0], in[1])) return cf_ctx_status(ctx);
    out[0].ndim = bc.out_ndim;
    for (int d = 0; d < bc.out_ndim; d++) out[0].shape[d] = bc.shape[CF_MAX_DIMS - bc.out_ndim + d];
    return CF_OK;
}

static double apply(binop op, double a, double b)
{
    switch (op) {
    case BIN_ADD: return a + b;
    case BIN_SUB: return a - b;
    case BIN_MUL: return a * b;
    case BIN_DIV: return a / b;
    }
    return 0;
}

/* Reference forward: obvious loops over the 4-D output. */
static cf_status binary_forward_ref(cf_node *n, binop op)
{
    const cf_tensor *a = n->in[0], *b = n->in[1];
    cf_tensor *out = n->out[0];
    cf__bcast bc;
    cf__bcast_init(&bc, n->ctx, n->op->name, a, b);
    int64_t k = 0;
    for (int64_t i0 = 0; i0 < bc.shape[0]; i0++)
        for (int64_t i1 = 0; i1 < bc.shape[1]; i1++)
            for (int64_t i2 = 0; i2 < bc.shape[2]; i2++)
                for (int64_t i3 = 0; i3 < bc.shape[3]; i3++, k++) {
                    double x = cf_tensor_get(a, cf__bc_a(&bc, i0, i1, i2, i3));
                    double y = cf_tensor_get(b, cf__bc_b(&bc, i0, i1, i2, i3));
                    cf_tensor_set(out, k, apply(op, x, y));
                }
    return CF_OK;
}

/* Reference backward: da[ia] += dout * d(out)/da, db[ib] += dout * d(out)/db. */
static cf_status binary_backward_ref(cf_node *n, binop op)
{
    const cf_tensor *a = n->in[0], *b = n->in[1], *out = n->out[0];
    void *da = cf_node_grad_in(n, 0), *db = cf_node_grad_in(n, 1);
    cf_dtype dt = a->dtype;
    cf__bcast bc;
    cf__bcast_init(&bc, n->ctx, n->op->name, a, b);
    int64_t k = 0;
    for (int64_t i0 = 0; i0 < bc.shape[0]; i0++)
        for (int64_t i1 = 0; i1 < bc.shape[1]; i1++)
            for (int64_t i2 = 0; i2 < bc.shape[2]; i2++)
                for (int64_t i3 = 0; i3 < bc.shape[3]; i3++, k++) {
                    int64_t ia = cf__bc_a(&bc, i0, i1, i2, i3), ib = cf__bc_b(&bc, i0, i1, i2, i3);
                    double g = cf_buf_get(dt, out->grad, k);
                    double x = cf_tensor_get(a, ia), y = cf_tensor_get(b, ib);
                    double ga, gb;
                    switch (op) {
                    case BIN_ADD: ga = g, gb = g; break;
                    case BIN_SUB: ga = g, gb = -g; break;
                    case BIN_MUL: ga = g * y, gb = g * x; break;
                    default: ga = g / y, gb = -g * x / (y * y); break;
                    }
                    if (da) cf_buf_set(dt, da, ia, cf_buf_get(dt, da, ia) + ga);
                    if (db) cf_buf_set(dt, db, ib, cf_buf_get(dt, db, ib) + gb);
                }
    return CF_OK;
}

/* Fast-path geometry: how many elements of the other operand repeat (inner) over the flat
 * output. Returns 0 when the broadcast is not "equal" or "trailing block repeated". */
static int64_t trailing_period(const cf_tensor *big, const cf_tensor *small)
{
    if (small->numel == big->numel) return cf_tensor_same_shape(big, small) ? big->numel : 0;
    /* small must equal big's trailing axes, preceded only by size-1 axes. */
    int64_t inner = 1;
    int db = big->ndim - 1, ds = small->ndim - 1;
    for (; ds >= 0 && small->shape[ds] != 1; ds--, db--) {
        if (db < 0 || small->shape[ds] != big->shape[db]) return 0;
        inner *= small->shape[ds];
    }
    for (; ds >= 0; ds--)
        if (small->shape[ds] != 1) return 0;
    return inner == small->numel ? inner : 0;
}

/* Fast-path eligibility: one operand has the output's size, the other is equal or repeats a
 * trailing block of P elements. Returns P, or 0 for the reference path. */
static int64_t fast_period(const cf_tensor *a, const cf_tensor *b, const cf_tensor *out)
{
    if (a->numel == out->numel) return trailing_period(a, b);
    if (b->numel == out->numel) return trailing_period(b, a);
    return 0;
}

static cf_status binary_forward_f32(cf_node *n, binop op)
{
    const cf_tensor *a = n->in[0], *b = n->in[1];
    cf_tensor *out = n->out[0];
    int64_t N = out->numel, P = fast_period(a, b, out);
    if (!P) return binary_forward_ref(n, op);
    bool a_full = a->numel == N, b_full = b->numel == N;
    const float *x = a->data, *y = b->data;
    float *z = out->data;
#pragma omp parallel for schedule(static) if (N > CF__PAR_MIN)
    for (int64_t r = 0; r < N / P; r++) {
        const float *xr = x + (a_full ? r * P : 0), *yr = y + (b_full ? r * P : 0);
        float *zr = z + r * P;
        switch (op) {
        case BIN_ADD: for (int64_t i = 0; i < P; i++) zr[i] = xr[i] + yr[i]; break;
        case BIN_SUB: for (int64_t i = 0; i < P; i++) zr[i] = xr[i] - yr[i]; break;
        case BIN_MUL: for (int64_t i = 0; i < P; i++) zr[i] = xr[i] * yr[i]; break;
        case BIN_DIV: for (int64_t i = 0; i < P; i++) zr[i] = xr[i] / yr[i]; break;
        }
    }
    return CF_OK;
}

static cf_status binary_backward_f32(cf_node *n, binop op)
{
    const cf_tensor *a = n->in[0], *b = n->in[1], *out = n->out[0];
    int64_t N = out->numel, P = fast_period(a, b, out);
    if (!P) return binary_backward_ref(n, op);
    float *da = cf_node_grad_in(n, 0), *db = cf_node_grad_in(n, 1);
    const float *x = a->data, *y = b->data, *g = out->grad;
    int64_t R = N / P;
    bool a_full = a->numel == N, b_full = b->numel == N;
    /* Full-size gradients: element-wise, parallel over rows. */
#pragma omp parallel for schedule(static) if (N > CF__PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *gr = g + r * P, *xr = x + (a_full ? r * P : 0), *yr = y + (b_full ? r * P : 0);
        if (da && a_full) {
            float *d = da + r * P;
            switch (op) {
            case BIN_ADD: case BIN_SUB: for (int64_t i = 0; i < P; i++) d[i] += gr[i]; break;
            case BIN_MUL: for (int64_t i = 0; i < P; i++) d[i] += gr[i] * yr[i]; break;
            case BIN_DIV: for (int64_t i = 0; i < P; i++) d[i] += gr[i] / yr[i]; break;
            }
        }
        if (db && b_full) {
            float *d = db + r * P;
            switch (op) {
            case BIN_ADD: for (int64_t i = 0; i < P; i++) d[i] += gr[i]; break;
            case BIN_SUB: for (int64_t i = 0; i < P; i++) d[i] -= gr[i]; break;
            case BIN_MUL: for (int64_t i = 0; i < P; i++) d[i] += gr[i] * xr[i]; break;
            case BIN_DIV: for (int64_t i = 0; i < P; i++) d[i] -= gr[i] * xr[i] / (yr[i] * yr[i]); break;
            }
        }
    }
    /* The repeated operand's gradient: a sum over rows, serial in rows for a fixed order. */
    float *dsmall = a_full ? (b_full ? NULL : db) : da;
    if (dsmall) {
        for (int64_t r = 0; r < R; r++) {
            const float *gr = g + r * P, *xr = x + (a_full ? r * P : 0), *yr = y + (b_full ? r * P : 0);
            switch (op) {
            case BIN_ADD: for (int64_t i = 0; i < P; i++) dsmall[i] += gr[i]; break;
            case BIN_SUB:
                if (a_full) for (int64_t i = 0; i < P; i++) dsmall[i] -= gr[i];
                else for (int64_t i = 0; i < P; i++) dsmall[i] += gr[i];
                break;
            case BIN_MUL:
                if (a_full) for (int64_t i = 0; i < P; i++) dsmall[i] += gr[i] * xr[i];
                else for (int64_t i = 0; i < P; i++) dsmall[i] += gr[i] * yr[i];
                break;
            case BIN_DIV:
                if (a_full) for (int64_t i = 0; i < P; i++) dsmall[i] -= gr[i] * xr[i] / (yr[i] * yr[i]);
                else for (int64_t i = 0; i < P; i++) dsmall[i] += gr[i] / yr[i];
                break;
            }
        }
    }
    return CF_OK;
}

/* Test cases: equal shapes, a per-channel operand, a batch-shared operand. */
static bool binary_case(int index, cf_op_case *c, double blo, double bhi)
{
    static const int64_t shapes[][2][4] = {
        {{2, 3, 4, 5}, {2, 3, 4, 5}}, /* equal */
        {{2, 3, 4, 5}, {5, 0, 0, 0}}, /* per-channel, (C) */
        {{2, 3, 4, 5}, {1, 1, 1, 5}}, /* per-channel, (1, 1, 1, C) */
        {{1, 3, 4, 5}, {2, 3, 4, 5}}, /* a shared across the batch */
        {{2, 3, 1, 5}, {1, 3, 4, 1}}, /* both stretched */
    };
    static const int ndims[][2] = {{4, 4}, {4, 1}, {4, 4}, {4, 4}, {4, 4}};
    static const char *labels[] = {"equal", "per-channel (C)", "per-channel (1,1,1,C)",
                                   "batch-shared a", "both broadcast"};
    if (index >= 5) return false;
    c->n_in = 2;
    for (int i = 0; i < 2; i++) {
        c->ndim[i] = ndims[index][i];
        for (int d = 0; d < c->ndim[i]; d++) c->shape[i][d] = shapes[index][i][d];
    }
    c->lo[0] = -2, c->hi[0] = 2;
    c->lo[1] = blo, c->hi[1] = bhi;
    c->label = labels[index];
    return true;
}

#define DEFINE_BINARY(id, OP, BLO, BHI, DOC)                                                 \
    static cf_status id##_infer(cf_ctx *ctx, const void *attrs, int n_in,                    \
                                  cf_tensor *const *in, cf_shape *out)                         \
    {                                                                                          \
        (void)attrs, (void)n_in;                                                               \
        return binary_infer(ctx, #id, in, out);                                              \
    }                                                                                          \
    static cf_status id##_fwd(cf_node *n) { return binary_forward_ref(n, OP); }              \
    static cf_status id##_bwd(cf_node *n) { return binary_backward_ref(n, OP); }             \
    static cf_status id##_fwd_f32(cf_node *n) { return binary_forward_f32(n, OP); }          \
    static cf_status id##_bwd_f32(cf_node *n) { return binary_backward_f32(n, OP); }         \
    static bool id##_case(int index, cf_op_case *c) { return binary_case(index, c, BLO, BHI); } \
    const cf_op_def cf__op_##id = {                                                          \
        .name = #id,                                                                         \
        .n_inputs = 2,                                                                         \
        .n_outputs = 1,                                                                        \
        .infer = id##_infer,                                                                 \
        .forward = id##_fwd,                                                                 \
        .backward = id##_bwd,                                                                \
        .fast = {[CF_F32] = {id##_fwd_f32, id##_bwd_f32}},                                 \
        .make_case = id##_case,                                                              \
        .doc = DOC,                                                                            \
    };                                                                                         \
    cf_tensor *cf_##id(cf_ctx *ctx, cf_tensor *a, cf_tensor *b)                              \
    {                                                                                          \
        cf_tensor *in[2] = {a, b};                                                             \
        return cf_op_apply1(ctx, &cf__op_##id, 2, in, NULL);                                 \
    }

DEFINE_BINARY(add, BIN_ADD, -2, 2, "a + b, broadcasting")
DEFINE_BINARY(sub, BIN_SUB, -2, 2, "a - b, broadcasting")
DEFINE_BINARY(mul, BIN_MUL, -2, 2, "a * b, broadcasting")
DEFINE_BINARY(div, BIN_DIV, 0.5, 2, "a / b, broadcasting")
