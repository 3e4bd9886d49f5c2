/* test_io_checkpoint.c: HDF5 checkpoints, checked by round trip (bit-identical tensors,
 * moments, counts and meta), by reading the file's layout with the HDF5 C API as another tool
 * would, and by failed writes that must leave the previous file loadable and no temporary.
 *
 * `test_io_checkpoint --write-checkpoint FILE` writes a small known checkpoint and exits; the
 * h5py check (tests/io_h5py_check.py) reads it.
 */
#include "io_fixtures.h"

/* ---- checkpoints ------------------------------------------------------------------------ */

enum {
    MODEL_EXTRA_PARAM = 1 << 0, /* "extra.w", which files of the plain model lack */
    MODEL_NO_DENSE = 1 << 1,    /* without "dense.w" */
    MODEL_DENSE_T = 1 << 2,     /* "dense.w" as (5, 3) instead of (3, 5) */
    MODEL_NO_STATS = 1 << 3,    /* without the state tensor "levels.0.actnorm.stats" */
    MODEL_BIAS_3 = 1 << 4,      /* "levels.0.conv.bias" as (3) instead of (2) */
    MODEL_BIG = 1 << 5,         /* with a 100 x 100 parameter */
};

/* Parameters of every rank from 0 to 4, and two state tensors; values from seed (or all 7
 * when seed is 0, a sentinel for "unchanged"). */
static cf_params *make_model(cf_dtype dt, unsigned variant, uint64_t seed)
{
    cf_params *ps = cf_params_new(dt);
    ck_assert_ptr_nonnull(cf_params_add(ps, "levels.0.conv.weight", 4, (int64_t[]){3, 3, 2, 2}));
    ck_assert_ptr_nonnull(
        cf_params_add(ps, "levels.0.conv.bias", 1, (int64_t[]){variant & MODEL_BIAS_3 ? 3 : 2}));
    ck_assert_ptr_nonnull(cf_params_add(ps, "prior.scale", 0, NULL));
    if (!(variant & MODEL_NO_DENSE))
        ck_assert_ptr_nonnull(cf_params_add(
            ps, "dense.w", 2, variant & MODEL_DENSE_T ? (int64_t[]){5, 3} : (int64_t[]){3, 5}));
    ck_assert_ptr_nonnull(cf_params_add(ps, "levels.0.actnorm.logs", 3, (int64_t[]){1, 1, 2}));
    if (variant & MODEL_EXTRA_PARAM)
        ck_assert_ptr_nonnull(cf_params_add(ps, "extra.w", 1, (int64_t[]){4}));
    if (variant & MODEL_BIG)
        ck_assert_ptr_nonnull(cf_params_add(ps, "big.w", 2, (int64_t[]){100, 100}));
    ck_assert_ptr_nonnull(
        cf_params_add_state(ps, "levels.0.actnorm.initialized", 1, (int64_t[]){1}));
    if (!(variant & MODEL_NO_STATS))
        ck_assert_ptr_nonnull(
            cf_params_add_state(ps, "levels.0.actnorm.stats", 2, (int64_t[]){2, 2}));
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0);
    for (int s = 0; s < 2; s++) {
        int n = s ? cf_params_state_count(ps) : cf_params_count(ps);
        for (int i = 0; i < n; i++) {
            cf_tensor *t = s ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
            if (seed)
                cf_tensor_fill_normal(t, &rng, 0.0, 1.0);
            else
                cf_tensor_fill(t, 7.0);
        }
    }
    return ps;
}

static const cf_adam_opts test_opts = {.kind = CF_OPTIM_KIND_ADAMW,
                                       .lr = 0.01,
                                       .beta1 = 0.8,
                                       .beta2 = 0.99,
                                       .eps = 1e-7,
                                       .weight_decay = 0.1,
                                       .warmup_steps = 3,
                                       .clip_norm = 5.0};

/* An optimizer over ps after three updates and one skipped (NaN) step. */
static cf_adam *make_trained_adam(cf_params *ps)
{
    cf_adam *opt = cf_adam_new(ps, &test_opts);
    ck_assert_msg(opt, "%s", cf_last_error());
    cf_rng rng;
    cf_rng_seed(&rng, 77, 0);
    for (int step = 0; step < 4; step++) {
        for (int i = 0; i < cf_params_count(ps); i++) {
            cf_tensor *t = cf_params_at(ps, i);
            for (int64_t j = 0; j < t->numel; j++)
                cf_buf_set(t->dtype, t->grad, j, step == 2 && i == 1 ? NAN : cf_rng_normal(&rng));
        }
        cf_adam_step(opt, NULL);
    }
    ck_assert_int_eq(cf_adam_step_count(opt), 3);
    ck_assert_int_eq(cf_adam_skipped_count(opt), 1);
    return opt;
}

