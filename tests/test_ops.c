/* test_ops.c: every registered built-in op against finite differences (f64) and its fast f32
 * kernels against its reference kernels, on each of the op's test cases; then values of
 * individual ops against closed forms, and their shape errors.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cincflow.h"

/* Fast f32 kernels against double-accumulated references: relative to the largest value. */
#define FAST_TOLERANCE 1e-5

/* Loop test: index over the built-in ops (registration order). */
START_TEST(test_every_op_gradcheck)
{
    const cf_op_def *op = cf_op_at(_i);
    ck_assert_ptr_nonnull(op);
    cf_op_case c;
    int cases = 0;
    for (int k = 0; cf_op_case_get(op, k, &c); k++, cases++) {
        cf_tensor *in[CF_MAX_INPUTS];
        ck_assert_int_eq(cf_op_case_inputs(&c, CF_F64, 100 + (uint64_t)k, in), CF_OK);
        cf_gradcheck_result res;
        cf_status st = cf_gradcheck_op(op, c.n_in, in, c.attrs, NULL, &res);
        ck_assert_msg(st == CF_OK, "op '%s' case %d (%s): %s", op->name, k, c.label, res.message);
        ck_assert_int_gt(res.values_checked, 0);
        for (int i = 0; i < c.n_in; i++) cf_tensor_free(in[i]);
    }
    ck_assert_int_gt(cases, 0);
}
END_TEST

/* The run record (cf_op_runs) since `before`: with has_fast, the op's fast forward ran, and
 * its fast backward too when it has one and takes a gradient; without, nothing fast ran. */
static void assert_fast_ran(const cf_op_def *op, const cf_op_runs *before, bool has_fast)
{
    const cf_op_runs now = cf_op_runs_of(op);
    if (!has_fast) {
        ck_assert_msg(now.forward_fast == before->forward_fast, "op '%s' has no fast kernel but "
                      "a fast forward was counted", op->name);
        return;
    }
    ck_assert_msg(now.forward_fast > before->forward_fast, "op '%s': the fast forward never ran",
                  op->name);
    ck_assert_msg(now.forward_reference > before->forward_reference,
                  "op '%s': the reference forward never ran", op->name);
    unsigned all = op->n_inputs == CF_OP_VARIADIC ? ~0u : (1u << op->n_inputs) - 1u;
    if (op->fast[CF_F32].backward && (op->no_grad_inputs & all) != all)
        ck_assert_msg(now.backward_fast > before->backward_fast,
                      "op '%s': the fast backward never ran", op->name);
}

START_TEST(test_every_op_fast_matches_reference)
{
    const cf_op_def *op = cf_op_at(_i);
    cf_op_case c;
    for (int k = 0; cf_op_case_get(op, k, &c); k++) {
        cf_tensor *in[CF_MAX_INPUTS];
        ck_assert_int_eq(cf_op_case_inputs(&c, CF_F32, 200 + (uint64_t)k, in), CF_OK);
        bool has_fast;
        double err;
        const cf_op_runs before = cf_op_runs_of(op);
        cf_status st = cf_opcheck_fast(op, c.n_in, in, c.attrs, &has_fast, &err);
        ck_assert_msg(st == CF_OK, "op '%s' case %d: %s", op->name, k, cf_last_error());
        assert_fast_ran(op, &before, has_fast);
        ck_assert_msg(err <= FAST_TOLERANCE, "op '%s' case %d (%s): fast differs by %g",
                      op->name, k, c.label, err);
        for (int i = 0; i < c.n_in; i++) cf_tensor_free(in[i]);
    }
}
END_TEST

/* An op's fast f32 kernels against its reference on case c's inputs (drawn with seed): the
 * op has them, and they agree to FAST_TOLERANCE. */
