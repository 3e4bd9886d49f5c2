/* data_idx.c: the idx format of MNIST and Fashion-MNIST (plain or gzip), and the
 * `fashion-mnist` spec over Debian's dataset-fashion-mnist files.
 *
 * An idx file is a 4-byte magic (0, 0, type, number of dimensions), the dimensions as big-endian
 * uint32, then the values. Images are type 0x08 (unsigned byte) with 3 dimensions (N, H, W);
 * labels type 0x08 with 1 dimension (N). zlib's gzread reads gzip and plain files alike.
 *
 * The header is read and checked first. A plain file's size must then equal the header's
 * exactly, before the pixels are allocated; a gzip file's pixels are read into a buffer that
 * grows with what the stream actually holds, so a header that lies costs at most twice the
 * bytes really present, and a stream that ends early or goes on too long is an error.
 *
 * Not here: idx types other than unsigned bytes, more than 3 dimensions (C is always 1).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cf_io_impl.h"

/* Buffers for gzip payloads start at this size and double up to the header's size. */
#define GZ_FIRST_CHUNK (1u << 20)
/* One gzread call reads at most this much (it takes an unsigned and returns an int). */
#define GZ_MAX_READ (1u << 30)

typedef struct idx_file {
    int64_t dims[3];  /* (N, H, W) for images, (N) for labels */
    uint8_t *payload; /* the values, owned */
    size_t size;      /* bytes of payload */
} idx_file;

/* The reason a gzread came up short: zlib's message, or the end of the file. */
static const char *gz_reason(gzFile gz)
{
    int code = Z_OK;
    const char *msg = gzerror(gz, &code);
    if (code == Z_ERRNO) return strerror(errno);
    if (code != Z_OK && msg && msg[0]) return msg;
    return NULL;
}

/* Reads n bytes; returns how many arrived (less at the end or on an error). */
static size_t gz_read_all(gzFile gz, uint8_t *dst, size_t n)
{
    size_t got = 0;
    while (got < n) {
        size_t want = n - got < GZ_MAX_READ ? n - got : GZ_MAX_READ;
        int r = gzread(gz, dst + got, (unsigned)want);
        if (r <= 0) break;
        got += (size_t)r;
    }
    return got;
}

/* Reads an idx file of `ndims` dimensions ("images" or "labels" in messages). */
static cf_status idx_read(const char *path, int ndims, const char *what, idx_file *out)
{
    memset(out, 0, sizeof *out);
    int64_t file_size;
    cf_status st = cf__file_size(path, &file_size);
    if (st != CF_OK) return st;
    gzFile gz = gzopen(path, "rb");
    if (!gz) return cf_set_error(CF_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    gzbuffer(gz, 1u << 17);

    /* The magic first, so a file of the wrong kind is named as such whatever its length. */
    uint8_t head[16];
    size_t head_size = 4 + 4 * (size_t)ndims;
    size_t got = gz_read_all(gz, head, 4);
    if (got == 4 && (head[0] != 0 || head[1] != 0 || head[2] != 0x08 || head[3] != ndims)) {
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: wrong magic %02x %02x %02x %02x (idx %s files of "
                          "unsigned bytes start with 00 00 08 %02x)",
                          path, head[0], head[1], head[2], head[3], ndims == 3 ? "image" : "label",
                          ndims);
        goto done;
    }
    if (got == 4) got += gz_read_all(gz, head + 4, head_size - 4);
    const char *reason = gz_reason(gz);
    if (got < head_size) {
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: truncated: %zu bytes, shorter than an idx header "
                          "(%zu bytes)%s%s",
                          path, got, head_size, reason ? ": " : "", reason ? reason : "");
        goto done;
    }
    int64_t payload = 1;
    for (int d = 0; d < ndims; d++) {
        const uint8_t *p = head + 4 + 4 * d;
        out->dims[d] = (int64_t)p[0] << 24 | (int64_t)p[1] << 16 | (int64_t)p[2] << 8 | p[3];
    }
    if (ndims == 3)
        st = cf__data_check_shape(path, out->dims[0], out->dims[1], out->dims[2], 1);
    else
        st = cf__data_check_shape(path, out->dims[0], 1, 1, 1);
    if (st != CF_OK) goto done;
    for (int d = 0; d < ndims; d++) payload *= out->dims[d];
    bool plain = gzdirect(gz);
    if (plain && file_size != (int64_t)head_size + payload) {
        const char *how = file_size < (int64_t)head_size + payload ? "truncated: " : "";
        if (ndims == 3)
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: %sthe header says %lld images of %lldx%lld "
                              "(%lld bytes with the header), the file has %lld",
                              path, how, (long long)out->dims[0], (long long)out->dims[1],
                              (long long)out->dims[2], (long long)(head_size + payload),
                              (long long)file_size);
        else
            st = cf_set_error(CF_ERR_FORMAT,
                              "%s: %sthe header says %lld %s (%lld bytes with "
                              "the header), the file has %lld",
                              path, how, (long long)out->dims[0], what,
                              (long long)(head_size + payload), (long long)file_size);
        goto done;
    }

    /* Plain: the size is known to be right. Gzip: grow with the data. */
    size_t cap = plain || payload <= (int64_t)GZ_FIRST_CHUNK ? (size_t)payload : GZ_FIRST_CHUNK;
    out->payload = malloc(cap);
    size_t have = 0;
    while (out->payload) {
        have += gz_read_all(gz, out->payload + have, cap - have);
        if (have < cap || cap == (size_t)payload) break;
        size_t next = cap * 2 < (size_t)payload ? cap * 2 : (size_t)payload;
        uint8_t *grown = realloc(out->payload, next);
        if (!grown) break;
        out->payload = grown;
        cap = next;
    }
    if (!out->payload || (have == cap && cap < (size_t)payload)) {
        st = cf_set_error(CF_ERR_NOMEM, "%s: out of memory reading %lld bytes of %s", path,
                          (long long)payload, what);
        goto done;
    }
    reason = gz_reason(gz);
    if (have < (size_t)payload) {
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: truncated: the header says %lld %s (%lld bytes "
                          "after the header), the data ends after %zu bytes%s%s",
                          path, (long long)out->dims[0], what, (long long)payload, have,
                          reason ? ": " : "", reason ? reason : "");
        goto done;
    }
    uint8_t extra;
    if (gz_read_all(gz, &extra, 1) == 1) {
        st = cf_set_error(CF_ERR_FORMAT,
                          "%s: more data than the header's %lld %s (%lld bytes "
                          "after the header)",
                          path, (long long)out->dims[0], what, (long long)payload);
        goto done;
    }
    if ((reason = gz_reason(gz)) != NULL) {
        st = cf_set_error(CF_ERR_FORMAT, "%s: corrupt gzip stream: %s", path, reason);
        goto done;
    }
    out->size = (size_t)payload;
    st = CF_OK;
