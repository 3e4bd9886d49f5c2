/* check.c: the flow checker (see cf_check.h for what it checks and the tolerances).
 *
 * It knows layers only through their public base (cf_layer: shapes, the parameter and state
 * walks, factors_out) and cf_layer_forward / cf_layer_inverse, so any layer kind written
 * against cf_flow.h is checked the same way as the built-in ones. The gradients go through
 * cf_gradcheck_graph; the log|det| of the dense Jacobian comes from a small LU with partial
 * pivoting written here (f64; the library has no dense linear algebra of its own, and the
 * matrices are at most max_dense square).
 *
 * Not here: building layers, f32 (refused), the fast kernels (held to the reference ones by the
 * op tests and `cincflow gradcheck`).
 *
 * Dimension legend: B images, D elements per image (input), N elements of a tensor.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_check.h"
#include "cf_gradcheck.h"

const char *cf_check_name(unsigned check)
{
    switch (check) {
    case CF_CHECK_SHAPE: return "shape";
    case CF_CHECK_FINITE: return "finite";
    case CF_CHECK_ROUNDTRIP: return "roundtrip";
    case CF_CHECK_LOGDET: return "logdet";
    case CF_CHECK_GRAD: return "grad";
    }
    return "?";
}

/* ---- saving and restoring the layer -------------------------------------------------------- */

/* Copies of every parameter's data and gradient and every state tensor's data. */
typedef struct saved_layer {
    double *params, *grads, *state; /* concatenated, in walk order */
} saved_layer;

static int64_t walk_numel(cf_tensor *const *ts, int n)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += ts[i]->numel;
    return total;
}

static bool save_layer(const cf_layer *l, saved_layer *s)
{
    int64_t np = walk_numel(l->params, l->n_params), ns = walk_numel(l->state, l->n_state);
    s->params = malloc((size_t)(np + 1) * sizeof(double));
    s->grads = malloc((size_t)(np + 1) * sizeof(double));
    s->state = malloc((size_t)(ns + 1) * sizeof(double));
    if (!s->params || !s->grads || !s->state) return false;
    int64_t k = 0;
    for (int i = 0; i < l->n_params; i++) {
        const cf_tensor *p = l->params[i];
        for (int64_t e = 0; e < p->numel; e++, k++) {
            s->params[k] = cf_tensor_get(p, e);
            s->grads[k] = p->grad ? cf_buf_get(p->dtype, p->grad, e) : 0.0;
        }
    }
    k = 0;
    for (int i = 0; i < l->n_state; i++)
        for (int64_t e = 0; e < l->state[i]->numel; e++)
            s->state[k++] = cf_tensor_get(l->state[i], e);
    return true;
}

static void restore_layer(cf_layer *l, const saved_layer *s)
{
    int64_t k = 0;
    for (int i = 0; i < l->n_params; i++) {
        cf_tensor *p = l->params[i];
        for (int64_t e = 0; e < p->numel; e++, k++) {
            cf_tensor_set(p, e, s->params[k]);
            if (p->grad) cf_buf_set(p->dtype, p->grad, e, s->grads[k]);
        }
    }
    k = 0;
    for (int i = 0; i < l->n_state; i++)
        for (int64_t e = 0; e < l->state[i]->numel; e++)
            cf_tensor_set(l->state[i], e, s->state[k++]);
}

static void saved_free(saved_layer *s)
{
    free(s->params);
    free(s->grads);
    free(s->state);
}

/* ---- helpers ------------------------------------------------------------------------------- */

