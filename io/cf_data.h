/* cf_data.h: data sets of 8-bit images held in memory, and a batcher that shuffles, shards and
 * dequantizes them into training batches.
 *
 * A data set is opened from a spec string (the `--data` flag of the command-line tool):
 *
 *   idx:FILE              an idx3-ubyte image file (MNIST, Fashion-MNIST), gzip-compressed or
 *                         not. Its labels are read from the file beside it whose name has
 *                         "labels-idx1" in place of "images-idx3" (also "labels.idx1" for
 *                         "images.idx3"; with or without ".gz"), when that file exists.
 *   fashion-mnist[:DIR]   Debian's dataset-fashion-mnist, {train,t10k}-{images-idx3,labels-idx1}
 *                         -ubyte.gz in DIR (default /usr/share/datasets/fashion-mnist).
 *   cifar10:DIR           the CIFAR-10 binary format: data_batch_1.bin .. data_batch_5.bin
 *                         (train) or test_batch.bin (test), in DIR or DIR/cifar-10-batches-bin.
 *                         Records of 1 label byte then 32x32 planes R, G, B; stored as HWC.
 *   png:DIR               every *.png file of DIR (any case of ".png"; names starting with '.'
 *                         skipped), sorted by name (strcmp), all of one size: 8-bit gray
 *                         (C = 1) or RGB (C = 3), palette images expanded to RGB. Alpha
 *                         channels and 16-bit or 1/2/4-bit gray and RGB samples are refused.
 *   synthetic:HxWxC[:N[:SEED]]
 *                         N (default 1000) seeded random images of smooth blobs on a gradient,
 *                         C from 1 to 4, SEED default 0; the test split draws other images.
 *                         No labels. The same spec gives the same bytes on every run.
 *
 * split is "train" or "test" (NULL means "train"); it picks the files of fashion-mnist and
 * cifar10, the image stream of synthetic, and is ignored by idx and png, whose files are named.
 *
 * Images are (N, H, W, C) uint8, C innermost. Labels are 0..255 (CIFAR-10 and Fashion-MNIST:
 * 0..9), or -1 when the set has none. An opened set is never modified: any number of batchers
 * and threads may read it at once.
 *
 * Files from elsewhere are not trusted: truncated, oversized, wrong-magic, wrong-size, missing
 * or unreadable files fail with one message naming the file and what was wrong. Sizes in a
 * header are checked against the bytes actually present before anything of that size is
 * allocated, and no set may exceed the limits below.
 *
 * The batcher: each epoch is a permutation of the whole set drawn from (seed, epoch) alone
 * (Fisher-Yates with cf_rng), identical on every rank. Each step takes the next R B entries of
 * it (R ranks, B images per rank's batch) and rank r takes entries r B .. r B + B - 1 of those,
 * so R ranks with batch B together see exactly the images, in the same order, that one process
 * with batch R B sees (R = 1 simply walks along the permutation). An epoch has floor(N / (R B))
 * steps; the N mod R B images left over change every epoch; a partial last step is never
 * taken, and the next call starts the next epoch. Each value is the dequantized pixel k in
 * {0..255}:
 *   uniform:  x = k/256 - 0.5 + U(0, 1/256)   (training; lies in [k/256 - 0.5, (k+1)/256 - 0.5))
 *   midpoint: x = k/256 - 0.5 + 1/512         (deterministic, for evaluation)
 * The noise of an image depends only on the seed, the epoch and the image's position g in the
 * epoch's permutation: it comes from a generator of its own, seeded by (the state's noise key,
 * epoch N + g), one draw per value in element order. Ranks therefore never share noise, R
 * ranks with batch B get bit-identical values to one process with batch R B, and the state
 * (epoch, position, key), the same on every rank, restores the exact batch sequence of each.
 *
 * Not here: decoding other image formats, augmentation, reading data lazily from disk,
 * MPI itself (the caller passes rank and rank count).
 */
#ifndef CF_DATA_H
#define CF_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "cf_rng.h"
#include "cf_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits on what a loader accepts, whatever a file says. */
#define CF_DATA_MAX_SIDE        16384       /* H and W */
#define CF_DATA_MAX_CHANNELS    4           /* C */
#define CF_DATA_MAX_IMAGE_BYTES (1ll << 26) /* H * W * C of one image */
#define CF_DATA_MAX_BYTES       (1ll << 34) /* N * H * W * C of a whole set */

typedef struct cf_dataset cf_dataset;

/* Opens the data set named by spec (see above). Returns it owned (free with cf_dataset_free),
 * or NULL with cf_last_error() naming the file and what was wrong. spec is not kept. */
