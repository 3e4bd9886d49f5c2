/* test_arch.c: the public layer API, the registry of layer kinds, architectures as data, and
 * whole flows through checkpoints.
 *
 *  - every built-in kind is registered, in the list's order, with its role and choice; a kind
 *    written here against the public header alone (the header's worked example) registers,
 *    builds by name, round-trips, and is refused a second time; malformed kinds are refused;
 *  - hyperparameters: defaults filled in, unknown keys, wrong types, out-of-range values and
 *    bad choices refused with the layer, the kind and the key named;
 *  - cf_flow_from_arch(cf_arch_builtin(cfg)) is cf_flow_new(cfg), bit for bit, for every conv and
 *    coupling kind; a flow's architecture goes through JSON and back to the same flow;
 *  - malformed architecture files are refused with the field named;
 *  - cf_flow_save / cf_flow_load rebuild an architecture cf_flow_new cannot make (no split,
 *    another width per step, a user kind) with identical tensors and log-densities; format-1
 *    checkpoints (no /arch) still load; an unknown kind names the layer and the provider.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cincflow.h"

/* ---- a kind written against the public header (cf_layer.h's worked example) ---------------- */

typedef struct scale_layer {
    cf_layer base;
    cf_tensor *logs; /* (C) */
} scale_layer;

static cf_status scale_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    scale_layer *l = (scale_layer *)self;
    io->x = cf_mul(ctx, io->x, cf_exp(ctx, l->logs));
    double hw = (double)(self->in_shape[0] * self->in_shape[1]);
    return cf_flow_io_add_logdet(ctx, io, cf_scale(ctx, cf_sum_all(ctx, l->logs), hw));
}

static cf_status scale_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    scale_layer *l = (scale_layer *)self;
    io->x = cf_mul(ctx, io->x, cf_exp(ctx, cf_scale(ctx, l->logs, -1.0)));
    return cf_ctx_status(ctx);
}

static double scale_flops(const cf_layer *self)
{
    return 2.0 * (double)(self->in_shape[0] * self->in_shape[1] * self->in_shape[2]);
}

static const cf_layer_vtable scale_vt = {"test_scale", scale_forward, scale_inverse,
                                         scale_flops, NULL};

static cf_layer *scale_create(const cf_layer_args *a)
{
    scale_layer *l = cf_layer_alloc(sizeof *l, &scale_vt, a, a->in_shape);
    if (!l) return NULL;
    double init = cf_hparams_float(a->hp, "init");
    int64_t C = a->in_shape[2];
    l->logs = cf_layer_param(&l->base, a, "logs", 1, &C, cf_init_const(init));
    return l->logs ? &l->base : cf_layer_fail(&l->base);
}

static const cf_hparam_spec scale_hparams[] = {
    {"init", CF_HP_FLOAT, .def = 0.0, .min = -10, .max = 10, .doc = "initial log-scale"},
    {"mode", CF_HP_STRING, .def_str = "a", .choices = "a|b", .doc = "unused choice"},
    {"count", CF_HP_INT, .def = 3, .min = 1, .max = 9, .doc = "unused count"},
    {"flag", CF_HP_BOOL, .def = 1, .doc = "unused flag"},
};

static const cf_layer_kind scale_kind = {
    .name = "test_scale",
    .summary = "y = x * exp(s)",
    .conventions = "logs[c] scales channel c",
    .hparams = scale_hparams,
    .n_hparams = 4,
    .create = scale_create,
    .provider = "test_arch_plugin",
};

static void register_scale(void)
{
    if (!cf_layer_kind_find("test_scale"))
        ck_assert_int_eq(cf_layer_kind_register(&scale_kind), CF_OK);
}

/* ---- helpers ---------------------------------------------------------------------------- */

static char tmpdir[64];

static const char *tpath(const char *name)
{
    static char buf[4][160];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
    return p;
}

static void expect_error(bool failed, const char *fragment)
{
    ck_assert_msg(failed, "expected a failure mentioning '%s'", fragment);
    ck_assert_msg(strstr(cf_last_error(), fragment) != NULL, "expected '%s' in: %s", fragment,
                  cf_last_error());
}

