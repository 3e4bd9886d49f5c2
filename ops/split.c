/* split.c: splits a tensor along its last (channel) axis into parts of given sizes.
 *
 * Legend: R rows (product of all axes but the last), C channels, C_i channels of part i.
 */
#include <string.h>

#include "cf_ops_impl.h"

static int split_count(const void *attrs, int n_in)
{
    (void)n_in;
    return ((const cf_split_attrs *)attrs)->n;
}

static cf_status split_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                             cf_shape *out)
{
    (void)n_in;
    const cf_split_attrs *a = attrs;
    const cf_tensor *x = in[0];
    char s[96];
    if (x->ndim < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'split': input %s has no axis to split",
                           CF__DESC(x, s));
    int64_t total = 0;
    for (int i = 0; i < a->n; i++) {
        if (a->sizes[i] < 0)
            return cf_ctx_fail(ctx, CF_ERR_ARG, "op 'split': part %d has size %lld", i,
                               (long long)a->sizes[i]);
        cf_shape_of(&out[i], x);
        out[i].shape[x->ndim - 1] = a->sizes[i];
        total += a->sizes[i];
    }
    if (total != x->shape[x->ndim - 1])
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'split': the parts add up to %lld channels "
                           "but the input %s has %lld", (long long)total, CF__DESC(x, s),
                           (long long)x->shape[x->ndim - 1]);
    return CF_OK;
}

static cf_status split_fwd(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    int64_t C = x->shape[x->ndim - 1], R = C ? x->numel / C : 0;
    size_t es = cf_dtype_size(x->dtype);
    for (int64_t r = 0; r < R; r++) {
        int64_t off = 0;
        for (int i = 0; i < n->n_out; i++) {
            int64_t Ci = n->out[i]->shape[x->ndim - 1];
            memcpy((char *)n->out[i]->data + (size_t)(r * Ci) * es,
                   (const char *)x->data + (size_t)(r * C + off) * es, (size_t)Ci * es);
            off += Ci;
        }
    }
    return CF_OK;
}

static cf_status split_bwd(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    int64_t C = x->shape[x->ndim - 1], R = C ? x->numel / C : 0;
    void *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    for (int64_t r = 0; r < R; r++) {
        int64_t off = 0;
        for (int i = 0; i < n->n_out; i++) {
            int64_t Ci = n->out[i]->shape[x->ndim - 1];
            for (int64_t c = 0; c < Ci; c++) {
                int64_t k = r * C + off + c;
                cf_buf_set(x->dtype, dx, k, cf_buf_get(x->dtype, dx, k) +
                                                cf_buf_get(x->dtype, n->out[i]->grad, r * Ci + c));
            }
            off += Ci;
        }
    }
    return CF_OK;
}

/* Fast f32: the same copies as float loops over rows (a part is often 1 to 3 channels, where
 * a memcpy call per row costs more than the copy), threaded over rows when large; the
 * backward writes dx when it is the first to (no zeroing pass). */
static cf_status split_fwd_f32(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    const int64_t C = x->shape[x->ndim - 1], R = C ? x->numel / C : 0;
    const float *xv = x->data;
    int64_t off = 0;
    for (int i = 0; i < n->n_out; i++) {
        const int64_t Ci = n->out[i]->shape[x->ndim - 1];
        float *o = n->out[i]->data;
#pragma omp parallel for schedule(static) if (R * Ci > CF__PAR_MIN)
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < Ci; c++) o[r * Ci + c] = xv[r * C + off + c];
        off += Ci;
    }
    return CF_OK;
}

static cf_status split_bwd_f32(cf_node *n)
{
    const cf_tensor *x = n->in[0];
    const int64_t C = x->shape[x->ndim - 1], R = C ? x->numel / C : 0;
    bool fresh;
    float *dx = cf_node_grad_in_ex(n, 0, &fresh);
    if (!dx) return cf_ctx_status(n->ctx);
    int64_t off = 0;
    for (int i = 0; i < n->n_out; i++) {
        const int64_t Ci = n->out[i]->shape[x->ndim - 1];
        const float *g = n->out[i]->grad;
#pragma omp parallel for schedule(static) if (R * Ci > CF__PAR_MIN)
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < Ci; c++)
                dx[r * C + off + c] = (fresh ? 0.0f : dx[r * C + off + c]) + g[r * Ci + c];
        off += Ci;
    }
    return CF_OK;
}

static bool split_case(int index, cf_op_case *c)
{
    if (index >= 2) return false;
    cf_split_attrs *a = (cf_split_attrs *)c->attrs;
    c->n_in = 1;
    c->ndim[0] = 4;
    c->shape[0][0] = 2, c->shape[0][1] = 3, c->shape[0][2] = 2, c->shape[0][3] = 8;
    c->lo[0] = -2, c->hi[0] = 2;
    if (index == 0) {
        a->n = 2, a->sizes[0] = 4, a->sizes[1] = 4;
        c->label = "halves";
    } else {
        a->n = 3, a->sizes[0] = 2, a->sizes[1] = 5, a->sizes[2] = 1;
        c->label = "uneven thirds";
    }
    return true;
}

const cf_op_def cf__op_split = {
    .name = "split",
    .n_inputs = 1,
    .n_outputs = CF_OP_VARIADIC,
    .count_outputs = split_count,
    .attrs_size = sizeof(cf_split_attrs),
    .infer = split_infer,
    .forward = split_fwd,
    .backward = split_bwd,
    .fast = {[CF_F32] = {split_fwd_f32, split_bwd_f32}},
    .make_case = split_case,
    .doc = "splits along the last axis into parts of given sizes",
};

cf_status cf_split(cf_ctx *ctx, cf_tensor *x, int n, const int64_t *sizes, cf_tensor **out)
{
    CF_ASSERT(n >= 1 && n <= CF_MAX_OUTPUTS, "cf_split into %d parts (1 to %d)", n,
              CF_MAX_OUTPUTS);
    cf_split_attrs a = {.n = n};
    for (int i = 0; i < n; i++) a.sizes[i] = sizes[i];
    return cf_op_apply(ctx, &cf__op_split, 1, &x, &a, out);
}
