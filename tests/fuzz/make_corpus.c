/* make_corpus.c: writes the seed corpus of the fuzzing entry points, made by the project
 * itself: valid idx files (plain and gzip), CIFAR-10 record files, PNG folders, real
 * checkpoints of the tiny flow (cf_checkpoint_save) and command lines, plus truncated and
 * otherwise damaged variants. Each seed is in its entry's input layout (see fuzz_<name>.c).
 *
 *   fuzz_make_corpus OUT     writes OUT/seeds/<harness>/<seed> and makes the empty folders
 *                            OUT/work/<harness> that libFuzzer adds its finds to
 *
 * Everything is deterministic: the same files on every run.
 */
#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "fuzz_common.h"

static const char *harnesses[] = {"idx", "cifar10", "png", "checkpoint", "cli"};
static char out_dir[2048];

/* A growable byte buffer. */
typedef struct bytes {
    uint8_t *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        b->p = realloc(b->p, cap);
        CF_FUZZ_CHECK(b->p, "out of memory");
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put_byte(bytes *b, uint8_t v)
{
    put(b, &v, 1);
}

static void put_u32le(bytes *b, uint32_t v)
{
    uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, le, 4);
}

static void put_u32be(bytes *b, uint32_t v)
{
    uint8_t be[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, be, 4);
}

static void make_dir(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        cf_fuzz_fail("cannot make %s: %s", path, strerror(errno));
}

static void seed(const char *harness, const char *name, const void *data, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/seeds/%s/%s", out_dir, harness, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0)
        cf_fuzz_fail("cannot write %s: %s", path, strerror(errno));
}

static void seed_bytes(const char *harness, const char *name, bytes *b)
{
    seed(harness, name, b->p, b->n);
    free(b->p);
    *b = (bytes){0};
}

/* gzip-compresses data into a new buffer. */
static bytes gzip(const uint8_t *data, size_t n)
{
    z_stream z = {0};
    CF_FUZZ_CHECK(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK,
                  "deflateInit2");
    bytes out = {0};
    size_t bound = deflateBound(&z, n) + 64;
    out.p = malloc(bound);
    CF_FUZZ_CHECK(out.p, "out of memory");
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)n;
    z.next_out = out.p;
    z.avail_out = (uInt)bound;
    CF_FUZZ_CHECK(deflate(&z, Z_FINISH) == Z_STREAM_END, "deflate");
    out.n = bound - z.avail_out;
    out.cap = bound;
    deflateEnd(&z);
    return out;
}

/* ---- idx ---------------------------------------------------------------------------------- */

static bytes idx_images(uint32_t n, uint32_t h, uint32_t w)
{
    bytes b = {0};
    put(&b, (uint8_t[]){0, 0, 8, 3}, 4);
    put_u32be(&b, n), put_u32be(&b, h), put_u32be(&b, w);
    for (uint32_t i = 0; i < n * h * w; i++) put_byte(&b, (uint8_t)(i * 37 + 11));
    return b;
}

static bytes idx_labels(uint32_t n)
{
    bytes b = {0};
    put(&b, (uint8_t[]){0, 0, 8, 1}, 4);
    put_u32be(&b, n);
    for (uint32_t i = 0; i < n; i++) put_byte(&b, (uint8_t)(i % 10));
    return b;
}

/* An idx entry input: flags, the images' length, images, labels. */
static void idx_seed(const char *name, unsigned flags, const uint8_t *images, size_t n_images,
                     const uint8_t *labels, size_t n_labels)
{
    bytes in = {0};
    put_byte(&in, (uint8_t)flags);
    put_u32le(&in, (uint32_t)n_images);
    put(&in, images, n_images);
    put(&in, labels, n_labels);
    seed_bytes("idx", name, &in);
}

