/* cf_rng.h: a small seeded random number generator (xoshiro256**, seeded by splitmix64).
 *
 * Its whole state is four 64-bit words, so checkpoints store it and a resumed run draws the
 * same numbers. Each thread or MPI rank uses its own generator (cf_rng_seed with a different
 * stream number). Not cryptographic.
 */
#ifndef CF_RNG_H
#define CF_RNG_H

#include <stdint.h>

#include "cf_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cf_rng {
    uint64_t s[4];
} cf_rng;

/* Seeds from a seed and a stream number (rank, thread, purpose); equal pairs give equal draws. */
void cf_rng_seed(cf_rng *rng, uint64_t seed, uint64_t stream);
uint64_t cf_rng_next(cf_rng *rng);
/* Uniform in [0, 1), 53 bits. */
double cf_rng_uniform(cf_rng *rng);
/* Uniform integer in [0, n). */
uint64_t cf_rng_below(cf_rng *rng, uint64_t n);
/* Standard normal (Box-Muller; one draw per call, so the state alone determines the stream). */
double cf_rng_normal(cf_rng *rng);

/* Fills a tensor with uniform values in [lo, hi) or normal values N(mean, std^2). */
void cf_tensor_fill_uniform(cf_tensor *t, cf_rng *rng, double lo, double hi);
void cf_tensor_fill_normal(cf_tensor *t, cf_rng *rng, double mean, double std);

#ifdef __cplusplus
}
#endif
#endif
