/* checkpoint.c: HDF5 checkpoints of a parameter set, its optimizer and the training state
 * (layout and rules in cf_checkpoint.h).
 *
 * Every HDF5 call runs with HDF5's automatic error printing switched off (quiet_begin/_end);
 * when one fails, the deepest message of HDF5's error stack (shortened to the system's reason
 * when it carries one, e.g. "No such file or directory") is appended to ours, which names the
 * file and the object. The stack must be read before the next HDF5 call, which clears it.
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
 * Not here: compression or chunking (plain contiguous datasets keep the file simple for other
 * readers), partial loads, MPI.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_checkpoint.h"
#include "cf_io_impl.h"
#include "cf_version.h"

/* Limits on what a file may make the loader allocate outside the tensors. */
#define MAX_STRING_BYTES   (1 << 20)
#define MAX_CONFIG_ENTRIES 4096
#define MAX_KEY_BYTES      255

static const char *const kind_names[] = {"adam", "adamw", "adamax"};

/* ---- the meta's configuration ----------------------------------------------------------- */

static cf_status check_key(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    bool ok = n > 0 && n <= MAX_KEY_BYTES && strcmp(key, "json") != 0 && strcmp(key, ".") != 0;
    for (size_t i = 0; ok && i < n; i++) ok = (unsigned char)key[i] >= 0x20 && key[i] != 0x7f;
    if (!ok)
        return cf_set_error(CF_ERR_ARG,
                            "checkpoint config key '%s': expected 1 to %d printable "
                            "characters, not \"json\" or \".\"",
                            key ? key : "(null)", MAX_KEY_BYTES);
    return CF_OK;
}

const cf_ckpt_entry *cf_ckpt_meta_find(const cf_ckpt_meta *meta, const char *key)
{
    for (int i = 0; i < meta->n_config; i++)
        if (strcmp(meta->config[i].key, key) == 0) return &meta->config[i];
    return NULL;
}

/* Sets key to a value of `type`; value_s is copied for strings. An existing key keeps its
 * place in the order. */
static cf_status set_entry(cf_ckpt_meta *meta, const char *key, cf_ckpt_type type, int64_t i,
                           double d, const char *value_s)
{
    cf_status st = check_key(key);
    if (st != CF_OK) return st;
    char *s = NULL;
    if (type == CF_CKPT_TYPE_STRING && !(s = strdup(value_s)))
        return cf_set_error(CF_ERR_NOMEM, "checkpoint config key '%s': out of memory", key);
    cf_ckpt_entry *e = (cf_ckpt_entry *)cf_ckpt_meta_find(meta, key);
    if (!e) {
        cf_ckpt_entry *grown = realloc(meta->config, (size_t)(meta->n_config + 1) * sizeof *e);
        char *copy = grown ? strdup(key) : NULL;
        if (grown) meta->config = grown;
        if (!copy) {
            free(s);
            return cf_set_error(CF_ERR_NOMEM, "checkpoint config key '%s': out of memory", key);
        }
        e = &meta->config[meta->n_config++];
        *e = (cf_ckpt_entry){.key = copy};
    }
    free(e->s);
    e->type = type;
    e->i = i;
    e->d = d;
    e->s = s;
    return CF_OK;
}

cf_status cf_ckpt_meta_set_int(cf_ckpt_meta *meta, const char *key, int64_t value)
{
    return set_entry(meta, key, CF_CKPT_TYPE_INT, value, 0, NULL);
}

cf_status cf_ckpt_meta_set_double(cf_ckpt_meta *meta, const char *key, double value)
{
    return set_entry(meta, key, CF_CKPT_TYPE_DOUBLE, 0, value, NULL);
}

cf_status cf_ckpt_meta_set_string(cf_ckpt_meta *meta, const char *key, const char *value)
{
    CF_ASSERT(value, "cf_ckpt_meta_set_string: NULL value for '%s'", key ? key : "(null)");
    return set_entry(meta, key, CF_CKPT_TYPE_STRING, 0, 0, value);
}

static const char *type_name(cf_ckpt_type type)
{
    return type == CF_CKPT_TYPE_INT      ? "an integer"
           : type == CF_CKPT_TYPE_DOUBLE ? "a number"
                                         : "a string";
}

static cf_status get_entry(const cf_ckpt_meta *meta, const char *key, cf_ckpt_type want,
                           const cf_ckpt_entry **out)
{
    *out = cf_ckpt_meta_find(meta, key);
    if (!*out) return cf_set_error(CF_ERR_NOT_FOUND, "checkpoint config has no '%s'", key);
    cf_ckpt_type have = (*out)->type;
    if (have != want && !(want == CF_CKPT_TYPE_DOUBLE && have == CF_CKPT_TYPE_INT))
        return cf_set_error(CF_ERR_DTYPE, "checkpoint config '%s' is %s, expected %s", key,
                            type_name(have), type_name(want));
    return CF_OK;
}

cf_status cf_ckpt_meta_get_int(const cf_ckpt_meta *meta, const char *key, int64_t *value)
{
    const cf_ckpt_entry *e;
    cf_status st = get_entry(meta, key, CF_CKPT_TYPE_INT, &e);
    if (st == CF_OK) *value = e->i;
    return st;
}

cf_status cf_ckpt_meta_get_double(const cf_ckpt_meta *meta, const char *key, double *value)
{
    const cf_ckpt_entry *e;
    cf_status st = get_entry(meta, key, CF_CKPT_TYPE_DOUBLE, &e);
    if (st == CF_OK) *value = e->type == CF_CKPT_TYPE_INT ? (double)e->i : e->d;
    return st;
}

cf_status cf_ckpt_meta_get_string(const cf_ckpt_meta *meta, const char *key, const char **value)
{
    const cf_ckpt_entry *e;
    cf_status st = get_entry(meta, key, CF_CKPT_TYPE_STRING, &e);
    if (st == CF_OK) *value = e->s;
    return st;
}

