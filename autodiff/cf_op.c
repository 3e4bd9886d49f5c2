/* cf_op.c: the op registry, applying an op (shape check, outputs, kernel, tape node) and the
 * helpers kernels use to save buffers and write gradients.
 *
 * Not here: backward's walk over the tape (cf_tape.c), the ops themselves (ops/).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_autodiff_impl.h"

/* ---- registry ------------------------------------------------------------------------ */

static const cf_op_def *registry[CF_MAX_OPS];
static int registry_count;
/* registry_count as lock-free readers see it: stored (release) after registry[i] is set. */
static atomic_int registry_published;

/* Kernel runs per registered op, by registry index (see cf_op_runs). */
enum { RUN_FWD_FAST, RUN_FWD_REF, RUN_BWD_FAST, RUN_BWD_REF, RUN_KINDS };
static atomic_uint_fast64_t op_runs[CF_MAX_OPS][RUN_KINDS];
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t builtins_once = PTHREAD_ONCE_INIT;

static cf_status register_locked(const cf_op_def *def)
{
    if (!def) return cf_set_error(CF_ERR_ARG, "cf_op_register: NULL definition");
    if (!def->name || !def->name[0])
        return cf_set_error(CF_ERR_ARG, "cf_op_register: the op has no name");
    const char *name = def->name;
    if (!def->infer)
        return cf_set_error(CF_ERR_ARG, "cf_op_register: op '%s' has no infer (shape "
                                        "inference) function", name);
    if (!def->forward)
        return cf_set_error(CF_ERR_ARG, "cf_op_register: op '%s' has no reference forward "
                                        "kernel", name);
    if (def->n_inputs != CF_OP_VARIADIC && (def->n_inputs < 1 || def->n_inputs > CF_MAX_INPUTS))
        return cf_set_error(CF_ERR_ARG, "cf_op_register: op '%s' has %d inputs (1 to %d, or "
                                        "CF_OP_VARIADIC)", name, def->n_inputs, CF_MAX_INPUTS);
    if (def->n_outputs == CF_OP_VARIADIC && !def->count_outputs)
        return cf_set_error(CF_ERR_ARG, "cf_op_register: op '%s' has a variable number of "
                                        "outputs but no count_outputs", name);
    if (def->n_outputs != CF_OP_VARIADIC && (def->n_outputs < 1 || def->n_outputs > CF_MAX_OUTPUTS))
        return cf_set_error(CF_ERR_ARG, "cf_op_register: op '%s' has %d outputs (1 to %d)",
                            name, def->n_outputs, CF_MAX_OUTPUTS);
    unsigned all = def->n_inputs == CF_OP_VARIADIC ? ~0u : (1u << def->n_inputs) - 1u;
    if (!def->backward && (def->no_grad_inputs & all) != all)
        return cf_set_error(CF_ERR_ARG, "cf_op_register: op '%s' has differentiable inputs "
                                        "but no reference backward kernel", name);
    if (def->attrs_size > sizeof(((cf_op_case *)0)->attrs))
        return cf_set_error(CF_ERR_ARG, "cf_op_register: op '%s' has a %zu-byte attribute "
                                        "block (at most %zu)", name, def->attrs_size,
                            sizeof(((cf_op_case *)0)->attrs));
    for (int i = 0; i < registry_count; i++)
        if (strcmp(registry[i]->name, name) == 0)
            return cf_set_error(CF_ERR_EXISTS, "cf_op_register: an op named '%s' is already "
                                               "registered", name);
    if (registry_count == CF_MAX_OPS)
        return cf_set_error(CF_ERR_NOMEM, "cf_op_register: the registry is full (%d ops)",
                            CF_MAX_OPS);
    registry[registry_count++] = def;
    atomic_store_explicit(&registry_published, registry_count, memory_order_release);
    return CF_OK;
}

static void init_builtins(void)
{
    /* The built-in op table lives in ops/ (one library); each registers like a user op. */
    cf__register_builtins();
}

cf_status cf__op_register_builtin(const cf_op_def *def)
{
    pthread_mutex_lock(&registry_lock);
    cf_status st = register_locked(def);
    pthread_mutex_unlock(&registry_lock);
    return st;
}

cf_status cf_op_register(const cf_op_def *def)
{
    pthread_once(&builtins_once, init_builtins);
    pthread_mutex_lock(&registry_lock);
    cf_status st = register_locked(def);
    pthread_mutex_unlock(&registry_lock);
    return st;
}

