/* cf_io_impl.h: internals shared by the io/ module: the data set's layout, the loaders behind
 * cf_dataset_open, a PNG decoder over a memory buffer (also an entry point for fuzzing), and
 * the file helpers every writer uses (temporary name, fsync, rename into place).
 *
 * Not a public header: nothing outside io/ and its tests includes it.
 */
#ifndef CF_IO_IMPL_H
#define CF_IO_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_data.h"

struct cf_dataset {
    char *source;  /* "idx:/path (train)", owned */
    int64_t count; /* N */
    int height, width, channels;
    size_t image_bytes; /* H * W * C */
    uint8_t *pixels;    /* (N, H, W, C), owned */
    uint8_t *labels;    /* (N) or NULL, owned */
    int n_classes;      /* 1 + largest label, 0 without labels */
};

/* Checks a shape against the CF_DATA_MAX_* limits; the message names `file`. */
cf_status cf__data_check_shape(const char *file, int64_t n, int64_t h, int64_t w, int64_t c);
/* Sets the shape and allocates pixels (and labels when asked) for n images, already checked
 * with cf__data_check_shape. CF_ERR_NOMEM names `file`. */
cf_status cf__data_alloc(cf_dataset *ds, const char *file, int64_t n, int h, int w, int c,
                         bool with_labels);

/* CF_OK when x is (n, H, W, C) of ds's image shape, f32 or f64 (n < 0: any n > 0); else
 * CF_ERR_SHAPE with a message naming `who`. */
cf_status cf__data_check_batch(const cf_dataset *ds, const cf_tensor *x, int64_t n,
                               const char *who);
/* Fills x's first n images from the set's images idx[0..n), dequantized (see cf_data.h). */
void cf__data_dequantize(const cf_dataset *ds, const int64_t *idx, int64_t n, cf_tensor *x,
                         cf_dequant dequant, cf_rng *rng);

/* The loaders: each fills an empty data set (source already set) or fails with a message;
 * on failure the caller frees whatever the set holds. */
cf_status cf__data_load_idx(cf_dataset *ds, const char *path);
cf_status cf__data_load_fashion_mnist(cf_dataset *ds, const char *dir, bool test);
cf_status cf__data_load_cifar10(cf_dataset *ds, const char *dir, bool test);
cf_status cf__data_load_png(cf_dataset *ds, const char *dir);
cf_status cf__data_load_synthetic(cf_dataset *ds, const char *args, bool test);

/* Decodes the PNG in data[0..size) named `name` (for messages). With dst NULL it reads the
 * header only and stores the image's height, width and channels (1 or 3) in *h, *w, *c. With
 * dst non-NULL the image must have exactly that shape, and its H*W*C bytes go to dst. Refuses
 * 16-bit samples, alpha channels, and headers claiming more pixels than the bytes can hold. */
cf_status cf__png_decode(const char *name, const uint8_t *data, size_t size, int *h, int *w, int *c,
                         uint8_t *dst);

/* ---- files ---------------------------------------------------------------------------- */

/* printf into a new string (owned, free()); NULL when out of memory. */
char *cf__strprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Size of a regular file; CF_ERR_NOT_FOUND, or CF_ERR_IO for a directory or unreadable path,
 * with a message naming the path. */
cf_status cf__file_size(const char *path, int64_t *size);

/* Reads a whole regular file of at most max_bytes into a new buffer (owned, free()). */
cf_status cf__read_file(const char *path, size_t max_bytes, uint8_t **data, size_t *size);

/* The temporary name writers use beside path: "<path>.tmp.<pid>" (owned, free()). */
char *cf__tmp_path(const char *path);

/* Writes data to "<path>.tmp.<pid>", fsyncs it and renames it over path (then fsyncs the
 * folder, best effort). On failure the temporary is removed, any file at path is untouched,
 * and the message names path and the system's reason. First it removes the temporaries of
 * path that writers killed earlier left behind ("<path>.tmp.<pid>" whose pid no longer
 * exists). */
cf_status cf__write_file_atomic(const char *path, const void *data, size_t size);

#endif
