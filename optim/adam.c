/* adam.c: Adam, AdamW and Adamax over a parameter set's flat buffers (see cf_optim.h).
 *
 * A step is two passes over the flat gradient buffer: the first takes the global L2 norm (in
 * double) and so also finds non-finite gradients, the second clips, updates both moments and
 * the parameter, element by element. Arithmetic is in double whatever the buffers' dtype; f32
 * sets keep f32 moments, rounded once per step. OpenMP splits both passes over large buffers.
 *
 * Not here: learning-rate schedules beyond linear warmup, per-parameter groups or options
 * (one set of hyper-parameters for the whole buffer), AMSGrad, gradient averaging across ranks
 * (the caller all-reduces the gradient buffer before the step). A step allocates nothing.
 *
 * Legend: N elements of the flat buffers (alignment gaps included); p parameter, g gradient,
 * m first moment, v second moment (u, the infinity norm, for Adamax); t the 1-based update.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cf_optim.h"

/* Elements per unit of work: a buffer of one chunk is handled on the calling thread. */
#define CHUNK 32768
/* Moment buffers are aligned like the parameter buffers. */
#define MOMENT_ALIGN_BYTES 64
/* torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6); so do we. */
#define CLIP_EPS 1e-6

struct cf_adam {
    cf_params *ps;     /* borrowed */
    cf_adam_opts opts; /* defaults filled in */
    size_t numel;      /* N when the optimizer was made; the set must not grow */
    void *m, *v;       /* (N) each, dtype of the set, owned */
    double *partial;   /* (N / CHUNK + 1) partial sums of squares, owned */
    int64_t steps;     /* updates applied */
    int64_t skipped;   /* steps refused for non-finite gradients */
};

/* What the element update needs, worked out once per step. */
typedef struct hyper {
    cf_optim_kind kind;
    double b1, b2, eps;
    double l2;        /* weight decay added to g (Adam, Adamax); 0 for AdamW */
    double decay;     /* p's factor before the step: 1 - lr_t * weight_decay (AdamW), else 1 */
    double step_size; /* lr_t / (1 - b1^t) */
    double sqrt_bc2;  /* sqrt(1 - b2^t) (Adam, AdamW) */
    double gscale;    /* clipping factor applied to g; 1 when not clipping */
    bool clipped;     /* the gradient buffer is rescaled in place */
} hyper;

/* ---- options ------------------------------------------------------------------------- */

static cf_status fill_options(cf_adam_opts *o, const cf_adam_opts *given)
{
    *o = given ? *given : (cf_adam_opts){0};
    if (o->kind != CF_OPTIM_KIND_ADAM && o->kind != CF_OPTIM_KIND_ADAMW &&
        o->kind != CF_OPTIM_KIND_ADAMAX)
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: unknown optimizer kind %d", (int)o->kind);
    /* Negated comparisons also refuse NaN. */
    if (!(o->lr >= 0) || isinf(o->lr))
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: lr must be finite and >= 0, got %g", o->lr);
    if (!(o->beta1 >= 0 && o->beta1 < 1))
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: beta1 must be in [0, 1), got %g", o->beta1);
    if (!(o->beta2 >= 0 && o->beta2 < 1))
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: beta2 must be in [0, 1), got %g", o->beta2);
    if (!(o->eps >= 0) || isinf(o->eps))
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: eps must be finite and >= 0, got %g", o->eps);
    if (!(o->weight_decay >= 0) || isinf(o->weight_decay))
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: weight_decay must be finite and >= 0, got %g",
                            o->weight_decay);
    if (o->warmup_steps < 0)
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: warmup_steps must be >= 0, got %lld",
                            (long long)o->warmup_steps);
    if (!(o->clip_norm >= 0) || isinf(o->clip_norm))
        return cf_set_error(CF_ERR_ARG, "cf_adam_new: clip_norm must be finite and >= 0, got %g",
                            o->clip_norm);
    if (o->lr == 0) o->lr = 1e-3;
    if (o->beta1 == 0) o->beta1 = 0.9;
    if (o->beta2 == 0) o->beta2 = 0.999;
    if (o->eps == 0) o->eps = 1e-8;
    return CF_OK;
}

static void *alloc_zeroed(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, MOMENT_ALIGN_BYTES, bytes ? bytes : MOMENT_ALIGN_BYTES) != 0)
        return NULL;
    memset(p, 0, bytes);
    return p;
}

cf_adam *cf_adam_new(cf_params *ps, const cf_adam_opts *opts)
{
    CF_ASSERT(ps, "cf_adam_new: NULL parameter set");
    cf_adam_opts o;
    if (fill_options(&o, opts) != CF_OK) return NULL;
    size_t numel = cf_params_flat_numel(ps);
    if (cf_params_count(ps) == 0 || numel == 0) {
        cf_set_error(CF_ERR_ARG, "cf_adam_new: the parameter set has no parameters (declare the "
                                 "model before making its optimizer)");
        return NULL;
    }
    size_t bytes = numel * cf_dtype_size(cf_params_dtype(ps));
    cf_adam *opt = calloc(1, sizeof *opt);
    if (opt) opt->m = alloc_zeroed(bytes);
    if (opt && opt->m) opt->v = alloc_zeroed(bytes);
    if (opt && opt->v) opt->partial = calloc(numel / CHUNK + 1, sizeof *opt->partial);
    if (!opt || !opt->partial) {
        cf_adam_free(opt);
        cf_set_error(CF_ERR_NOMEM,
                     "cf_adam_new: out of memory for two moment buffers of %zu "
                     "bytes",
                     bytes);
        return NULL;
    }
    opt->ps = ps;
    opt->opts = o;
    opt->numel = numel;
    return opt;
}

