/* squeeze.c: Glow's squeeze and its inverse, unsqueeze.
 *
 *   squeeze:   (B, H, W, C) -> (B, H/2, W/2, 4C),
 *              y[b][i][j][c*4 + dy*2 + dx] = x[b][2i + dy][2j + dx][c]
 *   unsqueeze: (B, H, W, 4C) -> (B, 2H, 2W, C), the inverse permutation.
 * Both are permutations, so each one's backward is the other's forward added into dx.
 *
 * Not here: any arithmetic; odd sizes are refused (CF_ERR_SHAPE), never cropped.
 *
 * Legend: B batch, H, W, C the squeezed side's input (x of squeeze) sizes; i, j squeezed pixel.
 */
#include "cf_conv_impl.h"

/* The permutation: element (b, i, j, c, oy, ox) (oy, ox the offsets dy, dx) sits at flat index `small` of the squeezed
 * tensor (B, H/2, W/2, 4C) and `big` of the unsqueezed one (B, H, W, C). */
#define SQUEEZE_LOOP(B, H, W, C, BODY)                                                         \
    for (int64_t b = 0; b < (B); b++)                                                          \
        for (int64_t i = 0; i < (H) / 2; i++)                                                  \
            for (int64_t j = 0; j < (W) / 2; j++)                                              \
                for (int64_t c = 0; c < (C); c++)                                              \
                    for (int64_t oy = 0; oy < 2; oy++)                                         \
                        for (int64_t ox = 0; ox < 2; ox++) {                                   \
                            const int64_t small = (((b * ((H) / 2) + i) * ((W) / 2) + j) * 4 * (C)) \
                                                  + c * 4 + oy * 2 + ox;                       \
                            const int64_t big = ((b * (H) + 2 * i + oy) * (W) + 2 * j + ox) * (C) + c; \
                            BODY;                                                              \
                        }

/* Sizes of the unsqueezed side: from x for squeeze, from the output for unsqueeze. */
static void big_dims(const cf_tensor *t, int64_t *B, int64_t *H, int64_t *W, int64_t *C)
{
    *B = t->shape[0], *H = t->shape[1], *W = t->shape[2], *C = t->shape[3];
}

static cf_status squeeze_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                               cf_shape *out)
{
    (void)attrs, (void)n_in;
    const cf_tensor *x = in[0];
    char s[96];
    if (x->ndim != 4)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'squeeze': x %s must be (B, H, W, C)",
                           CF__DESC(x, s));
    if (x->shape[1] % 2 || x->shape[2] % 2)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'squeeze': x %s has an odd %s (%lld); "
                           "squeeze needs even height and width", CF__DESC(x, s),
                           x->shape[1] % 2 ? "height" : "width",
                           (long long)(x->shape[1] % 2 ? x->shape[1] : x->shape[2]));
    out[0].ndim = 4;
    out[0].shape[0] = x->shape[0], out[0].shape[1] = x->shape[1] / 2;
    out[0].shape[2] = x->shape[2] / 2, out[0].shape[3] = x->shape[3] * 4;
    return CF_OK;
}

static cf_status unsqueeze_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                                 cf_shape *out)
{
    (void)attrs, (void)n_in;
    const cf_tensor *x = in[0];
    char s[96];
    if (x->ndim != 4 || x->shape[3] % 4)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'unsqueeze': x %s must be (B, H, W, C) with C "
                           "a multiple of 4", CF__DESC(x, s));
    out[0].ndim = 4;
    out[0].shape[0] = x->shape[0], out[0].shape[1] = x->shape[1] * 2;
    out[0].shape[2] = x->shape[2] * 2, out[0].shape[3] = x->shape[3] / 4;
    return CF_OK;
}

/* ---- reference (every dtype) -------------------------------------------------------------- */

static cf_status squeeze_fwd(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->in[0], &B, &H, &W, &C);
    const cf_tensor *x = n->in[0];
    cf_tensor *y = n->out[0];
    SQUEEZE_LOOP(B, H, W, C, cf_tensor_set(y, small, cf_tensor_get(x, big)))
    return CF_OK;
}

static cf_status squeeze_bwd(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->in[0], &B, &H, &W, &C);
    const cf_dtype dt = n->in[0]->dtype;
    const void *g = n->out[0]->grad;
    void *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    SQUEEZE_LOOP(B, H, W, C, cf_buf_set(dt, dx, big, cf_buf_get(dt, dx, big) + cf_buf_get(dt, g, small)))
    return CF_OK;
}

static cf_status unsqueeze_fwd(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->out[0], &B, &H, &W, &C);
    const cf_tensor *x = n->in[0];
    cf_tensor *y = n->out[0];
    SQUEEZE_LOOP(B, H, W, C, cf_tensor_set(y, big, cf_tensor_get(x, small)))
    return CF_OK;
}

