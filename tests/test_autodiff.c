/* test_autodiff.c: the core: tensors, arena, tape, registry, parameters and gradcheck itself.
 *
 * Ops used here are the built-ins (their own tests are in test_ops.c) and a few test ops
 * defined below, some deliberately wrong, to prove the tape and gradcheck catch them.
 */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cincflow.h"

/* ---- test ops ---------------------------------------------------------------------------- */

static cf_status same_shape_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                                  cf_shape *out)
{
    (void)ctx, (void)attrs, (void)n_in;
    cf_shape_of(&out[0], in[0]);
    return CF_OK;
}

static cf_status triple_fwd(cf_node *n)
{
    for (int64_t i = 0; i < n->in[0]->numel; i++)
        cf_tensor_set(n->out[0], i, 3.0 * cf_tensor_get(n->in[0], i));
    return CF_OK;
}

/* Correct backward: dx += 3 dy. */
static cf_status triple_bwd(cf_node *n)
{
    const cf_tensor *x = n->in[0], *y = n->out[0];
    void *dx = cf_node_grad_in(n, 0);
    for (int64_t i = 0; dx && i < x->numel; i++)
        cf_buf_set(x->dtype, dx, i, cf_buf_get(x->dtype, dx, i) + 3.0 * cf_buf_get(y->dtype, y->grad, i));
    return CF_OK;
}

/* Wrong by 1% in a single element (index 7). */
static cf_status triple_bwd_off_by_one_percent(cf_node *n)
{
    triple_bwd(n);
    const cf_tensor *x = n->in[0], *y = n->out[0];
    double g = cf_buf_get(y->dtype, y->grad, 7);
    cf_buf_set(x->dtype, x->grad, 7, cf_buf_get(x->dtype, x->grad, 7) + 0.03 * g);
    return CF_OK;
}

/* Writes nothing. */
static cf_status silent_bwd(cf_node *n)
{
    (void)n;
    return CF_OK;
}

/* Hands back a gradient of the wrong shape. */
static cf_status wrong_shape_bwd(cf_node *n)
{
    cf_tensor *g = cf_tensor_new_v(n->ctx, n->in[0]->dtype, 2);
    if (!g) return cf_ctx_status(n->ctx);
    return cf_node_accumulate_grad(n, 0, g);
}

/* Zero everywhere, with a zero gradient: a check on it is degenerate. */
static cf_status zero_fwd(cf_node *n)
{
    cf_tensor_fill(n->out[0], 0.0);
    return CF_OK;
}
static cf_status zero_bwd(cf_node *n)
{
    cf_node_grad_in(n, 0);
    return CF_OK;
}

#define TEST_OP(var, opname, bwd)                                                              \
    static const cf_op_def var = {.name = opname,                                              \
                                  .n_inputs = 1,                                               \
                                  .n_outputs = 1,                                              \
                                  .infer = same_shape_infer,                                   \
                                  .forward = triple_fwd,                                       \
                                  .backward = bwd}
TEST_OP(op_triple, "test_triple", triple_bwd);
TEST_OP(op_triple_bad, "test_triple_bad", triple_bwd_off_by_one_percent);
TEST_OP(op_silent, "test_silent", silent_bwd);
TEST_OP(op_wrong_shape, "test_wrong_shape", wrong_shape_bwd);
TEST_OP(op_counted, "test_counted", triple_bwd); /* registered by test_op_runs_record only */
static const cf_op_def op_zero = {.name = "test_zero", .n_inputs = 1, .n_outputs = 1,
                                  .infer = same_shape_infer, .forward = zero_fwd,
                                  .backward = zero_bwd};

/* y = 3x through 1 MB of kernel scratch in both directions, remembering where it was. */
static void *scratch_seen[8];
static int n_scratch_seen;
static bool touch_scratch(cf_node *n)
{
    float *s = cf_node_scratch(n, (size_t)1 << 20);
    if (!s) return false;
    if (n_scratch_seen < 8) scratch_seen[n_scratch_seen++] = s;
    memset(s, 0x7f, (size_t)1 << 20);
    return true;
}
static cf_status scratchy_fwd(cf_node *n)
{
    return touch_scratch(n) ? triple_fwd(n) : cf_ctx_status(n->ctx);
}
static cf_status scratchy_bwd(cf_node *n)
{
    return touch_scratch(n) ? triple_bwd(n) : cf_ctx_status(n->ctx);
}
static const cf_op_def op_scratchy = {.name = "test_scratchy", .n_inputs = 1, .n_outputs = 1,
                                      .infer = same_shape_infer, .forward = scratchy_fwd,
                                      .backward = scratchy_bwd};

