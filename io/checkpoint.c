/* checkpoint.c: HDF5 checkpoints of a parameter set, its optimizer and the training state
 * (layout and rules in cf_checkpoint.h).
 *
 * Every HDF5 call runs with HDF5's automatic error printing switched off (checkpoint_h5.c);
 * when one fails, the deepest message of HDF5's error stack is appended to ours, which names
 * the file and the object.
 *
 * Saving builds the whole file in memory (HDF5's core driver, no backing store) and hands its
 * image to cf__write_file_atomic, which writes "<path>.tmp.<pid>", fsyncs and renames it. So
 * HDF5 never meets a failing disk: HDF5 1.10 cannot close a file whose writes failed, and
 * crashes at exit when it tries again. The price is the file's size in memory, twice, while
 * saving (the core driver's buffer and the image taken from it).
 *
 * Loading works in three passes, so a failure changes nothing: names and shapes of every
 * tensor (parameters, state, extras in the file, moments), then values into staging buffers
 * with a finiteness check, then copies.
 *
 * Not here: the metadata's entries and JSON (checkpoint_meta.c), HDF5 helpers and the guard for
 * HDF5 1.10 (checkpoint_h5.c), compression or chunking (plain contiguous datasets keep the file simple for other
 * readers), partial loads, MPI.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_checkpoint_impl.h"
#include "cf_io_impl.h"
#include "cf_version.h"

static const char *const kind_names[] = {"adam", "adamw", "adamax"};

/* ---- saving ----------------------------------------------------------------------------- */

static cf_status write_root(const char *path, hid_t file, const cf_ckpt_meta *meta)
{
    const char *w = "the file";
    cf_status st = cf__ck_write_str(path, file, w, "format", CF_CHECKPOINT_FORMAT);
    if (st == CF_OK) st = cf__ck_write_i64(path, file, w, "format_version", CF_CHECKPOINT_VERSION);
    if (st == CF_OK) st = cf__ck_write_str(path, file, w, "library_version", CF_VERSION_STRING);
    if (st == CF_OK) st = cf__ck_write_i64(path, file, w, "step", meta->step);
    if (st == CF_OK) st = cf__ck_write_i64(path, file, w, "epoch", meta->epoch);
    if (st == CF_OK && meta->has_rng) st = cf__ck_write_u64s(path, file, w, "rng_state", meta->rng.s, 4);
    if (st == CF_OK && meta->has_data_state) {
        const cf_batcher_state *d = &meta->data_state;
        st = cf__ck_write_i64(path, file, w, "data_epoch", d->epoch);
        if (st == CF_OK) st = cf__ck_write_i64(path, file, w, "data_position", d->position);
        if (st == CF_OK) st = cf__ck_write_u64s(path, file, w, "data_rng_state", d->rng.s, 4);
    }
    return st;
}

static cf_status write_optimizer(const char *path, hid_t file, const cf_params *ps,
                                 const cf_adam *opt_in)
{
    cf_adam *opt = (cf_adam *)opt_in; /* the accessors take no const; nothing is changed */
    const cf_adam_opts *o = cf_adam_options(opt);
    hid_t g = cf__ck_make_group(file, "optimizer", false);
    if (g < 0) return cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /optimizer", path);
    const char *w = "/optimizer";
    cf_status st = cf__ck_write_str(path, g, w, "kind", kind_names[o->kind]);
    if (st == CF_OK) st = cf__ck_write_f64(path, g, w, "lr", o->lr);
    if (st == CF_OK) st = cf__ck_write_f64(path, g, w, "beta1", o->beta1);
    if (st == CF_OK) st = cf__ck_write_f64(path, g, w, "beta2", o->beta2);
    if (st == CF_OK) st = cf__ck_write_f64(path, g, w, "eps", o->eps);
    if (st == CF_OK) st = cf__ck_write_f64(path, g, w, "weight_decay", o->weight_decay);
    if (st == CF_OK) st = cf__ck_write_f64(path, g, w, "clip_norm", o->clip_norm);
    if (st == CF_OK) st = cf__ck_write_i64(path, g, w, "warmup_steps", o->warmup_steps);
    if (st == CF_OK) st = cf__ck_write_i64(path, g, w, "step", cf_adam_step_count(opt));
    if (st == CF_OK) st = cf__ck_write_i64(path, g, w, "skipped", cf_adam_skipped_count(opt));
    if (st == CF_OK) st = cf__ck_write_group(path, g, "optimizer/m", "m", ps, false, cf_adam_m(opt));
    if (st == CF_OK) st = cf__ck_write_group(path, g, "optimizer/v", "v", ps, false, cf_adam_v(opt));
    H5Gclose(g);
    return st;
}