/* Every parameter and state tensor of a and b: same names, shapes and bits. */
static void assert_same_tensors(cf_params *a, cf_params *b)
{
    ck_assert_int_eq(cf_params_count(a), cf_params_count(b));
    ck_assert_int_eq(cf_params_state_count(a), cf_params_state_count(b));
    for (int s = 0; s < 2; s++) {
        int n = s ? cf_params_state_count(a) : cf_params_count(a);
        for (int i = 0; i < n; i++) {
            cf_tensor *x = s ? cf_params_state_at(a, i) : cf_params_at(a, i);
            cf_tensor *y = s ? cf_params_state_at(b, i) : cf_params_at(b, i);
            ck_assert_str_eq(x->name, y->name);
            ck_assert_int_eq(x->numel, y->numel);
            for (int64_t e = 0; e < x->numel; e++)
                ck_assert_msg(cf_tensor_get(x, e) == cf_tensor_get(y, e), "%s[%lld]: %g vs %g",
                              x->name, (long long)e, cf_tensor_get(x, e), cf_tensor_get(y, e));
        }
    }
}

/* Moves every parameter away from its initial value (masked entries stay zero) and marks
 * actnorms initialised, so that nothing is identity. */
static void perturb(cf_params *ps, uint64_t seed)
{
    cf_rng rng;
    cf_rng_seed(&rng, seed, 3);
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *t = cf_params_at(ps, i);
        for (int64_t e = 0; e < t->numel; e++) {
            double v = cf_tensor_get(t, e);
            if (strstr(t->name, "weight") && v == 0.0) continue;
            cf_tensor_set(t, e, v + 0.05 * cf_rng_normal(&rng));
        }
    }
    for (int i = 0; i < cf_params_state_count(ps); i++) {
        cf_tensor *t = cf_params_state_at(ps, i);
        if (strstr(t->name, "initialized")) cf_tensor_set(t, 0, 1.0);
    }
}

/* log p of a fixed batch of 3 images, per image. */
static void log_probs(cf_flow *flow, double out[3])
{
    const int64_t *s = cf_flow_shape(flow);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_ctx_set_grad(ctx, false);
    cf_params *ps = cf_flow_params(flow);
    cf_tensor *x = cf_tensor_new(ctx, cf_params_dtype(ps), 4, (int64_t[]){3, s[0], s[1], s[2]});
    cf_rng rng;
    cf_rng_seed(&rng, 11, 0);
    for (int64_t i = 0; i < x->numel; i++) cf_tensor_set(x, i, cf_rng_uniform(&rng) - 0.5);
    cf_tensor *lp = cf_flow_log_prob(flow, ctx, x, NULL);
    ck_assert_msg(lp != NULL, "%s", cf_ctx_error(ctx));
    for (int i = 0; i < 3; i++) out[i] = cf_tensor_get(lp, i);
    cf_ctx_free(ctx);
}

/* An architecture the built-in builder cannot make: two levels without a split between them,
 * a different coupling width per step, both coupling kinds, a user kind. */
static cf_arch *custom_arch(void)
{
    cf_arch *a = cf_arch_new((int64_t[]){8, 8, 1});
    ck_assert_ptr_nonnull(a);
    cf_hparams hp = {0};
    ck_assert_int_eq(cf_arch_add(a, "sq0", "squeeze", NULL), CF_OK);
    ck_assert_int_eq(cf_arch_add(a, "sq1", "squeeze", NULL), CF_OK);
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "steps.%d.actnorm", k);
        ck_assert_int_eq(cf_arch_add(a, name, "actnorm", NULL), CF_OK);
        snprintf(name, sizeof name, "steps.%d.conv", k);
        ck_assert_int_eq(cf_arch_add(a, name, k == 1 ? "invconv1x1" : "cinc_conv", NULL), CF_OK);
        snprintf(name, sizeof name, "steps.%d.coupling", k);
        cf_hparams_set_int(&hp, "hidden", 4 + 4 * k);
        ck_assert_int_eq(cf_arch_add(a, name, k == 2 ? "affine_coupling" : "quad_coupling", &hp),
                         CF_OK);
    }
    cf_hparams sc = {0};
    cf_hparams_set_float(&sc, "init", 0.25);
    cf_hparams_set_string(&sc, "mode", "b");
    ck_assert_int_eq(cf_arch_add(a, "scale", "test_scale", &sc), CF_OK);
    ck_assert_int_eq(cf_arch_add(a, "prior", "prior", NULL), CF_OK);
    return a;
}

/* ---- the registry ------------------------------------------------------------------------- */

