/* test_check.c: the flow checker (models/cf_check.h).
 *
 *  - every built-in layer kind passes every check, and so does every layer of small built-in
 *    flows (each conv kind with each coupling);
 *  - the checker catches three faults, each in a layer written here: a log-det wrong by 1% in
 *    one channel, an inverse wrong in one block of channels, and a backward wrong by 1% in
 *    one element (an op registered here, whose backward is off in one element of its input
 *    gradient); and three more: a declared output shape that is not the real one, an output
 *    that is not finite at initialisation, and images that depend on each other. Each fault
 *    fails exactly its own check, and the same layer without the fault passes every check;
 *  - f32 layers and flows are refused with a message naming the layer and the tensor; the
 *    layer is left as it was (parameters, state, gradients); the report has one line per
 *    layer and closes with "N passed, N failed".
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_models_impl.h"
#include "cincflow.h"

/* ---- the built-in kinds ------------------------------------------------------------------- */

static cf_layer *make_builtin(int kind, cf_params *ps, const int64_t shape[3], cf_rng *rng)
{
    switch (kind) {
    case 0: return cf_actnorm_layer(ps, "actnorm", shape);
    case 1: return cf_cinc_conv_layer(ps, "cinc", shape, rng);
    case 2: return cf_masked_conv_layer(ps, "causal", shape, CF_CONV_MASK_EMERGING_CAUSAL, rng);
    case 3:
        return cf_masked_conv_layer(ps, "anticausal", shape, CF_CONV_MASK_EMERGING_ANTICAUSAL,
                                    rng);
    case 4: return cf_invconv1x1_layer(ps, "invconv", shape, rng);
    case 5: return cf_emerging_conv_layer(ps, "emerging", shape, rng);
    case 6: return cf_coupling_layer(ps, "affine", shape, CF_COUPLING_KIND_AFFINE, 6, rng);
    case 7: return cf_coupling_layer(ps, "quad", shape, CF_COUPLING_KIND_QUAD, 6, rng);
    case 8: return cf_squeeze_layer("squeeze", shape);
    case 9: return cf_split_layer(ps, "split", shape);
    case 10: return cf_prior_layer(ps, "prior", shape);
    }
    return NULL;
}
#define N_BUILTIN 11

START_TEST(test_builtin_kind_passes)
{
    cf_params *ps = cf_params_new(CF_F64);
    cf_rng rng;
    cf_rng_seed(&rng, 11, (uint64_t)_i);
    cf_layer *l = make_builtin(_i, ps, (int64_t[]){4, 4, 8}, &rng);
    ck_assert_msg(l != NULL, "kind %d: %s", _i, cf_last_error());
    cf_check_result r;
    cf_status st = cf_layer_check(l, NULL, &r);
    cf_check_print(l, &r, stdout);
    ck_assert_msg(st == CF_OK && r.passed && r.failed == 0, "%s: %s", l->vt->kind, r.message);
    /* Every check ran: the dense log-det too (split and prior: of x -> (kept, latent)). */
    ck_assert_msg(r.skipped == 0, "%s: skipped %#x", l->vt->kind, r.skipped);
    ck_assert_int_eq(r.tensors_checked, 1 + l->n_params);
    ck_assert(r.grad_values > 0);
    cf_layer_free(l);
    cf_params_free(ps);
}
END_TEST