/* Appends "check: message" to the result and marks the check failed. */
static void fail(cf_check_result *r, unsigned check, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void vappend(cf_check_result *r, unsigned check, const char *fmt, va_list ap)
{
    size_t used = strlen(r->message);
    if (used + 8 >= sizeof r->message) return;
    int n = snprintf(r->message + used, sizeof r->message - used, "%s%s: ", used ? "; " : "",
                     cf_check_name(check));
    if (n < 0) return;
    used += (size_t)n;
    if (used >= sizeof r->message) return;
    vsnprintf(r->message + used, sizeof r->message - used, fmt, ap);
}

static void fail(cf_check_result *r, unsigned check, const char *fmt, ...)
{
    r->failed |= check;
    va_list ap;
    va_start(ap, fmt);
    vappend(r, check, fmt, ap);
    va_end(ap);
}

/* The same for a check that could not run: marked skipped, and why. */
static void skip(cf_check_result *r, unsigned check, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void skip(cf_check_result *r, unsigned check, const char *fmt, ...)
{
    r->skipped |= check;
    va_list ap;
    va_start(ap, fmt);
    vappend(r, check, fmt, ap);
    va_end(ap);
}

static bool all_finite(const cf_tensor *t)
{
    for (int64_t i = 0; t && i < t->numel; i++)
        if (!isfinite(cf_tensor_get(t, i))) return false;
    return true;
}

/* The outputs of one forward: io->x, then the latents it pushed (the one that is io->x itself,
 * as a prior's, counted once). */
typedef struct outputs {
    int n;
    cf_tensor *t[CF_FLOW_MAX_LATENTS + 1];
} outputs;

static outputs forward_outputs(const cf_flow_io *io, int latents_before)
{
    outputs o = {0};
    if (io->x) o.t[o.n++] = io->x;
    for (int k = latents_before; k < io->n_latents; k++) {
        bool dup = false;
        for (int j = 0; j < o.n; j++) dup |= o.t[j] == io->latents[k];
        if (!dup && io->latents[k]) o.t[o.n++] = io->latents[k];
    }
    return o;
}

/* log|det a| of the n x n row-major matrix a (overwritten) by LU with partial pivoting;
 * -inf when a pivot is zero. */
static double logabsdet(double *a, int64_t n)
{
    double s = 0;
    for (int64_t c = 0; c < n; c++) {
        int64_t p = c;
        for (int64_t r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[p * n + c])) p = r;
        if (a[p * n + c] == 0.0) return -INFINITY;
        if (p != c)
            for (int64_t k = c; k < n; k++) {
                double t = a[c * n + k];
                a[c * n + k] = a[p * n + k], a[p * n + k] = t;
            }
        const double piv = a[c * n + c];
        s += log(fabs(piv));
        for (int64_t r = c + 1; r < n; r++) {
            const double f = a[r * n + c] / piv;
            if (f == 0.0) continue;
            for (int64_t k = c + 1; k < n; k++) a[r * n + k] -= f * a[c * n + k];
        }
    }
    return s;
}

/* ---- the state of one check --------------------------------------------------------------- */

typedef struct checker {
    cf_layer *layer;
    cf_check_opts o;
    cf_check_result *r;
    cf_tensor *x;  /* (B, H, W, C) heap, requires grad: the input */
    cf_tensor *x0; /* a copy of it, to compare with */
    cf_rng rng;
    int64_t B, D;  /* images, elements per input image */
} checker;

static cf_check_opts with_defaults(const cf_check_opts *given)
{
    cf_check_opts o = {0};
    if (given) o = *given;
    if (o.batch == 0) o.batch = 2;
    if (o.seed == 0) o.seed = 1;
    if (o.lo == 0 && o.hi == 0) o.lo = -1, o.hi = 1;
    if (o.perturb == 0) o.perturb = 0.1;
    if (o.roundtrip_tol == 0) o.roundtrip_tol = 1e-8;
    if (o.logdet_tol == 0) o.logdet_tol = 1e-9;
    if (o.eps == 0) o.eps = 1e-6;
    if (o.atol == 0) o.atol = 1e-5;
    if (o.rtol == 0) o.rtol = 1e-3;
    if (o.max_dense == 0) o.max_dense = 1024;
    if (o.max_elementwise == 0) o.max_elementwise = 4096;
    return o;
}

/* A forward of the layer on the input with recording as given: fills io (latents start empty). */
static cf_status run_forward(checker *c, cf_ctx *ctx, cf_flow_io *io)
{
    *io = (cf_flow_io){.x = c->x, .batch = c->B, .temperature = 1.0, .rng = &c->rng};
    return cf_layer_forward(c->layer, ctx, io);
}

/* shape and finite on one forward's results; `when` names the moment. */
static void check_forward(checker *c, cf_ctx *ctx, const cf_flow_io *io, cf_status st,
                          const char *when)
{
    const cf_layer *l = c->layer;
    if (c->r->failed & CF_CHECK_SHAPE) return; /* said once */
    if (st != CF_OK) {
        fail(c->r, CF_CHECK_SHAPE, "forward %s failed: %s", when, cf_ctx_error(ctx));
        return;
    }
    const cf_tensor *y = io->x;
    const int64_t *s = l->out_shape;
    if (!y || y->ndim != 4 || y->shape[0] != c->B || y->shape[1] != s[0] || y->shape[2] != s[1] ||
        y->shape[3] != s[2]) {
        char got[64] = "nothing";
        if (y) cf_tensor_describe(y, got, sizeof got);
        fail(c->r, CF_CHECK_SHAPE, "forward %s gives %s, the layer says (%lld, %lld, %lld, %lld)",
             when, got, (long long)c->B, (long long)s[0], (long long)s[1], (long long)s[2]);
        return;
    }
    if (!l->factors_out && (io->n_latents != 0 || io->logp))
        fail(c->r, CF_CHECK_SHAPE, "forward %s factors latents out, but the layer does not say "
             "so (factors_out is false)", when);
    const char *bad = !all_finite(y) ? "output" : !all_finite(io->logdet) ? "log-det"
                      : !all_finite(io->logp) ? "log-density" : NULL;
    for (int k = 0; !bad && k < io->n_latents; k++)
        if (!all_finite(io->latents[k])) bad = "latent";
    if (bad) fail(c->r, CF_CHECK_FINITE, "the %s is not finite %s", bad, when);
}

/* Adds noise of std o.perturb to every parameter. */
static void perturb(checker *c)
{
    if (c->o.perturb < 0) return;
    for (int i = 0; i < c->layer->n_params; i++) {
        cf_tensor *p = c->layer->params[i];
        for (int64_t e = 0; e < p->numel; e++)
            cf_tensor_set(p, e, cf_tensor_get(p, e) + c->o.perturb * cf_rng_normal(&c->rng));
    }
}

static double max_abs(const cf_tensor *t)
{
    double m = 0;
    for (int64_t i = 0; i < t->numel; i++) m = fmax(m, fabs(cf_tensor_get(t, i)));
    return m;
}

/* roundtrip: inverse(forward(x)) against x. */
static void check_roundtrip(checker *c, cf_ctx *ctx)
{
    cf_check_result *r = c->r;
    cf_ctx_reset(ctx);
    bool old = cf_ctx_set_grad(ctx, false);
    cf_flow_io io;
    cf_status st = run_forward(c, ctx, &io);
    if (st != CF_OK) {
        fail(r, CF_CHECK_ROUNDTRIP, "forward failed: %s", cf_ctx_error(ctx));
        goto done;
    }
    double moved = 0;
    for (int64_t i = 0; i < c->x->numel; i++)
        moved = fmax(moved, fabs(cf_tensor_get(c->x, i) - cf_tensor_get(c->x0, i)));
    if (moved != 0) {
        fail(r, CF_CHECK_ROUNDTRIP, "forward wrote into its input (changed by up to %.3g)", moved);
        cf_tensor_copy(c->x, c->x0);
        goto done;
    }
    const int pushed = io.n_latents;
    st = cf_layer_inverse(c->layer, ctx, &io);
    if (st != CF_OK) {
        fail(r, CF_CHECK_ROUNDTRIP, "inverse failed: %s", cf_ctx_error(ctx));
        goto done;
    }
    if (io.n_latents != 0) {
        fail(r, CF_CHECK_ROUNDTRIP, "forward pushed %d latents, inverse left %d of them", pushed,
             io.n_latents);
        goto done;
    }
    if (!io.x || io.x->numel != c->x0->numel) {
        char got[64] = "nothing";
        if (io.x) cf_tensor_describe(io.x, got, sizeof got);
        fail(r, CF_CHECK_ROUNDTRIP, "inverse gives %s for an input of %lld elements", got,
             (long long)c->x0->numel);
        goto done;
    }
    double err = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < c->x0->numel; i++) {
        double e = fabs(cf_tensor_get(io.x, i) - cf_tensor_get(c->x0, i));
        if (!(e <= err)) err = e, worst = i; /* a NaN wins */
    }
    err /= fmax(1.0, max_abs(c->x0));
    r->roundtrip_err = err;
    if (!(err <= c->o.roundtrip_tol)) {
        const int64_t *s = c->layer->in_shape, per = c->D;
        const int64_t b = worst / per, p = worst % per, ch = p % s[2], w = p / s[2] % s[1],
                      h = p / s[2] / s[1];
        fail(r, CF_CHECK_ROUNDTRIP, "inverse(forward(x)) differs from x by %.3g (tolerance "
             "%.3g), worst at image %lld, (h, w, c) = (%lld, %lld, %lld): %.10g instead of "
             "%.10g", err, c->o.roundtrip_tol, (long long)b, (long long)h, (long long)w,
             (long long)ch, cf_tensor_get(io.x, worst), cf_tensor_get(c->x0, worst));
    }
done:
    cf_ctx_set_grad(ctx, old);
}

