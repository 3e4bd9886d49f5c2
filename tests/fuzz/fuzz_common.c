/* fuzz_common.c: the scratch folder, byte helpers and shared checks of the fuzzing entry
 * points (see fuzz_common.h).
 *
 * Not here: any entry point (fuzz_<name>.c).
 */
#define _GNU_SOURCE /* nftw's FTW_DEPTH, FTW_PHYS */
#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "fuzz_common.h"

int cf_fuzz_verbose;
int cf_fuzz_accepted;

void cf_fuzz_report(const char *fmt, ...)
{
    if (!cf_fuzz_verbose) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  -> ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

void cf_fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cf_fuzz: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

static char scratch[512];
static volatile unsigned sink; /* keeps the pixel reads of cf_fuzz_check_dataset */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag;
    if (ftw->level > 0) remove(path);
    return 0;
}

static void remove_scratch(void)
{
    if (!scratch[0]) return;
    nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    rmdir(scratch);
    scratch[0] = '\0';
}

const char *cf_fuzz_dir(void)
{
    if (scratch[0]) return scratch;
    const char *base = getenv("TMPDIR");
    if (!base || !base[0]) base = "/tmp";
    snprintf(scratch, sizeof scratch, "%s/cf_fuzz.%ld.XXXXXX", base, (long)getpid());
    if (!mkdtemp(scratch))
        cf_fuzz_fail("cannot make a scratch folder %s: %s", scratch, strerror(errno));
    atexit(remove_scratch);
    return scratch;
}

const char *cf_fuzz_path(char *buf, size_t bufsize, const char *name)
{
    snprintf(buf, bufsize, "%s/%s", cf_fuzz_dir(), name);
    return buf;
}

void cf_fuzz_write(const char *name, const void *data, size_t size, int gz)
{
    char path[1024];
    cf_fuzz_path(path, sizeof path, name);
    if (gz) {
        gzFile f = gzopen(path, "wb1");
        if (!f) cf_fuzz_fail("cannot create %s", path);
        if (size > 0 && gzwrite(f, data, (unsigned)size) != (int)size)
            cf_fuzz_fail("cannot write %s", path);
        if (gzclose(f) != Z_OK) cf_fuzz_fail("cannot close %s", path);
        return;
    }
    FILE *f = fopen(path, "wb");
    if (!f) cf_fuzz_fail("cannot create %s: %s", path, strerror(errno));
    if (size > 0 && fwrite(data, 1, size, f) != size)
        cf_fuzz_fail("cannot write %s: %s", path, strerror(errno));
    if (fclose(f) != 0) cf_fuzz_fail("cannot close %s: %s", path, strerror(errno));
}

void cf_fuzz_mkdir(const char *name)
{
    char path[1024];
    cf_fuzz_path(path, sizeof path, name);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        cf_fuzz_fail("cannot make %s: %s", path, strerror(errno));
}

void cf_fuzz_clean(void)
{
    if (scratch[0]) nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

uint32_t cf_fuzz_take_u32(const uint8_t **p, const uint8_t *end)
{
    uint32_t v = 0;
    for (int i = 0; i < 4 && *p < end; i++, (*p)++) v |= (uint32_t) * *p << (8 * i);
    return v;
}

void cf_fuzz_check_error(const char *what)
{
    const char *msg = cf_last_error();
    CF_FUZZ_CHECK(msg && msg[0], "a failure left no message");
    CF_FUZZ_CHECK(!what || strstr(msg, what), "the message \"%s\" does not name %s", msg, what);
    cf_fuzz_report("refused: %s", msg);
}

void cf_fuzz_check_dataset(const cf_dataset *ds)
{
    int64_t n = cf_dataset_count(ds);
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    CF_FUZZ_CHECK(n > 0, "an opened set of %lld images", (long long)n);
    CF_FUZZ_CHECK(h >= 1 && w >= 1 && h <= CF_DATA_MAX_SIDE && w <= CF_DATA_MAX_SIDE && c >= 1 &&
                      c <= CF_DATA_MAX_CHANNELS,
                  "an opened set of shape %dx%dx%d", h, w, c);
    size_t bytes = (size_t)h * (size_t)w * (size_t)c;
    CF_FUZZ_CHECK((int64_t)bytes <= CF_DATA_MAX_IMAGE_BYTES, "images of %zu bytes", bytes);
    unsigned sum = 0;
    int max_label = -1;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *img = cf_dataset_image(ds, i);
        for (size_t k = 0; k < bytes; k++) sum += img[k]; /* ASan sees any short buffer */
        int label = cf_dataset_label(ds, i);
        CF_FUZZ_CHECK(cf_dataset_has_labels(ds) ? label >= 0 && label <= 255 : label == -1,
                      "image %lld has label %d", (long long)i, label);
        if (label > max_label) max_label = label;
    }
    CF_FUZZ_CHECK(cf_dataset_num_classes(ds) == max_label + 1, "%d classes, largest label %d",
                  cf_dataset_num_classes(ds), max_label);
    CF_FUZZ_CHECK(cf_dataset_source(ds) && cf_dataset_source(ds)[0], "a set without a source");
    /* The first image through dequantization, when small. */
    if (bytes <= (1u << 16)) {
        cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){1, h, w, c});
        CF_FUZZ_CHECK(x, "cannot allocate a %dx%dx%d tensor", h, w, c);
        CF_FUZZ_CHECK(cf_dataset_fill(ds, 0, x, CF_DEQUANT_MIDPOINT, NULL) == CF_OK, "fill: %s",
                      cf_last_error());
        cf_tensor_free(x);
    }
    sink = sum;
    cf_fuzz_report("opened %lld images of %dx%dx%d%s", (long long)n, h, w, c,
                   cf_dataset_has_labels(ds) ? " with labels" : "");
}

cf_flow_config cf_fuzz_tiny_config(void)
{
    return (cf_flow_config){.height = 4,
                            .width = 4,
                            .channels = 1,
                            .levels = 1,
                            .depth = 1,
                            .hidden = 4,
                            .coupling = CF_COUPLING_KIND_QUAD,
                            .conv = CF_INVCONV_KIND_CINC,
                            .seed = 1};
}

cf_adam_opts cf_fuzz_tiny_adam(void)
{
    return (cf_adam_opts){.kind = CF_OPTIM_KIND_ADAMW,
                          .lr = 1e-3,
                          .beta1 = 0.9,
                          .beta2 = 0.999,
                          .eps = 1e-8,
                          .weight_decay = 0.01,
                          .warmup_steps = 10,
                          .clip_norm = 50};
}
