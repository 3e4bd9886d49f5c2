/* test_io.c: the io/ module: data set loaders, the batcher, PNG grids and HDF5 checkpoints.
 *
 * Every input file is made here, in a fresh temporary folder per test (removed afterwards):
 * idx files plain and gzip, CIFAR-10 records, PNG folders (written with libpng directly, not
 * with the code under test), broken variants of each. Loaders must succeed on the good files
 * with the exact bytes written, and fail on each broken one with a negative status and a
 * message that names the file. Checkpoints are checked by round trip (bit-identical tensors,
 * moments, counts and meta), by reading the file's layout with the HDF5 C API as another tool
 * would, and by failed writes that must leave the previous file loadable and no temporary.
 *
 * `test_io --fashion-mnist-installed` (CTest dataset_fashion_mnist) checks Debian's
 * dataset-fashion-mnist: skipped (exit 77) where it is missing, failed then under CI=true.
 *
 * `test_io --write-checkpoint FILE` writes a small known checkpoint and exits; the optional
 * h5py check (tests/io_h5py_check.py) reads it.
 */
#define _GNU_SOURCE /* nftw */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <hdf5.h>
#include <math.h>
#include <png.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "cincflow.h"

/* ---- the temporary folder --------------------------------------------------------------- */

static char tmpdir[128];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cf_test_io.XXXXXX");
    ck_assert_msg(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    chmod(path, 0700); /* read-only folders made by a test */
    return remove(path);
}

static void remove_tmpdir(void)
{
    if (tmpdir[0]) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A path in the temporary folder (a few rotating buffers). */
static const char *tpath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *tpath(const char *fmt, ...)
{
    static char bufs[8][512];
    static int next;
    char *buf = bufs[next++ % 8], name[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    snprintf(buf, 512, "%s/%s", tmpdir, name);
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void write_gz(const char *path, const void *data, size_t n)
{
    gzFile gz = gzopen(path, "wb");
    ck_assert_msg(gz, "cannot create %s", path);
    ck_assert_int_eq(gzwrite(gz, data, (unsigned)n), (int)n);
    ck_assert_int_eq(gzclose(gz), Z_OK);
}

static uint8_t *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc(*n + 1);
    ck_assert_uint_eq(fread(data, 1, *n, f), *n);
    fclose(f);
    return data;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* No file of the folder has ".tmp." in its name. */
static void expect_no_temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        ck_assert_msg(!strstr(e->d_name, ".tmp."), "temporary %s/%s was left behind", dir,
                      e->d_name);
    closedir(d);
}

/* A failure: negative status, and a message holding `needle` (a file name, a tensor name). */
#define expect_failure(status, needle)                                                             \
    do {                                                                                           \
        cf_status st_ = (status);                                                                  \
        ck_assert_msg(st_ < 0, "expected a failure mentioning '%s', got status %d", (needle),      \
                      (int)st_);                                                                   \
        ck_assert_msg(strstr(cf_last_error(), (needle)), "message '%s' does not mention '%s'",     \
                      cf_last_error(), (needle));                                                  \
    } while (0)

/* ---- idx files -------------------------------------------------------------------------- */

#define IDX_N 5
#define IDX_H 4
#define IDX_W 3

static uint8_t idx_pixel(int i, int y, int x)
{
    return (uint8_t)(i * 37 + y * 11 + x * 5 + 3);
}

/* An idx3 image file's bytes: header (n, h, w) then n_written images (the rest missing). */
static uint8_t *idx3_bytes(uint32_t n, uint32_t h, uint32_t w, int n_written, size_t *size)
{
    size_t payload = (size_t)n_written * h * w;
    uint8_t *b = malloc(16 + payload);
    uint32_t dims[3] = {n, h, w};
    b[0] = 0, b[1] = 0, b[2] = 0x08, b[3] = 3;
    for (int d = 0; d < 3; d++)
        for (int k = 0; k < 4; k++) b[4 + 4 * d + k] = (uint8_t)(dims[d] >> (24 - 8 * k));
    for (int i = 0; i < n_written; i++)
        for (uint32_t y = 0; y < h; y++)
            for (uint32_t x = 0; x < w; x++)
                b[16 + ((size_t)i * h + y) * w + x] = idx_pixel(i, (int)y, (int)x);
    *size = 16 + payload;
    return b;
}

static uint8_t *idx1_bytes(uint32_t n, size_t *size)
{
    uint8_t *b = malloc(8 + n);
    b[0] = 0, b[1] = 0, b[2] = 0x08, b[3] = 1;
    for (int k = 0; k < 4; k++) b[4 + k] = (uint8_t)(n >> (24 - 8 * k));
    for (uint32_t i = 0; i < n; i++) b[8 + i] = (uint8_t)(i % 3 + 1);
    *size = 8 + n;
    return b;
}

static void write_idx_pair(const char *images, const char *labels, bool gz_images, bool gz_labels)
{
    size_t n;
    uint8_t *b = idx3_bytes(IDX_N, IDX_H, IDX_W, IDX_N, &n);
    (gz_images ? write_gz : write_bytes)(images, b, n);
    free(b);
    if (!labels) return;
    b = idx1_bytes(IDX_N, &n);
    (gz_labels ? write_gz : write_bytes)(labels, b, n);
    free(b);
}

static void expect_idx_set(const cf_dataset *ds, bool labels)
{
    ck_assert_msg(ds, "%s", cf_last_error());
    ck_assert_int_eq(cf_dataset_count(ds), IDX_N);
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    ck_assert_int_eq(h, IDX_H);
    ck_assert_int_eq(w, IDX_W);
    ck_assert_int_eq(c, 1);
    for (int i = 0; i < IDX_N; i++) {
        const uint8_t *img = cf_dataset_image(ds, i);
        for (int y = 0; y < IDX_H; y++)
            for (int x = 0; x < IDX_W; x++)
                ck_assert_int_eq(img[y * IDX_W + x], idx_pixel(i, y, x));
        ck_assert_int_eq(cf_dataset_label(ds, i), labels ? i % 3 + 1 : -1);
    }
    ck_assert(cf_dataset_has_labels(ds) == labels);
    ck_assert_int_eq(cf_dataset_num_classes(ds), labels ? 4 : 0);
}

/* Loop: 0 plain, 1 gzip, 2 gzip images with plain labels, 3 the "images.idx3" spelling. */
START_TEST(test_idx_with_labels)
{
    static const char *img_names[] = {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
                                      "t10k-images-idx3-ubyte.gz", "train-images.idx3-ubyte"};
    static const char *lab_names[] = {"train-labels-idx1-ubyte", "train-labels-idx1-ubyte.gz",
                                      "t10k-labels-idx1-ubyte", "train-labels.idx1-ubyte"};
    const char *images = tpath("%s", img_names[_i]);
    write_idx_pair(images, tpath("%s", lab_names[_i]), _i == 1 || _i == 2, _i == 1);
    char spec[600];
    snprintf(spec, sizeof spec, "idx:%s", images);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    expect_idx_set(ds, true);
    ck_assert(strstr(cf_dataset_source(ds), images));
    cf_dataset_free(ds);
}
END_TEST

START_TEST(test_idx_without_labels)
{
    const char *images = tpath("digits.idx");
    write_idx_pair(images, NULL, false, false);
    char spec[600];
    snprintf(spec, sizeof spec, "idx:%s", images);
    cf_dataset *ds = cf_dataset_open(spec, "test");
    expect_idx_set(ds, false);
    cf_dataset_free(ds);
    cf_dataset_free(NULL);
}
END_TEST

/* Each broken idx file fails with a message naming the file it is about. */
START_TEST(test_idx_failures)
{
    const char *images = tpath("train-images-idx3-ubyte");
    const char *labels = tpath("train-labels-idx1-ubyte");
    const char *named = images, *needle = NULL;
    size_t n;
    uint8_t *b = NULL;
    switch (_i) {
    case 0: /* truncated inside the last image */
        b = idx3_bytes(IDX_N, IDX_H, IDX_W, IDX_N, &n);
        write_bytes(images, b, n - 6);
        needle = "truncated";
        break;
    case 1: /* the same, gzip */
        b = idx3_bytes(IDX_N, IDX_H, IDX_W, IDX_N - 1, &n);
        images = tpath("train-images-idx3-ubyte.gz");
        write_gz(images, b, n);
        needle = "truncated";
        break;
    case 2: /* a labels file given as images */
        b = idx1_bytes(IDX_N, &n);
        write_bytes(images, b, n);
        needle = "wrong magic";
        break;
    case 3: /* a header that promises far more than the file holds */
        b = idx3_bytes(100000, 28, 28, 2, &n);
        write_bytes(images, b, n);
        needle = "100000 images";
        break;
    case 4: /* the same lie, gzip: must fail without allocating the promised 78 MB */
        b = idx3_bytes(100000, 28, 28, 2, &n);
        images = tpath("train-images-idx3-ubyte.gz");
        write_gz(images, b, n);
        needle = "truncated";
        break;
    case 5: /* sizes beyond every limit */
        b = idx3_bytes(0x7fffffff, 16384, 16384, 0, &n);
        write_bytes(images, b, n);
        needle = "limit";
        break;
    case 6: /* no file */
        needle = "no such file";
        break;
    case 7: { /* a gzip stream cut in half */
        size_t raw_n, gz_n;
        uint8_t *raw = idx3_bytes(IDX_N, IDX_H, IDX_W, IDX_N, &raw_n);
        const char *full = tpath("full.gz");
        write_gz(full, raw, raw_n);
        free(raw);
        b = read_bytes(full, &gz_n);
        images = tpath("train-images-idx3-ubyte.gz");
        write_bytes(images, b, gz_n / 2);
        break;
    }
    case 8: /* labels for fewer images */
        write_idx_pair(images, NULL, false, false);
        b = idx1_bytes(IDX_N - 1, &n);
        write_bytes(labels, b, n);
        named = labels;
        needle = "4 labels";
        break;
    case 9: /* labels file with an images magic */
        write_idx_pair(images, NULL, false, false);
        b = idx3_bytes(IDX_N, 1, 1, IDX_N, &n);
        write_bytes(labels, b, n);
        named = labels;
        needle = "wrong magic";
        break;
    case 10: /* bytes after the last image */
        b = idx3_bytes(IDX_N, IDX_H, IDX_W, IDX_N + 1, &n);
        write_bytes(images, b, n);
        needle = "the file has";
        break;
    case 11: /* an empty file */
        write_bytes(images, "", 0);
        needle = "truncated";
        break;
    case 12: /* a folder */
        images = tmpdir;
        needle = "directory";
        break;
    }
    if (named != labels) named = images;
    free(b);
    char spec[600];
    snprintf(spec, sizeof spec, "idx:%s", images);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    ck_assert_msg(!ds, "case %d: a broken file was accepted", _i);
    expect_failure(-1, named);
    if (needle) expect_failure(-1, needle);
}
END_TEST

/* ---- CIFAR-10 --------------------------------------------------------------------------- */

static uint8_t cifar_value(int file, int rec, int c, int y, int x)
{
    return (uint8_t)(file * 50 + rec * 7 + c * 31 + y * 3 + x);
}

static int cifar_label(int file, int rec)
{
    return (file * 3 + rec) % 10;
}

/* Writes file `file` (0..4 data_batch_1..5, 5 test_batch) with n records into dir. */
static void write_cifar(const char *dir, int file, int n)
{
    uint8_t *b = malloc((size_t)n * 3073);
    for (int r = 0; r < n; r++) {
        uint8_t *rec = b + (size_t)r * 3073;
        rec[0] = (uint8_t)cifar_label(file, r);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                    rec[1 + c * 1024 + y * 32 + x] = cifar_value(file, r, c, y, x);
    }
    char path[600];
    if (file < 5)
        snprintf(path, sizeof path, "%s/data_batch_%d.bin", dir, file + 1);
    else
        snprintf(path, sizeof path, "%s/test_batch.bin", dir);
    write_bytes(path, b, (size_t)n * 3073);
    free(b);
}

static const int cifar_counts[6] = {2, 1, 3, 1, 2, 2};

/* Loop: 0 files in DIR, 1 files in DIR/cifar-10-batches-bin. */
START_TEST(test_cifar10)
{
    const char *dir = _i ? tpath("cifar-10-batches-bin") : tmpdir;
    if (_i) ck_assert_int_eq(mkdir(dir, 0700), 0);
    for (int f = 0; f < 6; f++) write_cifar(dir, f, cifar_counts[f]);
    char spec[600];
    snprintf(spec, sizeof spec, "cifar10:%s", tmpdir);
    for (int split = 0; split < 2; split++) {
        cf_dataset *ds = cf_dataset_open(spec, split ? "test" : "train");
        ck_assert_msg(ds, "%s", cf_last_error());
        ck_assert_int_eq(cf_dataset_count(ds), split ? 2 : 9);
        int h, w, c;
        cf_dataset_shape(ds, &h, &w, &c);
        ck_assert(h == 32 && w == 32 && c == 3);
        int i = 0;
        for (int f = split ? 5 : 0; f < (split ? 6 : 5); f++)
            for (int r = 0; r < cifar_counts[f]; r++, i++) {
                const uint8_t *img = cf_dataset_image(ds, i);
                ck_assert_int_eq(cf_dataset_label(ds, i), cifar_label(f, r));
                for (int y = 0; y < 32; y += 5)
                    for (int x = 0; x < 32; x += 3)
                        for (int ch = 0; ch < 3; ch++)
                            ck_assert_int_eq(img[(y * 32 + x) * 3 + ch],
                                             cifar_value(f, r, ch, y, x));
            }
        ck_assert_int_eq(cf_dataset_num_classes(ds), split ? 7 : 10);
        cf_dataset_free(ds);
    }
}
END_TEST

START_TEST(test_cifar10_failures)
{
    for (int f = 0; f < 6; f++)
        if (!(_i == 0 && f == 2)) write_cifar(tmpdir, f, cifar_counts[f]);
    const char *named = tpath("data_batch_3.bin"), *needle = "no such file";
    if (_i == 1) { /* a record cut short */
        size_t n;
        uint8_t *b = read_bytes(named, &n);
        write_bytes(named, b, n - 100);
        free(b);
        needle = "not a whole number";
    } else if (_i == 2) { /* a label no CIFAR-10 file has */
        uint8_t *b = malloc(3073);
        memset(b, 7, 3073);
        b[0] = 12;
        write_bytes(named, b, 3073);
        free(b);
        needle = "label 12";
    }
    char spec[600];
    snprintf(spec, sizeof spec, "cifar10:%s", tmpdir);
    ck_assert_ptr_null(cf_dataset_open(spec, "train"));
    expect_failure(-1, named);
    expect_failure(-1, needle);
}
END_TEST

/* ---- PNG folders ------------------------------------------------------------------------ */

/* Writes a PNG with libpng directly: rows of `depth`-bit samples, packed as PNG stores them. */
static void write_png(const char *path, int w, int h, int color, int depth, const uint8_t *data,
                      bool interlaced)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    png_bytep *rows = malloc((size_t)h * sizeof *rows);
    if (setjmp(png_jmpbuf(png))) ck_abort_msg("libpng failed writing %s", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color,
                 interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_color palette[4] = {{10, 20, 30}, {200, 100, 0}, {0, 255, 1}, {7, 8, 9}};
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_PLTE(png, info, palette, 4);
    png_write_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    for (int y = 0; y < h; y++) rows[y] = (png_bytep)data + (size_t)y * rowbytes;
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    fclose(f);
}

static uint8_t png_value(int file, int y, int x, int c)
{
    return (uint8_t)(file * 60 + y * 13 + x * 7 + c * 41);
}

/* Writes an 8-bit gray (c 1) or RGB (c 3) image whose values are png_value(file, ...). */
static void write_test_png(const char *path, int file, int h, int w, int c, bool interlaced)
{
    uint8_t *data = malloc((size_t)h * w * c);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int ch = 0; ch < c; ch++) data[(y * w + x) * c + ch] = png_value(file, y, x, ch);
    write_png(path, w, h, c == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, 8, data, interlaced);
    free(data);
}

/* Loop: 0 gray, 1 RGB. Files written out of order, one interlaced, beside files to skip. */
START_TEST(test_png_folder)
{
    int c = _i ? 3 : 1, h = 5, w = 4;
    write_test_png(tpath("c.png"), 2, h, w, c, false);
    write_test_png(tpath("a.png"), 0, h, w, c, false);
    write_test_png(tpath("b.PNG"), 1, h, w, c, true);
    write_bytes(tpath("notes.txt"), "not an image", 12);
    write_bytes(tpath(".hidden.png"), "not an image either", 19);
    char spec[600];
    snprintf(spec, sizeof spec, "png:%s", tmpdir);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    ck_assert_msg(ds, "%s", cf_last_error());
    ck_assert_int_eq(cf_dataset_count(ds), 3);
    int hh, ww, cc;
    cf_dataset_shape(ds, &hh, &ww, &cc);
    ck_assert(hh == h && ww == w && cc == c);
    for (int i = 0; i < 3; i++) {
        const uint8_t *img = cf_dataset_image(ds, i);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int ch = 0; ch < c; ch++)
                    ck_assert_int_eq(img[(y * w + x) * c + ch], png_value(i, y, x, ch));
        ck_assert_int_eq(cf_dataset_label(ds, i), -1);
    }
    cf_dataset_free(ds);
}
END_TEST