/* logdet: the layer's against the dense Jacobian's, per image. */
static void check_logdet(checker *c, cf_ctx *ctx)
{
    cf_check_result *r = c->r;
    const int64_t B = c->B, D = c->D;
    cf_ctx_reset(ctx);
    memset(c->x->grad, 0, (size_t)c->x->numel * sizeof(double));
    cf_flow_io io;
    cf_status st = run_forward(c, ctx, &io);
    if (st != CF_OK) {
        fail(r, CF_CHECK_LOGDET, "forward failed: %s", cf_ctx_error(ctx));
        return;
    }
    outputs out = forward_outputs(&io, 0);
    int64_t d_out = 0;
    for (int k = 0; k < out.n; k++) d_out += out.t[k]->numel / B;
    if (d_out != D) {
        if (d_out > D || c->layer->factors_out) {
            skip(r, CF_CHECK_LOGDET, "not run: the outputs have %lld elements per image, the "
                 "input %lld (no square Jacobian)", (long long)d_out, (long long)D);
            return;
        }
        fail(r, CF_CHECK_LOGDET, "the output has %lld elements per image and the input %lld: "
             "not a bijection", (long long)d_out, (long long)D);
        return;
    }
    if (D > c->o.max_dense) {
        skip(r, CF_CHECK_LOGDET, "not run: %lld elements per image, more than max_dense %lld",
             (long long)D, (long long)c->o.max_dense);
        return;
    }
    double *J = malloc((size_t)(D * D) * sizeof(double));
    cf_tensor *seed[CF_FLOW_MAX_LATENTS + 1] = {0};
    if (!J) {
        fail(r, CF_CHECK_LOGDET, "out of memory for a %lld x %lld Jacobian", (long long)D,
             (long long)D);
        return;
    }
    for (int k = 0; k < out.n; k++)
        seed[k] = cf_tensor_new(ctx, CF_F64, out.t[k]->ndim, out.t[k]->shape);
    double *gx = c->x->grad;
    for (int64_t b = 0; b < B && !(r->failed & CF_CHECK_LOGDET); b++) {
        int64_t row = 0;
        double cross = 0, jmax = 0;
        for (int k = 0; k < out.n && !(r->failed & CF_CHECK_LOGDET); k++) {
            const int64_t per = out.t[k]->numel / B;
            for (int64_t j = 0; j < per; j++, row++) {
                if (!seed[k]) {
                    fail(r, CF_CHECK_LOGDET, "%s", cf_ctx_error(ctx));
                    break;
                }
                memset(gx, 0, (size_t)c->x->numel * sizeof(double));
                cf_tensor_set(seed[k], b * per + j, 1.0);
                st = cf_backward_ex(ctx, out.t[k], seed[k], CF_BACKWARD_RETAIN);
                cf_tensor_set(seed[k], b * per + j, 0.0);
                if (st != CF_OK) {
                    fail(r, CF_CHECK_LOGDET, "backward failed: %s", cf_ctx_error(ctx));
                    break;
                }
                for (int64_t i = 0; i < B * D; i++) {
                    if (i / D == b)
                        J[row * D + i % D] = gx[i], jmax = fmax(jmax, fabs(gx[i]));
                    else
                        cross = fmax(cross, fabs(gx[i]));
                }
            }
        }
        if (r->failed & CF_CHECK_LOGDET) break;
        if (cross > c->o.logdet_tol * (1 + jmax)) {
            fail(r, CF_CHECK_LOGDET, "the output of image %lld depends on other images' inputs "
                 "(Jacobian entries up to %.3g across images)", (long long)b, cross);
            break;
        }
        bool finite = true;
        for (int64_t i = 0; i < D * D; i++) finite &= isfinite(J[i]) != 0;
        const double dense = finite ? logabsdet(J, D) : NAN;
        const double layer = io.logdet ? cf_tensor_get(io.logdet, io.logdet->numel > 1 ? b : 0)
                                       : 0.0;
        const double err = fabs(layer - dense) / (1 + fabs(dense));
        if (!(err <= r->logdet_err)) r->logdet_err = err;
        if (!(err <= c->o.logdet_tol))
            fail(r, CF_CHECK_LOGDET, "layer says %.12g, dense Jacobian gives %.12g (image %lld, "
                 "%lld x %lld%s)", layer, dense, (long long)b, (long long)D, (long long)D,
                 !finite ? ", not finite" : isinf(dense) ? ", singular" : "");
    }
    free(J);
}

