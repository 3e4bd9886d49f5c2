/* cli_eval.c: the commands that use a trained checkpoint: `eval` (test bits/dim), `sample`
 * (a PNG grid at a temperature), `interpolate` (a straight line between the latents of two
 * images) and `manipulate` (an image moved along the direction between two classes' mean
 * latents, the poster's attribute manipulation with Fashion-MNIST classes as attributes).
 *
 * Latents are handled as one list per image, every level's latent in the order the flow
 * factors them out; interpolation and manipulation act on all of them.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_eval(int argc, char **argv)
{
    const char *ckpt = NULL, *data = NULL, *split = "test";
    int64_t limit = 0, batch = 256, seed = 7, threads = 0;
    int dequant = 0;
    bool json = false;
    cli_flag flags[] = {
        {"--checkpoint", CLI_STRING, &ckpt, 0, 0, NULL, "checkpoint to evaluate (required)"},
        {"--data", CLI_STRING, &data, 0, 0, NULL, "data set (default: the one it was trained on)"},
        {"--split", CLI_STRING, &split, 0, 0, NULL, "train or test (default test)"},
        {"--limit", CLI_INT, &limit, 1, 1e12, NULL, "first N images only"},
        {"--batch", CLI_INT, &batch, 1, 65536, NULL, "images per batch (default 256)"},
        {"--dequant", CLI_CHOICE, &dequant, 0, 0, "uniform|midpoint", "dequantization (default uniform, seeded)"},
        {"--seed", CLI_INT, &seed, 0, 9.2e18, NULL, "dequantization noise (default 7)"},
        {"--threads", CLI_INT, &threads, 1, 4096, NULL, "threads (default all cores)"},
        {"--json", CLI_BOOL, &json, 0, 0, NULL, "print one JSON object"},
    };
    int n = (int)(sizeof flags / sizeof flags[0]);
    int rc = cli_begin("eval", "--checkpoint FILE [options]", argc, argv, flags, n);
    if (rc >= 0) return rc;
    if (!ckpt) {
        fprintf(stderr, "cincflow eval: --checkpoint FILE is required\n");
        return 2;
    }
    if (threads) omp_set_num_threads((int)threads);
    cf_ckpt_meta meta = {0};
    cf_flow *flow = cli_load_flow("eval", ckpt, &meta);
    if (!flow) return 1;
    const char *spec = data;
    if (!spec && cf_ckpt_meta_get_string(&meta, "data", &spec) != CF_OK) spec = "fashion-mnist";
    cf_dataset *ds = cf_dataset_open(spec, split);
    int status = 0;
    double bpd = NAN;
    const int64_t *shape = cf_flow_shape(flow);
    int h, w, c;
    if (!ds) {
        fprintf(stderr, "cincflow eval: --data %s: %s\n", spec, cf_last_error());
        status = 1;
    } else if (cf_dataset_shape(ds, &h, &w, &c), h != shape[0] || w != shape[1] || c != shape[2]) {
        fprintf(stderr, "cincflow eval: %s holds %dx%dx%d images; the model takes %lldx%lldx%lld\n",
                spec, h, w, c, (long long)shape[0], (long long)shape[1], (long long)shape[2]);
        status = 2;
    } else if (cf_flow_eval_bpd(flow, ds, limit, batch, (cf_dequant)dequant, (uint64_t)seed, &bpd) != CF_OK) {
        fprintf(stderr, "cincflow eval: %s\n", cf_last_error());
        status = 1;
    } else {
        int64_t count = limit && limit < cf_dataset_count(ds) ? limit : cf_dataset_count(ds);
        if (json)
            printf("{\"checkpoint\": \"%s\", \"data\": \"%s\", \"split\": \"%s\", \"images\": %lld, "
                   "\"step\": %lld, \"bpd\": %.6f}\n", ckpt, spec, split, (long long)count,
                   (long long)meta.step, bpd);
        else
            printf("%s bpd: %.4f\n", split, bpd);
    }
    cf_dataset_free(ds);
    cf_ckpt_meta_clear(&meta);
    cf_flow_free(flow);
    return status;
}

int cli_sample(int argc, char **argv)
{
    const char *ckpt = NULL, *out = "samples.png";
    int64_t count = 64, seed = 1, cols = 0, threads = 0;
    double temperature = 0.7;
    cli_flag flags[] = {
        {"--checkpoint", CLI_STRING, &ckpt, 0, 0, NULL, "checkpoint to sample from (required)"},
        {"-n", CLI_INT, &count, 1, 100000, NULL, "images (default 64)"},
        {"--temperature", CLI_DOUBLE, &temperature, 0, 100, NULL, "latent standard deviation scale (default 0.7)"},
        {"--out", CLI_STRING, &out, 0, 0, NULL, "PNG grid to write (default samples.png)"},
        {"--cols", CLI_INT, &cols, 1, 10000, NULL, "grid columns (default: square)"},
        {"--seed", CLI_INT, &seed, 0, 9.2e18, NULL, "random seed (default 1)"},
        {"--threads", CLI_INT, &threads, 1, 4096, NULL, "threads (default all cores)"},
    };
    int n = (int)(sizeof flags / sizeof flags[0]);
    int rc = cli_begin("sample", "--checkpoint FILE [options]", argc, argv, flags, n);
    if (rc >= 0) return rc;
    if (!ckpt) {
        fprintf(stderr, "cincflow sample: --checkpoint FILE is required\n");
        return 2;
    }
    if (threads) omp_set_num_threads((int)threads);
    cf_ckpt_meta meta = {0};
    cf_flow *flow = cli_load_flow("sample", ckpt, &meta);
    if (!flow) return 1;
    cf_ctx *ctx = cf_ctx_new(0);
    cf_rng rng;
    cf_rng_seed(&rng, (uint64_t)seed, 0x5a);
    cf_tensor *x = NULL;
    int status = 0;
    double t0 = cli_now();
    if (cf_flow_sample(flow, ctx, count, temperature, &rng, &x) != CF_OK) {
        fprintf(stderr, "cincflow sample: %s\n", cf_ctx_error(ctx));
        status = 1;
    } else {
        double dt = cli_now() - t0;
        if (!cols) cols = (int64_t)ceil(sqrt((double)count));
        if (cf_image_write_grid(out, x, (int)cols, 1) != CF_OK) {
            fprintf(stderr, "cincflow sample: %s\n", cf_last_error());
            status = 1;
        } else {
            printf("wrote %lld samples (temperature %g, %.3f s) to %s\n", (long long)count,
                   temperature, dt, out);
        }
    }
    cf_ctx_free(ctx);
    cf_ckpt_meta_clear(&meta);
    cf_flow_free(flow);
    return status;
}

/* Encodes images idx[0..n) of ds (midpoint dequantization) into io, in ctx. */
static cf_status encode(cf_flow *flow, cf_ctx *ctx, const cf_dataset *ds, const int64_t *idx,
                        int64_t n, cf_flow_io *io)
{
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, n, h, w, c);
    if (!x) return cf_ctx_status(ctx);
    for (int64_t i = 0; i < n; i++) {
        cf_tensor one = *x;
        one.shape[0] = 1;
        one.numel = x->numel / n;
        one.data = (float *)x->data + i * one.numel;
        cf_status st = cf_dataset_fill(ds, idx[i], &one, CF_DEQUANT_MIDPOINT, NULL);
        if (st != CF_OK) return st;
    }
    return cf_flow_encode(flow, ctx, x, io);
}

