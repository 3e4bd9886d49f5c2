/* test_models.c: flow layers and models.
 *
 *  - every layer round-trips (inverse(forward(x)) = x) after its parameters were moved away
 *    from their initial values, in f64 (1e-10) and f32 (1e-5 relative);
 *  - every bijective layer's log-det equals the log|det| of its dense Jacobian, built column
 *    by column with backward passes on a tiny input and factorised by an LU written here;
 *  - whole models round-trip and their loss passes the fast gradcheck;
 *  - a model of identity layers gives the bits/dim of its closed form;
 *  - the CInC conv's parameter count and convolution counts are the poster's;
 *  - shapes that cannot work are refused with the level named.
 */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cincflow.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static void runs_snapshot(cf_op_runs *r);
static void assert_family_ran(const cf_op_runs *before, bool fast, int min);


/* Moves every parameter of a layer away from its initial value (masked weight entries stay
 * zero, so masked convs stay what they are) and marks actnorms initialised. */
static void perturb(cf_layer *l, cf_rng *rng, double scale)
{
    for (int i = 0; i < l->n_params; i++) {
        cf_tensor *p = l->params[i];
        for (int64_t k = 0; k < p->numel; k++) {
            double v = cf_tensor_get(p, k);
            if (strstr(p->name, "weight") && strstr(l->vt->kind, "conv") && v == 0.0) continue;
            cf_tensor_set(p, k, v + scale * cf_rng_normal(rng));
        }
    }
    for (int i = 0; i < l->n_state; i++)
        if (strstr(l->state[i]->name, "initialized")) cf_tensor_set(l->state[i], 0, 1.0);
}

typedef struct layer_case {
    const char *label;
    int64_t shape[3];
} layer_case;

/* Builds the layer of kind `kind` on shape in ps. */
static cf_layer *make_layer(int kind, cf_params *ps, const int64_t shape[3], cf_rng *rng)
{
    switch (kind) {
    case 0: return cf_actnorm_layer(ps, "l", shape);
    case 1: return cf_cinc_conv_layer(ps, "l", shape, rng);
    case 2: return cf_invconv1x1_layer(ps, "l", shape, rng);
    case 3: return cf_emerging_conv_layer(ps, "l", shape, rng);
    case 4: return cf_coupling_layer(ps, "l", shape, CF_COUPLING_KIND_AFFINE, 6, rng);
    case 5: return cf_coupling_layer(ps, "l", shape, CF_COUPLING_KIND_QUAD, 6, rng);
    case 6: return cf_squeeze_layer("l", shape);
    case 7: return cf_split_layer(ps, "l", shape);
    case 8: return cf_prior_layer(ps, "l", shape);
    }
    return NULL;
}
#define N_KINDS 9
static const char *kind_names[N_KINDS] = {"actnorm", "cinc",     "1x1",     "emerging", "affine",
                                          "quad",    "squeeze", "split", "prior"};

static double max_rel_diff(const cf_tensor *a, const cf_tensor *b)
{
    double m = 0, scale = 1e-30;
    for (int64_t i = 0; i < a->numel; i++) scale = fmax(scale, fabs(cf_tensor_get(b, i)));
    for (int64_t i = 0; i < a->numel; i++)
        m = fmax(m, fabs(cf_tensor_get(a, i) - cf_tensor_get(b, i)));
    return m / scale;
}

/* ---- round trips -------------------------------------------------------------------------- */

/* A copy of t in ctx: another tensor with the same values. */
static cf_tensor *copy_of(cf_ctx *ctx, const cf_tensor *t)
{
    cf_tensor *c = cf_tensor_new(ctx, t->dtype, t->ndim, t->shape);
    ck_assert_ptr_nonnull(c);
    cf_tensor_copy(c, t);
    return c;
}

/* The prior's parameter named <name>.<what> (mean, logs). */
static cf_tensor *layer_param(cf_layer *l, const char *what)
{
    for (int i = 0; i < l->n_params; i++) {
        const char *dot = strrchr(l->params[i]->name, '.');
        if (dot && strcmp(dot + 1, what) == 0) return l->params[i];
    }
    ck_abort_msg("layer %s has no parameter '%s'", l->name, what);
    return NULL;
}

/* The prior's forward added log N(x; mean, exp(logs)) per image, computed here from x. */
static void check_prior_logp(cf_layer *l, const cf_tensor *x, const cf_tensor *logp)
{
    const cf_tensor *mean = layer_param(l, "mean"), *logs = layer_param(l, "logs");
    ck_assert_ptr_nonnull(logp);
    const int64_t B = x->shape[0], img = x->numel / B;
    ck_assert_int_eq(mean->numel, img);
    for (int64_t b = 0; b < B; b++) {
        double e = 0;
        for (int64_t i = 0; i < img; i++) {
            double m = cf_tensor_get(mean, i), s = cf_tensor_get(logs, i);
            double z = (cf_tensor_get(x, b * img + i) - m) / exp(s);
            e += -0.5 * log(2 * M_PI) - s - 0.5 * z * z;
        }
        double got = cf_tensor_get(logp, b);
        ck_assert_msg(fabs(got - e) <= 1e-5 * (1 + fabs(e)), "prior log-density of image %lld: "
                      "%.10g, closed form %.10g", (long long)b, got, e);
    }
}

/* The prior's inverse without a latent draws one: at temperature 0 exactly its mean. */
static void check_prior_draw(cf_layer *l, cf_ctx *ctx, cf_dtype dt)
{
    const cf_tensor *mean = layer_param(l, "mean");
    cf_rng rng;
    cf_rng_seed(&rng, 12, 0);
    cf_flow_io io = {.batch = 2, .temperature = 0, .rng = &rng};
    ck_assert_int_eq(cf_layer_inverse(l, ctx, &io), CF_OK);
    ck_assert_int_eq(io.x->shape[0], 2);
    ck_assert_int_eq(io.x->dtype, dt);
    for (int64_t i = 0; i < io.x->numel; i++)
        ck_assert_double_eq_tol(cf_tensor_get(io.x, i), cf_tensor_get(mean, i % mean->numel),
                                1e-6);
}

