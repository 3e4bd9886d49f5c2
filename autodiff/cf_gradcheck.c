/* cf_gradcheck.c: finite-difference gradient checks and fast-versus-reference kernel checks
 * (see cf_gradcheck.h for the method and tolerances).
 *
 * Not here: choosing inputs that exercise an op (each op's make_case does that).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_autodiff_impl.h"
#include "cf_gradcheck.h"
#include "cf_rng.h"

/* Weighted output sums need the same weights on every evaluation. */
typedef struct weights {
    int n_out;
    int64_t numel[CF_MAX_OUTPUTS];
    double *w[CF_MAX_OUTPUTS];
} weights;

static void weights_free(weights *w)
{
    for (int o = 0; o < CF_MAX_OUTPUTS; o++) free(w->w[o]);
}

/* Draws weights in +-[0.5, 1.5] for each output element (rounded to the output dtype, so the
 * seed tensors and the numeric sum use identical values). */
static cf_status weights_draw(weights *w, int n_out, cf_tensor **out, cf_rng *rng)
{
    memset(w, 0, sizeof *w);
    w->n_out = n_out;
    for (int o = 0; o < n_out; o++) {
        w->numel[o] = out[o]->numel;
        w->w[o] = malloc((size_t)(out[o]->numel ? out[o]->numel : 1) * sizeof(double));
        if (!w->w[o]) return cf_set_error(CF_ERR_NOMEM, "gradcheck: out of memory");
        for (int64_t k = 0; k < out[o]->numel; k++) {
            double v = 0.5 + cf_rng_uniform(rng);
            if (cf_rng_next(rng) & 1) v = -v;
            if (out[o]->dtype == CF_F32) v = (double)(float)v;
            w->w[o][k] = v;
        }
    }
    return CF_OK;
}

/* L = sum_o sum_k w_ok out_ok with recording off. */
static cf_status eval_loss(cf_ctx *ctx, cf_graph_fn fn, void *user, const weights *w, double *L)
{
    cf_ctx_reset(ctx);
    bool old = cf_ctx_set_grad(ctx, false);
    int n_out = 0;
    cf_tensor *out[CF_MAX_OUTPUTS] = {0};
    cf_status st = fn(ctx, user, &n_out, out);
    cf_ctx_set_grad(ctx, old);
    if (st == CF_OK) st = cf_ctx_status(ctx);
    if (st != CF_OK) return st;
    CF_ASSERT(n_out == w->n_out, "the graph returned %d outputs, then %d", w->n_out, n_out);
    double sum = 0;
    for (int o = 0; o < n_out; o++) {
        CF_ASSERT(out[o]->numel == w->numel[o], "output %d changed size", o);
        for (int64_t k = 0; k < out[o]->numel; k++) sum += w->w[o][k] * cf_tensor_get(out[o], k);
    }
    *L = sum;
    return CF_OK;
}

static void set_defaults(cf_gradcheck_opts *o, const cf_gradcheck_opts *given, bool any_f32)
{
    cf_gradcheck_opts d = {0};
    if (given) d = *given;
    if (d.eps == 0) d.eps = any_f32 ? 1e-3 : 1e-6;
    if (d.atol == 0) d.atol = any_f32 ? 1e-2 : 1e-5;
    if (d.rtol == 0) d.rtol = any_f32 ? 1e-2 : 1e-3;
    if (d.n_directions == 0) d.n_directions = 4;
    if (d.seed == 0) d.seed = 0x5eed;
    *o = d;
}

/* Records one comparison; returns false when it is out of tolerance. */
static bool compare(cf_gradcheck_result *res, const cf_gradcheck_opts *o, double a, double n)
{
    double err = fabs(a - n);
    if (err > res->max_abs_err || err != err) res->max_abs_err = err;
    if (fabs(n) > o->atol && err / fabs(n) > res->max_rel_err) res->max_rel_err = err / fabs(n);
    res->values_checked++;
    return err <= o->atol + o->rtol * fabs(n);
}