static void check_fast_on_case(const cf_op_def *op, const cf_op_case *c, uint64_t seed,
                               const char *what)
{
    cf_tensor *in[CF_MAX_INPUTS];
    ck_assert_int_eq(cf_op_case_inputs(c, CF_F32, seed, in), CF_OK);
    bool has_fast;
    double err;
    const cf_op_runs before = cf_op_runs_of(op);
    cf_status st = cf_opcheck_fast(op, c->n_in, in, c->attrs, &has_fast, &err);
    ck_assert_msg(st == CF_OK, "op '%s' %s: %s", op->name, what, cf_last_error());
    ck_assert(has_fast);
    assert_fast_ran(op, &before, true);
    ck_assert_msg(err <= FAST_TOLERANCE, "op '%s' %s: fast differs by %g", op->name, what, err);
    for (int i = 0; i < c->n_in; i++) cf_tensor_free(in[i]);
}

/* Larger inputs (more than CF__PAR_MIN = 32768 elements) take the separate large-tensor loops
 * and the OpenMP paths of the fast kernels. Every built-in op with a fast f32 kernel is taken
 * on its first case with the height of each 4-D input stretched (an even factor, so squeeze's
 * blocks still fit) past 40000 elements; the convolutions and matmul have shape-specific
 * kernels, tested on their own shapes (test_conv.c). */
START_TEST(test_fast_kernels_on_large_inputs)
{
    int tested = 0;
    for (int k = 0; k < CF_OP_BUILTIN_COUNT; k++) {
        const cf_op_def *op = cf_op_at(k);
        if (!op->fast[CF_F32].forward || strncmp(op->name, "conv", 4) == 0 ||
            strcmp(op->name, "matmul") == 0)
            continue;
        cf_op_case c;
        ck_assert(cf_op_case_get(op, 0, &c));
        int64_t numel = 1;
        for (int d = 0; d < c.ndim[0]; d++) numel *= c.shape[0][d];
        ck_assert_msg(c.ndim[0] == 4, "op '%s': case 0 is not an image", op->name);
        int64_t factor = (40000 + numel - 1) / numel;
        factor += factor & 1;
        for (int i = 0; i < c.n_in; i++)
            if (c.ndim[i] == 4) c.shape[i][1] *= factor;
        char what[64];
        snprintf(what, sizeof what, "with %lld elements", (long long)(numel * factor));
        check_fast_on_case(op, &c, 7, what);
        tested++;
    }
    ck_assert_int_ge(tested, 20);
}
END_TEST

/* The large-tensor branch of every op on image-batch shapes as training sees them: the binary
 * ops with equal shapes and with a per-channel operand, at (4, 32, 32, 16). */
START_TEST(test_fast_binary_on_large_inputs)
{
    const char *names[] = {"add", "sub", "mul", "div"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const cf_op_def *op = cf_op_find(names[k]);
        for (int index = 0; index < 2; index++) {
            cf_op_case c;
            ck_assert(cf_op_case_get(op, index, &c));
            c.shape[0][0] = 4, c.shape[0][1] = 32, c.shape[0][2] = 32, c.shape[0][3] = 16;
            if (index == 0)
                for (int d = 0; d < 4; d++) c.shape[1][d] = c.shape[0][d];
            else
                c.shape[1][0] = 16;
            check_fast_on_case(op, &c, 8 + (uint64_t)index, index ? "per-channel, large"
                                                                   : "equal, large");
        }
    }
}
END_TEST

/* conv2d_actnorm's fast epilogue (128 channels at a time in registers) and its few-output
 * form, against the reference: 1x1 to 256 with ReLU, 3x3 to 128, 3x3 from 32 to 2; and
 * actnorm alone on 128 and 256 channels. */