static cf_status write_config(const char *path, hid_t file, const cf_ckpt_meta *meta)
{
    hid_t g = cf__ck_make_group(file, "config", true);
    if (g < 0) return cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /config", path);
    const char *w = "/config";
    cf_status st = CF_OK;
    for (int i = 0; i < meta->n_config && st == CF_OK; i++) {
        const cf_ckpt_entry *e = &meta->config[i];
        if (e->type == CF_CKPT_TYPE_INT)
            st = cf__ck_write_i64(path, g, w, e->key, e->i);
        else if (e->type == CF_CKPT_TYPE_DOUBLE)
            st = cf__ck_write_f64(path, g, w, e->key, e->d);
        else
            st = cf__ck_write_str(path, g, w, e->key, e->s);
    }
    char *json = st == CF_OK ? cf__ck_config_json(meta) : NULL;
    if (st == CF_OK && !json) st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory", path);
    if (st == CF_OK) st = cf__ck_write_str(path, g, w, "json", json);
    free(json);
    H5Gclose(g);
    return st;
}

/* A bool as h5py writes one: an enum of int8 with FALSE = 0 and TRUE = 1. */
static cf_status write_arch(const char *path, hid_t file, const char *json)
{
    cJSON *root = cJSON_Parse(json);
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    const cJSON *kinds = cJSON_GetObjectItemCaseSensitive(root, "kinds");
    if (!cJSON_IsArray(layers)) {
        cJSON_Delete(root);
        return cf_set_error(CF_ERR_ARG, "%s: the architecture to save is not an architecture's "
                            "JSON (cf_arch_to_json)", path);
    }
    hid_t g = cf__ck_make_group(file, "arch", true), gl = -1, gk = -1;
    cf_status st = g < 0 ? cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /arch", path) : CF_OK;
    const char *w = "/arch";
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (st == CF_OK && cJSON_IsString(fmt)) st = cf__ck_write_str(path, g, w, "format", fmt->valuestring);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (st == CF_OK && cJSON_IsNumber(ver))
        st = cf__ck_write_i64(path, g, w, "version", (int64_t)ver->valuedouble);
    if (st == CF_OK)
        st = cf__ck_write_shape(path, g, w, "input", cJSON_GetObjectItemCaseSensitive(root, "input"));
    if (st == CF_OK) st = cf__ck_write_i64(path, g, w, "n_layers", cJSON_GetArraySize(layers));
    if (st == CF_OK) st = cf__ck_write_str(path, g, w, "json", json);
    if (st == CF_OK && (gk = cf__ck_make_group(g, "kinds", true)) < 0)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /arch/kinds", path);
    const cJSON *k;
    static const char *const kind_keys[] = {"provider", "summary", "conventions"};
    cJSON_ArrayForEach(k, kinds)
    {
        if (st != CF_OK) break;
        hid_t gi = cf__ck_make_group(gk, k->string, true);
        if (gi < 0) {
            st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /arch/kinds/%s", path, k->string);
            break;
        }
        st = cf__ck_write_strings(path, gi, "/arch/kinds/...", k, kind_keys, 3);
        H5Gclose(gi);
    }
    if (st == CF_OK && (gl = cf__ck_make_group(g, "layers", true)) < 0)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /arch/layers", path);
    const cJSON *l;
    int idx = 0;
    static const char *const layer_keys[] = {"name", "kind"};
    cJSON_ArrayForEach(l, layers)
    {
        if (st != CF_OK) break;
        char name[16];
        snprintf(name, sizeof name, "%05d", idx++);
        hid_t gi = cf__ck_make_group(gl, name, true), gh = -1;
        if (gi < 0) {
            st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /arch/layers/%s", path, name);
            break;
        }
        const char *wl = "/arch/layers/...";
        st = cf__ck_write_strings(path, gi, wl, l, layer_keys, 2);
        const cJSON *in = cJSON_GetObjectItemCaseSensitive(l, "in");
        const cJSON *out = cJSON_GetObjectItemCaseSensitive(l, "out");
        if (st == CF_OK && in) st = cf__ck_write_shape(path, gi, wl, "in", in);
        if (st == CF_OK && out) st = cf__ck_write_shape(path, gi, wl, "out", out);
        if (st == CF_OK && (gh = cf__ck_make_group(gi, "hparams", true)) < 0)
            st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /arch/layers/%s/hparams", path, name);
        const cJSON *h;
        cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(l, "hparams"))
        {
            if (st != CF_OK) break;
            double d = cJSON_IsNumber(h) ? h->valuedouble : 0;
            if (cJSON_IsBool(h))
                st = cf__ck_write_bool(path, gh, wl, h->string, cJSON_IsTrue(h));
            else if (cJSON_IsString(h))
                st = cf__ck_write_str(path, gh, wl, h->string, h->valuestring);
            else if (cJSON_IsNumber(h) && d == floor(d) && fabs(d) < 9.2e18)
                st = cf__ck_write_i64(path, gh, wl, h->string, (int64_t)d);
            else if (cJSON_IsNumber(h))
                st = cf__ck_write_f64(path, gh, wl, h->string, d);
        }
        cf__ck_close_id(gh, H5Gclose);
        H5Gclose(gi);
    }
    cf__ck_close_id(gl, H5Gclose);
    cf__ck_close_id(gk, H5Gclose);
    cf__ck_close_id(g, H5Gclose);
    cJSON_Delete(root);
    return st;
}

