/* data_png.c: a folder of PNG images as a data set (`png:DIR`), and the PNG decoder behind it.
 *
 * Every file of DIR whose name ends in ".png" (any case) and does not start with '.' is read,
 * in strcmp order of the names. The first image fixes the shape; every other must match it.
 * Accepted: 8-bit gray (C = 1), 8-bit RGB (C = 3), palette images (expanded to RGB; a palette's
 * transparency is ignored). Refused, with the file's name: 16-bit or 1/2/4-bit gray or RGB
 * samples, alpha channels, anything libpng cannot decode, and headers whose size the file could
 * not hold (raw rows more than deflate's 1032:1 ratio above the file's size).
 *
 * Files are decoded from memory (cf__png_decode), so one decoder serves the loader and fuzzing.
 * libpng reports errors by longjmp: the decoder keeps everything a jump could lose behind a
 * pointer into its caller's frame.
 *
 * Not here: writing PNG (image.c), gamma or color-space handling (samples are taken as stored).
 */
#include <dirent.h>
#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cf_io_impl.h"

/* A PNG file is read whole; larger files are refused. */
#define MAX_FILE_BYTES (1ll << 28)
/* And a folder may hold at most this many images. */
#define MAX_FILES (1 << 24)
/* deflate cannot expand data by more than this factor. */
#define DEFLATE_MAX_RATIO 1032

typedef struct png_source {
    const uint8_t *data;
    size_t size, pos;
    char message[256]; /* libpng's error, filled before its longjmp */
} png_source;

static void on_error(png_structp png, png_const_charp msg)
{
    png_source *src = png_get_error_ptr(png);
    snprintf(src->message, sizeof src->message, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png, (void)msg;
}

static void on_read(png_structp png, png_bytep dst, png_size_t n)
{
    png_source *src = png_get_io_ptr(png);
    if (n > src->size - src->pos) png_error(png, "truncated: the file ends inside the image");
    memcpy(dst, src->data + src->pos, n);
    src->pos += n;
}

static const char *channels_name(int c)
{
    return c == 1 ? "gray" : "RGB";
}

/* The decoding proper; setjmp lives here, and all it needs after a jump is behind src. */
static cf_status decode(png_source *src, const char *name, int *h, int *w, int *c, uint8_t *dst)
{
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, src, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return cf_set_error(CF_ERR_NOMEM, "%s: out of memory starting libpng", name);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        return cf_set_error(CF_ERR_FORMAT, "%s: cannot decode the PNG: %s", name, src->message);
    }
    png_set_user_limits(png, CF_DATA_MAX_SIDE, CF_DATA_MAX_SIDE);
    png_set_read_fn(png, src, on_read);
    png_read_info(png, info);
    png_uint_32 width, height;
    int depth, color;
    png_get_IHDR(png, info, &width, &height, &depth, &color, NULL, NULL, NULL);
    int channels = 0;
    cf_status st = CF_OK;
    if (color == PNG_COLOR_TYPE_PALETTE) {
        channels = 3;
        png_set_palette_to_rgb(png);
        /* palette_to_rgb also turns a tRNS chunk into an alpha channel: drop it again */
        png_set_strip_alpha(png);
    } else if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_RGB) {
        channels = color == PNG_COLOR_TYPE_GRAY ? 1 : 3;
        if (depth != 8)
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: %s with %d-bit samples (only 8-bit images "
                              "are supported)",
                              name, channels_name(channels), depth);
    } else {
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: has an alpha channel (only gray or RGB images "
                          "are supported)",
                          name);
    }
    uint64_t raw = (uint64_t)height * ((uint64_t)png_get_rowbytes(png, info) + 1);
    if (st == CF_OK && raw > (uint64_t)src->size * DEFLATE_MAX_RATIO + 65536)
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: the header says %ux%u pixels (HxW), more than a "
                          "file of %zu bytes can hold",
                          name, (unsigned)height, (unsigned)width, src->size);
    if (st == CF_OK) st = cf__data_check_shape(name, 1, height, width, channels);
    if (st == CF_OK && !dst) {
        *h = (int)height;
        *w = (int)width;
        *c = channels;
    } else if (st == CF_OK) {
        if ((int)height != *h || (int)width != *w || channels != *c)
            st = cf_set_error(CF_ERR_FORMAT, "%s: %ux%u %s, expected %dx%d %s", name,
                              (unsigned)height, (unsigned)width, channels_name(channels), *h, *w,
                              channels_name(*c));
    }
    if (st == CF_OK && dst) {
        int passes = png_set_interlace_handling(png);
        png_read_update_info(png, info);
        size_t rowbytes = png_get_rowbytes(png, info);
        if (rowbytes != (size_t)width * (size_t)channels) {
            st = cf_set_error(CF_ERR_FORMAT, "%s: rows of %zu bytes after decoding, expected %zu",
                              name, rowbytes, (size_t)width * (size_t)channels);
        } else {
            for (int pass = 0; pass < passes; pass++)
                for (png_uint_32 y = 0; y < height; y++)
                    png_read_row(png, dst + (size_t)y * rowbytes, NULL);
            png_read_end(png, NULL);
        }
    }
    png_destroy_read_struct(&png, &info, NULL);
    return st;
}

