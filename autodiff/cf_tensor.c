/* cf_tensor.c: tensors, the arena and the context.
 *
 * The arena is a list of blocks handed out by bumping a pointer; reset rewinds to the first
 * block and keeps every block, so once a step has run, the same step runs without malloc.
 * It does not free individual allocations and is not thread-safe (one context per thread).
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_autodiff_impl.h"

#define CF_ALIGN 64
#define CF_MIN_BLOCK ((size_t)1 << 20)

static size_t align_up(size_t n)
{
    return (n + CF_ALIGN - 1) & ~(size_t)(CF_ALIGN - 1);
}

size_t cf_dtype_size(cf_dtype dtype)
{
    CF_ASSERT(dtype == CF_F32 || dtype == CF_F64, "bad dtype %d", (int)dtype);
    return dtype == CF_F32 ? sizeof(float) : sizeof(double);
}

const char *cf_dtype_name(cf_dtype dtype)
{
    return dtype == CF_F32 ? "f32" : dtype == CF_F64 ? "f64" : "?";
}

char *cf_tensor_describe(const cf_tensor *t, char *buf, size_t size)
{
    if (!t) {
        snprintf(buf, size, "(null)");
        return buf;
    }
    size_t len = 0;
    len += (size_t)snprintf(buf + len, size - len, "(");
    for (int d = 0; d < t->ndim && len < size; d++)
        len += (size_t)snprintf(buf + len, size - len, d ? ", %lld" : "%lld",
                                (long long)t->shape[d]);
    if (len < size) snprintf(buf + len, size - len, ") %s", cf_dtype_name(t->dtype));
    return buf;
}

bool cf_tensor_same_shape(const cf_tensor *a, const cf_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

double cf_buf_get(cf_dtype dtype, const void *buf, int64_t i)
{
    return dtype == CF_F32 ? (double)((const float *)buf)[i] : ((const double *)buf)[i];
}

void cf_buf_set(cf_dtype dtype, void *buf, int64_t i, double value)
{
    if (dtype == CF_F32)
        ((float *)buf)[i] = (float)value;
    else
        ((double *)buf)[i] = value;
}

double cf_tensor_get(const cf_tensor *t, int64_t i)
{
    CF_ASSERT(i >= 0 && i < t->numel, "index %lld out of %lld", (long long)i,
              (long long)t->numel);
    return cf_buf_get(t->dtype, t->data, i);
}

void cf_tensor_set(cf_tensor *t, int64_t i, double value)
{
    CF_ASSERT(i >= 0 && i < t->numel, "index %lld out of %lld", (long long)i,
              (long long)t->numel);
    cf_buf_set(t->dtype, t->data, i, value);
}

void cf_tensor_fill(cf_tensor *t, double value)
{
    for (int64_t i = 0; i < t->numel; i++) cf_buf_set(t->dtype, t->data, i, value);
}

void cf_tensor_copy(cf_tensor *dst, const cf_tensor *src)
{
    CF_ASSERT(dst->numel == src->numel, "copy of %lld elements into %lld",
              (long long)src->numel, (long long)dst->numel);
    if (dst->dtype == src->dtype) {
        memmove(dst->data, src->data, (size_t)src->numel * cf_dtype_size(src->dtype));
        return;
    }
    for (int64_t i = 0; i < src->numel; i++)
        cf_buf_set(dst->dtype, dst->data, i, cf_buf_get(src->dtype, src->data, i));
}

/* Fills shape fields; returns false (with the message in err) for a bad shape. */
static bool set_shape(cf_tensor *t, cf_dtype dtype, int ndim, const int64_t *shape, char *err,
                      size_t errsize)
{
    if (dtype != CF_F32 && dtype != CF_F64) {
        snprintf(err, errsize, "dtype %d is neither f32 nor f64", (int)dtype);
        return false;
    }
    if (ndim < 0 || ndim > CF_MAX_DIMS) {
        snprintf(err, errsize, "%d dimensions (at most %d)", ndim, CF_MAX_DIMS);
        return false;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < CF_MAX_DIMS; d++) t->shape[d] = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && t->numel > INT64_MAX / 8 / shape[d])) {
            snprintf(err, errsize, "dimension %d has size %lld", d, (long long)shape[d]);
            return false;
        }
        t->shape[d] = shape[d];
        t->numel *= shape[d];
    }
    return true;
}