cf_status cf_ckpt_meta_set_arch(cf_ckpt_meta *meta, const char *json)
{
    char *copy = NULL;
    if (json && !(copy = strdup(json))) return cf_set_error(CF_ERR_NOMEM, "out of memory");
    free(meta->arch_json);
    meta->arch_json = copy;
    return CF_OK;
}

void cf_ckpt_meta_clear(cf_ckpt_meta *meta)
{
    if (!meta) return;
    for (int i = 0; i < meta->n_config; i++) {
        free(meta->config[i].key);
        free(meta->config[i].s);
    }
    free(meta->config);
    free(meta->arch_json);
    memset(meta, 0, sizeof *meta);
}

/* ---- HDF5 errors ------------------------------------------------------------------------ */

typedef struct quiet {
    H5E_auto2_t func;
    void *data;
} quiet;

static void quiet_begin(quiet *q)
{
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void quiet_end(quiet *q)
{
    H5Eclear2(H5E_DEFAULT);
    H5Eset_auto2(H5E_DEFAULT, q->func, q->data);
}

static herr_t keep_deepest(unsigned n, const H5E_error2_t *err, void *data)
{
    if (n == 0 && err->desc) snprintf(data, 512, "%s", err->desc);
    return 0;
}

/* Records a failure of the HDF5 call just made: our message, then HDF5's reason. */
static cf_status h5_fail(cf_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static cf_status h5_fail(cf_status st, const char *fmt, ...)
{
    char what[700], desc[512] = "", detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_deepest, desc);
    H5Eclear2(H5E_DEFAULT);
    const char *reason = strstr(desc, "error message = '");
    if (reason) {
        reason += strlen("error message = '");
        const char *end = strchr(reason, '\'');
        snprintf(detail, sizeof detail, "%.*s", end ? (int)(end - reason) : 200, reason);
    } else {
        snprintf(detail, sizeof detail, "%s", desc);
    }
    if (!detail[0]) return cf_set_error(st, "%s", what);
    return cf_set_error(st, "%s (HDF5: %s)", what, detail);
}

static void close_id(hid_t id, herr_t (*close)(hid_t))
{
    if (id >= 0) close(id);
}

/* ---- writing ---------------------------------------------------------------------------- */

static hid_t string_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* Writes attribute `name` of loc (`where` in messages): rank 0 scalar, else dims. */
static cf_status write_attr(const char *path, hid_t loc, const char *where, const char *name,
                            hid_t ftype, hid_t mtype, int rank, hsize_t n, const void *value)
{
    hsize_t dims[1] = {n};
    hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t a = space < 0 ? -1 : H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, mtype, value);
    cf_status st = CF_OK;
    if (rc < 0) st = h5_fail(CF_ERR_IO, "%s: cannot write attribute '%s' of %s", path, name, where);
    close_id(a, H5Aclose);
    close_id(space, H5Sclose);
    return st;
}

static cf_status write_i64(const char *path, hid_t loc, const char *where, const char *name,
                           int64_t v)
{
    return write_attr(path, loc, where, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, 1, &v);
}

static cf_status write_f64(const char *path, hid_t loc, const char *where, const char *name,
                           double v)
{
    return write_attr(path, loc, where, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, 1, &v);
}

static cf_status write_u64s(const char *path, hid_t loc, const char *where, const char *name,
                            const uint64_t *v, hsize_t n)
{
    return write_attr(path, loc, where, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, n, v);
}

static cf_status write_str(const char *path, hid_t loc, const char *where, const char *name,
                           const char *s)
{
    hid_t t = string_type();
    if (t < 0) return h5_fail(CF_ERR_IO, "%s: cannot make a string type", path);
    cf_status st = write_attr(path, loc, where, name, t, t, 0, 1, &s);
    H5Tclose(t);
    return st;
}

/* Layout label of a tensor: 4-D convolution weights (names ending in "weight") are HWIO,
 * other 4-D tensors (a prior's mean) are NHWC images. */
static const char *layout_of(const cf_tensor *t)
{
    size_t len = t->name ? strlen(t->name) : 0;
    bool weight = len >= 6 && strcmp(t->name + len - 6, "weight") == 0;
    switch (t->ndim) {
    case 4: return weight ? "HWIO" : "NHWC";
    case 2: return weight ? "IO" : "ND";
    case 1: return "C";
    case 0: return "scalar";
    }
    return "ND";
}

/* Writes dataset gname/name with t's shape and dtype and the values at data. */
static cf_status write_tensor(const char *path, hid_t group, const char *gname, const char *name,
                              const cf_tensor *t, const void *data)
{
    hsize_t dims[CF_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) dims[d] = (hsize_t)t->shape[d];
    bool f64 = t->dtype == CF_F64;
    hid_t space = t->ndim == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(t->ndim, dims, NULL);
    hid_t ds = space < 0 ? -1
                         : H5Dcreate2(group, name, f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE, space,
                                      H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = ds < 0 ? -1
                       : H5Dwrite(ds, f64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL,
                                  H5P_DEFAULT, data);
    cf_status st = CF_OK;
    if (rc < 0) st = h5_fail(CF_ERR_IO, "%s: cannot write /%s/%s", path, gname, name);
    if (st == CF_OK) {
        char where[300];
        snprintf(where, sizeof where, "/%s/%s", gname, name);
        st = write_str(path, ds, where, "layout", layout_of(t));
    }
    close_id(ds, H5Dclose);
    close_id(space, H5Sclose);
    return st;
}

static hid_t make_group(hid_t loc, const char *name, bool track_attr_order)
{
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0) return -1;
    if (track_attr_order &&
        H5Pset_attr_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) < 0) {
        H5Pclose(gcpl);
        return -1;
    }
    hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    return g;
}