/* Writes the latents of `frames` images, each a * za + b * zb per frame row (a, b arrays),
 * decodes and writes the strip. za and zb are single-image latent lists (batch 1), or zb may
 * be a direction. */
static int decode_strip(const char *cmd, cf_flow *flow, cf_ctx *ctx, const cf_flow_io *za,
                        const cf_flow_io *zb, const double *a, const double *b, int frames,
                        const char *out)
{
    cf_flow_io io = {.n_latents = za->n_latents, .batch = frames};
    for (int k = 0; k < za->n_latents; k++) {
        const cf_tensor *l1 = za->latents[k], *l2 = zb->latents[k];
        int64_t per = l1->numel;
        cf_tensor *z = cf_tensor_new_v(ctx, CF_F32, frames, l1->shape[1], l1->shape[2], l1->shape[3]);
        if (!z) return 1;
        for (int f = 0; f < frames; f++)
            for (int64_t i = 0; i < per; i++)
                cf_tensor_set(z, f * per + i, a[f] * cf_tensor_get(l1, i) + b[f] * cf_tensor_get(l2, i));
        io.latents[k] = z;
    }
    cf_tensor *x;
    if (cf_flow_decode(flow, ctx, &io, &x) != CF_OK) {
        fprintf(stderr, "cincflow %s: %s\n", cmd, cf_ctx_error(ctx));
        return 1;
    }
    if (cf_image_write_grid(out, x, frames, 1) != CF_OK) {
        fprintf(stderr, "cincflow %s: %s\n", cmd, cf_last_error());
        return 1;
    }
    printf("wrote %d images to %s\n", frames, out);
    return 0;
}