static void idx_seeds(void)
{
    bytes im = idx_images(3, 4, 5), lb = idx_labels(3), lb2 = idx_labels(2);
    bytes gim = gzip(im.p, im.n), glb = gzip(lb.p, lb.n);
    idx_seed("plain_labels", 2, im.p, im.n, lb.p, lb.n);
    idx_seed("gzip_labels", 1 | 2 | 4, gim.p, gim.n, glb.p, glb.n);
    idx_seed("gzip_by_harness", 1 | 2 | 4 | 8 | 16, im.p, im.n, lb.p, lb.n);
    idx_seed("plain_no_labels", 0, im.p, im.n, NULL, 0);
    idx_seed("gzip_named_plain", 2 | 32, gim.p, gim.n, lb.p, lb.n);
    idx_seed("truncated_plain", 0, im.p, im.n - 7, NULL, 0);
    idx_seed("truncated_gzip", 1, gim.p, gim.n / 2, NULL, 0);
    idx_seed("header_only", 0, im.p, 16, NULL, 0);
    idx_seed("labels_mismatch", 2, im.p, im.n, lb2.p, lb2.n);
    idx_seed("labels_as_images", 0, lb.p, lb.n, NULL, 0);
    bytes big = idx_images(2, 28, 28);
    bytes gbig = gzip(big.p, big.n);
    idx_seed("gzip_28x28", 1, gbig.p, gbig.n, NULL, 0);
    free(im.p), free(lb.p), free(lb2.p), free(gim.p), free(glb.p), free(big.p), free(gbig.p);
}

/* ---- CIFAR-10 ----------------------------------------------------------------------------- */

static void put_records(bytes *b, int n, int first_label)
{
    for (int r = 0; r < n; r++) {
        put_byte(b, (uint8_t)((first_label + r) % 10));
        for (int k = 0; k < 3 * 32 * 32; k++) put_byte(b, (uint8_t)(k * 7 + r));
    }
}

/* A CIFAR-10 entry input: flags, then each file's length and bytes (records each, or explicit
 * bytes for the last file when tail is given). */
static void cifar_seed(const char *name, unsigned flags, int n_files, const int *records,
                       int bad_label, int cut)
{
    bytes in = {0};
    put_byte(&in, (uint8_t)flags);
    for (int f = 0; f < n_files; f++) {
        bytes file = {0};
        put_records(&file, records[f], f);
        if (bad_label && f == n_files - 1) file.p[0] = (uint8_t)bad_label;
        if (cut && f == n_files - 1) file.n -= (size_t)cut;
        put_u32le(&in, (uint32_t)file.n);
        put(&in, file.p, file.n);
        free(file.p);
    }
    seed_bytes("cifar10", name, &in);
}

static void cifar_seeds(void)
{
    static const int ones[5] = {1, 1, 1, 1, 1}, two[1] = {2};
    cifar_seed("test_two_records", 1, 1, two, 0, 0);
    cifar_seed("train_five_files", 0, 5, ones, 0, 0);
    cifar_seed("train_archive_folder", 2, 5, ones, 0, 0);
    cifar_seed("test_archive_folder", 1 | 2, 1, two, 0, 0);
    cifar_seed("test_truncated_record", 1, 1, two, 0, 3000);
    cifar_seed("test_label_ten", 1, 1, two, 10, 0);
    cifar_seed("train_third_missing", 4 << 2, 5, ones, 0, 0);
}

/* ---- PNG ---------------------------------------------------------------------------------- */

static void on_write(png_structp png, png_bytep data, png_size_t n)
{
    put(png_get_io_ptr(png), data, n);
}

static void on_flush(png_structp png)
{
    (void)png;
}

/* Appends a PNG of w x h pixels (color type, bit depth) to b; palette images get a palette of
 * 16 entries (and a transparency chunk when trns). */
static void put_png(bytes *b, int w, int h, int color, int depth, bool interlaced, bool trns)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    CF_FUZZ_CHECK(png && info, "libpng");
    if (setjmp(png_jmpbuf(png))) cf_fuzz_fail("libpng failed writing a seed");
    png_set_write_fn(png, b, on_write, on_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color,
                 interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_color palette[16];
        for (int i = 0; i < 16; i++)
            palette[i] =
                (png_color){(png_byte)(i * 16), (png_byte)(255 - i * 16), (png_byte)(i * 5)};
        png_set_PLTE(png, info, palette, 16);
        if (trns) {
            png_byte alpha[4] = {0, 64, 128, 255};
            png_set_tRNS(png, info, alpha, 4, NULL);
        }
    }
    png_write_info(png, info);
    int channels = color == PNG_COLOR_TYPE_RGB         ? 3
                   : color == PNG_COLOR_TYPE_RGB_ALPHA ? 4
                   : color == PNG_COLOR_TYPE_GA        ? 2
                                                       : 1;
    size_t rowbytes = ((size_t)w * (size_t)channels * (size_t)depth + 7) / 8;
    uint8_t *row = malloc(rowbytes);
    CF_FUZZ_CHECK(row, "out of memory");
    int passes = png_set_interlace_handling(png);
    for (int pass = 0; pass < passes; pass++)
        for (int y = 0; y < h; y++) {
            for (size_t k = 0; k < rowbytes; k++) {
                row[k] = (uint8_t)(k * 13 + (size_t)y * 31);
                if (color == PNG_COLOR_TYPE_PALETTE && depth == 8) row[k] %= 16;
            }
            png_write_row(png, row);
        }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(row);
}