/* Everything that can be refused before a file is created. */
static cf_status check_before_save(const char *path, const cf_params *ps, const cf_ckpt_meta *meta)
{
    cf_status st = CF_OK;
    for (int i = 0; i < cf_params_count(ps) && st == CF_OK; i++)
        st = cf__ck_check_name(path, "parameter", cf_params_at(ps, i)->name);
    for (int i = 0; i < cf_params_state_count(ps) && st == CF_OK; i++)
        st = cf__ck_check_name(path, "state tensor", cf_params_state_at(ps, i)->name);
    for (int i = 0; i < meta->n_config && st == CF_OK; i++) {
        const cf_ckpt_entry *e = &meta->config[i];
        st = cf__ck_check_key(e->key);
        if (st == CF_OK && (e->type < CF_CKPT_TYPE_INT || e->type > CF_CKPT_TYPE_STRING ||
                            (e->type == CF_CKPT_TYPE_STRING && !e->s)))
            st = cf_set_error(CF_ERR_ARG, "%s: config entry '%s' has no valid value", path, e->key);
        for (int j = 0; j < i && st == CF_OK; j++)
            if (strcmp(meta->config[j].key, e->key) == 0)
                st = cf_set_error(CF_ERR_ARG, "%s: config key '%s' appears twice", path, e->key);
    }
    return st;
}

/* Bytes the file will take, roughly: its values and some metadata per tensor. */
static size_t estimate_size(const cf_params *ps, bool with_optimizer)
{
    size_t es = cf_dtype_size(cf_params_dtype(ps)), total = 1 << 20;
    for (int i = 0; i < cf_params_count(ps); i++)
        total += ((size_t)cf_params_at(ps, i)->numel * es + 4096) * (with_optimizer ? 3 : 1);
    for (int i = 0; i < cf_params_state_count(ps); i++)
        total += (size_t)cf_params_state_at(ps, i)->numel * es + 4096;
    return total;
}

