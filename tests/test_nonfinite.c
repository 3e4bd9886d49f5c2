/* test_nonfinite.c: NaN and infinity meeting a whole flow, its Adam optimizer and its
 * checkpoints, at the library level (the `cincflow train` loop is tested from outside by
 * check_crash_safety.py and check_full_disk.sh).
 *
 * A small CInC flow (8 x 8 x 1, L = 2, K = 1, width 8) is initialised and trained a few clean
 * steps, so that actnorm is initialised and Adam's moments are not zero; then:
 *   - a batch holding one NaN, or one +Inf: the loss is not finite, backward still completes,
 *     and cf_adam_step refuses the resulting gradient, so even a loop that never looks at the
 *     loss changes nothing: every parameter, state tensor and moment is bit-identical, the
 *     update count stays, the skip is counted, and the next clean batch trains normally;
 *   - a clean batch whose gradient gets a NaN, +Inf or -Inf written into the flat gradient
 *     buffer after backward (a parameter in the middle of the buffer, and the very last
 *     element): the same, and the message names the parameter;
 *   - a checkpoint saved from the flow and then edited with the HDF5 C API, as another tool
 *     would (NaN and +Inf in a parameter, -Inf in a second moment, NaN in an actnorm state
 *     flag): loading into a fresh flow is refused with CF_ERR_NUMERIC, the message names the
 *     file and the tensor, and the fresh flow and optimizer are left untouched.
 *
 * Not repeated here: the optimizer's refusal on a hand-made parameter set, for f32 and f64,
 * with clipping on (test_optim.c, test_non_finite_gradient_is_refused), and a checkpoint the
 * saver itself wrote with non-finite values (test_io_checkpoint.c, test_checkpoint_non_finite).
 */
#include <check.h>
#include <hdf5.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cincflow.h"

#define SIDE  8
#define BATCH 4

static const cf_flow_config small_config = {
    .height = SIDE, .width = SIDE, .channels = 1, .levels = 2, .depth = 1, .hidden = 8, .seed = 5};
static const cf_adam_opts adam_opts = {.lr = 1e-3, .warmup_steps = 2, .clip_norm = 50};

/* A batch of dequantized 8-bit images: k/256 - 0.5 + U(0, 1/256). */
static void fill_batch(cf_tensor *x, cf_rng *rng)
{
    for (int64_t i = 0; i < x->numel; i++) {
        double k = floor(256.0 * cf_rng_uniform(rng));
        cf_tensor_set(x, i, k / 256.0 - 0.5 + cf_rng_uniform(rng) / 256.0);
    }
}

typedef struct fixture {
    cf_flow *flow;
    cf_params *ps;
    cf_adam *opt;
    cf_ctx *ctx;
    cf_tensor *x; /* (BATCH, SIDE, SIDE, 1) */
    cf_rng rng;
} fixture;

/* Forward, loss, backward on fx->x; returns the loss. Backward must succeed whatever x holds. */
static double forward_backward(fixture *fx)
{
    cf_ctx_reset(fx->ctx);
    cf_tensor *bpd = cf_flow_bpd(fx->flow, fx->ctx, fx->x);
    ck_assert_msg(bpd, "forward: %s", cf_ctx_error(fx->ctx));
    cf_params_zero_grad(fx->ps);
    ck_assert_msg(cf_backward(fx->ctx, bpd) == CF_OK, "backward: %s", cf_ctx_error(fx->ctx));
    return cf_tensor_get(bpd, 0);
}

/* A clean step that must be applied. */
static void clean_step(fixture *fx)
{
    fill_batch(fx->x, &fx->rng);
    double loss = forward_backward(fx);
    ck_assert_msg(isfinite(loss), "a clean batch gave loss %g", loss);
    cf_step_info info;
    ck_assert_msg(cf_adam_step(fx->opt, &info) == CF_OK, "%s", cf_last_error());
    ck_assert(!info.skipped);
}

/* The flow, its optimizer, and three clean updates (the first forward initialises actnorm). */
static void fixture_init(fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    fx->flow = cf_flow_new(&small_config, CF_F32);
    ck_assert_msg(fx->flow, "%s", cf_last_error());
    fx->ps = cf_flow_params(fx->flow);
    fx->opt = cf_adam_new(fx->ps, &adam_opts);
    ck_assert_msg(fx->opt, "%s", cf_last_error());
    fx->ctx = cf_ctx_new(0);
    fx->x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){BATCH, SIDE, SIDE, 1});
    ck_assert(fx->ctx && fx->x);
    cf_rng_seed(&fx->rng, 17, 0);
    for (int i = 0; i < 3; i++) clean_step(fx);
    ck_assert_int_eq(cf_adam_step_count(fx->opt), 3);
}

