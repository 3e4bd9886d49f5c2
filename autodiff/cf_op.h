/* cf_op.h: what an op is, the registry, and how an op is applied and recorded.
 *
 * An op is a definition (cf_op_def): a name, its arity, an attribute block copied into the
 * node, shape inference, a reference forward and backward (plain loops, every dtype; they are
 * the oracle) and optional fast kernels per dtype. Built-in ops are registered exactly as a
 * user's op is, through cf_op_register(); cf_op_find() looks one up by name.
 *
 * Applying an op (cf_op_apply) checks the inputs, infers the output shapes, allocates the
 * outputs in the context's arena (not initialised unless the op asks for zeros: the forward kernel must write every
 * element; with CF_POISON_OUTPUTS=1 in the environment they start as NaN, which the tests use
 * to catch a kernel that does not), runs the forward kernel and, when grad recording is on and
 * some input requires a gradient, appends one node to the tape. Kernels see that node
 * (cf_node): inputs, outputs, attributes, buffers saved for backward.
 *
 * Backward kernels read the output gradients (n->out[i]->grad, never NULL: an unused output
 * gets zeros) and add (+=) into the input gradients they get from cf_node_grad_in() (or write
 * them when cf_node_grad_in_ex() says they are the first writer), or hand a gradient tensor
 * of their own to cf_node_accumulate_grad(). The tape checks that each input
 * that requires a gradient got one, and of the right shape; an op's backward is only its math.
 *
 * Dimension legend in kernels: B batch, H, W spatial, C channels, N elements.
 */
#ifndef CF_OP_H
#define CF_OP_H

#include "cf_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CF_MAX_INPUTS 8
#define CF_MAX_OUTPUTS 8
#define CF_MAX_SAVED 8
#define CF_MAX_OPS 256
#define CF_OP_VARIADIC (-1) /* n_inputs: any count from 1 to CF_MAX_INPUTS */

typedef struct cf_op_def cf_op_def;

/* One application of an op: on the tape when recorded, on the stack otherwise. */
typedef struct cf_node {
    const cf_op_def *op;
    const void *attrs;               /* the op's attribute block (a copy when recorded) */
    cf_ctx *ctx;
    int n_in, n_out;
    cf_tensor *in[CF_MAX_INPUTS];
    cf_tensor *out[CF_MAX_OUTPUTS];
    void *saved[CF_MAX_SAVED];       /* buffers the forward kept for backward */
    bool recording;                  /* false: forward only, saved buffers are not needed */
    bool fast;                       /* forward ran the fast kernel; backward uses the same */
    unsigned grad_written;           /* bit i: the backward produced input i's gradient */
    unsigned grad_out_dead;          /* bit o: out[o]'s gradient is not needed after this
                                      * backward (not a root, gradients not kept), so the
                                      * backward may overwrite it (as scratch) */
    int index;                       /* position on the tape */
} cf_node;

/* Output shapes and dtypes an op's infer callback fills. */
typedef struct cf_shape {
    cf_dtype dtype;
    int ndim;
    int64_t shape[CF_MAX_DIMS];
} cf_shape;

/* infer: checks inputs and attributes and fills out[0..n_out). On bad shapes it returns a
 * failure from cf_ctx_fail() naming the op and the shapes. in[] are valid tensors of one
 * dtype (checked before). */
typedef cf_status (*cf_infer_fn)(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                                 cf_shape *out);
/* forward / backward kernels: see the header comment. Return CF_OK or a failure status
 * (set with cf_ctx_fail). */
typedef cf_status (*cf_kernel_fn)(cf_node *n);

typedef struct cf_kernel_pair {
    cf_kernel_fn forward;  /* NULL: no kernel of this family */
    cf_kernel_fn backward; /* NULL: falls back to the reference backward */
} cf_kernel_pair;

/* Describes test inputs for gradcheck and kernel comparisons: input shapes and the range each
 * input is drawn from (uniform in [lo, hi]), plus an attribute block. */
typedef struct cf_op_case {
    int n_in;
    int ndim[CF_MAX_INPUTS];
    int64_t shape[CF_MAX_INPUTS][CF_MAX_DIMS];
    double lo[CF_MAX_INPUTS], hi[CF_MAX_INPUTS];
    unsigned char attrs[256];
    const char *label; /* e.g. "per-channel bias" */
} cf_op_case;

struct cf_op_def {
    const char *name;          /* unique, lower_snake_case */
    int n_inputs;              /* or CF_OP_VARIADIC */
    int n_outputs;             /* 1 to CF_MAX_OUTPUTS, or CF_OP_VARIADIC with count_outputs */
    /* With n_outputs CF_OP_VARIADIC: how many outputs these attributes and inputs give. */
    int (*count_outputs)(const void *attrs, int n_in);
    size_t attrs_size;         /* bytes copied from the attrs pointer given at apply; 0: none */
    cf_infer_fn infer;         /* required */
    cf_kernel_fn forward;      /* required: reference, every dtype, plain loops */
    cf_kernel_fn backward;     /* required unless every input is in no_grad_inputs */
    cf_kernel_pair fast[CF_DTYPE_COUNT]; /* optional fast kernels, by dtype */
    unsigned no_grad_inputs;   /* bit i: input i takes no gradient (indices, masks) */
    bool zeroed_outputs;       /* outputs start as zeros (kernels that accumulate into them);
                                * otherwise they start uninitialised */
    unsigned borrowed_outputs; /* bit i: output i gets no arena storage; the forward kernels
                                * point its ->data at memory of their own that outlives every
                                * use of the output (it is marked CF_TENSOR_VIEW) */
    /* Optional: fills test case `index` for gradcheck; returns false past the last case.
     * Without it, gradcheck draws every input of one (2, 3, 4, 5) shape from [-2, 2]. */
    bool (*make_case)(int index, cf_op_case *c);
    const char *doc;           /* one line: what it computes */
};