/* Builds the whole file in memory with HDF5's core driver; returns its bytes (owned). */
static cf_status build_image(const char *path, const cf_params *ps, const cf_adam *opt,
                             const cf_ckpt_meta *meta, uint8_t **image, size_t *size)
{
    *image = NULL;
    *size = 0;
    cf_status st = CF_OK;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    size_t guess = estimate_size(ps, opt != NULL) + (meta->arch_json ? 4 * strlen(meta->arch_json) : 0);
    if (fapl < 0 || H5Pset_fapl_core(fapl, guess, 0) < 0)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot set up an HDF5 file in memory", path);
    hid_t file = st == CF_OK ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : -1;
    if (st == CF_OK && file < 0)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot start an HDF5 file in memory", path);
    if (st == CF_OK) st = write_root(path, file, meta);
    if (st == CF_OK) st = cf__ck_write_group(path, file, "params", "params", ps, false, NULL);
    if (st == CF_OK) st = cf__ck_write_group(path, file, "state", "state", ps, true, NULL);
    if (st == CF_OK && opt) st = write_optimizer(path, file, ps, opt);
    if (st == CF_OK) st = write_config(path, file, meta);
    if (st == CF_OK && meta->arch_json) st = write_arch(path, file, meta->arch_json);
    if (st == CF_OK && H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot finish the HDF5 file in memory", path);
    ssize_t n = st == CF_OK ? H5Fget_file_image(file, NULL, 0) : -1;
    if (st == CF_OK && n <= 0)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot take the HDF5 file's image", path);
    if (st == CF_OK && !(*image = malloc((size_t)n)))
        st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory for a file of %zd bytes", path, n);
    if (st == CF_OK && H5Fget_file_image(file, *image, (size_t)n) != n)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot take the HDF5 file's image", path);
    if (file >= 0 && H5Fclose(file) < 0 && st == CF_OK)
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot close the HDF5 file in memory", path);
    cf__ck_close_id(fapl, H5Pclose);
    if (st == CF_OK) {
        *size = (size_t)n;
    } else {
        free(*image);
        *image = NULL;
    }
    return st;
}

cf_status cf_checkpoint_save(const char *path, const cf_params *ps, const cf_adam *opt,
                             const cf_ckpt_meta *meta)
{
    CF_ASSERT(path && ps, "cf_checkpoint_save: NULL argument");
    const cf_ckpt_meta none = {0};
    if (!meta) meta = &none;
    cf_status st = check_before_save(path, ps, meta);
    if (st != CF_OK) return st;
    uint8_t *image;
    size_t size;
    cf__ck_quiet q;
    cf__ck_quiet_begin(&q);
    st = build_image(path, ps, opt, meta, &image, &size);
    cf__ck_quiet_end(&q);
    if (st == CF_OK) st = cf__write_file_atomic(path, image, size);
    free(image);
    return st;
}

/* ---- reading the meta ------------------------------------------------------------------- */

typedef struct config_walk {
    const char *path;
    cf_ckpt_meta *meta;
    cf_status st;
} config_walk;

/* One attribute of /config: integers, floats and strings become entries; `json` and
 * attributes of other types or sizes are skipped. */
static herr_t config_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data)
{
    (void)info;
    config_walk *cw = data;
    if (strcmp(name, "json") == 0 || cf__ck_check_key(name) != CF_OK) return 0;
    if (cw->meta->n_config >= MAX_CONFIG_ENTRIES) {
        cw->st = cf_set_error(CF_ERR_FORMAT, "%s: /config has more than %d attributes", cw->path,
                              MAX_CONFIG_ENTRIES);
        return -1;
    }
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t type = a < 0 ? -1 : H5Aget_type(a);
    hid_t space = type < 0 ? -1 : H5Aget_space(a);
    if (space < 0) {
        cw->st =
            cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot open attribute '%s' of /config", cw->path, name);
    } else if (H5Sget_simple_extent_npoints(space) == 1) {
        H5T_class_t cls = H5Tget_class(type);
        int64_t i;
        double d;
        char *s;
        if (cls == H5T_INTEGER) {
            cw->st = cf__ck_read_i64(cw->path, loc, "/config", name, &i);
            if (cw->st == CF_OK) cw->st = cf_ckpt_meta_set_int(cw->meta, name, i);
        } else if (cls == H5T_FLOAT) {
            cw->st = cf__ck_read_f64(cw->path, loc, "/config", name, &d);
            if (cw->st == CF_OK) cw->st = cf_ckpt_meta_set_double(cw->meta, name, d);
        } else if (cls == H5T_STRING) {
            cw->st = cf__ck_read_str(cw->path, loc, "/config", name, &s);
            if (cw->st == CF_OK) cw->st = cf_ckpt_meta_set_string(cw->meta, name, s);
            if (cw->st == CF_OK) free(s);
        }
    }
    cf__ck_close_id(space, H5Sclose);
    cf__ck_close_id(type, H5Tclose);
    cf__ck_close_id(a, H5Aclose);
    return cw->st == CF_OK ? 0 : -1;
}

static cf_status read_config_group(const char *path, hid_t file, cf_ckpt_meta *meta)
{
    htri_t exists = H5Lexists(file, "config", H5P_DEFAULT);
    if (exists < 0) return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot look for /config", path);
    if (!exists) return CF_OK;
    hid_t g = H5Gopen2(file, "config", H5P_DEFAULT);
    if (g < 0) return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: /config is not a group", path);
    /* In the order written when the file tracks it, else by name. */
    H5_index_t index = H5_INDEX_NAME;
    hid_t gcpl = H5Gget_create_plist(g);
    unsigned flags = 0;
    if (gcpl >= 0 && H5Pget_attr_creation_order(gcpl, &flags) >= 0 &&
        (flags & H5P_CRT_ORDER_TRACKED))
        index = H5_INDEX_CRT_ORDER;
    cf__ck_close_id(gcpl, H5Pclose);
    config_walk cw = {.path = path, .meta = meta, .st = CF_OK};
    hsize_t at = 0;
    herr_t rc = H5Aiterate2(g, index, H5_ITER_INC, &at, config_attr, &cw);
    cf_status st = cw.st;
    if (rc < 0 && st == CF_OK) st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot list /config", path);
    H5Eclear2(H5E_DEFAULT);
    H5Gclose(g);
    return st;
}