START_TEST(test_layer_round_trip)
{
    int kind = _i;
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        cf_params *ps = cf_params_new(dt);
        cf_rng rng;
        cf_rng_seed(&rng, 3, (uint64_t)kind);
        int64_t shape[3] = {4, 6, 8};
        cf_layer *l = make_layer(kind, ps, shape, &rng);
        ck_assert_msg(l != NULL, "%s: %s", kind_names[kind], cf_last_error());
        perturb(l, &rng, 0.05);
        cf_ctx *ctx = cf_ctx_new(0);
        cf_tensor *x = cf_tensor_new_v(ctx, dt, 3, shape[0], shape[1], shape[2]);
        cf_tensor_fill_uniform(x, &rng, -1, 1);
        cf_tensor *x0 = copy_of(ctx, x); /* x as it was, in a tensor no layer sees */
        cf_flow_io io = {.x = x, .batch = 3};
        ck_assert_int_eq(cf_layer_forward(l, ctx, &io), CF_OK);
        ck_assert_int_eq(io.x->shape[1], l->out_shape[0]);
        ck_assert_int_eq(io.x->shape[3], l->out_shape[2]);
        /* The inverse gets copies of what forward left (the current tensor and the latents),
         * so that a layer handing back the tensor it was given (the prior's latent is its
         * input) cannot pass by comparing x with itself. */
        io.x = copy_of(ctx, io.x);
        for (int k = 0; k < io.n_latents; k++) io.latents[k] = copy_of(ctx, io.latents[k]);
        const bool factors_out = kind == 7 || kind == 8; /* split, prior */
        ck_assert_int_eq(io.n_latents, factors_out ? 1 : 0);
        if (kind == 8) check_prior_logp(l, x0, io.logp);
        ck_assert_int_eq(cf_layer_inverse(l, ctx, &io), CF_OK);
        ck_assert_ptr_ne(io.x, x);
        double err = max_rel_diff(io.x, x0);
        double tol = dt == CF_F64 ? 1e-10 : 1e-5;
        ck_assert_msg(err <= tol, "%s %s: round trip error %g", kind_names[kind],
                      cf_dtype_name(dt), err);
        ck_assert_int_eq(io.n_latents, 0);
        if (kind == 8) check_prior_draw(l, ctx, dt);
        cf_ctx_free(ctx);
        cf_layer_free(l);
        cf_params_free(ps);
    }
}
END_TEST

/* A coupling layer's inverse (always without a tape) runs its networks on groups of images (23
 * images of 14x14 at width 128 go as 8 + 8 + 7 on one thread) in reused arena memory: it gives
 * back the forward's input, the same x as the inverse of each image on its own, and uses less
 * arena than one hidden activation of the whole batch. */
START_TEST(test_grouped_inverse_matches_whole_batch)
{
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        cf_params *ps = cf_params_new(dt);
        cf_rng rng;
        cf_rng_seed(&rng, 5, (uint64_t)dt);
        int64_t shape[3] = {14, 14, 4};
        cf_layer *l = cf_coupling_layer(ps, "c", shape, CF_COUPLING_KIND_QUAD, 128, &rng);
        ck_assert_msg(l != NULL, "%s", cf_last_error());
        perturb(l, &rng, 0.05);
        cf_ctx *ctx = cf_ctx_new(0);
        const int64_t B = 23, img = 14 * 14 * 4;
        /* y = forward(x0), copied off the tape: the inverse must give x0 back. */
        cf_tensor *x0 = cf_tensor_new_v(ctx, dt, B, 14, 14, 4);
        cf_tensor_fill_uniform(x0, &rng, -1, 1);
        cf_flow_io fwd = {.x = x0, .batch = B};
        ck_assert_int_eq(cf_layer_forward(l, ctx, &fwd), CF_OK);
        cf_tensor *y = cf_tensor_new_v(ctx, dt, B, 14, 14, 4);
        cf_tensor_copy(y, fwd.x);
        ck_assert_msg(max_rel_diff(y, x0) > 1e-3, "the coupling did not change its input");
        cf_flow_io io = {.x = y, .batch = B};
        const size_t before = cf_ctx_arena_used(ctx);
        ck_assert_int_eq(cf_layer_inverse(l, ctx, &io), CF_OK);
        const size_t grouped_bytes = cf_ctx_arena_used(ctx) - before;
        cf_tensor *x = io.x;
        ck_assert_msg(grouped_bytes < (size_t)(B * 14 * 14 * 128) * cf_dtype_size(dt),
                      "arena: %zu bytes", grouped_bytes);
        const double back = max_rel_diff(x, x0);
        ck_assert_msg(back <= (dt == CF_F64 ? 1e-12 : 1e-5), "%s: grouped inverse against the "
                      "forward's input %g", cf_dtype_name(dt), back);
        double worst = 0;
        for (int64_t b = 0; b < B; b++) {
            cf_tensor *yb = cf_tensor_new_v(ctx, dt, 1, 14, 14, 4);
            cf_tensor *xb = cf_tensor_new_v(ctx, dt, 1, 14, 14, 4);
            for (int64_t i = 0; i < img; i++) {
                cf_tensor_set(yb, i, cf_tensor_get(y, b * img + i));
                cf_tensor_set(xb, i, cf_tensor_get(x, b * img + i));
            }
            cf_flow_io one = {.x = yb, .batch = 1};
            ck_assert_int_eq(cf_layer_inverse(l, ctx, &one), CF_OK);
            const double d = max_rel_diff(xb, one.x);
            if (d > worst) worst = d;
        }
        ck_assert_msg(worst <= (dt == CF_F64 ? 1e-12 : 1e-5), "%s: grouped against one image "
                      "at a time %g", cf_dtype_name(dt), worst);
        cf_ctx_free(ctx);
        cf_layer_free(l);
        cf_params_free(ps);
    }
}
END_TEST

/* ---- log-det against the dense Jacobian --------------------------------------------------- */

/* log|det| of an n x n matrix by LU with partial pivoting (written here, so the check does not
 * share code with the library). */
static double logabsdet(double *a, int n)
{
    double s = 0;
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[p * n + c])) p = r;
        if (p != c)
            for (int k = 0; k < n; k++) {
                double t = a[c * n + k];
                a[c * n + k] = a[p * n + k], a[p * n + k] = t;
            }
        s += log(fabs(a[c * n + c]));
        for (int r = c + 1; r < n; r++) {
            double f = a[r * n + c] / a[c * n + c];
            for (int k = c; k < n; k++) a[r * n + k] -= f * a[c * n + k];
        }
    }
    return s;
}