static cf_status check_name(const char *path, const char *kind, const char *name)
{
    if (strchr(name, '/') || strcmp(name, ".") == 0)
        return cf_set_error(CF_ERR_ARG,
                            "%s: cannot save %s '%s': checkpoint names may not "
                            "contain '/' or be \".\"",
                            path, kind, name);
    return CF_OK;
}

/* A group of tensors (parameters or state) with their values at each tensor's data, or, with
 * base non-NULL, at base + the parameter's flat offset (optimizer moments). */
static cf_status write_group(const char *path, hid_t loc, const char *gname, const char *name,
                             const cf_params *ps, bool state, const void *base)
{
    hid_t g = make_group(loc, name, false);
    if (g < 0) return h5_fail(CF_ERR_IO, "%s: cannot create group /%s", path, gname);
    cf_status st = CF_OK;
    int n = state ? cf_params_state_count(ps) : cf_params_count(ps);
    size_t esize = cf_dtype_size(cf_params_dtype(ps));
    for (int i = 0; i < n && st == CF_OK; i++) {
        const cf_tensor *t = state ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
        const void *data =
            base ? (const char *)base + cf_params_offset(ps, i) * esize : (const void *)t->data;
        st = write_tensor(path, g, gname, t->name, t, data);
    }
    H5Gclose(g);
    return st;
}

/* ---- JSON (libcjson) ---------------------------------------------------------------------- */

/* A double as the shortest text that reads back as the same value, always with a '.' or an
 * exponent so a JSON reader keeps it a float (cJSON would print 3.0 as 3, and int64 values
 * beyond 2^53 inexactly, so numbers go in as raw text); NaN and infinities as Python's json
 * module writes them. */
static cJSON *json_number(const cf_ckpt_entry *e)
{
    char buf[48];
    if (e->type == CF_CKPT_TYPE_INT) {
        snprintf(buf, sizeof buf, "%lld", (long long)e->i);
    } else if (!isfinite(e->d)) {
        snprintf(buf, sizeof buf, "%s", isnan(e->d) ? "NaN" : e->d > 0 ? "Infinity" : "-Infinity");
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, sizeof buf, "%.*g", prec, e->d);
            if (strtod(buf, NULL) == e->d) break;
        }
        if (!strpbrk(buf, ".e")) strcat(buf, ".0");
    }
    return cJSON_CreateRaw(buf);
}

static char *config_json(const cf_ckpt_meta *meta)
{
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && meta && i < meta->n_config; i++) {
        const cf_ckpt_entry *e = &meta->config[i];
        cJSON *v = e->type == CF_CKPT_TYPE_STRING ? cJSON_CreateString(e->s) : json_number(e);
        if (!v || !cJSON_AddItemToObject(o, e->key, v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            return NULL;
        }
    }
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return text;
}

/* ---- saving ----------------------------------------------------------------------------- */

static cf_status write_root(const char *path, hid_t file, const cf_ckpt_meta *meta)
{
    const char *w = "the file";
    cf_status st = write_str(path, file, w, "format", CF_CHECKPOINT_FORMAT);
    if (st == CF_OK) st = write_i64(path, file, w, "format_version", CF_CHECKPOINT_VERSION);
    if (st == CF_OK) st = write_str(path, file, w, "library_version", CF_VERSION_STRING);
    if (st == CF_OK) st = write_i64(path, file, w, "step", meta->step);
    if (st == CF_OK) st = write_i64(path, file, w, "epoch", meta->epoch);
    if (st == CF_OK && meta->has_rng) st = write_u64s(path, file, w, "rng_state", meta->rng.s, 4);
    if (st == CF_OK && meta->has_data_state) {
        const cf_batcher_state *d = &meta->data_state;
        st = write_i64(path, file, w, "data_epoch", d->epoch);
        if (st == CF_OK) st = write_i64(path, file, w, "data_position", d->position);
        if (st == CF_OK) st = write_u64s(path, file, w, "data_rng_state", d->rng.s, 4);
    }
    return st;
}

static cf_status write_optimizer(const char *path, hid_t file, const cf_params *ps,
                                 const cf_adam *opt_in)
{
    cf_adam *opt = (cf_adam *)opt_in; /* the accessors take no const; nothing is changed */
    const cf_adam_opts *o = cf_adam_options(opt);
    hid_t g = make_group(file, "optimizer", false);
    if (g < 0) return h5_fail(CF_ERR_IO, "%s: cannot create group /optimizer", path);
    const char *w = "/optimizer";
    cf_status st = write_str(path, g, w, "kind", kind_names[o->kind]);
    if (st == CF_OK) st = write_f64(path, g, w, "lr", o->lr);
    if (st == CF_OK) st = write_f64(path, g, w, "beta1", o->beta1);
    if (st == CF_OK) st = write_f64(path, g, w, "beta2", o->beta2);
    if (st == CF_OK) st = write_f64(path, g, w, "eps", o->eps);
    if (st == CF_OK) st = write_f64(path, g, w, "weight_decay", o->weight_decay);
    if (st == CF_OK) st = write_f64(path, g, w, "clip_norm", o->clip_norm);
    if (st == CF_OK) st = write_i64(path, g, w, "warmup_steps", o->warmup_steps);
    if (st == CF_OK) st = write_i64(path, g, w, "step", cf_adam_step_count(opt));
    if (st == CF_OK) st = write_i64(path, g, w, "skipped", cf_adam_skipped_count(opt));
    if (st == CF_OK) st = write_group(path, g, "optimizer/m", "m", ps, false, cf_adam_m(opt));
    if (st == CF_OK) st = write_group(path, g, "optimizer/v", "v", ps, false, cf_adam_v(opt));
    H5Gclose(g);
    return st;
}