/* Opens the checkpoint and the data set (default: the one it was trained on, test split). */
static cf_flow *open_both(const char *cmd, const char *ckpt, const char *data, cf_ckpt_meta *meta,
                          cf_dataset **ds)
{
    cf_flow *flow = cli_load_flow(cmd, ckpt, meta);
    if (!flow) return NULL;
    const char *spec = data;
    if (!spec && cf_ckpt_meta_get_string(meta, "data", &spec) != CF_OK) spec = "fashion-mnist";
    *ds = cf_dataset_open(spec, "test");
    int h, w, c;
    const int64_t *s = cf_flow_shape(flow);
    if (!*ds || (cf_dataset_shape(*ds, &h, &w, &c), h != s[0] || w != s[1] || c != s[2])) {
        fprintf(stderr, "cincflow %s: --data %s: %s\n", cmd, spec,
                *ds ? "its images do not have the model's shape" : cf_last_error());
        cf_dataset_free(*ds);
        cf_flow_free(flow);
        return NULL;
    }
    return flow;
}

int cli_interpolate(int argc, char **argv)
{
    const char *ckpt = NULL, *data = NULL, *out = "interpolation.png";
    int64_t first = 0, second = 1, frames = 8;
    cli_flag flags[] = {
        {"--checkpoint", CLI_STRING, &ckpt, 0, 0, NULL, "checkpoint (required)"},
        {"--data", CLI_STRING, &data, 0, 0, NULL, "data set (default: the one it was trained on)"},
        {"--from", CLI_INT, &first, 0, 1e12, NULL, "index of the first test image (default 0)"},
        {"--to", CLI_INT, &second, 0, 1e12, NULL, "index of the second test image (default 1)"},
        {"--frames", CLI_INT, &frames, 2, 1000, NULL, "images in the strip (default 8)"},
        {"--out", CLI_STRING, &out, 0, 0, NULL, "PNG strip (default interpolation.png)"},
    };
    int n = (int)(sizeof flags / sizeof flags[0]);
    int rc = cli_begin("interpolate", "--checkpoint FILE [options]", argc, argv, flags, n);
    if (rc >= 0) return rc;
    if (!ckpt) {
        fprintf(stderr, "cincflow interpolate: --checkpoint FILE is required\n");
        return 2;
    }
    cf_ckpt_meta meta = {0};
    cf_dataset *ds = NULL;
    cf_flow *flow = open_both("interpolate", ckpt, data, &meta, &ds);
    if (!flow) return 1;
    int status = 1;
    if (first >= cf_dataset_count(ds) || second >= cf_dataset_count(ds)) {
        fprintf(stderr, "cincflow interpolate: --from/--to must be below %lld\n",
                (long long)cf_dataset_count(ds));
        status = 2;
    } else {
        cf_ctx *ctx = cf_ctx_new(0);
        cf_flow_io za, zb;
        if (encode(flow, ctx, ds, &first, 1, &za) != CF_OK || encode(flow, ctx, ds, &second, 1, &zb) != CF_OK) {
            fprintf(stderr, "cincflow interpolate: %s\n", cf_ctx_error(ctx));
        } else {
            double *a = malloc((size_t)frames * sizeof *a), *b = malloc((size_t)frames * sizeof *b);
            for (int f = 0; f < frames; f++) b[f] = (double)f / (double)(frames - 1), a[f] = 1 - b[f];
            status = decode_strip("interpolate", flow, ctx, &za, &zb, a, b, (int)frames, out);
            free(a);
            free(b);
        }
        cf_ctx_free(ctx);
    }
    cf_dataset_free(ds);
    cf_ckpt_meta_clear(&meta);
    cf_flow_free(flow);
    return status;
}