START_TEST(test_png_palette)
{
    uint8_t idx[6] = {0, 1, 2, 3, 2, 1};
    write_png(tpath("p.png"), 3, 2, PNG_COLOR_TYPE_PALETTE, 8, idx, false);
    char spec[600];
    snprintf(spec, sizeof spec, "png:%s", tmpdir);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    ck_assert_msg(ds, "%s", cf_last_error());
    int c;
    cf_dataset_shape(ds, NULL, NULL, &c);
    ck_assert_int_eq(c, 3);
    const uint8_t want[4][3] = {{10, 20, 30}, {200, 100, 0}, {0, 255, 1}, {7, 8, 9}};
    for (int p = 0; p < 6; p++)
        ck_assert_int_eq(memcmp(cf_dataset_image(ds, 0) + 3 * p, want[idx[p]], 3), 0);
    cf_dataset_free(ds);
}
END_TEST

/* The 8-byte signature, then IHDR: length, "IHDR", width, height, ..., CRC. */
static void patch_ihdr_size(const char *path, uint32_t w, uint32_t h)
{
    size_t n;
    uint8_t *b = read_bytes(path, &n);
    for (int k = 0; k < 4; k++) {
        b[16 + k] = (uint8_t)(w >> (24 - 8 * k));
        b[20 + k] = (uint8_t)(h >> (24 - 8 * k));
    }
    uint32_t crc = (uint32_t)crc32(0, b + 12, 17);
    for (int k = 0; k < 4; k++) b[29 + k] = (uint8_t)(crc >> (24 - 8 * k));
    write_bytes(path, b, n);
    free(b);
}

/* Each bad folder fails with a message naming the offending file. */
START_TEST(test_png_failures)
{
    write_test_png(tpath("a.png"), 0, 5, 4, 1, false);
    const char *bad = tpath("b.png"), *needle = NULL;
    uint16_t wide[5 * 4 * 4] = {0};
    size_t n;
    uint8_t *b;
    switch (_i) {
    case 0: /* another size */
        write_test_png(bad, 1, 6, 4, 1, false);
        needle = "one size";
        break;
    case 1: /* RGB among gray */
        write_test_png(bad, 1, 5, 4, 3, false);
        needle = "RGB";
        break;
    case 2: /* 16-bit samples */
        write_png(bad, 4, 5, PNG_COLOR_TYPE_GRAY, 16, (const uint8_t *)wide, false);
        needle = "16-bit";
        break;
    case 3: /* alpha */
        write_png(bad, 4, 5, PNG_COLOR_TYPE_RGBA, 8, (const uint8_t *)wide, false);
        needle = "alpha";
        break;
    case 4: /* not a PNG */
        write_bytes(bad, "GIF89a....", 10);
        needle = "not a PNG";
        break;
    case 5: /* truncated */
        write_test_png(bad, 1, 5, 4, 1, false);
        b = read_bytes(bad, &n);
        write_bytes(bad, b, n - 30);
        free(b);
        needle = "truncated"; /* the reader's own bounds check, not a garbage read */
        break;
    case 6: /* a header claiming 16000 x 16000 pixels in a tiny file */
        write_test_png(bad, 1, 5, 4, 1, false);
        patch_ihdr_size(bad, 16000, 16000);
        needle = "can hold";
        break;
    case 7: /* a first file claiming a size over the limit */
        remove(tpath("a.png"));
        write_test_png(bad, 1, 5, 4, 1, false);
        patch_ihdr_size(bad, 100000, 3);
        break;
    }
    char spec[600];
    snprintf(spec, sizeof spec, "png:%s", tmpdir);
    ck_assert_ptr_null(cf_dataset_open(spec, NULL));
    expect_failure(-1, bad);
    if (needle) expect_failure(-1, needle);
}
END_TEST

START_TEST(test_png_folder_missing_or_empty)
{
    char spec[600];
    snprintf(spec, sizeof spec, "png:%s", tmpdir);
    ck_assert_ptr_null(cf_dataset_open(spec, NULL));
    expect_failure(-1, "no .png files");
    snprintf(spec, sizeof spec, "png:%s/nowhere", tmpdir);
    ck_assert_ptr_null(cf_dataset_open(spec, NULL));
    expect_failure(-1, "nowhere");
}
END_TEST

/* ---- synthetic -------------------------------------------------------------------------- */