START_TEST(test_layer_logdet_is_dense_slogdet)
{
    int kind = _i; /* the bijective kinds: actnorm .. squeeze */
    cf_params *ps = cf_params_new(CF_F64);
    cf_rng rng;
    cf_rng_seed(&rng, 8, (uint64_t)kind);
    int64_t shape[3] = {4, 4, 4};
    int D = 64;
    cf_layer *l = make_layer(kind, ps, shape, &rng);
    ck_assert_ptr_nonnull(l);
    perturb(l, &rng, 0.1);
    cf_ctx *ctx = cf_ctx_new(0);
    double *J = calloc((size_t)(D * D), sizeof(double));
    double logdet = 0;
    for (int row = 0; row < D; row++) {
        cf_ctx_reset(ctx);
        cf_rng data;
        cf_rng_seed(&data, 99, 0); /* the same x every pass */
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 1, 4, 4, 4);
        cf_tensor_fill_uniform(x, &data, -1, 1);
        cf_tensor_requires_grad(ctx, x);
        cf_flow_io io = {.x = x};
        ck_assert_int_eq(cf_layer_forward(l, ctx, &io), CF_OK);
        if (row == 0) logdet = io.logdet ? cf_tensor_get(io.logdet, 0) : 0.0;
        ck_assert_int_eq(io.x->numel, D);
        cf_tensor *seed = cf_tensor_new(ctx, CF_F64, io.x->ndim, io.x->shape);
        cf_tensor_set(seed, row, 1.0);
        ck_assert_int_eq(cf_backward_ex(ctx, io.x, seed, 0), CF_OK);
        for (int k = 0; k < D; k++) J[row * D + k] = cf_buf_get(CF_F64, x->grad, k);
    }
    double dense = logabsdet(J, D);
    ck_assert_msg(fabs(dense - logdet) <= 1e-8 * (1 + fabs(dense)),
                  "%s: layer log-det %.12g, dense %.12g", kind_names[kind], logdet, dense);
    free(J);
    cf_ctx_free(ctx);
    cf_layer_free(l);
    cf_params_free(ps);
}
END_TEST

/* ---- whole models -------------------------------------------------------------------------- */

static cf_flow *small_flow(cf_dtype dt, cf_invconv_kind conv, cf_coupling_kind coupling)
{
    cf_flow_config cfg = {.height = 8, .width = 8, .channels = 1, .levels = 2, .depth = 2,
                          .hidden = 8, .conv = conv, .coupling = coupling, .seed = 5};
    cf_flow *f = cf_flow_new(&cfg, dt);
    ck_assert_msg(f != NULL, "%s", cf_last_error());
    return f;
}

static void perturb_flow(cf_flow *f, double scale)
{
    cf_rng rng;
    cf_rng_seed(&rng, 77, 0);
    for (int i = 0; i < cf_flow_layer_count(f); i++) perturb(cf_flow_layer(f, i), &rng, scale);
}

START_TEST(test_model_round_trip_all_combinations)
{
    for (int conv = 0; conv < 3; conv++)
        for (int coupling = 0; coupling < 2; coupling++)
            for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
                cf_flow *f = small_flow(dt, conv, coupling);
                perturb_flow(f, 0.05);
                cf_ctx *ctx = cf_ctx_new(0);
                cf_rng rng;
                cf_rng_seed(&rng, 1, 0);
                cf_tensor *x = cf_tensor_new_v(ctx, dt, 2, 8, 8, 1);
                cf_tensor_fill_uniform(x, &rng, -0.5, 0.5);
                cf_flow_io io;
                ck_assert_int_eq(cf_flow_encode(f, ctx, x, &io), CF_OK);
                ck_assert_int_eq(io.n_latents, 2);
                cf_tensor *back;
                ck_assert_int_eq(cf_flow_decode(f, ctx, &io, &back), CF_OK);
                double err = max_rel_diff(back, x);
                ck_assert_msg(err <= (dt == CF_F64 ? 1e-10 : 1e-5),
                              "conv %d coupling %d %s: round trip %g", conv, coupling,
                              cf_dtype_name(dt), err);
                /* Sampling gives finite images of the right shape. */
                cf_tensor *s;
                ck_assert_int_eq(cf_flow_sample(f, ctx, 3, 0.7, &rng, &s), CF_OK);
                ck_assert_int_eq(s->shape[0], 3);
                for (int64_t i = 0; i < s->numel; i++) ck_assert(isfinite(cf_tensor_get(s, i)));
                cf_ctx_free(ctx);
                cf_flow_free(f);
            }
}
END_TEST

typedef struct model_graph {
    cf_flow *flow;
    cf_tensor *x;
} model_graph;

static cf_status model_loss(cf_ctx *ctx, void *user, int *n_out, cf_tensor **out)
{
    model_graph *g = user;
    *n_out = 1;
    out[0] = cf_flow_bpd(g->flow, ctx, g->x);
    return cf_ctx_status(ctx);
}

START_TEST(test_model_fast_gradcheck)
{
    for (int conv = 0; conv < 3; conv++) {
        cf_flow *f = small_flow(CF_F64, conv, conv == 1 ? CF_COUPLING_KIND_AFFINE
                                                        : CF_COUPLING_KIND_QUAD);
        perturb_flow(f, 0.05);
        model_graph g = {f, cf_tensor_alloc(CF_F64, 4, (int64_t[]){2, 8, 8, 1})};
        cf_rng rng;
        cf_rng_seed(&rng, 4, 0);
        cf_tensor_fill_uniform(g.x, &rng, -0.5, 0.5);
        cf_params *ps = cf_flow_params(f);
        int n = cf_params_count(ps);
        cf_tensor **wrt = malloc((size_t)n * sizeof *wrt);
        for (int i = 0; i < n; i++) wrt[i] = cf_params_at(ps, i);
        cf_gradcheck_opts opts = {.fast = true, .n_directions = 6};
        cf_gradcheck_result res;
        cf_status st = cf_gradcheck_graph(model_loss, &g, n, wrt, &opts, &res);
        ck_assert_msg(st == CF_OK, "conv %d: %s", conv, res.message);
        free(wrt);
        cf_tensor_free(g.x);
        cf_flow_free(f);
    }
}
END_TEST

/* Identity layers: actnorm at zero, identity convs, zero coupling and prior outputs. What is
 * left is each coupling scaling its transformed channels by sigmoid(2), and standard normal
 * priors; the closed form follows the values through squeezes, scalings and splits with its
 * own index arithmetic. */