static cf_status write_config(const char *path, hid_t file, const cf_ckpt_meta *meta)
{
    hid_t g = make_group(file, "config", true);
    if (g < 0) return h5_fail(CF_ERR_IO, "%s: cannot create group /config", path);
    const char *w = "/config";
    cf_status st = CF_OK;
    for (int i = 0; i < meta->n_config && st == CF_OK; i++) {
        const cf_ckpt_entry *e = &meta->config[i];
        if (e->type == CF_CKPT_TYPE_INT)
            st = write_i64(path, g, w, e->key, e->i);
        else if (e->type == CF_CKPT_TYPE_DOUBLE)
            st = write_f64(path, g, w, e->key, e->d);
        else
            st = write_str(path, g, w, e->key, e->s);
    }
    char *json = st == CF_OK ? config_json(meta) : NULL;
    if (st == CF_OK && !json) st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory", path);
    if (st == CF_OK) st = write_str(path, g, w, "json", json);
    free(json);
    H5Gclose(g);
    return st;
}

/* A bool as h5py writes one: an enum of int8 with FALSE = 0 and TRUE = 1. */
static cf_status write_bool(const char *path, hid_t loc, const char *where, const char *name,
                            bool v)
{
    hid_t t = H5Tenum_create(H5T_NATIVE_INT8);
    int8_t f = 0, tr = 1, value = v ? 1 : 0;
    if (t < 0 || H5Tenum_insert(t, "FALSE", &f) < 0 || H5Tenum_insert(t, "TRUE", &tr) < 0) {
        close_id(t, H5Tclose);
        return h5_fail(CF_ERR_IO, "%s: cannot make a bool type", path);
    }
    cf_status st = write_attr(path, loc, where, name, t, t, 0, 1, &value);
    H5Tclose(t);
    return st;
}

static cf_status write_shape(const char *path, hid_t loc, const char *where, const char *name,
                             const cJSON *arr)
{
    int64_t v[3] = {0, 0, 0};
    for (int d = 0; d < 3; d++) {
        const cJSON *x = cJSON_GetArrayItem(arr, d);
        v[d] = cJSON_IsNumber(x) ? (int64_t)x->valuedouble : 0;
    }
    return write_attr(path, loc, where, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, 3, v);
}

static cf_status write_strings(const char *path, hid_t g, const char *where, const cJSON *o,
                               const char *const *keys, int n)
{
    cf_status st = CF_OK;
    for (int k = 0; k < n && st == CF_OK; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, keys[k]);
        if (cJSON_IsString(v)) st = write_str(path, g, where, keys[k], v->valuestring);
    }
    return st;
}

/* /arch: the architecture's JSON (what loading reads), and the same as typed attributes. */
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
    hid_t g = make_group(file, "arch", true), gl = -1, gk = -1;
    cf_status st = g < 0 ? h5_fail(CF_ERR_IO, "%s: cannot create group /arch", path) : CF_OK;
    const char *w = "/arch";
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (st == CF_OK && cJSON_IsString(fmt)) st = write_str(path, g, w, "format", fmt->valuestring);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (st == CF_OK && cJSON_IsNumber(ver))
        st = write_i64(path, g, w, "version", (int64_t)ver->valuedouble);
    if (st == CF_OK)
        st = write_shape(path, g, w, "input", cJSON_GetObjectItemCaseSensitive(root, "input"));
    if (st == CF_OK) st = write_i64(path, g, w, "n_layers", cJSON_GetArraySize(layers));
    if (st == CF_OK) st = write_str(path, g, w, "json", json);
    if (st == CF_OK && (gk = make_group(g, "kinds", true)) < 0)
        st = h5_fail(CF_ERR_IO, "%s: cannot create group /arch/kinds", path);
    const cJSON *k;
    static const char *const kind_keys[] = {"provider", "summary", "conventions"};
    cJSON_ArrayForEach(k, kinds)
    {
        if (st != CF_OK) break;
        hid_t gi = make_group(gk, k->string, true);
        if (gi < 0) {
            st = h5_fail(CF_ERR_IO, "%s: cannot create group /arch/kinds/%s", path, k->string);
            break;
        }
        st = write_strings(path, gi, "/arch/kinds/...", k, kind_keys, 3);
        H5Gclose(gi);
    }
    if (st == CF_OK && (gl = make_group(g, "layers", true)) < 0)
        st = h5_fail(CF_ERR_IO, "%s: cannot create group /arch/layers", path);
    const cJSON *l;
    int idx = 0;
    static const char *const layer_keys[] = {"name", "kind"};
    cJSON_ArrayForEach(l, layers)
    {
        if (st != CF_OK) break;
        char name[16];
        snprintf(name, sizeof name, "%05d", idx++);
        hid_t gi = make_group(gl, name, true), gh = -1;
        if (gi < 0) {
            st = h5_fail(CF_ERR_IO, "%s: cannot create group /arch/layers/%s", path, name);
            break;
        }
        const char *wl = "/arch/layers/...";
        st = write_strings(path, gi, wl, l, layer_keys, 2);
        const cJSON *in = cJSON_GetObjectItemCaseSensitive(l, "in");
        const cJSON *out = cJSON_GetObjectItemCaseSensitive(l, "out");
        if (st == CF_OK && in) st = write_shape(path, gi, wl, "in", in);
        if (st == CF_OK && out) st = write_shape(path, gi, wl, "out", out);
        if (st == CF_OK && (gh = make_group(gi, "hparams", true)) < 0)
            st = h5_fail(CF_ERR_IO, "%s: cannot create group /arch/layers/%s/hparams", path, name);
        const cJSON *h;
        cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(l, "hparams"))
        {
            if (st != CF_OK) break;
            double d = cJSON_IsNumber(h) ? h->valuedouble : 0;
            if (cJSON_IsBool(h))
                st = write_bool(path, gh, wl, h->string, cJSON_IsTrue(h));
            else if (cJSON_IsString(h))
                st = write_str(path, gh, wl, h->string, h->valuestring);
            else if (cJSON_IsNumber(h) && d == floor(d) && fabs(d) < 9.2e18)
                st = write_i64(path, gh, wl, h->string, (int64_t)d);
            else if (cJSON_IsNumber(h))
                st = write_f64(path, gh, wl, h->string, d);
        }
        close_id(gh, H5Gclose);
        H5Gclose(gi);
    }
    close_id(gl, H5Gclose);
    close_id(gk, H5Gclose);
    close_id(g, H5Gclose);
    cJSON_Delete(root);
    return st;
}