static cf_tensor *heap(cf_dtype dt, int ndim, const int64_t *shape, double lo, double hi,
                       uint64_t seed)
{
    cf_tensor *t = cf_tensor_alloc(dt, ndim, shape);
    ck_assert_ptr_nonnull(t);
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0);
    cf_tensor_fill_uniform(t, &rng, lo, hi);
    return t;
}

/* ---- tensors and arena ----------------------------------------------------------------- */

START_TEST(test_tensor_basics)
{
    cf_tensor *t = cf_tensor_alloc(CF_F32, 4, (int64_t[]){2, 3, 4, 5});
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->numel, 120);
    ck_assert_int_eq(t->ndim, 4);
    for (int64_t i = 0; i < t->numel; i++) ck_assert(cf_tensor_get(t, i) == 0.0);
    cf_tensor_set(t, 119, 2.5);
    ck_assert(cf_tensor_get(t, 119) == 2.5);
    char buf[64];
    ck_assert_str_eq(cf_tensor_describe(t, buf, sizeof buf), "(2, 3, 4, 5) f32");
    cf_tensor_free(t);
    cf_tensor_free(NULL);

    ck_assert_ptr_null(cf_tensor_alloc(CF_F32, 5, (int64_t[]){1, 1, 1, 1, 1}));
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "dimensions"));
    ck_assert_ptr_null(cf_tensor_alloc(CF_F64, 2, (int64_t[]){3, -1}));
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "size -1"));
}
END_TEST

START_TEST(test_arena_exhaustion_message)
{
    cf_ctx *ctx = cf_ctx_new(4096);
    cf_tensor *a = cf_tensor_new_v(ctx, CF_F64, 100);
    ck_assert_ptr_nonnull(a);
    cf_tensor *b = cf_tensor_new_v(ctx, CF_F64, 100000);
    ck_assert_ptr_null(b);
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_ARENA);
    const char *msg = cf_ctx_error(ctx);
    ck_assert_ptr_nonnull(strstr(msg, "needed 800000 bytes"));
    ck_assert_ptr_nonnull(strstr(msg, "limit of 4096"));
    /* Sticky: later ops return NULL and report the first failure. */
    ck_assert_ptr_null(cf_exp(ctx, a));
    ck_assert_int_eq(cf_backward(ctx, a), CF_ERR_ARENA);
    cf_ctx_reset(ctx);
    ck_assert_int_eq(cf_ctx_status(ctx), CF_OK);
    ck_assert_ptr_nonnull(cf_tensor_new_v(ctx, CF_F64, 100));
    cf_ctx_free(ctx);
}
END_TEST

/* A step, repeated, needs no new memory after the first: the arena and tape keep theirs. */
START_TEST(test_arena_reuse_across_steps)
{
    cf_params *ps = cf_params_new(CF_F32);
    cf_tensor *w = cf_params_add(ps, "w", 2, (int64_t[]){16, 8});
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    cf_tensor_fill_normal(w, &rng, 0, 0.1);
    cf_ctx *ctx = cf_ctx_new(0);
    size_t reserved = 0, used = 0;
    for (int step = 0; step < 5; step++) {
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 32, 16);
        cf_tensor_fill_uniform(x, &rng, -1, 1);
        cf_tensor *loss = cf_mean_all(ctx, cf_tanh(ctx, cf_matmul(ctx, x, w)));
        ck_assert_int_eq(cf_backward(ctx, loss), CF_OK);
        if (step == 1) {
            reserved = cf_ctx_arena_reserved(ctx);
            used = cf_ctx_arena_used(ctx);
        } else if (step > 1) {
            ck_assert_uint_eq(cf_ctx_arena_reserved(ctx), reserved);
            ck_assert_uint_eq(cf_ctx_arena_used(ctx), used);
        }
        cf_ctx_reset(ctx);
    }
    ck_assert_uint_ge(cf_ctx_arena_peak(ctx), used);
    cf_ctx_free(ctx);
    cf_params_free(ps);
}
END_TEST

/* Kernel scratch is given back when the kernel returns: every call of a chain of ops, forward
 * and backward, gets the same memory, the arena's used bytes do not grow with the chain, and
 * the peak counts the scratch. */