START_TEST(test_builtin_kinds_registered)
{
    static const char *const names[] = {"actnorm", "cinc_conv", "invconv1x1", "emerging_conv",
                                        "masked_conv", "quad_coupling", "affine_coupling",
                                        "squeeze", "split", "prior"};
    ck_assert_int_ge(cf_layer_kind_count(), 10);
    for (int i = 0; i < 10; i++) {
        const cf_layer_kind *k = cf_layer_kind_at(i);
        ck_assert_str_eq(k->name, names[i]);
        ck_assert_ptr_eq(cf_layer_kind_find(names[i]), k);
        ck_assert_ptr_nonnull(k->summary);
        ck_assert_ptr_nonnull(k->conventions);
        ck_assert_ptr_null(k->provider);
    }
    char buf[128];
    ck_assert_str_eq(cf_layer_kind_choices("invconv", buf, sizeof buf), "cinc|1x1|emerging");
    ck_assert_str_eq(cf_layer_kind_choices("coupling", buf, sizeof buf), "quad|affine");
    ck_assert_str_eq(cf_layer_kind_for_choice("invconv", "1x1")->name, "invconv1x1");
    ck_assert_ptr_null(cf_layer_kind_for_choice("invconv", "quad"));
    ck_assert_ptr_null(cf_layer_kind_find("no_such_kind"));
    /* The conventions a reader needs are stated where they would look. */
    ck_assert_ptr_nonnull(strstr(cf_layer_kind_find("cinc_conv")->conventions,
                                 "zero for c_in < c_out"));
    ck_assert_ptr_nonnull(strstr(cf_layer_kind_find("split")->conventions, "are the mean"));
    ck_assert_ptr_nonnull(strstr(cf_layer_kind_find("prior")->conventions, "per position"));
}
END_TEST

START_TEST(test_user_kind_registers_and_builds)
{
    register_scale();
    ck_assert_int_eq(cf_layer_kind_register(&scale_kind), CF_ERR_EXISTS);
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "already registered"));
    cf_layer_kind bad = {.name = "bad kind", .create = scale_create};
    expect_error(cf_layer_kind_register(&bad) == CF_ERR_ARG, "bad kind");
    bad = (cf_layer_kind){.name = "no_create"};
    expect_error(cf_layer_kind_register(&bad) == CF_ERR_ARG, "has no create");
    static const cf_hparam_spec twice[] = {{.key = "k", .type = CF_HP_INT}, {.key = "k", .type = CF_HP_INT}};
    bad = (cf_layer_kind){.name = "twice", .create = scale_create, .hparams = twice,
                          .n_hparams = 2};
    expect_error(cf_layer_kind_register(&bad) == CF_ERR_ARG, "declares 'k' twice");

    cf_params *ps = cf_params_new(CF_F64);
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    cf_hparams hp = {0};
    cf_hparams_set_int(&hp, "init", 1); /* an int for a float is accepted */
    cf_layer *l = cf_layer_create("test_scale", ps, "s", (int64_t[]){2, 2, 3}, &hp, &rng);
    ck_assert_msg(l != NULL, "%s", cf_last_error());
    ck_assert_ptr_eq(l->kind, &scale_kind);
    ck_assert_int_eq(l->hp.n, 4); /* the defaults filled in */
    ck_assert_double_eq(cf_hparams_float(&l->hp, "init"), 1.0);
    ck_assert_str_eq(cf_hparams_string(&l->hp, "mode"), "a");
    ck_assert_int_eq(cf_hparams_int(&l->hp, "count"), 3);
    ck_assert(cf_hparams_bool(&l->hp, "flag"));
    ck_assert_int_eq(l->n_params, 1);
    ck_assert_double_eq(cf_tensor_get(l->params[0], 2), 1.0);
    ck_assert_str_eq(l->params[0]->name, "s.logs");
    /* Forward and back: the input again, and log|det| = H W sum(s) = 4 * 3. */
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new(ctx, CF_F64, 4, (int64_t[]){2, 2, 2, 3});
    for (int64_t i = 0; i < x->numel; i++) cf_tensor_set(x, i, 0.1 * (double)i - 0.7);
    cf_flow_io io = {.x = x};
    ck_assert_int_eq(cf_layer_forward(l, ctx, &io), CF_OK);
    ck_assert_double_eq_tol(cf_tensor_get(io.logdet, 1), 12.0, 1e-12);
    ck_assert_double_eq_tol(cf_tensor_get(io.x, 5), (0.1 * 5 - 0.7) * exp(1.0), 1e-12);
    ck_assert_int_eq(cf_layer_inverse(l, ctx, &io), CF_OK);
    for (int64_t i = 0; i < x->numel; i++)
        ck_assert_double_eq_tol(cf_tensor_get(io.x, i), cf_tensor_get(x, i), 1e-14);
    cf_ctx_free(ctx);
    cf_layer_free(l);
    cf_params_free(ps);
}
END_TEST