/* Everything that can be refused before a file is created. */
static cf_status check_before_save(const char *path, const cf_params *ps, const cf_ckpt_meta *meta)
{
    cf_status st = CF_OK;
    for (int i = 0; i < cf_params_count(ps) && st == CF_OK; i++)
        st = check_name(path, "parameter", cf_params_at(ps, i)->name);
    for (int i = 0; i < cf_params_state_count(ps) && st == CF_OK; i++)
        st = check_name(path, "state tensor", cf_params_state_at(ps, i)->name);
    for (int i = 0; i < meta->n_config && st == CF_OK; i++) {
        const cf_ckpt_entry *e = &meta->config[i];
        st = check_key(e->key);
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
        st = h5_fail(CF_ERR_IO, "%s: cannot set up an HDF5 file in memory", path);
    hid_t file = st == CF_OK ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : -1;
    if (st == CF_OK && file < 0)
        st = h5_fail(CF_ERR_IO, "%s: cannot start an HDF5 file in memory", path);
    if (st == CF_OK) st = write_root(path, file, meta);
    if (st == CF_OK) st = write_group(path, file, "params", "params", ps, false, NULL);
    if (st == CF_OK) st = write_group(path, file, "state", "state", ps, true, NULL);
    if (st == CF_OK && opt) st = write_optimizer(path, file, ps, opt);
    if (st == CF_OK) st = write_config(path, file, meta);
    if (st == CF_OK && meta->arch_json) st = write_arch(path, file, meta->arch_json);
    if (st == CF_OK && H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
        st = h5_fail(CF_ERR_IO, "%s: cannot finish the HDF5 file in memory", path);
    ssize_t n = st == CF_OK ? H5Fget_file_image(file, NULL, 0) : -1;
    if (st == CF_OK && n <= 0)
        st = h5_fail(CF_ERR_IO, "%s: cannot take the HDF5 file's image", path);
    if (st == CF_OK && !(*image = malloc((size_t)n)))
        st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory for a file of %zd bytes", path, n);
    if (st == CF_OK && H5Fget_file_image(file, *image, (size_t)n) != n)
        st = h5_fail(CF_ERR_IO, "%s: cannot take the HDF5 file's image", path);
    if (file >= 0 && H5Fclose(file) < 0 && st == CF_OK)
        st = h5_fail(CF_ERR_IO, "%s: cannot close the HDF5 file in memory", path);
    close_id(fapl, H5Pclose);
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
    quiet q;
    quiet_begin(&q);
    st = build_image(path, ps, opt, meta, &image, &size);
    quiet_end(&q);
    if (st == CF_OK) st = cf__write_file_atomic(path, image, size);
    free(image);
    return st;
}

/* ---- reading attributes ----------------------------------------------------------------- */

/* Opens attribute `name` of loc (`where` in messages) with its type and dataspace; on failure
 * the ids are -1 (close_id ignores them). CF_ERR_NOT_FOUND (with a message) when absent. */
static cf_status open_attr(const char *path, hid_t loc, const char *where, const char *name,
                           hid_t *a, hid_t *type, hid_t *space)
{
    *a = *type = *space = -1;
    htri_t exists = H5Aexists(loc, name);
    if (exists < 0)
        return h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
    if (!exists)
        return cf_set_error(CF_ERR_NOT_FOUND, "%s: attribute '%s' of %s is missing", path, name,
                            where);
    *a = H5Aopen(loc, name, H5P_DEFAULT);
    *type = *a < 0 ? -1 : H5Aget_type(*a);
    *space = *type < 0 ? -1 : H5Aget_space(*a);
    if (*space < 0)
        return h5_fail(CF_ERR_FORMAT, "%s: cannot open attribute '%s' of %s", path, name, where);
    return CF_OK;
}

/* Reads attribute `name` of loc (`where` in messages) as mtype: its class must be c1 or c2 and
 * it must hold n values. CF_ERR_NOT_FOUND (with a message) when absent. */
static cf_status read_attr(const char *path, hid_t loc, const char *where, const char *name,
                           hid_t mtype, H5T_class_t c1, H5T_class_t c2, hssize_t n, void *out)
{
    hid_t a, type, space;
    cf_status st = open_attr(path, loc, where, name, &a, &type, &space);
    if (st == CF_OK) {
        H5T_class_t cls = H5Tget_class(type);
        if ((cls != c1 && cls != c2) || H5Sget_simple_extent_npoints(space) != n)
            st = cf_set_error(CF_ERR_FORMAT, "%s: attribute '%s' of %s is not %s", path, name,
                              where, n == 1 ? "a single number" : "an array of 4 integers");
        else if (H5Aread(a, mtype, out) < 0)
            st = h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
    }
    close_id(space, H5Sclose);
    close_id(type, H5Tclose);
    close_id(a, H5Aclose);
    return st;
}

static cf_status read_i64(const char *path, hid_t loc, const char *where, const char *name,
                          int64_t *v)
{
    return read_attr(path, loc, where, name, H5T_NATIVE_INT64, H5T_INTEGER, H5T_INTEGER, 1, v);
}

static cf_status read_f64(const char *path, hid_t loc, const char *where, const char *name,
                          double *v)
{
    return read_attr(path, loc, where, name, H5T_NATIVE_DOUBLE, H5T_FLOAT, H5T_INTEGER, 1, v);
}

static cf_status read_u64x4(const char *path, hid_t loc, const char *where, const char *name,
                            uint64_t *v)
{
    return read_attr(path, loc, where, name, H5T_NATIVE_UINT64, H5T_INTEGER, H5T_INTEGER, 4, v);
}

/* Reads a string attribute, variable- or fixed-length, into a new string (owned). */
static cf_status read_str(const char *path, hid_t loc, const char *where, const char *name,
                          char **out)
{
    *out = NULL;
    hid_t a, type, space, mtype = -1;
    cf_status st = open_attr(path, loc, where, name, &a, &type, &space);
    if (st != CF_OK) {
        /* reported by open_attr */
    } else if (H5Tget_class(type) != H5T_STRING || H5Sget_simple_extent_npoints(space) != 1) {
        st = cf_set_error(CF_ERR_FORMAT, "%s: attribute '%s' of %s is not a string", path, name,
                          where);
    } else if (H5Tis_variable_str(type) > 0) {
        mtype = H5Tcopy(H5T_C_S1);
        char *s = NULL;
        if (mtype < 0 || H5Tset_size(mtype, H5T_VARIABLE) < 0 ||
            H5Tset_cset(mtype, H5Tget_cset(type)) < 0 || H5Aread(a, mtype, &s) < 0) {
            st = h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
        } else {
            size_t n = s ? strnlen(s, MAX_STRING_BYTES + 1) : 0;
            if (n > MAX_STRING_BYTES)
                st = cf_set_error(CF_ERR_FORMAT,
                                  "%s: attribute '%s' of %s is longer than %d "
                                  "bytes",
                                  path, name, where, MAX_STRING_BYTES);
            else if (!(*out = strndup(s ? s : "", n)))
                st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory", path);
            H5free_memory(s);
        }
    } else {
        size_t size = H5Tget_size(type);
        char *buf = size > 0 && size <= MAX_STRING_BYTES ? calloc(size + 1, 1) : NULL;
        mtype = buf ? H5Tcopy(type) : -1;
        if (!buf)
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: attribute '%s' of %s has an unusable length "
                              "(%zu bytes)",
                              path, name, where, size);
        else if (mtype < 0 || H5Aread(a, mtype, buf) < 0)
            st = h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
        if (st == CF_OK) {
            for (size_t n = strlen(buf); n > 0 && buf[n - 1] == ' '; n--) buf[n - 1] = '\0';
            *out = buf;
        } else {
            free(buf);
        }
    }
    close_id(mtype, H5Tclose);
    close_id(space, H5Sclose);
    close_id(type, H5Tclose);
    close_id(a, H5Aclose);
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
    if (strcmp(name, "json") == 0 || check_key(name) != CF_OK) return 0;
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
            h5_fail(CF_ERR_FORMAT, "%s: cannot open attribute '%s' of /config", cw->path, name);
    } else if (H5Sget_simple_extent_npoints(space) == 1) {
        H5T_class_t cls = H5Tget_class(type);
        int64_t i;
        double d;
        char *s;
        if (cls == H5T_INTEGER) {
            cw->st = read_i64(cw->path, loc, "/config", name, &i);
            if (cw->st == CF_OK) cw->st = cf_ckpt_meta_set_int(cw->meta, name, i);
        } else if (cls == H5T_FLOAT) {
            cw->st = read_f64(cw->path, loc, "/config", name, &d);
            if (cw->st == CF_OK) cw->st = cf_ckpt_meta_set_double(cw->meta, name, d);
        } else if (cls == H5T_STRING) {
            cw->st = read_str(cw->path, loc, "/config", name, &s);
            if (cw->st == CF_OK) cw->st = cf_ckpt_meta_set_string(cw->meta, name, s);
            if (cw->st == CF_OK) free(s);
        }
    }
    close_id(space, H5Sclose);
    close_id(type, H5Tclose);
    close_id(a, H5Aclose);
    return cw->st == CF_OK ? 0 : -1;
}