START_TEST(test_kernel_scratch_is_reused)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 4);
    for (int i = 0; i < 4; i++) cf_tensor_set(x, i, i + 1.0);
    ck_assert_int_eq(cf_tensor_requires_grad(ctx, x), CF_OK);
    n_scratch_seen = 0;
    cf_tensor *y = cf_op_apply1(ctx, &op_scratchy, 1, &x, NULL);
    const size_t used1 = cf_ctx_arena_used(ctx);
    for (int i = 0; i < 3; i++) y = cf_op_apply1(ctx, &op_scratchy, 1, &y, NULL);
    ck_assert_ptr_nonnull(y);
    ck_assert_uint_lt(cf_ctx_arena_used(ctx) - used1, (size_t)1 << 19); /* nodes, outputs */
    ck_assert_int_eq(cf_backward(ctx, cf_sum_all(ctx, y)), CF_OK);
    ck_assert_int_eq(n_scratch_seen, 8);
    for (int i = 1; i < 8; i++) ck_assert_ptr_eq(scratch_seen[i], scratch_seen[0]);
    ck_assert_double_eq_tol(cf_tensor_get(y, 3), 4.0 * 81.0, 1e-9);
    ck_assert_double_eq_tol(cf_buf_get(CF_F32, x->grad, 0), 81.0, 1e-9);
    ck_assert_uint_ge(cf_ctx_arena_peak(ctx), cf_ctx_arena_used(ctx) + ((size_t)1 << 20));
    cf_ctx_free(ctx);
}
END_TEST

/* ---- tape ---------------------------------------------------------------------------------- */

/* y = x*x + x: x feeds two ops (and one of them twice); dy/dx = 2x + 1. */
START_TEST(test_fan_out)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 2, 3);
    for (int i = 0; i < 6; i++) cf_tensor_set(x, i, 0.5 * i - 1);
    ck_assert_int_eq(cf_tensor_requires_grad(ctx, x), CF_OK);
    cf_tensor *loss = cf_sum_all(ctx, cf_add(ctx, cf_mul(ctx, x, x), x));
    ck_assert_int_eq(cf_backward(ctx, loss), CF_OK);
    for (int i = 0; i < 6; i++)
        ck_assert_double_eq_tol(cf_buf_get(CF_F64, x->grad, i), 2 * (0.5 * i - 1) + 1, 1e-12);
    cf_ctx_free(ctx);
}
END_TEST

/* dx += 3 dy, handed over as a gradient tensor of the kernel's own (cf_node_accumulate_grad). */
static cf_status triple_bwd_accumulate(cf_node *n)
{
    const cf_tensor *x = n->in[0], *y = n->out[0];
    cf_tensor *g = cf_tensor_new(n->ctx, x->dtype, x->ndim, x->shape);
    if (!g) return cf_ctx_status(n->ctx);
    for (int64_t i = 0; i < x->numel; i++) cf_tensor_set(g, i, 3.0 * cf_buf_get(y->dtype, y->grad, i));
    return cf_node_accumulate_grad(n, 0, g);
}
static const cf_op_def op_triple_accumulate = {.name = "test_triple_accumulate", .n_inputs = 1,
                                               .n_outputs = 1, .infer = same_shape_infer,
                                               .forward = triple_fwd,
                                               .backward = triple_bwd_accumulate};

/* A gradient handed over with cf_node_accumulate_grad adds to what the input already has:
 * loss = sum(3x + x) gives 4 everywhere, whichever backward runs first. */