cf_tensor *cf_tensor_alloc(cf_dtype dtype, int ndim, const int64_t *shape)
{
    cf_tensor tmp = {0};
    char err[128];
    if (!set_shape(&tmp, dtype, ndim, shape, err, sizeof err)) {
        cf_set_error(CF_ERR_ARG, "cf_tensor_alloc: %s", err);
        return NULL;
    }
    cf_tensor *t = malloc(sizeof *t);
    size_t bytes = align_up((size_t)tmp.numel * cf_dtype_size(dtype));
    void *data = NULL;
    if (!t || posix_memalign(&data, CF_ALIGN, bytes ? bytes : CF_ALIGN) != 0) {
        free(t);
        cf_set_error(CF_ERR_NOMEM, "cf_tensor_alloc: cannot allocate %zu bytes", bytes);
        return NULL;
    }
    memset(data, 0, bytes);
    *t = tmp;
    t->data = data;
    t->flags = CF_TENSOR_HEAP;
    return t;
}

void cf_tensor_free(cf_tensor *t)
{
    if (!t) return;
    CF_ASSERT(t->flags & CF_TENSOR_HEAP, "cf_tensor_free on a tensor it does not own");
    free(t->data);
    free(t->grad);
    free(t);
}

/* ---- context and arena -------------------------------------------------------------- */

/* OpenBLAS keeps a thread pool of its own; its threads would fight OpenMP's over the same
 * cores. Kernels parallelise with OpenMP, so BLAS runs single-threaded (DESIGN: "BLAS
 * single-threaded inside parallel regions"). Declared here to keep cblas.h out of autodiff. */
void openblas_set_num_threads(int num_threads);
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_threaded(void)
{
    openblas_set_num_threads(1);
}

cf_ctx *cf_ctx_new(size_t arena_limit)
{
    pthread_once(&blas_once, blas_single_threaded);
    cf_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        cf_set_error(CF_ERR_NOMEM, "cf_ctx_new: out of memory");
        return NULL;
    }
    ctx->limit = arena_limit;
    ctx->grad_enabled = true;
    const char *poison = getenv("CF_POISON_OUTPUTS");
    ctx->poison = poison && poison[0] == '1';
    ctx->kernels = CF_KERNELS_FAST;
    return ctx;
}

void cf_ctx_free(cf_ctx *ctx)
{
    if (!ctx) return;
    for (int chain = 0; chain < 2; chain++)
        for (cf__block *b = chain ? ctx->scratch_first : ctx->first, *next; b; b = next) {
            next = b->next;
            free(b);
        }
    free(ctx->nodes);
    free(ctx->spare);
    free(ctx);
}

void cf_ctx_reset(cf_ctx *ctx)
{
    cf__arena_release(ctx, (cf__mark){0});
    cf__scratch_release(ctx, (cf__mark){0});
    ctx->n_nodes = 0;
    ctx->consumed = 0;
    ctx->n_spare = 0;
    ctx->status = CF_OK;
    ctx->error[0] = '\0';
}

void cf__ctx_redirect_grads(cf_ctx *ctx, void *from, void *to, size_t bytes)
{
    ctx->grad_from = to ? from : NULL;
    ctx->grad_to = to;
    ctx->grad_bytes = to ? bytes : 0;
}

bool cf_ctx_set_grad(cf_ctx *ctx, bool enabled)
{
    bool old = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return old;
}

bool cf_ctx_grad_enabled(const cf_ctx *ctx)
{
    return ctx->grad_enabled;
}

cf_kernels cf_ctx_set_kernels(cf_ctx *ctx, cf_kernels kernels)
{
    cf_kernels old = ctx->kernels;
    ctx->kernels = kernels;
    return old;
}

cf_kernels cf_ctx_kernels(const cf_ctx *ctx)
{
    return ctx->kernels;
}

cf_status cf_ctx_status(const cf_ctx *ctx)
{
    return ctx->status;
}

const char *cf_ctx_error(const cf_ctx *ctx)
{
    return ctx->status == CF_OK ? "no error" : ctx->error;
}

cf_status cf_ctx_fail(cf_ctx *ctx, cf_status status, const char *fmt, ...)
{
    CF_ASSERT(status < 0, "cf_ctx_fail with a non-failure status %d", (int)status);
    if (ctx->status == CF_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
        va_end(ap);
        ctx->status = status;
    }
    return ctx->status;
}

size_t cf_ctx_arena_used(const cf_ctx *ctx)
{
    return ctx->used;
}
size_t cf_ctx_arena_peak(const cf_ctx *ctx)
{
    return ctx->peak;
}
size_t cf_ctx_arena_reserved(const cf_ctx *ctx)
{
    return ctx->reserved;
}
void cf_ctx_reset_peak(cf_ctx *ctx)
{
    ctx->peak = ctx->used;
}

void cf_ctx_note_peak(cf_ctx *ctx, size_t bytes)
{
    if (bytes > ctx->peak) ctx->peak = bytes;
}

size_t cf_ctx_arena_limit(const cf_ctx *ctx)
{
    return ctx->limit;
}

void cf_ctx_set_arena_limit(cf_ctx *ctx, size_t limit)
{
    ctx->limit = limit;
}
int cf_ctx_tape_size(const cf_ctx *ctx)
{
    return ctx->n_nodes;
}