static void png_seed(const char *name, int w, int h, int color, int depth, bool interlaced,
                     bool trns)
{
    bytes b = {0};
    put_png(&b, w, h, color, depth, interlaced, trns);
    seed_bytes("png", name, &b);
}

static void png_seeds(void)
{
    png_seed("gray", 6, 5, PNG_COLOR_TYPE_GRAY, 8, false, false);
    png_seed("rgb", 4, 4, PNG_COLOR_TYPE_RGB, 8, false, false);
    png_seed("palette_4bit", 5, 3, PNG_COLOR_TYPE_PALETTE, 4, false, false);
    png_seed("palette_trns", 5, 3, PNG_COLOR_TYPE_PALETTE, 8, false, true);
    png_seed("rgb_interlaced", 7, 9, PNG_COLOR_TYPE_RGB, 8, true, false);
    png_seed("gray_16bit", 3, 3, PNG_COLOR_TYPE_GRAY, 16, false, false);
    png_seed("gray_2bit", 9, 2, PNG_COLOR_TYPE_GRAY, 2, false, false);
    png_seed("rgba", 3, 3, PNG_COLOR_TYPE_RGB_ALPHA, 8, false, false);
    bytes b = {0};
    put_png(&b, 6, 5, PNG_COLOR_TYPE_GRAY, 8, false, false);
    put_png(&b, 6, 5, PNG_COLOR_TYPE_GRAY, 8, true, false);
    seed_bytes("png", "two_gray", &b);
    put_png(&b, 6, 5, PNG_COLOR_TYPE_GRAY, 8, false, false);
    put_png(&b, 6, 5, PNG_COLOR_TYPE_RGB, 8, false, false);
    seed_bytes("png", "gray_then_rgb", &b);
    put_png(&b, 6, 5, PNG_COLOR_TYPE_GRAY, 8, false, false);
    b.n = b.n / 2;
    seed_bytes("png", "gray_truncated", &b);
}

/* ---- checkpoints -------------------------------------------------------------------------- */

/* Saves the tiny flow (parameters from seed) as a checkpoint and returns the file's bytes. */
static bytes checkpoint_bytes(cf_dtype dtype, bool with_opt, bool with_config)
{
    cf_flow_config cfg = cf_fuzz_tiny_config();
    cf_adam_opts o = cf_fuzz_tiny_adam();
    cf_flow *flow = cf_flow_new(&cfg, dtype);
    CF_FUZZ_CHECK(flow, "cannot build the tiny flow: %s", cf_last_error());
    cf_params *ps = cf_flow_params(flow);
    cf_rng rng;
    cf_rng_seed(&rng, 5, 0);
    for (int i = 0; i < cf_params_count(ps); i++)
        cf_tensor_fill_normal(cf_params_at(ps, i), &rng, 0.0, 0.1);
    cf_adam *opt = with_opt ? cf_adam_new(ps, &o) : NULL;
    CF_FUZZ_CHECK(!with_opt || opt, "cannot make the optimizer: %s", cf_last_error());
    cf_ckpt_meta meta = {
        .step = 12, .epoch = 1, .has_data_state = true, .data_state = {.epoch = 1, .position = 64}};
    cf_rng_seed(&meta.rng, 9, 0);
    cf_rng_seed(&meta.data_state.rng, 3, 1);
    if (with_config) {
        cf_ckpt_meta_set_string(&meta, "model", "glow-multiscale");
        cf_ckpt_meta_set_int(&meta, "height", cfg.height);
        cf_ckpt_meta_set_int(&meta, "width", cfg.width);
        cf_ckpt_meta_set_int(&meta, "channels", cfg.channels);
        cf_ckpt_meta_set_int(&meta, "levels", cfg.levels);
        cf_ckpt_meta_set_int(&meta, "depth", cfg.depth);
        cf_ckpt_meta_set_int(&meta, "hidden", cfg.hidden);
        cf_ckpt_meta_set_string(&meta, "coupling", "quad");
        cf_ckpt_meta_set_string(&meta, "conv", "cinc");
        cf_ckpt_meta_set_double(&meta, "lr", 1e-3);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.h5", out_dir);
    CF_FUZZ_CHECK(cf_checkpoint_save(path, ps, opt, &meta) == CF_OK, "save: %s", cf_last_error());
    bytes b = {0};
    FILE *f = fopen(path, "rb");
    CF_FUZZ_CHECK(f, "cannot read back %s", path);
    uint8_t buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) put(&b, buf, got);
    fclose(f);
    remove(path);
    cf_ckpt_meta_clear(&meta);
    cf_adam_free(opt);
    cf_flow_free(flow);
    return b;
}