START_TEST(test_hparams_checked)
{
    register_scale();
    cf_params *ps = cf_params_new(CF_F32);
    const int64_t shape[3] = {2, 2, 4};
    cf_hparams hp = {0};
    cf_hparams_set_int(&hp, "width", 3);
    expect_error(!cf_layer_create("test_scale", ps, "L1", shape, &hp, NULL),
                 "L1: layer kind 'test_scale' has no hyperparameter 'width' (it takes: init, "
                 "mode, count, flag)");
    hp = (cf_hparams){0};
    cf_hparams_set_string(&hp, "init", "big");
    expect_error(!cf_layer_create("test_scale", ps, "L2", shape, &hp, NULL),
                 "L2: hyperparameter 'init' of layer kind 'test_scale' must be a number");
    hp = (cf_hparams){0};
    cf_hparams_set_float(&hp, "init", 11);
    expect_error(!cf_layer_create("test_scale", ps, "L3", shape, &hp, NULL),
                 "expected a number from -10 to 10");
    hp = (cf_hparams){0};
    cf_hparams_set_string(&hp, "mode", "c");
    expect_error(!cf_layer_create("test_scale", ps, "L4", shape, &hp, NULL),
                 "is 'c'; expected one of a|b");
    hp = (cf_hparams){0};
    cf_hparams_set_int(&hp, "count", 0);
    expect_error(!cf_layer_create("test_scale", ps, "L5", shape, &hp, NULL),
                 "expected an integer from 1 to 9");
    hp = (cf_hparams){0};
    cf_hparams_set_float(&hp, "count", 2.5);
    expect_error(!cf_layer_create("test_scale", ps, "L6", shape, &hp, NULL), "must be an integer");
    expect_error(!cf_layer_create("nope", ps, "L7", shape, NULL, NULL),
                 "L7: no layer kind named 'nope'");
    hp = (cf_hparams){0};
    cf_hparams_set_int(&hp, "hidden", 0);
    expect_error(!cf_layer_create("quad_coupling", ps, "c", shape, &hp, NULL),
                 "'hidden' of layer kind 'quad_coupling' is 0");
    /* The record itself. */
    hp = (cf_hparams){0};
    expect_error(cf_hparams_set_int(&hp, "bad key", 1) == CF_ERR_ARG, "bad key");
    expect_error(cf_hparams_set_float(&hp, "x", NAN) == CF_ERR_ARG, "not finite");
    char longs[100];
    memset(longs, 'a', sizeof longs - 1);
    longs[99] = 0;
    expect_error(cf_hparams_set_string(&hp, "s", longs) == CF_ERR_ARG, "longer than 63");
    for (int i = 0; i < CF_HPARAMS_MAX; i++) {
        char key[8];
        snprintf(key, sizeof key, "k%d", i);
        ck_assert_int_eq(cf_hparams_set_bool(&hp, key, true), CF_OK);
    }
    expect_error(cf_hparams_set_bool(&hp, "one_more", true) == CF_ERR_NOMEM, "the record is full");
    ck_assert_int_eq(cf_hparams_set_int(&hp, "k3", 5), CF_OK); /* replacing still works */
    ck_assert_int_eq(cf_hparams_int(&hp, "k3"), 5);
    cf_params_free(ps);
}
END_TEST

/* ---- architectures ---------------------------------------------------------------------- */