/* Whole small flows, every conv kind with every coupling: each layer passes. */
START_TEST(test_builtin_flow_passes)
{
    const cf_invconv_kind conv = (cf_invconv_kind)(_i % 3);
    const cf_coupling_kind coupling = (cf_coupling_kind)(_i / 3);
    cf_flow_config cfg = {.height = 8, .width = 8, .channels = 1, .levels = 2, .depth = 1,
                          .hidden = 8, .conv = conv, .coupling = coupling, .seed = 3};
    cf_flow *f = cf_flow_new(&cfg, CF_F64);
    ck_assert_msg(f != NULL, "%s", cf_last_error());
    char *text = NULL;
    size_t size = 0;
    FILE *report = open_memstream(&text, &size);
    int n_failed = -1;
    cf_status st = cf_flow_check(f, NULL, report, &n_failed);
    fclose(report);
    fputs(text, stdout);
    ck_assert_msg(st == CF_OK && n_failed == 0, "conv %d coupling %d:\n%s", conv, coupling, text);
    char last[64];
    snprintf(last, sizeof last, "%d passed, 0 failed\n", cf_flow_layer_count(f));
    ck_assert_msg(strstr(text, last) != NULL, "report ends:\n%s", text);
    /* one PASS line per layer, named */
    int lines = 0;
    for (const char *p = text; (p = strstr(p, "PASS ")) != NULL; p++) lines++;
    ck_assert_int_eq(lines, cf_flow_layer_count(f));
    ck_assert(strstr(text, "PASS levels.0.steps.0.coupling") != NULL);
    free(text);
    cf_flow_free(f);
}
END_TEST

/* ---- a layer with faults to order -------------------------------------------------------- */

/* An op registered here: out = x * w per channel (x (..., C), w (C)). Its faulty twin's
 * backward scales the input gradient of one element by 1.01. */
#define FAULTY_ELEMENT 21 /* of x_1 (B, 4, 4, 2): image 0, pixel (2, 2), channel 1, which is
                           * element 41 of the layer's input x (B, 4, 4, 4) */

static cf_status cmul_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                            cf_shape *out)
{
    (void)attrs, (void)n_in;
    if (in[1]->ndim != 1 || in[1]->shape[0] != in[0]->shape[in[0]->ndim - 1])
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "op 'check_test_cmul': w must be (C)");
    cf_shape_of(&out[0], in[0]);
    return CF_OK;
}

static cf_status cmul_forward(cf_node *n)
{
    const cf_tensor *x = n->in[0], *w = n->in[1];
    for (int64_t i = 0; i < x->numel; i++)
        cf_tensor_set(n->out[0], i, cf_tensor_get(x, i) * cf_tensor_get(w, i % w->numel));
    return CF_OK;
}

static cf_status cmul_backward_impl(cf_node *n, bool faulty)
{
    const cf_tensor *x = n->in[0], *w = n->in[1], *y = n->out[0];
    void *dx = cf_node_grad_in(n, 0), *dw = cf_node_grad_in(n, 1);
    for (int64_t i = 0; i < x->numel; i++) {
        const int64_t c = i % w->numel;
        const double g = cf_buf_get(y->dtype, y->grad, i);
        double gx = g * cf_tensor_get(w, c);
        if (faulty && i == FAULTY_ELEMENT) gx *= 1.01;
        if (dx) cf_buf_set(x->dtype, dx, i, cf_buf_get(x->dtype, dx, i) + gx);
        if (dw) cf_buf_set(w->dtype, dw, c, cf_buf_get(w->dtype, dw, c) + g * cf_tensor_get(x, i));
    }
    return CF_OK;
}

static cf_status cmul_backward(cf_node *n)
{
    return cmul_backward_impl(n, false);
}

static cf_status cmul_backward_faulty(cf_node *n)
{
    return cmul_backward_impl(n, true);
}

static const cf_op_def cmul_op = {.name = "check_test_cmul", .n_inputs = 2, .n_outputs = 1,
                                  .infer = cmul_infer, .forward = cmul_forward,
                                  .backward = cmul_backward, .doc = "x * w per channel"};
static const cf_op_def cmul_faulty_op = {.name = "check_test_cmul_faulty", .n_inputs = 2,
                                         .n_outputs = 1, .infer = cmul_infer,
                                         .forward = cmul_forward,
                                         .backward = cmul_backward_faulty,
                                         .doc = "x * w per channel, backward off in one element"};

static const cf_op_def *find_or_register(const cf_op_def *def)
{
    const cf_op_def *op = cf_op_find(def->name);
    if (op) return op;
    ck_assert_msg(cf_op_register(def) == CF_OK, "%s", cf_last_error());
    return cf_op_find(def->name);
}