/* ---- registry ------------------------------------------------------------------------ */

/* Registers an op; the definition is borrowed and must outlive the program (a static).
 * Refuses, with CF_ERR_ARG and a message naming the missing piece, a definition without a
 * name, infer, forward, or backward (for differentiable ops) or with a bad arity; CF_ERR_EXISTS
 * for a name already taken. Thread-safe. */
cf_status cf_op_register(const cf_op_def *def);
/* The registered op of that name, or NULL. */
const cf_op_def *cf_op_find(const char *name);
/* Registered ops in registration order (built-ins first). */
int cf_op_count(void);
const cf_op_def *cf_op_at(int i);

/* ---- which kernels ran ---------------------------------------------------------------- */

/* Kernel runs of one op, counted by cf_op_apply (forward) and cf_backward (backward) since the
 * program started or the last cf_op_runs_reset(). A forward counts as fast when the context
 * chose the op's fast kernel for the inputs' dtype; a backward counts as fast when that node's
 * fast backward ran (an op with a fast forward but no fast backward counts a fast forward and
 * a reference backward). Tests read it to prove that a fast-vs-reference comparison really
 * ran the fast kernels. */
typedef struct cf_op_runs {
    uint64_t forward_fast, forward_reference;
    uint64_t backward_fast, backward_reference;
} cf_op_runs;

/* The counts of a registered op (all zero for an op that is not registered). Counts are
 * updated atomically, so kernels on several threads are all counted. */
cf_op_runs cf_op_runs_of(const cf_op_def *op);
/* Sets every op's counts to zero. */
void cf_op_runs_reset(void);

/* For tests of the tests: fn(n, user) is called after every backward kernel, with the node
 * whose backward just ran (its input gradients written), so a test can put a known fault into
 * one element of one gradient and show that a check catches it. NULL (the default) removes
 * it. The hook is borrowed; set it only while no backward runs. */
typedef void (*cf_backward_hook_fn)(cf_node *n, void *user);
void cf_backward_set_hook(cf_backward_hook_fn fn, void *user);

/* ---- applying ------------------------------------------------------------------------ */

/* How many outputs an application of `op` with these attributes and inputs has. */
int cf_op_n_outputs(const cf_op_def *op, const void *attrs, int n_in);

/* Applies `op` to n_in inputs with an attribute block (op->attrs_size bytes, or NULL). Fills
 * out[0..cf_op_n_outputs()) with arena tensors. On failure every out[] is NULL and the status is
 * also the context's sticky status. NULL inputs (from an earlier failure) propagate it. */
cf_status cf_op_apply(cf_ctx *ctx, const cf_op_def *op, int n_in, cf_tensor *const *in,
                      const void *attrs, cf_tensor **out);
/* The same for single-output ops; returns the output or NULL. */
cf_tensor *cf_op_apply1(cf_ctx *ctx, const cf_op_def *op, int n_in, cf_tensor *const *in,
                        const void *attrs);

/* ---- inside kernels ------------------------------------------------------------------ */

/* Allocates `bytes` for the forward to keep for backward in saved[slot] (arena, uninitialised).
 * Works when not recording too (as scratch). NULL with a sticky CF_ERR_ARENA on exhaustion. */
void *cf_node_save(cf_node *n, int slot, size_t bytes);
/* Scratch memory for this kernel call (uninitialised, 64-byte aligned): it is given back when
 * the kernel returns and reused by the next kernel call, so it stays warm in cache; keep
 * nothing in it for later (cf_node_save is for that). Counted in the arena's figures. */
void *cf_node_scratch(cf_node *n, size_t bytes);

/* In backward: the gradient buffer of input i to add into (same dtype and numel as the
 * input), or NULL when input i requires no gradient. Marks input i's gradient as written. */
void *cf_node_grad_in(cf_node *n, int i);
/* The same, for kernels that can either add into the gradient or write it: *overwrite is set
 * when nothing has been accumulated into the buffer yet (this node is the input's first
 * consumer in the backward pass, and the input is not also another input of this node), and
 * then the kernel must WRITE every element (=), not add; its contents are undefined (NaN with
 * CF_POISON_OUTPUTS=1, so a kernel that skips elements shows). Otherwise it adds, as with
 * cf_node_grad_in. This saves zeroing the buffer and re-reading the zeros. */
void *cf_node_grad_in_ex(cf_node *n, int i, bool *overwrite);
/* In backward: adds a gradient tensor computed by the kernel into input i's gradient; fails
 * with CF_ERR_SHAPE naming the op and both shapes when g does not match input i. */
cf_status cf_node_accumulate_grad(cf_node *n, int i, const cf_tensor *g);

/* Attribute access with a type: CF_ATTRS(n, cf_scale_attrs)->factor. */
#define CF_ATTRS(n, type) ((const type *)(n)->attrs)

/* Convenience for infer callbacks: out = shape of t. */
void cf_shape_of(cf_shape *out, const cf_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