static void fixture_free(fixture *fx)
{
    cf_tensor_free(fx->x);
    cf_ctx_free(fx->ctx);
    cf_adam_free(fx->opt);
    cf_flow_free(fx->flow);
}

/* Copies of everything a step may change: parameters, moments, state tensors. */
typedef struct snapshot {
    void *bufs[3]; /* parameters, m, v: flat */
    size_t bytes;
    void *state; /* state tensors, one after the other */
    size_t state_bytes;
} snapshot;

static void *flat_buffer(fixture *fx, int k)
{
    return k == 0 ? cf_params_data(fx->ps) : k == 1 ? cf_adam_m(fx->opt) : cf_adam_v(fx->opt);
}

static void snapshot_take(fixture *fx, snapshot *s)
{
    s->bytes = cf_params_flat_numel(fx->ps) * sizeof(float);
    for (int k = 0; k < 3; k++) {
        s->bufs[k] = malloc(s->bytes);
        memcpy(s->bufs[k], flat_buffer(fx, k), s->bytes);
    }
    s->state_bytes = 0;
    for (int i = 0; i < cf_params_state_count(fx->ps); i++)
        s->state_bytes += (size_t)cf_params_state_at(fx->ps, i)->numel * sizeof(float);
    s->state = malloc(s->state_bytes + 1);
    char *p = s->state;
    for (int i = 0; i < cf_params_state_count(fx->ps); i++) {
        const cf_tensor *t = cf_params_state_at(fx->ps, i);
        memcpy(p, t->data, (size_t)t->numel * sizeof(float));
        p += (size_t)t->numel * sizeof(float);
    }
}

static void snapshot_expect_same(fixture *fx, const snapshot *s, const char *when)
{
    static const char *what[] = {"a parameter", "a first moment", "a second moment"};
    for (int k = 0; k < 3; k++)
        ck_assert_msg(memcmp(s->bufs[k], flat_buffer(fx, k), s->bytes) == 0, "%s: %s changed", when,
                      what[k]);
    const char *p = s->state;
    for (int i = 0; i < cf_params_state_count(fx->ps); i++) {
        const cf_tensor *t = cf_params_state_at(fx->ps, i);
        ck_assert_msg(memcmp(p, t->data, (size_t)t->numel * sizeof(float)) == 0,
                      "%s: state %s changed", when, t->name);
        p += (size_t)t->numel * sizeof(float);
    }
}

static void snapshot_free(snapshot *s)
{
    for (int k = 0; k < 3; k++) free(s->bufs[k]);
    free(s->state);
}

/* The refusal every case expects: CF_ERR_NUMERIC (the message naming `culprit` when not NULL),
 * nothing changed, the skip counted; then a clean batch is update 4 with the skip still
 * counted. */
static void expect_skipped_then_recovers(fixture *fx, const snapshot *before, const char *when,
                                         const char *culprit)
{
    cf_step_info info;
    ck_assert_int_eq(cf_adam_step(fx->opt, &info), CF_ERR_NUMERIC);
    const char *msg = cf_last_error();
    ck_assert_msg(!culprit || strstr(msg, culprit), "the message does not name %s: %s", culprit,
                  msg);
    ck_assert(info.skipped);
    ck_assert(!isfinite(info.grad_norm));
    ck_assert_double_eq(info.lr, 0);
    snapshot_expect_same(fx, before, when);
    ck_assert_int_eq(cf_adam_step_count(fx->opt), 3);
    ck_assert_int_eq(cf_adam_skipped_count(fx->opt), 1);
    clean_step(fx);
    ck_assert_int_eq(cf_adam_step_count(fx->opt), 4);
    ck_assert_int_eq(cf_adam_skipped_count(fx->opt), 1);
}

/* ---- (a) a batch holding a NaN or an infinity ---------------------------------------------- */