int cli_manipulate(int argc, char **argv)
{
    const char *ckpt = NULL, *data = NULL, *out = "manipulation.png";
    int64_t index = 0, from = 0, to = 1, frames = 8, per_class = 200;
    double strength = 1.0;
    cli_flag flags[] = {
        {"--checkpoint", CLI_STRING, &ckpt, 0, 0, NULL, "checkpoint (required)"},
        {"--data", CLI_STRING, &data, 0, 0, NULL, "labelled data set (default: the one it was trained on)"},
        {"--index", CLI_INT, &index, 0, 1e12, NULL, "test image to move (default 0)"},
        {"--from-class", CLI_INT, &from, 0, 1e6, NULL, "class the direction starts at (default 0)"},
        {"--to-class", CLI_INT, &to, 0, 1e6, NULL, "class it points to (default 1)"},
        {"--per-class", CLI_INT, &per_class, 1, 1e6, NULL, "images averaged per class (default 200)"},
        {"--strength", CLI_DOUBLE, &strength, -100, 100, NULL, "how far along the direction the last image goes (default 1)"},
        {"--frames", CLI_INT, &frames, 2, 1000, NULL, "images in the strip (default 8)"},
        {"--out", CLI_STRING, &out, 0, 0, NULL, "PNG strip (default manipulation.png)"},
    };
    int n = (int)(sizeof flags / sizeof flags[0]);
    int rc = cli_begin("manipulate", "--checkpoint FILE [options]", argc, argv, flags, n);
    if (rc >= 0) return rc;
    if (!ckpt) {
        fprintf(stderr, "cincflow manipulate: --checkpoint FILE is required\n");
        return 2;
    }
    cf_ckpt_meta meta = {0};
    cf_dataset *ds = NULL;
    cf_flow *flow = open_both("manipulate", ckpt, data, &meta, &ds);
    if (!flow) return 1;
    int status = 1;
    if (!cf_dataset_has_labels(ds) || from >= cf_dataset_num_classes(ds) ||
        to >= cf_dataset_num_classes(ds) || index >= cf_dataset_count(ds)) {
        fprintf(stderr, "cincflow manipulate: the data set needs labels with classes %lld and %lld, "
                        "and --index below its size\n", (long long)from, (long long)to);
        status = 2;
        goto done;
    }
    cf_ctx *ctx = cf_ctx_new(0);
    /* Mean latents of both classes: encode up to per_class images of each, one batch each. */
    int64_t *idx[2] = {malloc((size_t)per_class * sizeof(int64_t)), malloc((size_t)per_class * sizeof(int64_t))};
    int64_t got[2] = {0, 0}, cls[2] = {from, to};
    for (int64_t i = 0; i < cf_dataset_count(ds); i++)
        for (int k = 0; k < 2; k++)
            if (cf_dataset_label(ds, i) == cls[k] && got[k] < per_class) idx[k][got[k]++] = i;
    cf_flow_io z[2], zi, dir = {0};
    bool ok = got[0] > 0 && got[1] > 0;
    for (int k = 0; ok && k < 2; k++) ok = encode(flow, ctx, ds, idx[k], got[k], &z[k]) == CF_OK;
    ok = ok && encode(flow, ctx, ds, &index, 1, &zi) == CF_OK;
    if (ok) {
        dir.n_latents = zi.n_latents;
        for (int l = 0; l < zi.n_latents; l++) {
            const cf_tensor *t = zi.latents[l];
            cf_tensor *d = cf_tensor_new(ctx, CF_F32, t->ndim, t->shape);
            int64_t per = t->numel;
            for (int64_t i = 0; d && i < per; i++) {
                double m[2] = {0, 0};
                for (int k = 0; k < 2; k++) {
                    for (int64_t b = 0; b < got[k]; b++) m[k] += cf_tensor_get(z[k].latents[l], b * per + i);
                    m[k] /= (double)got[k];
                }
                cf_tensor_set(d, i, m[1] - m[0]);
            }
            dir.latents[l] = d;
        }
        double *a = malloc((size_t)frames * sizeof *a), *b = malloc((size_t)frames * sizeof *b);
        for (int f = 0; f < frames; f++) a[f] = 1, b[f] = strength * (double)f / (double)(frames - 1);
        status = decode_strip("manipulate", flow, ctx, &zi, &dir, a, b, (int)frames, out);
        free(a);
        free(b);
    } else {
        fprintf(stderr, "cincflow manipulate: %s\n",
                got[0] && got[1] ? cf_ctx_error(ctx) : "no test image of one of the classes");
    }
    free(idx[0]);
    free(idx[1]);
    cf_ctx_free(ctx);
done:
    cf_dataset_free(ds);
    cf_ckpt_meta_clear(&meta);
    cf_flow_free(flow);
    return status;
}