static cf_status read_optimizer_meta(const char *path, hid_t file, cf_ckpt_meta *m)
{
    htri_t exists = H5Lexists(file, "optimizer", H5P_DEFAULT);
    if (exists < 0) return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot look for /optimizer", path);
    if (!exists) return CF_OK;
    hid_t g = H5Gopen2(file, "optimizer", H5P_DEFAULT);
    if (g < 0) return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: /optimizer is not a group", path);
    const char *w = "/optimizer";
    cf_adam_opts *o = &m->optimizer;
    char *kind = NULL;
    cf_status st = cf__ck_read_str(path, g, w, "kind", &kind);
    if (st == CF_OK) {
        int k = 0;
        while (k < 3 && strcmp(kind, kind_names[k]) != 0) k++;
        if (k == 3)
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: unknown optimizer kind '%s' (expected adam, "
                              "adamw or adamax)",
                              path, kind);
        else
            o->kind = (cf_optim_kind)k;
    }
    free(kind);
    if (st == CF_OK) st = cf__ck_read_f64(path, g, w, "lr", &o->lr);
    if (st == CF_OK) st = cf__ck_read_f64(path, g, w, "beta1", &o->beta1);
    if (st == CF_OK) st = cf__ck_read_f64(path, g, w, "beta2", &o->beta2);
    if (st == CF_OK) st = cf__ck_read_f64(path, g, w, "eps", &o->eps);
    if (st == CF_OK) st = cf__ck_read_f64(path, g, w, "weight_decay", &o->weight_decay);
    if (st == CF_OK) st = cf__ck_read_f64(path, g, w, "clip_norm", &o->clip_norm);
    if (st == CF_OK) st = cf__ck_read_i64(path, g, w, "warmup_steps", &o->warmup_steps);
    if (st == CF_OK) st = cf__ck_read_i64(path, g, w, "step", &m->optimizer_steps);
    if (st == CF_OK) st = cf__ck_read_i64(path, g, w, "skipped", &m->optimizer_skipped);
    if (st == CF_ERR_NOT_FOUND) st = CF_ERR_FORMAT;
    m->has_optimizer = st == CF_OK;
    H5Gclose(g);
    return st;
}

static cf_status read_meta(const char *path, hid_t file, cf_ckpt_meta *m)
{
    const char *w = "the file";
    int64_t version = 0;
    cf_status st = cf__ck_read_i64(path, file, w, "format_version", &version);
    if (st == CF_OK && (version < 1 || version > CF_CHECKPOINT_VERSION))
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: checkpoint format version %lld; this library "
                          "reads versions 1 to %d",
                          path, (long long)version, CF_CHECKPOINT_VERSION);
    m->format_version = version;
    char *lib = NULL;
    if (st == CF_OK) st = cf__ck_read_str(path, file, w, "library_version", &lib);
    if (st == CF_OK) snprintf(m->library_version, sizeof m->library_version, "%s", lib);
    free(lib);
    if (st == CF_OK) st = cf__ck_read_i64(path, file, w, "step", &m->step);
    if (st == CF_OK) st = cf__ck_read_i64(path, file, w, "epoch", &m->epoch);
    if (st == CF_OK) {
        htri_t has = H5Aexists(file, "rng_state");
        if (has < 0) st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot read the root attributes", path);
        if (has > 0) st = cf__ck_read_u64x4(path, file, w, "rng_state", m->rng.s);
        m->has_rng = has > 0 && st == CF_OK;
    }
    if (st == CF_OK) {
        htri_t has = H5Aexists(file, "data_epoch");
        if (has < 0) st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot read the root attributes", path);
        if (has > 0) {
            st = cf__ck_read_i64(path, file, w, "data_epoch", &m->data_state.epoch);
            if (st == CF_OK) st = cf__ck_read_i64(path, file, w, "data_position", &m->data_state.position);
            if (st == CF_OK) st = cf__ck_read_u64x4(path, file, w, "data_rng_state", m->data_state.rng.s);
            m->has_data_state = st == CF_OK;
        }
    }
    if (st == CF_ERR_NOT_FOUND) st = CF_ERR_FORMAT; /* a required attribute is missing */
    if (st == CF_OK) st = read_optimizer_meta(path, file, m);
    if (st == CF_OK) st = read_config_group(path, file, m);
    if (st == CF_OK) {
        htri_t has = H5Lexists(file, "arch", H5P_DEFAULT);
        hid_t g = has > 0 ? H5Gopen2(file, "arch", H5P_DEFAULT) : -1;
        if (has < 0 || (has > 0 && g < 0))
            st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot open /arch", path);
        else if (g >= 0)
            st = cf__ck_read_str(path, g, "/arch", "json", &m->arch_json);
        if (st == CF_ERR_NOT_FOUND) st = CF_ERR_FORMAT;
        cf__ck_close_id(g, H5Gclose);
    }
    return st;
}