/* Loop: NaN, +Inf; in the first image, then in the last one. */
START_TEST(test_non_finite_batch_is_skipped)
{
    fixture fx;
    fixture_init(&fx);
    fill_batch(fx.x, &fx.rng);
    int64_t where = _i < 2 ? 5 : fx.x->numel - 3;
    cf_tensor_set(fx.x, where, _i % 2 ? INFINITY : NAN);
    snapshot before;
    snapshot_take(&fx, &before);
    double loss = forward_backward(&fx);
    ck_assert_msg(!isfinite(loss), "a batch with %s gave a finite loss %g", _i % 2 ? "Inf" : "NaN",
                  loss);
    /* The forward and backward alone changed nothing (actnorm is initialised already). */
    snapshot_expect_same(&fx, &before, "forward and backward of a non-finite batch");
    expect_skipped_then_recovers(&fx, &before, "a non-finite batch", NULL);
    snapshot_free(&before);
    fixture_free(&fx);
}
END_TEST

/* ---- (b) a finite batch, a gradient made non-finite after backward ------------------------- */

/* Loop: NaN, +Inf, -Inf into a parameter in the middle of the flat buffer; the same into the
 * very last element of the last parameter. */
START_TEST(test_non_finite_gradient_is_skipped)
{
    static const double bad[] = {NAN, INFINITY, -INFINITY};
    fixture fx;
    fixture_init(&fx);
    fill_batch(fx.x, &fx.rng);
    ck_assert(isfinite(forward_backward(&fx)));
    int n = cf_params_count(fx.ps);
    int victim = _i < 3 ? n / 2 : n - 1;
    cf_tensor *t = cf_params_at(fx.ps, victim);
    int64_t element = _i < 3 ? t->numel / 2 : t->numel - 1;
    ((float *)t->grad)[element] = (float)bad[_i % 3];
    snapshot before;
    snapshot_take(&fx, &before);
    expect_skipped_then_recovers(&fx, &before, "a non-finite gradient", t->name);
    snapshot_free(&before);
    fixture_free(&fx);
}
END_TEST

/* ---- (c) a checkpoint edited to hold a non-finite value ------------------------------------ */