START_TEST(test_accumulate_grad_adds)
{
    for (int order = 0; order < 2; order++) {
        cf_ctx *ctx = cf_ctx_new(0);
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 2, 3);
        cf_tensor_fill(x, 0.25);
        ck_assert_int_eq(cf_tensor_requires_grad(ctx, x), CF_OK);
        cf_tensor *t = cf_op_apply1(ctx, &op_triple_accumulate, 1, &x, NULL);
        cf_tensor *y = order ? cf_add(ctx, x, t) : cf_add(ctx, t, x);
        ck_assert_int_eq(cf_backward(ctx, cf_sum_all(ctx, y)), CF_OK);
        for (int i = 0; i < 6; i++) ck_assert_double_eq_tol(cf_buf_get(CF_F64, x->grad, i), 4.0, 1e-12);
        cf_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_backward_twice_is_an_error)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 4);
    cf_tensor_requires_grad(ctx, x);
    cf_tensor *loss = cf_sum_all(ctx, cf_exp(ctx, x));
    ck_assert_int_eq(cf_backward(ctx, loss), CF_OK);
    ck_assert_int_eq(cf_backward(ctx, loss), CF_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "consumed"));
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_retain_allows_second_backward)
{
    cf_params *ps = cf_params_new(CF_F64);
    cf_tensor *w = cf_params_add(ps, "w", 1, (int64_t[]){3});
    cf_tensor_fill(w, 0.25);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *loss = cf_sum_all(ctx, cf_mul(ctx, w, w));
    ck_assert_int_eq(cf_backward_ex(ctx, loss, NULL, CF_BACKWARD_RETAIN), CF_OK);
    ck_assert_double_eq_tol(cf_buf_get(CF_F64, w->grad, 0), 0.5, 1e-15);
    /* Parameter gradients accumulate until zeroed; activation gradients restart. */
    ck_assert_int_eq(cf_backward(ctx, loss), CF_OK);
    ck_assert_double_eq_tol(cf_buf_get(CF_F64, w->grad, 0), 1.0, 1e-15);
    cf_params_zero_grad(ps);
    ck_assert(cf_buf_get(CF_F64, w->grad, 0) == 0.0);
    cf_ctx_free(ctx);
    cf_params_free(ps);
}
END_TEST

START_TEST(test_non_scalar_needs_seed)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 2, 2);
    cf_tensor_requires_grad(ctx, x);
    cf_tensor *y = cf_scale(ctx, x, 2.0);
    ck_assert_int_eq(cf_backward(ctx, y), CF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "not a scalar"));
    cf_ctx_reset(ctx);

    x = cf_tensor_new_v(ctx, CF_F64, 2, 2);
    cf_tensor_requires_grad(ctx, x);
    y = cf_scale(ctx, x, 2.0);
    cf_tensor *seed = cf_tensor_new_v(ctx, CF_F64, 2, 2);
    for (int i = 0; i < 4; i++) cf_tensor_set(seed, i, i);
    ck_assert_int_eq(cf_backward_ex(ctx, y, seed, 0), CF_OK);
    for (int i = 0; i < 4; i++) ck_assert(cf_buf_get(CF_F64, x->grad, i) == 2.0 * i);
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_no_grad_records_nothing)
{
    cf_params *ps = cf_params_new(CF_F32);
    cf_tensor *w = cf_params_add(ps, "w", 1, (int64_t[]){8});
    cf_ctx *ctx = cf_ctx_new(0);
    bool old = cf_ctx_set_grad(ctx, false);
    ck_assert(old);
    cf_tensor *y = cf_sum_all(ctx, cf_sigmoid(ctx, w));
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(cf_ctx_tape_size(ctx), 0);
    ck_assert_ptr_null(y->node);
    ck_assert_double_eq_tol(cf_tensor_get(y, 0), 4.0, 1e-6);
    ck_assert_int_eq(cf_backward(ctx, y), CF_ERR_STATE);
    cf_ctx_set_grad(ctx, true);
    cf_ctx_reset(ctx);
    y = cf_sum_all(ctx, cf_sigmoid(ctx, w));
    ck_assert_int_eq(cf_ctx_tape_size(ctx), 2);
    cf_ctx_free(ctx);
    cf_params_free(ps);
}
END_TEST

START_TEST(test_backward_must_write_every_gradient)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 3);
    cf_tensor_requires_grad(ctx, x);
    cf_tensor *y = cf_op_apply1(ctx, &op_silent, 1, &x, NULL);
    ck_assert_int_eq(cf_backward(ctx, cf_sum_all(ctx, y)), CF_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "'test_silent'"));
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "wrote no gradient for input 0"));
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_backward_wrong_gradient_shape)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 3);
    cf_tensor_requires_grad(ctx, x);
    cf_tensor *y = cf_op_apply1(ctx, &op_wrong_shape, 1, &x, NULL);
    ck_assert_int_eq(cf_backward(ctx, cf_sum_all(ctx, y)), CF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "gradient of shape (2) f64"));
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "(3) f64"));
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_shape_failure_is_sticky_and_named)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *a = cf_tensor_new_v(ctx, CF_F32, 2, 3);
    cf_tensor *b = cf_tensor_new_v(ctx, CF_F32, 4);
    cf_tensor_requires_grad(ctx, a);
    cf_tensor *c = cf_add(ctx, a, b);
    ck_assert_ptr_null(c);
    ck_assert_ptr_null(cf_exp(ctx, c));
    ck_assert_int_eq(cf_backward(ctx, c), CF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "op 'add'"));
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "do not broadcast"));
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_dtype_mismatch)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *a = cf_tensor_new_v(ctx, CF_F32, 3);
    cf_tensor *b = cf_tensor_new_v(ctx, CF_F64, 3);
    ck_assert_ptr_null(cf_mul(ctx, a, b));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_DTYPE);
    cf_ctx_free(ctx);
}
END_TEST