static bool same_images(const cf_dataset *a, int64_t ia, const cf_dataset *b, int64_t ib)
{
    int h, w, c;
    cf_dataset_shape(a, &h, &w, &c);
    return memcmp(cf_dataset_image(a, ia), cf_dataset_image(b, ib), (size_t)h * w * c) == 0;
}

START_TEST(test_synthetic)
{
    cf_dataset *a = cf_dataset_open("synthetic:8x6x3:20", NULL);
    cf_dataset *again = cf_dataset_open("synthetic:8x6x3:20", "train");
    cf_dataset *fewer = cf_dataset_open("synthetic:8x6x3:5", NULL);
    cf_dataset *seeded = cf_dataset_open("synthetic:8x6x3:20:7", NULL);
    cf_dataset *test = cf_dataset_open("synthetic:8x6x3:20", "test");
    cf_dataset *deflt = cf_dataset_open("synthetic:4x4x1", NULL);
    ck_assert_msg(a && again && fewer && seeded && test && deflt, "%s", cf_last_error());
    int h, w, c;
    cf_dataset_shape(a, &h, &w, &c);
    ck_assert(h == 8 && w == 6 && c == 3);
    ck_assert_int_eq(cf_dataset_count(a), 20);
    ck_assert_int_eq(cf_dataset_count(deflt), 1000);
    ck_assert(!cf_dataset_has_labels(a));
    ck_assert_int_eq(cf_dataset_label(a, 3), -1);
    int n_seed_diff = 0, n_test_diff = 0;
    for (int i = 0; i < 20; i++) {
        ck_assert(same_images(a, i, again, i));
        if (i < 5) ck_assert(same_images(a, i, fewer, i));
        n_seed_diff += !same_images(a, i, seeded, i);
        n_test_diff += !same_images(a, i, test, i);
        if (i > 0) ck_assert(!same_images(a, i, a, i - 1));
    }
    ck_assert_int_eq(n_seed_diff, 20);
    ck_assert_int_eq(n_test_diff, 20);
    /* Smooth: neighbouring pixels differ much less than independent random bytes (85). */
    double diff = 0, spread = 0, mean = 0;
    int count = 0;
    for (int i = 0; i < 20; i++) {
        const uint8_t *img = cf_dataset_image(a, i);
        for (int j = 0; j < 8 * 6 * 3; j++) mean += img[j] / (20.0 * 8 * 6 * 3);
        for (int y = 0; y < 8; y++)
            for (int x = 1; x < 6; x++)
                for (int ch = 0; ch < 3; ch++, count++)
                    diff += abs(img[(y * 6 + x) * 3 + ch] - img[(y * 6 + x - 1) * 3 + ch]);
    }
    for (int i = 0; i < 20; i++)
        for (int j = 0; j < 8 * 6 * 3; j++)
            spread += fabs(cf_dataset_image(a, i)[j] - mean) / (20.0 * 8 * 6 * 3);
    ck_assert_msg(diff / count < 25, "mean neighbour difference %g", diff / count);
    ck_assert_msg(spread > 15, "images barely vary (mean absolute deviation %g)", spread);
    cf_dataset_free(a);
    cf_dataset_free(again);
    cf_dataset_free(fewer);
    cf_dataset_free(seeded);
    cf_dataset_free(test);
    cf_dataset_free(deflt);
}
END_TEST

START_TEST(test_spec_errors)
{
    static const char *bad[][2] = {
        {"synthetic:0x5x3", "synthetic:0x5x3"},
        {"synthetic:32x32", "HxWxC"},
        {"synthetic:8x8x9", "channels"},
        {"synthetic:8x8x3:0", "no images"},
        {"synthetic:axb", "HxWxC"},
        {"synthetic:8x8x3:5:x", "HxWxC"},
        {"synthetic:99999x99999x3", "side"},
        {"synthetic:8x8x3:99999999999999999999", "HxWxC"},
        {"foo:bar", "unknown kind"},
        {"idx:", "missing"},
        {"cifar10", "missing"},
        {"mnist", "unknown kind"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        ck_assert_msg(!cf_dataset_open(bad[k][0], NULL), "'%s' was accepted", bad[k][0]);
        expect_failure(-1, bad[k][1]);
    }
    ck_assert_ptr_null(cf_dataset_open("synthetic:4x4x1:10", "valid"));
    expect_failure(-1, "split 'valid'");
}
END_TEST

/* ---- Fashion-MNIST ---------------------------------------------------------------------- */

START_TEST(test_fashion_mnist_spec)
{
    /* With files of the Debian package's names in a folder of our own. */
    write_idx_pair(tpath("t10k-images-idx3-ubyte.gz"), tpath("t10k-labels-idx1-ubyte.gz"), true,
                   true);
    char spec[600];
    snprintf(spec, sizeof spec, "fashion-mnist:%s", tmpdir);
    cf_dataset *ds = cf_dataset_open(spec, "test");
    expect_idx_set(ds, true);
    cf_dataset_free(ds);
    /* Missing: the message says which package to install. */
    ck_assert_ptr_null(cf_dataset_open(spec, "train"));
    expect_failure(-1, "dataset-fashion-mnist");
    expect_failure(-1, "train-images-idx3-ubyte.gz");
}
END_TEST

/* Run alone (`test_io --fashion-mnist-installed`, CTest dataset_fashion_mnist), which reports
 * itself skipped (77) where the package is missing, or fails then under CI=true. */
START_TEST(test_fashion_mnist_installed)
{
    cf_dataset *ds = cf_dataset_open("fashion-mnist", "test");
    ck_assert_msg(ds, "%s", cf_last_error());
    ck_assert_int_eq(cf_dataset_count(ds), 10000);
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    ck_assert(h == 28 && w == 28 && c == 1);
    ck_assert_int_eq(cf_dataset_num_classes(ds), 10);
    int per_class[10] = {0};
    for (int i = 0; i < 10000; i++) per_class[cf_dataset_label(ds, i)]++;
    for (int k = 0; k < 10; k++) ck_assert_int_eq(per_class[k], 1000);
    cf_dataset_free(ds);
}
END_TEST

/* ---- the batcher ------------------------------------------------------------------------ */

static cf_batcher *make_batcher(const cf_dataset *ds, int64_t batch, uint64_t seed, int rank,
                                int n_ranks)
{
    cf_batcher *b = cf_batcher_new(
        ds, &(cf_batcher_opts){.batch = batch, .seed = seed, .rank = rank, .n_ranks = n_ranks});
    ck_assert_msg(b, "%s", cf_last_error());
    return b;
}

static cf_tensor *batch_tensor(const cf_dataset *ds, int64_t batch, cf_dtype dtype)
{
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    cf_tensor *x = cf_tensor_alloc(dtype, 4, (int64_t[]){batch, h, w, c});
    ck_assert_ptr_nonnull(x);
    return x;
}

/* Draws one epoch's worth of indices (batches_per_epoch * B of them) into idx. */
static void draw_epoch(cf_batcher *b, cf_tensor *x, int64_t *idx)
{
    int64_t B = x->shape[0];
    for (int64_t k = 0; k < cf_batcher_batches_per_epoch(b); k++)
        ck_assert_int_eq(cf_batcher_next(b, x, NULL, idx + k * B), CF_OK);
}

static int compare_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

START_TEST(test_batcher_permutation)
{
    cf_dataset *ds = cf_dataset_open("synthetic:2x2x1:12", NULL);
    cf_batcher *b = make_batcher(ds, 4, 5, 0, 1);
    cf_tensor *x = batch_tensor(ds, 4, CF_F32);
    ck_assert_int_eq(cf_batcher_batches_per_epoch(b), 3);
    int64_t epochs[3][12];
    for (int e = 0; e < 3; e++) {
        draw_epoch(b, x, epochs[e]);
        ck_assert_int_eq(cf_batcher_get_state(b).epoch, e);
        int64_t sorted[12];
        memcpy(sorted, epochs[e], sizeof sorted);
        qsort(sorted, 12, sizeof sorted[0], compare_i64);
        for (int i = 0; i < 12; i++) ck_assert_int_eq(sorted[i], i);
    }
    int moved = 0, changed = 0;
    for (int i = 0; i < 12; i++) {
        moved += epochs[0][i] != i;
        changed += epochs[0][i] != epochs[1][i];
    }
    ck_assert_msg(moved > 0 && changed > 0, "not shuffled, or the same order every epoch");
    cf_tensor_free(x);
    cf_batcher_free(b);
    cf_dataset_free(ds);
}
END_TEST

/* The same seed gives the same indices and bit-identical values; another seed another order. */
START_TEST(test_batcher_deterministic)
{
    cf_dataset *ds = cf_dataset_open("synthetic:3x3x2:40", NULL);
    cf_batcher *a = make_batcher(ds, 5, 11, 0, 1), *b = make_batcher(ds, 5, 11, 0, 1);
    cf_batcher *other = make_batcher(ds, 5, 12, 0, 1);
    cf_tensor *xa = batch_tensor(ds, 5, CF_F32), *xb = batch_tensor(ds, 5, CF_F32);
    int differ = 0;
    for (int k = 0; k < 20; k++) {
        int64_t ia[5], ib[5], io[5];
        ck_assert_int_eq(cf_batcher_next(a, xa, NULL, ia), CF_OK);
        ck_assert_int_eq(cf_batcher_next(b, xb, NULL, ib), CF_OK);
        ck_assert_int_eq(memcmp(ia, ib, sizeof ia), 0);
        ck_assert_int_eq(memcmp(xa->data, xb->data, (size_t)xa->numel * sizeof(float)), 0);
        ck_assert_int_eq(cf_batcher_next(other, xb, NULL, io), CF_OK);
        differ += memcmp(ia, io, sizeof ia) != 0;
    }
    ck_assert_int_gt(differ, 10);
    cf_tensor_free(xa);
    cf_tensor_free(xb);
    cf_batcher_free(a);
    cf_batcher_free(b);
    cf_batcher_free(other);
    cf_dataset_free(ds);
}
END_TEST

/* Loop: N 12 (divisible by R B: each epoch covers the set) and N 14 (2 left over). At every
 * step the 3 ranks' batches, one after the other, are the batch of a single process with batch
 * R B: the same images in the same order and bit-identical values, noise included. */
START_TEST(test_batcher_sharding)
{
    int N = _i ? 14 : 12, R = 3, B = 2;
    char spec[64];
    snprintf(spec, sizeof spec, "synthetic:2x2x1:%d", N);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    cf_tensor *x = batch_tensor(ds, B, CF_F64), *whole = batch_tensor(ds, R * B, CF_F64);
    cf_batcher *ranks[3], *one = make_batcher(ds, R * B, 99, 0, 1);
    for (int r = 0; r < R; r++) {
        ranks[r] = make_batcher(ds, B, 99, r, R);
        ck_assert_int_eq(cf_batcher_slice_size(ranks[r]), 4);
        ck_assert_int_eq(cf_batcher_batches_per_epoch(ranks[r]), 2);
    }
    int64_t D = x->numel / B;
    for (int e = 0; e < 3; e++) {
        int seen[14] = {0}, total = 0;
        for (int k = 0; k < 2; k++) {
            int64_t iw[6];
            ck_assert_int_eq(cf_batcher_next(one, whole, NULL, iw), CF_OK);
            for (int r = 0; r < R; r++) {
                int64_t idx[2];
                ck_assert_int_eq(cf_batcher_next(ranks[r], x, NULL, idx), CF_OK);
                ck_assert_int_eq(cf_batcher_get_state(ranks[r]).epoch, e);
                for (int i = 0; i < B; i++, total++) {
                    seen[idx[i]]++;
                    ck_assert_int_eq(idx[i], iw[r * B + i]);
                }
                ck_assert_int_eq(memcmp(x->data, (double *)whole->data + r * B * D,
                                        (size_t)x->numel * sizeof(double)),
                                 0);
            }
        }
        for (int i = 0; i < N; i++) ck_assert_msg(seen[i] <= 1, "image %d seen twice", i);
        ck_assert_int_eq(total, 12);
        if (N == 12)
            for (int i = 0; i < N; i++) ck_assert_msg(seen[i] == 1, "epoch %d missed %d", e, i);
    }
    for (int r = 0; r < R; r++) {
        cf_batcher_state s = cf_batcher_get_state(ranks[r]), t = cf_batcher_get_state(one);
        ck_assert_int_eq(memcmp(&s, &t, sizeof s), 0); /* one state for every rank */
        cf_batcher_free(ranks[r]);
    }
    cf_batcher_free(one);
    cf_tensor_free(x);
    cf_tensor_free(whole);
    cf_dataset_free(ds);
}
END_TEST

/* Ranks draw different noise: the same image at the same place of two epochs' orders, or at
 * two places, is dequantized differently (sequential order: image i sits at position i). */
START_TEST(test_batcher_noise_per_position)
{
    cf_dataset *ds = cf_dataset_open("synthetic:4x4x1:8", NULL);
    cf_tensor *a = batch_tensor(ds, 2, CF_F32), *b = batch_tensor(ds, 2, CF_F32);
    cf_batcher *r0 = cf_batcher_new(
        ds, &(cf_batcher_opts){.batch = 2, .seed = 4, .rank = 0, .n_ranks = 2, .sequential = true});
    cf_batcher *r1 = cf_batcher_new(
        ds, &(cf_batcher_opts){.batch = 2, .seed = 4, .rank = 1, .n_ranks = 2, .sequential = true});
    ck_assert_ptr_nonnull(r0);
    ck_assert_ptr_nonnull(r1);
    int64_t i0[2], i1[2];
    ck_assert_int_eq(cf_batcher_next(r0, a, NULL, i0), CF_OK);
    ck_assert_int_eq(cf_batcher_next(r1, b, NULL, i1), CF_OK);
    ck_assert_int_eq(i0[0], 0);
    ck_assert_int_eq(i1[0], 2);
    ck_assert_int_ne(memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)), 0);
    float first[32];
    memcpy(first, a->data, sizeof first);
    for (int k = 0; k < 2; k++) ck_assert_int_eq(cf_batcher_next(r0, a, NULL, i0), CF_OK);
    ck_assert_int_eq(cf_batcher_get_state(r0).epoch, 1);
    ck_assert_int_eq(i0[0], 0); /* image 0 again, at position 0 of epoch 1 */
    ck_assert_int_ne(memcmp(a->data, first, sizeof first), 0);
    cf_batcher_free(r0);
    cf_batcher_free(r1);
    cf_tensor_free(a);
    cf_tensor_free(b);
    cf_dataset_free(ds);
}
END_TEST

