/* cf_tape.c: reverse-mode differentiation over the tape.
 *
 * The tape holds nodes in execution order, which is a topological order, so walking it
 * backwards visits every consumer of a tensor before its producer: by the time a node runs,
 * all the gradient of its outputs (fan-out included) has been accumulated. Nodes whose outputs
 * received no gradient are skipped. Each node's backward must produce a gradient for every
 * input that requires one; this file checks that, so op backwards are only their math.
 *
 * Not here: applying ops and recording nodes (cf_op.c).
 */
#include <stdio.h>
#include <string.h>

#include "cf_autodiff_impl.h"

static cf_backward_hook_fn backward_hook;
static void *backward_hook_user;

void cf_backward_set_hook(cf_backward_hook_fn fn, void *user)
{
    backward_hook = fn;
    backward_hook_user = user;
}

static void *zeroed_grad(cf_ctx *ctx, cf_tensor *t)
{
    size_t bytes = (size_t)t->numel * cf_dtype_size(t->dtype);
    void *g = cf__grad_alloc(ctx, bytes);
    if (g) memset(g, 0, bytes);
    return g;
}

/* Zeroes a gradient buffer marked unset for this pass and clears the mark. */
static void clear_unset(cf_tensor *t)
{
    if (!(t->flags & CF_TENSOR_GRAD_UNSET)) return;
    memset(t->grad, 0, (size_t)t->numel * cf_dtype_size(t->dtype));
    t->flags &= ~CF_TENSOR_GRAD_UNSET;
}

cf_status cf_backward(cf_ctx *ctx, cf_tensor *loss)
{
    return cf_backward_ex(ctx, loss, NULL, 0);
}

cf_status cf_backward_ex(cf_ctx *ctx, cf_tensor *root, const cf_tensor *seed, unsigned flags)
{
    return cf_backward_multi(ctx, 1, &root, seed ? &seed : NULL, flags);
}

/* Checks one root and its seed; returns the failure or CF_OK. */
static cf_status check_root(cf_ctx *ctx, const cf_tensor *root, const cf_tensor *seed)
{
    char a[96], b[96];
    if (!root) return cf_ctx_fail(ctx, CF_ERR_ARG, "cf_backward: the loss is NULL");
    if (!seed && root->numel != 1)
        return cf_ctx_fail(ctx, CF_ERR_SHAPE,
                           "cf_backward: the loss is %s, not a scalar; reduce it (cf_mean_all) "
                           "or pass a seed gradient of its shape to cf_backward_ex",
                           cf_tensor_describe(root, a, sizeof a));
    if (seed && (seed->numel != root->numel || seed->dtype != root->dtype))
        return cf_ctx_fail(ctx, CF_ERR_SHAPE, "cf_backward: seed %s does not match root %s",
                           cf_tensor_describe(seed, a, sizeof a),
                           cf_tensor_describe(root, b, sizeof b));
    if (!(root->flags & CF_TENSOR_REQUIRES_GRAD))
        return cf_ctx_fail(ctx, CF_ERR_STATE,
                           "cf_backward: the loss does not depend on anything that requires a "
                           "gradient (or it was computed with grad recording off)");
    if (root->node && root->node->index < ctx->consumed)
        return cf_ctx_fail(ctx, CF_ERR_STATE,
                           "cf_backward: the tape behind this loss was consumed by an earlier "
                           "backward; run the forward again after cf_ctx_reset, or pass "
                           "CF_BACKWARD_RETAIN to the first backward");
    return CF_OK;
}

