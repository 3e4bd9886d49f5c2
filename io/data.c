/* data.c: the data set object: parsing a spec into one of the loaders, the accessors, the size
 * limits every loader applies, and dequantization of images into float tensors.
 *
 * Legend: N images, H, W, C image shape, k a pixel value in 0..255, x its dequantized value.
 *
 * Not here: the file formats (data_idx.c, data_cifar10.c, data_png.c, data_synthetic.c) and
 * shuffling or batching (data_batcher.c).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cf_io_impl.h"

#define FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

#define SPEC_HELP                                                                                  \
    "idx:FILE, fashion-mnist[:DIR], cifar10:DIR, png:DIR or synthetic:HxWxC[:N[:SEED]]"

cf_status cf__data_check_shape(const char *file, int64_t n, int64_t h, int64_t w, int64_t c)
{
    if (n <= 0) return cf_set_error(CF_ERR_FORMAT, "%s: holds no images", file);
    if (h <= 0 || w <= 0 || h > CF_DATA_MAX_SIDE || w > CF_DATA_MAX_SIDE)
        return cf_set_error(CF_ERR_FORMAT,
                            "%s: images of %lldx%lld pixels (each side must be "
                            "1 to %d)",
                            file, (long long)h, (long long)w, CF_DATA_MAX_SIDE);
    if (c <= 0 || c > CF_DATA_MAX_CHANNELS)
        return cf_set_error(CF_ERR_FORMAT, "%s: %lld channels (1 to %d are supported)", file,
                            (long long)c, CF_DATA_MAX_CHANNELS);
    int64_t image = h * w * c;
    if (image > CF_DATA_MAX_IMAGE_BYTES)
        return cf_set_error(CF_ERR_FORMAT,
                            "%s: images of %lldx%lldx%lld bytes exceed the limit "
                            "of %lld bytes per image",
                            file, (long long)h, (long long)w, (long long)c,
                            (long long)CF_DATA_MAX_IMAGE_BYTES);
    if (n > CF_DATA_MAX_BYTES / image)
        return cf_set_error(CF_ERR_FORMAT,
                            "%s: %lld images of %lld bytes exceed the limit of "
                            "%lld bytes per data set",
                            file, (long long)n, (long long)image, (long long)CF_DATA_MAX_BYTES);
    return CF_OK;
}

cf_status cf__data_alloc(cf_dataset *ds, const char *file, int64_t n, int h, int w, int c,
                         bool with_labels)
{
    CF_ASSERT(!ds->pixels && !ds->labels, "cf__data_alloc on a filled data set");
    size_t image = (size_t)h * (size_t)w * (size_t)c;
    ds->pixels = malloc((size_t)n * image);
    ds->labels = with_labels ? malloc((size_t)n) : NULL;
    if (!ds->pixels || (with_labels && !ds->labels))
        return cf_set_error(CF_ERR_NOMEM, "%s: out of memory for %lld images of %dx%dx%d", file,
                            (long long)n, h, w, c);
    ds->count = n;
    ds->height = h;
    ds->width = w;
    ds->channels = c;
    ds->image_bytes = image;
    return CF_OK;
}

void cf_dataset_free(cf_dataset *ds)
{
    if (!ds) return;
    free(ds->source);
    free(ds->pixels);
    free(ds->labels);
    free(ds);
}

/* Splits "name:rest" and dispatches. */
static cf_status load_spec(cf_dataset *ds, const char *spec, bool test)
{
    const char *colon = strchr(spec, ':');
    size_t len = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *arg = colon ? colon + 1 : NULL;
#define IS(kind) (len == strlen(kind) && strncmp(spec, kind, len) == 0)
    if (IS("fashion-mnist")) {
        return cf__data_load_fashion_mnist(ds, arg && arg[0] ? arg : FASHION_MNIST_DIR, test);
    }
    if (!IS("idx") && !IS("cifar10") && !IS("png") && !IS("synthetic"))
        return cf_set_error(CF_ERR_ARG, "data '%s': unknown kind (expected " SPEC_HELP ")", spec);
    if (!arg || !arg[0])
        return cf_set_error(CF_ERR_ARG,
                            "data '%s': missing the file or folder after '%.*s:' "
                            "(expected " SPEC_HELP ")",
                            spec, (int)len, spec);
    if (IS("idx")) return cf__data_load_idx(ds, arg);
    if (IS("cifar10")) return cf__data_load_cifar10(ds, arg, test);
    if (IS("png")) return cf__data_load_png(ds, arg);
    return cf__data_load_synthetic(ds, arg, test);
#undef IS
}

cf_dataset *cf_dataset_open(const char *spec, const char *split)
{
    CF_ASSERT(spec, "cf_dataset_open: NULL spec");
    if (!split) split = "train";
    if (strcmp(split, "train") != 0 && strcmp(split, "test") != 0) {
        cf_set_error(CF_ERR_ARG, "data '%s': unknown split '%s' (expected train or test)", spec,
                     split);
        return NULL;
    }
    cf_dataset *ds = calloc(1, sizeof *ds);
    if (ds) ds->source = cf__strprintf("%s (%s)", spec, split);
    if (!ds || !ds->source) {
        cf_dataset_free(ds);
        cf_set_error(CF_ERR_NOMEM, "data '%s': out of memory", spec);
        return NULL;
    }
    if (load_spec(ds, spec, strcmp(split, "test") == 0) != CF_OK) {
        cf_dataset_free(ds);
        return NULL;
    }
    CF_ASSERT(ds->pixels && ds->count > 0, "loader for '%s' returned no images", spec);
    ds->n_classes = 0;
    if (ds->labels)
        for (int64_t i = 0; i < ds->count; i++)
            if (ds->labels[i] + 1 > ds->n_classes) ds->n_classes = ds->labels[i] + 1;
    return ds;
}