/* Loop: f32 or f64. Uniform values lie in [k/256 - 0.5, (k+1)/256 - 0.5) and are spread over
 * it; midpoint values are exactly k/256 - 0.5 + 1/512; labels and indices agree with the set. */
START_TEST(test_batcher_dequantization)
{
    cf_dtype dt = _i ? CF_F64 : CF_F32;
    const char *images = tpath("train-images-idx3-ubyte");
    write_idx_pair(images, tpath("train-labels-idx1-ubyte"), false, false);
    char spec[600];
    snprintf(spec, sizeof spec, "idx:%s", images);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    ck_assert_msg(ds, "%s", cf_last_error());
    int64_t B = 4, D = IDX_H * IDX_W;
    cf_tensor *x = batch_tensor(ds, B, dt);
    for (int mode = 0; mode < 2; mode++) {
        cf_batcher *b = cf_batcher_new(
            ds, &(cf_batcher_opts){.batch = B,
                                   .seed = 3,
                                   .dequant = mode ? CF_DEQUANT_MIDPOINT : CF_DEQUANT_UNIFORM});
        ck_assert_ptr_nonnull(b);
        int above_half = 0, total = 0;
        for (int k = 0; k < 25; k++) {
            int labels[4];
            int64_t idx[4];
            ck_assert_int_eq(cf_batcher_next(b, x, labels, idx), CF_OK);
            for (int64_t i = 0; i < B; i++) {
                ck_assert_int_eq(labels[i], cf_dataset_label(ds, idx[i]));
                const uint8_t *img = cf_dataset_image(ds, idx[i]);
                for (int64_t j = 0; j < D; j++, total++) {
                    double v = cf_tensor_get(x, i * D + j), lo = img[j] / 256.0 - 0.5;
                    if (mode) {
                        ck_assert_msg(v == lo + 1.0 / 512, "midpoint %.17g for k %d", v, img[j]);
                        continue;
                    }
                    ck_assert_msg(v >= lo && v < lo + 1.0 / 256, "%.17g outside the bin of k %d", v,
                                  img[j]);
                    above_half += v >= lo + 1.0 / 512;
                }
            }
        }
        if (!mode)
            ck_assert_msg(above_half > total / 3 && above_half < 2 * total / 3,
                          "noise not uniform: %d of %d in the upper half", above_half, total);
        cf_batcher_free(b);
    }
    cf_tensor_free(x);
    cf_dataset_free(ds);
}
END_TEST

/* A state taken mid-epoch, set on a fresh batcher, gives the same next batches bit for bit,
 * across the epoch boundary. */
START_TEST(test_batcher_state_restore)
{
    cf_dataset *ds = cf_dataset_open("synthetic:3x2x1:10", NULL);
    cf_batcher *a = make_batcher(ds, 3, 21, 1, 2); /* rank 1 of 2: 1 step of 6 images */
    cf_tensor *xa = batch_tensor(ds, 3, CF_F32), *xb = batch_tensor(ds, 3, CF_F32);
    for (int k = 0; k < 5; k++) ck_assert_int_eq(cf_batcher_next(a, xa, NULL, NULL), CF_OK);
    cf_batcher_state saved = cf_batcher_get_state(a);
    ck_assert_int_eq(saved.epoch, 4);
    ck_assert_int_eq(saved.position, 6); /* global: both ranks' 3 */
    cf_batcher *b = make_batcher(ds, 3, 21, 1, 2);
    ck_assert_int_eq(cf_batcher_set_state(b, &saved), CF_OK);
    for (int k = 0; k < 4; k++) {
        int64_t ia[3], ib[3];
        ck_assert_int_eq(cf_batcher_next(a, xa, NULL, ia), CF_OK);
        ck_assert_int_eq(cf_batcher_next(b, xb, NULL, ib), CF_OK);
        ck_assert_int_eq(memcmp(ia, ib, sizeof ia), 0);
        ck_assert_int_eq(memcmp(xa->data, xb->data, (size_t)xa->numel * sizeof(float)), 0);
    }
    cf_batcher_free(a);
    cf_batcher_free(b);
    cf_tensor_free(xa);
    cf_tensor_free(xb);
    cf_dataset_free(ds);
}
END_TEST

START_TEST(test_batcher_errors)
{
    cf_dataset *ds = cf_dataset_open("synthetic:4x4x3:10", NULL);
    ck_assert_ptr_null(cf_batcher_new(ds, &(cf_batcher_opts){.batch = 0}));
    expect_failure(-1, "batch size 0");
    ck_assert_ptr_null(cf_batcher_new(ds, &(cf_batcher_opts){.batch = 2, .rank = 3, .n_ranks = 3}));
    expect_failure(-1, "rank 3 of 3");
    ck_assert_ptr_null(cf_batcher_new(ds, &(cf_batcher_opts){.batch = 4, .n_ranks = 3}));
    expect_failure(-1, "fewer than a batch of 4");
    cf_batcher *b = make_batcher(ds, 2, 1, 0, 1);
    cf_batcher_state before = cf_batcher_get_state(b);
    cf_tensor *wrong = cf_tensor_alloc(CF_F32, 4, (int64_t[]){2, 4, 3, 4});
    expect_failure(cf_batcher_next(b, wrong, NULL, NULL), "(2, 4, 3, 4)");
    cf_batcher_state after = cf_batcher_get_state(b);
    ck_assert_int_eq(memcmp(&before, &after, sizeof before), 0);
    expect_failure(cf_batcher_set_state(b, &(cf_batcher_state){.epoch = 0, .position = 11}),
                   "position 11");
    expect_failure(cf_batcher_set_state(b, &(cf_batcher_state){.epoch = -1}), "epoch -1");
    cf_tensor_free(wrong);
    cf_batcher_free(b);
    cf_batcher_free(NULL);
    cf_dataset_free(ds);
}
END_TEST

/* cf_dataset_fill: consecutive images for evaluation, the tail in a smaller tensor. */
START_TEST(test_dataset_fill)
{
    cf_dataset *ds = cf_dataset_open("synthetic:2x3x1:7", NULL);
    cf_tensor *x = batch_tensor(ds, 3, CF_F64);
    ck_assert_int_eq(cf_dataset_fill(ds, 4, x, CF_DEQUANT_MIDPOINT, NULL), CF_OK);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 6; j++)
            ck_assert_double_eq(cf_tensor_get(x, i * 6 + j),
                                (cf_dataset_image(ds, 4 + i)[j] + 0.5) / 256 - 0.5);
    expect_failure(cf_dataset_fill(ds, 5, x, CF_DEQUANT_MIDPOINT, NULL), "images 5 to 7");
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    ck_assert_int_eq(cf_dataset_fill(ds, 0, x, CF_DEQUANT_UNIFORM, &rng), CF_OK);
    cf_tensor_free(x);
    cf_dataset_free(ds);
}
END_TEST

/* ---- PNG grids -------------------------------------------------------------------------- */

