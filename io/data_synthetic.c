/* data_synthetic.c: seeded random images for benchmarks and tests without data
 * (`synthetic:HxWxC[:N[:SEED]]`).
 *
 * Image i is drawn from its own generator, seeded by (SEED, 2 i + split), so an image does not
 * depend on N and the test split never repeats a train image. Each image is a smooth field a
 * flow can learn something from: a base color per channel, a linear gradient across the image,
 * and one to three Gaussian blobs of random center, radius and (signed) color, summed and
 * quantized as floor(256 v) clamped to 0..255:
 *   v(y, x, c) = base_c + gx_c (x/W - 1/2) + gy_c (y/H - 1/2)
 *                + sum_b amp_bc exp(-((x - cx_b)^2 + (y - cy_b)^2) / (2 r_b^2))
 * The Gaussian is separable, so a blob costs one exp per row and per column.
 *
 * Not here: labels (a synthetic set has none), any resemblance to natural images.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cf_io_impl.h"

#define DEFAULT_COUNT 1000
#define MAX_BLOBS     3
/* Salt that keeps these streams apart from other users of the same seed. */
#define SYNTH_SALT 0x73796e7468657469ull

/* Parses decimal digits at *p (no sign, no spaces); advances *p. */
static bool parse_u64(const char **p, uint64_t *out)
{
    if (!isdigit((unsigned char)**p)) return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(*p, &end, 10);
    if (errno == ERANGE) return false;
    *p = end;
    *out = v;
    return true;
}

static void draw_image(uint8_t *dst, int H, int W, int C, uint64_t seed, uint64_t stream,
                       double *scratch)
{
    cf_rng r;
    cf_rng_seed(&r, seed ^ SYNTH_SALT, stream);
    double base[CF_DATA_MAX_CHANNELS], gx[CF_DATA_MAX_CHANNELS], gy[CF_DATA_MAX_CHANNELS];
    double amp[MAX_BLOBS][CF_DATA_MAX_CHANNELS];
    for (int c = 0; c < C; c++) {
        base[c] = 0.2 + 0.6 * cf_rng_uniform(&r);
        gx[c] = 0.6 * (cf_rng_uniform(&r) - 0.5);
        gy[c] = 0.6 * (cf_rng_uniform(&r) - 0.5);
    }
    int n_blobs = 1 + (int)cf_rng_below(&r, MAX_BLOBS);
    double *ex = scratch, *ey = scratch + MAX_BLOBS * W; /* (blobs, W) and (blobs, H) */
    double side = H < W ? H : W;
    for (int b = 0; b < n_blobs; b++) {
        double cx = W * cf_rng_uniform(&r), cy = H * cf_rng_uniform(&r);
        double radius = (0.08 + 0.25 * cf_rng_uniform(&r)) * side + 0.5;
        for (int c = 0; c < C; c++) amp[b][c] = 1.2 * (cf_rng_uniform(&r) - 0.5);
        for (int x = 0; x < W; x++)
            ex[b * W + x] = exp(-(x - cx) * (x - cx) / (2 * radius * radius));
        for (int y = 0; y < H; y++)
            ey[b * H + y] = exp(-(y - cy) * (y - cy) / (2 * radius * radius));
    }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < C; c++) {
                double v = base[c] + gx[c] * ((double)x / W - 0.5) + gy[c] * ((double)y / H - 0.5);
                for (int b = 0; b < n_blobs; b++) v += amp[b][c] * ex[b * W + x] * ey[b * H + y];
                double k = floor(256.0 * v);
                dst[((size_t)y * W + x) * C + c] = (uint8_t)(k < 0 ? 0 : k > 255 ? 255 : k);
            }
}

cf_status cf__data_load_synthetic(cf_dataset *ds, const char *args, bool test)
{
    uint64_t dims[3], count = DEFAULT_COUNT, seed = 0;
    const char *p = args;
    bool ok = parse_u64(&p, &dims[0]) && *p++ == 'x' && parse_u64(&p, &dims[1]) && *p++ == 'x' &&
              parse_u64(&p, &dims[2]);
    if (ok && *p == ':') {
        p++;
        ok = parse_u64(&p, &count);
        if (ok && *p == ':') {
            p++;
            ok = parse_u64(&p, &seed);
        }
    }
    if (!ok || *p != '\0')
        return cf_set_error(CF_ERR_ARG,
                            "synthetic:%s: expected HxWxC[:N[:SEED]] with decimal "
                            "numbers, e.g. synthetic:32x32x3:1000",
                            args);
    char *name = cf__strprintf("synthetic:%s", args);
    if (!name) return cf_set_error(CF_ERR_NOMEM, "synthetic:%s: out of memory", args);
    int64_t big = (int64_t)1 << 40; /* keeps the values in range for the checks below */
    cf_status st = cf__data_check_shape(name, count > (uint64_t)big ? big : (int64_t)count,
                                        dims[0] > (uint64_t)big ? big : (int64_t)dims[0],
                                        dims[1] > (uint64_t)big ? big : (int64_t)dims[1],
                                        dims[2] > (uint64_t)big ? big : (int64_t)dims[2]);
    if (st == CF_OK)
        st = cf__data_alloc(ds, name, (int64_t)count, (int)dims[0], (int)dims[1], (int)dims[2],
                            false);
    double *scratch = NULL;
    if (st == CF_OK) {
        scratch = malloc(MAX_BLOBS * (dims[0] + dims[1]) * sizeof *scratch);
        if (!scratch) st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory", name);
    }
    for (int64_t i = 0; st == CF_OK && i < ds->count; i++)
        draw_image(ds->pixels + (size_t)i * ds->image_bytes, ds->height, ds->width, ds->channels,
                   seed, 2 * (uint64_t)i + (test ? 1 : 0), scratch);
    free(scratch);
    free(name);
    return st;
}