static void fill_meta(cf_ckpt_meta *m)
{
    *m = (cf_ckpt_meta){.step = 42, .epoch = 3};
    cf_rng_seed(&m->rng, 1234, 5);
    m->has_rng = true;
    m->has_data_state = true;
    m->data_state.epoch = 2;
    m->data_state.position = 64;
    cf_rng_seed(&m->data_state.rng, 99, 1);
    ck_assert_int_eq(cf_ckpt_meta_set_int(m, "levels", 2), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(m, "lr", 0.001), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_string(m, "coupling", "quad"), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_string(m, "note", "say \"hi\"\n\tback\\slash"), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_int(m, "big", -(1ll << 40)), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(m, "tiny", -2.5e-300), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(m, "whole", 3.0), CF_OK);
}

static const char *expected_json =
    "{\"levels\":2,\"lr\":0.001,\"coupling\":\"quad\","
    "\"note\":\"say \\\"hi\\\"\\n\\tback\\\\slash\",\"big\":-1099511627776,"
    "\"tiny\":-2.5e-300,\"whole\":3.0}";

static void expect_same_tensors(cf_params *a, cf_params *b)
{
    size_t es = cf_dtype_size(cf_params_dtype(a));
    for (int s = 0; s < 2; s++) {
        int n = s ? cf_params_state_count(a) : cf_params_count(a);
        for (int i = 0; i < n; i++) {
            cf_tensor *ta = s ? cf_params_state_at(a, i) : cf_params_at(a, i);
            cf_tensor *tb = cf_params_find(b, ta->name);
            ck_assert_ptr_nonnull(tb);
            ck_assert_msg(memcmp(ta->data, tb->data, (size_t)ta->numel * es) == 0, "'%s' differs",
                          ta->name);
        }
    }
}

static void expect_all_sevens(cf_params *ps)
{
    for (int s = 0; s < 2; s++) {
        int n = s ? cf_params_state_count(ps) : cf_params_count(ps);
        for (int i = 0; i < n; i++) {
            cf_tensor *t = s ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
            for (int64_t j = 0; j < t->numel; j++)
                ck_assert_msg(cf_tensor_get(t, j) == 7.0, "'%s' changed by a failed load", t->name);
        }
    }
}

static void expect_same_meta(const cf_ckpt_meta *a, const cf_ckpt_meta *b)
{
    ck_assert_int_eq(a->step, b->step);
    ck_assert_int_eq(a->epoch, b->epoch);
    ck_assert_int_eq(memcmp(&a->rng, &b->rng, sizeof a->rng), 0);
    ck_assert(a->has_data_state == b->has_data_state);
    ck_assert_int_eq(memcmp(&a->data_state, &b->data_state, sizeof a->data_state), 0);
    ck_assert_int_eq(a->n_config, b->n_config);
    for (int i = 0; i < a->n_config; i++) {
        const cf_ckpt_entry *x = &a->config[i], *y = &b->config[i];
        ck_assert_str_eq(x->key, y->key);
        ck_assert_int_eq(x->type, y->type);
        if (x->type == CF_CKPT_TYPE_INT) ck_assert_int_eq(x->i, y->i);
        if (x->type == CF_CKPT_TYPE_DOUBLE) ck_assert_int_eq(memcmp(&x->d, &y->d, sizeof x->d), 0);
        if (x->type == CF_CKPT_TYPE_STRING) ck_assert_str_eq(x->s, y->s);
    }
}

/* Loop: f32, f64. Save, then load into a fresh set and optimizer: bit-identical parameters,
 * state, moments, counts, meta and configuration; the optimizer's options come back too. */