START_TEST(test_identity_model_closed_form)
{
    int L = 2, K = 3;
    cf_flow_config cfg = {.height = 4, .width = 4, .channels = 1, .levels = L, .depth = K,
                          .hidden = 4, .conv = CF_INVCONV_KIND_CINC,
                          .coupling = CF_COUPLING_KIND_QUAD};
    cf_flow *f = cf_flow_new(&cfg, CF_F64);
    ck_assert_ptr_nonnull(f);
    cf_params *ps = cf_flow_params(f);
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *p = cf_params_at(ps, i);
        cf_tensor_fill(p, 0.0);
        if (strstr(p->name, ".conv.weight")) { /* identity CInC weight: centre tap = I */
            int64_t C = p->shape[2];
            for (int64_t c = 0; c < C; c++) cf_tensor_set(p, ((2 * 3 + 2) * C + c) * C + c, 1.0);
        }
    }
    for (int i = 0; i < cf_params_state_count(ps); i++) cf_tensor_fill(cf_params_state_at(ps, i), 1.0);

    cf_ctx *ctx = cf_ctx_new(0);
    cf_rng rng;
    cf_rng_seed(&rng, 21, 0);
    int B = 2;
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, B, 4, 4, 1);
    for (int64_t i = 0; i < x->numel; i++)
        cf_tensor_set(x, i, (double)cf_rng_below(&rng, 256) / 256.0 - 0.5 + cf_rng_uniform(&rng) / 256.0);
    cf_tensor *bpd = cf_flow_bpd(f, ctx, x);
    ck_assert_ptr_nonnull(bpd);

    double logs2 = -log1p(exp(-2.0)), s2 = exp(logs2), total = 0;
    for (int b = 0; b < B; b++) {
        /* Current tensor: values and their scaling exponents, (H, W, C) of one image. */
        int H = 4, W = 4, C = 1;
        double v[64], nv[64];
        for (int i = 0; i < 16; i++) v[i] = cf_tensor_get(x, b * 16 + i);
        double logp = 0;
        for (int lv = 0; lv < L; lv++) {
            for (int i = 0; i < H / 2; i++) /* squeeze: channel c*4 + dy*2 + dx */
                for (int j = 0; j < W / 2; j++)
                    for (int c = 0; c < C; c++)
                        for (int dy = 0; dy < 2; dy++)
                            for (int dx = 0; dx < 2; dx++) {
                                int src = ((2 * i + dy) * W + 2 * j + dx) * C + c;
                                int dst = (i * (W / 2) + j) * (4 * C) + c * 4 + dy * 2 + dx;
                                nv[dst] = v[src];
                            }
            H /= 2, W /= 2, C *= 4;
            memcpy(v, nv, sizeof v);
            for (int p = 0; p < H * W; p++) /* K couplings scale channels >= C/4 */
                for (int c = C / 4; c < C; c++) v[p * C + c] *= pow(s2, K);
            if (lv < L - 1) { /* split: the second half goes to N(0, 1) */
                int kept = C / 2, n = 0;
                for (int p = 0; p < H * W; p++)
                    for (int c = 0; c < C; c++) {
                        if (c >= kept)
                            logp += -0.5 * log(2 * M_PI) - 0.5 * v[p * C + c] * v[p * C + c];
                        else
                            nv[n++] = v[p * C + c];
                    }
                C = kept;
                memcpy(v, nv, sizeof v);
            }
        }
        for (int i = 0; i < H * W * C; i++) logp += -0.5 * log(2 * M_PI) - 0.5 * v[i] * v[i];
        /* log-dets: K scalings of the last 3/4 of the channels at each level */
        int scalings = 0, H2 = 4, W2 = 4, C2 = 1;
        for (int lv = 0; lv < L; lv++) {
            H2 /= 2, W2 /= 2, C2 *= 4;
            scalings += K * H2 * W2 * (C2 - C2 / 4);
            if (lv < L - 1) C2 /= 2;
        }
        logp += scalings * logs2;
        total += -(logp - 16 * log(256.0)) / (16 * M_LN2);
    }
    double expect = total / B;
    ck_assert_msg(fabs(cf_tensor_get(bpd, 0) - expect) <= 1e-10, "bpd %.12f, closed form %.12f",
                  cf_tensor_get(bpd, 0), expect);
    cf_ctx_free(ctx);
    cf_flow_free(f);
}
END_TEST

/* One training pass of f on seeded uniform images (4, 8, 8, 1): the parameter gradients as
 * doubles into g (n values), the loss and the arena's peak. recompute 0: plain tape, 1:
 * recomputed steps, 2: recomputed from inputs rebuilt with the inverses. */
static void gradients_of(cf_flow *f, cf_dtype dt, int recompute, uint64_t seed, double *g,
                         double *loss, size_t *peak)
{
    cf_flow_set_recompute(f, recompute >= 1);
    cf_flow_set_rebuild_inputs(f, recompute == 2);
    cf_params *ps = cf_flow_params(f);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0);
    cf_tensor *x = cf_tensor_new_v(ctx, dt, 4, 8, 8, 1);
    cf_tensor_fill_uniform(x, &rng, -0.5, 0.5);
    cf_params_zero_grad(ps);
    cf_tensor *bpd = cf_flow_bpd(f, ctx, x);
    ck_assert_msg(bpd, "%s", cf_ctx_error(ctx));
    ck_assert_msg(cf_backward(ctx, bpd) == CF_OK, "%s", cf_ctx_error(ctx));
    *loss = cf_tensor_get(bpd, 0);
    *peak = cf_ctx_arena_peak(ctx);
    for (size_t i = 0; i < cf_params_flat_numel(ps); i++)
        g[i] = cf_buf_get(dt, cf_params_grad(ps), (int64_t)i);
    cf_ctx_free(ctx);
    cf_flow_set_recompute(f, false);
    cf_flow_set_rebuild_inputs(f, false);
}

/* The largest |a - ref| over n values; *scale gets the largest |ref|. */
static double max_abs_diff(const double *a, const double *ref, size_t n, double *scale)
{
    double err = 0;
    *scale = 0;
    for (size_t i = 0; i < n; i++) {
        *scale = fmax(*scale, fabs(ref[i]));
        err = fmax(err, fabs(a[i] - ref[i]));
    }
    return err;
}

/* A small perturbed CInC + quad flow and a batch of 7 8x8x1 images drawn with seed. */
static cf_flow *perturbed_flow_and_batch(cf_dtype dt, uint64_t seed, cf_tensor **x)
{
    cf_flow *f = small_flow(dt, CF_INVCONV_KIND_CINC, CF_COUPLING_KIND_QUAD);
    perturb_flow(f, 0.05);
    *x = cf_tensor_alloc(dt, 4, (int64_t[]){7, 8, 8, 1});
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0);
    cf_tensor_fill_uniform(*x, &rng, -0.5, 0.5);
    return f;
}

/* The gradients and loss of cf_flow_train_step on x, as doubles; the arena's peak. */
static void train_step_of(cf_flow *f, const cf_tensor *x, int64_t micro, double *g, double *loss,
                          size_t *peak)
{
    cf_params *ps = cf_flow_params(f);
    cf_ctx *ctx = cf_ctx_new(0);
    ck_assert_msg(cf_flow_train_step(f, ctx, x, micro, loss) == CF_OK, "%s", cf_ctx_error(ctx));
    ck_assert_int_eq(cf_ctx_arena_used(ctx), 0); /* reset after the last micro-batch */
    *peak = cf_ctx_arena_peak(ctx);
    for (size_t i = 0; i < cf_params_flat_numel(ps); i++)
        g[i] = cf_buf_get(cf_params_dtype(ps), cf_params_grad(ps), (int64_t)i);
    cf_ctx_free(ctx);
}

/* A step in micro-batches (7 images as 3 + 3 + 1, and one at a time) has the whole batch's
 * loss and gradients, in less arena; gradients left from before are zeroed; a flow whose
 * actnorms are not initialised takes the whole batch at once, so they initialise from all of
 * it. */
