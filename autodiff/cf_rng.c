/* cf_rng.c: xoshiro256** (Blackman and Vigna), seeded through splitmix64. Written here because
 * the libraries we link offer no generator whose state we can save and restore portably. */
#include <math.h>

#include "cf_rng.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void cf_rng_seed(cf_rng *rng, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ull + 0x2545f4914f6cdd1dull);
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t cf_rng_next(cf_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double cf_rng_uniform(cf_rng *rng)
{
    return (double)(cf_rng_next(rng) >> 11) * 0x1.0p-53;
}

uint64_t cf_rng_below(cf_rng *rng, uint64_t n)
{
    CF_ASSERT(n > 0, "cf_rng_below(0)");
    /* Rejection keeps the draw unbiased. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = cf_rng_next(rng);
    while (x >= limit);
    return x % n;
}

double cf_rng_normal(cf_rng *rng)
{
    double u1 = 1.0 - cf_rng_uniform(rng); /* (0, 1] */
    double u2 = cf_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void cf_tensor_fill_uniform(cf_tensor *t, cf_rng *rng, double lo, double hi)
{
    for (int64_t i = 0; i < t->numel; i++)
        cf_buf_set(t->dtype, t->data, i, lo + (hi - lo) * cf_rng_uniform(rng));
}

void cf_tensor_fill_normal(cf_tensor *t, cf_rng *rng, double mean, double std)
{
    for (int64_t i = 0; i < t->numel; i++)
        cf_buf_set(t->dtype, t->data, i, mean + std * cf_rng_normal(rng));
}
