/* cf_autodiff_impl.h: internal pieces shared by the files of autodiff/ (not installed). */
#ifndef CF_AUTODIFF_IMPL_H
#define CF_AUTODIFF_IMPL_H

#include "cf_op.h"

/* One block of the arena. Blocks are kept across resets, so a step that fitted once fits
 * again without touching the system allocator. */
typedef struct cf__block {
    struct cf__block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    /* data follows, 64-byte aligned */
} cf__block;

struct cf_ctx {
    cf__block *first, *cur;    /* blocks in allocation order; cur is being filled */
    /* Kernel scratch (cf_node_scratch): a second chain of blocks, given back when the kernel
     * returns, so every kernel call reuses the same (cache-warm) memory. */
    cf__block *scratch_first, *scratch_cur;
    size_t scratch_used;       /* scratch bytes handed out now (in `peak` with `used`) */
    size_t limit;              /* most bytes the arena may reserve; 0: no limit */
    size_t reserved;           /* bytes reserved from the system */
    size_t used;               /* bytes handed out since the last reset */
    size_t peak;               /* most bytes handed out between resets */
    cf_node **nodes;           /* the tape, in execution order (arena) */
    int n_nodes, cap_nodes;
    int consumed;              /* nodes [0, consumed) were consumed by a backward */
    bool grad_enabled;
    cf_kernels kernels;
    bool poison;               /* op outputs start as NaN (CF_POISON_OUTPUTS=1; tests) */
    cf_status status;          /* sticky: first failure of the step */
    char error[1024];
    /* Dead activation-gradient buffers (arena memory) for the next gradients of the same size;
     * emptied by reset. The array itself is on the heap and kept. */
    struct cf__spare {
        void *p;
        size_t bytes;
    } *spare;
    int n_spare, cap_spare;
    /* Gradients of tensors that live in [grad_from, grad_from + grad_bytes) (a parameter
     * set's flat gradient buffer) go to the same offset in grad_to instead: threads that each
     * back-propagate part of a batch through one model add into private buffers. */
    char *grad_from, *grad_to;
    size_t grad_bytes;
};

/* Sends the gradients of tensors whose ->grad lies in [from, from + bytes) to the same offset
 * in `to` (NULL: no redirection). The ctx's backward then writes nothing under `from`. */
void cf__ctx_redirect_grads(cf_ctx *ctx, void *from, void *to, size_t bytes);

/* An activation gradient of `bytes` (uninitialised): the most recently released spare buffer
 * of that size if there is one (still warm in cache), else fresh arena memory. */
void *cf__grad_alloc(cf_ctx *ctx, size_t bytes);
/* Gives a dead activation gradient back for reuse within this step. */
void cf__grad_release(cf_ctx *ctx, void *p, size_t bytes);

/* Kernel scratch: cf_node_scratch's memory. Kernels run between a mark and a release (nested
 * kernels nest), and everything allocated after the mark is free again at the release. */
typedef struct cf__mark {
    cf__block *block;
    size_t used, total;
} cf__mark;
void *cf__scratch_alloc(cf_ctx *ctx, size_t bytes, const char *what);
cf__mark cf__scratch_get_mark(const cf_ctx *ctx);
void cf__scratch_release(cf_ctx *ctx, cf__mark m);

/* The same for the arena itself, for grad-free passes that run a piece of a graph many times
 * (nothing allocated after the mark may be used after the release: no tape, no gradients). */
cf__mark cf__arena_get_mark(const cf_ctx *ctx);
void cf__arena_release(cf_ctx *ctx, cf__mark m);

/* An arena tensor whose data is not initialised (NaN-filled in poison mode): op outputs,
 * which their kernels overwrite entirely. */
cf_tensor *cf__tensor_new_uninit(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape);
/* An arena tensor header whose data the caller provides (data NULL, flag CF_TENSOR_VIEW): the
 * outputs an op declares borrowed. */
cf_tensor *cf__tensor_new_borrowed(cf_ctx *ctx, cf_dtype dtype, int ndim, const int64_t *shape);

/* Registers the built-in ops (defined in ops/cf_ops.c; called once by the registry). */
void cf__register_builtins(void);
/* cf_op_register's checks, for use while the registry initialises itself. */
cf_status cf__op_register_builtin(const cf_op_def *def);
/* Counts one kernel run of op (forward or backward, fast or reference): see cf_op_runs. */
void cf__op_count_run(const cf_op_def *op, bool backward, bool fast);

#endif
