/* image.c: PNG grids of images (see cf_image.h).
 *
 * Legend: B images of H x W x C, a grid of ncols x rows cells, `border` pixels between cells.
 * The grid is assembled in memory as 8-bit rows and encoded by libpng into a memory buffer,
 * which cf__write_file_atomic writes, flushes and renames into place. libpng reports errors by
 * longjmp; the encoder keeps everything a jump could lose behind a pointer into its caller's
 * frame.
 *
 * Not here: reading PNG (data_png.c), text chunks or other metadata.
 */
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_image.h"
#include "cf_io_impl.h"

#define MAX_BORDER   16
#define BORDER_VALUE 255
/* The assembled grid may take at most this much memory. */
#define MAX_GRID_BYTES (1ll << 30)

typedef struct png_sink {
    uint8_t *out; /* the encoded file, owned (grown as libpng writes) */
    size_t size, cap;
    const uint8_t *pixels; /* (height, width, C) */
    uint32_t width, height;
    int channels;
    char message[256]; /* libpng's error, filled before its longjmp */
} png_sink;

static void on_error(png_structp png, png_const_charp msg)
{
    png_sink *sink = png_get_error_ptr(png);
    snprintf(sink->message, sizeof sink->message, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png, (void)msg;
}

static void on_write(png_structp png, png_bytep data, png_size_t n)
{
    png_sink *sink = png_get_io_ptr(png);
    if (n > sink->cap - sink->size) {
        size_t cap = sink->cap ? sink->cap : 1 << 16;
        while (cap - sink->size < n) cap *= 2;
        uint8_t *grown = realloc(sink->out, cap);
        if (!grown) png_error(png, "out of memory");
        sink->out = grown;
        sink->cap = cap;
    }
    memcpy(sink->out + sink->size, data, n);
    sink->size += n;
}

static void on_flush(png_structp png)
{
    (void)png;
}

/* Encodes sink's pixels into sink->out; the message names path. */
static cf_status encode(png_sink *sink, const char *path)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, sink, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return cf_set_error(CF_ERR_NOMEM, "%s: out of memory starting libpng", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return cf_set_error(CF_ERR_NOMEM, "%s: encoding the PNG failed: %s", path, sink->message);
    }
    png_set_write_fn(png, sink, on_write, on_flush);
    png_set_IHDR(png, info, sink->width, sink->height, 8,
                 sink->channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    size_t rowbytes = (size_t)sink->width * (size_t)sink->channels;
    for (uint32_t y = 0; y < sink->height; y++)
        png_write_row(png, sink->pixels + (size_t)y * rowbytes);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return CF_OK;
}

static uint8_t to_byte(double x)
{
    double k = floor((x + 0.5) * 256.0);
    return !(k >= 0) ? 0 : k > 255 ? 255 : (uint8_t)k;
}

cf_status cf_image_write_grid(const char *path, const cf_tensor *images, int ncols, int border)
{
    CF_ASSERT(path && images, "cf_image_write_grid: NULL argument");
    char buf[96];
    if ((images->dtype != CF_F32 && images->dtype != CF_F64) || images->ndim != 4 ||
        images->shape[0] < 1 || (images->shape[3] != 1 && images->shape[3] != 3))
        return cf_set_error(CF_ERR_SHAPE,
                            "%s: images are %s, expected (B, H, W, C) f32 or f64 "
                            "with C 1 or 3",
                            path, cf_tensor_describe(images, buf, sizeof buf));
    if (border < 0 || border > MAX_BORDER)
        return cf_set_error(CF_ERR_ARG, "%s: border of %d pixels (0 to %d)", path, border,
                            MAX_BORDER);
    int64_t B = images->shape[0], H = images->shape[1], W = images->shape[2];
    int C = (int)images->shape[3];
    if (ncols <= 0) ncols = (int)ceil(sqrt((double)B));
    if (ncols > B) ncols = (int)B;
    int64_t rows = (B + ncols - 1) / ncols;
    int64_t width = ncols * (W + border) + border, height = rows * (H + border) + border;
    if (width > PNG_UINT_31_MAX || height > PNG_UINT_31_MAX || width * height * C > MAX_GRID_BYTES)
        return cf_set_error(CF_ERR_ARG, "%s: a grid of %lldx%lld pixels is too large", path,
                            (long long)height, (long long)width);
    uint8_t *grid = malloc((size_t)(width * height * C));
    if (!grid) return cf_set_error(CF_ERR_NOMEM, "%s: out of memory for the grid", path);
    memset(grid, BORDER_VALUE, (size_t)(width * height * C));
    for (int64_t b = 0; b < B; b++) {
        int64_t y0 = border + (b / ncols) * (H + border), x0 = border + (b % ncols) * (W + border);
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                for (int c = 0; c < C; c++) {
                    int64_t src = ((b * H + y) * W + x) * C + c;
                    grid[((y0 + y) * width + x0 + x) * C + c] = to_byte(cf_tensor_get(images, src));
                }
    }

    png_sink sink = {
        .pixels = grid, .width = (uint32_t)width, .height = (uint32_t)height, .channels = C};
    cf_status st = encode(&sink, path);
    free(grid);
    if (st == CF_OK) st = cf__write_file_atomic(path, sink.out, sink.size);
    free(sink.out);
    return st;
}