/* Reads a PNG back with libpng's simplified API: 8-bit gray or RGB as stored. */
static uint8_t *read_png(const char *path, int *w, int *h, int *c)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    ck_assert_msg(png_image_begin_read_from_file(&img, path), "%s: %s", path, img.message);
    ck_assert_msg(img.format == PNG_FORMAT_GRAY || img.format == PNG_FORMAT_RGB, "format %u",
                  img.format);
    uint8_t *buf = malloc(PNG_IMAGE_SIZE(img));
    ck_assert(png_image_finish_read(&img, NULL, buf, 0, NULL));
    *w = (int)img.width;
    *h = (int)img.height;
    *c = img.format == PNG_FORMAT_GRAY ? 1 : 3;
    return buf;
}

/* The value the grid writer should store for element j of image b. */
static double grid_input(int b, int j)
{
    int k = (b * 53 + j * 19) % 256;
    switch ((b + j) % 11) {
    case 0:
        return -0.5; /* 0 */
    case 1:
        return 0.5; /* 256, clamped to 255 */
    case 2:
        return 0.75; /* clamped to 255 */
    case 3:
        return -2.0; /* clamped to 0 */
    default:
        return (k + 0.999) / 256 - 0.5; /* k: the top of bin k */
    }
}

static int grid_expected(int b, int j)
{
    switch ((b + j) % 11) {
    case 0:
        return 0;
    case 1:
        return 255;
    case 2:
        return 255;
    case 3:
        return 0;
    default:
        return (b * 53 + j * 19) % 256;
    }
}

/* Loop: (gray, RGB) x (f32, f64) x (border 1, 2). 5 images in 3 columns: 2 rows, one empty
 * cell, which stays the border's white. */
START_TEST(test_png_grid_roundtrip)
{
    int C = _i % 2 ? 3 : 1, border = _i / 4 + 1, H = 3, W = 4, B = 5, ncols = 3;
    cf_dtype dt = (_i / 2) % 2 ? CF_F64 : CF_F32;
    cf_tensor *x = cf_tensor_alloc(dt, 4, (int64_t[]){B, H, W, C});
    for (int b = 0; b < B; b++)
        for (int j = 0; j < H * W * C; j++) cf_tensor_set(x, b * H * W * C + j, grid_input(b, j));
    const char *path = tpath("grid.png");
    ck_assert_msg(cf_image_write_grid(path, x, ncols, border) == CF_OK, "%s", cf_last_error());
    int w, h, c;
    uint8_t *png = read_png(path, &w, &h, &c);
    ck_assert_int_eq(c, C);
    ck_assert_int_eq(w, ncols * (W + border) + border);
    ck_assert_int_eq(h, 2 * (H + border) + border);
    /* Every pixel: inside image b's cell its value, elsewhere white. */
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++) {
            int cy = (y - border) / (H + border), iy = (y - border) % (H + border);
            int cx = (xx - border) / (W + border), ix = (xx - border) % (W + border);
            int b = cy * ncols + cx;
            bool inside = y >= border && xx >= border && iy < H && ix < W && b < B;
            for (int ch = 0; ch < C; ch++) {
                int want = inside ? grid_expected(b, (iy * W + ix) * C + ch) : 255;
                ck_assert_msg(png[(y * w + xx) * C + ch] == want, "pixel (%d, %d, %d): %d, want %d",
                              y, xx, ch, png[(y * w + xx) * C + ch], want);
            }
        }
    free(png);
    expect_no_temporaries(tmpdir);
    cf_tensor_free(x);
}
END_TEST

START_TEST(test_png_grid_failures)
{
    cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){2, 3, 3, 1});
    cf_tensor_set(x, 0, NAN);
    /* NaN maps to 0 rather than to undefined behaviour. */
    ck_assert_int_eq(cf_image_write_grid(tpath("nan.png"), x, 0, 1), CF_OK);
    int w, h, c;
    uint8_t *png = read_png(tpath("nan.png"), &w, &h, &c);
    ck_assert_int_eq(png[1 * w + 1], 0);
    ck_assert_int_eq(png[1 * w + 2], 128);
    free(png);
    const char *nodir = tpath("no/such/folder/grid.png");
    expect_failure(cf_image_write_grid(nodir, x, 2, 1), nodir);
    ck_assert_int_eq(mkdir(tpath("taken.png"), 0700), 0);
    expect_failure(cf_image_write_grid(tpath("taken.png"), x, 2, 1), "taken.png");
    expect_no_temporaries(tmpdir);
    cf_tensor *bad = cf_tensor_alloc(CF_F32, 4, (int64_t[]){2, 3, 3, 2});
    expect_failure(cf_image_write_grid(tpath("g.png"), bad, 2, 1), "C 1 or 3");
    expect_failure(cf_image_write_grid(tpath("g.png"), x, 2, 99), "border");
    cf_tensor_free(bad);
    cf_tensor_free(x);
}
END_TEST

/* ---- checkpoints ------------------------------------------------------------------------ */

enum {
    MODEL_EXTRA_PARAM = 1 << 0, /* "extra.w", which files of the plain model lack */
    MODEL_NO_DENSE = 1 << 1,    /* without "dense.w" */
    MODEL_DENSE_T = 1 << 2,     /* "dense.w" as (5, 3) instead of (3, 5) */
    MODEL_NO_STATS = 1 << 3,    /* without the state tensor "levels.0.actnorm.stats" */
    MODEL_BIAS_3 = 1 << 4,      /* "levels.0.conv.bias" as (3) instead of (2) */
    MODEL_BIG = 1 << 5,         /* with a 100 x 100 parameter */
};

/* Parameters of every rank from 0 to 4, and two state tensors; values from seed (or all 7
 * when seed is 0, a sentinel for "unchanged"). */
static cf_params *make_model(cf_dtype dt, unsigned variant, uint64_t seed)
{
    cf_params *ps = cf_params_new(dt);
    ck_assert_ptr_nonnull(cf_params_add(ps, "levels.0.conv.weight", 4, (int64_t[]){3, 3, 2, 2}));
    ck_assert_ptr_nonnull(
        cf_params_add(ps, "levels.0.conv.bias", 1, (int64_t[]){variant & MODEL_BIAS_3 ? 3 : 2}));
    ck_assert_ptr_nonnull(cf_params_add(ps, "prior.scale", 0, NULL));
    if (!(variant & MODEL_NO_DENSE))
        ck_assert_ptr_nonnull(cf_params_add(
            ps, "dense.w", 2, variant & MODEL_DENSE_T ? (int64_t[]){5, 3} : (int64_t[]){3, 5}));
    ck_assert_ptr_nonnull(cf_params_add(ps, "levels.0.actnorm.logs", 3, (int64_t[]){1, 1, 2}));
    if (variant & MODEL_EXTRA_PARAM)
        ck_assert_ptr_nonnull(cf_params_add(ps, "extra.w", 1, (int64_t[]){4}));
    if (variant & MODEL_BIG)
        ck_assert_ptr_nonnull(cf_params_add(ps, "big.w", 2, (int64_t[]){100, 100}));
    ck_assert_ptr_nonnull(
        cf_params_add_state(ps, "levels.0.actnorm.initialized", 1, (int64_t[]){1}));
    if (!(variant & MODEL_NO_STATS))
        ck_assert_ptr_nonnull(
            cf_params_add_state(ps, "levels.0.actnorm.stats", 2, (int64_t[]){2, 2}));
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0);
    for (int s = 0; s < 2; s++) {
        int n = s ? cf_params_state_count(ps) : cf_params_count(ps);
        for (int i = 0; i < n; i++) {
            cf_tensor *t = s ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
            if (seed)
                cf_tensor_fill_normal(t, &rng, 0.0, 1.0);
            else
                cf_tensor_fill(t, 7.0);
        }
    }
    return ps;
}

static const cf_adam_opts test_opts = {.kind = CF_OPTIM_KIND_ADAMW,
                                       .lr = 0.01,
                                       .beta1 = 0.8,
                                       .beta2 = 0.99,
                                       .eps = 1e-7,
                                       .weight_decay = 0.1,
                                       .warmup_steps = 3,
                                       .clip_norm = 5.0};

/* An optimizer over ps after three updates and one skipped (NaN) step. */
static cf_adam *make_trained_adam(cf_params *ps)
{
    cf_adam *opt = cf_adam_new(ps, &test_opts);
    ck_assert_msg(opt, "%s", cf_last_error());
    cf_rng rng;
    cf_rng_seed(&rng, 77, 0);
    for (int step = 0; step < 4; step++) {
        for (int i = 0; i < cf_params_count(ps); i++) {
            cf_tensor *t = cf_params_at(ps, i);
            for (int64_t j = 0; j < t->numel; j++)
                cf_buf_set(t->dtype, t->grad, j, step == 2 && i == 1 ? NAN : cf_rng_normal(&rng));
        }
        cf_adam_step(opt, NULL);
    }
    ck_assert_int_eq(cf_adam_step_count(opt), 3);
    ck_assert_int_eq(cf_adam_skipped_count(opt), 1);
    return opt;
}

static void fill_meta(cf_ckpt_meta *m)
{
    *m = (cf_ckpt_meta){.step = 42, .epoch = 3};
    cf_rng_seed(&m->rng, 1234, 5);
    m->has_rng = true;
    m->has_data_state = true;
    m->data_state.epoch = 2;
    m->data_state.position = 64;
    cf_rng_seed(&m->data_state.rng, 99, 1);
    ck_assert_int_eq(cf_ckpt_meta_set_int(m, "levels", 2), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(m, "lr", 0.001), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_string(m, "coupling", "quad"), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_string(m, "note", "say \"hi\"\n\tback\\slash"), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_int(m, "big", -(1ll << 40)), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(m, "tiny", -2.5e-300), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(m, "whole", 3.0), CF_OK);
}

static const char *expected_json =
    "{\"levels\":2,\"lr\":0.001,\"coupling\":\"quad\","
    "\"note\":\"say \\\"hi\\\"\\n\\tback\\\\slash\",\"big\":-1099511627776,"
    "\"tiny\":-2.5e-300,\"whole\":3.0}";

static void expect_same_tensors(cf_params *a, cf_params *b)
{
    size_t es = cf_dtype_size(cf_params_dtype(a));
    for (int s = 0; s < 2; s++) {
        int n = s ? cf_params_state_count(a) : cf_params_count(a);
        for (int i = 0; i < n; i++) {
            cf_tensor *ta = s ? cf_params_state_at(a, i) : cf_params_at(a, i);
            cf_tensor *tb = cf_params_find(b, ta->name);
            ck_assert_ptr_nonnull(tb);
            ck_assert_msg(memcmp(ta->data, tb->data, (size_t)ta->numel * es) == 0, "'%s' differs",
                          ta->name);
        }
    }
}

static void expect_all_sevens(cf_params *ps)
{
    for (int s = 0; s < 2; s++) {
        int n = s ? cf_params_state_count(ps) : cf_params_count(ps);
        for (int i = 0; i < n; i++) {
            cf_tensor *t = s ? cf_params_state_at(ps, i) : cf_params_at(ps, i);
            for (int64_t j = 0; j < t->numel; j++)
                ck_assert_msg(cf_tensor_get(t, j) == 7.0, "'%s' changed by a failed load", t->name);
        }
    }
}