cf_dataset *cf_dataset_open(const char *spec, const char *split);
/* Frees the set; NULL is accepted. */
void cf_dataset_free(cf_dataset *ds);

/* Number of images N. */
int64_t cf_dataset_count(const cf_dataset *ds);
/* Image shape: height, width, channels (any pointer may be NULL). */
void cf_dataset_shape(const cf_dataset *ds, int *height, int *width, int *channels);
/* Image i (0 <= i < N) as H*W*C bytes, HWC order. Borrowed: valid until cf_dataset_free. */
const uint8_t *cf_dataset_image(const cf_dataset *ds, int64_t i);
/* Label of image i, or -1 when the set has no labels. */
int cf_dataset_label(const cf_dataset *ds, int64_t i);
bool cf_dataset_has_labels(const cf_dataset *ds);
/* 1 + the largest label (0 without labels). */
int cf_dataset_num_classes(const cf_dataset *ds);
/* Where the images came from ("idx:/path/train-images-idx3-ubyte.gz (train)"). Borrowed. */
const char *cf_dataset_source(const cf_dataset *ds);

/* ---- dequantization ---------------------------------------------------------------------- */

typedef enum cf_dequant {
    CF_DEQUANT_UNIFORM = 0,  /* k/256 - 0.5 + U(0, 1/256): training */
    CF_DEQUANT_MIDPOINT = 1, /* k/256 - 0.5 + 1/512: deterministic, for evaluation */
} cf_dequant;

/* Fills x (n, H, W, C), f32 or f64, with images first .. first + n - 1 in order (evaluation
 * over a whole split: the last call takes a smaller x). rng is drawn from for
 * CF_DEQUANT_UNIFORM (one draw per value, in x's element order) and may be NULL for
 * CF_DEQUANT_MIDPOINT. Returns CF_ERR_SHAPE for an x of another image shape or dtype, or
 * CF_ERR_ARG for images past the end; x is then unchanged. */
cf_status cf_dataset_fill(const cf_dataset *ds, int64_t first, cf_tensor *x, cf_dequant dequant,
                          cf_rng *rng);

/* ---- the batcher ------------------------------------------------------------------------- */

typedef struct cf_batcher_opts {
    int64_t batch;      /* B, images per batch (> 0) */
    uint64_t seed;      /* shuffling and dequantization noise */
    int rank, n_ranks;  /* this process's shard; n_ranks 0 means 1 (no sharding) */
    bool sequential;    /* no shuffling: every epoch in the data set's order */
    cf_dequant dequant; /* uniform (default) or midpoint */
} cf_batcher_opts;

/* Everything that changes as batches are drawn; with the same data set and options, setting
 * a saved state makes the batcher continue exactly where the saved one was. */
typedef struct cf_batcher_state {
    int64_t epoch;    /* current epoch, from 0 */
    int64_t position; /* entries of the epoch's permutation taken so far, by all ranks
                       * together (steps so far times R B); the same on every rank */
    cf_rng rng;       /* the noise key: seeded from the seed at creation, never advanced */
} cf_batcher_state;

typedef struct cf_batcher cf_batcher;

/* Returns an owned batcher over ds (borrowed: it must outlive the batcher), or NULL with
 * cf_last_error() for bad options (batch <= 0, rank outside 0..n_ranks-1) or a set smaller
 * than one step (N < R B). Free with cf_batcher_free (NULL accepted). */
cf_batcher *cf_batcher_new(const cf_dataset *ds, const cf_batcher_opts *opts);
void cf_batcher_free(cf_batcher *b);

/* Fills x (B, H, W, C), f32 or f64, with the next batch, moving to the next epoch first when
 * fewer than B images of this one remain. labels (B entries, -1 when the set has none) and
 * indices (B entries: which images of the set) may be NULL. Returns CF_ERR_SHAPE (and changes
 * nothing) when x has another shape or dtype. */
cf_status cf_batcher_next(cf_batcher *b, cf_tensor *x, int *labels, int64_t *indices);

/* Batches per epoch, floor(N / (n_ranks B)) (the same on every rank), and the images this
 * rank takes in an epoch, that times B. */
int64_t cf_batcher_batches_per_epoch(const cf_batcher *b);
int64_t cf_batcher_slice_size(const cf_batcher *b);

/* The state, by value; and restoring one (CF_ERR_ARG for a negative epoch or a position
 * outside 0..N, as a damaged checkpoint could hold; the batcher is then unchanged). A state
 * saved by any rank, or by a run with another rank count, restores on every rank. */
cf_batcher_state cf_batcher_get_state(const cf_batcher *b);
cf_status cf_batcher_set_state(cf_batcher *b, const cf_batcher_state *state);

#ifdef __cplusplus
}
#endif
#endif
