/* cf_params.c: parameter sets as views into flat buffers (see cf_params.h). */
#include <stdlib.h>
#include <string.h>

#include "cf_params.h"

#define CF_PARAM_ALIGN_BYTES 64

typedef struct flat {
    cf_tensor **items; /* owned tensors, each a view at offsets[i] */
    size_t *offsets;   /* element offsets */
    int count, cap;
    void *data, *grad; /* grad NULL for state */
    size_t numel;      /* elements in use (with gaps) */
    size_t capacity;   /* elements allocated */
} flat;

struct cf_params {
    cf_dtype dtype;
    flat train, state;
};

cf_params *cf_params_new(cf_dtype dtype)
{
    CF_ASSERT(dtype == CF_F32 || dtype == CF_F64, "bad dtype %d", (int)dtype);
    cf_params *ps = calloc(1, sizeof *ps);
    if (!ps) {
        cf_set_error(CF_ERR_NOMEM, "cf_params_new: out of memory");
        return NULL;
    }
    ps->dtype = dtype;
    return ps;
}

static void flat_free(flat *f)
{
    for (int i = 0; i < f->count; i++) {
        free((char *)f->items[i]->name);
        free(f->items[i]);
    }
    free(f->items);
    free(f->offsets);
    free(f->data);
    free(f->grad);
}

void cf_params_free(cf_params *ps)
{
    if (!ps) return;
    flat_free(&ps->train);
    flat_free(&ps->state);
    free(ps);
}

cf_dtype cf_params_dtype(const cf_params *ps)
{
    return ps->dtype;
}

/* The new buffer's tail past old_bytes is left untouched (and so, for a large buffer, not yet
 * resident): flat_add zeroes each range it hands out. */
static void *realloc_aligned(void *old, size_t old_bytes, size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, CF_PARAM_ALIGN_BYTES, bytes) != 0) return NULL;
    if (old) memcpy(p, old, old_bytes);
    free(old);
    return p;
}

static cf_tensor *flat_add(cf_params *ps, flat *f, bool trainable, const char *name, int ndim,
                           const int64_t *shape)
{
    if (!name || !name[0]) {
        cf_set_error(CF_ERR_ARG, "cf_params_add: empty name");
        return NULL;
    }
    if (cf_params_find(ps, name)) {
        cf_set_error(CF_ERR_EXISTS, "cf_params_add: '%s' is already in the set", name);
        return NULL;
    }
    /* Validate the shape through a throwaway heap tensor of size zero. */
    if (ndim < 0 || ndim > CF_MAX_DIMS) {
        cf_set_error(CF_ERR_ARG, "cf_params_add: '%s' has %d dimensions (at most %d)", name,
                     ndim, CF_MAX_DIMS);
        return NULL;
    }
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0 || numel > ((int64_t)1 << 40) / shape[d]) {
            cf_set_error(CF_ERR_ARG, "cf_params_add: '%s' has dimension %d of size %lld", name,
                         d, (long long)shape[d]);
            return NULL;
        }
        numel *= shape[d];
    }
    size_t esize = cf_dtype_size(ps->dtype);
    size_t align = CF_PARAM_ALIGN_BYTES / esize;
    size_t offset = (f->numel + align - 1) / align * align;
    size_t need = offset + (size_t)numel;
    if (f->count == f->cap) {
        int cap = f->cap ? 2 * f->cap : 32;
        cf_tensor **items = realloc(f->items, (size_t)cap * sizeof *items);
        size_t *offsets = items ? realloc(f->offsets, (size_t)cap * sizeof *offsets) : NULL;
        if (items) f->items = items;
        if (!items || !offsets) {
            cf_set_error(CF_ERR_NOMEM, "cf_params_add: out of memory adding '%s'", name);
            return NULL;
        }
        f->offsets = offsets;
        f->cap = cap;
    }
    if (need > f->capacity) {
        size_t cap = f->capacity ? 2 * f->capacity : 4096;
        while (cap < need) cap *= 2;
        void *data = realloc_aligned(f->data, f->numel * esize, cap * esize);
        if (data) f->data = data;
        void *grad = NULL;
        if (data && trainable) {
            grad = realloc_aligned(f->grad, f->numel * esize, cap * esize);
            if (grad) f->grad = grad;
        }
        if (!data || (trainable && !grad)) {
            /* data may have moved: re-point views before failing. */
            for (int i = 0; i < f->count; i++)
                f->items[i]->data = (char *)f->data + f->offsets[i] * esize;
            cf_set_error(CF_ERR_NOMEM, "cf_params_add: cannot grow the flat buffer to %zu "
                                       "elements for '%s'", cap, name);
            return NULL;
        }
        f->capacity = cap;
        for (int i = 0; i < f->count; i++) {
            f->items[i]->data = (char *)f->data + f->offsets[i] * esize;
            if (trainable) f->items[i]->grad = (char *)f->grad + f->offsets[i] * esize;
        }
    }
    /* The elements handed out now, alignment gap included, start as zeros (the flat loops of
     * optimizers and all-reduces read the gaps too). */
    memset((char *)f->data + f->numel * esize, 0, (need - f->numel) * esize);
    if (trainable) memset((char *)f->grad + f->numel * esize, 0, (need - f->numel) * esize);
    cf_tensor *t = calloc(1, sizeof *t);
    char *copy = t ? strdup(name) : NULL;
    if (!copy) {
        free(t);
        cf_set_error(CF_ERR_NOMEM, "cf_params_add: out of memory adding '%s'", name);
        return NULL;
    }
    t->dtype = ps->dtype;
    t->ndim = ndim;
    for (int d = 0; d < CF_MAX_DIMS; d++) t->shape[d] = d < ndim ? shape[d] : 1;
    t->numel = numel;
    t->data = (char *)f->data + offset * esize;
    t->grad = trainable ? (char *)f->grad + offset * esize : NULL;
    t->name = copy;
    t->flags = CF_TENSOR_PARAM | (trainable ? CF_TENSOR_REQUIRES_GRAD : 0);
    f->items[f->count] = t;
    f->offsets[f->count] = offset;
    f->count++;
    f->numel = need;
    return t;
}