static cf_status unsqueeze_bwd(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->out[0], &B, &H, &W, &C);
    const cf_dtype dt = n->in[0]->dtype;
    const void *g = n->out[0]->grad;
    void *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    SQUEEZE_LOOP(B, H, W, C, cf_buf_set(dt, dx, small, cf_buf_get(dt, dx, small) + cf_buf_get(dt, g, big)))
    return CF_OK;
}

/* ---- fast f32: the same loops on typed pointers, OpenMP over images ---------------------- */

#define SQUEEZE_LOOP_PAR(B, H, W, C, BODY)                                                     \
    _Pragma("omp parallel for schedule(static) if ((B) * (H) * (W) * (C) > CF__PAR_MIN)")      \
    SQUEEZE_LOOP(B, H, W, C, BODY)

static cf_status squeeze_fwd_f32(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->in[0], &B, &H, &W, &C);
    const float *x = n->in[0]->data;
    float *y = n->out[0]->data;
    SQUEEZE_LOOP_PAR(B, H, W, C, y[small] = x[big])
    return CF_OK;
}

static cf_status squeeze_bwd_f32(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->in[0], &B, &H, &W, &C);
    const float *g = n->out[0]->grad;
    float *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    SQUEEZE_LOOP_PAR(B, H, W, C, dx[big] += g[small])
    return CF_OK;
}

static cf_status unsqueeze_fwd_f32(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->out[0], &B, &H, &W, &C);
    const float *x = n->in[0]->data;
    float *y = n->out[0]->data;
    SQUEEZE_LOOP_PAR(B, H, W, C, y[big] = x[small])
    return CF_OK;
}

static cf_status unsqueeze_bwd_f32(cf_node *n)
{
    int64_t B, H, W, C;
    big_dims(n->out[0], &B, &H, &W, &C);
    const float *g = n->out[0]->grad;
    float *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    SQUEEZE_LOOP_PAR(B, H, W, C, dx[small] += g[big])
    return CF_OK;
}

/* ---- cases ------------------------------------------------------------------------------ */

static bool squeeze_case(int index, cf_op_case *c, bool un)
{
    static const int64_t shapes[][4] = {{1, 2, 2, 1}, {2, 4, 6, 3}, {1, 2, 34, 2}};
    static const char *labels[] = {"1 channel, one block", "3 channels", "width 34"};
    if (index < 0 || index >= 3) return false;
    c->n_in = 1;
    c->ndim[0] = 4;
    for (int d = 0; d < 4; d++) c->shape[0][d] = shapes[index][d];
    if (un) { /* the squeezed shape of the same example */
        c->shape[0][1] /= 2, c->shape[0][2] /= 2, c->shape[0][3] *= 4;
    }
    c->lo[0] = -2, c->hi[0] = 2;
    c->label = labels[index];
    return true;
}

static bool squeeze_case_fn(int index, cf_op_case *c) { return squeeze_case(index, c, false); }
static bool unsqueeze_case_fn(int index, cf_op_case *c) { return squeeze_case(index, c, true); }

const cf_op_def cf__op_squeeze = {
    .name = "squeeze",
    .n_inputs = 1,
    .n_outputs = 1,
    .infer = squeeze_infer,
    .forward = squeeze_fwd,
    .backward = squeeze_bwd,
    .fast = {[CF_F32] = {squeeze_fwd_f32, squeeze_bwd_f32}},
    .make_case = squeeze_case_fn,
    .doc = "(B, H, W, C) -> (B, H/2, W/2, 4C), channel c*4 + dy*2 + dx (Glow)",
};

const cf_op_def cf__op_unsqueeze = {
    .name = "unsqueeze",
    .n_inputs = 1,
    .n_outputs = 1,
    .infer = unsqueeze_infer,
    .forward = unsqueeze_fwd,
    .backward = unsqueeze_bwd,
    .fast = {[CF_F32] = {unsqueeze_fwd_f32, unsqueeze_bwd_f32}},
    .make_case = unsqueeze_case_fn,
    .doc = "(B, H, W, 4C) -> (B, 2H, 2W, C), the inverse of squeeze",
};

cf_tensor *cf_squeeze(cf_ctx *ctx, cf_tensor *x)
{
    return cf_op_apply1(ctx, &cf__op_squeeze, 1, &x, NULL);
}

cf_tensor *cf_unsqueeze(cf_ctx *ctx, cf_tensor *x)
{
    return cf_op_apply1(ctx, &cf__op_unsqueeze, 1, &x, NULL);
}