START_TEST(test_train_step_micro_batches)
{
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1); /* the one-thread path (test_train_step_threads: the other) */
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        const double tol = dt == CF_F64 ? 1e-11 : 2e-5;
        cf_tensor *x;
        cf_flow *f = perturbed_flow_and_batch(dt, 31, &x);
        size_t n = cf_params_flat_numel(cf_flow_params(f)), peak[3];
        double *g[3], loss[3], scale;
        const int64_t micro[3] = {0, 3, 1};
        for (int m = 0; m < 3; m++) {
            g[m] = malloc(n * sizeof(double));
            cf_buf_set(dt, cf_params_grad(cf_flow_params(f)), 0, 123.0); /* stale: zeroed */
            train_step_of(f, x, micro[m], g[m], &loss[m], &peak[m]);
        }
        for (int m = 1; m < 3; m++) {
            double err = max_abs_diff(g[m], g[0], n, &scale);
            ck_assert_msg(err <= tol * scale, "%s, micro-batches of %lld: gradients differ by "
                          "%g (scale %g)", cf_dtype_name(dt), (long long)micro[m], err, scale);
            ck_assert_msg(fabs(loss[m] - loss[0]) <= tol * fabs(loss[0]), "%s: loss %.12g, "
                          "whole batch %.12g", cf_dtype_name(dt), loss[m], loss[0]);
            ck_assert_uint_lt(peak[m], peak[0]);
        }
        /* Fresh flows (actnorms to initialise), the same seed: micro-batches of 2 or not. */
        cf_flow *a = small_flow(dt, CF_INVCONV_KIND_CINC, CF_COUPLING_KIND_QUAD);
        cf_flow *b = small_flow(dt, CF_INVCONV_KIND_CINC, CF_COUPLING_KIND_QUAD);
        train_step_of(a, x, 0, g[0], &loss[0], &peak[0]);
        train_step_of(b, x, 2, g[1], &loss[1], &peak[1]);
        ck_assert_msg(loss[0] == loss[1], "initialising step: loss %.12g against %.12g", loss[1],
                      loss[0]);
        for (size_t i = 0; i < n; i++) {
            ck_assert(cf_buf_get(dt, cf_params_data(cf_flow_params(a)), (int64_t)i) ==
                      cf_buf_get(dt, cf_params_data(cf_flow_params(b)), (int64_t)i));
            ck_assert(g[0][i] == g[1][i]);
        }
        for (int m = 0; m < 3; m++) free(g[m]);
        cf_tensor_free(x);
        cf_flow_free(a);
        cf_flow_free(b);
        cf_flow_free(f);
    }
    omp_set_num_threads(threads);
}
END_TEST

/* Several threads splitting the batch (each its own tape, gradients added in thread order)
 * give the one-thread loss and gradients up to rounding, the same bits on every run, and
 * whatever number of parts each thread gets (7 images: 3 threads x parts of 2, the last of 1;
 * 2 threads x 4 + 3; 5 threads x 1 with two idle); a thread's failure fails the step with
 * its message and leaves the flow usable. */
START_TEST(test_train_step_threads)
{
    const int threads = omp_get_max_threads();
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        const double tol = dt == CF_F64 ? 1e-11 : 2e-5;
        cf_tensor *x;
        cf_flow *f = perturbed_flow_and_batch(dt, 32, &x);
        const size_t n = cf_params_flat_numel(cf_flow_params(f));
        double *g0 = malloc(n * sizeof(double)), *g = malloc(n * sizeof(double)),
               *again = malloc(n * sizeof(double)), loss0, loss, loss_again, scale;
        size_t peak0, peak;
        omp_set_num_threads(1);
        train_step_of(f, x, 0, g0, &loss0, &peak0);
        const struct { int threads; int64_t micro; } cases[] = {{3, 6}, {2, 0}, {5, 1}, {2, 7}};
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            omp_set_num_threads(cases[c].threads);
            train_step_of(f, x, cases[c].micro, g, &loss, &peak);
            double err = max_abs_diff(g, g0, n, &scale);
            ck_assert_msg(err <= tol * scale, "%s, %d threads, micro %lld: gradients differ by "
                          "%g (scale %g)", cf_dtype_name(dt), cases[c].threads,
                          (long long)cases[c].micro, err, scale);
            ck_assert_msg(fabs(loss - loss0) <= tol * fabs(loss0), "%s: loss %.12g, one "
                          "thread %.12g", cf_dtype_name(dt), loss, loss0);
            ck_assert_uint_gt(peak, 0); /* the threads' arenas are counted */
            cf_buf_set(dt, cf_params_grad(cf_flow_params(f)), 0, 123.0); /* stale: zeroed */
            train_step_of(f, x, cases[c].micro, again, &loss_again, &peak);
            ck_assert(loss_again == loss);
            ck_assert(memcmp(again, g, n * sizeof(double)) == 0);
        }
        /* An arena limit too small for a thread's part: the step fails naming the thread. */
        omp_set_num_threads(2);
        cf_flow_trim(f); /* the threads' contexts, with the memory they reserved */
        cf_ctx *small = cf_ctx_new(4096);
        ck_assert_int_ne(cf_flow_train_step(f, small, x, 0, &loss), CF_OK);
        ck_assert_msg(strstr(cf_ctx_error(small), "training thread") &&
                      strstr(cf_ctx_error(small), "arena"), "%s", cf_ctx_error(small));
        ck_assert(isnan(loss));
        cf_ctx_free(small);
        train_step_of(f, x, 0, g, &loss, &peak);
        ck_assert(max_abs_diff(g, g0, n, &scale) <= tol * scale);
        omp_set_num_threads(threads);
        free(g0);
        free(g);
        free(again);
        cf_tensor_free(x);
        cf_flow_free(f);
    }
}
END_TEST

/* Recomputing steps during backward gives the plain path's loss and gradients, and keeps
 * less on the tape. */
START_TEST(test_recompute_matches_plain)
{
    for (int conv = 0; conv < 3; conv++) {
        cf_flow *f = small_flow(CF_F32, conv, conv == 1 ? CF_COUPLING_KIND_AFFINE
                                                        : CF_COUPLING_KIND_QUAD);
        perturb_flow(f, 0.05);
        size_t n = cf_params_flat_numel(cf_flow_params(f)), peak[2];
        double *g[2] = {malloc(n * sizeof(double)), malloc(n * sizeof(double))}, loss[2], scale;
        for (int mode = 0; mode < 2; mode++)
            gradients_of(f, CF_F32, mode, 12, g[mode], &loss[mode], &peak[mode]);
        double err = max_abs_diff(g[1], g[0], n, &scale);
        ck_assert_msg(err <= 1e-5 * scale, "conv %d: gradients differ by %g (scale %g)", conv,
                      err, scale);
        ck_assert_double_eq_tol(loss[0], loss[1], 1e-6);
        ck_assert_uint_lt(peak[1], peak[0]);
        free(g[0]);
        free(g[1]);
        cf_flow_free(f);
    }
}
END_TEST