void *cf__grad_alloc(cf_ctx *ctx, size_t bytes)
{
    for (int i = ctx->n_spare - 1; i >= 0; i--)
        if (ctx->spare[i].bytes == bytes) {
            void *p = ctx->spare[i].p;
            ctx->spare[i] = ctx->spare[--ctx->n_spare];
            return p;
        }
    return cf_ctx_alloc(ctx, bytes, "an activation gradient");
}

void cf__grad_release(cf_ctx *ctx, void *p, size_t bytes)
{
    if (ctx->n_spare == ctx->cap_spare) {
        int cap = ctx->cap_spare ? 2 * ctx->cap_spare : 64;
        struct cf__spare *s = realloc(ctx->spare, (size_t)cap * sizeof *s);
        if (!s) return; /* not reused: the arena still owns it */
        ctx->spare = s;
        ctx->cap_spare = cap;
    }
    ctx->spare[ctx->n_spare].p = p;
    ctx->spare[ctx->n_spare].bytes = bytes;
    ctx->n_spare++;
}

/* `need` bytes from a chain of blocks: the current block, then the (kept) blocks after it,
 * else a new block appended at the end. *used counts the bytes handed out from the chain. */
static void *chain_alloc(cf_ctx *ctx, cf__block **first, cf__block **cur, size_t *used,
                         size_t need, const char *what)
{
    /* Try the current block, then the blocks after it (kept from earlier steps). */
    for (cf__block *b = *cur; b; b = b->next) {
        if (b->size - b->used >= need) {
            /* Blocks skipped over stay partly unused until the next reset. */
            char *p = (char *)b + align_up(sizeof *b) + b->used;
            b->used += need;
            *cur = b;
            *used += need;
            return p;
        }
    }
    size_t size = need > CF_MIN_BLOCK ? need : CF_MIN_BLOCK;
    /* Grow geometrically so a large step needs few blocks. */
    if (size < ctx->reserved / 2) size = align_up(ctx->reserved / 2);
    if (ctx->limit && ctx->reserved + size > ctx->limit) size = need;
    if (ctx->limit && ctx->reserved + size > ctx->limit) {
        size_t left = ctx->limit - ctx->reserved;
        for (cf__block *b = *cur; b; b = b->next) left += b->size - b->used;
        cf_ctx_fail(ctx, CF_ERR_ARENA,
                    "arena exhausted: %s needed %zu bytes; %zu of the arena's limit of %zu "
                    "bytes were available (%zu in use this step); raise the limit",
                    what ? what : "an allocation", need, left, ctx->limit,
                    ctx->used + ctx->scratch_used);
        return NULL;
    }
    void *mem = NULL;
    if (posix_memalign(&mem, CF_ALIGN, align_up(sizeof(cf__block)) + size) != 0) {
        cf_ctx_fail(ctx, CF_ERR_NOMEM, "out of memory: %s needed %zu bytes of arena",
                    what ? what : "an allocation", need);
        return NULL;
    }
    cf__block *nb = mem;
    nb->next = NULL;
    nb->size = size;
    nb->used = 0;
    /* Append after the last block so reset walks blocks in the same order every step. */
    if (!*first) {
        *first = nb;
    } else {
        cf__block *last = *cur ? *cur : *first;
        while (last->next) last = last->next;
        last->next = nb;
    }
    ctx->reserved += size;
    *cur = nb;
    char *p = (char *)nb + align_up(sizeof *nb);
    nb->used = need;
    *used += need;
    return p;
}

static void note_peak(cf_ctx *ctx)
{
    if (ctx->used + ctx->scratch_used > ctx->peak) ctx->peak = ctx->used + ctx->scratch_used;
}

void *cf_ctx_alloc(cf_ctx *ctx, size_t bytes, const char *what)
{
    void *p = chain_alloc(ctx, &ctx->first, &ctx->cur, &ctx->used, align_up(bytes ? bytes : 1),
                          what);
    note_peak(ctx);
    return p;
}

/* Where a chain of blocks stands, and going back there: blocks after the current one are
 * empty since the last reset (allocation only moves forward), so everything after the mark is
 * what was allocated since. */
static cf__mark chain_mark(cf__block *cur, size_t used)
{
    return (cf__mark){cur, cur ? cur->used : 0, used};
}

static void chain_release(cf__block *first, cf__block **cur, size_t *used, cf__mark m)
{
    cf__block *b = m.block ? m.block : first;
    if (!b) return;
    b->used = m.block ? m.used : 0;
    for (b = b->next; b; b = b->next) b->used = 0;
    *cur = m.block ? m.block : first;
    *used = m.total;
}

cf__mark cf__arena_get_mark(const cf_ctx *ctx)
{
    return chain_mark(ctx->cur, ctx->used);
}