/* The graph of the gradient check: one forward, every output, the log-det and log-density. */
static cf_status grad_graph(cf_ctx *ctx, void *user, int *n_out, cf_tensor **out)
{
    checker *c = user;
    cf_flow_io io;
    cf_status st = run_forward(c, ctx, &io);
    if (st != CF_OK) return st;
    outputs o = forward_outputs(&io, 0);
    *n_out = 0;
    for (int k = 0; k < o.n && *n_out < CF_MAX_OUTPUTS; k++) out[(*n_out)++] = o.t[k];
    if (io.logdet && *n_out < CF_MAX_OUTPUTS) out[(*n_out)++] = io.logdet;
    if (io.logp && *n_out < CF_MAX_OUTPUTS) out[(*n_out)++] = io.logp;
    return CF_OK;
}

/* " element k [i, j, ...]": flat index k of t and its index along each axis. */
static const char *index_text(const cf_tensor *t, int64_t k, char *buf, size_t size)
{
    int64_t at[CF_MAX_DIMS] = {0}, rest = k;
    for (int d = t->ndim - 1; d >= 0; d--) at[d] = rest % t->shape[d], rest /= t->shape[d];
    int n = snprintf(buf, size, " element %lld [", (long long)k);
    for (int d = 0; d < t->ndim && n > 0 && (size_t)n < size; d++)
        n += snprintf(buf + n, size - (size_t)n, "%s%lld", d ? ", " : "", (long long)at[d]);
    if (n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, "]");
    return buf;
}