START_TEST(test_checkpoint_roundtrip)
{
    cf_dtype dt = _i ? CF_F64 : CF_F32;
    size_t es = cf_dtype_size(dt);
    cf_params *ps = make_model(dt, 0, 5);
    cf_adam *opt = make_trained_adam(ps);
    cf_ckpt_meta meta;
    fill_meta(&meta);
    const char *path = tpath("model.h5");
    ck_assert_msg(cf_checkpoint_save(path, ps, opt, &meta) == CF_OK, "%s", cf_last_error());
    expect_no_temporaries(tmpdir);

    cf_params *fresh = make_model(dt, 0, 0);
    cf_adam *fresh_opt = cf_adam_new(fresh, &test_opts);
    cf_ckpt_meta got = {0};
    ck_assert_int_eq(cf_ckpt_meta_set_string(&got, "stale", "freed by the load"), CF_OK);
    ck_assert_msg(cf_checkpoint_load(path, fresh, fresh_opt, &got) == CF_OK, "%s", cf_last_error());
    expect_same_tensors(ps, fresh);
    for (int i = 0; i < cf_params_count(ps); i++) {
        size_t off = cf_params_offset(ps, i) * es, n = (size_t)cf_params_at(ps, i)->numel * es;
        ck_assert_int_eq(cf_params_offset(ps, i), cf_params_offset(fresh, i));
        ck_assert(memcmp((char *)cf_adam_m(opt) + off, (char *)cf_adam_m(fresh_opt) + off, n) == 0);
        ck_assert(memcmp((char *)cf_adam_v(opt) + off, (char *)cf_adam_v(fresh_opt) + off, n) == 0);
    }
    ck_assert_int_eq(cf_adam_step_count(fresh_opt), 3);
    ck_assert_int_eq(cf_adam_skipped_count(fresh_opt), 1);
    expect_same_meta(&meta, &got);
    ck_assert_ptr_null(cf_ckpt_meta_find(&got, "stale"));
    ck_assert_str_eq(got.library_version, CF_VERSION_STRING);
    ck_assert_int_eq(got.format_version, CF_CHECKPOINT_VERSION);
    ck_assert(got.has_optimizer);
    ck_assert_int_eq(got.optimizer_steps, 3);
    ck_assert_int_eq(got.optimizer_skipped, 1);
    ck_assert_int_eq(memcmp(&got.optimizer, cf_adam_options(opt), sizeof got.optimizer), 0);

    /* The restored optimizer continues exactly as the original. */
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *a = cf_params_at(ps, i), *b = cf_params_at(fresh, i);
        for (int64_t j = 0; j < a->numel; j++) {
            cf_buf_set(dt, a->grad, j, 0.1 * (double)(j + i));
            cf_buf_set(dt, b->grad, j, 0.1 * (double)(j + i));
        }
    }
    ck_assert_int_eq(cf_adam_step(opt, NULL), CF_OK);
    ck_assert_int_eq(cf_adam_step(fresh_opt, NULL), CF_OK);
    expect_same_tensors(ps, fresh);

    cf_ckpt_meta_clear(&meta);
    cf_ckpt_meta_clear(&got);
    cf_adam_free(opt);
    cf_adam_free(fresh_opt);
    cf_params_free(ps);
    cf_params_free(fresh);
}
END_TEST

/* Loop: f32 file into an f64 set, f64 file into an f32 set. */
START_TEST(test_checkpoint_dtype_conversion)
{
    cf_dtype from = _i ? CF_F64 : CF_F32, to = _i ? CF_F32 : CF_F64;
    cf_params *ps = make_model(from, 0, 8), *other = make_model(to, 0, 0);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    ck_assert_msg(cf_checkpoint_load(path, other, NULL, NULL) == CF_OK, "%s", cf_last_error());
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *a = cf_params_at(ps, i), *b = cf_params_at(other, i);
        for (int64_t j = 0; j < a->numel; j++) {
            double want = from == CF_F64 ? (double)(float)cf_tensor_get(a, j) : cf_tensor_get(a, j);
            ck_assert_double_eq(cf_tensor_get(b, j), want);
        }
    }
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

/* What another tool sees, through the HDF5 C API only. */
static char *h5_string_attr(hid_t loc, const char *name)
{
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    ck_assert_msg(a >= 0, "no attribute %s", name);
    hid_t t = H5Aget_type(a);
    ck_assert(H5Tis_variable_str(t) > 0);
    char *s = NULL, *copy;
    ck_assert(H5Aread(a, t, &s) >= 0);
    copy = strdup(s);
    H5free_memory(s);
    H5Tclose(t);
    H5Aclose(a);
    return copy;
}

static int64_t h5_int_attr(hid_t loc, const char *name)
{
    int64_t v = -1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    ck_assert_msg(a >= 0, "no attribute %s", name);
    hid_t t = H5Aget_type(a);
    ck_assert_int_eq(H5Tget_class(t), H5T_INTEGER);
    ck_assert(H5Aread(a, H5T_NATIVE_INT64, &v) >= 0);
    H5Tclose(t);
    H5Aclose(a);
    return v;
}

