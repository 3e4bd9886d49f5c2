/* data_batcher.c: shuffled, sharded, dequantized batches over a data set (see cf_data.h).
 *
 * Legend: N images in the set, R ranks, B images per batch (per rank), so R B images per
 * step; T = floor(N / (R B)) steps in an epoch.
 *
 * Epoch e's order is a Fisher-Yates permutation drawn from a generator seeded by (seed, e), so
 * it is a function of the seed and the epoch alone: every rank computes the same one, and
 * restoring a state needs no stored permutation. A step takes the next R B entries of it; rank
 * r takes entries r B .. r B + B - 1 of those. So R ranks with batch B see, step by step, the
 * images one process with batch R B sees (for R = 1 this is the plain walk along the
 * permutation). The permutation of the current epoch is cached (N indices).
 *
 * Noise: each image draws its own generator, seeded by (the state's key, e N + g) where g is
 * its position in the epoch's permutation. The noise an image gets depends on where it is in
 * the global order, never on which rank reads it or on what was drawn before, so R ranks with
 * batch B get bit-identical inputs to one process with batch R B, ranks never share a noise
 * stream, and a state (epoch, position, key) restores every rank exactly. Seeding costs four
 * splitmix64 rounds per image, nothing next to the pixels' draws.
 *
 * Not here: partial batches, weighting or class balancing, prefetching on another thread.
 */
#include <stdlib.h>
#include <string.h>

#include "cf_io_impl.h"

/* Salts that keep the permutation and noise streams apart. */
#define PERM_SALT  0x7065726d75746174ull
#define NOISE_SALT 0x6e6f697365736565ull

struct cf_batcher {
    const cf_dataset *ds; /* borrowed */
    cf_batcher_opts opts; /* n_ranks filled in */
    int64_t steps;        /* T, steps per epoch */
    int64_t *perm;        /* (N) order of perm_epoch, owned */
    int64_t perm_epoch;   /* the epoch perm holds; -1 before the first */
    cf_batcher_state state;
};

cf_batcher *cf_batcher_new(const cf_dataset *ds, const cf_batcher_opts *opts)
{
    CF_ASSERT(ds && opts, "cf_batcher_new: NULL argument");
    cf_batcher_opts o = *opts;
    if (o.n_ranks == 0) o.n_ranks = 1;
    if (o.batch <= 0) {
        cf_set_error(CF_ERR_ARG, "cf_batcher_new: batch size %lld (must be at least 1)",
                     (long long)o.batch);
        return NULL;
    }
    if (o.n_ranks < 0 || o.rank < 0 || o.rank >= o.n_ranks) {
        cf_set_error(CF_ERR_ARG,
                     "cf_batcher_new: rank %d of %d ranks (expected 0 <= rank < "
                     "n_ranks)",
                     o.rank, o.n_ranks);
        return NULL;
    }
    if (o.dequant != CF_DEQUANT_UNIFORM && o.dequant != CF_DEQUANT_MIDPOINT) {
        cf_set_error(CF_ERR_ARG, "cf_batcher_new: unknown dequantization %d", (int)o.dequant);
        return NULL;
    }
    /* floor(N / R) >= B exactly when N >= R B: each rank gets at least a batch per epoch. */
    int64_t per_rank = ds->count / o.n_ranks;
    if (per_rank < o.batch) {
        cf_set_error(CF_ERR_ARG,
                     "cf_batcher_new: %s has %lld images, so each of %d ranks gets "
                     "%lld per epoch, fewer than a batch of %lld",
                     ds->source, (long long)ds->count, o.n_ranks, (long long)per_rank,
                     (long long)o.batch);
        return NULL;
    }
    cf_batcher *b = calloc(1, sizeof *b);
    int64_t *perm = b ? malloc((size_t)ds->count * sizeof *perm) : NULL;
    if (!perm) {
        free(b);
        cf_set_error(CF_ERR_NOMEM, "cf_batcher_new: out of memory for %lld indices",
                     (long long)ds->count);
        return NULL;
    }
    b->ds = ds;
    b->opts = o;
    b->steps = ds->count / (o.batch * o.n_ranks);
    b->perm = perm;
    b->perm_epoch = -1;
    /* The noise key: the same on every rank (see the header comment). */
    cf_rng_seed(&b->state.rng, o.seed ^ NOISE_SALT, 0);
    return b;
}

