/* flow_train.c: one training step (cf_flow_train_step): forward and backward in micro-batches
 * with the gradients added up, and, on several OpenMP threads, data parallelism across threads
 * (each its own context and gradient buffer, summed in thread order).
 *
 * Not here: the container (flow.c), running the layers (flow_run.c), the optimizer (optim/).
 */
#include <omp.h>

#include "cf_flow_impl.h"

/* True when no layer has an actnorm still waiting for its data-dependent initialisation. */
static bool all_initialized(const cf_flow *f)
{
    for (int k = 0; k < f->n_layers; k++) {
        const cf_layer *l = f->layers[k];
        for (int i = 0; i < l->n_state; i++)
            if (l->state[i]->name && strstr(l->state[i]->name, "initialized") &&
                cf_tensor_get(l->state[i], 0) == 0.0)
                return false;
    }
    return true;
}

/* Each thread's worker: its context (created once, reset per step) and, for threads after
 * the first, a private gradient buffer the size of the parameter set's. */
static bool ensure_workers(cf_flow *f, cf_ctx *ctx, int nt)
{
    if (f->n_workers < nt) {
        struct cf__worker *w = realloc(f->workers, (size_t)nt * sizeof *w);
        if (!w) {
            cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: out of memory for %d training threads", nt);
            return false;
        }
        f->workers = w;
        for (; f->n_workers < nt; f->n_workers++) {
            w[f->n_workers] = (struct cf__worker){cf_ctx_new(0), NULL, 0};
            if (!w[f->n_workers].ctx) {
                cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: out of memory for the context of "
                            "training thread %d", f->n_workers);
                return false;
            }
        }
    }
    /* Gradient buffers the size of the parameter set's (which may have grown since). */
    const size_t bytes = cf_params_flat_numel(f->ps) * cf_dtype_size(cf_params_dtype(f->ps));
    for (int i = 1; i < nt; i++) {
        struct cf__worker *w = &f->workers[i];
        if (w->grad_bytes >= bytes && w->grad) continue;
        free(w->grad);
        w->grad_bytes = 0;
        if (posix_memalign(&w->grad, 64, bytes ? bytes : 64) != 0) {
            w->grad = NULL;
            cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: out of memory for the gradients of training "
                        "thread %d (%zu bytes)", i, bytes);
            return false;
        }
        w->grad_bytes = bytes;
    }
    return true;
}

/* Forward and backward of images [b0, b0 + n) of x in ctx, their gradient scaled by n / B
 * (d(batch mean)/d(this part's mean)) and added to the parameters' (or where ctx redirects
 * them); *loss += the part's mean bits/dim times n / B. ctx is reset afterwards. */
static cf_status train_part(cf_flow *f, cf_ctx *ctx, const cf_tensor *x, int64_t b0, int64_t n,
                            double *loss)
{
    const int64_t B = x->shape[0];
    cf_tensor *xm = cf__batch_view(ctx, x, b0, n);
    if (!xm) return cf_ctx_status(ctx);
    cf_tensor *bpd = cf_flow_bpd(f, ctx, xm);
    cf_tensor *seed = cf_tensor_new(ctx, x->dtype, 0, NULL);
    if (!bpd || !seed) return cf_ctx_status(ctx);
    cf_tensor_set(seed, 0, (double)n / (double)B);
    cf_status st = cf_backward_ex(ctx, bpd, seed, 0);
    if (st != CF_OK) return st;
    *loss += cf_tensor_get(bpd, 0) * (double)n / (double)B;
    cf_ctx_reset(ctx);
    return CF_OK;
}

/* Data parallelism across threads, as across processes: the batch is cut into parts of
 * `part` images, dealt to the threads in turn; each thread runs its parts' forward and
 * backward on its own tape with single-threaded kernels (no synchronisation inside an op, and
 * each thread's activations stay in its own cache), adding its parameter gradients into its
 * own buffer; the buffers are then summed in thread order, so the result does not depend on
 * timing. The parameters are only read meanwhile. */