/* Overwrites element `element` of dataset `dataset` (a float32 dataset) in the file. */
static void poke_hdf5(const char *path, const char *dataset, hsize_t element, float value)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert_msg(f >= 0, "H5Fopen %s", path);
    hid_t d = H5Dopen2(f, dataset, H5P_DEFAULT);
    ck_assert_msg(d >= 0, "%s: no dataset %s", path, dataset);
    hid_t space = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    ck_assert_msg((hssize_t)element < n, "%s has %lld elements", dataset, (long long)n);
    float *buf = malloc((size_t)n * sizeof(float));
    ck_assert(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    buf[element] = value;
    ck_assert(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    free(buf);
    H5Sclose(space);
    H5Dclose(d);
    ck_assert(H5Fclose(f) >= 0);
}

/* Loop: NaN and +Inf in a coupling weight, -Inf in a second moment, NaN in an actnorm state. */
START_TEST(test_checkpoint_with_non_finite_value_is_refused)
{
    fixture fx;
    fixture_init(&fx);
    char path[64];
    snprintf(path, sizeof path, "/tmp/cf_test_nonfinite.%ld.h5", (long)getpid());
    ck_assert_msg(cf_checkpoint_save(path, fx.ps, fx.opt, NULL) == CF_OK, "%s", cf_last_error());

    /* The tensor to spoil: a parameter in the middle of the set, or the first state tensor. */
    const cf_tensor *t =
        _i == 3 ? cf_params_state_at(fx.ps, 0) : cf_params_at(fx.ps, cf_params_count(fx.ps) / 2);
    char dataset[256];
    static const char *groups[] = {"params", "params", "optimizer/v", "state"};
    snprintf(dataset, sizeof dataset, "/%s/%s", groups[_i], t->name);
    float value = _i == 0 ? NAN : _i == 1 ? INFINITY : _i == 2 ? -INFINITY : NAN;
    poke_hdf5(path, dataset, (hsize_t)(t->numel - 1), value);

    /* A fresh flow (another seed, so its values differ from the file's) and optimizer. */
    cf_flow_config cfg = small_config;
    cfg.seed = 99;
    cf_flow *fresh = cf_flow_new(&cfg, CF_F32);
    cf_params *ps = cf_flow_params(fresh);
    cf_adam *opt = cf_adam_new(ps, &adam_opts);
    ck_assert(fresh && opt);
    size_t bytes = cf_params_flat_numel(ps) * sizeof(float);
    float *before = malloc(bytes);
    memcpy(before, cf_params_data(ps), bytes);
    cf_ckpt_meta meta = {0};
    meta.step = 12345;
    ck_assert_int_eq(cf_checkpoint_load(path, ps, opt, &meta), CF_ERR_NUMERIC);
    const char *msg = cf_last_error();
    ck_assert_msg(strstr(msg, path) && strstr(msg, t->name),
                  "the message does not name the file and %s: %s", t->name, msg);
    ck_assert_msg(memcmp(before, cf_params_data(ps), bytes) == 0,
                  "a refused load changed the flow");
    for (size_t i = 0; i < cf_params_flat_numel(ps); i++) {
        ck_assert(((float *)cf_adam_m(opt))[i] == 0.0f);
        ck_assert(((float *)cf_adam_v(opt))[i] == 0.0f);
    }
    ck_assert_int_eq(cf_adam_step_count(opt), 0);
    for (int i = 0; i < cf_params_state_count(ps); i++)
        ck_assert_double_eq(cf_tensor_get(cf_params_state_at(ps, i), 0), 0.0);

    /* The unspoilt file loads: the refusal was about that one value. */
    snprintf(path + strlen(path), sizeof path - strlen(path), ".ok");
    ck_assert_int_eq(cf_checkpoint_save(path, fx.ps, fx.opt, NULL), CF_OK);
    ck_assert_msg(cf_checkpoint_load(path, ps, opt, &meta) == CF_OK, "%s", cf_last_error());
    ck_assert(memcmp(cf_params_data(ps), cf_params_data(fx.ps), bytes) == 0);
    unlink(path);
    path[strlen(path) - 3] = '\0';
    unlink(path);
    cf_ckpt_meta_clear(&meta);
    free(before);
    cf_adam_free(opt);
    cf_flow_free(fresh);
    fixture_free(&fx);
}
END_TEST

/* A NaN or infinity in the batch that actnorm initialises from: the forward fails with
 * CF_ERR_NUMERIC naming the actnorm, and nothing is initialised (no NaN parameters). */
START_TEST(test_actnorm_init_refuses_non_finite_batch)
{
    cf_flow *flow = cf_flow_new(&small_config, CF_F32);
    ck_assert_msg(flow, "%s", cf_last_error());
    cf_params *ps = cf_flow_params(flow);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){BATCH, SIDE, SIDE, 1});
    ck_assert(ctx && x);
    cf_rng rng;
    cf_rng_seed(&rng, 23, 0);
    fill_batch(x, &rng);
    cf_tensor_set(x, 37, _i == 0 ? NAN : INFINITY);
    size_t bytes = (size_t)cf_params_numel(ps) * sizeof(float);
    void *before = malloc(bytes);
    ck_assert(before);
    memcpy(before, cf_params_data(ps), bytes);
    ck_assert_ptr_null(cf_flow_bpd(flow, ctx, x));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_NUMERIC);
    ck_assert_msg(strstr(cf_ctx_error(ctx), "actnorm") && strstr(cf_ctx_error(ctx), "not finite"),
                  "message: %s", cf_ctx_error(ctx));
    ck_assert_msg(memcmp(before, cf_params_data(ps), bytes) == 0, "parameters changed");
    /* A clean batch afterwards initialises and gives a finite loss. */
    cf_ctx_reset(ctx);
    fill_batch(x, &rng);
    cf_tensor *bpd = cf_flow_bpd(flow, ctx, x);
    ck_assert_msg(bpd && isfinite(cf_tensor_get(bpd, 0)), "%s", cf_ctx_error(ctx));
    free(before);
    cf_tensor_free(x);
    cf_ctx_free(ctx);
    cf_flow_free(flow);
}
END_TEST

static Suite *nonfinite_suite(void)
{
    Suite *s = suite_create("nonfinite");
    TCase *tc = tcase_create("nonfinite");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_non_finite_batch_is_skipped, 0, 4);
    tcase_add_loop_test(tc, test_non_finite_gradient_is_skipped, 0, 6);
    tcase_add_loop_test(tc, test_checkpoint_with_non_finite_value_is_refused, 0, 4);
    tcase_add_loop_test(tc, test_actnorm_init_refuses_non_finite_batch, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    omp_set_num_threads(1); /* tensors of a few hundred elements: threads would only wait */
    SRunner *sr = srunner_create(nonfinite_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
