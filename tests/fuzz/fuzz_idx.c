/* fuzz_idx.c: the idx loader (io/data_idx.c) through cf_dataset_open("idx:FILE"), plain and
 * gzip, with and without a labels file beside the images.
 *
 * Input: byte 0 flags, then a little-endian uint32 L, then L bytes of the images file, then the
 * labels file (the rest). Flags:
 *   1   the images file's name ends in ".gz"        2   a labels file is written
 *   4   the labels file's name ends in ".gz"        8   the images bytes are gzip-compressed here
 *   16  the labels bytes are gzip-compressed here   32  split "test" (idx ignores it)
 * Names ending in ".gz" and contents that are gzip are chosen apart, so the loader meets plain
 * bytes named .gz and gzip streams named without it. The seeds (make_corpus.c) hold gzip
 * streams as bytes too, so mutations reach zlib's handling of damaged streams.
 */
#include <string.h>

#include "fuzz_common.h"

int cf_fuzz_idx(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    unsigned flags = p < end ? *p++ : 0;
    uint32_t n_images = cf_fuzz_take_u32(&p, end);
    size_t left = (size_t)(end - p);
    size_t images_size = n_images < left ? n_images : left;
    const char *images = flags & 1 ? "f-images-idx3-ubyte.gz" : "f-images-idx3-ubyte";
    const char *labels = flags & 4 ? "f-labels-idx1-ubyte.gz" : "f-labels-idx1-ubyte";
    cf_fuzz_write(images, p, images_size, flags & 8);
    if (flags & 2) cf_fuzz_write(labels, p + images_size, left - images_size, flags & 16);

    char path[1024], spec[1100];
    snprintf(spec, sizeof spec, "idx:%s", cf_fuzz_path(path, sizeof path, images));
    cf_dataset *ds = cf_dataset_open(spec, flags & 32 ? "test" : "train");
    cf_fuzz_accepted = ds != NULL;
    if (ds) {
        cf_fuzz_check_dataset(ds);
        int h, w, c;
        cf_dataset_shape(ds, &h, &w, &c);
        CF_FUZZ_CHECK(c == 1, "idx images with %d channels", c);
        cf_dataset_free(ds);
    } else {
        /* the message names the images file or the labels file */
        const char *msg = cf_last_error();
        CF_FUZZ_CHECK(msg && (strstr(msg, images) || strstr(msg, "labels-idx1")),
                      "idx failure without the file's name: \"%s\"", msg ? msg : "(null)");
        cf_fuzz_report("refused: %s", msg);
    }
    cf_fuzz_clean();
    return 0;
}

CF_FUZZ_TARGET(cf_fuzz_idx)