/* grad: each tensor on its own, so that a failure names it. */
static void check_grad(checker *c)
{
    cf_check_result *r = c->r;
    const int n = 1 + c->layer->n_params;
    for (int i = 0; i < n; i++) {
        cf_tensor *t = i == 0 ? c->x : c->layer->params[i - 1];
        const bool directional = t->numel > c->o.max_elementwise;
        cf_gradcheck_opts g = {.eps = c->o.eps, .atol = c->o.atol, .rtol = c->o.rtol,
                               .fast = directional, .n_directions = 8, .seed = c->o.seed,
                               .kernels = CF_KERNELS_REFERENCE};
        cf_gradcheck_result res;
        cf_status st = cf_gradcheck_graph(grad_graph, c, 1, &t, &g, &res);
        r->tensors_checked++;
        r->grad_directional += directional;
        r->grad_values += res.values_checked;
        if (!(res.max_abs_err <= r->grad_err)) r->grad_err = res.max_abs_err;
        if (st != CF_OK) {
            /* res.message says "input 0 element k: ..."; name the tensor instead. */
            const char *m = res.message, *what = i == 0 ? "the input" : t->name;
            long long e = 0;
            double a = 0, num = 0;
            char idx[96];
            if (strstr(m, "degenerate"))
                fail(r, CF_CHECK_GRAD, "%s: backward and finite differences are both zero "
                     "everywhere, so nothing was checked (a zero-initialised layer left "
                     "unperturbed, or a tensor without effect on the outputs)", what);
            else if (sscanf(m, "input 0 element %lld: analytic %lg, numeric %lg", &e, &a,
                            &num) == 3)
                fail(r, CF_CHECK_GRAD, "%s%s: backward gives %.10g, finite differences %.10g "
                     "(atol %g, rtol %g)", what, index_text(t, (int64_t)e, idx, sizeof idx), a,
                     num, c->o.atol, c->o.rtol);
            else
                fail(r, CF_CHECK_GRAD, "%s: %s", what, m);
            return;
        }
    }
}