cf_status cf__png_decode(const char *name, const uint8_t *data, size_t size, int *h, int *w, int *c,
                         uint8_t *dst)
{
    if (size < 8 || png_sig_cmp(data, 0, 8) != 0)
        return cf_set_error(CF_ERR_FORMAT,
                            "%s: not a PNG file (its first 8 bytes are not the "
                            "PNG signature)",
                            name);
    png_source src = {.data = data, .size = size};
    return decode(&src, name, h, w, c, dst);
}

/* ---- the folder ------------------------------------------------------------------------- */

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_png_name(const char *name)
{
    size_t n = strlen(name);
    return name[0] != '.' && n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

/* The sorted names of the folder's PNG files (owned, each and the array). */
static cf_status list_pngs(const char *dir, char ***names_out, int *count_out)
{
    *names_out = NULL;
    *count_out = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return cf_set_error(CF_ERR_NOT_FOUND, "png:%s: no such folder", dir);
        if (errno == ENOTDIR)
            return cf_set_error(CF_ERR_IO,
                                "png:%s: is not a folder (png:DIR names a folder of "
                                "PNG files)",
                                dir);
        return cf_set_error(CF_ERR_IO, "png:%s: cannot list the folder (%s)", dir, strerror(errno));
    }
    char **names = NULL;
    int count = 0, cap = 0;
    cf_status st = CF_OK;
    struct dirent *e;
    while (st == CF_OK && (e = readdir(d)) != NULL) {
        if (!is_png_name(e->d_name)) continue;
        if (count == MAX_FILES) {
            st = cf_set_error(CF_ERR_FORMAT, "png:%s: more than %d PNG files", dir, MAX_FILES);
            break;
        }
        if (count == cap) {
            cap = cap ? 2 * cap : 256;
            char **grown = realloc(names, (size_t)cap * sizeof *names);
            if (!grown) {
                st = cf_set_error(CF_ERR_NOMEM, "png:%s: out of memory listing files", dir);
                break;
            }
            names = grown;
        }
        names[count] = strdup(e->d_name);
        if (!names[count]) {
            st = cf_set_error(CF_ERR_NOMEM, "png:%s: out of memory listing files", dir);
            break;
        }
        count++;
    }
    closedir(d);
    if (st == CF_OK && count == 0)
        st = cf_set_error(CF_ERR_NOT_FOUND, "png:%s: no .png files in the folder", dir);
    if (st != CF_OK) {
        for (int i = 0; i < count; i++) free(names[i]);
        free(names);
        return st;
    }
    qsort(names, (size_t)count, sizeof *names, compare_names);
    *names_out = names;
    *count_out = count;
    return CF_OK;
}

cf_status cf__data_load_png(cf_dataset *ds, const char *dir)
{
    char **names;
    int count;
    cf_status st = list_pngs(dir, &names, &count);
    if (st != CF_OK) return st;
    char *first = NULL;
    for (int i = 0; i < count && st == CF_OK; i++) {
        char *path = cf__strprintf("%s/%s", dir, names[i]);
        if (!path) {
            st = cf_set_error(CF_ERR_NOMEM, "png:%s: out of memory", dir);
            break;
        }
        uint8_t *data = NULL;
        size_t size = 0;
        int h, w, c;
        st = cf__read_file(path, MAX_FILE_BYTES, &data, &size);
        if (st == CF_OK) st = cf__png_decode(path, data, size, &h, &w, &c, NULL);
        if (st == CF_OK && i == 0) {
            first = path;
            st = cf__data_check_shape(path, count, h, w, c);
            if (st == CF_OK) st = cf__data_alloc(ds, path, count, h, w, c, false);
        } else if (st == CF_OK && (h != ds->height || w != ds->width || c != ds->channels)) {
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: %dx%d %s, but the first image %s is %dx%d %s "
                              "(HxW): all images of png:DIR must have one size "
                              "and depth",
                              path, h, w, channels_name(c), first, ds->height, ds->width,
                              channels_name(ds->channels));
        }
        if (st == CF_OK)
            st = cf__png_decode(path, data, size, &ds->height, &ds->width, &ds->channels,
                                ds->pixels + (size_t)i * ds->image_bytes);
        free(data);
        if (path != first) free(path);
    }
    free(first);
    for (int i = 0; i < count; i++) free(names[i]);
    free(names);
    return st;
}