static cf_status read_config_group(const char *path, hid_t file, cf_ckpt_meta *meta)
{
    htri_t exists = H5Lexists(file, "config", H5P_DEFAULT);
    if (exists < 0) return h5_fail(CF_ERR_FORMAT, "%s: cannot look for /config", path);
    if (!exists) return CF_OK;
    hid_t g = H5Gopen2(file, "config", H5P_DEFAULT);
    if (g < 0) return h5_fail(CF_ERR_FORMAT, "%s: /config is not a group", path);
    /* In the order written when the file tracks it, else by name. */
    H5_index_t index = H5_INDEX_NAME;
    hid_t gcpl = H5Gget_create_plist(g);
    unsigned flags = 0;
    if (gcpl >= 0 && H5Pget_attr_creation_order(gcpl, &flags) >= 0 &&
        (flags & H5P_CRT_ORDER_TRACKED))
        index = H5_INDEX_CRT_ORDER;
    close_id(gcpl, H5Pclose);
    config_walk cw = {.path = path, .meta = meta, .st = CF_OK};
    hsize_t at = 0;
    herr_t rc = H5Aiterate2(g, index, H5_ITER_INC, &at, config_attr, &cw);
    cf_status st = cw.st;
    if (rc < 0 && st == CF_OK) st = h5_fail(CF_ERR_FORMAT, "%s: cannot list /config", path);
    H5Eclear2(H5E_DEFAULT);
    H5Gclose(g);
    return st;
}

