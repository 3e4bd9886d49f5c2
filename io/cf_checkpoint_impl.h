/* cf_checkpoint_impl.h: what the three files of the checkpoint code share (not installed):
 * checkpoint_meta.c (the metadata and its JSON), checkpoint_h5.c (HDF5 guards: silenced error
 * printing with the deepest message kept, attribute and tensor helpers, the global-heap check
 * for HDF5 1.10) and checkpoint.c (saving and loading). */
#ifndef CF_CHECKPOINT_IMPL_H
#define CF_CHECKPOINT_IMPL_H

#include <cjson/cJSON.h>
#include <hdf5.h>
#include <stdio.h>

#include "cf_checkpoint.h"

/* Limits on what a file may make the loader allocate outside the tensors. */
#define MAX_STRING_BYTES   (1 << 20)
#define MAX_CONFIG_ENTRIES 4096
#define MAX_KEY_BYTES      255

typedef struct cf__ck_quiet {
    H5E_auto2_t func;
    void *data;
} cf__ck_quiet;

cf_status cf__ck_check_key(const char *key);
void cf__ck_quiet_begin(cf__ck_quiet *q);
void cf__ck_quiet_end(cf__ck_quiet *q);
cf_status cf__ck_h5_fail(cf_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cf__ck_close_id(hid_t id, herr_t (*close)(hid_t));
hid_t cf__ck_string_type(void);
cf_status cf__ck_write_attr(const char *path, hid_t loc, const char *where, const char *name,
                            hid_t ftype, hid_t mtype, int rank, hsize_t n, const void *value);
cf_status cf__ck_write_i64(const char *path, hid_t loc, const char *where, const char *name,
                           int64_t v);
cf_status cf__ck_write_f64(const char *path, hid_t loc, const char *where, const char *name,
                           double v);
cf_status cf__ck_write_u64s(const char *path, hid_t loc, const char *where, const char *name,
                            const uint64_t *v, hsize_t n);
cf_status cf__ck_write_str(const char *path, hid_t loc, const char *where, const char *name,
                           const char *s);
cf_status cf__ck_write_tensor(const char *path, hid_t group, const char *gname, const char *name,
                              const cf_tensor *t, const void *data);
hid_t cf__ck_make_group(hid_t loc, const char *name, bool track_attr_order);
cf_status cf__ck_check_name(const char *path, const char *kind, const char *name);
cf_status cf__ck_write_group(const char *path, hid_t loc, const char *gname, const char *name,
                             const cf_params *ps, bool state, const void *base);
char *cf__ck_config_json(const cf_ckpt_meta *meta);
cf_status cf__ck_write_bool(const char *path, hid_t loc, const char *where, const char *name,
                            bool v);
cf_status cf__ck_write_shape(const char *path, hid_t loc, const char *where, const char *name,
                             const cJSON *arr);
cf_status cf__ck_write_strings(const char *path, hid_t g, const char *where, const cJSON *o,
                               const char *const *keys, int n);
cf_status cf__ck_open_attr(const char *path, hid_t loc, const char *where, const char *name,
                           hid_t *a, hid_t *type, hid_t *space);
cf_status cf__ck_read_attr(const char *path, hid_t loc, const char *where, const char *name,
                           hid_t mtype, H5T_class_t c1, H5T_class_t c2, hssize_t n, void *out);
cf_status cf__ck_read_i64(const char *path, hid_t loc, const char *where, const char *name,
                          int64_t *v);
cf_status cf__ck_read_f64(const char *path, hid_t loc, const char *where, const char *name,
                          double *v);
cf_status cf__ck_read_u64x4(const char *path, hid_t loc, const char *where, const char *name,
                            uint64_t *v);
cf_status cf__ck_read_str(const char *path, hid_t loc, const char *where, const char *name,
                          char **out);
cf_status cf__ck_check_global_heaps(const char *path, FILE *f, int64_t file_size,
                                    const uint8_t *head);

#endif