/* Rebuilding each step's input with the inverses instead of keeping it gives the gradients of
 * the plain path (to 1e-9 in f64, 1e-4 in f32, relative to the largest), for every conv kind,
 * with chains of several steps per level (outputs alternating between two buffers), and keeps
 * less on the tape than recomputation alone. */
START_TEST(test_rebuild_inputs_matches_plain)
{
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++)
        for (int conv = 0; conv < 3; conv++) {
            cf_flow_config cfg = {.height = 8, .width = 8, .channels = 1, .levels = 2, .depth = 3,
                                  .hidden = 16, .seed = 6, .conv = conv,
                                  .coupling = conv == 1 ? CF_COUPLING_KIND_AFFINE
                                                        : CF_COUPLING_KIND_QUAD};
            cf_flow *f = cf_flow_new(&cfg, dt);
            ck_assert_msg(f, "%s", cf_last_error());
            perturb_flow(f, 0.05);
            size_t n = cf_params_flat_numel(cf_flow_params(f)), peak[3];
            double *g[3], loss[3], scale, tol = dt == CF_F64 ? 1e-9 : 1e-4;
            for (int mode = 0; mode < 3; mode++) { /* plain, recompute, recompute + rebuild */
                g[mode] = malloc(n * sizeof(double));
                gradients_of(f, dt, mode, 14, g[mode], &loss[mode], &peak[mode]);
            }
            double err = max_abs_diff(g[2], g[0], n, &scale);
            ck_assert_msg(err <= tol * scale, "%s conv %d: rebuilt gradients differ by %g "
                          "(scale %g)", cf_dtype_name(dt), conv, err, scale);
            ck_assert_msg(fabs(loss[2] - loss[0]) <= tol * fabs(loss[0]), "loss %g vs %g",
                          loss[2], loss[0]);
            ck_assert_msg(peak[2] < peak[1], "rebuild kept %zu bytes, recompute %zu", peak[2],
                          peak[1]);
            for (int mode = 0; mode < 3; mode++) free(g[mode]);
            cf_flow_free(f);
        }
}
END_TEST

/* The thread count does not change results beyond rounding: the loss and every gradient of a
 * small f32 model run with the fast kernels (the only ones that use threads: OpenMP over
 * images, and over elements past 32768, with reductions split by thread) on 1 and 2 OpenMP
 * threads, 16 images of 16x16 (hidden activations of 262144 values). Measured: the loss equal
 * to 9 digits, gradients 7.5e-8 apart with a largest of 0.44 (1.7e-7 relative); the bound is
 * 2e-6 of the largest (a per-thread partial sum dropped or counted twice moves them by far
 * more). The f64 kernels are serial reference
 * loops and so not tested here. */
START_TEST(test_thread_count_invariance)
{
    cf_flow_config cfg = {.height = 16, .width = 16, .channels = 1, .levels = 2, .depth = 2,
                          .hidden = 32, .seed = 3};
    cf_flow *f = cf_flow_new(&cfg, CF_F32);
    ck_assert_ptr_nonnull(f);
    perturb_flow(f, 0.05);
    cf_params *ps = cf_flow_params(f);
    size_t n = cf_params_flat_numel(ps);
    double *g1 = malloc(n * sizeof(double)), loss[2] = {0, 0}, scale = 0, err = 0;
    cf_op_runs *before = malloc((size_t)cf_op_count() * sizeof *before);
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        ck_assert_int_eq(omp_get_max_threads(), t);
        runs_snapshot(before);
        cf_ctx *ctx = cf_ctx_new(0);
        cf_rng rng;
        cf_rng_seed(&rng, 8, 0);
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 16, 16, 16, 1);
        cf_tensor_fill_uniform(x, &rng, -0.5, 0.5);
        cf_params_zero_grad(ps);
        cf_tensor *bpd = cf_flow_bpd(f, ctx, x);
        ck_assert_int_eq(cf_backward(ctx, bpd), CF_OK);
        assert_family_ran(before, true, 6);
        loss[t - 1] = cf_tensor_get(bpd, 0);
        for (size_t i = 0; i < n; i++) {
            double g = cf_buf_get(CF_F32, cf_params_grad(ps), (int64_t)i);
            if (t == 1) {
                g1[i] = g;
                scale = fmax(scale, fabs(g));
            } else {
                err = fmax(err, fabs(g - g1[i]));
            }
        }
        cf_ctx_free(ctx);
    }
    fprintf(stderr, "thread count: loss %.9g vs %.9g, gradients differ by %.3g of %.3g\n",
            loss[0], loss[1], err, scale);
    ck_assert_msg(fabs(loss[0] - loss[1]) <= 2e-6 * fabs(loss[0]), "loss %.9g vs %.9g", loss[0],
                  loss[1]);
    ck_assert_msg(scale > 0, "no gradient");
    ck_assert_msg(err <= 2e-6 * scale, "gradients differ by %g of %g between 1 and 2 threads",
                  err, scale);
    free(g1);
    free(before);
    cf_flow_free(f);
    omp_set_num_threads(2);
}
END_TEST

/* A whole model's f32 gradients with the fast kernels (which write fresh gradients instead of
 * adding into zeros, fuse the coupling networks' conv + actnorm + ReLU, and recycle dead
 * gradient buffers) equal those of the reference kernels (plain loops in double, adding into
 * zeroed buffers), and recycling changes nothing (CF_BACKWARD_KEEP_GRADS). Shapes that take
 * every convolution path: 1x1, im2col (thin inputs), col2im (thin outputs), rows (C >= 16,
 * 16-wide rows), the masked convs; a second backward pass reuses the spare buffers.
 *
 * The comparison is per tensor, so that a fault in one element shows: every parameter
 * tensor's gradient within WHOLE_PARAM_TOL of its own largest magnitude, and the gradient with
 * respect to the input images (which every layer's backward reaches, through invertible
 * layers that keep it local) within WHOLE_INPUT_TOL of its largest magnitude, element by
 * element. test_whole_model_check_catches_one_element shows that a 1% error in one element of
 * any op's backward in this model fails the check. */
#define WHOLE_PARAM_TOL 2e-5
#define WHOLE_INPUT_TOL 2e-6

typedef struct whole_model {
    cf_flow *flow;
    size_t n_params;   /* flat parameter values */
    size_t n_values;   /* n_params + the input's elements */
} whole_model;

static whole_model whole_model_new(void)
{
    cf_flow_config cfg = {.height = 32, .width = 32, .channels = 1, .levels = 2, .depth = 2,
                          .hidden = 32, .seed = 4};
    whole_model m = {cf_flow_new(&cfg, CF_F32), 0, 0};
    ck_assert_msg(m.flow, "%s", cf_last_error());
    perturb_flow(m.flow, 0.05);
    m.n_params = cf_params_flat_numel(cf_flow_params(m.flow));
    m.n_values = m.n_params + 3 * 32 * 32;
    return m;
}