cf_status cf_backward_multi(cf_ctx *ctx, int n_roots, cf_tensor *const *roots,
                            const cf_tensor *const *seeds, unsigned flags)
{
    CF_ASSERT(ctx != NULL, "cf_backward needs a context");
    if (ctx->status != CF_OK) return ctx->status;
    int end = 0;
    for (int r = 0; r < n_roots; r++) {
        cf_status st = check_root(ctx, roots[r], seeds ? seeds[r] : NULL);
        if (st != CF_OK) return st;
        if (roots[r]->node && roots[r]->node->index + 1 > end) end = roots[r]->node->index + 1;
    }
    char a[96];
    /* Activation gradients start from nothing on every pass (a retained tape keeps buffers):
     * marked unset, they are zeroed or overwritten by their first writer (cf_node_grad_in_ex). */
    for (int k = 0; k < end; k++) {
        cf_node *n = ctx->nodes[k];
        for (int o = 0; o < n->n_out; o++)
            if (n->out[o]->grad) n->out[o]->flags |= CF_TENSOR_GRAD_UNSET;
    }

    for (int r = 0; r < n_roots; r++) {
        cf_tensor *root = roots[r];
        const cf_tensor *seed = seeds ? seeds[r] : NULL;
        if (!root->grad && !(root->grad = zeroed_grad(ctx, root))) return ctx->status;
        clear_unset(root);
        if (root->dtype == CF_F32 && (!seed || seed->dtype == CF_F32)) {
            float *g = root->grad;
            const float *sv = seed ? seed->data : NULL;
            for (int64_t i = 0; i < root->numel; i++) g[i] += sv ? sv[i] : 1.0f;
            continue;
        }
        for (int64_t i = 0; i < root->numel; i++) {
            double s = seed ? cf_buf_get(seed->dtype, seed->data, i) : 1.0;
            cf_buf_set(root->dtype, root->grad, i, cf_buf_get(root->dtype, root->grad, i) + s);
        }
    }

    for (int k = end - 1; k >= 0; k--) {
        cf_node *n = ctx->nodes[k];
        bool any = false;
        for (int o = 0; o < n->n_out; o++)
            any |= n->out[o]->grad != NULL && !(n->out[o]->flags & CF_TENSOR_GRAD_UNSET);
        if (!any) continue;
        /* An output nothing consumed gets zeros: backward kernels read every output's gradient. */
        for (int o = 0; o < n->n_out; o++) {
            if (!n->out[o]->grad && !(n->out[o]->grad = zeroed_grad(ctx, n->out[o])))
                return ctx->status;
            clear_unset(n->out[o]);
        }
        n->grad_written = 0;
        n->grad_out_dead = 0;
        if (!(flags & CF_BACKWARD_KEEP_GRADS))
            for (int o = 0; o < n->n_out; o++) {
                bool root = false;
                for (int r = 0; r < n_roots; r++) root |= roots[r] == n->out[o];
                if (!root) n->grad_out_dead |= 1u << o;
            }
        cf_kernel_fn bwd = n->op->backward;
        bool fast_bwd = n->fast && n->op->fast[n->in[0]->dtype].backward;
        if (fast_bwd) bwd = n->op->fast[n->in[0]->dtype].backward;
        cf__op_count_run(n->op, true, fast_bwd);
        const cf__mark mark = cf__scratch_get_mark(ctx);
        cf_status st = bwd(n);
        if (st == CF_OK && backward_hook) backward_hook(n, backward_hook_user);
        cf__scratch_release(ctx, mark);
        if (st != CF_OK || ctx->status != CF_OK) {
            if (ctx->status == CF_OK) cf_ctx_fail(ctx, st, "op '%s': backward failed", n->op->name);
            return ctx->status;
        }
        for (int i = 0; i < n->n_in; i++) {
            cf_tensor *t = n->in[i];
            bool wanted = (t->flags & CF_TENSOR_REQUIRES_GRAD) && !(n->op->no_grad_inputs & (1u << i));
            if (wanted && !(n->grad_written & (1u << i)))
                return cf_ctx_fail(ctx, CF_ERR_STATE,
                                   "op '%s' (tape node %d): backward wrote no gradient for "
                                   "input %d %s, which requires one", n->op->name, k, i,
                                   cf_tensor_describe(t, a, sizeof a));
        }
        /* This node's output gradients are dead now (every consumer ran before it): their
         * buffers serve the gradients still to come. */
        for (int o = 0; o < n->n_out; o++) {
            cf_tensor *t = n->out[o];
            if (!t->grad || !(n->grad_out_dead & (1u << o))) continue;
            cf__grad_release(ctx, t->grad, (size_t)t->numel * cf_dtype_size(t->dtype));
            t->grad = NULL;
        }
    }
    /* Outputs the pass did not reach keep zeros, as after a pass without the marks. */
    for (int k = 0; k < end; k++)
        for (int o = 0; o < ctx->nodes[k]->n_out; o++) clear_unset(ctx->nodes[k]->out[o]);
    if (!(flags & CF_BACKWARD_RETAIN) && end > ctx->consumed) ctx->consumed = ctx->n_nodes;
    return CF_OK;
}
