/* cf_checkpoint.h: saving and loading a parameter set, its optimizer and the training state as
 * an HDF5 file that h5py (or any HDF5 reader) understands without knowing cincflow.
 *
 * The file:
 *
 *   /                      attributes: format = "cincflow-checkpoint", format_version = 2
 *                          (int64), library_version, step, epoch (int64); rng_state
 *                          (uint64[4]) when the caller saves a cf_rng; when the caller passes a data
 *                          batcher's state: data_epoch, data_position (int64), data_rng_state
 *                          (uint64[4])
 *   /params/<dotted.name>  one dataset per trainable parameter, float32 for an f32 set (float64
 *                          for f64), in the tensor's shape; attribute layout = "HWIO" (4-D
 *                          tensors named *weight: convolution weights), "NHWC" (other 4-D:
 *                          a prior's mean and log-scale), "IO" (2-D *weight), "C" (1-D),
 *                          "scalar" (0-D) or "ND" (others, row-major)
 *   /state/<dotted.name>   the same for state tensors (actnorm's initialized flag, ...)
 *   /optimizer             when an optimizer is saved; attributes kind ("adam", "adamw",
 *                          "adamax"), lr, beta1, beta2, eps, weight_decay, clip_norm (double),
 *                          warmup_steps, step (updates applied), skipped (int64)
 *   /optimizer/m/<name>    first moments, keyed by the parameters' names, same shapes
 *   /optimizer/v/<name>    second moments (Adamax: the infinity norm u)
 *   /config                the caller's configuration as typed attributes (int64, double,
 *                          UTF-8 string), in the order set, and all of them once more as one
 *                          JSON object in the string attribute `json`
 *   /arch                  when the meta has an architecture (cf_arch.h): attributes format
 *                          ("cincflow-architecture"), version, input (int64[3], H W C),
 *                          n_layers, and json (the whole architecture, cf_arch.h's form, which
 *                          is what loading reads); the same as typed attributes for readers:
 *   /arch/kinds/<kind>     attributes provider, summary, conventions (strings) of each kind
 *   /arch/layers/<i>       i = 00000, 00001, ... in order: attributes name, kind, in, out
 *                          (int64[3]); its group hparams holds one attribute per
 *                          hyperparameter (int64, double, string, or bool as h5py's enum)
 *
 * In Python: f = h5py.File(path); f["params"]["levels.0.steps.3.conv.weight"][...] is a numpy
 * array; f["config"].attrs["levels"], json.loads(f["config"].attrs["json"]). Strings are
 * variable-length UTF-8 and read back as str.
 *
 * Saving writes "<path>.tmp.<pid>", flushes it to disk (fsync) and renames it over path; on
 * any failure the temporary is removed and whatever file was at path is untouched. A
 * "<path>.tmp.<pid>" left by a process that was killed while saving (its pid names no process
 * any more) is removed by the next save to the same path. Loading
 * checks the format name and version, then that every parameter and state tensor of the set
 * is in the file with the same shape and no tensor of the file is missing from the set (the
 * first mismatch is reported by name), and refuses non-finite values; the set, the optimizer
 * and the meta are changed only when everything checked out. f32 files load into f64 sets and
 * the reverse. HDF5's own error printing is silenced: its messages end up in cf_last_error().
 * A checkpoint holds only numbers and strings: loading one runs no code from it. The file is
 * decoded by HDF5, though, and HDF5 1.10 (Debian 12's) can crash, or allocate gigabytes, on
 * some deliberately damaged files (tests/fuzz/hdf5-known/README); the loader refuses the
 * damage it can see before HDF5 does (a global heap that would make HDF5 loop forever). Load
 * checkpoints from sources you trust.
 *
 * Not here: building a model from its configuration (the caller reads the config back and
 * does that), MPI (save from one rank), other file formats.
 */
#ifndef CF_CHECKPOINT_H
#define CF_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "cf_data.h"
#include "cf_optim.h"
#include "cf_params.h"
#include "cf_rng.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CF_CHECKPOINT_FORMAT  "cincflow-checkpoint"
#define CF_CHECKPOINT_VERSION 2 /* 2: /arch added; version 1 files (no /arch) still load */

typedef enum cf_ckpt_type {
    CF_CKPT_TYPE_INT = 0,    /* int64 */
    CF_CKPT_TYPE_DOUBLE = 1, /* double */
    CF_CKPT_TYPE_STRING = 2, /* UTF-8 string */
} cf_ckpt_type;

/* One configuration entry. Keys use letters, digits, '_', '-' and '.'; "json" is reserved. */
typedef struct cf_ckpt_entry {
    char *key; /* owned by the meta */
    cf_ckpt_type type;
    int64_t i; /* CF_CKPT_TYPE_INT */
    double d;  /* CF_CKPT_TYPE_DOUBLE */
    char *s;   /* CF_CKPT_TYPE_STRING, owned by the meta */
} cf_ckpt_entry;