void cf_adam_free(cf_adam *opt)
{
    if (!opt) return;
    free(opt->m);
    free(opt->v);
    free(opt->partial);
    free(opt);
}

/* ---- the two passes ------------------------------------------------------------------ */
/* Both passes walk the buffer in chunks of CHUNK elements; with more than one chunk they run
 * under OpenMP. The norm's partial sums go to one slot per chunk and are added in chunk order,
 * so the reported norm does not depend on the number of threads. A buffer of one chunk never
 * enters an OpenMP region (libgomp's team setup costs more than the loop there). */

static double sumsq_chunk(cf_dtype dt, const void *g, int64_t lo, int64_t hi)
{
    double s = 0;
    if (dt == CF_F32) {
        const float *gf = g;
        for (int64_t i = lo; i < hi; i++) s += (double)gf[i] * (double)gf[i];
    } else {
        const double *gd = g;
        for (int64_t i = lo; i < hi; i++) s += gd[i] * gd[i];
    }
    return s;
}

static double sumsq(const cf_adam *opt, cf_dtype dt, const void *g)
{
    int64_t n = (int64_t)opt->numel, chunks = (n + CHUNK - 1) / CHUNK;
    if (chunks <= 1) return sumsq_chunk(dt, g, 0, n);
    double *partial = opt->partial;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++)
        partial[c] = sumsq_chunk(dt, g, c * CHUNK, c + 1 < chunks ? (c + 1) * CHUNK : n);
    double s = 0;
    for (int64_t c = 0; c < chunks; c++) s += partial[c];
    return s;
}

/* The L2 norm of finite f64 values whose squares overflowed: scaled by the largest |g|. */
static double norm_scaled_f64(const double *g, int64_t n)
{
    double big = 0, s = 0;
    for (int64_t i = 0; i < n; i++) big = fmax(big, fabs(g[i]));
    if (big == 0) return 0;
    for (int64_t i = 0; i < n; i++) s += (g[i] / big) * (g[i] / big);
    return big * sqrt(s);
}

/* One element: updates *m and *v in place and returns the new parameter. g is clipped. */
static inline double update_one(const hyper *h, double p, double g, double *m, double *v)
{
    g += h->l2 * p;
    *m = h->b1 * *m + (1 - h->b1) * g;
    if (h->kind == CF_OPTIM_KIND_ADAMAX) {
        *v = fmax(h->b2 * *v, fabs(g) + h->eps);
        return p - h->step_size * *m / *v;
    }
    *v = h->b2 * *v + (1 - h->b2) * g * g;
    return p * h->decay - h->step_size * *m / (sqrt(*v) / h->sqrt_bc2 + h->eps);
}

static void update_chunk_f32(const hyper *h, float *restrict p, float *restrict g,
                             float *restrict m, float *restrict v, int64_t lo, int64_t hi)
{
    if (h->clipped) {
        const double gscale = h->gscale;
        for (int64_t i = lo; i < hi; i++) g[i] = (float)(g[i] * gscale);
    }
    /* With the clipping pass apart and the constants in a local copy (nothing the loop writes
     * can change them), update_one inlines into a loop that vectorises. */
    const hyper hl = *h;
    for (int64_t i = lo; i < hi; i++) {
        double mi = m[i], vi = v[i];
        p[i] = (float)update_one(&hl, p[i], g[i], &mi, &vi);
        m[i] = (float)mi;
        v[i] = (float)vi;
    }
}

static void update_chunk_f64(const hyper *h, double *p, double *g, double *m, double *v, int64_t lo,
                             int64_t hi)
{
    for (int64_t i = lo; i < hi; i++) {
        if (h->clipped) g[i] *= h->gscale;
        p[i] = update_one(h, p[i], g[i], &m[i], &v[i]);
    }
}

static void update_chunk(const hyper *h, cf_dtype dt, void *p, void *g, void *m, void *v,
                         int64_t lo, int64_t hi)
{
    if (dt == CF_F32)
        update_chunk_f32(h, p, g, m, v, lo, hi);
    else
        update_chunk_f64(h, p, g, m, v, lo, hi);
}

static void update(const cf_adam *opt, const hyper *h, cf_dtype dt, void *p, void *g)
{
    int64_t n = (int64_t)opt->numel, chunks = (n + CHUNK - 1) / CHUNK;
    if (chunks <= 1) {
        update_chunk(h, dt, p, g, opt->m, opt->v, 0, n);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++)
        update_chunk(h, dt, p, g, opt->m, opt->v, c * CHUNK, c + 1 < chunks ? (c + 1) * CHUNK : n);
}