cf_status cf_layer_check(cf_layer *layer, const cf_check_opts *opts, cf_check_result *out)
{
    CF_ASSERT(layer && out, "cf_layer_check needs a layer and a result");
    memset(out, 0, sizeof *out);
    checker c = {.layer = layer, .o = with_defaults(opts), .r = out};
    if (c.o.batch < 1 || c.o.batch > 64 || !(c.o.lo < c.o.hi) || !(c.o.roundtrip_tol > 0) ||
        !(c.o.logdet_tol > 0) || !(c.o.eps > 0) || !(c.o.atol > 0) || !(c.o.rtol > 0) ||
        c.o.max_dense < 1 || c.o.max_elementwise < 1) {
        snprintf(out->message, sizeof out->message, "cf_layer_check: options out of range for "
                 "layer '%s' (batch 1 to 64, lo < hi, positive tolerances and sizes)", layer->name);
        return cf_set_error(CF_ERR_ARG, "%s", out->message);
    }
    for (int i = 0; i < layer->n_params + layer->n_state; i++) {
        const cf_tensor *t = i < layer->n_params ? layer->params[i]
                                                 : layer->state[i - layer->n_params];
        if (t->dtype != CF_F64) {
            snprintf(out->message, sizeof out->message, "cf_layer_check: layer '%s' (%s) holds "
                     "%s tensor '%s'; the checks need an f64 layer (build it in a "
                     "cf_params_new(CF_F64) set, or the flow with cf_flow_new(cfg, CF_F64))",
                     layer->name, layer->vt->kind, cf_dtype_name(t->dtype),
                     t->name ? t->name : "?");
            return cf_set_error(CF_ERR_DTYPE, "%s", out->message);
        }
    }
    const int64_t *s = layer->in_shape;
    c.B = c.o.batch;
    c.D = s[0] * s[1] * s[2];
    cf_rng_seed(&c.rng, c.o.seed, 0xc4ec);
    saved_layer saved = {0};
    cf_ctx *ctx = NULL;
    cf_status st = CF_ERR_NOMEM;
    c.x = cf_tensor_alloc(CF_F64, 4, (int64_t[]){c.B, s[0], s[1], s[2]});
    c.x0 = c.x ? cf_tensor_alloc(CF_F64, 4, c.x->shape) : NULL;
    if (!c.x0 || !save_layer(layer, &saved) || !(ctx = cf_ctx_new(0)) ||
        cf_tensor_requires_grad(NULL, c.x) != CF_OK) {
        snprintf(out->message, sizeof out->message, "cf_layer_check: out of memory checking "
                 "layer '%s'", layer->name);
        cf_set_error(CF_ERR_NOMEM, "%s", out->message);
        goto done;
    }
    cf_ctx_set_kernels(ctx, CF_KERNELS_REFERENCE);
    cf_tensor_fill_uniform(c.x, &c.rng, c.o.lo, c.o.hi);
    cf_tensor_copy(c.x0, c.x);

    /* 1, 2: shapes and finite values at initialisation (this forward also runs data-dependent
     * initialisations), then after the perturbation. */
    cf_flow_io io;
    bool old = cf_ctx_set_grad(ctx, false);
    check_forward(&c, ctx, &io, run_forward(&c, ctx, &io), "at initialisation");
    perturb(&c);
    cf_ctx_reset(ctx);
    check_forward(&c, ctx, &io, run_forward(&c, ctx, &io), "after perturbing the parameters");
    cf_ctx_set_grad(ctx, old);
    cf_tensor_copy(c.x, c.x0);
    if (!(out->failed & CF_CHECK_SHAPE)) {
        check_roundtrip(&c, ctx);
        check_logdet(&c, ctx);
        check_grad(&c);
    } else {
        out->skipped |= CF_CHECK_ROUNDTRIP | CF_CHECK_LOGDET | CF_CHECK_GRAD; /* said why */
    }
    out->passed = out->failed == 0;
    st = out->passed ? CF_OK : cf_set_error(CF_ERR_NUMERIC, "layer '%s' (%s): %s", layer->name,
                                            layer->vt->kind, out->message);
done:
    if (saved.params && saved.grads && saved.state) restore_layer(layer, &saved);
    saved_free(&saved);
    cf_ctx_free(ctx);
    cf_tensor_free(c.x);
    cf_tensor_free(c.x0);
    return st;
}