/* What a checkpoint holds beside the tensors. Start from a zeroed struct ({0}); fill the
 * scalar fields directly and the configuration with cf_ckpt_meta_set_*; release with
 * cf_ckpt_meta_clear. */
typedef struct cf_ckpt_meta {
    int64_t step;  /* training steps done */
    int64_t epoch; /* epochs done (the caller's count) */
    bool has_rng;  /* a generator of the caller's to keep: */
    cf_rng rng;    /*   its state (rng_state; without has_rng none is written, and load
                    *   leaves has_rng false for a file without one) */
    bool has_data_state;
    cf_batcher_state data_state; /* the batcher's, when has_data_state */

    /* Filled by cf_checkpoint_load and cf_checkpoint_read_config; ignored by save. */
    int64_t format_version;
    char library_version[32];  /* of the library that wrote the file */
    bool has_optimizer;        /* the file has /optimizer: */
    cf_adam_opts optimizer;    /*   its options, */
    int64_t optimizer_steps;   /*   updates applied */
    int64_t optimizer_skipped; /*   and steps skipped */

    /* The configuration, in the order the keys were first set; owned by the meta. */
    int n_config;
    cf_ckpt_entry *config;

    /* The architecture in cf_arch.h's JSON form, or NULL (a set of tensors without one):
     * saved as /arch (set it with cf_ckpt_meta_set_arch), filled by load when the file has
     * one. Owned by the meta. */
    char *arch_json;
} cf_ckpt_meta;

/* Sets key to a value (replacing an earlier value of any type); strings and keys are copied.
 * CF_ERR_ARG for a bad key, CF_ERR_NOMEM. */
cf_status cf_ckpt_meta_set_int(cf_ckpt_meta *meta, const char *key, int64_t value);
cf_status cf_ckpt_meta_set_double(cf_ckpt_meta *meta, const char *key, double value);
cf_status cf_ckpt_meta_set_string(cf_ckpt_meta *meta, const char *key, const char *value);

/* The entry for key, or NULL. Borrowed from the meta. */
const cf_ckpt_entry *cf_ckpt_meta_find(const cf_ckpt_meta *meta, const char *key);
/* Reads key: CF_ERR_NOT_FOUND when absent, CF_ERR_DTYPE when of another type (an int entry is
 * also read as a double); the message names the key. *value is borrowed from the meta. */
cf_status cf_ckpt_meta_get_int(const cf_ckpt_meta *meta, const char *key, int64_t *value);
cf_status cf_ckpt_meta_get_double(const cf_ckpt_meta *meta, const char *key, double *value);
cf_status cf_ckpt_meta_get_string(const cf_ckpt_meta *meta, const char *key, const char **value);

/* Sets the architecture's JSON (copied; NULL removes it). CF_ERR_NOMEM. */
cf_status cf_ckpt_meta_set_arch(cf_ckpt_meta *meta, const char *json);

/* Frees the configuration and zeroes the whole struct. */
void cf_ckpt_meta_clear(cf_ckpt_meta *meta);

/* Writes ps (and opt's moments, options and counts when opt is not NULL; it must be ps's
 * optimizer) and meta (NULL: step, epoch and RNG state zero, no configuration) to path, as
 * described above. Everything is borrowed and left unchanged. Names may not contain '/'.
 * Returns CF_OK, or a failure whose message names path (and the tensor, when one is at fault):
 * then the file at path, if any, is as it was and no temporary file remains. */
cf_status cf_checkpoint_save(const char *path, const cf_params *ps, const cf_adam *opt,
                             const cf_ckpt_meta *meta);

/* Reads path into ps, whose parameters and state must match the file's by name and shape
 * (dtypes may differ). When opt is not NULL (ps's optimizer, of the file's kind), its moments
 * and counts are restored too, and a file without /optimizer is an error. meta, when not NULL,
 * must be zeroed or previously used (its configuration is freed first) and receives everything
 * the file holds besides the tensors; restore the batcher with cf_batcher_set_state(&b,
 * &meta->data_state) when has_data_state. On failure nothing was changed, and the message
 * names the file and the first offending tensor or attribute:
 *   CF_ERR_NOT_FOUND  no such file, or a tensor of the set missing from the file
 *   CF_ERR_SHAPE      a tensor present with another shape, or a tensor of the file that the
 *                     set does not have
 *   CF_ERR_FORMAT     not HDF5, not a cincflow checkpoint, an unreadable version, a damaged file
 *   CF_ERR_NUMERIC    a parameter, state or moment value that is NaN or infinite
 *   CF_ERR_STATE      opt given but the file has no optimizer state, or of another kind */
cf_status cf_checkpoint_load(const char *path, cf_params *ps, cf_adam *opt, cf_ckpt_meta *meta);

/* Reads only the meta of path (format and version checked): enough to rebuild the model from
 * its configuration before loading the tensors. Same rules for meta as cf_checkpoint_load. */
cf_status cf_checkpoint_read_config(const char *path, cf_ckpt_meta *meta);

#ifdef __cplusplus
}
#endif
#endif