/* Names the first non-finite gradient in the thread's error message; returns CF_ERR_NUMERIC. */
static cf_status report_non_finite(const cf_adam *opt)
{
    cf_params *ps = opt->ps;
    cf_dtype dt = cf_params_dtype(ps);
    const void *grad = cf_params_grad(ps);
    int64_t n = (int64_t)opt->numel, bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++)
        if (!isfinite(cf_buf_get(dt, grad, i))) bad = i;
    double value = bad >= 0 ? cf_buf_get(dt, grad, bad) : NAN;
    long long t = (long long)opt->steps + 1, skipped = (long long)opt->skipped;
    for (int i = 0; i < cf_params_count(ps); i++) {
        const cf_tensor *p = cf_params_at(ps, i);
        int64_t off = (int64_t)cf_params_offset(ps, i);
        if (bad >= off && bad < off + p->numel) {
            char shape[96];
            return cf_set_error(CF_ERR_NUMERIC,
                                "cf_adam_step: the gradient of '%s' %s is not "
                                "finite (%g at element %lld); update %lld skipped (%lld skipped "
                                "so far)",
                                p->name, cf_tensor_describe(p, shape, sizeof shape), value,
                                (long long)(bad - off), t, skipped);
        }
    }
    return cf_set_error(CF_ERR_NUMERIC,
                        "cf_adam_step: the gradient buffer holds %g at flat "
                        "element %lld, outside every parameter; update %lld skipped (%lld "
                        "skipped so far)",
                        value, (long long)bad, t, skipped);
}

cf_status cf_adam_step(cf_adam *opt, cf_step_info *info)
{
    CF_ASSERT(opt, "cf_adam_step: NULL optimizer");
    cf_params *ps = opt->ps;
    CF_ASSERT(cf_params_flat_numel(ps) == opt->numel,
              "cf_adam_step: parameters were added after cf_adam_new (%zu elements, now %zu)",
              opt->numel, cf_params_flat_numel(ps));
    const cf_adam_opts *o = &opt->opts;
    cf_dtype dt = cf_params_dtype(ps);
    int64_t n = (int64_t)opt->numel;
    void *p = cf_params_data(ps), *g = cf_params_grad(ps);

    double sq = sumsq(opt, dt, g);
    double norm = sqrt(sq);
    cf_step_info step = {.grad_norm = norm};
    if (!isfinite(sq)) {
        /* f32 squares cannot overflow a double sum; f64 ones can, with every value finite. */
        bool finite = true;
        for (int64_t i = 0; i < n && finite; i++) finite = isfinite(cf_buf_get(dt, g, i));
        if (!finite) {
            opt->skipped++;
            step.skipped = true;
            if (info) *info = step;
            return report_non_finite(opt);
        }
        step.grad_norm = norm = norm_scaled_f64(g, n);
    }

    int64_t t = opt->steps + 1;
    double lr = cf_adam_lr_at(opt, t);
    hyper h = {
        .kind = o->kind,
        .b1 = o->beta1,
        .b2 = o->beta2,
        .eps = o->eps,
        .l2 = o->kind == CF_OPTIM_KIND_ADAMW ? 0 : o->weight_decay,
        .decay = o->kind == CF_OPTIM_KIND_ADAMW ? 1 - lr * o->weight_decay : 1,
        .step_size = lr / (1 - pow(o->beta1, (double)t)),
        .sqrt_bc2 = sqrt(1 - pow(o->beta2, (double)t)),
        .gscale = 1,
    };
    if (o->clip_norm > 0 && norm > o->clip_norm) {
        h.gscale = o->clip_norm / (norm + CLIP_EPS);
        h.clipped = step.clipped = true;
    }
    update(opt, &h, dt, p, g);
    opt->steps = t;
    step.lr = lr;
    if (info) *info = step;
    return CF_OK;
}

/* ---- accessors ----------------------------------------------------------------------- */

const cf_adam_opts *cf_adam_options(const cf_adam *opt)
{
    return &opt->opts;
}

int64_t cf_adam_step_count(const cf_adam *opt)
{
    return opt->steps;
}

int64_t cf_adam_skipped_count(const cf_adam *opt)
{
    return opt->skipped;
}

double cf_adam_lr_at(const cf_adam *opt, int64_t t)
{
    int64_t w = opt->opts.warmup_steps;
    if (t < 0) t = 0;
    if (w > 0 && t < w) return opt->opts.lr * (double)t / (double)w;
    return opt->opts.lr;
}

void *cf_adam_m(cf_adam *opt)
{
    return opt->m;
}

void *cf_adam_v(cf_adam *opt)
{
    return opt->v;
}

void cf_adam_set_counts(cf_adam *opt, int64_t steps, int64_t skipped)
{
    CF_ASSERT(steps >= 0 && skipped >= 0, "cf_adam_set_counts: negative counts (%lld, %lld)",
              (long long)steps, (long long)skipped);
    opt->steps = steps;
    opt->skipped = skipped;
}