void cf_check_print(const cf_layer *layer, const cf_check_result *r, FILE *out)
{
    char rt[16] = "-", ld[16] = "-", gr[16] = "-";
    if (!(r->skipped & CF_CHECK_ROUNDTRIP)) snprintf(rt, sizeof rt, "%.1e", r->roundtrip_err);
    if (!(r->skipped & CF_CHECK_LOGDET)) snprintf(ld, sizeof ld, "%.1e", r->logdet_err);
    if (!(r->skipped & CF_CHECK_GRAD)) snprintf(gr, sizeof gr, "%.1e", r->grad_err);
    fprintf(out, "%s %-36s %-15s roundtrip %-8s logdet %-8s grad %-8s", r->passed ? "PASS" : "FAIL",
            layer->name, layer->vt->kind, rt, ld, gr);
    if (r->grad_directional) fprintf(out, " (%d tensors along directions)", r->grad_directional);
    if (r->message[0]) fprintf(out, " %s", r->message);
    fputc('\n', out);
}

cf_status cf_flow_check(cf_flow *flow, const cf_check_opts *opts, FILE *report, int *n_failed)
{
    CF_ASSERT(flow != NULL, "cf_flow_check needs a flow");
    if (n_failed) *n_failed = 0;
    if (cf_params_dtype(cf_flow_params(flow)) != CF_F64)
        return cf_set_error(CF_ERR_DTYPE, "cf_flow_check: the flow is %s; the checks need an f64 "
                            "flow (cf_flow_new(cfg, CF_F64), or cf_flow_empty(shape, CF_F64))",
                            cf_dtype_name(cf_params_dtype(cf_flow_params(flow))));
    cf_check_opts o = with_defaults(opts);
    const uint64_t seed = o.seed;
    int passed = 0, failed = 0;
    for (int i = 0; i < cf_flow_layer_count(flow); i++) {
        cf_layer *l = cf_flow_layer(flow, i);
        cf_check_result r;
        o.seed = seed + (uint64_t)i;
        cf_status st = cf_layer_check(l, &o, &r);
        if (st != CF_OK && st != CF_ERR_NUMERIC) return st;
        if (report) cf_check_print(l, &r, report);
        r.passed ? passed++ : failed++;
    }
    if (report) fprintf(report, "%d passed, %d failed\n", passed, failed);
    if (n_failed) *n_failed = failed;
    return failed ? cf_set_error(CF_ERR_NUMERIC, "cf_flow_check: %d of %d layers failed", failed,
                                 passed + failed)
                  : CF_OK;
}

cf_status cf_layer_kind_check(const char *kind, const int64_t shape[3], const cf_hparams *hp,
                              const cf_check_opts *opts, FILE *report, cf_check_result *out)
{
    cf_params *ps = cf_params_new(CF_F64);
    if (!ps) return cf_set_error(CF_ERR_NOMEM, "%s: out of memory", kind ? kind : "kind");
    cf_rng rng;
    cf_rng_seed(&rng, opts && opts->seed ? opts->seed : 1, 0x1a7e);
    cf_layer *l = cf_layer_create(kind, ps, kind, shape, hp, &rng);
    cf_status st = l ? cf_layer_check(l, opts, out) : cf_set_error(CF_ERR_ARG, "%s", cf_last_error());
    if (!l && cf_layer_kind_find(kind) == NULL) st = CF_ERR_NOT_FOUND;
    if (l && report) cf_check_print(l, out, report);
    cf_layer_free(l);
    cf_params_free(ps);
    return st;
}