done:
    gzclose(gz);
    if (st != CF_OK) {
        free(out->payload);
        out->payload = NULL;
    }
    return st;
}

/* The labels file beside an images file: "images-idx3" (or "images.idx3") in the file's name
 * becomes "labels-idx1" ("labels.idx1"), tried as named, then with ".gz" added or removed.
 * Returns an owned path of an existing file, or NULL (none, or out of memory). */
static char *labels_path(const char *images)
{
    static const char *pairs[2][2] = {{"images-idx3", "labels-idx1"},
                                      {"images.idx3", "labels.idx1"}};
    const char *base = strrchr(images, '/');
    base = base ? base + 1 : images;
    for (int p = 0; p < 2; p++) {
        const char *at = strstr(base, pairs[p][0]);
        if (!at) continue;
        size_t pre = (size_t)(at - images);
        const char *rest = at + strlen(pairs[p][0]);
        size_t rest_len = strlen(rest);
        bool gz = rest_len >= 3 && strcmp(rest + rest_len - 3, ".gz") == 0;
        char *candidates[2] = {
            cf__strprintf("%.*s%s%s", (int)pre, images, pairs[p][1], rest),
            gz ? cf__strprintf("%.*s%s%.*s", (int)pre, images, pairs[p][1], (int)(rest_len - 3),
                               rest)
               : cf__strprintf("%.*s%s%s.gz", (int)pre, images, pairs[p][1], rest)};
        char *found = NULL;
        for (int c = 0; c < 2; c++) {
            int64_t size;
            if (!found && candidates[c] && cf__file_size(candidates[c], &size) != CF_ERR_NOT_FOUND)
                found = candidates[c];
            else
                free(candidates[c]);
        }
        if (found) return found;
    }
    return NULL;
}

cf_status cf__data_load_idx(cf_dataset *ds, const char *path)
{
    idx_file images;
    cf_status st = idx_read(path, 3, "images", &images);
    if (st != CF_OK) return st;
    ds->count = images.dims[0];
    ds->height = (int)images.dims[1];
    ds->width = (int)images.dims[2];
    ds->channels = 1;
    ds->image_bytes = (size_t)(images.dims[1] * images.dims[2]);
    ds->pixels = images.payload;

    char *lpath = labels_path(path);
    if (!lpath) return CF_OK;
    idx_file labels;
    st = idx_read(lpath, 1, "labels", &labels);
    if (st == CF_OK && labels.dims[0] != ds->count) {
        st = cf_set_error(CF_ERR_FORMAT, "%s: %lld labels for the %lld images of %s", lpath,
                          (long long)labels.dims[0], (long long)ds->count, path);
        free(labels.payload);
    }
    if (st == CF_OK) ds->labels = labels.payload;
    free(lpath);
    return st;
}

cf_status cf__data_load_fashion_mnist(cf_dataset *ds, const char *dir, bool test)
{
    const char *prefix = test ? "t10k" : "train";
    char *images = cf__strprintf("%s/%s-images-idx3-ubyte.gz", dir, prefix);
    char *labels = cf__strprintf("%s/%s-labels-idx1-ubyte.gz", dir, prefix);
    cf_status st = CF_OK;
    if (!images || !labels) {
        st = cf_set_error(CF_ERR_NOMEM, "fashion-mnist: out of memory");
        goto done;
    }
    const char *files[2] = {images, labels};
    for (int f = 0; f < 2 && st == CF_OK; f++) {
        int64_t size;
        if (cf__file_size(files[f], &size) == CF_ERR_NOT_FOUND)
            st = cf_set_error(CF_ERR_NOT_FOUND,
                              "fashion-mnist: %s not found: install the Debian "
                              "package dataset-fashion-mnist (apt-get install "
                              "dataset-fashion-mnist), or name other files "
                              "with --data idx:FILE",
                              files[f]);
    }
    if (st == CF_OK) st = cf__data_load_idx(ds, images);
    if (st == CF_OK && !ds->labels)
        st = cf_set_error(CF_ERR_FORMAT, "fashion-mnist: %s was not read", labels);
done:
    free(images);
    free(labels);
    return st;
}