typedef enum fault {
    FAULT_NONE,
    FAULT_LOGDET,
    FAULT_INVERSE,
    FAULT_BACKWARD,
    FAULT_SHAPE,   /* declares an out_shape of twice the channels */
    FAULT_FRAGILE, /* y_1 = x_1 * (s - 0.3) / (s - 0.3): NaN at s's initial value only */
    FAULT_BATCH,   /* y_2 also adds 0.01 sum(x_1) over the whole batch (and the inverse
                    * subtracts it): invertible, right log-det per image, but images mix */
} fault;

/* A coupling-like layer on x = [x_1, x_2] (C/2 channels each), with per-channel w and s:
 *   y = [x_1, (x_2 + x_1 * w) * exp(s)],  log|det| = H W sum(s).
 * Its Jacobian is block lower-triangular, so a fault in the x_1 -> y_2 block (the backward
 * fault) leaves the determinant as it is. Faults: the log-det takes 1.01 s_0 for channel 0;
 * the inverse subtracts y_1 * w with the wrong sign in the last quarter of the channels; the
 * backward of x_1 * w is 1% off in one element; and two more (see the enum). */
typedef struct toy_layer {
    cf_layer base;
    cf_tensor *w, *s;
    cf_tensor *logdet_factor; /* (C/2) heap: 1, or 1.01 for channel 0 with FAULT_LOGDET */
    cf_tensor *initial_s;     /* (C/2) heap: s's initial value, for FAULT_FRAGILE */
    fault fault;
    const cf_op_def *cmul;
} toy_layer;

static cf_status toy_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    toy_layer *l = (toy_layer *)self;
    const int64_t half = self->in_shape[2] / 2;
    cf_tensor *parts[2];
    if (cf_split(ctx, io->x, 2, (int64_t[]){half, half}, parts) != CF_OK) return cf_ctx_status(ctx);
    cf_tensor *m = cf_op_apply1(ctx, l->cmul, 2, (cf_tensor *[]){parts[0], l->w}, NULL);
    if (l->fault == FAULT_BATCH)
        m = cf_add(ctx, m, cf_scale(ctx, cf_sum_all(ctx, parts[0]), 0.01));
    cf_tensor *y2 = cf_mul(ctx, cf_add(ctx, parts[1], m), cf_exp(ctx, l->s)), *y1 = parts[0];
    if (l->fault == FAULT_FRAGILE) {
        cf_tensor *a = cf_sub(ctx, l->s, l->initial_s);
        y1 = cf_div(ctx, cf_mul(ctx, y1, a), a);
    }
    io->x = cf_concat(ctx, 2, (cf_tensor *[]){y1, y2});
    const double hw = (double)(self->in_shape[0] * self->in_shape[1]);
    return cf_flow_io_add_logdet(ctx, io, cf_scale(ctx, cf_sum_all(ctx, cf_mul(ctx, l->s,
                                                                        l->logdet_factor)), hw));
}

static cf_status toy_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    toy_layer *l = (toy_layer *)self;
    cf_tensor *y = io->x;
    if (!y) return cf_ctx_status(ctx);
    cf_tensor *x = cf_tensor_new(ctx, y->dtype, y->ndim, y->shape);
    if (!x) return cf_ctx_status(ctx);
    const int64_t C = self->in_shape[2], half = C / 2, P = y->numel / C;
    double sum1 = 0; /* FAULT_BATCH: the sum of x_1 = y_1 over the batch */
    for (int64_t p = 0; p < P; p++)
        for (int64_t c = 0; c < half; c++) sum1 += cf_tensor_get(y, p * C + c);
    const double mix = l->fault == FAULT_BATCH ? 0.01 * sum1 : 0.0;
    for (int64_t p = 0; p < P; p++)
        for (int64_t c = 0; c < half; c++) {
            const double y1 = cf_tensor_get(y, p * C + c), y2 = cf_tensor_get(y, p * C + half + c);
            const double w = cf_tensor_get(l->w, c), s = cf_tensor_get(l->s, c);
            const bool wrong = l->fault == FAULT_INVERSE && half + c >= C - C / 4;
            cf_tensor_set(x, p * C + c, y1);
            cf_tensor_set(x, p * C + half + c, y2 * exp(-s) + (wrong ? 1 : -1) * y1 * w - mix);
        }
    io->x = x;
    return CF_OK;
}