START_TEST(test_conv_actnorm_epilogue_shapes)
{
    const cf_op_def *op = cf_op_find("conv2d_actnorm");
    ck_assert_ptr_nonnull(op);
    static const struct {
        int64_t x[4], w[4];
        int pad, relu;
    } cases[] = {
        {{2, 5, 6, 16}, {1, 1, 16, 256}, 0, 1},
        {{1, 4, 5, 8}, {3, 3, 8, 128}, 1, 0},
        {{2, 6, 7, 32}, {3, 3, 32, 2}, 1, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cf_op_case c;
        ck_assert(cf_op_case_get(op, 0, &c));
        for (int d = 0; d < 4; d++) c.shape[0][d] = cases[k].x[d], c.shape[1][d] = cases[k].w[d];
        c.shape[2][0] = c.shape[3][0] = cases[k].w[3];
        cf_conv_actnorm_attrs *a = (cf_conv_actnorm_attrs *)c.attrs;
        for (int d = 0; d < 4; d++) a->pad[d] = cases[k].pad;
        a->relu = cases[k].relu;
        char what[32];
        snprintf(what, sizeof what, "case %zu", k);
        check_fast_on_case(op, &c, 300 + (uint64_t)k, what);
    }
    /* actnorm on 128 and 256 channels, with and without ReLU */
    const cf_op_def *an = cf_op_find("actnorm");
    for (int k = 0; k < 2; k++) {
        cf_op_case c;
        ck_assert(cf_op_case_get(an, 0, &c));
        const int64_t C = k ? 256 : 128;
        c.ndim[0] = 2, c.shape[0][0] = 70, c.shape[0][1] = C;
        c.shape[1][0] = c.shape[2][0] = C;
        ((cf_actnorm_attrs *)c.attrs)->relu = k == 0;
        check_fast_on_case(an, &c, 310 + (uint64_t)k, k ? "on 256 channels" : "on 128, ReLU");
    }
}
END_TEST

/* A fast backward may overwrite its output's gradient when nothing needs it afterwards (the
 * fused conv + actnorm does, for its pre-activation gradient): with CF_BACKWARD_KEEP_GRADS the
 * output keeps its gradient and the input gradients are the same bits either way. */
START_TEST(test_backward_keeps_output_gradient_when_asked)
{
    cf_rng rng;
    cf_rng_seed(&rng, 5, 0);
    cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){2, 3, 4, 16});
    cf_tensor *w = cf_tensor_alloc(CF_F32, 4, (int64_t[]){1, 1, 16, 128});
    cf_tensor *b = cf_tensor_alloc(CF_F32, 1, (int64_t[]){128});
    cf_tensor *l = cf_tensor_alloc(CF_F32, 1, (int64_t[]){128});
    cf_tensor_fill_uniform(x, &rng, -1, 1);
    cf_tensor_fill_uniform(w, &rng, -0.3, 0.3);
    cf_tensor_fill_uniform(b, &rng, -0.2, 0.2);
    cf_tensor_fill_uniform(l, &rng, -0.2, 0.2);
    float *dx[2];
    for (int keep = 0; keep < 2; keep++) {
        cf_ctx *ctx = cf_ctx_new(0);
        ck_assert_int_eq(cf_tensor_requires_grad(ctx, x), CF_OK);
        memset(x->grad, 0, (size_t)x->numel * sizeof(float));
        cf_tensor *y = cf_conv2d_actnorm(ctx, x, w, b, l, true);
        cf_tensor *loss = cf_mean_all(ctx, cf_scale(ctx, y, 2.0));
        ck_assert_msg(loss, "%s", cf_ctx_error(ctx));
        ck_assert_int_eq(cf_backward_ex(ctx, loss, NULL, keep ? CF_BACKWARD_KEEP_GRADS : 0),
                         CF_OK);
        if (keep) {
            ck_assert_ptr_nonnull(y->grad);
            const float want = (float)(2.0 / (double)y->numel);
            for (int64_t i = 0; i < y->numel; i++)
                ck_assert_float_eq(((const float *)y->grad)[i], want);
        } else {
            ck_assert_ptr_null(y->grad); /* given back for reuse */
        }
        dx[keep] = malloc((size_t)x->numel * sizeof(float));
        memcpy(dx[keep], x->grad, (size_t)x->numel * sizeof(float));
        cf_ctx_free(ctx);
    }
    ck_assert(memcmp(dx[0], dx[1], (size_t)x->numel * sizeof(float)) == 0);
    free(dx[0]);
    free(dx[1]);
    cf_tensor_free(x), cf_tensor_free(w), cf_tensor_free(b), cf_tensor_free(l);
}
END_TEST