cf_tensor *cf_params_add(cf_params *ps, const char *name, int ndim, const int64_t *shape)
{
    return flat_add(ps, &ps->train, true, name, ndim, shape);
}

cf_tensor *cf_params_add_state(cf_params *ps, const char *name, int ndim, const int64_t *shape)
{
    return flat_add(ps, &ps->state, false, name, ndim, shape);
}

cf_tensor *cf_params_find(const cf_params *ps, const char *name)
{
    const flat *sets[2] = {&ps->train, &ps->state};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < sets[s]->count; i++)
            if (strcmp(sets[s]->items[i]->name, name) == 0) return sets[s]->items[i];
    return NULL;
}

int cf_params_count(const cf_params *ps)
{
    return ps->train.count;
}

cf_tensor *cf_params_at(const cf_params *ps, int i)
{
    CF_ASSERT(i >= 0 && i < ps->train.count, "parameter %d of %d", i, ps->train.count);
    return ps->train.items[i];
}

int cf_params_state_count(const cf_params *ps)
{
    return ps->state.count;
}

cf_tensor *cf_params_state_at(const cf_params *ps, int i)
{
    CF_ASSERT(i >= 0 && i < ps->state.count, "state %d of %d", i, ps->state.count);
    return ps->state.items[i];
}

void *cf_params_data(cf_params *ps)
{
    return ps->train.data;
}

void *cf_params_grad(cf_params *ps)
{
    return ps->train.grad;
}

size_t cf_params_flat_numel(const cf_params *ps)
{
    return ps->train.numel;
}

size_t cf_params_offset(const cf_params *ps, int i)
{
    CF_ASSERT(i >= 0 && i < ps->train.count, "parameter %d of %d", i, ps->train.count);
    return ps->train.offsets[i];
}

int64_t cf_params_numel(const cf_params *ps)
{
    int64_t n = 0;
    for (int i = 0; i < ps->train.count; i++) n += ps->train.items[i]->numel;
    return n;
}

void cf_params_zero_grad(cf_params *ps)
{
    if (ps->train.grad) memset(ps->train.grad, 0, ps->train.numel * cf_dtype_size(ps->dtype));
}
