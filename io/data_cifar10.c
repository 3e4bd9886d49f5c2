/* data_cifar10.c: the CIFAR-10 binary format (cifar-10-binary.tar.gz, unpacked).
 *
 * Each file is a run of 3073-byte records: one label byte (0..9), then the 32x32 red plane, the
 * green plane and the blue plane, each row-major. The train split is data_batch_1.bin ..
 * data_batch_5.bin, the test split test_batch.bin, in DIR or in DIR/cifar-10-batches-bin (the
 * folder the archive unpacks to). Record counts come from the file sizes, which are checked
 * before anything is allocated; pixels are stored HWC.
 *
 * Not here: CIFAR-100 (two label bytes), the Python pickle version of the data set.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_io_impl.h"

#define SIDE          32
#define PLANE         (SIDE * SIDE)
#define RECORD        (1 + 3 * PLANE)
#define N_TRAIN_FILES 5
#define N_CLASSES     10

/* The folder holding the files: DIR itself, or the archive's folder inside it. */
static char *find_dir(const char *dir, const char *first_file)
{
    char *inner = cf__strprintf("%s/cifar-10-batches-bin/%s", dir, first_file);
    char *plain = cf__strprintf("%s/%s", dir, first_file);
    int64_t size;
    bool use_inner = inner && plain && cf__file_size(plain, &size) == CF_ERR_NOT_FOUND &&
                     cf__file_size(inner, &size) != CF_ERR_NOT_FOUND;
    free(inner);
    free(plain);
    return use_inner ? cf__strprintf("%s/cifar-10-batches-bin", dir) : cf__strprintf("%s", dir);
}

/* Reads one file's records into images first .. first + n - 1. */
static cf_status read_file(cf_dataset *ds, const char *path, int64_t first, int64_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return cf_set_error(CF_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    setvbuf(f, NULL, _IOFBF, 1 << 17);
    uint8_t rec[RECORD];
    cf_status st = CF_OK;
    for (int64_t r = 0; r < n && st == CF_OK; r++) {
        if (fread(rec, 1, RECORD, f) != RECORD) {
            st = cf_set_error(CF_ERR_IO, "%s: record %lld could not be read (%s)", path,
                              (long long)r, ferror(f) ? strerror(errno) : "the file shrank");
            break;
        }
        if (rec[0] >= N_CLASSES) {
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: record %lld has label %d (CIFAR-10 labels "
                              "are 0..9; is this CIFAR-100 or another format?)",
                              path, (long long)r, rec[0]);
            break;
        }
        ds->labels[first + r] = rec[0];
        uint8_t *dst = ds->pixels + (size_t)(first + r) * ds->image_bytes;
        for (int p = 0; p < PLANE; p++)
            for (int c = 0; c < 3; c++) dst[3 * p + c] = rec[1 + c * PLANE + p];
    }
    fclose(f);
    return st;
}

cf_status cf__data_load_cifar10(cf_dataset *ds, const char *dir, bool test)
{
    int n_files = test ? 1 : N_TRAIN_FILES;
    char *names[N_TRAIN_FILES] = {0};
    int64_t counts[N_TRAIN_FILES] = {0}, total = 0;
    cf_status st = CF_OK;
    char *base = find_dir(dir, test ? "test_batch.bin" : "data_batch_1.bin");
    if (!base) return cf_set_error(CF_ERR_NOMEM, "cifar10:%s: out of memory", dir);
    for (int i = 0; i < n_files && st == CF_OK; i++) {
        names[i] = test ? cf__strprintf("%s/test_batch.bin", base)
                        : cf__strprintf("%s/data_batch_%d.bin", base, i + 1);
        if (!names[i]) {
            st = cf_set_error(CF_ERR_NOMEM, "cifar10:%s: out of memory", dir);
            break;
        }
        int64_t size;
        st = cf__file_size(names[i], &size);
        if (st == CF_ERR_NOT_FOUND)
            st = cf_set_error(st,
                              "%s: no such file (cifar10:DIR needs data_batch_1.bin .. "
                              "data_batch_5.bin and test_batch.bin of the CIFAR-10 binary "
                              "version)",
                              names[i]);
        if (st != CF_OK) break;
        if (size == 0 || size % RECORD != 0) {
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: %lld bytes is not a whole number of %d-byte "
                              "CIFAR-10 records (1 label byte and 32x32x3 "
                              "pixels): truncated or not CIFAR-10",
                              names[i], (long long)size, RECORD);
            break;
        }
        counts[i] = size / RECORD;
        total += counts[i];
    }
    if (st == CF_OK) st = cf__data_check_shape(names[0], total, SIDE, SIDE, 3);
    if (st == CF_OK) st = cf__data_alloc(ds, names[0], total, SIDE, SIDE, 3, true);
    int64_t first = 0;
    for (int i = 0; i < n_files && st == CF_OK; i++) {
        st = read_file(ds, names[i], first, counts[i]);
        first += counts[i];
    }
    for (int i = 0; i < n_files; i++) free(names[i]);
    free(base);
    return st;
}