/* `passes` training passes of the model on the same seeded images (3, 32, 32, 1) with one
 * kernel family; the last pass's parameter gradients then input gradients into g
 * (m->n_values floats), its loss into *loss. */
static void whole_model_gradients(const whole_model *m, cf_kernels kernels, bool keep_grads,
                                  int passes, float *g, double *loss)
{
    cf_params *ps = cf_flow_params(m->flow);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_ctx_set_kernels(ctx, kernels);
    for (int pass = 0; pass < passes; pass++) {
        cf_ctx_reset(ctx);
        cf_rng rng;
        cf_rng_seed(&rng, 21, 0);
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 3, 32, 32, 1);
        cf_tensor_fill_uniform(x, &rng, -0.5, 0.5);
        ck_assert_int_eq(cf_tensor_requires_grad(ctx, x), CF_OK);
        cf_params_zero_grad(ps);
        cf_tensor *bpd = cf_flow_bpd(m->flow, ctx, x);
        ck_assert_msg(bpd, "%s", cf_ctx_error(ctx));
        ck_assert_int_eq(cf_backward_ex(ctx, bpd, NULL, keep_grads ? CF_BACKWARD_KEEP_GRADS : 0),
                         CF_OK);
        *loss = cf_tensor_get(bpd, 0);
        if (pass == passes - 1) {
            memcpy(g, cf_params_grad(ps), m->n_params * sizeof(float));
            memcpy(g + m->n_params, x->grad, (m->n_values - m->n_params) * sizeof(float));
        }
    }
    cf_ctx_free(ctx);
}

/* The whole-model check of g against the reference ref: the worst ratio of error to bound over
 * the parameter tensors and the input gradient (<= 1 passes); *where names the worst. */
static double whole_model_check(const whole_model *m, const float *g, const float *ref,
                                char *where, size_t where_size)
{
    cf_params *ps = cf_flow_params(m->flow);
    double worst = 0;
    snprintf(where, where_size, "nothing");
    const int n = cf_params_count(ps);
    for (int t = 0; t <= n; t++) {
        size_t off = t < n ? cf_params_offset(ps, t) : m->n_params;
        size_t len = t < n ? (size_t)cf_params_at(ps, t)->numel : m->n_values - m->n_params;
        double scale = 0, err = 0;
        for (size_t i = 0; i < len; i++) scale = fmax(scale, fabs(ref[off + i]));
        for (size_t i = 0; i < len; i++) err = fmax(err, fabs(g[off + i] - ref[off + i]));
        if (scale == 0) continue; /* a zero-initialised output has no gradient yet */
        double ratio = err / (scale * (t < n ? WHOLE_PARAM_TOL : WHOLE_INPUT_TOL));
        if (ratio > worst) {
            worst = ratio;
            snprintf(where, where_size, "%s: error %.3g of %.3g", t < n ? cf_params_at(ps, t)->name
                                                                       : "input gradient",
                     err, scale);
        }
    }
    return worst;
}

/* The run record of every op, to compare before and after. */
static void runs_snapshot(cf_op_runs *r)
{
    for (int k = 0; k < cf_op_count(); k++) r[k] = cf_op_runs_of(cf_op_at(k));
}

/* Since `before`: with fast, every op that ran (forward) ran its fast f32 kernels where it has
 * them, and its fast backward where it has one; without, no fast kernel ran. At least `min`
 * ops ran fast. */
static void assert_family_ran(const cf_op_runs *before, bool fast, int min)
{
    int fast_ops = 0;
    for (int k = 0; k < cf_op_count(); k++) {
        const cf_op_def *op = cf_op_at(k);
        cf_op_runs now = cf_op_runs_of(op);
        uint64_t ff = now.forward_fast - before[k].forward_fast,
                 fr = now.forward_reference - before[k].forward_reference,
                 bf = now.backward_fast - before[k].backward_fast,
                 br = now.backward_reference - before[k].backward_reference;
        if (!fast) {
            ck_assert_msg(ff == 0 && bf == 0, "op '%s': a fast kernel ran with "
                          "CF_KERNELS_REFERENCE", op->name);
            continue;
        }
        if (!op->fast[CF_F32].forward) continue;
        ck_assert_msg(fr == 0, "op '%s': %llu reference forwards with CF_KERNELS_FAST", op->name,
                      (unsigned long long)fr);
        if (op->fast[CF_F32].backward)
            ck_assert_msg(br == 0, "op '%s': %llu reference backwards after fast forwards",
                          op->name, (unsigned long long)br);
        fast_ops += ff > 0;
    }
    if (fast) ck_assert_int_ge(fast_ops, min);
}

START_TEST(test_fast_gradients_match_reference)
{
    whole_model m = whole_model_new();
    float *g[3];
    double loss[3];
    cf_op_runs *before = malloc((size_t)cf_op_count() * sizeof *before);
    for (int mode = 0; mode < 3; mode++) { /* reference, fast, fast keeping every gradient */
        g[mode] = malloc(m.n_values * sizeof(float));
        runs_snapshot(before);
        whole_model_gradients(&m, mode == 0 ? CF_KERNELS_REFERENCE : CF_KERNELS_FAST, mode == 2,
                              2, g[mode], &loss[mode]);
        /* conv2d, conv2d_actnorm, actnorm, quad_coupling, squeeze, gaussian_logp, ... */
        assert_family_ran(before, mode != 0, 6);
    }
    char where[160];
    double ratio = whole_model_check(&m, g[1], g[0], where, sizeof where);
    ck_assert_msg(ratio <= 1, "fast gradients differ from the reference: %s (%.3g of the bound)",
                  where, ratio);
    ck_assert_msg(memcmp(g[1], g[2], m.n_values * sizeof(float)) == 0,
                  "recycling gradient buffers changed the gradients");
    ck_assert_double_eq_tol(loss[0], loss[1], 1e-5 * fabs(loss[0]));
    for (int mode = 0; mode < 3; mode++) free(g[mode]);
    free(before);
    cf_flow_free(m.flow);
}
END_TEST

/* A fault for the backward hook: the `target`-th backward of `op` (counting from 0, in backward
 * order) gets its input `input`'s gradient 1% off in one element (its largest, so that the
 * fault is a 1% error of that gradient, not of a value near zero). */
typedef struct fault {
    const cf_op_def *op;
    int input, target, seen;
    int n_in;      /* the target node's input count (0: not reached) */
    bool injected;
} fault;

static void inject_fault(cf_node *n, void *user)
{
    fault *f = user;
    if (n->op != f->op || f->seen++ != f->target) return;
    f->n_in = n->n_in;
    if (f->input >= n->n_in) return;
    cf_tensor *t = n->in[f->input];
    if (!t->grad || (n->op->no_grad_inputs & (1u << f->input))) return;
    float *gr = t->grad;
    int64_t k = 0;
    for (int64_t i = 1; i < t->numel; i++)
        if (fabsf(gr[i]) > fabsf(gr[k])) k = i;
    if (gr[k] == 0.0f) return;
    gr[k] *= 1.01f;
    f->injected = true;
}