const cf_op_def *cf_op_find(const char *name)
{
    pthread_once(&builtins_once, init_builtins);
    const cf_op_def *found = NULL;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < registry_count && !found; i++)
        if (strcmp(registry[i]->name, name) == 0) found = registry[i];
    pthread_mutex_unlock(&registry_lock);
    return found;
}

int cf_op_count(void)
{
    pthread_once(&builtins_once, init_builtins);
    pthread_mutex_lock(&registry_lock);
    int n = registry_count;
    pthread_mutex_unlock(&registry_lock);
    return n;
}

const cf_op_def *cf_op_at(int i)
{
    pthread_once(&builtins_once, init_builtins);
    pthread_mutex_lock(&registry_lock);
    const cf_op_def *def = (i >= 0 && i < registry_count) ? registry[i] : NULL;
    pthread_mutex_unlock(&registry_lock);
    return def;
}

/* ---- which kernels ran ---------------------------------------------------------------- */

static int registry_index(const cf_op_def *op)
{
    int n = atomic_load_explicit(&registry_published, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (registry[i] == op) return i;
    return -1;
}

void cf__op_count_run(const cf_op_def *op, bool backward, bool fast)
{
    int i = registry_index(op);
    if (i < 0) return;
    int kind = backward ? (fast ? RUN_BWD_FAST : RUN_BWD_REF) : (fast ? RUN_FWD_FAST : RUN_FWD_REF);
    atomic_fetch_add_explicit(&op_runs[i][kind], 1, memory_order_relaxed);
}

cf_op_runs cf_op_runs_of(const cf_op_def *op)
{
    cf_op_runs r = {0};
    int i = op ? registry_index(op) : -1;
    if (i < 0) return r;
    r.forward_fast = atomic_load_explicit(&op_runs[i][RUN_FWD_FAST], memory_order_relaxed);
    r.forward_reference = atomic_load_explicit(&op_runs[i][RUN_FWD_REF], memory_order_relaxed);
    r.backward_fast = atomic_load_explicit(&op_runs[i][RUN_BWD_FAST], memory_order_relaxed);
    r.backward_reference = atomic_load_explicit(&op_runs[i][RUN_BWD_REF], memory_order_relaxed);
    return r;
}

void cf_op_runs_reset(void)
{
    for (int i = 0; i < CF_MAX_OPS; i++)
        for (int k = 0; k < RUN_KINDS; k++)
            atomic_store_explicit(&op_runs[i][k], 0, memory_order_relaxed);
}

/* ---- applying ------------------------------------------------------------------------ */

int cf_op_n_outputs(const cf_op_def *op, const void *attrs, int n_in)
{
    int n = op->n_outputs == CF_OP_VARIADIC ? op->count_outputs(attrs, n_in) : op->n_outputs;
    CF_ASSERT(n >= 1 && n <= CF_MAX_OUTPUTS, "op '%s' would have %d outputs (1 to %d)",
              op->name, n, CF_MAX_OUTPUTS);
    return n;
}

void cf_shape_of(cf_shape *out, const cf_tensor *t)
{
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    for (int d = 0; d < CF_MAX_DIMS; d++) out->shape[d] = d < t->ndim ? t->shape[d] : 1;
}

static bool push_node(cf_ctx *ctx, cf_node *node)
{
    if (ctx->n_nodes == ctx->cap_nodes) {
        /* The tape's index grows on the heap and is kept across resets (no malloc once warm). */
        int cap = ctx->cap_nodes ? 2 * ctx->cap_nodes : 256;
        cf_node **nodes = realloc(ctx->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes) {
            cf_ctx_fail(ctx, CF_ERR_NOMEM, "out of memory growing the tape to %d nodes", cap);
            return false;
        }
        ctx->nodes = nodes;
        ctx->cap_nodes = cap;
    }
    node->index = ctx->n_nodes;
    ctx->nodes[ctx->n_nodes++] = node;
    return true;
}

cf_status cf_op_apply(cf_ctx *ctx, const cf_op_def *op, int n_in, cf_tensor *const *in,
                      const void *attrs, cf_tensor **out)
{
    CF_ASSERT(ctx && op && out, "cf_op_apply needs a context, an op and an output array");
    CF_ASSERT(op->attrs_size == 0 || attrs, "op '%s' needs its attribute block", op->name);
    const int n_out = cf_op_n_outputs(op, attrs, n_in);
    for (int i = 0; i < n_out; i++) out[i] = NULL;
    if (ctx->status != CF_OK) return ctx->status;
    if (op->n_inputs == CF_OP_VARIADIC)
        CF_ASSERT(n_in >= 1 && n_in <= CF_MAX_INPUTS, "op '%s' takes 1 to %d inputs, got %d",
                  op->name, CF_MAX_INPUTS, n_in);
    else
        CF_ASSERT(n_in == op->n_inputs, "op '%s' takes %d inputs, got %d", op->name,
                  op->n_inputs, n_in);

    bool needs_grad = false;
    for (int i = 0; i < n_in; i++) {
        /* A NULL input means an earlier op failed; that failure is already sticky. */
        if (!in[i]) return cf_ctx_fail(ctx, CF_ERR_ARG, "op '%s': input %d is NULL", op->name, i);
        if (in[i]->dtype != in[0]->dtype) {
            char a[96], b[96];
            return cf_ctx_fail(ctx, CF_ERR_DTYPE, "op '%s': input 0 is %s but input %d is %s",
                               op->name, cf_tensor_describe(in[0], a, sizeof a), i,
                               cf_tensor_describe(in[i], b, sizeof b));
        }
        if ((in[i]->flags & CF_TENSOR_REQUIRES_GRAD) && !(op->no_grad_inputs & (1u << i)))
            needs_grad = true;
    }

    cf_shape shapes[CF_MAX_OUTPUTS];
    memset(shapes, 0, sizeof shapes);
    for (int i = 0; i < n_out; i++) shapes[i].dtype = in[0]->dtype;
    cf_status st = op->infer(ctx, attrs, n_in, in, shapes);
    if (st != CF_OK) {
        if (ctx->status == CF_OK)
            cf_ctx_fail(ctx, st, "op '%s': its shape inference refused the inputs", op->name);
        return ctx->status;
    }

    bool recording = ctx->grad_enabled && needs_grad;
    cf_node local = {0};
    cf_node *node = &local;
    if (recording) {
        node = cf_ctx_alloc(ctx, sizeof *node, "a tape node");
        if (!node) return ctx->status;
        memset(node, 0, sizeof *node);
        if (op->attrs_size) {
            void *copy = cf_ctx_alloc(ctx, op->attrs_size, "op attributes");
            if (!copy) return ctx->status;
            memcpy(copy, attrs, op->attrs_size);
            attrs = copy;
        }
    }
    node->op = op;
    node->attrs = attrs;
    node->ctx = ctx;
    node->n_in = n_in;
    node->n_out = n_out;
    node->recording = recording;
    for (int i = 0; i < n_in; i++) node->in[i] = in[i];
    for (int i = 0; i < n_out; i++) {
        node->out[i] = op->borrowed_outputs & (1u << i)
                           ? cf__tensor_new_borrowed(ctx, shapes[i].dtype, shapes[i].ndim,
                                                     shapes[i].shape)
                       : op->zeroed_outputs
                           ? cf_tensor_new(ctx, shapes[i].dtype, shapes[i].ndim, shapes[i].shape)
                           : cf__tensor_new_uninit(ctx, shapes[i].dtype, shapes[i].ndim,
                                                   shapes[i].shape);
        if (!node->out[i]) return ctx->status;
    }

    cf_dtype dt = in[0]->dtype;
    cf_kernel_fn fwd = op->forward;
    if (ctx->kernels == CF_KERNELS_FAST && op->fast[dt].forward) {
        fwd = op->fast[dt].forward;
        node->fast = true;
    }
    cf__op_count_run(op, false, node->fast);
    const cf__mark mark = cf__scratch_get_mark(ctx);
    st = fwd(node);
    cf__scratch_release(ctx, mark);
    if (st != CF_OK || ctx->status != CF_OK) {
        if (ctx->status == CF_OK) cf_ctx_fail(ctx, st, "op '%s': forward failed", op->name);
        return ctx->status;
    }
    for (int i = 0; i < n_out; i++)
        CF_ASSERT(node->out[i]->data || node->out[i]->numel == 0,
                  "op '%s': its forward gave borrowed output %d no memory", op->name, i);
    if (recording) {
        if (!push_node(ctx, node)) return ctx->status;
        for (int i = 0; i < n_out; i++) {
            node->out[i]->node = node;
            node->out[i]->flags |= CF_TENSOR_REQUIRES_GRAD;
        }
    }
    for (int i = 0; i < n_out; i++) out[i] = node->out[i];
    return CF_OK;
}

cf_tensor *cf_op_apply1(cf_ctx *ctx, const cf_op_def *op, int n_in, cf_tensor *const *in,
                        const void *attrs)
{
    cf_tensor *out[CF_MAX_OUTPUTS];
    CF_ASSERT(op->n_outputs == 1, "cf_op_apply1 on op '%s' with %d outputs", op->name,
              op->n_outputs);
    return cf_op_apply(ctx, op, n_in, in, attrs, out) == CF_OK ? out[0] : NULL;
}

/* ---- inside kernels ------------------------------------------------------------------ */

void *cf_node_save(cf_node *n, int slot, size_t bytes)
{
    CF_ASSERT(slot >= 0 && slot < CF_MAX_SAVED, "saved slot %d of op '%s'", slot, n->op->name);
    void *p = cf_ctx_alloc(n->ctx, bytes, n->op->name);
    n->saved[slot] = p;
    return p;
}

void *cf_node_scratch(cf_node *n, size_t bytes)
{
    return cf__scratch_alloc(n->ctx, bytes, n->op->name);
}

/* Input i's gradient buffer, allocated on first use; *fresh says its contents are undefined
 * (newly allocated, or not yet written in this backward pass). */
static void *grad_buffer(cf_node *n, int i, bool *fresh)
{
    CF_ASSERT(i >= 0 && i < n->n_in, "op '%s' has no input %d", n->op->name, i);
    cf_tensor *t = n->in[i];
    *fresh = false;
    if (!(t->flags & CF_TENSOR_REQUIRES_GRAD) || (n->op->no_grad_inputs & (1u << i)))
        return NULL;
    n->grad_written |= 1u << i;
    if (!t->grad) {
        size_t bytes = (size_t)t->numel * cf_dtype_size(t->dtype);
        t->grad = cf__grad_alloc(n->ctx, bytes);
        if (!t->grad) return NULL;
        *fresh = true;
    } else if (t->flags & CF_TENSOR_GRAD_UNSET) {
        *fresh = true;
    }
    /* Written only when set: a parameter is shared by threads that each run their own tape. */
    if (t->flags & CF_TENSOR_GRAD_UNSET) t->flags &= ~CF_TENSOR_GRAD_UNSET;
    const cf_ctx *ctx = n->ctx;
    if (ctx->grad_to && (char *)t->grad >= ctx->grad_from &&
        (char *)t->grad < ctx->grad_from + ctx->grad_bytes)
        return ctx->grad_to + ((char *)t->grad - ctx->grad_from);
    return t->grad;
}

void *cf_node_grad_in(cf_node *n, int i)
{
    bool fresh;
    void *g = grad_buffer(n, i, &fresh);
    if (g && fresh) memset(g, 0, (size_t)n->in[i]->numel * cf_dtype_size(n->in[i]->dtype));
    return g;
}

void *cf_node_grad_in_ex(cf_node *n, int i, bool *overwrite)
{
    CF_ASSERT(overwrite != NULL, "cf_node_grad_in_ex: overwrite is NULL");
    bool fresh;
    void *g = grad_buffer(n, i, &fresh);
    *overwrite = false;
    if (!g || !fresh) return g;
    const cf_tensor *t = n->in[i];
    const size_t bytes = (size_t)t->numel * cf_dtype_size(t->dtype);
    bool aliased = false; /* op(x, x): the other operand's gradient adds into the same buffer */
    for (int j = 0; j < n->n_in; j++) aliased |= j != i && n->in[j] == t;
    if (aliased) {
        memset(g, 0, bytes);
    } else {
        *overwrite = true;
        if (n->ctx->poison)
            for (int64_t k = 0; k < t->numel; k++) cf_buf_set(t->dtype, g, k, NAN);
    }
    return g;
}

cf_status cf_node_accumulate_grad(cf_node *n, int i, const cf_tensor *g)
{
    CF_ASSERT(i >= 0 && i < n->n_in, "op '%s' has no input %d", n->op->name, i);
    CF_ASSERT(g != NULL, "op '%s': NULL gradient for input %d", n->op->name, i);
    cf_tensor *t = n->in[i];
    if (!cf_tensor_same_shape(g, t)) {
        char a[96], b[96];
        return cf_ctx_fail(n->ctx, CF_ERR_SHAPE,
                           "op '%s': backward gave input %d a gradient of shape %s, but the "
                           "input is %s", n->op->name, i, cf_tensor_describe(g, a, sizeof a),
                           cf_tensor_describe(t, b, sizeof b));
    }
    void *dst = cf_node_grad_in(n, i);
    if (!dst) return n->ctx->status;
    for (int64_t k = 0; k < t->numel; k++)
        cf_buf_set(t->dtype, dst, k,
                   cf_buf_get(t->dtype, dst, k) + cf_buf_get(g->dtype, g->data, k));
    return CF_OK;
}