START_TEST(test_builtin_arch_is_cf_flow_new)
{
    const char *convs[] = {"cinc", "1x1", "emerging"}, *couplings[] = {"quad", "affine"};
    for (int c = 0; c < 3; c++)
        for (int k = 0; k < 2; k++) {
            cf_flow_config cfg = {.height = 8, .width = 8, .channels = 1, .levels = 2,
                                  .depth = 2, .hidden = 8, .seed = 5, .conv_name = convs[c],
                                  .coupling_name = couplings[k]};
            cf_flow *a = cf_flow_new(&cfg, CF_F64);
            ck_assert_msg(a != NULL, "%s", cf_last_error());
            ck_assert_str_eq(cf_flow_config_of(a)->conv_name, convs[c]);
            ck_assert_int_eq((int)cf_flow_config_of(a)->conv, c);
            cf_arch *arch = cf_arch_builtin(&cfg);
            cf_flow *b = cf_flow_from_arch(arch, CF_F64, 5);
            ck_assert_msg(b != NULL, "%s", cf_last_error());
            assert_same_tensors(cf_flow_params(a), cf_flow_params(b));
            /* The flow's own description, through JSON, builds the same flow again. */
            cf_arch *back = cf_flow_arch(a);
            char *json = cf_arch_to_json(back);
            cf_arch *parsed = cf_arch_from_json(json, "mem");
            ck_assert_msg(parsed != NULL, "%s", cf_last_error());
            ck_assert_int_eq(parsed->n_layers, arch->n_layers);
            cf_flow *c2 = cf_flow_from_arch(parsed, CF_F64, 5);
            ck_assert_msg(c2 != NULL, "%s", cf_last_error());
            assert_same_tensors(cf_flow_params(a), cf_flow_params(c2));
            for (int i = 0; i < parsed->n_layers; i++) {
                ck_assert_str_eq(parsed->layers[i].name, arch->layers[i].name);
                ck_assert_str_eq(parsed->layers[i].kind, arch->layers[i].kind);
                ck_assert(parsed->layers[i].has_shapes);
            }
            free(json);
            cf_arch_free(back), cf_arch_free(parsed), cf_arch_free(arch);
            cf_flow_free(a), cf_flow_free(b), cf_flow_free(c2);
        }
    cf_flow_config bad = {.height = 8, .width = 8, .channels = 1, .levels = 1, .depth = 1,
                          .hidden = 8, .conv_name = "sideways"};
    expect_error(!cf_flow_new(&bad, CF_F32), "no invconv kind is called 'sideways' (registered: "
                                             "cinc|1x1|emerging)");
}
END_TEST

START_TEST(test_arch_json_refused)
{
    struct {
        const char *text, *fragment;
    } cases[] = {
        {"{", "src: not valid JSON"},
        {"[]", "expected a JSON object"},
        {"{\"input\": [8, 8, 1]}", "\"layers\" must be a non-empty array"},
        {"{\"input\": [8, 8], \"layers\": [{\"name\": \"a\", \"kind\": \"squeeze\"}]}",
         "\"input\" must be [H, W, C]"},
        {"{\"input\": [8, 8, 0], \"layers\": [{\"name\": \"a\", \"kind\": \"squeeze\"}]}",
         "\"input\" must be [H, W, C]"},
        {"{\"input\": [8, 8, 1.5], \"layers\": [{\"name\": \"a\", \"kind\": \"squeeze\"}]}",
         "\"input\" must be [H, W, C]"},
        {"{\"format\": \"other\", \"input\": [8, 8, 1], \"layers\": []}", "\"format\" is not"},
        {"{\"version\": 7, \"input\": [8, 8, 1], \"layers\": [{\"name\": \"a\", \"kind\": "
         "\"squeeze\"}]}",
         "version given is not one this library reads"},
        {"{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"a\"}]}",
         "layer 0: expected an object with string fields"},
        {"{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"a\", \"kind\": \"squeeze\"}, "
         "{\"name\": \"a\", \"kind\": \"squeeze\"}]}",
         "two layers are named 'a'"},
        {"{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"a..b\", \"kind\": \"squeeze\"}]}",
         "layer name 'a..b'"},
        {"{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"a\", \"kind\": \"sq ueeze\"}]}",
         "kind 'sq ueeze'"},
        {"{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"a\", \"kind\": \"squeeze\", "
         "\"hparams\": 3}]}",
         "layer 'a': \"hparams\" must be an object"},
        {"{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"a\", \"kind\": \"squeeze\", "
         "\"hparams\": {\"x\": [1]}}]}",
         "hyperparameter 'x' must be a finite number, a string or a boolean"},
        {"{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"a\", \"kind\": \"squeeze\", "
         "\"in\": [8, 8, 1]}]}",
         "\"in\" and \"out\" must both be"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cf_arch *a = cf_arch_from_json(cases[i].text, "src");
        ck_assert_msg(!a, "case %zu was accepted", i);
        ck_assert_msg(strstr(cf_last_error(), cases[i].fragment) != NULL, "case %zu: '%s' not in %s",
                      i, cases[i].fragment, cf_last_error());
    }
    /* Parsed but not buildable: the builder names the layer. */
    cf_arch *a = cf_arch_from_json("{\"input\": [7, 8, 1], \"layers\": [{\"name\": \"sq\", "
                                   "\"kind\": \"squeeze\"}]}", "src");
    ck_assert_ptr_nonnull(a);
    expect_error(!cf_flow_from_arch(a, CF_F32, 0), "sq: cannot squeeze 7 x 8 x 1 images");
    cf_arch_free(a);
    a = cf_arch_from_json("{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"sq\", \"kind\": "
                          "\"squeeze\", \"in\": [8, 8, 1], \"out\": [4, 4, 2]}]}", "src");
    expect_error(!cf_flow_from_arch(a, CF_F32, 0), "the architecture says it gives 4 x 4 x 2");
    cf_arch_free(a);
    a = cf_arch_from_json("{\"input\": [8, 8, 1], \"kinds\": {\"spline\": {\"provider\": "
                          "\"libsplines\"}}, \"layers\": [{\"name\": \"s\", \"kind\": "
                          "\"spline\"}]}", "src");
    expect_error(!cf_flow_from_arch(a, CF_F32, 0),
                 "layer 's' has kind 'spline', which is not registered; the architecture says "
                 "'libsplines' provides it");
    cf_arch_free(a);
    expect_error(!cf_arch_read_file(tpath("missing.json")), "missing.json: cannot open");
    /* No density: without a prior at the end, or with layers after it. */
    a = cf_arch_from_json("{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"sq\", \"kind\": "
                          "\"squeeze\"}, {\"name\": \"n\", \"kind\": \"actnorm\"}]}", "src");
    expect_error(!cf_flow_from_arch(a, CF_F32, 0), "the architecture's last layer ('n') does not "
                                                   "factor the whole tensor out");
    cf_arch_free(a);
    a = cf_arch_from_json("{\"input\": [8, 8, 1], \"layers\": [{\"name\": \"sq\", \"kind\": "
                          "\"squeeze\"}, {\"name\": \"p\", \"kind\": \"prior\"}, {\"name\": "
                          "\"n\", \"kind\": \"actnorm\"}, {\"name\": \"p2\", \"kind\": "
                          "\"prior\"}]}", "src");
    expect_error(!cf_flow_from_arch(a, CF_F32, 0), "layer 'n' cannot follow 'p' (prior)");
    cf_arch_free(a);
    /* A flow built by hand without one evaluates and samples nothing, saying why. */
    cf_flow *f = cf_flow_empty((int64_t[]){8, 8, 1}, CF_F32);
    ck_assert_int_eq(cf_flow_add(f, cf_squeeze_layer("sq", (int64_t[]){8, 8, 1})), CF_OK);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 2, 8, 8, 1);
    ck_assert_ptr_null(cf_flow_log_prob(f, ctx, x, NULL));
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "no density to evaluate or sample"));
    cf_ctx_reset(ctx);
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    ck_assert_int_ne(cf_flow_sample(f, ctx, 2, 1.0, &rng, &x), CF_OK);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "end it with a prior"));
    cf_ctx_free(ctx);
    cf_flow_free(f);
}
END_TEST

