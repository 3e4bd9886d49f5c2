/* test_optim.c: Adam, AdamW and Adamax (optim/adam.c).
 *
 * The oracle is an independent re-computation, in double and one element at a time, of the
 * formulas documented in cf_optim.h (bias correction, where eps goes, L2 versus decoupled
 * decay, Adamax's max, warmup, clipping), run beside the optimizer over several steps on a
 * small parameter set whose gradients the test writes itself. f64 sets must agree to rounding;
 * f32 sets (moments kept in f32) to f32 precision. Beside it: closed forms of the first update,
 * clipping, refusal of non-finite gradients, the alignment gaps, and bad options.
 *
 * python3 with torch is not installed on the machine these tests were written on, so no
 * numbers from torch are hard-coded; the closed-form first step (p -= lr * g / (|g| + eps) for
 * Adam and Adamax) stands in as a check that does not share the oracle's code.
 */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cincflow.h"

/* ---- a small parameter set and its gradients ------------------------------------------- */

/* Three parameters of 6, 3 and 1 elements: the 64-byte alignment leaves gaps after each. */
#define N_REF 10

static cf_params *make_set(cf_dtype dtype)
{
    cf_params *ps = cf_params_new(dtype);
    ck_assert_ptr_nonnull(ps);
    ck_assert_ptr_nonnull(cf_params_add(ps, "layer.weight", 2, (int64_t[]){2, 3}));
    ck_assert_ptr_nonnull(cf_params_add(ps, "layer.bias", 1, (int64_t[]){3}));
    ck_assert_ptr_nonnull(cf_params_add(ps, "head.scale", 1, (int64_t[]){1}));
    int e = 0;
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *t = cf_params_at(ps, i);
        for (int64_t j = 0; j < t->numel; j++, e++)
            cf_tensor_set(t, j, (e % 2 ? -1.0 : 1.0) * (0.3 + 0.17 * e));
    }
    ck_assert_int_eq(e, N_REF);
    return ps;
}

/* Flat-buffer index of the e-th learnable element (gaps skipped). */
static size_t flat_index(const cf_params *ps, int e)
{
    for (int i = 0; i < cf_params_count(ps); i++) {
        const cf_tensor *t = cf_params_at(ps, i);
        if (e < t->numel) return cf_params_offset(ps, i) + (size_t)e;
        e -= (int)t->numel;
    }
    ck_abort_msg("element %d past the set", e);
    return 0;
}

/* Writes the gradients of step `step` and copies them (as stored) into g[]: a pull towards a
 * target, a wave that changes sign between steps, one tiny gradient (where eps matters) and
 * one that is always zero. */
static void write_grads(cf_params *ps, int step, double *g)
{
    cf_dtype dt = cf_params_dtype(ps);
    void *data = cf_params_data(ps), *grad = cf_params_grad(ps);
    for (int e = 0; e < N_REF; e++) {
        size_t k = flat_index(ps, e);
        double p = cf_buf_get(dt, data, (int64_t)k);
        double value = (p - 0.1 * e) + 0.8 * sin(0.9 * e + 1.7 * step);
        if (e == 4) value = 3e-7 * (step % 2 ? -1 : 1);
        if (e == 7) value = 0;
        cf_buf_set(dt, grad, (int64_t)k, value);
        g[e] = cf_buf_get(dt, grad, (int64_t)k);
    }
}

/* ---- the oracle ------------------------------------------------------------------------ */

typedef struct ref_state {
    double p[N_REF], m[N_REF], v[N_REF];
} ref_state;