static cf_status read_optimizer_meta(const char *path, hid_t file, cf_ckpt_meta *m)
{
    htri_t exists = H5Lexists(file, "optimizer", H5P_DEFAULT);
    if (exists < 0) return h5_fail(CF_ERR_FORMAT, "%s: cannot look for /optimizer", path);
    if (!exists) return CF_OK;
    hid_t g = H5Gopen2(file, "optimizer", H5P_DEFAULT);
    if (g < 0) return h5_fail(CF_ERR_FORMAT, "%s: /optimizer is not a group", path);
    const char *w = "/optimizer";
    cf_adam_opts *o = &m->optimizer;
    char *kind = NULL;
    cf_status st = read_str(path, g, w, "kind", &kind);
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
    if (st == CF_OK) st = read_f64(path, g, w, "lr", &o->lr);
    if (st == CF_OK) st = read_f64(path, g, w, "beta1", &o->beta1);
    if (st == CF_OK) st = read_f64(path, g, w, "beta2", &o->beta2);
    if (st == CF_OK) st = read_f64(path, g, w, "eps", &o->eps);
    if (st == CF_OK) st = read_f64(path, g, w, "weight_decay", &o->weight_decay);
    if (st == CF_OK) st = read_f64(path, g, w, "clip_norm", &o->clip_norm);
    if (st == CF_OK) st = read_i64(path, g, w, "warmup_steps", &o->warmup_steps);
    if (st == CF_OK) st = read_i64(path, g, w, "step", &m->optimizer_steps);
    if (st == CF_OK) st = read_i64(path, g, w, "skipped", &m->optimizer_skipped);
    if (st == CF_ERR_NOT_FOUND) st = CF_ERR_FORMAT;
    m->has_optimizer = st == CF_OK;
    H5Gclose(g);
    return st;
}

static cf_status read_meta(const char *path, hid_t file, cf_ckpt_meta *m)
{
    const char *w = "the file";
    int64_t version = 0;
    cf_status st = read_i64(path, file, w, "format_version", &version);
    if (st == CF_OK && (version < 1 || version > CF_CHECKPOINT_VERSION))
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: checkpoint format version %lld; this library "
                          "reads versions 1 to %d",
                          path, (long long)version, CF_CHECKPOINT_VERSION);
    m->format_version = version;
    char *lib = NULL;
    if (st == CF_OK) st = read_str(path, file, w, "library_version", &lib);
    if (st == CF_OK) snprintf(m->library_version, sizeof m->library_version, "%s", lib);
    free(lib);
    if (st == CF_OK) st = read_i64(path, file, w, "step", &m->step);
    if (st == CF_OK) st = read_i64(path, file, w, "epoch", &m->epoch);
    if (st == CF_OK) {
        htri_t has = H5Aexists(file, "rng_state");
        if (has < 0) st = h5_fail(CF_ERR_FORMAT, "%s: cannot read the root attributes", path);
        if (has > 0) st = read_u64x4(path, file, w, "rng_state", m->rng.s);
        m->has_rng = has > 0 && st == CF_OK;
    }
    if (st == CF_OK) {
        htri_t has = H5Aexists(file, "data_epoch");
        if (has < 0) st = h5_fail(CF_ERR_FORMAT, "%s: cannot read the root attributes", path);
        if (has > 0) {
            st = read_i64(path, file, w, "data_epoch", &m->data_state.epoch);
            if (st == CF_OK) st = read_i64(path, file, w, "data_position", &m->data_state.position);
            if (st == CF_OK) st = read_u64x4(path, file, w, "data_rng_state", m->data_state.rng.s);
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
            st = h5_fail(CF_ERR_FORMAT, "%s: cannot open /arch", path);
        else if (g >= 0)
            st = read_str(path, g, "/arch", "json", &m->arch_json);
        if (st == CF_ERR_NOT_FOUND) st = CF_ERR_FORMAT;
        close_id(g, H5Gclose);
    }
    return st;
}

/* ---- a guard for HDF5 1.10 -------------------------------------------------------------- */

/* HDF5 1.10 (Debian 12 has 1.10.8) loops forever decoding a global heap collection whose walk
 * of objects meets a free-space entry (index 0) of size 0 before the collection's end, as a
 * damaged file can hold; the collections hold the variable-length strings every checkpoint
 * has, so the first string read would hang. Before HDF5 sees a file, every collection in it
 * ("GCOL", version 1) is walked the way HDF5 walks it, and a file where that walk would not
 * end, or would step past the collection, is refused. The scan reads the file once; bytes of
 * tensor data that happen to look like a collection header are walked too, and refused only if
 * they also spell such a broken walk. */

#define GCOL_MAX_SIZE_BYTES 8 /* HDF5 lengths are 2, 4 or 8 bytes (the superblock says) */

static uint64_t decode_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Walks the collection at `at` (its "GCOL" signature) as HDF5 would; false when the walk would
 * not end inside it. length: bytes of an HDF5 length in this file. */
static bool gcol_walk_ends(FILE *f, int64_t file_size, int64_t at, int length)
{
    uint8_t hdr[8 + GCOL_MAX_SIZE_BYTES];
    int64_t hdr_size = 8 + length, obj_size = 8 + length;
    if (fseeko(f, at, SEEK_SET) != 0 || fread(hdr, 1, (size_t)hdr_size, f) != (size_t)hdr_size)
        return true; /* HDF5 cannot read it either */
    uint64_t size = decode_le(hdr + 8, length);
    if (size > (uint64_t)(file_size - at)) return true; /* HDF5's read of it fails */
    uint64_t p = (uint64_t)hdr_size;
    while (p < size) {
        if (p + (uint64_t)obj_size > size) return true; /* a tail too small: free space */
        uint8_t obj[8 + GCOL_MAX_SIZE_BYTES];
        if (fseeko(f, at + (int64_t)p, SEEK_SET) != 0 ||
            fread(obj, 1, (size_t)obj_size, f) != (size_t)obj_size)
            return true;
        unsigned idx = obj[0] | (unsigned)obj[1] << 8;
        uint64_t n = decode_le(obj + 8, length);
        if (idx > 0 && n > size) return false;
        uint64_t need = idx > 0 ? (uint64_t)obj_size + ((n + 7) / 8) * 8 : n;
        if (need == 0 || need > size - p) return false;
        p += need;
    }
    return true;
}