/* ---- flows through checkpoints ------------------------------------------------------------- */

START_TEST(test_flow_save_load_custom_arch)
{
    register_scale();
    cf_arch *arch = custom_arch();
    cf_flow *flow = cf_flow_from_arch(arch, CF_F32, 3);
    ck_assert_msg(flow != NULL, "%s", cf_last_error());
    perturb(cf_flow_params(flow), 9);
    double before[3], after[3];
    log_probs(flow, before);
    cf_ckpt_meta meta = {0};
    meta.step = 17;
    cf_ckpt_meta_set_string(&meta, "data", "synthetic:8x8x1");
    const char *path = tpath("custom.h5");
    ck_assert_msg(cf_flow_save(path, flow, NULL, &meta) == CF_OK, "%s", cf_last_error());
    cf_ckpt_meta_clear(&meta);

    cf_ckpt_meta got = {0};
    cf_flow *back = cf_flow_load(path, CF_F32, &got);
    ck_assert_msg(back != NULL, "%s", cf_last_error());
    ck_assert_int_eq(got.step, 17);
    ck_assert(!got.has_rng); /* none was given, so no rng_state was written */
    ck_assert_int_eq(got.format_version, CF_CHECKPOINT_VERSION);
    ck_assert_ptr_nonnull(got.arch_json);
    ck_assert_ptr_nonnull(strstr(got.arch_json, "test_arch_plugin"));
    ck_assert_int_eq(cf_flow_layer_count(back), arch->n_layers);
    ck_assert_int_eq(cf_flow_config_of(back)->levels, 0); /* not the built-in model */
    assert_same_tensors(cf_flow_params(flow), cf_flow_params(back));
    log_probs(back, after);
    for (int i = 0; i < 3; i++) ck_assert_double_eq(before[i], after[i]);
    /* The user kind's hyperparameters came back too. */
    const cf_layer *s = cf_flow_layer(back, arch->n_layers - 2);
    ck_assert_str_eq(s->kind->name, "test_scale");
    ck_assert_str_eq(cf_hparams_string(&s->hp, "mode"), "b");
    ck_assert_double_eq(cf_hparams_float(&s->hp, "init"), 0.25);
    /* In f64 too. */
    cf_flow *wide = cf_flow_load(path, CF_F64, NULL);
    ck_assert_msg(wide != NULL, "%s", cf_last_error());
    cf_ckpt_meta_clear(&got);
    cf_flow_free(wide);
    cf_flow_free(back);
    cf_flow_free(flow);
    cf_arch_free(arch);
}
END_TEST

