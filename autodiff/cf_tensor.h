/* cf_tensor.h: dense tensors, the per-step context (arena, tape, grad mode) and backward.
 *
 * A tensor is dense and contiguous (row-major), up to 4-D, batch first; images are NHWC
 * (B, H, W, C) and convolution weights HWIO (KH, KW, C_in, C_out). dtype is f32 (training) or
 * f64 (reference kernels, gradcheck).
 *
 * Where tensors live:
 *   - the context's arena: activations, gradients of activations, tape nodes and saved buffers
 *     of one step. cf_ctx_reset() drops them all at once; nothing in a step calls malloc once
 *     the arena has grown to the step's size (it keeps its blocks across resets).
 *   - the heap: cf_tensor_alloc() for data you keep (batches, latents); free with
 *     cf_tensor_free().
 *   - a parameter set (cf_params.h): named parameters whose data and gradients are views into
 *     one flat buffer each.
 *
 * Failures of the world inside a step (an arena that is too small, a shape an op cannot take)
 * do not abort: the context records a sticky status and message, the failing op returns NULL,
 * every later op given a NULL input returns NULL too, and cf_backward() (or cf_ctx_status())
 * returns the first failure. So a training step checks one status, at its end.
 *
 * Not here: the ops themselves (ops/), threads (each thread uses its own context).
 */
#ifndef CF_TENSOR_H
#define CF_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cf_dtype { CF_F32 = 0, CF_F64 = 1, CF_DTYPE_COUNT } cf_dtype;

#define CF_MAX_DIMS 4

enum {
    CF_TENSOR_REQUIRES_GRAD = 1u << 0, /* backward accumulates into ->grad */
    CF_TENSOR_PARAM = 1u << 1,         /* owned by a cf_params set */
    CF_TENSOR_HEAP = 1u << 2,          /* from cf_tensor_alloc(); free with cf_tensor_free() */
    CF_TENSOR_VIEW = 1u << 3,          /* data borrowed from another tensor (reshape) */
    CF_TENSOR_GRAD_UNSET = 1u << 4,    /* ->grad is allocated but holds nothing yet this
                                          backward pass (internal to the tape) */
};

struct cf_node;

typedef struct cf_tensor {
    cf_dtype dtype;
    int ndim;                      /* 0 (scalar) to CF_MAX_DIMS */
    int64_t shape[CF_MAX_DIMS];    /* batch first; unused trailing entries are 1 */
    int64_t numel;                 /* product of shape[0..ndim) */
    void *data;                    /* numel elements of dtype, contiguous */
    void *grad;                    /* NULL or numel elements: d(loss)/d(this), accumulated */
    const char *name;              /* parameter's dotted name, or NULL */
    struct cf_node *node;          /* the tape node that produced it, NULL for leaves */
    unsigned flags;                /* CF_TENSOR_* */
} cf_tensor;

/* ---- shapes and elements ------------------------------------------------------------- */

size_t cf_dtype_size(cf_dtype dtype);
const char *cf_dtype_name(cf_dtype dtype);

/* Writes "(2, 8, 8, 3) f32" into buf; returns buf. */
char *cf_tensor_describe(const cf_tensor *t, char *buf, size_t size);

bool cf_tensor_same_shape(const cf_tensor *a, const cf_tensor *b);

/* Element i (flat index) as a double, whatever the dtype; and the converse. */
double cf_tensor_get(const cf_tensor *t, int64_t i);
void cf_tensor_set(cf_tensor *t, int64_t i, double value);
/* Same, on a raw buffer of the tensor's dtype (used on ->grad). */
double cf_buf_get(cf_dtype dtype, const void *buf, int64_t i);
void cf_buf_set(cf_dtype dtype, void *buf, int64_t i, double value);

/* Fills with a constant. */
void cf_tensor_fill(cf_tensor *t, double value);

/* Copies values (converting dtype) from src to dst; shapes must have equal numel. */
void cf_tensor_copy(cf_tensor *dst, const cf_tensor *src);

/* ---- heap tensors ------------------------------------------------------------------- */

/* Returns an owned, zero-filled tensor (free with cf_tensor_free), or NULL with
 * cf_last_error() set. shape has ndim entries. */
cf_tensor *cf_tensor_alloc(cf_dtype dtype, int ndim, const int64_t *shape);
/* Frees a heap tensor and its gradient; NULL is accepted. */
void cf_tensor_free(cf_tensor *t);

/* ---- the context: arena, tape, grad mode -------------------------------------------- */

typedef struct cf_ctx cf_ctx;

typedef enum cf_kernels {
    CF_KERNELS_FAST = 0,      /* fast f32 kernels where an op has them (default) */
    CF_KERNELS_REFERENCE = 1, /* plain reference kernels only (for testing the fast ones) */
} cf_kernels;

/* Returns an owned context whose arena may grow to arena_limit bytes (0: no limit).
 * Free with cf_ctx_free. NULL with cf_last_error() on failure. */
cf_ctx *cf_ctx_new(size_t arena_limit);
void cf_ctx_free(cf_ctx *ctx);

/* Drops every arena tensor, node and gradient of the step and clears the sticky status;
 * keeps the arena's memory for the next step. */
void cf_ctx_reset(cf_ctx *ctx);

/* Grad recording: when off, ops compute their outputs and record nothing (evaluation,
 * sampling). Returns the previous setting. On by default. */
bool cf_ctx_set_grad(cf_ctx *ctx, bool enabled);
bool cf_ctx_grad_enabled(const cf_ctx *ctx);