/* One update t (1-based) from gradients g, written from cf_optim.h's formulas. */
static void ref_step(const cf_adam_opts *o, int64_t t, ref_state *s, const double *g_in)
{
    double lr = o->lr;
    if (o->warmup_steps > 0 && t < o->warmup_steps) lr = o->lr * (double)t / o->warmup_steps;
    double g[N_REF], norm = 0;
    for (int e = 0; e < N_REF; e++) norm += g_in[e] * g_in[e];
    norm = sqrt(norm);
    for (int e = 0; e < N_REF; e++)
        g[e] = o->clip_norm > 0 && norm > o->clip_norm ? g_in[e] * o->clip_norm / (norm + 1e-6)
                                                       : g_in[e];
    double b1 = o->beta1, b2 = o->beta2, bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    for (int e = 0; e < N_REF; e++) {
        double p = s->p[e], ge = g[e];
        switch (o->kind) {
        case CF_OPTIM_KIND_ADAM:
            ge += o->weight_decay * p;
            s->m[e] = b1 * s->m[e] + (1 - b1) * ge;
            s->v[e] = b2 * s->v[e] + (1 - b2) * ge * ge;
            s->p[e] = p - lr * (s->m[e] / bc1) / (sqrt(s->v[e] / bc2) + o->eps);
            break;
        case CF_OPTIM_KIND_ADAMW:
            s->m[e] = b1 * s->m[e] + (1 - b1) * ge;
            s->v[e] = b2 * s->v[e] + (1 - b2) * ge * ge;
            s->p[e] = p - lr * (s->m[e] / bc1) / (sqrt(s->v[e] / bc2) + o->eps) -
                      lr * o->weight_decay * p;
            break;
        case CF_OPTIM_KIND_ADAMAX:
            ge += o->weight_decay * p;
            s->m[e] = b1 * s->m[e] + (1 - b1) * ge;
            s->v[e] = fmax(b2 * s->v[e], fabs(ge) + o->eps);
            s->p[e] = p - lr / bc1 * s->m[e] / s->v[e];
            break;
        }
    }
}

static void ref_init(ref_state *s, cf_params *ps)
{
    memset(s, 0, sizeof *s);
    for (int e = 0; e < N_REF; e++)
        s->p[e] = cf_buf_get(cf_params_dtype(ps), cf_params_data(ps), (int64_t)flat_index(ps, e));
}

static void expect_close(const char *what, int step, int e, double got, double want, double rtol,
                         double atol)
{
    ck_assert_msg(fabs(got - want) <= atol + rtol * fabs(want),
                  "%s[%d] after update %d: got %.17g, want %.17g (diff %.3g)", what, e, step, got,
                  want, fabs(got - want));
}

static void expect_matches_ref(cf_adam *opt, cf_params *ps, const ref_state *s, int step,
                               double rtol, double atol)
{
    cf_dtype dt = cf_params_dtype(ps);
    for (int e = 0; e < N_REF; e++) {
        int64_t k = (int64_t)flat_index(ps, e);
        expect_close("p", step, e, cf_buf_get(dt, cf_params_data(ps), k), s->p[e], rtol, atol);
        expect_close("m", step, e, cf_buf_get(dt, cf_adam_m(opt), k), s->m[e], rtol, atol);
        expect_close("v", step, e, cf_buf_get(dt, cf_adam_v(opt), k), s->v[e], rtol, atol);
    }
}

/* ---- against the oracle ---------------------------------------------------------------- */

static const cf_optim_kind kinds[] = {CF_OPTIM_KIND_ADAM, CF_OPTIM_KIND_ADAMW,
                                      CF_OPTIM_KIND_ADAMAX};
static const char *kind_names[] = {"Adam", "AdamW", "Adamax"};

/* Loop index: kind (3) times dtype (2) times clipping (2). Non-default betas catch a swap;
 * eps 1e-6 makes its placement visible on the tiny gradient; warmup spans the first 3 of 8
 * updates. */