START_TEST(test_checkpoint_layout)
{
    cf_params *ps = make_model(CF_F32, 0, 3);
    cf_adam *opt = make_trained_adam(ps);
    cf_ckpt_meta meta;
    fill_meta(&meta);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, opt, &meta), CF_OK);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert(f >= 0);
    char *s = h5_string_attr(f, "format");
    ck_assert_str_eq(s, "cincflow-checkpoint");
    free(s);
    s = h5_string_attr(f, "library_version");
    ck_assert_str_eq(s, CF_VERSION_STRING);
    free(s);
    ck_assert_int_eq(h5_int_attr(f, "format_version"), CF_CHECKPOINT_VERSION);
    ck_assert_int_eq(h5_int_attr(f, "step"), 42);
    ck_assert_int_eq(h5_int_attr(f, "epoch"), 3);
    uint64_t words[4];
    hid_t a = H5Aopen(f, "rng_state", H5P_DEFAULT);
    ck_assert(H5Aread(a, H5T_NATIVE_UINT64, words) >= 0);
    H5Aclose(a);
    ck_assert_int_eq(memcmp(words, meta.rng.s, sizeof words), 0);

    static const char *layouts[][2] = {{"levels.0.conv.weight", "HWIO"},
                                       {"levels.0.conv.bias", "C"},
                                       {"prior.scale", "scalar"},
                                       {"dense.w", "ND"}};
    for (int k = 0; k < 4; k++) {
        char name[128];
        snprintf(name, sizeof name, "/params/%s", layouts[k][0]);
        hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
        ck_assert_msg(d >= 0, "no dataset %s", name);
        hid_t t = H5Dget_type(d);
        ck_assert(H5Tequal(t, H5T_IEEE_F32LE) > 0);
        s = h5_string_attr(d, "layout");
        ck_assert_str_eq(s, layouts[k][1]);
        free(s);
        if (k == 0) { /* the values, in HWIO order */
            float w[36];
            ck_assert(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) >= 0);
            ck_assert_int_eq(memcmp(w, cf_params_at(ps, 0)->data, sizeof w), 0);
        }
        H5Tclose(t);
        H5Dclose(d);
    }
    static const char *present[] = {"/state/levels.0.actnorm.initialized", "/optimizer/m/dense.w",
                                    "/optimizer/v/levels.0.conv.bias"};
    for (int k = 0; k < 3; k++)
        ck_assert_msg(H5Lexists(f, present[k], H5P_DEFAULT) > 0, "%s", present[k]);
    hid_t g = H5Gopen2(f, "optimizer", H5P_DEFAULT);
    s = h5_string_attr(g, "kind");
    ck_assert_str_eq(s, "adamw");
    free(s);
    ck_assert_int_eq(h5_int_attr(g, "step"), 3);
    ck_assert_int_eq(h5_int_attr(g, "skipped"), 1);
    H5Gclose(g);
    g = H5Gopen2(f, "config", H5P_DEFAULT);
    ck_assert_int_eq(h5_int_attr(g, "levels"), 2);
    s = h5_string_attr(g, "coupling");
    ck_assert_str_eq(s, "quad");
    free(s);
    s = h5_string_attr(g, "json");
    ck_assert_str_eq(s, expected_json);
    free(s);
    H5Gclose(g);
    H5Fclose(f);
    cf_ckpt_meta_clear(&meta);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* Loop over mismatches between the file (the plain model) and the set: the first is reported
 * by name, and the set is left as it was. */