static cf_status open_checkpoint(const char *path, hid_t *file_out, cf_ckpt_meta *m)
{
    *file_out = -1;
    int64_t size;
    cf_status st = cf__file_size(path, &size);
    if (st != CF_OK) return st;
    /* Checkpoints start with HDF5's signature (they have no user block). */
    static const uint8_t signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    uint8_t head[16] = {0};
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(head, 1, sizeof head, f) : 0;
    if (!f) return cf_set_error(CF_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    if (got < sizeof head || memcmp(head, signature, sizeof signature) != 0) {
        fclose(f);
        return cf_set_error(CF_ERR_FORMAT, "%s: not an HDF5 file, so not a cincflow checkpoint",
                            path);
    }
    st = cf__ck_check_global_heaps(path, f, size, head);
    fclose(f);
    if (st != CF_OK) return st;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot set up HDF5 file access", path);
        cf__ck_close_id(fapl, H5Pclose);
        return st;
    }
#if (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 11, 0)) || H5_VERSION_GE(1, 12, 1)
    /* Checkpoints are replaced by rename, never written in place, so readers need no lock;
     * without one, file systems that refuse locks (some NFS mounts) still work. */
    H5Pset_file_locking(fapl, 0, 1);
#endif
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (file < 0) st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot open the HDF5 file", path);
    H5Pclose(fapl);
    if (st != CF_OK) return st;
    char *format = NULL;
    st = cf__ck_read_str(path, file, "the file", "format", &format);
    if (st == CF_ERR_NOT_FOUND || (st == CF_OK && strcmp(format, CF_CHECKPOINT_FORMAT) != 0))
        st =
            cf_set_error(CF_ERR_FORMAT,
                         "%s: not a cincflow checkpoint (root attribute 'format' "
                         "is %s%s%s, expected \"" CF_CHECKPOINT_FORMAT "\")",
                         path, format ? "\"" : "missing", format ? format : "", format ? "\"" : "");
    free(format);
    if (st == CF_OK) st = read_meta(path, file, m);
    if (st != CF_OK) {
        H5Fclose(file);
        return st;
    }
    *file_out = file;
    return CF_OK;
}

/* ---- reading tensors -------------------------------------------------------------------- */

static char *describe_dims(char *buf, size_t size, int rank, const hsize_t *dims)
{
    size_t n = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < rank && n < size; d++)
        n +=
            (size_t)snprintf(buf + n, size - n, d ? ", %llu" : "%llu", (unsigned long long)dims[d]);
    if (n < size) snprintf(buf + n, size - n, ")");
    return buf;
}

/* Checks dataset gname/t->name of group g (g < 0: the group is absent) against t's shape;
 * reads its values as t's dtype into dst when dst is not NULL. `kind` names t in messages. */
static cf_status read_tensor(const char *path, hid_t g, const char *gname, const char *kind,
                             const cf_tensor *t, void *dst)
{
    htri_t exists = g < 0 ? 0 : H5Lexists(g, t->name, H5P_DEFAULT);
    if (exists < 0)
        return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot look for /%s/%s", path, gname, t->name);
    if (!exists)
        return cf_set_error(CF_ERR_NOT_FOUND,
                            "%s: %s '%s' of the model is missing from the "
                            "file (no /%s/%s)",
                            path, kind, t->name, gname, t->name);
    hid_t ds = H5Dopen2(g, t->name, H5P_DEFAULT);
    hid_t type = ds < 0 ? -1 : H5Dget_type(ds);
    hid_t space = type < 0 ? -1 : H5Dget_space(ds);
    cf_status st = CF_OK;
    if (space < 0) {
        st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: /%s/%s is not a readable dataset", path, gname, t->name);
    } else if (H5Tget_class(type) != H5T_FLOAT) {
        st = cf_set_error(CF_ERR_FORMAT, "%s: /%s/%s is not floating-point", path, gname, t->name);
    } else {
        hsize_t dims[CF_MAX_DIMS] = {0}, want[CF_MAX_DIMS] = {0};
        int rank = H5Sget_simple_extent_ndims(space);
        bool same = rank == t->ndim && H5Sget_simple_extent_npoints(space) == t->numel;
        if (same && rank > 0) H5Sget_simple_extent_dims(space, dims, NULL);
        for (int d = 0; d < t->ndim; d++) {
            want[d] = (hsize_t)t->shape[d];
            same = same && dims[d] == want[d];
        }
        if (!same) {
            char fb[160] = "(more than 4 dimensions)", mb[160];
            if (rank >= 0 && rank <= CF_MAX_DIMS) {
                if (rank > 0) H5Sget_simple_extent_dims(space, dims, NULL);
                describe_dims(fb, sizeof fb, rank, dims);
            }
            st = cf_set_error(CF_ERR_SHAPE, "%s: %s '%s' is %s in the file but %s in the model",
                              path, kind, t->name, fb, describe_dims(mb, sizeof mb, t->ndim, want));
        } else if (dst && H5Dread(ds, t->dtype == CF_F64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT,
                                  H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0) {
            st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot read /%s/%s", path, gname, t->name);
        }
    }
    cf__ck_close_id(space, H5Sclose);
    cf__ck_close_id(type, H5Tclose);
    cf__ck_close_id(ds, H5Dclose);
    return st;
}

/* Opens group `name` of loc, or returns -1 in *g when there is none. */
static cf_status open_group(const char *path, hid_t loc, const char *name, hid_t *g)
{
    *g = -1;
    htri_t exists = H5Lexists(loc, name, H5P_DEFAULT);
    if (exists < 0) return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot look for %s", path, name);
    if (!exists) return CF_OK;
    *g = H5Gopen2(loc, name, H5P_DEFAULT);
    if (*g < 0) return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: %s is not a group", path, name);
    return CF_OK;
}

static bool in_set(const cf_params *ps, bool state, const char *name)
{
    int n = state ? cf_params_state_count(ps) : cf_params_count(ps);
    for (int i = 0; i < n; i++)
        if (strcmp((state ? cf_params_state_at(ps, i) : cf_params_at(ps, i))->name, name) == 0)
            return true;
    return false;
}

/* The first entry of group g (by name) that the set does not have. */
static cf_status check_extras(const char *path, hid_t g, const char *gname, const char *kind,
                              const cf_params *ps, bool state)
{
    if (g < 0) return CF_OK;
    H5G_info_t info;
    if (H5Gget_info(g, &info) < 0)
        return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot list /%s", path, gname);
    char name[1024];
    for (hsize_t i = 0; i < info.nlinks; i++) {
        ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                                       H5P_DEFAULT);
        if (n < 0) return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot list /%s", path, gname);
        if ((size_t)n >= sizeof name || !in_set(ps, state, name))
            return cf_set_error(CF_ERR_SHAPE,
                                "%s: the file has %s '%s' (/%s/%s), which the "
                                "model does not",
                                path, kind, name, gname, name);
    }
    return CF_OK;
}