/* The whole-model check above fails on a 1% error in one element of the backward of any op of
 * the model, on any of its differentiable inputs, at the op's middle node and its last: the
 * fault goes in through the backward hook, into the fast kernels' gradients. */
START_TEST(test_whole_model_check_catches_one_element)
{
    whole_model m = whole_model_new();
    float *ref = malloc(m.n_values * sizeof(float)), *g = malloc(m.n_values * sizeof(float));
    double loss;
    whole_model_gradients(&m, CF_KERNELS_REFERENCE, false, 1, ref, &loss);
    cf_op_runs *before = malloc((size_t)cf_op_count() * sizeof *before);
    runs_snapshot(before);
    whole_model_gradients(&m, CF_KERNELS_FAST, false, 1, g, &loss);
    cf_op_runs *after = malloc((size_t)cf_op_count() * sizeof *after);
    runs_snapshot(after);
    char where[160], clean_where[160];
    double clean = whole_model_check(&m, g, ref, where, sizeof where);
    ck_assert_msg(clean <= 1, "without a fault: %s", where);
    snprintf(clean_where, sizeof clean_where, "%s", where);
    int faults = 0;
    double weakest = INFINITY;
    char weakest_what[400] = "";
    for (int k = 0; k < cf_op_count(); k++) {
        const cf_op_def *op = cf_op_at(k);
        int nodes = (int)(after[k].backward_fast + after[k].backward_reference -
                          before[k].backward_fast - before[k].backward_reference);
        for (int where_node = 0; where_node < 2 && nodes > 0; where_node++) {
            int n_in = CF_MAX_INPUTS;
            for (int input = 0; input < n_in; input++) {
                fault f = {op, input, where_node ? nodes - 1 : nodes / 2, 0, 0, false};
                cf_backward_set_hook(inject_fault, &f);
                whole_model_gradients(&m, CF_KERNELS_FAST, false, 1, g, &loss);
                cf_backward_set_hook(NULL, NULL);
                n_in = f.n_in;
                if (!f.injected) continue;
                faults++;
                double ratio = whole_model_check(&m, g, ref, where, sizeof where);
                if (ratio < weakest) {
                    weakest = ratio;
                    snprintf(weakest_what, sizeof weakest_what, "op '%s' node %d input %d "
                             "(caught by %s)", op->name, f.target, input, where);
                }
                ck_assert_msg(ratio > 1, "a 1%% error in op '%s' (backward node %d of %d, input "
                              "%d) passed the whole-model check (%.3g of the bound at %s)",
                              op->name, f.target, nodes, input, ratio, where);
            }
        }
    }
    fprintf(stderr, "whole-model check: clean %.3g of the bound (%s); %d faults, weakest caught "
            "at %.3g times the bound: %s\n", clean, clean_where, faults, weakest, weakest_what);
    ck_assert_int_ge(faults, 10);
    free(before);
    free(after);
    free(ref);
    free(g);
    cf_flow_free(m.flow);
}
END_TEST

/* ---- counts and errors --------------------------------------------------------------------- */

START_TEST(test_paper_parameter_counts)
{
    for (int64_t C = 1; C <= 12; C++) {
        cf_params *ps = cf_params_new(CF_F32);
        cf_rng rng;
        cf_rng_seed(&rng, 1, 0);
        int64_t shape[3] = {4, 4, C};
        cf_layer *cinc = cf_cinc_conv_layer(ps, "cinc", shape, &rng);
        cf_layer *emerging = cf_emerging_conv_layer(ps, "emerging", shape, &rng);
        int64_t kept = 0;
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t o = 0; o < C; o++) kept += cf_conv_mask_keeps(CF_CONV_MASK_CINC, kh, kw, c, o);
        ck_assert_int_eq(kept, 9 * C * C - C * (C - 1) / 2);
        ck_assert_int_eq(cinc->n_learnable, kept + C); /* and the bias */
        ck_assert_int_lt(cinc->n_convs, emerging->n_convs);
        ck_assert_int_eq(cinc->n_convs, 1);
        cf_layer_free(cinc);
        cf_layer_free(emerging);
        cf_params_free(ps);
    }
}
END_TEST

START_TEST(test_shapes_that_cannot_work)
{
    cf_flow_config cfg = {.height = 28, .width = 28, .channels = 1, .levels = 3, .depth = 1,
                          .hidden = 4};
    ck_assert_ptr_null(cf_flow_new(&cfg, CF_F32));
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "levels.2.squeeze"));
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "7 x 7"));

    cf_params *ps = cf_params_new(CF_F32);
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    ck_assert_ptr_null(cf_coupling_layer(ps, "levels.1.steps.0.coupling", (int64_t[]){4, 4, 6},
                                         CF_COUPLING_KIND_QUAD, 8, &rng));
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "levels.1.steps.0.coupling"));
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "divisible by 4"));
    cf_params_free(ps);

    cf_flow *f = small_flow(CF_F32, CF_INVCONV_KIND_CINC, CF_COUPLING_KIND_QUAD);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *wrong = cf_tensor_new_v(ctx, CF_F32, 2, 6, 8, 1);
    ck_assert_ptr_null(cf_flow_bpd(f, ctx, wrong));
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "expected (B, 8, 8, 1)"));
    cf_ctx_free(ctx);
    cf_flow_free(f);
}
END_TEST

static Suite *models_suite(void)
{
    Suite *s = suite_create("models");
    TCase *layers = tcase_create("layers");
    tcase_set_timeout(layers, 120);
    tcase_add_test(layers, test_grouped_inverse_matches_whole_batch);
    tcase_add_loop_test(layers, test_layer_round_trip, 0, N_KINDS);
    tcase_add_loop_test(layers, test_layer_logdet_is_dense_slogdet, 0, 7);
    suite_add_tcase(s, layers);
    TCase *models = tcase_create("models");
    tcase_set_timeout(models, 300);
    tcase_add_test(models, test_model_round_trip_all_combinations);
    tcase_add_test(models, test_model_fast_gradcheck);
    tcase_add_test(models, test_identity_model_closed_form);
    tcase_add_test(models, test_train_step_micro_batches);
    tcase_add_test(models, test_train_step_threads);
    tcase_add_test(models, test_recompute_matches_plain);
    tcase_add_test(models, test_rebuild_inputs_matches_plain);
    tcase_add_test(models, test_thread_count_invariance);
    tcase_add_test(models, test_fast_gradients_match_reference);
    tcase_add_test(models, test_whole_model_check_catches_one_element);
    tcase_add_test(models, test_paper_parameter_counts);
    tcase_add_test(models, test_shapes_that_cannot_work);
    suite_add_tcase(s, models);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(models_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