START_TEST(test_checkpoint_mismatch)
{
    static const struct {
        unsigned variant;
        cf_status status;
        const char *needles[3];
    } cases[] = {
        {MODEL_EXTRA_PARAM, CF_ERR_NOT_FOUND, {"'extra.w'", "missing"}},
        {MODEL_NO_DENSE, CF_ERR_SHAPE, {"'dense.w'", "the model does not"}},
        {MODEL_DENSE_T, CF_ERR_SHAPE, {"'dense.w'", "(3, 5) in the file", "(5, 3) in the model"}},
        {MODEL_NO_STATS, CF_ERR_SHAPE, {"'levels.0.actnorm.stats'", "state tensor"}},
        /* bias comes before dense.w and extra.w: it is the one reported */
        {MODEL_BIAS_3 | MODEL_DENSE_T | MODEL_EXTRA_PARAM,
         CF_ERR_SHAPE,
         {"'levels.0.conv.bias'", "(2) in the file", "(3) in the model"}},
    };
    const char *path = tpath("model.h5");
    cf_params *ps = make_model(CF_F32, 0, 4);
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    cf_params *other = make_model(CF_F32, cases[_i].variant, 0);
    cf_ckpt_meta meta = {0};
    cf_status st = cf_checkpoint_load(path, other, NULL, &meta);
    ck_assert_msg(st == cases[_i].status, "status %d (%s)", (int)st, cf_last_error());
    for (int k = 0; k < 3 && cases[_i].needles[k]; k++) expect_failure(st, cases[_i].needles[k]);
    expect_failure(st, path);
    expect_all_sevens(other);
    ck_assert_int_eq(meta.step, 0);
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

/* Loop: NaN, +Inf in a parameter, -Inf in a state tensor, NaN in a moment. */
START_TEST(test_checkpoint_non_finite)
{
    cf_params *ps = make_model(CF_F32, 0, 6);
    cf_adam *opt = make_trained_adam(ps);
    const char *name = _i == 2 ? "levels.0.actnorm.stats" : "levels.0.conv.bias";
    cf_tensor *t = cf_params_find(ps, name);
    if (_i == 3) {
        size_t off = cf_params_offset(ps, 1);
        ((float *)cf_adam_m(opt))[off + 1] = NAN;
    } else {
        cf_tensor_set(t, 1, _i == 0 ? NAN : _i == 1 ? INFINITY : -INFINITY);
    }
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, opt, NULL), CF_OK);
    cf_params *other = make_model(CF_F32, 0, 0);
    cf_adam *other_opt = cf_adam_new(other, &test_opts);
    expect_failure(cf_checkpoint_load(path, other, other_opt, NULL), name);
    ck_assert_int_eq(cf_checkpoint_load(path, other, other_opt, NULL), CF_ERR_NUMERIC);
    expect_failure(-1, "non-finite");
    expect_all_sevens(other);
    ck_assert_int_eq(cf_adam_step_count(other_opt), 0);
    cf_adam_free(opt);
    cf_adam_free(other_opt);
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