cf_status cf_gradcheck_graph(cf_graph_fn fn, void *user, int n_wrt, cf_tensor *const *wrt,
                             const cf_gradcheck_opts *opts, cf_gradcheck_result *res)
{
    memset(res, 0, sizeof *res);
    bool any_f32 = false;
    for (int i = 0; i < n_wrt; i++) {
        CF_ASSERT(wrt[i] && wrt[i]->grad && (wrt[i]->flags & CF_TENSOR_REQUIRES_GRAD),
                  "gradcheck: tensor %d to differentiate has no gradient buffer "
                  "(cf_tensor_requires_grad)", i);
        CF_ASSERT(!wrt[i]->node, "gradcheck: tensor %d is an op output, not a leaf", i);
        any_f32 |= wrt[i]->dtype == CF_F32;
    }
    cf_gradcheck_opts o;
    set_defaults(&o, opts, any_f32);
    cf_ctx *ctx = cf_ctx_new(0);
    if (!ctx) return CF_ERR_NOMEM;
    cf_ctx_set_kernels(ctx, o.kernels);
    cf_rng rng;
    cf_rng_seed(&rng, o.seed, 0x67c);
    weights w = {0};
    double **analytic = calloc((size_t)(n_wrt ? n_wrt : 1), sizeof *analytic);
    cf_status st = analytic ? CF_OK : CF_ERR_NOMEM;

    /* Analytic gradients: one forward on the tape, one backward seeded with the weights. */
    int n_out = 0;
    cf_tensor *out[CF_MAX_OUTPUTS] = {0};
    for (int i = 0; i < n_wrt && st == CF_OK; i++)
        memset(wrt[i]->grad, 0, (size_t)wrt[i]->numel * cf_dtype_size(wrt[i]->dtype));
    if (st == CF_OK) st = fn(ctx, user, &n_out, out);
    if (st == CF_OK) st = cf_ctx_status(ctx);
    if (st != CF_OK) {
        snprintf(res->message, sizeof res->message, "the graph failed: %s", cf_ctx_error(ctx));
        goto done;
    }
    CF_ASSERT(n_out >= 1 && n_out <= CF_MAX_OUTPUTS, "graph returned %d outputs", n_out);
    if ((st = weights_draw(&w, n_out, out, &rng)) != CF_OK) goto done;
    {
        cf_tensor *roots[CF_MAX_OUTPUTS];
        const cf_tensor *seeds[CF_MAX_OUTPUTS];
        int n_roots = 0;
        for (int o2 = 0; o2 < n_out; o2++) {
            if (!(out[o2]->flags & CF_TENSOR_REQUIRES_GRAD)) continue;
            cf_tensor *s = cf_tensor_new(ctx, out[o2]->dtype, out[o2]->ndim, out[o2]->shape);
            if (!s) break;
            for (int64_t k = 0; k < s->numel; k++) cf_tensor_set(s, k, w.w[o2][k]);
            roots[n_roots] = out[o2];
            seeds[n_roots++] = s;
        }
        st = cf_ctx_status(ctx);
        if (st == CF_OK && n_roots) st = cf_backward_multi(ctx, n_roots, roots, seeds, 0);
        if (st != CF_OK) {
            snprintf(res->message, sizeof res->message, "backward failed: %s",
                     cf_ctx_error(ctx));
            goto done;
        }
    }
    for (int i = 0; i < n_wrt; i++) {
        analytic[i] = malloc((size_t)(wrt[i]->numel ? wrt[i]->numel : 1) * sizeof(double));
        if (!analytic[i]) {
            st = CF_ERR_NOMEM;
            goto done;
        }
        for (int64_t k = 0; k < wrt[i]->numel; k++)
            analytic[i][k] = cf_buf_get(wrt[i]->dtype, wrt[i]->grad, k);
    }

    res->passed = true;
    if (!o.fast) {
        for (int i = 0; i < n_wrt && res->passed; i++) {
            double amax = 0, nmax = 0;
            for (int64_t k = 0; k < wrt[i]->numel; k++) {
                double x0 = cf_tensor_get(wrt[i], k), lp, lm;
                cf_tensor_set(wrt[i], k, x0 + o.eps);
                st = eval_loss(ctx, fn, user, &w, &lp);
                cf_tensor_set(wrt[i], k, x0 - o.eps);
                if (st == CF_OK) st = eval_loss(ctx, fn, user, &w, &lm);
                cf_tensor_set(wrt[i], k, x0);
                if (st != CF_OK) {
                    snprintf(res->message, sizeof res->message,
                             "the graph failed while perturbing input %d: %s", i,
                             cf_ctx_error(ctx));
                    res->passed = false;
                    goto done;
                }
                /* The perturbation actually applied (x0 +- eps rounds in f32). */
                double h = wrt[i]->dtype == CF_F32
                               ? (double)(float)(x0 + o.eps) - (double)(float)(x0 - o.eps)
                               : 2 * o.eps;
                double num = (lp - lm) / h, a = analytic[i][k];
                amax = fmax(amax, fabs(a));
                nmax = fmax(nmax, fabs(num));
                if (!compare(res, &o, a, num)) {
                    snprintf(res->message, sizeof res->message,
                             "input %d element %lld: analytic %.10g, numeric %.10g (atol %g, "
                             "rtol %g)", i, (long long)k, a, num, o.atol, o.rtol);
                    res->passed = false;
                    break;
                }
            }
            if (res->passed && amax == 0 && nmax < o.atol * 1e-3) {
                snprintf(res->message, sizeof res->message,
                         "degenerate check: both gradients of input %d are zero everywhere; "
                         "choose inputs the output is sensitive to", i);
                res->passed = false;
            }
            res->inputs_checked++;
        }
    } else {
        /* Directional derivatives along random unit-variance directions. */
        double **saved = calloc((size_t)(n_wrt ? n_wrt : 1), sizeof *saved);
        double **dir = calloc((size_t)(n_wrt ? n_wrt : 1), sizeof *dir);
        bool any_nonzero = false;
        st = saved && dir ? CF_OK : CF_ERR_NOMEM;
        for (int i = 0; i < n_wrt && st == CF_OK; i++) {
            size_t n = (size_t)(wrt[i]->numel ? wrt[i]->numel : 1);
            saved[i] = malloc(n * sizeof(double));
            dir[i] = malloc(n * sizeof(double));
            if (!saved[i] || !dir[i]) st = CF_ERR_NOMEM;
            for (int64_t k = 0; st == CF_OK && k < wrt[i]->numel; k++)
                saved[i][k] = cf_tensor_get(wrt[i], k);
        }
        for (int d = 0; d < o.n_directions && st == CF_OK && res->passed; d++) {
            double a = 0, lp = 0, lm = 0;
            for (int i = 0; i < n_wrt; i++)
                for (int64_t k = 0; k < wrt[i]->numel; k++) {
                    dir[i][k] = cf_rng_normal(&rng);
                    a += analytic[i][k] * dir[i][k];
                }
            for (int sgn = 1; sgn >= -1 && st == CF_OK; sgn -= 2) {
                for (int i = 0; i < n_wrt; i++)
                    for (int64_t k = 0; k < wrt[i]->numel; k++)
                        cf_tensor_set(wrt[i], k, saved[i][k] + sgn * o.eps * dir[i][k]);
                st = eval_loss(ctx, fn, user, &w, sgn > 0 ? &lp : &lm);
            }
            for (int i = 0; i < n_wrt; i++)
                for (int64_t k = 0; k < wrt[i]->numel; k++)
                    cf_tensor_set(wrt[i], k, saved[i][k]);
            if (st != CF_OK) {
                snprintf(res->message, sizeof res->message, "the graph failed: %s",
                         cf_ctx_error(ctx));
                res->passed = false;
                break;
            }
            double num = (lp - lm) / (2 * o.eps);
            any_nonzero |= a != 0 || fabs(num) > o.atol * 1e-3;
            if (!compare(res, &o, a, num)) {
                snprintf(res->message, sizeof res->message,
                         "direction %d: analytic %.10g, numeric %.10g (atol %g, rtol %g)", d, a,
                         num, o.atol, o.rtol);
                res->passed = false;
            }
        }
        if (st == CF_OK && res->passed && !any_nonzero) {
            snprintf(res->message, sizeof res->message,
                     "degenerate check: every directional derivative is zero");
            res->passed = false;
        }
        res->inputs_checked = n_wrt;
        for (int i = 0; i < n_wrt; i++) {
            if (saved) free(saved[i]);
            if (dir) free(dir[i]);
        }
        free(saved);
        free(dir);
    }
    if (st == CF_OK && !res->passed) st = CF_ERR_GRADCHECK;

done:
    if (st != CF_OK && st != CF_ERR_GRADCHECK) res->passed = false;
    if (st != CF_OK && !res->message[0])
        snprintf(res->message, sizeof res->message, "%s", cf_strerror(st));
    if (analytic)
        for (int i = 0; i < n_wrt; i++) free(analytic[i]);
    free(analytic);
    weights_free(&w);
    cf_ctx_free(ctx);
    if (st != CF_OK) cf_set_error(st, "gradcheck: %s", res->message);
    return st;
}