void cf_batcher_free(cf_batcher *b)
{
    if (!b) return;
    free(b->perm);
    free(b);
}

static void make_permutation(cf_batcher *b, int64_t epoch)
{
    if (b->perm_epoch == epoch) return;
    int64_t N = b->ds->count;
    for (int64_t i = 0; i < N; i++) b->perm[i] = i;
    if (!b->opts.sequential) {
        cf_rng r;
        cf_rng_seed(&r, b->opts.seed ^ PERM_SALT, (uint64_t)epoch);
        for (int64_t i = N - 1; i > 0; i--) {
            int64_t j = (int64_t)cf_rng_below(&r, (uint64_t)i + 1);
            int64_t t = b->perm[i];
            b->perm[i] = b->perm[j];
            b->perm[j] = t;
        }
    }
    b->perm_epoch = epoch;
}

cf_status cf_batcher_next(cf_batcher *b, cf_tensor *x, int *labels, int64_t *indices)
{
    int64_t B = b->opts.batch, R = b->opts.n_ranks, N = b->ds->count;
    cf_status st = cf__data_check_batch(b->ds, x, B, "cf_batcher_next");
    if (st != CF_OK) return st;
    if (b->state.position + R * B > N) {
        b->state.epoch++;
        b->state.position = 0;
    }
    make_permutation(b, b->state.epoch);
    int64_t first = b->state.position + (int64_t)b->opts.rank * B; /* g of this batch's image 0 */
    const int64_t *idx = b->perm + first;
    if (b->opts.dequant == CF_DEQUANT_MIDPOINT) {
        cf__data_dequantize(b->ds, idx, B, x, CF_DEQUANT_MIDPOINT, NULL);
    } else {
        size_t image = (size_t)(x->numel / B) * cf_dtype_size(x->dtype);
        for (int64_t i = 0; i < B; i++) {
            cf_tensor one = *x; /* image i of x, as a batch of one */
            one.shape[0] = 1;
            one.numel = x->numel / B;
            one.data = (char *)x->data + (size_t)i * image;
            cf_rng noise;
            cf_rng_seed(&noise, b->state.rng.s[0],
                        (uint64_t)b->state.epoch * (uint64_t)N + (uint64_t)(first + i));
            cf__data_dequantize(b->ds, idx + i, 1, &one, CF_DEQUANT_UNIFORM, &noise);
        }
    }
    for (int64_t i = 0; i < B; i++) {
        if (labels) labels[i] = cf_dataset_label(b->ds, idx[i]);
        if (indices) indices[i] = idx[i];
    }
    b->state.position += R * B;
    return CF_OK;
}

int64_t cf_batcher_batches_per_epoch(const cf_batcher *b)
{
    return b->steps;
}

int64_t cf_batcher_slice_size(const cf_batcher *b)
{
    return b->steps * b->opts.batch;
}

cf_batcher_state cf_batcher_get_state(const cf_batcher *b)
{
    return b->state;
}

cf_status cf_batcher_set_state(cf_batcher *b, const cf_batcher_state *state)
{
    if (state->epoch < 0 || state->position < 0 || state->position > b->ds->count)
        return cf_set_error(CF_ERR_ARG,
                            "cf_batcher_set_state: epoch %lld, position %lld: "
                            "expected epoch >= 0 and a position from 0 to the "
                            "set's %lld images",
                            (long long)state->epoch, (long long)state->position,
                            (long long)b->ds->count);
    b->state = *state;
    return CF_OK;
}