/* Misuse: wrong arity trips CF_ASSERT, which aborts. */
START_TEST(test_assert_on_misuse)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *a = cf_tensor_new_v(ctx, CF_F32, 3);
    cf_op_apply1(ctx, &cf__op_add, 1, &a, NULL);
}
END_TEST

/* ---- registry ------------------------------------------------------------------------------ */

/* The run record counts what ran: a fast context runs tanh's fast forward and backward, a
 * reference context the reference ones, an op without fast kernels only reference ones, an
 * unregistered op nothing; reset zeroes the counts. */
START_TEST(test_op_runs_record)
{
    cf_op_runs_reset();
    const cf_op_def *tanh_op = cf_op_find("tanh"), *relu_op = cf_op_find("relu");
    ck_assert_ptr_nonnull(tanh_op);
    for (int family = 0; family < 2; family++) {
        cf_ctx *ctx = cf_ctx_new(0);
        cf_ctx_set_kernels(ctx, family ? CF_KERNELS_REFERENCE : CF_KERNELS_FAST);
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 2, 3, 4);
        cf_tensor_fill(x, 0.5);
        cf_tensor_requires_grad(ctx, x);
        cf_tensor *y = cf_op_apply1(ctx, &op_counted, 1, &(cf_tensor *){cf_tanh(ctx, x)}, NULL);
        ck_assert_int_eq(cf_backward(ctx, cf_sum_all(ctx, y)), CF_OK);
        cf_ctx_free(ctx);
    }
    cf_op_runs t = cf_op_runs_of(tanh_op);
    ck_assert(t.forward_fast == 1 && t.backward_fast == 1);
    ck_assert(t.forward_reference == 1 && t.backward_reference == 1);
    cf_op_runs r = cf_op_runs_of(relu_op);
    ck_assert(r.forward_fast == 0 && r.forward_reference == 0);
    cf_op_runs u = cf_op_runs_of(&op_counted); /* not registered */
    ck_assert(u.forward_fast == 0 && u.forward_reference == 0 && u.backward_reference == 0);
    ck_assert_int_eq(cf_op_register(&op_counted), CF_OK);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 1, 5);
    cf_tensor_requires_grad(ctx, x);
    ck_assert_int_eq(cf_backward(ctx, cf_sum_all(ctx, cf_op_apply1(ctx, &op_counted, 1, &x, NULL))),
                     CF_OK);
    cf_ctx_free(ctx);
    u = cf_op_runs_of(&op_counted); /* no fast kernels: its runs are reference runs */
    ck_assert(u.forward_fast == 0 && u.forward_reference == 1 && u.backward_reference == 1);
    cf_op_runs_reset();
    t = cf_op_runs_of(tanh_op);
    ck_assert(t.forward_fast == 0 && t.backward_fast == 0 && t.forward_reference == 0);
}
END_TEST

START_TEST(test_registry)
{
    int before = cf_op_count();
    ck_assert_int_ge(before, CF_OP_BUILTIN_COUNT);
    ck_assert_ptr_eq(cf_op_find("add"), &cf__op_add);
    ck_assert_ptr_null(cf_op_find("no_such_op"));
    ck_assert_int_eq(cf_op_register(&op_triple), CF_OK);
    ck_assert_ptr_eq(cf_op_find("test_triple"), &op_triple);
    ck_assert_int_eq(cf_op_count(), before + 1);
    ck_assert_int_eq(cf_op_register(&op_triple), CF_ERR_EXISTS);
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "already registered"));

    static const cf_op_def no_name = {.n_inputs = 1, .n_outputs = 1, .infer = same_shape_infer,
                                      .forward = triple_fwd, .backward = triple_bwd};
    static const cf_op_def no_infer = {.name = "x1", .n_inputs = 1, .n_outputs = 1,
                                       .forward = triple_fwd, .backward = triple_bwd};
    static const cf_op_def no_forward = {.name = "x2", .n_inputs = 1, .n_outputs = 1,
                                         .infer = same_shape_infer, .backward = triple_bwd};
    static const cf_op_def no_backward = {.name = "x3", .n_inputs = 1, .n_outputs = 1,
                                          .infer = same_shape_infer, .forward = triple_fwd};
    static const cf_op_def no_grad_needed = {.name = "x4", .n_inputs = 1, .n_outputs = 1,
                                             .infer = same_shape_infer, .forward = triple_fwd,
                                             .no_grad_inputs = 1};
    static const cf_op_def bad_arity = {.name = "x5", .n_inputs = 0, .n_outputs = 1,
                                        .infer = same_shape_infer, .forward = triple_fwd,
                                        .backward = triple_bwd};
    ck_assert_int_eq(cf_op_register(&no_name), CF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "no name"));
    ck_assert_int_eq(cf_op_register(&no_infer), CF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "infer"));
    ck_assert_int_eq(cf_op_register(&no_forward), CF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "forward"));
    ck_assert_int_eq(cf_op_register(&no_backward), CF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "backward"));
    ck_assert_int_eq(cf_op_register(&bad_arity), CF_ERR_ARG);
    ck_assert_int_eq(cf_op_register(&no_grad_needed), CF_OK);
    ck_assert_int_eq(cf_op_count(), before + 2);
}
END_TEST