static double toy_flops(const cf_layer *self)
{
    return 3.0 * (double)(self->in_shape[0] * self->in_shape[1] * self->in_shape[2]);
}

static void toy_free(cf_layer *self)
{
    cf_tensor_free(((toy_layer *)self)->logdet_factor);
    cf_tensor_free(((toy_layer *)self)->initial_s);
    free(self);
}

static const cf_layer_vtable toy_vt = {"toy_coupling", toy_forward, toy_inverse, toy_flops,
                                       toy_free};

static cf_layer *toy_layer_new(cf_params *ps, const int64_t shape[3], fault f)
{
    toy_layer *l = calloc(1, sizeof *l);
    ck_assert_ptr_nonnull(l);
    const int64_t half = shape[2] / 2;
    l->fault = f;
    l->cmul = find_or_register(f == FAULT_BACKWARD ? &cmul_faulty_op : &cmul_op);
    const int64_t out[3] = {shape[0], shape[1], shape[2] * (f == FAULT_SHAPE ? 2 : 1)};
    ck_assert(cf_layer_init(&l->base, &toy_vt, "toy", shape, out));
    cf_layer_args a = {.ps = ps, .name = "toy"};
    ck_assert_ptr_nonnull(l->w = cf_layer_param(&l->base, &a, "w", 1, &half, cf_init_const(0)));
    ck_assert_ptr_nonnull(l->s = cf_layer_param(&l->base, &a, "s", 1, &half, cf_init_const(0)));
    ck_assert_ptr_nonnull(l->logdet_factor = cf_tensor_alloc(CF_F64, 1, &half));
    ck_assert_ptr_nonnull(l->initial_s = cf_tensor_alloc(CF_F64, 1, &half));
    cf_tensor_fill(l->initial_s, 0.3);
    cf_tensor_fill(l->w, 2.0);
    cf_tensor_fill(l->s, 0.3);
    cf_tensor_fill(l->logdet_factor, 1.0);
    if (f == FAULT_LOGDET) cf_tensor_set(l->logdet_factor, 0, 1.01);
    return &l->base;
}

/* Checks the toy layer with fault f on three seeds: it must fail exactly `expect` (0: pass
 * everything), with `needle` (and `needle2`) in the message and on the layer's FAIL line. */
static void check_toy(fault f, unsigned expect, const char *needle, const char *needle2)
{
    cf_params *ps = cf_params_new(CF_F64);
    cf_layer *l = toy_layer_new(ps, (int64_t[]){4, 4, 4}, f);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        cf_check_result r;
        cf_status st = cf_layer_check(l, &(cf_check_opts){.seed = seed}, &r);
        char line[2048];
        FILE *mem = fmemopen(line, sizeof line, "w");
        cf_check_print(l, &r, mem);
        fclose(mem);
        fputs(line, stdout);
        ck_assert_msg(strncmp(line, expect ? "FAIL toy " : "PASS toy ", 9) == 0, "%s", line);
        if (needle)
            ck_assert_msg(strstr(line, needle) != NULL, "line '%s' lacks '%s'", line, needle);
        if (needle2)
            ck_assert_msg(strstr(line, needle2) != NULL, "line '%s' lacks '%s'", line, needle2);
        ck_assert_msg(r.failed == expect, "fault %d seed %llu: failed %#x, expected %#x: %s", f,
                      (unsigned long long)seed, r.failed, expect, r.message);
        ck_assert_int_eq(st, expect ? CF_ERR_NUMERIC : CF_OK);
        ck_assert_int_eq(r.passed, expect == 0);
        /* a forward whose shape is wrong leaves nothing for the later checks */
        ck_assert_uint_eq(r.skipped, expect == CF_CHECK_SHAPE ? CF_CHECK_ROUNDTRIP |
                                     CF_CHECK_LOGDET | CF_CHECK_GRAD : 0u);
        if (needle)
            ck_assert_msg(strstr(r.message, needle) != NULL, "message '%s' lacks '%s'",
                          r.message, needle);
        if (expect) ck_assert_msg(strstr(cf_last_error(), "toy") != NULL, "%s", cf_last_error());
    }
    cf_layer_free(l);
    cf_params_free(ps);
}