/* ---- ops ----------------------------------------------------------------------------- */

typedef struct op_graph {
    const cf_op_def *op;
    int n_in;
    cf_tensor *const *inputs;
    const void *attrs;
} op_graph;

static cf_status op_graph_fn(cf_ctx *ctx, void *user, int *n_out, cf_tensor **out)
{
    op_graph *g = user;
    *n_out = cf_op_n_outputs(g->op, g->attrs, g->n_in);
    return cf_op_apply(ctx, g->op, g->n_in, g->inputs, g->attrs, out);
}

cf_status cf_gradcheck_op(const cf_op_def *op, int n_in, cf_tensor *const *inputs,
                          const void *attrs, const cf_gradcheck_opts *opts,
                          cf_gradcheck_result *res)
{
    cf_tensor *wrt[CF_MAX_INPUTS];
    int n_wrt = 0;
    for (int i = 0; i < n_in; i++) {
        if (op->no_grad_inputs & (1u << i)) continue;
        cf_status st = cf_tensor_requires_grad(NULL, inputs[i]);
        if (st != CF_OK) return st;
        wrt[n_wrt++] = inputs[i];
    }
    op_graph g = {op, n_in, inputs, attrs};
    return cf_gradcheck_graph(op_graph_fn, &g, n_wrt, wrt, opts, res);
}