/* Chooses kernel families; returns the previous choice. */
cf_kernels cf_ctx_set_kernels(cf_ctx *ctx, cf_kernels kernels);
cf_kernels cf_ctx_kernels(const cf_ctx *ctx);

/* The sticky status of the step (CF_OK if nothing failed) and its message (borrowed). */
cf_status cf_ctx_status(const cf_ctx *ctx);
const char *cf_ctx_error(const cf_ctx *ctx);
/* Records a failure on the context (first one wins); returns status. For op kernels. */
cf_status cf_ctx_fail(cf_ctx *ctx, cf_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Arena figures: bytes in use now, the most in use since the context was made (or since
 * cf_ctx_reset_peak), and bytes reserved from the system. */
size_t cf_ctx_arena_used(const cf_ctx *ctx);
size_t cf_ctx_arena_peak(const cf_ctx *ctx);
size_t cf_ctx_arena_reserved(const cf_ctx *ctx);
void cf_ctx_reset_peak(cf_ctx *ctx);
/* Raises the recorded peak to at least `bytes` (memory of other contexts that was in use at
 * the same time as this one's, such as threads' contexts working for it). */
void cf_ctx_note_peak(cf_ctx *ctx, size_t bytes);
/* The most bytes the arena may reserve (0: no limit), and a new limit for later growth. */
size_t cf_ctx_arena_limit(const cf_ctx *ctx);
void cf_ctx_set_arena_limit(cf_ctx *ctx, size_t limit);
/* Number of nodes on the tape now. */
int cf_ctx_tape_size(const cf_ctx *ctx);

/* Allocates `bytes` (64-byte aligned, uninitialised) from the arena; NULL and a sticky
 * CF_ERR_ARENA that says what was needed and what was available when it does not fit. */
void *cf_ctx_alloc(cf_ctx *ctx, size_t bytes, const char *what);

/* A zero-filled arena tensor; NULL (sticky error) when the arena is exhausted. */
cf_tensor *cf_tensor_new(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape);
/* Shorthand for 1- to 4-D shapes: cf_tensor_new4(ctx, CF_F32, 2, (int64_t[]){B, 2}). */
#define cf_tensor_new_v(ctx, dtype, ...)                                                       \
    cf_tensor_new((ctx), (dtype), (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),   \
                  (int64_t[]){__VA_ARGS__})

/* ---- for passes that reuse memory (grad-free inverses on groups of images, threads) ----- */

/* A position in the arena: everything allocated after it is given back by cf_ctx_release_to,
 * for a grad-free pass that runs a piece of a graph many times. Nothing allocated after the
 * mark may be used after the release (so: no tape, no gradients in between). */
typedef struct cf_ctx_mark {
    void *block;
    size_t used, total;
} cf_ctx_mark;
cf_ctx_mark cf_ctx_get_mark(const cf_ctx *ctx);
void cf_ctx_release_to(cf_ctx *ctx, cf_ctx_mark mark);

/* An arena tensor header over memory the caller owns (data is borrowed: it must outlive every
 * use of the view; the view is not on the tape and takes no gradient). NULL (sticky error)
 * when the arena is exhausted. */
cf_tensor *cf_tensor_view(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape,
                          void *data);

/* Sends the gradients that backward on ctx would add into [from, from + bytes) (a parameter
 * set's flat gradient buffer, cf_params_grad) to the same offsets of `to` instead (to NULL: no
 * redirection): threads that each back-propagate part of a batch through one model add into
 * buffers of their own. `to` is borrowed until the redirection ends. */
void cf_ctx_redirect_grads(cf_ctx *ctx, void *from, void *to, size_t bytes);

/* Marks a leaf tensor (arena or heap, not an op output) as requiring a gradient and gives it
 * a zeroed gradient buffer (heap tensors: owned by the tensor; arena tensors: the arena).
 * Returns CF_OK or a failure status. */
cf_status cf_tensor_requires_grad(cf_ctx *ctx, cf_tensor *t);

/* ---- backward ----------------------------------------------------------------------- */

enum {
    CF_BACKWARD_RETAIN = 1u << 0, /* keep the tape for another backward (like retain_graph) */
    CF_BACKWARD_KEEP_GRADS = 1u << 1, /* keep every op output's gradient (like retain_grad) */
};

/* Reverse-mode pass from a scalar `loss` (numel 1): walks the tape backwards and accumulates
 * (+=) d(loss)/d(x) into ->grad of every tensor that requires it. Parameter gradients keep
 * accumulating across calls until zeroed (cf_params_zero_grad). Consumes the tape: a second
 * backward before cf_ctx_reset fails with CF_ERR_STATE. Returns the step's first failure.
 * The gradient of an op's output is dead once the op's own backward has run: its buffer is
 * recycled for the gradients still to come (so a backward needs the memory of a few
 * activations, not of all of them) and its ->grad becomes NULL, except for the roots and with
 * CF_BACKWARD_KEEP_GRADS (cf_backward_ex). Leaves (parameters, inputs) keep theirs. */
cf_status cf_backward(cf_ctx *ctx, cf_tensor *loss);

/* The same from any tensor with an explicit seed gradient of its shape (borrowed); seed NULL
 * means 1 and needs a scalar. */
cf_status cf_backward_ex(cf_ctx *ctx, cf_tensor *root, const cf_tensor *seed, unsigned flags);

/* The same from several roots at once, each with its seed (seeds NULL: all scalars, seed 1;
 * a NULL entry: that root is a scalar with seed 1). */
cf_status cf_backward_multi(cf_ctx *ctx, int n_roots, cf_tensor *const *roots,
                            const cf_tensor *const *seeds, unsigned flags);

#ifdef __cplusplus
}
#endif
#endif