START_TEST(test_correct_toy_passes)
{
    check_toy(FAULT_NONE, 0, NULL, NULL);
}
END_TEST

START_TEST(test_catches_logdet_off_in_one_channel)
{
    check_toy(FAULT_LOGDET, CF_CHECK_LOGDET, "logdet: layer says", "dense Jacobian gives");
    check_toy(FAULT_NONE, 0, NULL, NULL); /* the same layer without the fault */
}
END_TEST

START_TEST(test_catches_inverse_wrong_in_one_block)
{
    /* the worst element named is in the faulty block, the last quarter: channel 3 of 4 */
    check_toy(FAULT_INVERSE, CF_CHECK_ROUNDTRIP, "roundtrip: inverse(forward(x)) differs",
              ", 3): ");
    check_toy(FAULT_NONE, 0, NULL, NULL);
}
END_TEST

START_TEST(test_catches_backward_off_in_one_element)
{
    /* The input's gradient fails, at the faulty element and nowhere else before it. */
    check_toy(FAULT_BACKWARD, CF_CHECK_GRAD, "grad: the input element 41 [0, 2, 2, 1]: backward",
              "finite differences");
    check_toy(FAULT_NONE, 0, NULL, NULL);
}
END_TEST

START_TEST(test_catches_wrong_declared_shape)
{
    check_toy(FAULT_SHAPE, CF_CHECK_SHAPE, "shape: forward at initialisation gives (2, 4, 4, 4) "
              "f64, the layer says (2, 4, 4, 8)", NULL);
}
END_TEST

/* Non-finite at initialisation only: the first forward's check catches it, and the
 * perturbed layer passes everything else. */
START_TEST(test_catches_nonfinite_at_initialisation)
{
    check_toy(FAULT_FRAGILE, CF_CHECK_FINITE, "finite: the output is not finite at "
              "initialisation", NULL);
}
END_TEST

/* A layer that is invertible on the batch, with the right log-det of each image's own block,
 * but whose images depend on each other: the Jacobian's entries across images show it. */
START_TEST(test_catches_images_mixing)
{
    check_toy(FAULT_BATCH, CF_CHECK_LOGDET, "logdet: the output of image 0 depends on other "
              "images' inputs", NULL);
}
END_TEST

/* ---- misuse and side effects ------------------------------------------------------------- */

START_TEST(test_refuses_f32)
{
    cf_params *ps = cf_params_new(CF_F32);
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    cf_layer *l = cf_cinc_conv_layer(ps, "conv32", (int64_t[]){4, 4, 4}, &rng);
    cf_check_result r;
    ck_assert_int_eq(cf_layer_check(l, NULL, &r), CF_ERR_DTYPE);
    ck_assert(!r.passed);
    ck_assert_msg(strstr(cf_last_error(), "conv32.weight") && strstr(cf_last_error(), "f64"),
                  "%s", cf_last_error());
    cf_layer_free(l);
    cf_params_free(ps);

    cf_flow *f = cf_flow_new(&(cf_flow_config){.height = 8, .width = 8, .channels = 1,
                                               .levels = 1, .depth = 1, .hidden = 4}, CF_F32);
    int n_failed = -1;
    ck_assert_int_eq(cf_flow_check(f, NULL, NULL, &n_failed), CF_ERR_DTYPE);
    ck_assert_int_eq(n_failed, 0);
    ck_assert_msg(strstr(cf_last_error(), "f32") != NULL, "%s", cf_last_error());
    cf_flow_free(f);

    /* options out of range */
    ps = cf_params_new(CF_F64);
    l = cf_actnorm_layer(ps, "a", (int64_t[]){2, 2, 2});
    ck_assert_int_eq(cf_layer_check(l, &(cf_check_opts){.batch = -1}, &r), CF_ERR_ARG);
    ck_assert_int_eq(cf_layer_check(l, &(cf_check_opts){.lo = 1, .hi = -1}, &r), CF_ERR_ARG);
    cf_layer_free(l);
    cf_params_free(ps);
}
END_TEST