START_TEST(test_flow_load_builtin_and_optimizer)
{
    cf_flow_config cfg = {.height = 8, .width = 8, .channels = 1, .levels = 2, .depth = 1,
                          .hidden = 8, .seed = 4, .conv_name = "emerging",
                          .coupling_name = "affine"};
    cf_flow *flow = cf_flow_new(&cfg, CF_F32);
    perturb(cf_flow_params(flow), 2);
    cf_adam *opt = cf_adam_new(cf_flow_params(flow), &(cf_adam_opts){.kind = CF_OPTIM_KIND_ADAMW,
                                                                       .lr = 3e-4});
    ck_assert_ptr_nonnull(opt);
    const char *path = tpath("builtin.h5");
    cf_ckpt_meta saved = {.has_rng = true};
    cf_rng_seed(&saved.rng, 77, 2);
    ck_assert_msg(cf_flow_save(path, flow, opt, &saved) == CF_OK, "%s", cf_last_error());
    cf_ckpt_meta m = {0};
    cf_flow *back = cf_flow_load(path, CF_F32, &m);
    ck_assert_msg(back != NULL, "%s", cf_last_error());
    /* A built-in model comes back as one, with its settings. */
    const cf_flow_config *c = cf_flow_config_of(back);
    ck_assert_int_eq(c->levels, 2);
    ck_assert_str_eq(c->conv_name, "emerging");
    ck_assert_str_eq(c->coupling_name, "affine");
    ck_assert_int_eq(c->hidden, 8);
    assert_same_tensors(cf_flow_params(flow), cf_flow_params(back));
    ck_assert(m.has_optimizer);
    ck_assert(m.has_rng);
    ck_assert_int_eq(memcmp(m.rng.s, saved.rng.s, sizeof m.rng.s), 0);
    cf_adam *opt2 = cf_flow_load_optimizer(path, back);
    ck_assert_msg(opt2 != NULL, "%s", cf_last_error());
    ck_assert_int_eq(cf_adam_options(opt2)->kind, CF_OPTIM_KIND_ADAMW);
    ck_assert_double_eq(cf_adam_options(opt2)->lr, 3e-4);
    cf_adam_free(opt2);
    /* Without optimizer state. */
    const char *bare = tpath("bare.h5");
    ck_assert_int_eq(cf_flow_save(bare, flow, NULL, NULL), CF_OK);
    expect_error(!cf_flow_load_optimizer(bare, back), "holds no optimizer state");
    cf_ckpt_meta_clear(&m);
    cf_adam_free(opt);
    cf_flow_free(back);
    cf_flow_free(flow);
}
END_TEST