void cf__arena_release(cf_ctx *ctx, cf__mark m)
{
    chain_release(ctx->first, &ctx->cur, &ctx->used, m);
}

void *cf__scratch_alloc(cf_ctx *ctx, size_t bytes, const char *what)
{
    void *p = chain_alloc(ctx, &ctx->scratch_first, &ctx->scratch_cur, &ctx->scratch_used,
                          align_up(bytes ? bytes : 1), what);
    note_peak(ctx);
    return p;
}

cf__mark cf__scratch_get_mark(const cf_ctx *ctx)
{
    return chain_mark(ctx->scratch_cur, ctx->scratch_used);
}

void cf__scratch_release(cf_ctx *ctx, cf__mark m)
{
    chain_release(ctx->scratch_first, &ctx->scratch_cur, &ctx->scratch_used, m);
}

/* Shape checks and the arena allocations shared by the tensor constructors; with_data false:
 * the header alone (data NULL, for outputs whose kernels bring their own memory). */
static cf_tensor *arena_header(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape,
                               bool with_data)
{
    if (ctx->status != CF_OK) return NULL;
    cf_tensor tmp = {0};
    char err[128];
    if (!set_shape(&tmp, dtype, ndim, shape, err, sizeof err)) {
        cf_ctx_fail(ctx, CF_ERR_ARG, "cf_tensor_new: %s", err);
        return NULL;
    }
    cf_tensor *t = cf_ctx_alloc(ctx, sizeof *t, "a tensor header");
    void *data = t && with_data
                     ? cf_ctx_alloc(ctx, (size_t)tmp.numel * cf_dtype_size(dtype), "tensor data")
                     : NULL;
    if (!t || (with_data && !data)) return NULL;
    *t = tmp;
    t->data = data;
    return t;
}

static cf_tensor *arena_tensor(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape)
{
    return arena_header(ctx, dtype, ndim, shape, true);
}

cf_tensor *cf__tensor_new_borrowed(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape)
{
    cf_tensor *t = arena_header(ctx, dtype, ndim, shape, false);
    if (t) t->flags |= CF_TENSOR_VIEW;
    return t;
}

cf_tensor *cf__tensor_new_uninit(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape)
{
    cf_tensor *t = arena_tensor(ctx, dtype, ndim, shape);
    if (t && ctx->poison) /* NaN everywhere: a kernel that leaves an element unwritten shows */
        for (int64_t i = 0; i < t->numel; i++) cf_buf_set(dtype, t->data, i, NAN);
    return t;
}

cf_tensor *cf_tensor_new(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape)
{
    cf_tensor *t = arena_tensor(ctx, dtype, ndim, shape);
    if (t) memset(t->data, 0, (size_t)t->numel * cf_dtype_size(dtype));
    return t;
}

cf_status cf_tensor_requires_grad(cf_ctx *ctx, cf_tensor *t)
{
    CF_ASSERT(t != NULL, "cf_tensor_requires_grad(NULL)");
    CF_ASSERT(t->node == NULL, "cf_tensor_requires_grad on an op output (it gets a gradient "
                               "when something it feeds does)");
    t->flags |= CF_TENSOR_REQUIRES_GRAD;
    if (t->grad) return CF_OK;
    size_t bytes = (size_t)t->numel * cf_dtype_size(t->dtype);
    if (t->flags & CF_TENSOR_HEAP) {
        t->grad = calloc(1, bytes ? bytes : 1);
        if (!t->grad)
            return cf_set_error(CF_ERR_NOMEM, "cannot allocate a %zu-byte gradient", bytes);
        return CF_OK;
    }
    CF_ASSERT(ctx != NULL, "an arena tensor needs its context");
    t->grad = cf_ctx_alloc(ctx, bytes, "a leaf gradient");
    if (!t->grad) return ctx->status;
    memset(t->grad, 0, bytes);
    return CF_OK;
}

/* ---- the public forms of the above ------------------------------------------------------ */

cf_ctx_mark cf_ctx_get_mark(const cf_ctx *ctx)
{
    cf__mark m = cf__arena_get_mark(ctx);
    return (cf_ctx_mark){.block = m.block, .used = m.used, .total = m.total};
}

void cf_ctx_release_to(cf_ctx *ctx, cf_ctx_mark mark)
{
    cf__arena_release(ctx, (cf__mark){.block = mark.block, .used = mark.used, .total = mark.total});
}

cf_tensor *cf_tensor_view(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape, void *data)
{
    cf_tensor *t = cf__tensor_new_borrowed(ctx, dtype, ndim, shape);
    if (t) t->data = data;
    return t;
}

void cf_ctx_redirect_grads(cf_ctx *ctx, void *from, void *to, size_t bytes)
{
    cf__ctx_redirect_grads(ctx, from, to, bytes);
}
