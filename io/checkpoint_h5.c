/* checkpoint_h5.c: guards and helpers around HDF5 for the checkpoint code: HDF5's automatic
 * error printing silenced with the deepest message of its stack kept for ours, closing ids,
 * writing and reading attributes and tensors with messages naming the file and the object, and
 * the global-heap check that keeps HDF5 1.10 from looping forever on a damaged file.
 *
 * Not here: the layout of a checkpoint (checkpoint.c), its metadata (checkpoint_meta.c).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_checkpoint_impl.h"
#include "cf_io_impl.h"

/* ---- HDF5 errors ------------------------------------------------------------------------ */

void cf__ck_quiet_begin(cf__ck_quiet *q)
{
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void cf__ck_quiet_end(cf__ck_quiet *q)
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
cf_status cf__ck_h5_fail(cf_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cf_status cf__ck_h5_fail(cf_status st, const char *fmt, ...)
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

void cf__ck_close_id(hid_t id, herr_t (*close)(hid_t))
{
    if (id >= 0) close(id);
}

/* ---- writing ---------------------------------------------------------------------------- */

hid_t cf__ck_string_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* Writes attribute `name` of loc (`where` in messages): rank 0 scalar, else dims. */
cf_status cf__ck_write_attr(const char *path, hid_t loc, const char *where, const char *name,
                            hid_t ftype, hid_t mtype, int rank, hsize_t n, const void *value)
{
    hsize_t dims[1] = {n};
    hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
    hid_t a = space < 0 ? -1 : H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a < 0 ? -1 : H5Awrite(a, mtype, value);
    cf_status st = CF_OK;
    if (rc < 0) st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot write attribute '%s' of %s", path, name, where);
    cf__ck_close_id(a, H5Aclose);
    cf__ck_close_id(space, H5Sclose);
    return st;
}

cf_status cf__ck_write_i64(const char *path, hid_t loc, const char *where, const char *name,
                           int64_t v)
{
    return cf__ck_write_attr(path, loc, where, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, 1, &v);
}

cf_status cf__ck_write_f64(const char *path, hid_t loc, const char *where, const char *name,
                           double v)
{
    return cf__ck_write_attr(path, loc, where, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, 1, &v);
}

cf_status cf__ck_write_u64s(const char *path, hid_t loc, const char *where, const char *name,
                            const uint64_t *v, hsize_t n)
{
    return cf__ck_write_attr(path, loc, where, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, n, v);
}

cf_status cf__ck_write_str(const char *path, hid_t loc, const char *where, const char *name,
                           const char *s)
{
    hid_t t = cf__ck_string_type();
    if (t < 0) return cf__ck_h5_fail(CF_ERR_IO, "%s: cannot make a string type", path);
    cf_status st = cf__ck_write_attr(path, loc, where, name, t, t, 0, 1, &s);
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
cf_status cf__ck_write_tensor(const char *path, hid_t group, const char *gname, const char *name,
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
    if (rc < 0) st = cf__ck_h5_fail(CF_ERR_IO, "%s: cannot write /%s/%s", path, gname, name);
    if (st == CF_OK) {
        char where[300];
        snprintf(where, sizeof where, "/%s/%s", gname, name);
        st = cf__ck_write_str(path, ds, where, "layout", layout_of(t));
    }
    cf__ck_close_id(ds, H5Dclose);
    cf__ck_close_id(space, H5Sclose);
    return st;
}

hid_t cf__ck_make_group(hid_t loc, const char *name, bool track_attr_order)
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

cf_status cf__ck_check_name(const char *path, const char *kind, const char *name)
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
cf_status cf__ck_write_group(const char *path, hid_t loc, const char *gname, const char *name,
                             const cf_params *ps, bool state, const void *base)
{
    hid_t g = cf__ck_make_group(loc, name, false);
    if (g < 0) return cf__ck_h5_fail(CF_ERR_IO, "%s: cannot create group /%s", path, gname);
    cf_status st = CF_OK;
    int n = state ? cf_params_state_count(ps) : cf_params_count(ps);
    size_t esize = cf_dtype_size(cf_params_dtype(ps));
    for (int i = 0; i < n && st == CF_OK; i++) {
        const cf_tensor *t = state ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
        const void *data =
            base ? (const char *)base + cf_params_offset(ps, i) * esize : (const void *)t->data;
        st = cf__ck_write_tensor(path, g, gname, t->name, t, data);
    }
    H5Gclose(g);
    return st;
}

cf_status cf__ck_write_bool(const char *path, hid_t loc, const char *where, const char *name,
                            bool v)
{
    hid_t t = H5Tenum_create(H5T_NATIVE_INT8);
    int8_t f = 0, tr = 1, value = v ? 1 : 0;
    if (t < 0 || H5Tenum_insert(t, "FALSE", &f) < 0 || H5Tenum_insert(t, "TRUE", &tr) < 0) {
        cf__ck_close_id(t, H5Tclose);
        return cf__ck_h5_fail(CF_ERR_IO, "%s: cannot make a bool type", path);
    }
    cf_status st = cf__ck_write_attr(path, loc, where, name, t, t, 0, 1, &value);
    H5Tclose(t);
    return st;
}

cf_status cf__ck_write_shape(const char *path, hid_t loc, const char *where, const char *name,
                             const cJSON *arr)
{
    int64_t v[3] = {0, 0, 0};
    for (int d = 0; d < 3; d++) {
        const cJSON *x = cJSON_GetArrayItem(arr, d);
        v[d] = cJSON_IsNumber(x) ? (int64_t)x->valuedouble : 0;
    }
    return cf__ck_write_attr(path, loc, where, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, 3, v);
}

cf_status cf__ck_write_strings(const char *path, hid_t g, const char *where, const cJSON *o,
                               const char *const *keys, int n)
{
    cf_status st = CF_OK;
    for (int k = 0; k < n && st == CF_OK; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, keys[k]);
        if (cJSON_IsString(v)) st = cf__ck_write_str(path, g, where, keys[k], v->valuestring);
    }
    return st;
}

/* /arch: the architecture's JSON (what loading reads), and the same as typed attributes. */
/* ---- reading attributes ----------------------------------------------------------------- */

/* Opens attribute `name` of loc (`where` in messages) with its type and dataspace; on failure
 * the ids are -1 (close_id ignores them). CF_ERR_NOT_FOUND (with a message) when absent. */
cf_status cf__ck_open_attr(const char *path, hid_t loc, const char *where, const char *name,
                           hid_t *a, hid_t *type, hid_t *space)
{
    *a = *type = *space = -1;
    htri_t exists = H5Aexists(loc, name);
    if (exists < 0)
        return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
    if (!exists)
        return cf_set_error(CF_ERR_NOT_FOUND, "%s: attribute '%s' of %s is missing", path, name,
                            where);
    *a = H5Aopen(loc, name, H5P_DEFAULT);
    *type = *a < 0 ? -1 : H5Aget_type(*a);
    *space = *type < 0 ? -1 : H5Aget_space(*a);
    if (*space < 0)
        return cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot open attribute '%s' of %s", path, name, where);
    return CF_OK;
}

/* Reads attribute `name` of loc (`where` in messages) as mtype: its class must be c1 or c2 and
 * it must hold n values. CF_ERR_NOT_FOUND (with a message) when absent. */
cf_status cf__ck_read_attr(const char *path, hid_t loc, const char *where, const char *name,
                           hid_t mtype, H5T_class_t c1, H5T_class_t c2, hssize_t n, void *out)
{
    hid_t a, type, space;
    cf_status st = cf__ck_open_attr(path, loc, where, name, &a, &type, &space);
    if (st == CF_OK) {
        H5T_class_t cls = H5Tget_class(type);
        if ((cls != c1 && cls != c2) || H5Sget_simple_extent_npoints(space) != n)
            st = cf_set_error(CF_ERR_FORMAT, "%s: attribute '%s' of %s is not %s", path, name,
                              where, n == 1 ? "a single number" : "an array of 4 integers");
        else if (H5Aread(a, mtype, out) < 0)
            st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
    }
    cf__ck_close_id(space, H5Sclose);
    cf__ck_close_id(type, H5Tclose);
    cf__ck_close_id(a, H5Aclose);
    return st;
}

cf_status cf__ck_read_i64(const char *path, hid_t loc, const char *where, const char *name,
                          int64_t *v)
{
    return cf__ck_read_attr(path, loc, where, name, H5T_NATIVE_INT64, H5T_INTEGER, H5T_INTEGER, 1, v);
}

cf_status cf__ck_read_f64(const char *path, hid_t loc, const char *where, const char *name,
                          double *v)
{
    return cf__ck_read_attr(path, loc, where, name, H5T_NATIVE_DOUBLE, H5T_FLOAT, H5T_INTEGER, 1, v);
}

cf_status cf__ck_read_u64x4(const char *path, hid_t loc, const char *where, const char *name,
                            uint64_t *v)
{
    return cf__ck_read_attr(path, loc, where, name, H5T_NATIVE_UINT64, H5T_INTEGER, H5T_INTEGER, 4, v);
}

/* Reads a string attribute, variable- or fixed-length, into a new string (owned). */
cf_status cf__ck_read_str(const char *path, hid_t loc, const char *where, const char *name,
                          char **out)
{
    *out = NULL;
    hid_t a, type, space, mtype = -1;
    cf_status st = cf__ck_open_attr(path, loc, where, name, &a, &type, &space);
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
            st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
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
            st = cf__ck_h5_fail(CF_ERR_FORMAT, "%s: cannot read attribute '%s' of %s", path, name, where);
        if (st == CF_OK) {
            for (size_t n = strlen(buf); n > 0 && buf[n - 1] == ' '; n--) buf[n - 1] = '\0';
            *out = buf;
        } else {
            free(buf);
        }
    }
    cf__ck_close_id(mtype, H5Tclose);
    cf__ck_close_id(space, H5Sclose);
    cf__ck_close_id(type, H5Tclose);
    cf__ck_close_id(a, H5Aclose);
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
cf_status cf__ck_check_global_heaps(const char *path, FILE *f, int64_t file_size,
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
