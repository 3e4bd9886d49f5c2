/* layer.c: what the flow layers share beyond the public layer API (layer_api.c): the running
 * log-det and log-density, actnorm's data-dependent initialisation (and the reducer that sums
 * its statistics over processes), Glow's zero-initialised convolution, and drawing latents. */
#include "cf_models_impl.h"

static cf_status accumulate(cf_ctx *ctx, cf_tensor **acc, cf_tensor *term, int64_t batch)
{
    if (!term) return cf_ctx_status(ctx);
    if (!*acc) {
        cf_tensor *zero = cf_tensor_new_v(ctx, term->dtype, batch);
        if (!zero) return cf_ctx_status(ctx);
        *acc = zero;
    }
    *acc = cf_add(ctx, *acc, term);
    return cf_ctx_status(ctx);
}

cf_status cf_flow_io_add_logdet(cf_ctx *ctx, cf_flow_io *io, cf_tensor *term)
{
    return accumulate(ctx, &io->logdet, term, io->x ? io->x->shape[0] : io->batch);
}

cf_status cf_flow_io_add_logp(cf_ctx *ctx, cf_flow_io *io, cf_tensor *term)
{
    return accumulate(ctx, &io->logp, term, io->x ? io->x->shape[0] : io->batch);
}

static _Thread_local cf__reducer active_reducer;

cf__reducer cf__set_reducer(cf__reducer r)
{
    cf__reducer old = active_reducer;
    active_reducer = r;
    return old;
}

/* Sums buf over the processes with the reducer in force (nothing to do for one process). */
static bool reduce(cf_ctx *ctx, double *buf, size_t n)
{
    if (!active_reducer.fn) return true;
    cf_status st = active_reducer.fn(buf, n, active_reducer.user);
    if (st == CF_OK) return true;
    cf_ctx_fail(ctx, st, "actnorm initialisation: summing statistics over processes: %s",
                cf_strerror(st));
    return false;
}

cf_tensor *cf__actnorm_apply(cf_ctx *ctx, cf_tensor *x, cf_tensor *bias, cf_tensor *logs,
                             cf_tensor *initialized, bool relu)
{
    if (!x) return NULL;
    if (cf_tensor_get(initialized, 0) == 0.0) {
        int64_t C = bias->numel, P = x->numel / C;
        /* Per-channel mean and variance, rows outer and channels inner (contiguous), summed in
         * double: shifted by the first row's values so the variance does not cancel. With
         * several processes the shift must be common, so it is the mean of their first rows
         * (one reduction of C + 1 values), and then the shifted sums and the row count are
         * reduced (2C + 1 values); one process reduces nothing and shifts by its first row. */
        double *acc = calloc((size_t)(3 * C + 2), sizeof(double));
        if (!acc) {
            cf_ctx_fail(ctx, CF_ERR_NOMEM, "actnorm initialisation: out of memory");
            return NULL;
        }
        double *shift = acc, *s1 = acc + C + 1, *s2 = s1 + C, *rows = s2 + C;
        for (int64_t c = 0; c < C && P > 0; c++) shift[c] = cf_tensor_get(x, c);
        if (active_reducer.fn) {
            shift[C] = P > 0; /* processes that have a first row */
            if (!reduce(ctx, shift, (size_t)C + 1)) {
                free(acc);
                return NULL;
            }
            for (int64_t c = 0; c < C; c++) shift[c] = shift[C] > 0 ? shift[c] / shift[C] : 0;
        }
        if (x->dtype == CF_F32) {
            const float *v = x->data;
            for (int64_t p = 0; p < P; p++)
                for (int64_t c = 0; c < C; c++) {
                    double d = (double)v[p * C + c] - shift[c];
                    s1[c] += d, s2[c] += d * d;
                }
        } else {
            for (int64_t p = 0; p < P; p++)
                for (int64_t c = 0; c < C; c++) {
                    double d = cf_tensor_get(x, p * C + c) - shift[c];
                    s1[c] += d, s2[c] += d * d;
                }
        }
        *rows = (double)P;
        if (!reduce(ctx, s1, 2 * (size_t)C + 1)) {
            free(acc);
            return NULL;
        }
        double n = *rows;
        /* A NaN or infinity in the batch would become the parameters: refuse it, naming them. */
        for (int64_t c = 0; c < C; c++)
            if (!isfinite(s1[c]) || !isfinite(s2[c]) || !isfinite(shift[c])) {
                free(acc);
                cf_ctx_fail(ctx, CF_ERR_NUMERIC, "actnorm initialisation of %s: the statistics "
                            "of channel %lld are not finite (a NaN or infinity in the batch it "
                            "was initialised from)", bias->name ? bias->name : "an actnorm",
                            (long long)c);
                return NULL;
            }
        for (int64_t c = 0; c < C; c++) {
            double m = n > 0 ? s1[c] / n : 0, var = n > 0 ? s2[c] / n - m * m : 1;
            cf_tensor_set(bias, c, -(shift[c] + m));
            cf_tensor_set(logs, c, -log(sqrt(var > 0 ? var : 0) + 1e-6));
        }
        free(acc);
        cf_tensor_set(initialized, 0, 1.0);
    }
    return relu ? cf_actnorm_relu(ctx, x, bias, logs) : cf_actnorm(ctx, x, bias, logs);
}

