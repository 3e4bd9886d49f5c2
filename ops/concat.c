/* concat.c: joins tensors along the last (channel) axis.
 *
 * Legend: R rows (product of all axes but the last), C_i channels of input i, C their sum.
 * Row r of the output is row r of each input, one after the other.
 */
#include <string.h>

#include "cf_ops_impl.h"

static cf_status concat_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                              cf_shape *out)
{
    (void)attrs;
    const cf_tensor *x0 = in[0];
    if (x0->ndim < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'concat': inputs need at least one axis");
    cf_shape_of(&out[0], x0);
    int last = x0->ndim - 1;
    out[0].shape[last] = 0;
    for (int i = 0; i < n_in; i++) {
        bool ok = in[i]->ndim == x0->ndim;
        for (int d = 0; ok && d < last; d++) ok = in[i]->shape[d] == x0->shape[d];
        if (!ok) {
            char a[96], b[96];
            return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'concat': input %d is %s but input 0 is "
                               "%s; all axes but the last must match", i, CF__DESC(in[i], a),
                               CF__DESC(x0, b));
        }
        out[0].shape[last] += in[i]->shape[last];
    }
    return CF_OK;
}

static void rows(const cf_node *n, int64_t *R, int64_t *C)
{
    const cf_tensor *y = n->out[0];
    *C = y->shape[y->ndim - 1];
    *R = *C ? y->numel / *C : 0;
}

static cf_status concat_fwd(cf_node *n)
{
    int64_t R, C;
    rows(n, &R, &C);
    size_t es = cf_dtype_size(n->out[0]->dtype);
    char *y = n->out[0]->data;
    for (int64_t r = 0; r < R; r++) {
        int64_t off = 0;
        for (int i = 0; i < n->n_in; i++) {
            int64_t Ci = n->in[i]->shape[n->in[i]->ndim - 1];
            memcpy(y + (size_t)(r * C + off) * es, (char *)n->in[i]->data + (size_t)(r * Ci) * es,
                   (size_t)Ci * es);
            off += Ci;
        }
    }
    return CF_OK;
}

static cf_status concat_bwd(cf_node *n)
{
    int64_t R, C;
    rows(n, &R, &C);
    const cf_tensor *y = n->out[0];
    int64_t off = 0;
    for (int i = 0; i < n->n_in; i++) {
        int64_t Ci = n->in[i]->shape[n->in[i]->ndim - 1];
        void *dx = cf_node_grad_in(n, i);
        if (dx)
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = 0; c < Ci; c++) {
                    int64_t k = r * Ci + c;
                    cf_buf_set(y->dtype, dx, k, cf_buf_get(y->dtype, dx, k) +
                                                    cf_buf_get(y->dtype, y->grad, r * C + off + c));
                }
        off += Ci;
    }
    return cf_ctx_status(n->ctx);
}

static bool concat_case(int index, cf_op_case *c)
{
    if (index >= 2) return false;
    c->n_in = index == 0 ? 2 : 3;
    for (int i = 0; i < c->n_in; i++) {
        c->ndim[i] = 4;
        c->shape[i][0] = 2, c->shape[i][1] = 3, c->shape[i][2] = 2, c->shape[i][3] = 1 + i;
        c->lo[i] = -2, c->hi[i] = 2;
    }
    c->label = index == 0 ? "two blocks" : "three blocks";
    return true;
}

const cf_op_def cf__op_concat = {
    .name = "concat",
    .n_inputs = CF_OP_VARIADIC,
    .n_outputs = 1,
    .infer = concat_infer,
    .forward = concat_fwd,
    .backward = concat_bwd,
    .make_case = concat_case,
    .doc = "joins inputs along the last axis",
};

cf_tensor *cf_concat(cf_ctx *ctx, int n, cf_tensor *const *xs)
{
    return cf_op_apply1(ctx, &cf__op_concat, n, xs, NULL);
}
