/* unary.c: element-wise ops of one input: scale, exp, log, sigmoid, log_sigmoid, relu,
 * softplus, tanh.
 *
 * Legend: x input, y output, N elements. Each op is f(x) and its derivative written once as
 * double functions (the reference kernels) and once as float functions (the fast kernels:
 * one specialised loop per op, vectorisable, OpenMP over large tensors). The derivative may use y, which saves
 * recomputing exp in backward.
 */
#include "cf_ops_impl.h"

typedef struct unary_fns {
    double (*f)(double x, double c);
    double (*df)(double x, double y, double c); /* dy/dx */
} unary_fns;

/* ---- the functions ------------------------------------------------------------------- */
/* c is the op's constant (scale's factor; 0 for the others). */

static double scale_f(double x, double c) { return c * x; }
static double scale_df(double x, double y, double c) { (void)x, (void)y; return c; }
static float scale_f32(float x, float c) { return c * x; }
static float scale_df32(float x, float y, float c) { (void)x, (void)y; return c; }

static double exp_f(double x, double c) { (void)c; return exp(x); }
static double exp_df(double x, double y, double c) { (void)x, (void)c; return y; }
static float exp_f32(float x, float c) { (void)c; return expf(x); }
static float exp_df32(float x, float y, float c) { (void)x, (void)c; return y; }

static double log_f(double x, double c) { (void)c; return log(x); }
static double log_df(double x, double y, double c) { (void)y, (void)c; return 1.0 / x; }
static float log_f32(float x, float c) { (void)c; return logf(x); }
static float log_df32(float x, float y, float c) { (void)y, (void)c; return 1.0f / x; }

static double sigmoid_f(double x, double c) { (void)c; return 1.0 / (1.0 + exp(-x)); }
static double sigmoid_df(double x, double y, double c) { (void)x, (void)c; return y * (1.0 - y); }
static float sigmoid_f32(float x, float c) { (void)c; return 1.0f / (1.0f + expf(-x)); }
static float sigmoid_df32(float x, float y, float c) { (void)x, (void)c; return y * (1.0f - y); }

/* log sigmoid(x) = -softplus(-x) = min(x, 0) - log1p(exp(-|x|)); derivative sigmoid(-x). */
static double logsig_f(double x, double c) { (void)c; return fmin(x, 0.0) - log1p(exp(-fabs(x))); }
static double logsig_df(double x, double y, double c) { (void)y, (void)c; return 1.0 / (1.0 + exp(x)); }
static float logsig_f32(float x, float c) { (void)c; return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }
static float logsig_df32(float x, float y, float c) { (void)y, (void)c; return 1.0f / (1.0f + expf(x)); }

static double relu_f(double x, double c) { (void)c; return x > 0 ? x : 0.0; }
static double relu_df(double x, double y, double c) { (void)y, (void)c; return x > 0 ? 1.0 : 0.0; }
static float relu_f32(float x, float c) { (void)c; return x > 0 ? x : 0.0f; }
static float relu_df32(float x, float y, float c) { (void)y, (void)c; return x > 0 ? 1.0f : 0.0f; }

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)); derivative sigmoid(x). */
static double softplus_f(double x, double c) { (void)c; return fmax(x, 0.0) + log1p(exp(-fabs(x))); }
static double softplus_df(double x, double y, double c) { (void)y, (void)c; return 1.0 / (1.0 + exp(-x)); }
static float softplus_f32(float x, float c) { (void)c; return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
static float softplus_df32(float x, float y, float c) { (void)y, (void)c; return 1.0f / (1.0f + expf(-x)); }

static double tanh_f(double x, double c) { (void)c; return tanh(x); }
static double tanh_df(double x, double y, double c) { (void)x, (void)c; return 1.0 - y * y; }
static float tanh_f32(float x, float c) { (void)c; return tanhf(x); }
static float tanh_df32(float x, float y, float c) { (void)x, (void)c; return 1.0f - y * y; }

/* ---- kernels ------------------------------------------------------------------------- */

static double constant_of(const cf_node *n)
{
    return n->op == &cf__op_scale ? CF_ATTRS(n, cf_scale_attrs)->factor : 0.0;
}

static cf_status unary_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                             cf_shape *out)
{
    (void)ctx, (void)attrs, (void)n_in;
    cf_shape_of(&out[0], in[0]);
    return CF_OK;
}

static cf_status unary_forward_ref(cf_node *n, const unary_fns *fn)
{
    double c = constant_of(n);
    for (int64_t i = 0; i < n->in[0]->numel; i++)
        cf_tensor_set(n->out[0], i, fn->f(cf_tensor_get(n->in[0], i), c));
    return CF_OK;
}

static cf_status unary_backward_ref(cf_node *n, const unary_fns *fn)
{
    const cf_tensor *x = n->in[0], *y = n->out[0];
    void *dx = cf_node_grad_in(n, 0);
    if (!dx) return cf_ctx_status(n->ctx);
    double c = constant_of(n);
    for (int64_t i = 0; i < x->numel; i++) {
        double g = cf_buf_get(y->dtype, y->grad, i);
        double d = fn->df(cf_tensor_get(x, i), cf_tensor_get(y, i), c);
        cf_buf_set(x->dtype, dx, i, cf_buf_get(x->dtype, dx, i) + g * d);
    }
    return CF_OK;
}

/* Fast f32 kernels: one loop per op with the function called directly (so it is inlined and the
 * loop vectorised), parallel over large tensors. */