int64_t cf_dataset_count(const cf_dataset *ds)
{
    return ds->count;
}

void cf_dataset_shape(const cf_dataset *ds, int *height, int *width, int *channels)
{
    if (height) *height = ds->height;
    if (width) *width = ds->width;
    if (channels) *channels = ds->channels;
}

const uint8_t *cf_dataset_image(const cf_dataset *ds, int64_t i)
{
    CF_ASSERT(i >= 0 && i < ds->count, "image %lld of %lld", (long long)i, (long long)ds->count);
    return ds->pixels + (size_t)i * ds->image_bytes;
}

int cf_dataset_label(const cf_dataset *ds, int64_t i)
{
    CF_ASSERT(i >= 0 && i < ds->count, "label %lld of %lld", (long long)i, (long long)ds->count);
    return ds->labels ? ds->labels[i] : -1;
}

bool cf_dataset_has_labels(const cf_dataset *ds)
{
    return ds->labels != NULL;
}

int cf_dataset_num_classes(const cf_dataset *ds)
{
    return ds->n_classes;
}

const char *cf_dataset_source(const cf_dataset *ds)
{
    return ds->source;
}

/* ---- dequantization ---------------------------------------------------------------------- */

/* Fills x's n images from the set's images idx[0..n) (or first, first + 1, ... when idx is
 * NULL). Uniform noise: x = (k + u) / 256 - 0.5 with u in [0, 1) from rng, computed in double;
 * rounding (to double near u = 1, to float more often) could reach (k + 1) / 256 - 0.5, which
 * is exactly representable, so such a value steps down to the next smaller one. */
static void dequantize(const cf_dataset *ds, const int64_t *idx, int64_t first, int64_t n,
                       cf_tensor *x, cf_dequant dequant, cf_rng *rng)
{
    size_t D = ds->image_bytes;
    for (int64_t b = 0; b < n; b++) {
        const uint8_t *k = ds->pixels + (size_t)(idx ? idx[b] : first + b) * D;
        if (x->dtype == CF_F64) {
            double *dst = (double *)x->data + (size_t)b * D;
            if (dequant == CF_DEQUANT_MIDPOINT) {
                for (size_t j = 0; j < D; j++) dst[j] = (k[j] + 0.5) / 256.0 - 0.5;
                continue;
            }
            for (size_t j = 0; j < D; j++) {
                double hi = (k[j] + 1) / 256.0 - 0.5;
                double v = (k[j] + cf_rng_uniform(rng)) / 256.0 - 0.5;
                dst[j] = v < hi ? v : nextafter(hi, -1.0);
            }
        } else {
            float *dst = (float *)x->data + (size_t)b * D;
            if (dequant == CF_DEQUANT_MIDPOINT) {
                for (size_t j = 0; j < D; j++) dst[j] = (float)((k[j] + 0.5) / 256.0 - 0.5);
                continue;
            }
            for (size_t j = 0; j < D; j++) {
                float hi = (float)((k[j] + 1) / 256.0 - 0.5);
                float v = (float)((k[j] + cf_rng_uniform(rng)) / 256.0 - 0.5);
                dst[j] = v < hi ? v : nextafterf(hi, -1.0f);
            }
        }
    }
}

/* x must be (n, H, W, C) of a float dtype; the message names `who`. */
cf_status cf__data_check_batch(const cf_dataset *ds, const cf_tensor *x, int64_t n, const char *who)
{
    char buf[96];
    bool ok = (x->dtype == CF_F32 || x->dtype == CF_F64) && x->ndim == 4 &&
              (n < 0 || x->shape[0] == n) && x->shape[0] > 0 && x->shape[1] == ds->height &&
              x->shape[2] == ds->width && x->shape[3] == ds->channels;
    if (!ok) {
        if (n < 0)
            return cf_set_error(CF_ERR_SHAPE,
                                "%s: x is %s, expected (n, %d, %d, %d) f32 or f64 "
                                "for %s",
                                who, cf_tensor_describe(x, buf, sizeof buf), ds->height, ds->width,
                                ds->channels, ds->source);
        return cf_set_error(CF_ERR_SHAPE,
                            "%s: x is %s, expected (%lld, %d, %d, %d) f32 or f64 "
                            "for %s",
                            who, cf_tensor_describe(x, buf, sizeof buf), (long long)n, ds->height,
                            ds->width, ds->channels, ds->source);
    }
    return CF_OK;
}

void cf__data_dequantize(const cf_dataset *ds, const int64_t *idx, int64_t n, cf_tensor *x,
                         cf_dequant dequant, cf_rng *rng)
{
    dequantize(ds, idx, 0, n, x, dequant, rng);
}

cf_status cf_dataset_fill(const cf_dataset *ds, int64_t first, cf_tensor *x, cf_dequant dequant,
                          cf_rng *rng)
{
    CF_ASSERT(dequant == CF_DEQUANT_MIDPOINT || rng, "cf_dataset_fill: uniform noise needs rng");
    cf_status st = cf__data_check_batch(ds, x, -1, "cf_dataset_fill");
    if (st != CF_OK) return st;
    int64_t n = x->shape[0];
    if (first < 0 || first > ds->count - n)
        return cf_set_error(CF_ERR_ARG,
                            "cf_dataset_fill: images %lld to %lld of %s, which has "
                            "%lld",
                            (long long)first, (long long)(first + n - 1), ds->source,
                            (long long)ds->count);
    dequantize(ds, NULL, first, n, x, dequant, rng);
    return CF_OK;
}