/* head: the file's first 16 bytes (the superblock's start). */
static cf_status check_global_heaps(const char *path, FILE *f, int64_t file_size,
                                    const uint8_t *head)
{
    /* Size of lengths: byte 14 of a version 0 or 1 superblock, byte 10 of a version 2 or 3. */
    int length = head[8] <= 1 ? head[14] : head[10];
    if (length != 2 && length != 4 && length != 8) return CF_OK; /* HDF5 refuses the file */
    static const uint8_t tag[5] = {'G', 'C', 'O', 'L', 1};
    enum { CHUNK = 1 << 20 };
    uint8_t *buf = malloc(CHUNK + sizeof tag);
    if (!buf) return cf_set_error(CF_ERR_NOMEM, "%s: out of memory", path);
    cf_status st = CF_OK;
    int64_t base = 0; /* file offset of buf[0] */
    size_t keep = 0;  /* bytes carried over from the previous chunk */
    for (;;) {
        if (fseeko(f, base + (int64_t)keep, SEEK_SET) != 0) break;
        size_t got = fread(buf + keep, 1, CHUNK, f);
        size_t n = keep + got;
        for (size_t i = 0; i + sizeof tag <= n; i++) {
            uint8_t *hit = memchr(buf + i, 'G', n - sizeof tag + 1 - i);
            if (!hit) break;
            i = (size_t)(hit - buf);
            if (memcmp(hit, tag, sizeof tag) == 0 &&
                !gcol_walk_ends(f, file_size, base + (int64_t)i, length)) {
                st = cf_set_error(CF_ERR_FORMAT,
                                  "%s: damaged file: the HDF5 global heap at byte %lld is "
                                  "inconsistent (HDF5 would not finish reading it)",
                                  path, (long long)(base + (int64_t)i));
                break;
            }
        }
        if (st != CF_OK || got == 0) break;
        keep = n < sizeof tag - 1 ? n : sizeof tag - 1;
        memmove(buf, buf + n - keep, keep);
        base += (int64_t)(n - keep);
    }
    free(buf);
    return st;
}

/* Opens path read-only after checking it is a cincflow checkpoint of a version we read, and
 * reads its meta into m (zeroed by the caller). */
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
    st = check_global_heaps(path, f, size, head);
    fclose(f);
    if (st != CF_OK) return st;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        st = h5_fail(CF_ERR_IO, "%s: cannot set up HDF5 file access", path);
        close_id(fapl, H5Pclose);
        return st;
    }
#if (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 11, 0)) || H5_VERSION_GE(1, 12, 1)
    /* Checkpoints are replaced by rename, never written in place, so readers need no lock;
     * without one, file systems that refuse locks (some NFS mounts) still work. */
    H5Pset_file_locking(fapl, 0, 1);
#endif
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (file < 0) st = h5_fail(CF_ERR_FORMAT, "%s: cannot open the HDF5 file", path);
    H5Pclose(fapl);
    if (st != CF_OK) return st;
    char *format = NULL;
    st = read_str(path, file, "the file", "format", &format);
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
        return h5_fail(CF_ERR_FORMAT, "%s: cannot look for /%s/%s", path, gname, t->name);
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
        st = h5_fail(CF_ERR_FORMAT, "%s: /%s/%s is not a readable dataset", path, gname, t->name);
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
            st = h5_fail(CF_ERR_FORMAT, "%s: cannot read /%s/%s", path, gname, t->name);
        }
    }
    close_id(space, H5Sclose);
    close_id(type, H5Tclose);
    close_id(ds, H5Dclose);
    return st;
}

/* Opens group `name` of loc, or returns -1 in *g when there is none. */
static cf_status open_group(const char *path, hid_t loc, const char *name, hid_t *g)
{
    *g = -1;
    htri_t exists = H5Lexists(loc, name, H5P_DEFAULT);
    if (exists < 0) return h5_fail(CF_ERR_FORMAT, "%s: cannot look for %s", path, name);
    if (!exists) return CF_OK;
    *g = H5Gopen2(loc, name, H5P_DEFAULT);
    if (*g < 0) return h5_fail(CF_ERR_FORMAT, "%s: %s is not a group", path, name);
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
        return h5_fail(CF_ERR_FORMAT, "%s: cannot list /%s", path, gname);
    char name[1024];
    for (hsize_t i = 0; i < info.nlinks; i++) {
        ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                                       H5P_DEFAULT);
        if (n < 0) return h5_fail(CF_ERR_FORMAT, "%s: cannot list /%s", path, gname);
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
    close_id(gv, H5Gclose);
    close_id(gm, H5Gclose);
    close_id(go, H5Gclose);
    close_id(gs, H5Gclose);
    close_id(gp, H5Gclose);
    return st;
}

/* ---- loading ---------------------------------------------------------------------------- */

static cf_status load(const char *path, cf_params *ps, cf_adam *opt, cf_ckpt_meta *meta)
{
    CF_ASSERT(path, "cf_checkpoint_load: NULL path");
    cf_ckpt_meta m = {0};
    hid_t file = -1;
    quiet q;
    quiet_begin(&q);
    cf_status st = open_checkpoint(path, &file, &m);
    if (st == CF_OK && ps) st = load_tensors(path, file, ps, opt, &m);
    if (file >= 0) H5Fclose(file);
    quiet_end(&q);
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