/* ---- parameters -------------------------------------------------------------------------- */

START_TEST(test_params_flat_views)
{
    cf_params *ps = cf_params_new(CF_F32);
    cf_tensor *first = cf_params_add(ps, "layers.0.weight", 2, (int64_t[]){3, 5});
    cf_tensor_fill(first, 1.5);
    /* Grow the flat buffer many times: earlier views follow it. */
    char name[64];
    for (int i = 1; i < 200; i++) {
        snprintf(name, sizeof name, "layers.%d.weight", i);
        ck_assert_ptr_nonnull(cf_params_add(ps, name, 2, (int64_t[]){7, i}));
    }
    ck_assert_int_eq(cf_params_count(ps), 200);
    ck_assert_ptr_eq(cf_params_find(ps, "layers.0.weight"), first);
    for (int64_t i = 0; i < first->numel; i++) ck_assert(cf_tensor_get(first, i) == 1.5f);
    float *data = cf_params_data(ps), *grad = cf_params_grad(ps);
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *t = cf_params_at(ps, i);
        size_t off = cf_params_offset(ps, i);
        ck_assert_uint_eq(off % 16, 0);
        ck_assert_ptr_eq(t->data, data + off);
        ck_assert_ptr_eq(t->grad, grad + off);
    }
    int64_t expect = 15;
    for (int i = 1; i < 200; i++) expect += 7 * i;
    ck_assert_int_eq(cf_params_numel(ps), expect);

    ck_assert_ptr_null(cf_params_add(ps, "layers.3.weight", 1, (int64_t[]){2}));
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "'layers.3.weight' is already"));
    ck_assert_ptr_null(cf_params_add(ps, "", 1, (int64_t[]){2}));
    ck_assert_ptr_null(cf_params_add(ps, "bad", 1, (int64_t[]){0}));

    cf_tensor *flag = cf_params_add_state(ps, "actnorm.initialized", 0, NULL);
    ck_assert_ptr_nonnull(flag);
    ck_assert_ptr_null(flag->grad);
    ck_assert_int_eq(cf_params_state_count(ps), 1);
    ck_assert_int_eq(cf_params_count(ps), 200);
    ck_assert_ptr_eq(cf_params_find(ps, "actnorm.initialized"), flag);

    grad[3] = 4;
    cf_params_zero_grad(ps);
    ck_assert(grad[3] == 0);
    cf_params_free(ps);
    cf_params_free(NULL);
}
END_TEST

/* ---- gradcheck -------------------------------------------------------------------------- */

START_TEST(test_gradcheck_passes_correct_op)
{
    cf_tensor *x = heap(CF_F64, 2, (int64_t[]){4, 5}, -1, 1, 3);
    cf_gradcheck_result res;
    ck_assert_int_eq(cf_gradcheck_op(&op_triple, 1, &x, NULL, NULL, &res), CF_OK);
    ck_assert(res.passed);
    ck_assert_int_eq(res.values_checked, 20);
    ck_assert_double_le(res.max_abs_err, 1e-8);
    cf_tensor_free(x);
}
END_TEST