START_TEST(test_checkpoint_optimizer_required)
{
    cf_params *ps = make_model(CF_F32, 0, 6), *other = make_model(CF_F32, 0, 0);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    cf_adam *opt = cf_adam_new(other, NULL);
    expect_failure(cf_checkpoint_load(path, other, opt, NULL), "no optimizer state");
    expect_all_sevens(other);
    /* Without asking for the optimizer, the same file loads. */
    ck_assert_int_eq(cf_checkpoint_load(path, other, NULL, NULL), CF_OK);
    cf_adam_free(opt);
    /* An optimizer of another kind is refused. */
    cf_adam *trained = make_trained_adam(ps);
    ck_assert_int_eq(cf_checkpoint_save(path, ps, trained, NULL), CF_OK);
    opt = cf_adam_new(other, &(cf_adam_opts){.kind = CF_OPTIM_KIND_ADAMAX});
    expect_failure(cf_checkpoint_load(path, other, opt, NULL), "adamw");
    cf_adam_free(opt);
    cf_adam_free(trained);
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

/* Files that are not checkpoints, or damaged ones: an error naming the file, never a crash. */
START_TEST(test_checkpoint_bad_files)
{
    cf_params *ps = make_model(CF_F32, 0, 0);
    cf_ckpt_meta meta = {0};
    const char *missing = tpath("missing.h5");
    ck_assert_int_eq(cf_checkpoint_load(missing, ps, NULL, NULL), CF_ERR_NOT_FOUND);
    expect_failure(-1, missing);

    const char *text = tpath("text.h5");
    write_bytes(text, "hello, not hdf5\n", 16);
    expect_failure(cf_checkpoint_load(text, ps, NULL, NULL), text);
    expect_failure(cf_checkpoint_read_config(text, &meta), "not an HDF5 file");

    /* An HDF5 file of another program. */
    const char *foreign = tpath("foreign.h5");
    hid_t f = H5Fcreate(foreign, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(f);
    expect_failure(cf_checkpoint_load(foreign, ps, NULL, NULL), "not a cincflow checkpoint");

    /* A checkpoint of a newer format version. */
    cf_params *good = make_model(CF_F32, 0, 2);
    const char *newer = tpath("newer.h5");
    ck_assert_int_eq(cf_checkpoint_save(newer, good, NULL, NULL), CF_OK);
    f = H5Fopen(newer, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    int64_t next = CF_CHECKPOINT_VERSION + 1;
    H5Awrite(a, H5T_NATIVE_INT64, &next);
    H5Aclose(a);
    H5Fclose(f);
    char expected[64];
    snprintf(expected, sizeof expected, "format version %d", CF_CHECKPOINT_VERSION + 1);
    expect_failure(cf_checkpoint_load(newer, ps, NULL, NULL), expected);

    /* Truncated copies of a good checkpoint, cut at several places. */
    const char *good_path = tpath("good.h5");
    ck_assert_int_eq(cf_checkpoint_save(good_path, good, NULL, NULL), CF_OK);
    size_t n;
    uint8_t *bytes = read_bytes(good_path, &n);
    const char *cut = tpath("cut.h5");
    for (int k = 1; k < 8; k++) {
        write_bytes(cut, bytes, n * (size_t)k / 8);
        cf_status st = cf_checkpoint_load(cut, ps, NULL, &meta);
        ck_assert_msg(st < 0, "a checkpoint cut to %d/8 loaded", k);
        expect_failure(st, cut);
    }
    free(bytes);
    expect_all_sevens(ps);
    cf_params_free(ps);
    cf_params_free(good);
}
END_TEST

static bool running_as_root(void)
{
    return geteuid() == 0;
}

/* Loop over ways a save can fail: each returns an error naming the path, leaves the previous
 * checkpoint loadable with its old values, and leaves no temporary file. */
START_TEST(test_checkpoint_failed_write_keeps_old)
{
    const char *path = tpath("model.h5");
    cf_params *old = make_model(CF_F32, MODEL_BIG, 1), *update = make_model(CF_F32, MODEL_BIG, 2);
    ck_assert_int_eq(cf_checkpoint_save(path, old, NULL, NULL), CF_OK);
    const char *target = path;
    cf_status st = CF_OK;
    switch (_i) {
    case 0: /* into a folder that does not exist */
        target = tpath("no/such/folder/model.h5");
        st = cf_checkpoint_save(target, update, NULL, NULL);
        break;
    case 1: { /* a name HDF5 would take for a path */
        cf_params *slash = make_model(CF_F32, MODEL_BIG, 2);
        cf_params_add(slash, "bad/name", 1, (int64_t[]){2});
        st = cf_checkpoint_save(path, slash, NULL, NULL);
        expect_failure(st, "bad/name");
        cf_params_free(slash);
        break;
    }
    case 2: { /* the disk "fills up": writes beyond 8 KiB fail with EFBIG */
        struct rlimit saved, small = {8192, 8192};
        getrlimit(RLIMIT_FSIZE, &saved);
        small.rlim_max = saved.rlim_max;
        void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
        st = cf_checkpoint_save(path, update, NULL, NULL);
        setrlimit(RLIMIT_FSIZE, &saved);
        signal(SIGXFSZ, old_handler);
        break;
    }
    case 3: /* the path is a folder: the final rename fails */
        target = tpath("folder.h5");
        ck_assert_int_eq(mkdir(target, 0700), 0);
        st = cf_checkpoint_save(target, update, NULL, NULL);
        break;
    case 4: /* a read-only folder (root ignores permissions: nothing to test then) */
        if (running_as_root()) {
            fprintf(stderr, "test_checkpoint_failed_write_keeps_old: running as root, the "
                            "read-only folder case is skipped\n");
            cf_params_free(old);
            cf_params_free(update);
            return;
        }
        ck_assert_int_eq(chmod(tmpdir, 0500), 0);
        st = cf_checkpoint_save(path, update, NULL, NULL);
        chmod(tmpdir, 0700);
        break;
    }
    expect_failure(st, target);
    expect_no_temporaries(tmpdir);
    cf_params *back = make_model(CF_F32, MODEL_BIG, 0);
    ck_assert_msg(cf_checkpoint_load(path, back, NULL, NULL) == CF_OK, "%s", cf_last_error());
    expect_same_tensors(old, back);
    cf_params_free(back);
    cf_params_free(old);
    cf_params_free(update);
}
END_TEST

/* Saving over an existing checkpoint replaces it. */
START_TEST(test_checkpoint_overwrite)
{
    const char *path = tpath("model.h5");
    cf_params *a = make_model(CF_F64, 0, 1), *b = make_model(CF_F64, 0, 2);
    cf_params *back = make_model(CF_F64, 0, 0);
    ck_assert_int_eq(cf_checkpoint_save(path, a, NULL, NULL), CF_OK);
    ck_assert_int_eq(cf_checkpoint_save(path, b, NULL, NULL), CF_OK);
    ck_assert_int_eq(cf_checkpoint_load(path, back, NULL, NULL), CF_OK);
    expect_same_tensors(b, back);
    expect_no_temporaries(tmpdir);
    cf_params_free(a);
    cf_params_free(b);
    cf_params_free(back);
}
END_TEST

/* A temporary left by a writer that was killed mid-save ("<path>.tmp.<pid>" whose pid no longer
 * exists) is removed by the next save to the same path; a live process's temporary, another
 * path's and a name that only looks alike are kept. */
START_TEST(test_checkpoint_stale_temporaries)
{
    const char *path = tpath("model.h5");
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) _exit(0);
    ck_assert_int_eq(waitpid(child, NULL, 0), child); /* reaped: the pid names no process */
    ck_assert_int_eq(kill(child, 0), -1);
    ck_assert_int_eq(errno, ESRCH);
    char stale[600], live[600], other[600], alike[600];
    snprintf(stale, sizeof stale, "%s.tmp.%ld", path, (long)child);
    snprintf(live, sizeof live, "%s.tmp.%ld", path, (long)getppid());
    snprintf(other, sizeof other, "%s.tmp.%ld", tpath("other.h5"), (long)child);
    snprintf(alike, sizeof alike, "%s.tmp.%ld.x", path, (long)child);
    const char *files[4] = {stale, live, other, alike};
    for (int i = 0; i < 4; i++) write_bytes(files[i], "partial", 7);
    cf_params *ps = make_model(CF_F32, 0, 1), *back = make_model(CF_F32, 0, 0);
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    ck_assert_msg(!exists(stale), "the stale temporary %s was kept", stale);
    for (int i = 1; i < 4; i++) ck_assert_msg(exists(files[i]), "%s was removed", files[i]);
    ck_assert_int_eq(cf_checkpoint_load(path, back, NULL, NULL), CF_OK);
    expect_same_tensors(ps, back);
    for (int i = 1; i < 4; i++) unlink(files[i]);
    expect_no_temporaries(tmpdir);
    cf_params_free(ps);
    cf_params_free(back);
}
END_TEST

/* The configuration alone, as a tool that rebuilds the model would read it. */
START_TEST(test_checkpoint_read_config)
{
    cf_params *ps = make_model(CF_F32, 0, 1);
    cf_ckpt_meta meta;
    fill_meta(&meta);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, &meta), CF_OK);
    cf_ckpt_meta got = {0};
    ck_assert_msg(cf_checkpoint_read_config(path, &got) == CF_OK, "%s", cf_last_error());
    expect_same_meta(&meta, &got);
    ck_assert(!got.has_optimizer);
    int64_t levels;
    double lr, levels_d;
    const char *coupling;
    ck_assert_int_eq(cf_ckpt_meta_get_int(&got, "levels", &levels), CF_OK);
    ck_assert_int_eq(levels, 2);
    ck_assert_int_eq(cf_ckpt_meta_get_double(&got, "lr", &lr), CF_OK);
    ck_assert_double_eq(lr, 0.001);
    ck_assert_int_eq(cf_ckpt_meta_get_double(&got, "levels", &levels_d), CF_OK);
    ck_assert_double_eq(levels_d, 2.0);
    ck_assert_int_eq(cf_ckpt_meta_get_string(&got, "coupling", &coupling), CF_OK);
    ck_assert_str_eq(coupling, "quad");
    ck_assert_int_eq(cf_ckpt_meta_get_int(&got, "coupling", &levels), CF_ERR_DTYPE);
    expect_failure(-1, "'coupling' is a string");
    ck_assert_int_eq(cf_ckpt_meta_get_int(&got, "width", &levels), CF_ERR_NOT_FOUND);
    expect_failure(-1, "'width'");
    cf_ckpt_meta_clear(&meta);
    cf_ckpt_meta_clear(&got);
    cf_params_free(ps);
}
END_TEST