START_TEST(test_format1_checkpoints_load)
{
    /* What version 1 wrote: the tensors and the built-in model's settings, no /arch. */
    cf_flow_config cfg = {.height = 8, .width = 8, .channels = 1, .levels = 2, .depth = 2,
                          .hidden = 8, .seed = 6};
    cf_flow *flow = cf_flow_new(&cfg, CF_F32);
    perturb(cf_flow_params(flow), 5);
    cf_ckpt_meta meta = {0};
    ck_assert_int_eq(cf_flow_config_to_meta(cf_flow_config_of(flow), &meta), CF_OK);
    const char *path = tpath("v1.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, cf_flow_params(flow), NULL, &meta), CF_OK);
    cf_ckpt_meta_clear(&meta);
    cf_flow *back = cf_flow_load(path, CF_F32, NULL);
    ck_assert_msg(back != NULL, "%s", cf_last_error());
    assert_same_tensors(cf_flow_params(flow), cf_flow_params(back));
    cf_flow_free(back);
    /* Neither an architecture nor settings: refused, saying so. */
    const char *none = tpath("none.h5");
    ck_assert_int_eq(cf_checkpoint_save(none, cf_flow_params(flow), NULL, NULL), CF_OK);
    expect_error(!cf_flow_load(none, CF_F32, NULL),
                 "has neither an architecture (/arch) nor the built-in model's settings");
    /* Settings naming a kind nobody registered. */
    ck_assert_int_eq(cf_flow_config_to_meta(cf_flow_config_of(flow), &meta), CF_OK);
    cf_ckpt_meta_set_string(&meta, "conv", "sideways");
    const char *odd = tpath("odd.h5");
    ck_assert_int_eq(cf_checkpoint_save(odd, cf_flow_params(flow), NULL, &meta), CF_OK);
    expect_error(!cf_flow_load(odd, CF_F32, NULL), "conv 'sideways' is not a registered invconv "
                                                   "kind (cinc|1x1|emerging)");
    cf_ckpt_meta_clear(&meta);
    cf_flow_free(flow);
}
END_TEST

START_TEST(test_flow_load_unknown_kind)
{
    /* A checkpoint of a flow with a plugin's kind, read where that kind is not registered: the
     * architecture is edited to name a kind nobody registered, as another program would see
     * a plugin's. */
    cf_flow_config cfg = {.height = 8, .width = 8, .channels = 1, .levels = 1, .depth = 1,
                          .hidden = 4};
    cf_flow *flow = cf_flow_new(&cfg, CF_F32);
    cf_arch *arch = cf_flow_arch(flow);
    snprintf(arch->layers[2].kind, sizeof arch->layers[2].kind, "fancy_conv");
    snprintf(arch->layers[2].provider, sizeof arch->layers[2].provider, "libfancy");
    char *json = cf_arch_to_json(arch);
    cf_ckpt_meta meta = {0};
    cf_ckpt_meta_set_arch(&meta, json);
    const char *path = tpath("fancy.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, cf_flow_params(flow), NULL, &meta), CF_OK);
    cf_flow *back = cf_flow_load(path, CF_F32, NULL);
    ck_assert_ptr_null(back);
    ck_assert_ptr_nonnull(strstr(cf_last_error(), "fancy.h5: layer 'levels.0.steps.0.conv' has kind "
                                                  "'fancy_conv', which is not registered; the "
                                                  "architecture says 'libfancy' provides it"));
    free(json);
    cf_ckpt_meta_clear(&meta);
    cf_arch_free(arch);
    cf_flow_free(flow);
}
END_TEST

START_TEST(test_kind_check_by_name)
{
    register_scale();
    cf_check_result res;
    cf_hparams hp = {0};
    cf_hparams_set_float(&hp, "init", 0.3);
    ck_assert_int_eq(cf_layer_kind_check("test_scale", (int64_t[]){2, 2, 3}, &hp, NULL, NULL, &res),
                     CF_OK);
    ck_assert(res.passed);
    ck_assert_int_eq(res.tensors_checked, 2); /* the input and logs */
    expect_error(cf_layer_kind_check("nope", (int64_t[]){2, 2, 3}, NULL, NULL, NULL, &res) ==
                     CF_ERR_NOT_FOUND,
                 "no layer kind named 'nope'");
    expect_error(cf_layer_kind_check("quad_coupling", (int64_t[]){4, 4, 2}, NULL, NULL, NULL,
                                     &res) != CF_OK,
                 "a channel count divisible by 4");
}
END_TEST

static Suite *arch_suite(void)
{
    Suite *s = suite_create("arch");
    TCase *reg = tcase_create("registry");
    tcase_add_test(reg, test_builtin_kinds_registered);
    tcase_add_test(reg, test_user_kind_registers_and_builds);
    tcase_add_test(reg, test_hparams_checked);
    tcase_add_test(reg, test_kind_check_by_name);
    suite_add_tcase(s, reg);
    TCase *arch = tcase_create("arch");
    tcase_set_timeout(arch, 120);
    tcase_add_test(arch, test_builtin_arch_is_cf_flow_new);
    tcase_add_test(arch, test_arch_json_refused);
    suite_add_tcase(s, arch);
    TCase *files = tcase_create("files");
    tcase_set_timeout(files, 120);
    tcase_add_test(files, test_flow_save_load_custom_arch);
    tcase_add_test(files, test_flow_load_builtin_and_optimizer);
    tcase_add_test(files, test_format1_checkpoints_load);
    tcase_add_test(files, test_flow_load_unknown_kind);
    suite_add_tcase(s, files);
    return s;
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cf_arch_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(arch_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