static void expect_same_meta(const cf_ckpt_meta *a, const cf_ckpt_meta *b)
{
    ck_assert_int_eq(a->step, b->step);
    ck_assert_int_eq(a->epoch, b->epoch);
    ck_assert_int_eq(memcmp(&a->rng, &b->rng, sizeof a->rng), 0);
    ck_assert(a->has_data_state == b->has_data_state);
    ck_assert_int_eq(memcmp(&a->data_state, &b->data_state, sizeof a->data_state), 0);
    ck_assert_int_eq(a->n_config, b->n_config);
    for (int i = 0; i < a->n_config; i++) {
        const cf_ckpt_entry *x = &a->config[i], *y = &b->config[i];
        ck_assert_str_eq(x->key, y->key);
        ck_assert_int_eq(x->type, y->type);
        if (x->type == CF_CKPT_TYPE_INT) ck_assert_int_eq(x->i, y->i);
        if (x->type == CF_CKPT_TYPE_DOUBLE) ck_assert_int_eq(memcmp(&x->d, &y->d, sizeof x->d), 0);
        if (x->type == CF_CKPT_TYPE_STRING) ck_assert_str_eq(x->s, y->s);
    }
}

/* Loop: f32, f64. Save, then load into a fresh set and optimizer: bit-identical parameters,
 * state, moments, counts, meta and configuration; the optimizer's options come back too. */
START_TEST(test_checkpoint_roundtrip)
{
    cf_dtype dt = _i ? CF_F64 : CF_F32;
    size_t es = cf_dtype_size(dt);
    cf_params *ps = make_model(dt, 0, 5);
    cf_adam *opt = make_trained_adam(ps);
    cf_ckpt_meta meta;
    fill_meta(&meta);
    const char *path = tpath("model.h5");
    ck_assert_msg(cf_checkpoint_save(path, ps, opt, &meta) == CF_OK, "%s", cf_last_error());
    expect_no_temporaries(tmpdir);

    cf_params *fresh = make_model(dt, 0, 0);
    cf_adam *fresh_opt = cf_adam_new(fresh, &test_opts);
    cf_ckpt_meta got = {0};
    ck_assert_int_eq(cf_ckpt_meta_set_string(&got, "stale", "freed by the load"), CF_OK);
    ck_assert_msg(cf_checkpoint_load(path, fresh, fresh_opt, &got) == CF_OK, "%s", cf_last_error());
    expect_same_tensors(ps, fresh);
    for (int i = 0; i < cf_params_count(ps); i++) {
        size_t off = cf_params_offset(ps, i) * es, n = (size_t)cf_params_at(ps, i)->numel * es;
        ck_assert_int_eq(cf_params_offset(ps, i), cf_params_offset(fresh, i));
        ck_assert(memcmp((char *)cf_adam_m(opt) + off, (char *)cf_adam_m(fresh_opt) + off, n) == 0);
        ck_assert(memcmp((char *)cf_adam_v(opt) + off, (char *)cf_adam_v(fresh_opt) + off, n) == 0);
    }
    ck_assert_int_eq(cf_adam_step_count(fresh_opt), 3);
    ck_assert_int_eq(cf_adam_skipped_count(fresh_opt), 1);
    expect_same_meta(&meta, &got);
    ck_assert_ptr_null(cf_ckpt_meta_find(&got, "stale"));
    ck_assert_str_eq(got.library_version, CF_VERSION_STRING);
    ck_assert_int_eq(got.format_version, CF_CHECKPOINT_VERSION);
    ck_assert(got.has_optimizer);
    ck_assert_int_eq(got.optimizer_steps, 3);
    ck_assert_int_eq(got.optimizer_skipped, 1);
    ck_assert_int_eq(memcmp(&got.optimizer, cf_adam_options(opt), sizeof got.optimizer), 0);

    /* The restored optimizer continues exactly as the original. */
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *a = cf_params_at(ps, i), *b = cf_params_at(fresh, i);
        for (int64_t j = 0; j < a->numel; j++) {
            cf_buf_set(dt, a->grad, j, 0.1 * (double)(j + i));
            cf_buf_set(dt, b->grad, j, 0.1 * (double)(j + i));
        }
    }
    ck_assert_int_eq(cf_adam_step(opt, NULL), CF_OK);
    ck_assert_int_eq(cf_adam_step(fresh_opt, NULL), CF_OK);
    expect_same_tensors(ps, fresh);

    cf_ckpt_meta_clear(&meta);
    cf_ckpt_meta_clear(&got);
    cf_adam_free(opt);
    cf_adam_free(fresh_opt);
    cf_params_free(ps);
    cf_params_free(fresh);
}
END_TEST

/* Loop: f32 file into an f64 set, f64 file into an f32 set. */
START_TEST(test_checkpoint_dtype_conversion)
{
    cf_dtype from = _i ? CF_F64 : CF_F32, to = _i ? CF_F32 : CF_F64;
    cf_params *ps = make_model(from, 0, 8), *other = make_model(to, 0, 0);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    ck_assert_msg(cf_checkpoint_load(path, other, NULL, NULL) == CF_OK, "%s", cf_last_error());
    for (int i = 0; i < cf_params_count(ps); i++) {
        cf_tensor *a = cf_params_at(ps, i), *b = cf_params_at(other, i);
        for (int64_t j = 0; j < a->numel; j++) {
            double want = from == CF_F64 ? (double)(float)cf_tensor_get(a, j) : cf_tensor_get(a, j);
            ck_assert_double_eq(cf_tensor_get(b, j), want);
        }
    }
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

/* What another tool sees, through the HDF5 C API only. */
static char *h5_string_attr(hid_t loc, const char *name)
{
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    ck_assert_msg(a >= 0, "no attribute %s", name);
    hid_t t = H5Aget_type(a);
    ck_assert(H5Tis_variable_str(t) > 0);
    char *s = NULL, *copy;
    ck_assert(H5Aread(a, t, &s) >= 0);
    copy = strdup(s);
    H5free_memory(s);
    H5Tclose(t);
    H5Aclose(a);
    return copy;
}

static int64_t h5_int_attr(hid_t loc, const char *name)
{
    int64_t v = -1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    ck_assert_msg(a >= 0, "no attribute %s", name);
    hid_t t = H5Aget_type(a);
    ck_assert_int_eq(H5Tget_class(t), H5T_INTEGER);
    ck_assert(H5Aread(a, H5T_NATIVE_INT64, &v) >= 0);
    H5Tclose(t);
    H5Aclose(a);
    return v;
}

START_TEST(test_checkpoint_layout)
{
    cf_params *ps = make_model(CF_F32, 0, 3);
    cf_adam *opt = make_trained_adam(ps);
    cf_ckpt_meta meta;
    fill_meta(&meta);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, opt, &meta), CF_OK);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert(f >= 0);
    char *s = h5_string_attr(f, "format");
    ck_assert_str_eq(s, "cincflow-checkpoint");
    free(s);
    s = h5_string_attr(f, "library_version");
    ck_assert_str_eq(s, CF_VERSION_STRING);
    free(s);
    ck_assert_int_eq(h5_int_attr(f, "format_version"), CF_CHECKPOINT_VERSION);
    ck_assert_int_eq(h5_int_attr(f, "step"), 42);
    ck_assert_int_eq(h5_int_attr(f, "epoch"), 3);
    uint64_t words[4];
    hid_t a = H5Aopen(f, "rng_state", H5P_DEFAULT);
    ck_assert(H5Aread(a, H5T_NATIVE_UINT64, words) >= 0);
    H5Aclose(a);
    ck_assert_int_eq(memcmp(words, meta.rng.s, sizeof words), 0);

    static const char *layouts[][2] = {{"levels.0.conv.weight", "HWIO"},
                                       {"levels.0.conv.bias", "C"},
                                       {"prior.scale", "scalar"},
                                       {"dense.w", "ND"}};
    for (int k = 0; k < 4; k++) {
        char name[128];
        snprintf(name, sizeof name, "/params/%s", layouts[k][0]);
        hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
        ck_assert_msg(d >= 0, "no dataset %s", name);
        hid_t t = H5Dget_type(d);
        ck_assert(H5Tequal(t, H5T_IEEE_F32LE) > 0);
        s = h5_string_attr(d, "layout");
        ck_assert_str_eq(s, layouts[k][1]);
        free(s);
        if (k == 0) { /* the values, in HWIO order */
            float w[36];
            ck_assert(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) >= 0);
            ck_assert_int_eq(memcmp(w, cf_params_at(ps, 0)->data, sizeof w), 0);
        }
        H5Tclose(t);
        H5Dclose(d);
    }
    static const char *present[] = {"/state/levels.0.actnorm.initialized", "/optimizer/m/dense.w",
                                    "/optimizer/v/levels.0.conv.bias"};
    for (int k = 0; k < 3; k++)
        ck_assert_msg(H5Lexists(f, present[k], H5P_DEFAULT) > 0, "%s", present[k]);
    hid_t g = H5Gopen2(f, "optimizer", H5P_DEFAULT);
    s = h5_string_attr(g, "kind");
    ck_assert_str_eq(s, "adamw");
    free(s);
    ck_assert_int_eq(h5_int_attr(g, "step"), 3);
    ck_assert_int_eq(h5_int_attr(g, "skipped"), 1);
    H5Gclose(g);
    g = H5Gopen2(f, "config", H5P_DEFAULT);
    ck_assert_int_eq(h5_int_attr(g, "levels"), 2);
    s = h5_string_attr(g, "coupling");
    ck_assert_str_eq(s, "quad");
    free(s);
    s = h5_string_attr(g, "json");
    ck_assert_str_eq(s, expected_json);
    free(s);
    H5Gclose(g);
    H5Fclose(f);
    cf_ckpt_meta_clear(&meta);
    cf_adam_free(opt);
    cf_params_free(ps);
}
END_TEST

/* Loop over mismatches between the file (the plain model) and the set: the first is reported
 * by name, and the set is left as it was. */