cf_tensor *cf__batch_view(cf_ctx *ctx, const cf_tensor *t, int64_t b0, int64_t n)
{
    int64_t shape[CF_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
    shape[0] = n;
    const size_t per_image = (size_t)(t->numel / t->shape[0]) * cf_dtype_size(t->dtype);
    return cf_tensor_view(ctx, t->dtype, t->ndim, shape, (char *)t->data + (size_t)b0 * per_image);
}

cf_tensor *cf__channels(cf_ctx *ctx, cf_tensor *x, int64_t start, int64_t count)
{
    if (!x) return NULL;
    int64_t C = x->shape[x->ndim - 1];
    if (start == 0 && count == C) return x;
    cf_tensor *parts[3];
    int64_t sizes[3];
    int n = 0, want = 0;
    if (start > 0) sizes[n++] = start;
    want = n;
    sizes[n++] = count;
    if (start + count < C) sizes[n++] = C - start - count;
    if (cf_split(ctx, x, n, sizes, parts) != CF_OK) return NULL;
    return parts[want];
}

bool cf__zero_conv_init(cf__zero_conv *z, cf_layer *l, const cf_layer_args *a,
                        const char *prefix, int64_t in_channels, int64_t out_channels)
{
    char name[64];
    cf_init zero = cf_init_const(0);
    snprintf(name, sizeof name, "%s.weight", prefix);
    z->weight = cf_layer_param(l, a, name, 4, (int64_t[]){3, 3, in_channels, out_channels}, zero);
    snprintf(name, sizeof name, "%s.bias", prefix);
    z->bias = z->weight ? cf_layer_param(l, a, name, 1, (int64_t[]){out_channels}, zero) : NULL;
    snprintf(name, sizeof name, "%s.logs", prefix);
    z->logs = z->bias ? cf_layer_param(l, a, name, 1, (int64_t[]){out_channels}, zero) : NULL;
    return z->logs != NULL;
}

cf_tensor *cf__zero_conv_apply(cf_ctx *ctx, const cf__zero_conv *z, cf_tensor *x)
{
    /* (conv(x) + bias) * exp(3 logs): one fused node, the scale applied as the GEMMs write */
    return cf_conv2d_actnorm(ctx, x, z->weight, z->bias, cf_scale(ctx, z->logs, 3.0), false);
}

void cf__draw_gaussian(cf_tensor *x, const cf_tensor *mean, const cf_tensor *logs, double T,
                       cf_rng *rng)
{
    CF_ASSERT(rng != NULL, "drawing a latent needs io->rng");
    int64_t per = x->shape[0] ? x->numel / x->shape[0] : 0;
    for (int64_t i = 0; i < x->numel; i++) {
        int64_t k = mean->shape[0] == 1 ? i % per : i;
        double m = cf_tensor_get(mean, k), s = exp(cf_tensor_get(logs, k));
        cf_tensor_set(x, i, m + T * s * cf_rng_normal(rng));
    }
}
