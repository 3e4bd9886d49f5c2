/* fuzz_png.c: the PNG-folder loader (io/data_png.c: listing, libpng decoding, the shape
 * checks across files) through cf_dataset_open("png:DIR").
 *
 * Input: one or more PNG files back to back: the bytes are cut before every later occurrence of
 * the 8-byte PNG signature, into at most 8 files named 0.png, 1.png, ... (so a seed of two
 * images makes a folder of two). Bytes that do not start with the signature still make a file,
 * which the loader must refuse by name.
 */
#include <string.h>

#include "fuzz_common.h"

#define MAX_FILES 8

static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

int cf_fuzz_png(const uint8_t *data, size_t size)
{
    size_t cuts[MAX_FILES + 1] = {0};
    int n = 1;
    for (size_t i = 1; i + sizeof signature <= size && n < MAX_FILES; i++)
        if (memcmp(data + i, signature, sizeof signature) == 0) cuts[n++] = i;
    cuts[n] = size;
    cf_fuzz_mkdir("d");
    for (int f = 0; f < n; f++) {
        char name[32];
        snprintf(name, sizeof name, "d/%d.png", f);
        cf_fuzz_write(name, data + cuts[f], cuts[f + 1] - cuts[f], 0);
    }
    char dir[1024], spec[1100];
    snprintf(spec, sizeof spec, "png:%s", cf_fuzz_path(dir, sizeof dir, "d"));
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    cf_fuzz_accepted = ds != NULL;
    if (ds) {
        cf_fuzz_check_dataset(ds);
        int c;
        cf_dataset_shape(ds, NULL, NULL, &c);
        CF_FUZZ_CHECK(c == 1 || c == 3, "PNG images with %d channels", c);
        CF_FUZZ_CHECK(cf_dataset_count(ds) == n, "%lld images from %d files",
                      (long long)cf_dataset_count(ds), n);
        CF_FUZZ_CHECK(!cf_dataset_has_labels(ds), "PNG images with labels");
        cf_dataset_free(ds);
    } else {
        cf_fuzz_check_error(dir);
    }
    cf_fuzz_clean();
    return 0;
}

CF_FUZZ_TARGET(cf_fuzz_png)