START_TEST(test_checkpoint_mismatch)
{
    static const struct {
        unsigned variant;
        cf_status status;
        const char *needles[3];
    } cases[] = {
        {MODEL_EXTRA_PARAM, CF_ERR_NOT_FOUND, {"'extra.w'", "missing"}},
        {MODEL_NO_DENSE, CF_ERR_SHAPE, {"'dense.w'", "the model does not"}},
        {MODEL_DENSE_T, CF_ERR_SHAPE, {"'dense.w'", "(3, 5) in the file", "(5, 3) in the model"}},
        {MODEL_NO_STATS, CF_ERR_SHAPE, {"'levels.0.actnorm.stats'", "state tensor"}},
        /* bias comes before dense.w and extra.w: it is the one reported */
        {MODEL_BIAS_3 | MODEL_DENSE_T | MODEL_EXTRA_PARAM,
         CF_ERR_SHAPE,
         {"'levels.0.conv.bias'", "(2) in the file", "(3) in the model"}},
    };
    const char *path = tpath("model.h5");
    cf_params *ps = make_model(CF_F32, 0, 4);
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    cf_params *other = make_model(CF_F32, cases[_i].variant, 0);
    cf_ckpt_meta meta = {0};
    cf_status st = cf_checkpoint_load(path, other, NULL, &meta);
    ck_assert_msg(st == cases[_i].status, "status %d (%s)", (int)st, cf_last_error());
    for (int k = 0; k < 3 && cases[_i].needles[k]; k++) expect_failure(st, cases[_i].needles[k]);
    expect_failure(st, path);
    expect_all_sevens(other);
    ck_assert_int_eq(meta.step, 0);
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

/* Loop: NaN, +Inf in a parameter, -Inf in a state tensor, NaN in a moment. */
START_TEST(test_checkpoint_non_finite)
{
    cf_params *ps = make_model(CF_F32, 0, 6);
    cf_adam *opt = make_trained_adam(ps);
    const char *name = _i == 2 ? "levels.0.actnorm.stats" : "levels.0.conv.bias";
    cf_tensor *t = cf_params_find(ps, name);
    if (_i == 3) {
        size_t off = cf_params_offset(ps, 1);
        ((float *)cf_adam_m(opt))[off + 1] = NAN;
    } else {
        cf_tensor_set(t, 1, _i == 0 ? NAN : _i == 1 ? INFINITY : -INFINITY);
    }
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, opt, NULL), CF_OK);
    cf_params *other = make_model(CF_F32, 0, 0);
    cf_adam *other_opt = cf_adam_new(other, &test_opts);
    expect_failure(cf_checkpoint_load(path, other, other_opt, NULL), name);
    ck_assert_int_eq(cf_checkpoint_load(path, other, other_opt, NULL), CF_ERR_NUMERIC);
    expect_failure(-1, "non-finite");
    expect_all_sevens(other);
    ck_assert_int_eq(cf_adam_step_count(other_opt), 0);
    cf_adam_free(opt);
    cf_adam_free(other_opt);
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

START_TEST(test_checkpoint_optimizer_required)
{
    cf_params *ps = make_model(CF_F32, 0, 6), *other = make_model(CF_F32, 0, 0);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    cf_adam *opt = cf_adam_new(other, NULL);
    expect_failure(cf_checkpoint_load(path, other, opt, NULL), "no optimizer state");
    expect_all_sevens(other);
    /* Without asking for the optimizer, the same file loads. */
    ck_assert_int_eq(cf_checkpoint_load(path, other, NULL, NULL), CF_OK);
    cf_adam_free(opt);
    /* An optimizer of another kind is refused. */
    cf_adam *trained = make_trained_adam(ps);
    ck_assert_int_eq(cf_checkpoint_save(path, ps, trained, NULL), CF_OK);
    opt = cf_adam_new(other, &(cf_adam_opts){.kind = CF_OPTIM_KIND_ADAMAX});
    expect_failure(cf_checkpoint_load(path, other, opt, NULL), "adamw");
    cf_adam_free(opt);
    cf_adam_free(trained);
    cf_params_free(ps);
    cf_params_free(other);
}
END_TEST

/* Files that are not checkpoints, or damaged ones: an error naming the file, never a crash. */
START_TEST(test_checkpoint_bad_files)
{
    cf_params *ps = make_model(CF_F32, 0, 0);
    cf_ckpt_meta meta = {0};
    const char *missing = tpath("missing.h5");
    ck_assert_int_eq(cf_checkpoint_load(missing, ps, NULL, NULL), CF_ERR_NOT_FOUND);
    expect_failure(-1, missing);

    const char *text = tpath("text.h5");
    write_bytes(text, "hello, not hdf5\n", 16);
    expect_failure(cf_checkpoint_load(text, ps, NULL, NULL), text);
    expect_failure(cf_checkpoint_read_config(text, &meta), "not an HDF5 file");

    /* An HDF5 file of another program. */
    const char *foreign = tpath("foreign.h5");
    hid_t f = H5Fcreate(foreign, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Fclose(f);
    expect_failure(cf_checkpoint_load(foreign, ps, NULL, NULL), "not a cincflow checkpoint");

    /* A checkpoint of a newer format version. */
    cf_params *good = make_model(CF_F32, 0, 2);
    const char *newer = tpath("newer.h5");
    ck_assert_int_eq(cf_checkpoint_save(newer, good, NULL, NULL), CF_OK);
    f = H5Fopen(newer, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    int64_t next = CF_CHECKPOINT_VERSION + 1;
    H5Awrite(a, H5T_NATIVE_INT64, &next);
    H5Aclose(a);
    H5Fclose(f);
    char expected[64];
    snprintf(expected, sizeof expected, "format version %d", CF_CHECKPOINT_VERSION + 1);
    expect_failure(cf_checkpoint_load(newer, ps, NULL, NULL), expected);

    /* Truncated copies of a good checkpoint, cut at several places. */
    const char *good_path = tpath("good.h5");
    ck_assert_int_eq(cf_checkpoint_save(good_path, good, NULL, NULL), CF_OK);
    size_t n;
    uint8_t *bytes = read_bytes(good_path, &n);
    const char *cut = tpath("cut.h5");
    for (int k = 1; k < 8; k++) {
        write_bytes(cut, bytes, n * (size_t)k / 8);
        cf_status st = cf_checkpoint_load(cut, ps, NULL, &meta);
        ck_assert_msg(st < 0, "a checkpoint cut to %d/8 loaded", k);
        expect_failure(st, cut);
    }
    free(bytes);
    expect_all_sevens(ps);
    cf_params_free(ps);
    cf_params_free(good);
}
END_TEST

static bool running_as_root(void)
{
    return geteuid() == 0;
}

/* Loop over ways a save can fail: each returns an error naming the path, leaves the previous
 * checkpoint loadable with its old values, and leaves no temporary file. */
START_TEST(test_checkpoint_failed_write_keeps_old)
{
    const char *path = tpath("model.h5");
    cf_params *old = make_model(CF_F32, MODEL_BIG, 1), *update = make_model(CF_F32, MODEL_BIG, 2);
    ck_assert_int_eq(cf_checkpoint_save(path, old, NULL, NULL), CF_OK);
    const char *target = path;
    cf_status st = CF_OK;
    switch (_i) {
    case 0: /* into a folder that does not exist */
        target = tpath("no/such/folder/model.h5");
        st = cf_checkpoint_save(target, update, NULL, NULL);
        break;
    case 1: { /* a name HDF5 would take for a path */
        cf_params *slash = make_model(CF_F32, MODEL_BIG, 2);
        cf_params_add(slash, "bad/name", 1, (int64_t[]){2});
        st = cf_checkpoint_save(path, slash, NULL, NULL);
        expect_failure(st, "bad/name");
        cf_params_free(slash);
        break;
    }
    case 2: { /* the disk "fills up": writes beyond 8 KiB fail with EFBIG */
        struct rlimit saved, small = {8192, 8192};
        getrlimit(RLIMIT_FSIZE, &saved);
        small.rlim_max = saved.rlim_max;
        void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
        st = cf_checkpoint_save(path, update, NULL, NULL);
        setrlimit(RLIMIT_FSIZE, &saved);
        signal(SIGXFSZ, old_handler);
        break;
    }
    case 3: /* the path is a folder: the final rename fails */
        target = tpath("folder.h5");
        ck_assert_int_eq(mkdir(target, 0700), 0);
        st = cf_checkpoint_save(target, update, NULL, NULL);
        break;
    case 4: /* a read-only folder (root ignores permissions: nothing to test then) */
        if (running_as_root()) {
            fprintf(stderr, "test_checkpoint_failed_write_keeps_old: running as root, the "
                            "read-only folder case is skipped\n");
            cf_params_free(old);
            cf_params_free(update);
            return;
        }
        ck_assert_int_eq(chmod(tmpdir, 0500), 0);
        st = cf_checkpoint_save(path, update, NULL, NULL);
        chmod(tmpdir, 0700);
        break;
    }
    expect_failure(st, target);
    expect_no_temporaries(tmpdir);
    cf_params *back = make_model(CF_F32, MODEL_BIG, 0);
    ck_assert_msg(cf_checkpoint_load(path, back, NULL, NULL) == CF_OK, "%s", cf_last_error());
    expect_same_tensors(old, back);
    cf_params_free(back);
    cf_params_free(old);
    cf_params_free(update);
}
END_TEST

/* Saving over an existing checkpoint replaces it. */
START_TEST(test_checkpoint_overwrite)
{
    const char *path = tpath("model.h5");
    cf_params *a = make_model(CF_F64, 0, 1), *b = make_model(CF_F64, 0, 2);
    cf_params *back = make_model(CF_F64, 0, 0);
    ck_assert_int_eq(cf_checkpoint_save(path, a, NULL, NULL), CF_OK);
    ck_assert_int_eq(cf_checkpoint_save(path, b, NULL, NULL), CF_OK);
    ck_assert_int_eq(cf_checkpoint_load(path, back, NULL, NULL), CF_OK);
    expect_same_tensors(b, back);
    expect_no_temporaries(tmpdir);
    cf_params_free(a);
    cf_params_free(b);
    cf_params_free(back);
}
END_TEST

/* A temporary left by a writer that was killed mid-save ("<path>.tmp.<pid>" whose pid no longer
 * exists) is removed by the next save to the same path; a live process's temporary, another
 * path's and a name that only looks alike are kept. */
START_TEST(test_checkpoint_stale_temporaries)
{
    const char *path = tpath("model.h5");
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) _exit(0);
    ck_assert_int_eq(waitpid(child, NULL, 0), child); /* reaped: the pid names no process */
    ck_assert_int_eq(kill(child, 0), -1);
    ck_assert_int_eq(errno, ESRCH);
    char stale[600], live[600], other[600], alike[600];
    snprintf(stale, sizeof stale, "%s.tmp.%ld", path, (long)child);
    snprintf(live, sizeof live, "%s.tmp.%ld", path, (long)getppid());
    snprintf(other, sizeof other, "%s.tmp.%ld", tpath("other.h5"), (long)child);
    snprintf(alike, sizeof alike, "%s.tmp.%ld.x", path, (long)child);
    const char *files[4] = {stale, live, other, alike};
    for (int i = 0; i < 4; i++) write_bytes(files[i], "partial", 7);
    cf_params *ps = make_model(CF_F32, 0, 1), *back = make_model(CF_F32, 0, 0);
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, NULL), CF_OK);
    ck_assert_msg(!exists(stale), "the stale temporary %s was kept", stale);
    for (int i = 1; i < 4; i++) ck_assert_msg(exists(files[i]), "%s was removed", files[i]);
    ck_assert_int_eq(cf_checkpoint_load(path, back, NULL, NULL), CF_OK);
    expect_same_tensors(ps, back);
    for (int i = 1; i < 4; i++) unlink(files[i]);
    expect_no_temporaries(tmpdir);
    cf_params_free(ps);
    cf_params_free(back);
}
END_TEST