START_TEST(test_matches_formulas)
{
    cf_optim_kind kind = kinds[_i % 3];
    cf_dtype dt = (_i / 3) % 2 ? CF_F32 : CF_F64;
    bool clip = _i >= 6;
    cf_params *ps = make_set(dt);
    cf_adam_opts o = {.kind = kind,
                      .lr = 0.05,
                      .beta1 = 0.8,
                      .beta2 = 0.95,
                      .eps = 1e-6,
                      .weight_decay = kind == CF_OPTIM_KIND_ADAMW ? 0.3 : 0.1,
                      .warmup_steps = 3,
                      .clip_norm = clip ? 1.0 : 0};
    cf_adam *opt = cf_adam_new(ps, &o);
    ck_assert_msg(opt, "%s", cf_last_error());
    ref_state s;
    ref_init(&s, ps);
    double rtol = dt == CF_F64 ? 1e-12 : 2e-5, atol = dt == CF_F64 ? 1e-15 : 1e-9;
    int n_clipped = 0;
    for (int step = 1; step <= 8; step++) {
        double g[N_REF];
        write_grads(ps, step, g);
        cf_step_info info;
        ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
        ck_assert(!info.skipped);
        ck_assert_double_eq_tol(info.lr, 0.05 * fmin(1.0, step / 3.0), 1e-15);
        n_clipped += info.clipped;
        ref_step(&o, step, &s, g);
        expect_matches_ref(opt, ps, &s, step, rtol, atol);
        ck_assert_int_eq(cf_adam_step_count(opt), step);
    }
    if (clip) ck_assert_msg(n_clipped > 0, "%s: clip_norm 1 never clipped", kind_names[_i % 3]);
    ck_assert_int_eq(cf_adam_skipped_count(opt), 0);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* The first update in closed form: m^ = g and sqrt(v^) = |g| (u = |g| + eps for Adamax), so
 * every element moves by lr * g / (|g| + eps), whatever the betas. */
START_TEST(test_first_step_closed_form)
{
    cf_optim_kind kind = _i ? CF_OPTIM_KIND_ADAMAX : CF_OPTIM_KIND_ADAM;
    cf_params *ps = cf_params_new(CF_F64);
    cf_tensor *w = cf_params_add(ps, "w", 1, (int64_t[]){4});
    const double p0[4] = {1.0, -2.0, 0.5, 3.0}, g[4] = {0.25, -4.0, 1e-7, 0.0};
    for (int j = 0; j < 4; j++) {
        cf_tensor_set(w, j, p0[j]);
        ((double *)w->grad)[j] = g[j];
    }
    cf_adam *opt = cf_adam_new(ps, &(cf_adam_opts){.kind = kind, .lr = 0.01, .eps = 1e-6});
    ck_assert_int_eq(cf_adam_step(opt, NULL), CF_OK);
    for (int j = 0; j < 4; j++)
        ck_assert_double_eq_tol(cf_tensor_get(w, j), p0[j] - 0.01 * g[j] / (fabs(g[j]) + 1e-6),
                                1e-15);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

START_TEST(test_defaults_and_warmup)
{
    cf_params *ps = make_set(CF_F32);
    cf_adam *opt = cf_adam_new(ps, NULL);
    ck_assert_ptr_nonnull(opt);
    const cf_adam_opts *o = cf_adam_options(opt);
    ck_assert_int_eq(o->kind, CF_OPTIM_KIND_ADAM);
    ck_assert_double_eq(o->lr, 1e-3);
    ck_assert_double_eq(o->beta1, 0.9);
    ck_assert_double_eq(o->beta2, 0.999);
    ck_assert_double_eq(o->eps, 1e-8);
    ck_assert_double_eq(o->weight_decay, 0);
    ck_assert_double_eq(cf_adam_lr_at(opt, 1), 1e-3);
    cf_adam_free(opt);

    opt = cf_adam_new(ps, &(cf_adam_opts){.lr = 0.1, .warmup_steps = 4});
    ck_assert_double_eq_tol(cf_adam_lr_at(opt, 1), 0.025, 1e-15);
    ck_assert_double_eq_tol(cf_adam_lr_at(opt, 3), 0.075, 1e-15);
    ck_assert_double_eq(cf_adam_lr_at(opt, 4), 0.1);
    ck_assert_double_eq(cf_adam_lr_at(opt, 1000), 0.1);
    cf_adam_set_counts(opt, 2, 5);
    ck_assert_int_eq(cf_adam_step_count(opt), 2);
    ck_assert_int_eq(cf_adam_skipped_count(opt), 5);
    cf_step_info info;
    ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
    ck_assert_double_eq_tol(info.lr, 0.075, 1e-15); /* update 3 after restoring 2 */
    ck_assert_int_eq(cf_adam_step_count(opt), 3);
    ck_assert_int_eq(cf_adam_skipped_count(opt), 5);
    cf_adam_free(opt);
    cf_adam_free(NULL);
    cf_params_free(ps);
}
END_TEST

/* ---- clipping ---------------------------------------------------------------------------- */

START_TEST(test_clipping)
{
    cf_dtype dt = _i ? CF_F32 : CF_F64;
    cf_params *ps = cf_params_new(dt);
    cf_tensor *a = cf_params_add(ps, "a.weight", 1, (int64_t[]){2});
    cf_tensor *b = cf_params_add(ps, "b.weight", 2, (int64_t[]){2, 2});
    /* The norm is global: over both parameters, sqrt(1 + 4 + 4 + 16). */
    const double ga[2] = {1, -2}, gb[4] = {2, 0, 0, -4};
    const double norm = sqrt(1 + 4 + 4 + 16);
    cf_adam *opt = cf_adam_new(ps, &(cf_adam_opts){.lr = 0.01, .clip_norm = 2.5});
    for (int j = 0; j < 2; j++) cf_buf_set(dt, a->grad, j, ga[j]);
    for (int j = 0; j < 4; j++) cf_buf_set(dt, b->grad, j, gb[j]);
    cf_step_info info;
    ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
    ck_assert_double_eq_tol(info.grad_norm, norm, 1e-12);
    ck_assert(info.clipped);
    ck_assert(!info.skipped);
    double f = 2.5 / (norm + 1e-6), tol = dt == CF_F64 ? 1e-15 : 1e-6;
    double sq = 0;
    for (int j = 0; j < 2; j++) {
        double g = cf_buf_get(dt, a->grad, j);
        ck_assert_double_eq_tol(g, ga[j] * f, tol);
        sq += g * g;
    }
    for (int j = 0; j < 4; j++) {
        double g = cf_buf_get(dt, b->grad, j);
        ck_assert_double_eq_tol(g, gb[j] * f, tol);
        sq += g * g;
    }
    ck_assert_double_eq_tol(sqrt(sq), 2.5, 1e-5);
    /* The moments saw the clipped gradient: m = (1 - b1) g f. */
    size_t off_b = cf_params_offset(ps, 1);
    ck_assert_double_eq_tol(cf_buf_get(dt, cf_adam_m(opt), (int64_t)off_b + 3), 0.1 * -4 * f, tol);

    /* Below the threshold nothing is scaled. */
    cf_params_zero_grad(ps);
    cf_buf_set(dt, a->grad, 0, 0.6);
    cf_buf_set(dt, b->grad, 1, 0.8);
    ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
    ck_assert(!info.clipped);
    ck_assert_double_eq_tol(info.grad_norm, 1.0, 1e-7);
    ck_assert_double_eq_tol(cf_buf_get(dt, a->grad, 0), 0.6, 1e-7);
    ck_assert_double_eq_tol(cf_buf_get(dt, b->grad, 1), 0.8, 1e-7);
    cf_adam_free(opt);

    /* Without clip_norm, a large norm is reported and left alone. */
    opt = cf_adam_new(ps, NULL);
    cf_buf_set(dt, a->grad, 0, 300);
    ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
    ck_assert(!info.clipped);
    ck_assert_double_eq_tol(info.grad_norm, sqrt(300.0 * 300 + 0.64), 1e-4);
    ck_assert_double_eq(cf_buf_get(dt, a->grad, 0), 300);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* f64 gradients whose squares overflow are finite: the norm is still reported and used. */
START_TEST(test_huge_f64_gradient_is_not_skipped)
{
    cf_params *ps = cf_params_new(CF_F64);
    cf_tensor *w = cf_params_add(ps, "w", 1, (int64_t[]){2});
    ((double *)w->grad)[0] = 3e200;
    ((double *)w->grad)[1] = -4e200;
    cf_adam *opt = cf_adam_new(ps, &(cf_adam_opts){.lr = 0.01, .clip_norm = 1});
    cf_step_info info;
    ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
    ck_assert(!info.skipped && info.clipped);
    ck_assert_double_eq_tol(info.grad_norm / 5e200, 1.0, 1e-14);
    ck_assert_double_eq_tol(((double *)w->grad)[0], 0.6, 1e-12);
    ck_assert_double_eq_tol(cf_tensor_get(w, 0), -0.01, 1e-9);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* ---- non-finite gradients ---------------------------------------------------------------- */

/* Loop index: NaN, +Inf, -Inf, each for f32 and f64; with clipping on, so a skipped step must
 * not scale the gradient either. */
START_TEST(test_non_finite_gradient_is_refused)
{
    const double bad_values[] = {NAN, INFINITY, -INFINITY};
    double bad = bad_values[_i % 3];
    cf_dtype dt = _i >= 3 ? CF_F32 : CF_F64;
    cf_params *ps = make_set(dt);
    cf_adam *opt =
        cf_adam_new(ps, &(cf_adam_opts){.lr = 0.05, .clip_norm = 0.5, .warmup_steps = 2});
    double g[N_REF];
    for (int step = 1; step <= 3; step++) {
        write_grads(ps, step, g);
        ck_assert_int_eq(cf_adam_step(opt, NULL), CF_OK);
    }
    write_grads(ps, 4, g);
    cf_tensor *bias = cf_params_find(ps, "layer.bias");
    cf_buf_set(dt, bias->grad, 2, bad);
    cf_buf_set(dt, bias->grad, 1, bad); /* the first offending element is named: 1 */

    size_t bytes = cf_params_flat_numel(ps) * cf_dtype_size(dt);
    void *before[4] = {malloc(bytes), malloc(bytes), malloc(bytes), malloc(bytes)};
    void *bufs[4] = {cf_params_data(ps), cf_params_grad(ps), cf_adam_m(opt), cf_adam_v(opt)};
    for (int k = 0; k < 4; k++) memcpy(before[k], bufs[k], bytes);

    cf_step_info info;
    ck_assert_int_eq(cf_adam_step(opt, &info), CF_ERR_NUMERIC);
    ck_assert(info.skipped);
    ck_assert(!isfinite(info.grad_norm));
    ck_assert(isnan(bad) ? isnan(info.grad_norm) : isinf(info.grad_norm));
    ck_assert_double_eq(info.lr, 0);
    static const char *names[] = {"parameters", "gradients", "m", "v"};
    for (int k = 0; k < 4; k++)
        ck_assert_msg(memcmp(before[k], bufs[k], bytes) == 0, "the %s changed on a skipped step",
                      names[k]);
    ck_assert_int_eq(cf_adam_step_count(opt), 3);
    ck_assert_int_eq(cf_adam_skipped_count(opt), 1);
    const char *msg = cf_last_error();
    ck_assert_msg(strstr(msg, "'layer.bias'") && strstr(msg, "element 1"),
                  "message does not name the parameter and element: %s", msg);

    /* A clean gradient afterwards is update 4, with the skip still counted. */
    write_grads(ps, 4, g);
    ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
    ck_assert(!info.skipped);
    ck_assert_int_eq(cf_adam_step_count(opt), 4);
    ck_assert_int_eq(cf_adam_skipped_count(opt), 1);
    for (int k = 0; k < 4; k++) free(before[k]);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* ---- the flat buffer ----------------------------------------------------------------------- */

/* Loop index: kind times dtype. Gaps of parameters, gradients, m and v (but Adamax's u, which
 * holds eps there by its formula) stay zero over several updates with weight decay. */
START_TEST(test_gaps_stay_zero)
{
    cf_optim_kind kind = kinds[_i % 3];
    cf_dtype dt = _i >= 3 ? CF_F32 : CF_F64;
    cf_params *ps = make_set(dt);
    cf_adam *opt = cf_adam_new(
        ps, &(cf_adam_opts){.kind = kind, .lr = 0.05, .weight_decay = 0.1, .clip_norm = 0.5});
    size_t n = cf_params_flat_numel(ps);
    char *in_param = calloc(n, 1);
    for (int e = 0; e < N_REF; e++) in_param[flat_index(ps, e)] = 1;
    ck_assert_msg(memchr(in_param, 0, n), "the test set has no gaps");
    for (int step = 1; step <= 5; step++) {
        double g[N_REF];
        write_grads(ps, step, g);
        ck_assert_int_eq(cf_adam_step(opt, NULL), CF_OK);
        for (size_t k = 0; k < n; k++) {
            if (in_param[k]) continue;
            ck_assert_double_eq(cf_buf_get(dt, cf_params_data(ps), (int64_t)k), 0);
            ck_assert_double_eq(cf_buf_get(dt, cf_params_grad(ps), (int64_t)k), 0);
            ck_assert_double_eq(cf_buf_get(dt, cf_adam_m(opt), (int64_t)k), 0);
            if (kind != CF_OPTIM_KIND_ADAMAX)
                ck_assert_double_eq(cf_buf_get(dt, cf_adam_v(opt), (int64_t)k), 0);
        }
    }
    free(in_param);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* A buffer large enough for the threaded loops (OMP_NUM_THREADS=2 under CTest), against the
 * same formulas element by element. */
START_TEST(test_large_buffer)
{
    const int64_t n = 200003;
    cf_params *ps = cf_params_new(CF_F32);
    cf_tensor *w = cf_params_add(ps, "big.weight", 1, (int64_t[]){n});
    cf_tensor *b = cf_params_add(ps, "big.bias", 1, (int64_t[]){5});
    for (int64_t i = 0; i < n; i++) cf_tensor_set(w, i, 0.001 * (double)(i % 1000) - 0.5);
    cf_adam_opts o = {
        .kind = CF_OPTIM_KIND_ADAMW, .lr = 0.01, .weight_decay = 0.05, .clip_norm = 10};
    cf_adam *opt = cf_adam_new(ps, &o);
    double *p = malloc((size_t)n * sizeof *p), *m = calloc((size_t)n, sizeof *m),
           *v = calloc((size_t)n, sizeof *v), *g = malloc((size_t)n * sizeof *g);
    for (int64_t i = 0; i < n; i++) p[i] = cf_tensor_get(w, i);
    for (int t = 1; t <= 3; t++) {
        double sq = 0;
        for (int64_t i = 0; i < n; i++) {
            ((float *)w->grad)[i] = (float)sin(0.001 * (double)i * t);
            g[i] = ((float *)w->grad)[i];
            sq += g[i] * g[i];
        }
        cf_step_info info;
        ck_assert_int_eq(cf_adam_step(opt, &info), CF_OK);
        ck_assert_double_eq_tol(info.grad_norm, sqrt(sq), 1e-9 * sqrt(sq));
        ck_assert(info.clipped);
        double f = 10 / (sqrt(sq) + 1e-6), bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.999, t);
        for (int64_t i = 0; i < n; i++) {
            double gi = g[i] * f;
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            p[i] = p[i] * (1 - 0.01 * 0.05) - 0.01 * (m[i] / bc1) / (sqrt(v[i] / bc2) + 1e-8);
        }
    }
    double worst = 0;
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(cf_tensor_get(w, i) - p[i]));
    ck_assert_msg(worst < 1e-6, "largest difference %g", worst);
    for (int j = 0; j < 5; j++) ck_assert_double_eq(cf_tensor_get(b, j), 0);
    free(p), free(m), free(v), free(g);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* The norm's partial sums are added in a fixed order: the same step on 1 and on 3 threads
 * gives bit-identical norms and parameters. */
START_TEST(test_thread_count_does_not_matter)
{
    const int64_t n = 150001;
    cf_params *ps[2];
    cf_adam *opt[2];
    cf_step_info info[2];
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        ps[k] = cf_params_new(CF_F32);
        cf_tensor *w = cf_params_add(ps[k], "w", 1, (int64_t[]){n});
        for (int64_t i = 0; i < n; i++) {
            cf_tensor_set(w, i, cos(0.37 * (double)i));
            ((float *)w->grad)[i] = (float)(sin(0.011 * (double)i) * (1 + i % 7));
        }
        opt[k] = cf_adam_new(ps[k], &(cf_adam_opts){.lr = 0.01, .clip_norm = 1});
        omp_set_num_threads(k ? 3 : 1);
        ck_assert_int_eq(cf_adam_step(opt[k], &info[k]), CF_OK);
    }
    omp_set_num_threads(saved);
    ck_assert(memcmp(&info[0].grad_norm, &info[1].grad_norm, sizeof(double)) == 0);
    size_t bytes = cf_params_flat_numel(ps[0]) * sizeof(float);
    ck_assert(memcmp(cf_params_data(ps[0]), cf_params_data(ps[1]), bytes) == 0);
    for (int k = 0; k < 2; k++) {
        cf_adam_free(opt[k]);
        cf_params_free(ps[k]);
    }
}
END_TEST

/* ---- refusals -------------------------------------------------------------------------- */

static void expect_refused(cf_params *ps, cf_adam_opts o, const char *word)
{
    cf_adam *opt = cf_adam_new(ps, &o);
    ck_assert_msg(opt == NULL, "options naming '%s' were accepted", word);
    ck_assert_msg(strstr(cf_last_error(), word), "message does not name '%s': %s", word,
                  cf_last_error());
}

START_TEST(test_bad_options)
{
    cf_params *ps = make_set(CF_F32);
    expect_refused(ps, (cf_adam_opts){.lr = -1e-3}, "lr");
    expect_refused(ps, (cf_adam_opts){.lr = NAN}, "lr");
    expect_refused(ps, (cf_adam_opts){.lr = INFINITY}, "lr");
    expect_refused(ps, (cf_adam_opts){.beta1 = 1.0}, "beta1");
    expect_refused(ps, (cf_adam_opts){.beta1 = -0.1}, "beta1");
    expect_refused(ps, (cf_adam_opts){.beta2 = 1.0}, "beta2");
    expect_refused(ps, (cf_adam_opts){.beta2 = 1.5}, "beta2");
    expect_refused(ps, (cf_adam_opts){.eps = -1e-8}, "eps");
    expect_refused(ps, (cf_adam_opts){.weight_decay = -0.1}, "weight_decay");
    expect_refused(ps, (cf_adam_opts){.warmup_steps = -5}, "warmup_steps");
    expect_refused(ps, (cf_adam_opts){.clip_norm = -1}, "clip_norm");
    expect_refused(ps, (cf_adam_opts){.kind = (cf_optim_kind)7}, "kind");
    cf_params *empty = cf_params_new(CF_F32);
    expect_refused(empty, (cf_adam_opts){0}, "no parameters");
    cf_params_free(empty);
    cf_params_free(ps);
}
END_TEST

/* Adding a parameter after the optimizer was made is misuse: the step asserts. */
START_TEST(test_growing_the_set_asserts)
{
    cf_params *ps = make_set(CF_F32);
    cf_adam *opt = cf_adam_new(ps, NULL);
    cf_params_add(ps, "late.weight", 1, (int64_t[]){100});
    cf_adam_step(opt, NULL);
}
END_TEST

static Suite *optim_suite(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("adam");
    tcase_add_loop_test(tc, test_matches_formulas, 0, 12);
    tcase_add_loop_test(tc, test_first_step_closed_form, 0, 2);
    tcase_add_test(tc, test_defaults_and_warmup);
    tcase_add_loop_test(tc, test_clipping, 0, 2);
    tcase_add_test(tc, test_huge_f64_gradient_is_not_skipped);
    tcase_add_loop_test(tc, test_non_finite_gradient_is_refused, 0, 6);
    tcase_add_loop_test(tc, test_gaps_stay_zero, 0, 6);
    tcase_add_test(tc, test_large_buffer);
    tcase_add_test(tc, test_thread_count_does_not_matter);
    tcase_add_test(tc, test_bad_options);
    /* Without fork (valgrind runs), an expected abort would end the whole runner. */
    const char *fork_mode = getenv("CK_FORK");
    if (!fork_mode || strcmp(fork_mode, "no") != 0)
        tcase_add_test_raise_signal(tc, test_growing_the_set_asserts, SIGABRT);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(optim_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