bool cf_op_case_get(const cf_op_def *op, int index, cf_op_case *c)
{
    memset(c, 0, sizeof *c);
    if (op->make_case) return op->make_case(index, c);
    if (index > 0) return false;
    c->n_in = op->n_inputs == CF_OP_VARIADIC ? 2 : op->n_inputs;
    for (int i = 0; i < c->n_in; i++) {
        c->ndim[i] = 4;
        c->shape[i][0] = 2, c->shape[i][1] = 3, c->shape[i][2] = 4, c->shape[i][3] = 5;
        c->lo[i] = -2, c->hi[i] = 2;
    }
    c->label = "default";
    return true;
}

cf_status cf_op_case_inputs(const cf_op_case *c, cf_dtype dtype, uint64_t seed,
                            cf_tensor **inputs)
{
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0x1a9);
    for (int i = 0; i < c->n_in; i++) inputs[i] = NULL;
    for (int i = 0; i < c->n_in; i++) {
        inputs[i] = cf_tensor_alloc(dtype, c->ndim[i], c->shape[i]);
        if (!inputs[i]) {
            for (int j = 0; j < i; j++) cf_tensor_free(inputs[j]);
            return CF_ERR_NOMEM;
        }
        cf_tensor_fill_uniform(inputs[i], &rng, c->lo[i], c->hi[i]);
    }
    return CF_OK;
}

/* Runs forward and a seeded backward with one kernel family; copies outputs and input
 * gradients (in that order) into vals, a list of n_vals arrays it allocates. */
static cf_status run_family(const cf_op_def *op, int n_in, cf_tensor *const *inputs,
                            const void *attrs, cf_kernels family, double **vals, int64_t *counts,
                            int *n_vals, bool *backward_ran)
{
    *backward_ran = false;
    cf_ctx *ctx = cf_ctx_new(0);
    if (!ctx) return CF_ERR_NOMEM;
    cf_ctx_set_kernels(ctx, family);
    cf_rng rng;
    cf_rng_seed(&rng, 0xfa57, 0);
    for (int i = 0; i < n_in; i++)
        if (inputs[i]->grad)
            memset(inputs[i]->grad, 0, (size_t)inputs[i]->numel * cf_dtype_size(inputs[i]->dtype));
    cf_tensor *out[CF_MAX_OUTPUTS];
    const int n_out = cf_op_n_outputs(op, attrs, n_in);
    cf_status st = cf_op_apply(ctx, op, n_in, inputs, attrs, out);
    weights w = {0};
    if (st == CF_OK) st = weights_draw(&w, n_out, out, &rng);
    cf_tensor *roots[CF_MAX_OUTPUTS];
    const cf_tensor *seeds[CF_MAX_OUTPUTS];
    int n_roots = 0;
    for (int o = 0; st == CF_OK && o < n_out; o++) {
        if (!(out[o]->flags & CF_TENSOR_REQUIRES_GRAD)) continue;
        cf_tensor *s = cf_tensor_new(ctx, out[o]->dtype, out[o]->ndim, out[o]->shape);
        if (!s) {
            st = cf_ctx_status(ctx);
            break;
        }
        for (int64_t k = 0; k < s->numel; k++) cf_tensor_set(s, k, w.w[o][k]);
        roots[n_roots] = out[o];
        seeds[n_roots++] = s;
    }
    if (st == CF_OK && n_roots) {
        st = cf_backward_multi(ctx, n_roots, roots, seeds, 0);
        *backward_ran = st == CF_OK;
    }
    *n_vals = 0;
    for (int o = 0; st == CF_OK && o < n_out; o++) {
        vals[*n_vals] = malloc((size_t)(out[o]->numel + 1) * sizeof(double));
        counts[*n_vals] = out[o]->numel;
        for (int64_t k = 0; k < out[o]->numel; k++) vals[*n_vals][k] = cf_tensor_get(out[o], k);
        (*n_vals)++;
    }
    for (int i = 0; st == CF_OK && i < n_in; i++) {
        if (!inputs[i]->grad) continue;
        vals[*n_vals] = malloc((size_t)(inputs[i]->numel + 1) * sizeof(double));
        counts[*n_vals] = inputs[i]->numel;
        for (int64_t k = 0; k < inputs[i]->numel; k++)
            vals[*n_vals][k] = cf_buf_get(inputs[i]->dtype, inputs[i]->grad, k);
        (*n_vals)++;
    }
    if (st != CF_OK) cf_set_error(st, "op '%s': %s", op->name, cf_ctx_error(ctx));
    weights_free(&w);
    cf_ctx_free(ctx);
    return st;
}