#define UNARY_F32_KERNELS(id, F)                                                               \
    static cf_status id##_fwd_f32(cf_node *n)                                                  \
    {                                                                                          \
        const float *x = n->in[0]->data;                                                       \
        float *y = n->out[0]->data, c = (float)constant_of(n);                                 \
        int64_t N = n->in[0]->numel;                                                           \
        if (N > CF__PAR_MIN) {                                                                 \
            _Pragma("omp parallel for schedule(static)")                                       \
            for (int64_t i = 0; i < N; i++) y[i] = F##_f32(x[i], c);                           \
        } else {                                                                               \
            for (int64_t i = 0; i < N; i++) y[i] = F##_f32(x[i], c);                           \
        }                                                                                      \
        return CF_OK;                                                                          \
    }                                                                                          \
    static cf_status id##_bwd_f32(cf_node *n)                                                  \
    {                                                                                          \
        const float *x = n->in[0]->data, *y = n->out[0]->data, *g = n->out[0]->grad;           \
        float *dx = cf_node_grad_in(n, 0), c = (float)constant_of(n);                          \
        if (!dx) return cf_ctx_status(n->ctx);                                                 \
        int64_t N = n->in[0]->numel;                                                           \
        if (N > CF__PAR_MIN) {                                                                 \
            _Pragma("omp parallel for schedule(static)")                                       \
            for (int64_t i = 0; i < N; i++) dx[i] += g[i] * F##_df32(x[i], y[i], c);           \
        } else {                                                                               \
            for (int64_t i = 0; i < N; i++) dx[i] += g[i] * F##_df32(x[i], y[i], c);           \
        }                                                                                      \
        return CF_OK;                                                                          \
    }

/* Test cases: a 4-D image tensor and a 2-D matrix, in the op's domain. */
static bool unary_case(int index, cf_op_case *c, double lo, double hi)
{
    static const int64_t shapes[][4] = {{2, 3, 4, 5}, {3, 7, 0, 0}};
    static const int ndims[] = {4, 2};
    if (index >= 2) return false;
    c->n_in = 1;
    c->ndim[0] = ndims[index];
    for (int d = 0; d < ndims[index]; d++) c->shape[0][d] = shapes[index][d];
    c->lo[0] = lo, c->hi[0] = hi;
    c->label = index ? "matrix" : "image";
    return true;
}

#define DEFINE_UNARY(id, F, LO, HI, ATTRS, DOC)                                              \
    static const unary_fns id##_fns = {F##_f, F##_df};                                        \
    static cf_status id##_fwd(cf_node *n) { return unary_forward_ref(n, &id##_fns); }      \
    static cf_status id##_bwd(cf_node *n) { return unary_backward_ref(n, &id##_fns); }     \
    UNARY_F32_KERNELS(id, F)                                                                   \
    static bool id##_case(int index, cf_op_case *c)                                          \
    {                                                                                          \
        bool ok = unary_case(index, c, LO, HI);                                                \
        if (ok && ATTRS) ((cf_scale_attrs *)c->attrs)->factor = -1.5;                          \
        return ok;                                                                             \
    }                                                                                          \
    const cf_op_def cf__op_##id = {                                                          \
        .name = #id,                                                                         \
        .n_inputs = 1,                                                                         \
        .n_outputs = 1,                                                                        \
        .attrs_size = ATTRS ? sizeof(cf_scale_attrs) : 0,                                      \
        .infer = unary_infer,                                                                  \
        .forward = id##_fwd,                                                                 \
        .backward = id##_bwd,                                                                \
        .fast = {[CF_F32] = {id##_fwd_f32, id##_bwd_f32}},                                 \
        .make_case = id##_case,                                                              \
        .doc = DOC,                                                                            \
    };

DEFINE_UNARY(scale, scale, -2, 2, 1, "factor * x")
DEFINE_UNARY(exp, exp, -2, 2, 0, "exp(x)")
DEFINE_UNARY(log, log, 0.2, 3, 0, "log(x), x > 0")
DEFINE_UNARY(sigmoid, sigmoid, -4, 4, 0, "1 / (1 + exp(-x))")
DEFINE_UNARY(log_sigmoid, logsig, -6, 6, 0, "log(sigmoid(x)), stable")
DEFINE_UNARY(relu, relu, -2, 2, 0, "max(x, 0)")
DEFINE_UNARY(softplus, softplus, -6, 6, 0, "log(1 + exp(x)), stable")
DEFINE_UNARY(tanh, tanh, -3, 3, 0, "tanh(x)")

cf_tensor *cf_scale(cf_ctx *ctx, cf_tensor *x, double factor)
{
    cf_scale_attrs attrs = {factor};
    return cf_op_apply1(ctx, &cf__op_scale, 1, &x, &attrs);
}

#define DEFINE_UNARY_API(id)                                                                 \
    cf_tensor *cf_##id(cf_ctx *ctx, cf_tensor *x)                                            \
    {                                                                                          \
        return cf_op_apply1(ctx, &cf__op_##id, 1, &x, NULL);                                 \
    }
DEFINE_UNARY_API(exp)
DEFINE_UNARY_API(log)
DEFINE_UNARY_API(sigmoid)
DEFINE_UNARY_API(log_sigmoid)
DEFINE_UNARY_API(relu)
DEFINE_UNARY_API(softplus)
DEFINE_UNARY_API(tanh)
