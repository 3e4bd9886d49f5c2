/* fuzz_cifar10.c: the CIFAR-10 binary loader (io/data_cifar10.c) through
 * cf_dataset_open("cifar10:DIR").
 *
 * Input: byte 0 flags, then for each file of the split (test: test_batch.bin; train:
 * data_batch_1.bin .. data_batch_5.bin) a little-endian uint32 length and that many bytes (as
 * many as are left); bytes after the last file's share go to it too. Flags:
 *   1   split "test"
 *   2   the files go to DIR/cifar-10-batches-bin (the archive's folder) instead of DIR
 *   4 << i  (i = 0..4): train file i + 1 is left out
 */
#include <string.h>

#include "fuzz_common.h"

int cf_fuzz_cifar10(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    unsigned flags = p < end ? *p++ : 0;
    bool test = flags & 1;
    const char *sub = flags & 2 ? "d/cifar-10-batches-bin" : "d";
    cf_fuzz_mkdir("d");
    if (flags & 2) cf_fuzz_mkdir(sub);
    int n_files = test ? 1 : 5;
    for (int i = 0; i < n_files; i++) {
        uint32_t n = cf_fuzz_take_u32(&p, end);
        size_t left = (size_t)(end - p);
        size_t take = i == n_files - 1 ? left : n < left ? n : left;
        char name[128];
        if (test)
            snprintf(name, sizeof name, "%s/test_batch.bin", sub);
        else
            snprintf(name, sizeof name, "%s/data_batch_%d.bin", sub, i + 1);
        if (test || !(flags & (4u << i))) cf_fuzz_write(name, p, take, 0);
        p += take;
    }
    char dir[1024], spec[1100];
    snprintf(spec, sizeof spec, "cifar10:%s", cf_fuzz_path(dir, sizeof dir, "d"));
    cf_dataset *ds = cf_dataset_open(spec, test ? "test" : "train");
    cf_fuzz_accepted = ds != NULL;
    if (ds) {
        cf_fuzz_check_dataset(ds);
        int h, w, c;
        cf_dataset_shape(ds, &h, &w, &c);
        CF_FUZZ_CHECK(h == 32 && w == 32 && c == 3, "CIFAR-10 images of %dx%dx%d", h, w, c);
        CF_FUZZ_CHECK(cf_dataset_has_labels(ds) && cf_dataset_num_classes(ds) <= 10,
                      "CIFAR-10 with %d classes", cf_dataset_num_classes(ds));
        cf_dataset_free(ds);
    } else {
        cf_fuzz_check_error(dir);
    }
    cf_fuzz_clean();
    return 0;
}

CF_FUZZ_TARGET(cf_fuzz_cifar10)