cf_status cf_opcheck_fast(const cf_op_def *op, int n_in, cf_tensor *const *inputs,
                          const void *attrs, bool *has_fast, double *max_err)
{
    *max_err = 0;
    *has_fast = op->fast[CF_F32].forward != NULL;
    if (!*has_fast) return CF_OK;
    for (int i = 0; i < n_in; i++)
        CF_ASSERT(inputs[i]->dtype == CF_F32, "cf_opcheck_fast takes f32 inputs");
    for (int i = 0; i < n_in; i++) {
        if (op->no_grad_inputs & (1u << i)) continue;
        cf_status st = cf_tensor_requires_grad(NULL, inputs[i]);
        if (st != CF_OK) return st;
    }
    enum { MAXV = CF_MAX_OUTPUTS + CF_MAX_INPUTS };
    double *fast[MAXV] = {0}, *ref[MAXV] = {0};
    int64_t nf[MAXV], nr[MAXV];
    int n_fast = 0, n_ref = 0;
    bool fast_bwd = false, ref_bwd = false;
    /* The run record proves which kernels ran: a fast kernel that silently fell back to the
     * reference (dispatch broken) would otherwise compare the reference with itself. */
    const cf_op_runs r0 = cf_op_runs_of(op);
    cf_status st = run_family(op, n_in, inputs, attrs, CF_KERNELS_FAST, fast, nf, &n_fast,
                              &fast_bwd);
    const cf_op_runs r1 = cf_op_runs_of(op);
    if (st == CF_OK)
        st = run_family(op, n_in, inputs, attrs, CF_KERNELS_REFERENCE, ref, nr, &n_ref, &ref_bwd);
    const cf_op_runs r2 = cf_op_runs_of(op);
    if (st == CF_OK && r1.forward_fast == r0.forward_fast)
        st = cf_set_error(CF_ERR_STATE, "op '%s': its fast f32 forward kernel did not run with "
                                        "CF_KERNELS_FAST", op->name);
    if (st == CF_OK && fast_bwd && op->fast[CF_F32].backward &&
        r1.backward_fast == r0.backward_fast)
        st = cf_set_error(CF_ERR_STATE, "op '%s': its fast f32 backward kernel did not run "
                                        "after its fast forward", op->name);
    if (st == CF_OK && (r2.forward_reference == r1.forward_reference ||
                        (ref_bwd && r2.backward_reference == r1.backward_reference)))
        st = cf_set_error(CF_ERR_STATE, "op '%s': its reference kernels did not run with "
                                        "CF_KERNELS_REFERENCE", op->name);
    for (int v = 0; st == CF_OK && v < n_fast; v++) {
        double scale = 1, err = 0;
        for (int64_t k = 0; k < nr[v]; k++) scale = fmax(scale, fabs(ref[v][k]));
        for (int64_t k = 0; k < nr[v]; k++) {
            double e = fabs(fast[v][k] - ref[v][k]);
            if (!(e <= err)) err = e;
        }
        if (!(err / scale <= *max_err)) *max_err = err / scale;
    }
    for (int v = 0; v < MAXV; v++) {
        free(fast[v]);
        free(ref[v]);
    }
    return st;
}