/* ---- values ---------------------------------------------------------------------------- */

static cf_tensor *vals(cf_ctx *ctx, cf_dtype dt, int ndim, const int64_t *shape, const double *v)
{
    cf_tensor *t = cf_tensor_new(ctx, dt, ndim, shape);
    for (int64_t i = 0; i < t->numel; i++) cf_tensor_set(t, i, v[i]);
    return t;
}

START_TEST(test_per_channel_bias_values)
{
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        cf_ctx *ctx = cf_ctx_new(0);
        cf_tensor *x = cf_tensor_new_v(ctx, dt, 2, 2, 2, 3);
        for (int64_t i = 0; i < x->numel; i++) cf_tensor_set(x, i, (double)i);
        cf_tensor *b = vals(ctx, dt, 1, (int64_t[]){3}, (double[]){10, 20, 30});
        cf_tensor_requires_grad(ctx, b);
        cf_tensor *y = cf_add(ctx, x, b);
        ck_assert_int_eq(y->ndim, 4);
        for (int64_t i = 0; i < y->numel; i++)
            ck_assert(cf_tensor_get(y, i) == (double)i + 10.0 * (double)(i % 3 + 1));
        ck_assert_int_eq(cf_backward(ctx, cf_sum_all(ctx, y)), CF_OK);
        for (int c = 0; c < 3; c++) ck_assert(cf_buf_get(dt, b->grad, c) == 8.0);
        cf_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_stable_log_sigmoid_softplus)
{
    cf_ctx *ctx = cf_ctx_new(0);
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        cf_tensor *x = vals(ctx, dt, 1, (int64_t[]){4}, (double[]){-200, -30, 30, 200});
        cf_tensor *ls = cf_log_sigmoid(ctx, x), *sp = cf_softplus(ctx, x);
        ck_assert_double_eq_tol(cf_tensor_get(ls, 0), -200, 1e-4);
        ck_assert_double_eq_tol(cf_tensor_get(ls, 3), 0, 1e-6);
        ck_assert_double_eq_tol(cf_tensor_get(sp, 0), 0, 1e-6);
        ck_assert_double_eq_tol(cf_tensor_get(sp, 3), 200, 1e-4);
        ck_assert_double_eq_tol(cf_tensor_get(sp, 2), 30, 1e-4);
        for (int i = 0; i < 4; i++) ck_assert(isfinite(cf_tensor_get(ls, i)));
    }
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_reductions)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 2, 3, 4);
    for (int64_t i = 0; i < 24; i++) cf_tensor_set(x, i, (double)i);
    cf_tensor *s = cf_sum(ctx, x), *m = cf_mean(ctx, x), *sa = cf_sum_all(ctx, x),
              *ma = cf_mean_all(ctx, x);
    ck_assert_int_eq(s->ndim, 1);
    ck_assert_int_eq(s->shape[0], 2);
    ck_assert(cf_tensor_get(s, 0) == 66 && cf_tensor_get(s, 1) == 210);
    ck_assert(cf_tensor_get(m, 0) == 5.5 && cf_tensor_get(m, 1) == 17.5);
    ck_assert_int_eq(sa->ndim, 0);
    ck_assert(cf_tensor_get(sa, 0) == 276 && cf_tensor_get(ma, 0) == 11.5);
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_concat_split_reshape)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 2, 2, 2, 5);
    for (int64_t i = 0; i < x->numel; i++) cf_tensor_set(x, i, (double)i);
    cf_tensor_requires_grad(ctx, x);
    cf_tensor *parts[3];
    ck_assert_int_eq(cf_split(ctx, x, 3, (int64_t[]){1, 3, 1}, parts), CF_OK);
    ck_assert_int_eq(parts[1]->shape[3], 3);
    ck_assert(cf_tensor_get(parts[1], 0) == 1 && cf_tensor_get(parts[2], 1) == 9);
    cf_tensor *back = cf_concat(ctx, 3, parts);
    for (int64_t i = 0; i < x->numel; i++) ck_assert(cf_tensor_get(back, i) == (double)i);
    cf_tensor *flat = cf_reshape(ctx, back, 2, (int64_t[]){2, -1});
    ck_assert_int_eq(flat->shape[1], 20);
    ck_assert_ptr_eq(flat->data, back->data);
    /* Only the middle part reaches the loss: x's gradient is 1 on channels 1..3. */
    cf_tensor *loss = cf_sum_all(ctx, parts[1]);
    ck_assert_int_eq(cf_backward(ctx, loss), CF_OK);
    for (int64_t i = 0; i < x->numel; i++)
        ck_assert(cf_buf_get(CF_F64, x->grad, i) == ((i % 5 >= 1 && i % 5 <= 3) ? 1.0 : 0.0));
    cf_ctx_reset(ctx);

    x = cf_tensor_new_v(ctx, CF_F64, 2, 4);
    ck_assert_int_eq(cf_split(ctx, x, 2, (int64_t[]){1, 2}, parts), CF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "add up to 3 channels"));
    cf_ctx_reset(ctx);
    x = cf_tensor_new_v(ctx, CF_F64, 2, 4);
    ck_assert_ptr_null(cf_reshape(ctx, x, 2, (int64_t[]){3, -1}));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_SHAPE);
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_matmul_values)
{
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        cf_ctx *ctx = cf_ctx_new(0);
        cf_tensor *a = vals(ctx, dt, 2, (int64_t[]){2, 3}, (double[]){1, 2, 3, 4, 5, 6});
        cf_tensor *b = vals(ctx, dt, 2, (int64_t[]){3, 2}, (double[]){7, 8, 9, 10, 11, 12});
        cf_tensor *c = cf_matmul(ctx, a, b);
        double expect[] = {58, 64, 139, 154};
        for (int i = 0; i < 4; i++) ck_assert(cf_tensor_get(c, i) == expect[i]);
        ck_assert_ptr_null(cf_matmul(ctx, a, a));
        ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "op 'matmul'"));
        cf_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_gaussian_logp_values)
{
    cf_ctx *ctx = cf_ctx_new(0);
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        cf_tensor *x = vals(ctx, dt, 2, (int64_t[]){2, 2}, (double[]){0, 1, -1, 2});
        cf_tensor *m = vals(ctx, dt, 2, (int64_t[]){1, 2}, (double[]){0.5, -0.5});
        cf_tensor *ls = vals(ctx, dt, 2, (int64_t[]){1, 2}, (double[]){0.2, -0.3});
        cf_tensor *std = cf_gaussian_logp_std(ctx, x), *gen = cf_gaussian_logp(ctx, x, m, ls);
        double c = 0.5 * log(2 * M_PI);
        ck_assert_double_eq_tol(cf_tensor_get(std, 0), -2 * c - 0.5, 1e-6);
        ck_assert_double_eq_tol(cf_tensor_get(std, 1), -2 * c - 2.5, 1e-6);
        for (int b = 0; b < 2; b++) {
            double e = 0;
            for (int i = 0; i < 2; i++) {
                double xv = cf_tensor_get(x, 2 * b + i), mv = cf_tensor_get(m, i),
                       lv = cf_tensor_get(ls, i);
                e += -c - lv - 0.5 * pow((xv - mv) / exp(lv), 2);
            }
            ck_assert_double_eq_tol(cf_tensor_get(gen, b), e, 1e-6);
        }
    }
    cf_ctx_free(ctx);
}
END_TEST