static void checkpoint_seeds(void)
{
    bytes full = checkpoint_bytes(CF_F32, true, true);
    seed("checkpoint", "full", full.p, full.n);
    seed("checkpoint", "cut_superblock", full.p, 96);
    seed("checkpoint", "cut_2k", full.p, 2048);
    seed("checkpoint", "cut_half", full.p, full.n / 2);
    free(full.p);
    bytes plain = checkpoint_bytes(CF_F32, false, false);
    seed_bytes("checkpoint", "no_optimizer_no_config", &plain);
    bytes f64 = checkpoint_bytes(CF_F64, true, true);
    seed_bytes("checkpoint", "f64", &f64);
}

/* ---- command lines ------------------------------------------------------------------------ */

static void cli_seed(const char *name, const char *const *args)
{
    bytes b = {0};
    for (int i = 0; args[i]; i++) put(&b, args[i], strlen(args[i]) + (args[i + 1] != NULL));
    seed_bytes("cli", name, &b);
}

static void cli_seeds(void)
{
    cli_seed("model",
             (const char *[]){"--shape", "8x8x3", "--levels", "3", "--depth", "4", "--width", "64",
                              "--coupling", "affine", "--conv", "emerging", NULL});
    cli_seed("train", (const char *[]){"--lr", "2.5e-4", "--steps", "1000", "--batch", "16",
                                       "--seed", "9199999999999999999", "--optimizer", "adamax",
                                       "--minutes", "0.5", "--data", "png:x", NULL});
    cli_seed("eval", (const char *[]){"--json", "--dequant", "midpoint", "-n", "64",
                                      "--temperature", "0.7", NULL});
    cli_seed("help", (const char *[]){"--warmup", "0", "--help", NULL});
    cli_seed("bad_int", (const char *[]){"--batch", "-1", NULL});
    cli_seed("bad_double", (const char *[]){"--lr", "nan", NULL});
    cli_seed("bad_shape", (const char *[]){"--shape", "99999999999999999999x1x1", NULL});
    cli_seed("overflow", (const char *[]){"--steps", "99999999999999999999", NULL});
    cli_seed("twice", (const char *[]){"--beta2", "0.9", "--beta2", "0.99", NULL});
    cli_seed("missing_value", (const char *[]){"--levels", NULL});
    cli_seed("unknown", (const char *[]){"--frobnicate", NULL});
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_corpus OUT\n");
        return 2;
    }
    snprintf(out_dir, sizeof out_dir, "%s", argv[1]);
    char path[4096];
    make_dir(out_dir);
    snprintf(path, sizeof path, "%s/seeds", out_dir), make_dir(path);
    snprintf(path, sizeof path, "%s/work", out_dir), make_dir(path);
    for (size_t h = 0; h < sizeof harnesses / sizeof harnesses[0]; h++) {
        snprintf(path, sizeof path, "%s/seeds/%s", out_dir, harnesses[h]), make_dir(path);
        snprintf(path, sizeof path, "%s/work/%s", out_dir, harnesses[h]), make_dir(path);
    }
    idx_seeds();
    cifar_seeds();
    png_seeds();
    checkpoint_seeds();
    cli_seeds();
    printf("fuzz_make_corpus: seeds written to %s/seeds\n", out_dir);
    return 0;
}