/* The first non-finite value of a tensor-shaped buffer: its index, or -1. */
static int64_t first_non_finite(cf_dtype dtype, const void *buf, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(cf_buf_get(dtype, buf, i))) return i;
    return -1;
}

/* Staging for one load: values read into owned buffers, copied in only once all is well. */
typedef struct staging {
    void *params, *state, *m, *v; /* laid out tensor after tensor, in the set's order */
} staging;

static void staging_free(staging *s)
{
    free(s->params);
    free(s->state);
    free(s->m);
    free(s->v);
}

/* Reads the tensors of one group into buf (tensor after tensor), checking finiteness. */
static cf_status read_values(const char *path, hid_t g, const char *gname, const char *kind,
                             const cf_params *ps, bool state, char *buf)
{
    int n = state ? cf_params_state_count(ps) : cf_params_count(ps);
    size_t esize = cf_dtype_size(cf_params_dtype(ps));
    for (int i = 0; i < n; i++) {
        const cf_tensor *t = state ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
        cf_status st = read_tensor(path, g, gname, kind, t, buf);
        if (st != CF_OK) return st;
        int64_t bad = first_non_finite(t->dtype, buf, t->numel);
        if (bad >= 0)
            return cf_set_error(CF_ERR_NUMERIC,
                                "%s: %s '%s' holds a non-finite value (%g at "
                                "element %lld); refusing to load it",
                                path, kind, t->name, cf_buf_get(t->dtype, buf, bad),
                                (long long)bad);
        buf += (size_t)t->numel * esize;
    }
    return CF_OK;
}

static size_t group_bytes(const cf_params *ps, bool state)
{
    int n = state ? cf_params_state_count(ps) : cf_params_count(ps);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (size_t)(state ? cf_params_state_at(ps, i) : cf_params_at(ps, i))->numel;
    return total * cf_dtype_size(cf_params_dtype(ps)) + 1;
}

/* Copies staged values into the tensors (base NULL) or into a moment buffer at each
 * parameter's flat offset. */
static void commit_values(cf_params *ps, bool state, const char *buf, void *base)
{
    int n = state ? cf_params_state_count(ps) : cf_params_count(ps);
    size_t esize = cf_dtype_size(cf_params_dtype(ps));
    for (int i = 0; i < n; i++) {
        cf_tensor *t = state ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
        void *dst = base ? (char *)base + cf_params_offset(ps, i) * esize : t->data;
        memcpy(dst, buf, (size_t)t->numel * esize);
        buf += (size_t)t->numel * esize;
    }
}

