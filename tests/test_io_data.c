/* test_io_data.c: the data set loaders of io/ and PNG grids.
 *
 * Every input file is made here, in a fresh temporary folder per test (removed afterwards):
 * idx files plain and gzip, CIFAR-10 records, PNG folders (written with libpng directly, not
 * with the code under test), broken variants of each. Loaders must succeed on the good files
 * with the exact bytes written, and fail on each broken one with a negative status and a
 * message that names the file.
 *
 * `test_io_data --fashion-mnist-installed` (CTest dataset_fashion_mnist) checks Debian's
 * dataset-fashion-mnist: skipped (exit 77) where it is missing, failed then under CI=true.
 */
#include "io_fixtures.h"

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

/* Run alone (`test_io_data --fashion-mnist-installed`, CTest dataset_fashion_mnist), which reports
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

/* ---- the runner ------------------------------------------------------------------------- */

static Suite *io_suite(void)
{
    Suite *s = suite_create("io data");
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
    TCase *image = tcase_create("image");
    tcase_add_checked_fixture(image, make_tmpdir, remove_tmpdir);
    tcase_add_loop_test(image, test_png_grid_roundtrip, 0, 8);
    tcase_add_test(image, test_png_grid_failures);
    suite_add_tcase(s, image);
    return s;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--fashion-mnist-installed") == 0)
        return check_fashion_mnist_installed();
    (void)argc, (void)argv;
    SRunner *sr = srunner_create(io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