/* The configuration alone, as a tool that rebuilds the model would read it. */
START_TEST(test_checkpoint_read_config)
{
    cf_params *ps = make_model(CF_F32, 0, 1);
    cf_ckpt_meta meta;
    fill_meta(&meta);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, &meta), CF_OK);
    cf_ckpt_meta got = {0};
    ck_assert_msg(cf_checkpoint_read_config(path, &got) == CF_OK, "%s", cf_last_error());
    expect_same_meta(&meta, &got);
    ck_assert(!got.has_optimizer);
    int64_t levels;
    double lr, levels_d;
    const char *coupling;
    ck_assert_int_eq(cf_ckpt_meta_get_int(&got, "levels", &levels), CF_OK);
    ck_assert_int_eq(levels, 2);
    ck_assert_int_eq(cf_ckpt_meta_get_double(&got, "lr", &lr), CF_OK);
    ck_assert_double_eq(lr, 0.001);
    ck_assert_int_eq(cf_ckpt_meta_get_double(&got, "levels", &levels_d), CF_OK);
    ck_assert_double_eq(levels_d, 2.0);
    ck_assert_int_eq(cf_ckpt_meta_get_string(&got, "coupling", &coupling), CF_OK);
    ck_assert_str_eq(coupling, "quad");
    ck_assert_int_eq(cf_ckpt_meta_get_int(&got, "coupling", &levels), CF_ERR_DTYPE);
    expect_failure(-1, "'coupling' is a string");
    ck_assert_int_eq(cf_ckpt_meta_get_int(&got, "width", &levels), CF_ERR_NOT_FOUND);
    expect_failure(-1, "'width'");
    cf_ckpt_meta_clear(&meta);
    cf_ckpt_meta_clear(&got);
    cf_params_free(ps);
}
END_TEST

START_TEST(test_meta_entries)
{
    cf_ckpt_meta m = {0};
    ck_assert_int_eq(cf_ckpt_meta_set_int(&m, "a", 1), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_string(&m, "b", "x"), CF_OK);
    ck_assert_int_eq(cf_ckpt_meta_set_double(&m, "a", 2.5), CF_OK); /* replaced in place */
    ck_assert_int_eq(cf_ckpt_meta_set_string(&m, "b", "y"), CF_OK);
    ck_assert_int_eq(m.n_config, 2);
    ck_assert_str_eq(m.config[0].key, "a");
    ck_assert_int_eq(m.config[0].type, CF_CKPT_TYPE_DOUBLE);
    ck_assert_str_eq(m.config[1].s, "y");
    expect_failure(cf_ckpt_meta_set_int(&m, "json", 1), "json");
    expect_failure(cf_ckpt_meta_set_int(&m, "", 1), "key ''");
    expect_failure(cf_ckpt_meta_set_int(&m, "a\nb", 1), "printable");
    ck_assert_int_eq(m.n_config, 2);
    cf_ckpt_meta_clear(&m);
    ck_assert_int_eq(m.n_config, 0);
    ck_assert_ptr_null(m.config);
    cf_ckpt_meta_clear(NULL);
}
END_TEST

/* The batcher's state through a checkpoint: the resumed batcher draws the batch the original
 * would have drawn next. */
START_TEST(test_checkpoint_batcher_resume)
{
    cf_dataset *ds = cf_dataset_open("synthetic:4x4x3:30", NULL);
    cf_batcher *b = make_batcher(ds, 4, 8, 0, 1);
    cf_tensor *x = batch_tensor(ds, 4, CF_F32), *y = batch_tensor(ds, 4, CF_F32);
    for (int k = 0; k < 9; k++) ck_assert_int_eq(cf_batcher_next(b, x, NULL, NULL), CF_OK);
    cf_ckpt_meta meta = {.step = 9, .has_data_state = true, .data_state = cf_batcher_get_state(b)};
    cf_params *ps = make_model(CF_F32, 0, 1);
    const char *path = tpath("model.h5");
    ck_assert_int_eq(cf_checkpoint_save(path, ps, NULL, &meta), CF_OK);
    ck_assert_int_eq(cf_batcher_next(b, x, NULL, NULL), CF_OK);

    cf_ckpt_meta got = {0};
    ck_assert_int_eq(cf_checkpoint_load(path, ps, NULL, &got), CF_OK);
    ck_assert(got.has_data_state);
    cf_batcher *resumed = make_batcher(ds, 4, 8, 0, 1);
    ck_assert_int_eq(cf_batcher_set_state(resumed, &got.data_state), CF_OK);
    ck_assert_int_eq(cf_batcher_next(resumed, y, NULL, NULL), CF_OK);
    ck_assert_int_eq(memcmp(x->data, y->data, (size_t)x->numel * sizeof(float)), 0);
    cf_ckpt_meta_clear(&got);
    cf_params_free(ps);
    cf_tensor_free(x);
    cf_tensor_free(y);
    cf_batcher_free(b);
    cf_batcher_free(resumed);
    cf_dataset_free(ds);
}
END_TEST

/* ---- the runner ------------------------------------------------------------------------- */

/* The checkpoint tests/io_h5py_check.py reads: "levels.0.conv.weight" (3, 3, 2, 2) holds
 * 0.25 * i at flat index i, config levels = 2 and coupling = "quad". */
static int write_known_checkpoint(const char *path)
{
    cf_params *ps = cf_params_new(CF_F32);
    cf_tensor *w = cf_params_add(ps, "levels.0.conv.weight", 4, (int64_t[]){3, 3, 2, 2});
    for (int64_t i = 0; i < w->numel; i++) cf_tensor_set(w, i, 0.25 * (double)i);
    cf_params_add_state(ps, "levels.0.actnorm.initialized", 1, (int64_t[]){1});
    cf_ckpt_meta meta = {.step = 7, .has_rng = true};
    cf_rng_seed(&meta.rng, 3, 1);
    cf_ckpt_meta_set_int(&meta, "levels", 2);
    cf_ckpt_meta_set_string(&meta, "coupling", "quad");
    cf_status st = cf_checkpoint_save(path, ps, NULL, &meta);
    if (st != CF_OK) fprintf(stderr, "test_io: %s\n", cf_last_error());
    cf_ckpt_meta_clear(&meta);
    cf_params_free(ps);
    return st == CF_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}

static Suite *io_suite(void)
{
    Suite *s = suite_create("io");
    TCase *data = tcase_create("data");
    tcase_add_checked_fixture(data, make_tmpdir, remove_tmpdir);
    tcase_add_loop_test(data, test_idx_with_labels, 0, 4);
    tcase_add_test(data, test_idx_without_labels);
    tcase_add_loop_test(data, test_idx_failures, 0, 13);
    tcase_add_loop_test(data, test_cifar10, 0, 2);
    tcase_add_loop_test(data, test_cifar10_failures, 0, 3);
    tcase_add_loop_test(data, test_png_folder, 0, 2);
    tcase_add_test(data, test_png_palette);
    tcase_add_loop_test(data, test_png_failures, 0, 8);
    tcase_add_test(data, test_png_folder_missing_or_empty);
    tcase_add_test(data, test_synthetic);
    tcase_add_test(data, test_spec_errors);
    tcase_add_test(data, test_fashion_mnist_spec);
    suite_add_tcase(s, data);

    TCase *batcher = tcase_create("batcher");
    tcase_add_checked_fixture(batcher, make_tmpdir, remove_tmpdir);
    tcase_add_test(batcher, test_batcher_permutation);
    tcase_add_test(batcher, test_batcher_deterministic);
    tcase_add_loop_test(batcher, test_batcher_sharding, 0, 2);
    tcase_add_test(batcher, test_batcher_noise_per_position);
    tcase_add_loop_test(batcher, test_batcher_dequantization, 0, 2);
    tcase_add_test(batcher, test_batcher_state_restore);
    tcase_add_test(batcher, test_batcher_errors);
    tcase_add_test(batcher, test_dataset_fill);
    suite_add_tcase(s, batcher);

    TCase *image = tcase_create("image");
    tcase_add_checked_fixture(image, make_tmpdir, remove_tmpdir);
    tcase_add_loop_test(image, test_png_grid_roundtrip, 0, 8);
    tcase_add_test(image, test_png_grid_failures);
    suite_add_tcase(s, image);

    TCase *ckpt = tcase_create("checkpoint");
    tcase_add_checked_fixture(ckpt, make_tmpdir, remove_tmpdir);
    tcase_add_loop_test(ckpt, test_checkpoint_roundtrip, 0, 2);
    tcase_add_loop_test(ckpt, test_checkpoint_dtype_conversion, 0, 2);
    tcase_add_test(ckpt, test_checkpoint_layout);
    tcase_add_loop_test(ckpt, test_checkpoint_mismatch, 0, 5);
    tcase_add_loop_test(ckpt, test_checkpoint_non_finite, 0, 4);
    tcase_add_test(ckpt, test_checkpoint_optimizer_required);
    tcase_add_test(ckpt, test_checkpoint_bad_files);
    tcase_add_loop_test(ckpt, test_checkpoint_failed_write_keeps_old, 0, 5);
    tcase_add_test(ckpt, test_checkpoint_overwrite);
    tcase_add_test(ckpt, test_checkpoint_stale_temporaries);
    tcase_add_test(ckpt, test_checkpoint_read_config);
    tcase_add_test(ckpt, test_meta_entries);
    tcase_add_test(ckpt, test_checkpoint_batcher_resume);
    suite_add_tcase(s, ckpt);
    return s;
}

/* The installed Fashion-MNIST: 0 passed, 1 failed, 77 skipped (not installed, outside CI). */
static int check_fashion_mnist_installed(void)
{
    const char *file = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    if (!exists(file)) {
        const char *ci = getenv("CI");
        bool in_ci = ci && strcmp(ci, "true") == 0;
        fprintf(stderr, "dataset_fashion_mnist: %s is missing (install dataset-fashion-mnist, as "
                        "tests/run.sh does): %s\n", file,
                in_ci ? "FAILED, CI=true needs it" : "skipped");
        return in_ci ? EXIT_FAILURE : 77;
    }
    Suite *s = suite_create("io");
    TCase *tc = tcase_create("fashion-mnist installed");
    tcase_add_test(tc, test_fashion_mnist_installed);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-checkpoint") == 0)
        return write_known_checkpoint(argv[2]);
    if (argc == 2 && strcmp(argv[1], "--fashion-mnist-installed") == 0)
        return check_fashion_mnist_installed();
    SRunner *sr = srunner_create(io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