static cf_status load_tensors(const char *path, hid_t file, cf_params *ps, cf_adam *opt,
                              const cf_ckpt_meta *m)
{
    hid_t gp = -1, gs = -1, go = -1, gm = -1, gv = -1;
    staging stage = {0};
    cf_status st = open_group(path, file, "params", &gp);
    if (st == CF_OK) st = open_group(path, file, "state", &gs);
    if (st == CF_OK && opt) {
        const cf_adam_opts *have = cf_adam_options(opt);
        if (!m->has_optimizer)
            st = cf_set_error(CF_ERR_STATE,
                              "%s: the file has no optimizer state (/optimizer), "
                              "but an optimizer was given to restore",
                              path);
        else if (have->kind != m->optimizer.kind)
            st = cf_set_error(CF_ERR_STATE, "%s: the file's optimizer is %s, the given one %s",
                              path, kind_names[m->optimizer.kind], kind_names[have->kind]);
        if (st == CF_OK) st = open_group(path, file, "optimizer", &go);
        if (st == CF_OK) st = open_group(path, go, "m", &gm);
        if (st == CF_OK) st = open_group(path, go, "v", &gv);
    }
    /* Pass 1: names and shapes, so the first mismatch is reported whatever the values. */
    for (int i = 0; st == CF_OK && i < cf_params_count(ps); i++)
        st = read_tensor(path, gp, "params", "parameter", cf_params_at(ps, i), NULL);
    for (int i = 0; st == CF_OK && i < cf_params_state_count(ps); i++)
        st = read_tensor(path, gs, "state", "state tensor", cf_params_state_at(ps, i), NULL);
    if (st == CF_OK) st = check_extras(path, gp, "params", "parameter", ps, false);
    if (st == CF_OK) st = check_extras(path, gs, "state", "state tensor", ps, true);
    for (int i = 0; st == CF_OK && opt && i < cf_params_count(ps); i++) {
        st = read_tensor(path, gm, "optimizer/m", "first moment", cf_params_at(ps, i), NULL);
        if (st == CF_OK)
            st = read_tensor(path, gv, "optimizer/v", "second moment", cf_params_at(ps, i), NULL);
    }
    /* Pass 2: values into staging. */
    if (st == CF_OK) {
        stage.params = malloc(group_bytes(ps, false));
        stage.state = malloc(group_bytes(ps, true));
        stage.m = opt ? malloc(group_bytes(ps, false)) : NULL;
        stage.v = opt ? malloc(group_bytes(ps, false)) : NULL;
        if (!stage.params || !stage.state || (opt && (!stage.m || !stage.v)))
            st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory staging the tensors", path);
    }
    if (st == CF_OK) st = read_values(path, gp, "params", "parameter", ps, false, stage.params);
    if (st == CF_OK) st = read_values(path, gs, "state", "state tensor", ps, true, stage.state);
    if (st == CF_OK && opt)
        st = read_values(path, gm, "optimizer/m", "first moment", ps, false, stage.m);
    if (st == CF_OK && opt)
        st = read_values(path, gv, "optimizer/v", "second moment", ps, false, stage.v);
    /* Pass 3: nothing can fail any more. */
    if (st == CF_OK) {
        commit_values(ps, false, stage.params, NULL);
        commit_values(ps, true, stage.state, NULL);
        if (opt) {
            commit_values(ps, false, stage.m, cf_adam_m(opt));
            commit_values(ps, false, stage.v, cf_adam_v(opt));
            cf_adam_set_counts(opt, m->optimizer_steps, m->optimizer_skipped);
        }
    }
    staging_free(&stage);
    cf__ck_close_id(gv, H5Gclose);
    cf__ck_close_id(gm, H5Gclose);
    cf__ck_close_id(go, H5Gclose);
    cf__ck_close_id(gs, H5Gclose);
    cf__ck_close_id(gp, H5Gclose);
    return st;
}

/* ---- loading ---------------------------------------------------------------------------- */

static cf_status load(const char *path, cf_params *ps, cf_adam *opt, cf_ckpt_meta *meta)
{
    CF_ASSERT(path, "cf_checkpoint_load: NULL path");
    cf_ckpt_meta m = {0};
    hid_t file = -1;
    cf__ck_quiet q;
    cf__ck_quiet_begin(&q);
    cf_status st = open_checkpoint(path, &file, &m);
    if (st == CF_OK && ps) st = load_tensors(path, file, ps, opt, &m);
    if (file >= 0) H5Fclose(file);
    cf__ck_quiet_end(&q);
    if (st == CF_OK && meta) {
        cf_ckpt_meta_clear(meta);
        *meta = m;
    } else {
        cf_ckpt_meta_clear(&m);
    }
    return st;
}

cf_status cf_checkpoint_load(const char *path, cf_params *ps, cf_adam *opt, cf_ckpt_meta *meta)
{
    CF_ASSERT(ps, "cf_checkpoint_load: NULL parameter set");
    return load(path, ps, opt, meta);
}

cf_status cf_checkpoint_read_config(const char *path, cf_ckpt_meta *meta)
{
    CF_ASSERT(meta, "cf_checkpoint_read_config: NULL meta");
    return load(path, NULL, NULL, meta);
}