START_TEST(test_meta_entries)
{
    cf_ckpt_meta m = {0};
    ck_assert_int_eq(cf_ckpt_meta_set_int(&m, "a", 1), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_string(&m, "b", "x"), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(&m, "a", 2.5), CF_OK); /* replaced in place */
    ck_assert_int_eq(cf_ckpt_meta_set_string(&m, "b", "y"), CF_OK);
    ck_assert_int_eq(m.n_config, 2);
    ck_assert_str_eq(m.config[0].key, "a");
    ck_assert_int_eq(m.config[0].type, CF_CKPT_TYPE_DOUBLE);
    ck_assert_str_eq(m.config[1].s, "y");
    expect_failure(cf_ckpt_meta_set_int(&m, "json", 1), "json");
    expect_failure(cf_ckpt_meta_set_int(&m, "", 1), "key ''");
    expect_failure(cf_ckpt_meta_set_int(&m, "a\nb", 1), "printable");
    ck_assert_int_eq(m.n_config, 2);
    cf_ckpt_meta_clear(&m);
    ck_assert_int_eq(m.n_config, 0);
    ck_assert_ptr_null(m.config);
    cf_ckpt_meta_clear(NULL);
}
END_TEST

/* The batcher's state through a checkpoint: the resumed batcher draws the batch the original
 * would have drawn next. */
