/* io_fixtures.h: what the io/ test runners share (test_io_data.c, test_io_batcher.c,
 * test_io_checkpoint.c): a fresh temporary folder per test, writing and reading files, idx files
 * made here, a batcher over them, and the failure check that a message names the file. */
#ifndef CF_IO_FIXTURES_H
#define CF_IO_FIXTURES_H

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

static __attribute__((unused)) char tmpdir[128];

static __attribute__((unused)) void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cf_test_io.XXXXXX");
    ck_assert_msg(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static __attribute__((unused)) int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    chmod(path, 0700); /* read-only folders made by a test */
    return remove(path);
}

static __attribute__((unused)) void remove_tmpdir(void)
{
    if (tmpdir[0]) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A path in the temporary folder (a few rotating buffers). */
static __attribute__((unused)) const char *tpath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static __attribute__((unused)) const char *tpath(const char *fmt, ...)
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

static __attribute__((unused)) void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static __attribute__((unused)) void write_gz(const char *path, const void *data, size_t n)
{
    gzFile gz = gzopen(path, "wb");
    ck_assert_msg(gz, "cannot create %s", path);
    ck_assert_int_eq(gzwrite(gz, data, (unsigned)n), (int)n);
    ck_assert_int_eq(gzclose(gz), Z_OK);
}

static __attribute__((unused)) uint8_t *read_bytes(const char *path, size_t *n)
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

static __attribute__((unused)) bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* No file of the folder has ".tmp." in its name. */
static __attribute__((unused)) void expect_no_temporaries(const char *dir)
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

static __attribute__((unused)) uint8_t idx_pixel(int i, int y, int x)
{
    return (uint8_t)(i * 37 + y * 11 + x * 5 + 3);
}

/* An idx3 image file's bytes: header (n, h, w) then n_written images (the rest missing). */
static __attribute__((unused)) uint8_t *idx3_bytes(uint32_t n, uint32_t h, uint32_t w, int n_written, size_t *size)
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

static __attribute__((unused)) uint8_t *idx1_bytes(uint32_t n, size_t *size)
{
    uint8_t *b = malloc(8 + n);
    b[0] = 0, b[1] = 0, b[2] = 0x08, b[3] = 1;
    for (int k = 0; k < 4; k++) b[4 + k] = (uint8_t)(n >> (24 - 8 * k));
    for (uint32_t i = 0; i < n; i++) b[8 + i] = (uint8_t)(i % 3 + 1);
    *size = 8 + n;
    return b;
}

static __attribute__((unused)) void write_idx_pair(const char *images, const char *labels, bool gz_images, bool gz_labels)
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


/* ---- the batcher ------------------------------------------------------------------------ */

static __attribute__((unused)) cf_batcher *make_batcher(const cf_dataset *ds, int64_t batch, uint64_t seed, int rank,
                                int n_ranks)
{
    cf_batcher *b = cf_batcher_new(
        ds, &(cf_batcher_opts){.batch = batch, .seed = seed, .rank = rank, .n_ranks = n_ranks});
    ck_assert_msg(b, "%s", cf_last_error());
    return b;
}

static __attribute__((unused)) cf_tensor *batch_tensor(const cf_dataset *ds, int64_t batch, cf_dtype dtype)
{
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    cf_tensor *x = cf_tensor_alloc(dtype, 4, (int64_t[]){batch, h, w, c});
    ck_assert_ptr_nonnull(x);
    return x;
}


#endif