/* The checker perturbs parameters and initialises actnorms, then puts everything back. */
START_TEST(test_leaves_layer_as_found)
{
    cf_params *ps = cf_params_new(CF_F64);
    cf_rng rng;
    cf_rng_seed(&rng, 2, 0);
    cf_layer *l = cf_coupling_layer(ps, "c", (int64_t[]){4, 4, 4}, CF_COUPLING_KIND_QUAD, 4, &rng);
    ck_assert_ptr_nonnull(l);
    const size_t n = cf_params_flat_numel(ps);
    for (size_t i = 0; i < n; i++) ((double *)cf_params_grad(ps))[i] = 0.25 * (double)(i % 7);
    double *data = malloc(n * sizeof(double)), *grad = malloc(n * sizeof(double));
    memcpy(data, cf_params_data(ps), n * sizeof(double));
    memcpy(grad, cf_params_grad(ps), n * sizeof(double));
    cf_check_result r;
    ck_assert_int_eq(cf_layer_check(l, NULL, &r), CF_OK);
    ck_assert(memcmp(data, cf_params_data(ps), n * sizeof(double)) == 0);
    ck_assert(memcmp(grad, cf_params_grad(ps), n * sizeof(double)) == 0);
    for (int i = 0; i < l->n_state; i++) /* the actnorms are still uninitialised */
        ck_assert_double_eq(cf_tensor_get(l->state[i], 0), 0.0);
    free(data);
    free(grad);
    cf_layer_free(l);
    cf_params_free(ps);
}
END_TEST

/* Inputs too large for the dense Jacobian skip the log-det check and say so; tensors larger
 * than max_elementwise are checked along random directions. */
START_TEST(test_limits_skip_and_directions)
{
    cf_params *ps = cf_params_new(CF_F64);
    cf_rng rng;
    cf_rng_seed(&rng, 4, 0);
    cf_layer *l = cf_cinc_conv_layer(ps, "conv", (int64_t[]){4, 4, 4}, &rng);
    cf_check_result r;
    cf_status st = cf_layer_check(l, &(cf_check_opts){.max_dense = 32, .max_elementwise = 100},
                                  &r);
    cf_check_print(l, &r, stdout);
    ck_assert_msg(st == CF_OK && r.passed, "%s", r.message);
    ck_assert_int_eq(r.skipped, CF_CHECK_LOGDET);
    ck_assert_msg(strstr(r.message, "logdet: not run: 64 elements per image") != NULL, "%s",
                  r.message);
    ck_assert_int_eq(r.grad_directional, 2); /* the input (128), the weight (144); not the bias */
    cf_layer_free(l);
    cf_params_free(ps);
}
END_TEST

static Suite *check_suite(void)
{
    Suite *s = suite_create("check");
    TCase *kinds = tcase_create("builtin");
    tcase_add_loop_test(kinds, test_builtin_kind_passes, 0, N_BUILTIN);
    tcase_add_loop_test(kinds, test_builtin_flow_passes, 0, 6);
    suite_add_tcase(s, kinds);
    TCase *faults = tcase_create("faults");
    tcase_add_test(faults, test_correct_toy_passes);
    tcase_add_test(faults, test_catches_logdet_off_in_one_channel);
    tcase_add_test(faults, test_catches_inverse_wrong_in_one_block);
    tcase_add_test(faults, test_catches_backward_off_in_one_element);
    tcase_add_test(faults, test_catches_wrong_declared_shape);
    tcase_add_test(faults, test_catches_nonfinite_at_initialisation);
    tcase_add_test(faults, test_catches_images_mixing);
    suite_add_tcase(s, faults);
    TCase *misuse = tcase_create("misuse");
    tcase_add_test(misuse, test_refuses_f32);
    tcase_add_test(misuse, test_leaves_layer_as_found);
    tcase_add_test(misuse, test_limits_skip_and_directions);
    suite_add_tcase(s, misuse);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(check_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