START_TEST(test_gradcheck_catches_one_percent_in_one_element)
{
    cf_tensor *x = heap(CF_F64, 2, (int64_t[]){4, 5}, -1, 1, 3);
    cf_gradcheck_result res;
    ck_assert_int_eq(cf_gradcheck_op(&op_triple_bad, 1, &x, NULL, NULL, &res), CF_ERR_GRADCHECK);
    ck_assert(!res.passed);
    ck_assert_ptr_nonnull(strstr(res.message, "input 0 element 7"));
    cf_tensor_free(x);
}
END_TEST

START_TEST(test_gradcheck_refuses_degenerate_check)
{
    cf_tensor *x = heap(CF_F64, 1, (int64_t[]){6}, -1, 1, 3);
    cf_gradcheck_result res;
    ck_assert_int_eq(cf_gradcheck_op(&op_zero, 1, &x, NULL, NULL, &res), CF_ERR_GRADCHECK);
    ck_assert_ptr_nonnull(strstr(res.message, "degenerate"));
    cf_tensor_free(x);

    /* A ReLU fed only negatives: both gradients are zero. */
    x = heap(CF_F64, 1, (int64_t[]){6}, -2, -1, 3);
    ck_assert_int_eq(cf_gradcheck_op(&cf__op_relu, 1, &x, NULL, NULL, &res), CF_ERR_GRADCHECK);
    ck_assert_ptr_nonnull(strstr(res.message, "degenerate"));
    cf_gradcheck_opts fast = {.fast = true};
    ck_assert_int_eq(cf_gradcheck_op(&cf__op_relu, 1, &x, NULL, &fast, &res), CF_ERR_GRADCHECK);
    ck_assert_ptr_nonnull(strstr(res.message, "degenerate"));
    cf_tensor_free(x);
}
END_TEST

/* Fast mode on a graph of several ops with parameters, and its failure on a wrong op. */
typedef struct mlp_graph {
    cf_tensor *x, *w1, *w2;
    const cf_op_def *extra;
} mlp_graph;

static cf_status mlp_fn(cf_ctx *ctx, void *user, int *n_out, cf_tensor **out)
{
    mlp_graph *g = user;
    cf_tensor *h = cf_tanh(ctx, cf_matmul(ctx, g->x, g->w1));
    cf_tensor *y = cf_matmul(ctx, h, g->w2);
    if (g->extra) y = cf_op_apply1(ctx, g->extra, 1, &y, NULL);
    out[0] = cf_mean(ctx, cf_softplus(ctx, y));
    *n_out = 1;
    return cf_ctx_status(ctx);
}

START_TEST(test_gradcheck_graph_fast_mode)
{
    cf_params *ps = cf_params_new(CF_F64);
    cf_tensor *w1 = cf_params_add(ps, "w1", 2, (int64_t[]){6, 10});
    cf_tensor *w2 = cf_params_add(ps, "w2", 2, (int64_t[]){10, 4});
    cf_rng rng;
    cf_rng_seed(&rng, 5, 0);
    cf_tensor_fill_normal(w1, &rng, 0, 0.5);
    cf_tensor_fill_normal(w2, &rng, 0, 0.5);
    mlp_graph g = {heap(CF_F64, 2, (int64_t[]){3, 6}, -1, 1, 9), w1, w2, NULL};
    cf_tensor *wrt[2] = {w1, w2};
    cf_gradcheck_opts opts = {.fast = true, .n_directions = 8};
    cf_gradcheck_result res;
    ck_assert_int_eq(cf_gradcheck_graph(mlp_fn, &g, 2, wrt, &opts, &res), CF_OK);
    ck_assert_int_eq(res.values_checked, 8);
    opts.fast = false;
    ck_assert_int_eq(cf_gradcheck_graph(mlp_fn, &g, 2, wrt, &opts, &res), CF_OK);
    ck_assert_int_eq(res.values_checked, 100);
    /* An op whose gradient is 1% off in one element of a (3, 4) output. */
    g.extra = &op_triple_bad;
    opts.fast = false;
    ck_assert_int_eq(cf_gradcheck_graph(mlp_fn, &g, 2, wrt, &opts, &res), CF_ERR_GRADCHECK);
    ck_assert_ptr_nonnull(strstr(res.message, "element"));
    /* The same fault in fast mode (random directions only). */
    opts.fast = true;
    opts.n_directions = 8;
    ck_assert_int_eq(cf_gradcheck_graph(mlp_fn, &g, 2, wrt, &opts, &res), CF_ERR_GRADCHECK);
    ck_assert(!res.passed);
    ck_assert_ptr_nonnull(strstr(res.message, "direction"));
    cf_tensor_free(g.x);
    cf_params_free(ps);
}
END_TEST