static cf_status train_step_threads(cf_flow *f, cf_ctx *ctx, const cf_tensor *x, int64_t part,
                                    int nt, double *loss)
{
    const int64_t B = x->shape[0];
    if (part * nt > B) part = (B + nt - 1) / nt;
    const int64_t n_parts = (B + part - 1) / part;
    if (nt > n_parts) nt = (int)n_parts;
    if (!ensure_workers(f, ctx, nt)) return cf_ctx_status(ctx);
    const cf_dtype dt = cf_params_dtype(f->ps);
    const size_t numel = cf_params_flat_numel(f->ps), bytes = numel * cf_dtype_size(dt);
    double *part_loss = calloc((size_t)n_parts, sizeof *part_loss);
    cf_status *st = calloc((size_t)nt, sizeof *st);
    if (!part_loss || !st) {
        free(part_loss);
        free(st);
        return cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: out of memory");
    }
    const cf_kernels kernels = cf_ctx_kernels(ctx);
    void *grad = cf_params_grad(f->ps);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        omp_set_num_threads(1); /* this thread's kernels run alone */
        cf_ctx *w = f->workers[t].ctx;
        cf_ctx_reset(w);
        cf_ctx_reset_peak(w);
        const size_t limit = cf_ctx_arena_limit(ctx);
        cf_ctx_set_arena_limit(w, limit ? (limit + (size_t)nt - 1) / (size_t)nt : 0);
        cf_ctx_set_kernels(w, kernels);
        cf_ctx_set_grad(w, true);
        if (t > 0) {
            memset(f->workers[t].grad, 0, bytes);
            cf_ctx_redirect_grads(w, grad, f->workers[t].grad, bytes);
        }
        for (int64_t p = t; p < n_parts && st[t] == CF_OK; p += nt) {
            const int64_t b0 = p * part, n = B - b0 < part ? B - b0 : part;
            st[t] = train_part(f, w, x, b0, n, &part_loss[p]);
        }
        cf_ctx_redirect_grads(w, NULL, NULL, 0);
    }
    cf_status res = CF_OK;
    for (int t = 0; t < nt && res == CF_OK; t++)
        if (st[t] != CF_OK)
            res = cf_ctx_fail(ctx, st[t], "training thread %d of %d: %s", t, nt,
                              cf_ctx_error(f->workers[t].ctx));
    /* ctx's peak counts the threads' arenas, which were in use at the same time. */
    size_t peak = cf_ctx_arena_used(ctx);
    for (int t = 0; t < nt; t++) {
        peak += cf_ctx_arena_peak(f->workers[t].ctx);
        cf_ctx_reset(f->workers[t].ctx);
    }
    cf_ctx_note_peak(ctx, peak);
    if (res == CF_OK) {
        for (int t = 1; t < nt; t++) {
            if (dt == CF_F32) {
                float *g = grad;
                const float *h = f->workers[t].grad;
                for (size_t i = 0; i < numel; i++) g[i] += h[i];
            } else {
                double *g = grad;
                const double *h = f->workers[t].grad;
                for (size_t i = 0; i < numel; i++) g[i] += h[i];
            }
        }
        double total = 0;
        for (int64_t p = 0; p < n_parts; p++) total += part_loss[p];
        *loss = total;
    }
    free(part_loss);
    free(st);
    return res;
}

cf_status cf_flow_train_step(cf_flow *f, cf_ctx *ctx, const cf_tensor *x, int64_t micro,
                             double *loss)
{
    *loss = NAN;
    if (cf_ctx_status(ctx) != CF_OK) return cf_ctx_status(ctx);
    if (!x || x->ndim != 4 || x->shape[0] < 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "cf_flow_train_step: x must be a (B, H, W, C) "
                           "batch of at least one image");
    const int64_t B = x->shape[0];
    /* A flow not initialised yet initialises its actnorms from the whole batch, as one pass. */
    const bool init = all_initialized(f);
    if (micro <= 0 || micro > B || !init) micro = B;
    cf_params_zero_grad(f->ps);
    const int nt = omp_get_max_threads();
    if (nt > 1 && init && !f->recompute && B >= nt && !omp_in_parallel())
        return train_step_threads(f, ctx, x, (micro + nt - 1) / nt, nt, loss);
    double total = 0;
    for (int64_t b0 = 0; b0 < B; b0 += micro) {
        cf_status st = train_part(f, ctx, x, b0, B - b0 < micro ? B - b0 : micro, &total);
        if (st != CF_OK) return st;
    }
    *loss = total;
    return CF_OK;
}