/* Coupling: the op's output, inverted block by block, gives x back; its log-det is the sum of
 * log sigmoid(l + 2). */
START_TEST(test_coupling_inverse_round_trip)
{
    for (int dt = 0; dt < CF_DTYPE_COUNT; dt++) {
        for (int quad = 0; quad < 2; quad++) {
            cf_ctx *ctx = cf_ctx_new(0);
            cf_rng rng;
            cf_rng_seed(&rng, 17, (uint64_t)quad);
            int64_t C = 8, q = quad ? 2 : 4;
            cf_tensor *x = cf_tensor_new_v(ctx, dt, 2, 3, 3, C);
            cf_tensor_fill_uniform(x, &rng, -2, 2);
            cf_tensor *h[3];
            for (int k = 0; k < 3; k++) {
                h[k] = cf_tensor_new_v(ctx, dt, 2, 3, 3, 2 * q);
                cf_tensor_fill_uniform(h[k], &rng, -3, 3);
            }
            cf_tensor *y, *ld;
            cf_status st = quad ? cf_quad_coupling(ctx, x, h[0], h[1], h[2], &y, &ld)
                                : cf_affine_coupling(ctx, x, h[0], &y, &ld);
            ck_assert_int_eq(st, CF_OK);
            cf_tensor *back = cf_tensor_new_v(ctx, dt, 2, 3, 3, C);
            cf_tensor_copy(back, y);
            int blocks = quad ? 3 : 1;
            for (int k = 0; k < blocks; k++)
                cf_coupling_inverse_block(back, y, h[k], C - (blocks - k) * q);
            double tol = dt == CF_F32 ? 1e-5 : 1e-12;
            for (int64_t i = 0; i < x->numel; i++)
                ck_assert_double_eq_tol(cf_tensor_get(back, i), cf_tensor_get(x, i),
                                        tol * (1 + fabs(cf_tensor_get(x, i))));
            for (int b = 0; b < 2; b++) {
                double e = 0;
                for (int k = 0; k < blocks; k++)
                    for (int64_t i = b * 9 * 2 * q; i < (b + 1) * 9 * 2 * q; i += 2) {
                        double l = cf_tensor_get(h[k], i + 1) + 2;
                        e += -log1p(exp(-l));
                    }
                ck_assert_double_eq_tol(cf_tensor_get(ld, b), e, tol * 100 * (1 + fabs(e)));
            }
            cf_ctx_free(ctx);
        }
    }
}
END_TEST

static Suite *ops_suite(void)
{
    Suite *s = suite_create("ops");
    TCase *all = tcase_create("every op");
    tcase_set_timeout(all, 120);
    tcase_add_loop_test(all, test_every_op_gradcheck, 0, CF_OP_BUILTIN_COUNT);
    tcase_add_loop_test(all, test_every_op_fast_matches_reference, 0, CF_OP_BUILTIN_COUNT);
    tcase_add_test(all, test_fast_kernels_on_large_inputs);
    tcase_add_test(all, test_fast_binary_on_large_inputs);
    tcase_add_test(all, test_conv_actnorm_epilogue_shapes);
    tcase_add_test(all, test_backward_keeps_output_gradient_when_asked);
    suite_add_tcase(s, all);
    TCase *v = tcase_create("values");
    tcase_add_test(v, test_per_channel_bias_values);
    tcase_add_test(v, test_stable_log_sigmoid_softplus);
    tcase_add_test(v, test_reductions);
    tcase_add_test(v, test_concat_split_reshape);
    tcase_add_test(v, test_matmul_values);
    tcase_add_test(v, test_gaussian_logp_values);
    tcase_add_test(v, test_coupling_inverse_round_trip);
    suite_add_tcase(s, v);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