/* Fast mode on its own catches the 1%-in-one-element fault on the op alone, for every seed of
 * its directions tried, and passes the correct op with the same directions. */
START_TEST(test_gradcheck_fast_mode_catches_one_element)
{
    cf_tensor *x = heap(CF_F64, 2, (int64_t[]){4, 5}, -1, 1, 3);
    cf_gradcheck_result res;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        cf_gradcheck_opts fast = {.fast = true, .n_directions = 8, .seed = seed};
        ck_assert_int_eq(cf_gradcheck_op(&op_triple, 1, &x, NULL, &fast, &res), CF_OK);
        ck_assert_int_eq(res.values_checked, 8);
        ck_assert_int_eq(cf_gradcheck_op(&op_triple_bad, 1, &x, NULL, &fast, &res),
                         CF_ERR_GRADCHECK);
        ck_assert(!res.passed);
        ck_assert_ptr_nonnull(strstr(res.message, "direction"));
    }
    cf_tensor_free(x);
}
END_TEST

/* f32 inputs are checked with the looser f32 tolerances. */
START_TEST(test_gradcheck_f32)
{
    cf_tensor *x = heap(CF_F32, 2, (int64_t[]){3, 4}, -2, 2, 11);
    cf_gradcheck_result res;
    ck_assert_int_eq(cf_gradcheck_op(&cf__op_tanh, 1, &x, NULL, NULL, &res), CF_OK);
    cf_tensor_free(x);
}
END_TEST

START_TEST(test_rng_reproducible)
{
    cf_rng a, b, c;
    cf_rng_seed(&a, 42, 0);
    cf_rng_seed(&b, 42, 0);
    cf_rng_seed(&c, 42, 1);
    int same = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = cf_rng_next(&a);
        ck_assert_uint_eq(x, cf_rng_next(&b));
        same += x == cf_rng_next(&c);
    }
    ck_assert_int_eq(same, 0);
    double s = 0, s2 = 0;
    for (int i = 0; i < 20000; i++) {
        double v = cf_rng_normal(&a);
        s += v, s2 += v * v;
    }
    ck_assert_double_le(fabs(s / 20000), 0.03);
    ck_assert_double_le(fabs(s2 / 20000 - 1), 0.05);
}
END_TEST

static Suite *autodiff_suite(void)
{
    Suite *s = suite_create("autodiff");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_tensor_basics);
    tcase_add_test(tc, test_arena_exhaustion_message);
    tcase_add_test(tc, test_arena_reuse_across_steps);
    tcase_add_test(tc, test_kernel_scratch_is_reused);
    tcase_add_test(tc, test_fan_out);
    tcase_add_test(tc, test_accumulate_grad_adds);
    tcase_add_test(tc, test_backward_twice_is_an_error);
    tcase_add_test(tc, test_retain_allows_second_backward);
    tcase_add_test(tc, test_non_scalar_needs_seed);
    tcase_add_test(tc, test_no_grad_records_nothing);
    tcase_add_test(tc, test_backward_must_write_every_gradient);
    tcase_add_test(tc, test_backward_wrong_gradient_shape);
    tcase_add_test(tc, test_shape_failure_is_sticky_and_named);
    tcase_add_test(tc, test_dtype_mismatch);
    /* Without fork (valgrind runs), an expected abort would end the whole runner. */
    const char *fork_mode = getenv("CK_FORK");
    if (!fork_mode || strcmp(fork_mode, "no") != 0)
        tcase_add_test_raise_signal(tc, test_assert_on_misuse, SIGABRT);
    tcase_add_test(tc, test_registry);
    tcase_add_test(tc, test_op_runs_record);
    tcase_add_test(tc, test_params_flat_views);
    tcase_add_test(tc, test_rng_reproducible);
    suite_add_tcase(s, tc);

    TCase *gc = tcase_create("gradcheck");
    tcase_set_timeout(gc, 60);
    tcase_add_test(gc, test_gradcheck_passes_correct_op);
    tcase_add_test(gc, test_gradcheck_catches_one_percent_in_one_element);
    tcase_add_test(gc, test_gradcheck_refuses_degenerate_check);
    tcase_add_test(gc, test_gradcheck_graph_fast_mode);
    tcase_add_test(gc, test_gradcheck_fast_mode_catches_one_element);
    tcase_add_test(gc, test_gradcheck_f32);
    suite_add_tcase(s, gc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(autodiff_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