START_TEST(test_checkpoint_batcher_resume)
{
    cf_dataset *ds = cf_dataset_open("synthetic:4x4x3:30", NULL);
    cf_batcher *b = make_batcher(ds, 4, 8, 0, 1);
    cf_tensor *x = batch_tensor(ds, 4, CF_F32), *y = batch_tensor(ds, 4, CF_F32);
    for (int k = 0; k < 9; k++) ck_assert_int_eq(cf_batcher_next(b, x, NULL, NULL), CF_OK);
    cf_ckpt_meta meta = {.step = 9, .has_data_state = true, .data_state = cf_batcher_get_state(b)};
    cf_params *ps = make_model(CF_F32, 0, 1);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, &meta), CF_OK);
    ck_assert_int_eq(cf_batcher_next(b, x, NULL, NULL), CF_OK);

    cf_ckpt_meta got = {0};
    ck_assert_int_eq(cf_checkpoint_load(path, ps, NULL, &got), CF_OK);
    ck_assert(got.has_data_state);
    cf_batcher *resumed = make_batcher(ds, 4, 8, 0, 1);
    ck_assert_int_eq(cf_batcher_set_state(resumed, &got.data_state), CF_OK);
    ck_assert_int_eq(cf_batcher_next(resumed, y, NULL, NULL), CF_OK);
    ck_assert_int_eq(memcmp(x->data, y->data, (size_t)x->numel * sizeof(float)), 0);
    cf_ckpt_meta_clear(&got);
    cf_params_free(ps);
    cf_tensor_free(x);
    cf_tensor_free(y);
    cf_batcher_free(b);
    cf_batcher_free(resumed);
    cf_dataset_free(ds);
}
END_TEST

/* The checkpoint tests/io_h5py_check.py reads: "levels.0.conv.weight" (3, 3, 2, 2) holds
 * 0.25 * i at flat index i, config levels = 2 and coupling = "quad". */
static int write_known_checkpoint(const char *path)
{
    cf_params *ps = cf_params_new(CF_F32);
    cf_tensor *w = cf_params_add(ps, "levels.0.conv.weight", 4, (int64_t[]){3, 3, 2, 2});
    for (int64_t i = 0; i < w->numel; i++) cf_tensor_set(w, i, 0.25 * (double)i);
    cf_params_add_state(ps, "levels.0.actnorm.initialized", 1, (int64_t[]){1});
    cf_ckpt_meta meta = {.step = 7, .has_rng = true};
    cf_rng_seed(&meta.rng, 3, 1);
    cf_ckpt_meta_set_int(&meta, "levels", 2);
    cf_ckpt_meta_set_string(&meta, "coupling", "quad");
    cf_status st = cf_checkpoint_save(path, ps, NULL, &meta);
    if (st != CF_OK) fprintf(stderr, "test_io_checkpoint: %s\n", cf_last_error());
    cf_ckpt_meta_clear(&meta);
    cf_params_free(ps);
    return st == CF_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- the runner ------------------------------------------------------------------------- */

static Suite *io_suite(void)
{
    Suite *s = suite_create("io checkpoint");
    TCase *ckpt = tcase_create("checkpoint");
    tcase_add_checked_fixture(ckpt, make_tmpdir, remove_tmpdir);
    tcase_add_loop_test(ckpt, test_checkpoint_roundtrip, 0, 2);
    tcase_add_loop_test(ckpt, test_checkpoint_dtype_conversion, 0, 2);
    tcase_add_test(ckpt, test_checkpoint_layout);
    tcase_add_loop_test(ckpt, test_checkpoint_mismatch, 0, 5);
    tcase_add_loop_test(ckpt, test_checkpoint_non_finite, 0, 4);
    tcase_add_test(ckpt, test_checkpoint_optimizer_required);
    tcase_add_test(ckpt, test_checkpoint_bad_files);
    tcase_add_loop_test(ckpt, test_checkpoint_failed_write_keeps_old, 0, 5);
    tcase_add_test(ckpt, test_checkpoint_overwrite);
    tcase_add_test(ckpt, test_checkpoint_stale_temporaries);
    tcase_add_test(ckpt, test_checkpoint_read_config);
    tcase_add_test(ckpt, test_meta_entries);
    tcase_add_test(ckpt, test_checkpoint_batcher_resume);
    suite_add_tcase(s, ckpt);
    return s;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-checkpoint") == 0)
        return write_known_checkpoint(argv[2]);
    (void)argc, (void)argv;
    SRunner *sr = srunner_create(io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
