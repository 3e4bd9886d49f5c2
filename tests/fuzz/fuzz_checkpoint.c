/* fuzz_checkpoint.c: the HDF5 checkpoint loader (io/checkpoint.c) on a file of the input's
 * bytes: cf_checkpoint_read_config, then cf_checkpoint_load into the tiny flow of
 * fuzz_common.h with its optimizer, then without one.
 *
 * Besides crashes and leaks it checks the loader's promises: a failure leaves a message naming
 * the file and changes neither the parameters, the state tensors nor the optimizer's moments;
 * a success leaves only finite values; HDF5 never prints its error stack (the entry installs an
 * automatic error handler that counts, where the loader must have switched printing off); and
 * no HDF5 object of the file stays open.
 *
 * The flow and its optimizer are built once and kept for the process's life.
 */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static cf_flow *flow;
static cf_adam *opt;
static int h5_prints; /* calls of HDF5's automatic error handler */

static herr_t count_print(hid_t stack, void *data)
{
    (void)stack, (void)data;
    h5_prints++;
    return 0;
}

static void setup(void)
{
    if (flow) return;
    cf_flow_config cfg = cf_fuzz_tiny_config();
    cf_adam_opts o = cf_fuzz_tiny_adam();
    flow = cf_flow_new(&cfg, CF_F32);
    CF_FUZZ_CHECK(flow, "cannot build the tiny flow: %s", cf_last_error());
    opt = cf_adam_new(cf_flow_params(flow), &o);
    CF_FUZZ_CHECK(opt, "cannot make the optimizer: %s", cf_last_error());
    H5open();
    H5Eset_auto2(H5E_DEFAULT, count_print, NULL);
}

/* Every value the loader may change, in one buffer (owned). */
static uint8_t *snapshot(size_t *size)
{
    cf_params *ps = cf_flow_params(flow);
    size_t flat = cf_params_flat_numel(ps) * cf_dtype_size(cf_params_dtype(ps));
    size_t total = 3 * flat;
    for (int i = 0; i < cf_params_state_count(ps); i++)
        total += (size_t)cf_params_state_at(ps, i)->numel * cf_dtype_size(cf_params_dtype(ps));
    uint8_t *buf = malloc(total), *p = buf;
    CF_FUZZ_CHECK(buf, "out of memory");
    memcpy(p, cf_params_data(ps), flat), p += flat;
    memcpy(p, cf_adam_m(opt), flat), p += flat;
    memcpy(p, cf_adam_v(opt), flat), p += flat;
    for (int i = 0; i < cf_params_state_count(ps); i++) {
        const cf_tensor *t = cf_params_state_at(ps, i);
        size_t n = (size_t)t->numel * cf_dtype_size(t->dtype);
        memcpy(p, t->data, n), p += n;
    }
    *size = total;
    return buf;
}

static void check_finite(void)
{
    cf_params *ps = cf_flow_params(flow);
    const float *v = cf_params_data(ps);
    for (size_t i = 0; i < cf_params_flat_numel(ps); i++)
        CF_FUZZ_CHECK(isfinite(v[i]), "a loaded parameter is not finite");
}

/* After each call: HDF5 printed nothing and has no object of a file open. */
static void check_hdf5_quiet(const char *call)
{
    CF_FUZZ_CHECK(h5_prints == 0, "%s: HDF5 printed its error stack", call);
    ssize_t open_ids = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    CF_FUZZ_CHECK(open_ids == 0, "%s: %zd HDF5 objects left open", call, open_ids);
}

/* One load; returns whether it succeeded. */
static bool check_load(const char *path, cf_adam *with_opt)
{
    size_t before_size, after_size;
    uint8_t *before = snapshot(&before_size);
    cf_ckpt_meta meta = {0};
    cf_status st = cf_checkpoint_load(path, cf_flow_params(flow), with_opt, &meta);
    check_hdf5_quiet("cf_checkpoint_load");
    if (st == CF_OK) {
        check_finite();
        cf_fuzz_report("loaded%s", with_opt ? " with the optimizer" : "");
    } else {
        cf_fuzz_check_error(path);
        uint8_t *after = snapshot(&after_size);
        CF_FUZZ_CHECK(after_size == before_size && memcmp(before, after, before_size) == 0,
                      "a failed load (%s) changed the model or optimizer", cf_last_error());
        free(after);
    }
    cf_ckpt_meta_clear(&meta);
    free(before);
    return st == CF_OK;
}

int cf_fuzz_checkpoint(const uint8_t *data, size_t size)
{
    setup();
    char path[1024];
    cf_fuzz_path(path, sizeof path, "c.h5");
    cf_fuzz_write("c.h5", data, size, 0);

    cf_ckpt_meta meta = {0};
    cf_status st = cf_checkpoint_read_config(path, &meta);
    check_hdf5_quiet("cf_checkpoint_read_config");
    if (st != CF_OK) {
        cf_fuzz_check_error(path);
    } else {
        for (int i = 0; i < meta.n_config; i++) {
            const cf_ckpt_entry *e = &meta.config[i];
            CF_FUZZ_CHECK(e->key && e->key[0], "a config entry without a key");
            CF_FUZZ_CHECK(e->type != CF_CKPT_TYPE_STRING || e->s, "a string entry without text");
            CF_FUZZ_CHECK(cf_ckpt_meta_find(&meta, e->key) == e, "config key '%s' twice", e->key);
        }
        CF_FUZZ_CHECK(memchr(meta.library_version, 0, sizeof meta.library_version),
                      "library_version not terminated");
        cf_fuzz_report("config read: %d entries, step %lld", meta.n_config, (long long)meta.step);
    }
    cf_ckpt_meta_clear(&meta);
    cf_fuzz_accepted = 0;
    if (st == CF_OK) { /* the tensors are read only past the meta */
        check_load(path, opt);
        cf_fuzz_accepted = check_load(path, NULL);
    }
    cf_fuzz_clean();
    return 0;
}

CF_FUZZ_TARGET(cf_fuzz_checkpoint)
