/* flow_run.c: running a flow's layers: forward on the tape (optionally as recomputed
 * segments that keep one activation per step, or none), the objective (log-likelihood,
 * bits/dim), and grad-free passes one layer at a time (encoding, decoding, sampling).
 *
 * Not here: the container and the builder (flow.c), the training step (flow_train.c).
 */
#include "cf_flow_impl.h"

/* ---- memory that does not grow with depth ----------------------------------------------
 * A run of layers (a flow step) becomes one node on the tape: its forward runs with grad
 * recording off in the flow's segment context, and only the outputs (x and the run's
 * log-det) go to the tape; its backward replays the run with recording on in the segment
 * context, from a copy of the saved input, and back-propagates the output gradients through
 * that private tape. Parameter gradients land directly in the flat gradient buffer; the
 * input's gradient is handed to the outer tape. The op's second input is one parameter of the
 * run, so the node is recorded even when x needs no gradient (the first step's input). */
typedef struct segment_attrs {
    cf_flow *flow;
    int first, count; /* layers [first, first + count) */
    int slot;         /* rebuild: the slot its output x goes to (0 or 1), or -1: the arena */
    bool rebuild;     /* its input is a slot: rebuilt from the output before the replay */
} segment_attrs;

/* Runs the segment's layers on io in ctx (forward). */
static cf_status segment_forward(const segment_attrs *a, cf_ctx *ctx, cf_flow_io *io)
{
    for (int k = a->first; k < a->first + a->count; k++)
        if (cf_layer_forward(a->flow->layers[k], ctx, io) != CF_OK) return cf_ctx_status(ctx);
    return CF_OK;
}

static cf_status segment_infer(cf_ctx *ctx, const void *attrs, int n_in, cf_tensor *const *in,
                               cf_shape *out)
{
    (void)ctx, (void)n_in;
    const segment_attrs *a = attrs;
    const cf_layer *last = a->flow->layers[a->first + a->count - 1];
    out[0].ndim = 4;
    out[0].shape[0] = in[0]->shape[0];
    for (int d = 0; d < 3; d++) out[0].shape[1 + d] = last->out_shape[d];
    out[1].ndim = 1;
    out[1].shape[0] = in[0]->shape[0];
    return CF_OK;
}

/* The flow's segment context, emptied, recording or not, with the caller's kernels. */
static cf_ctx *segment_ctx(const cf_node *n, bool grad)
{
    cf_ctx *s = ((const segment_attrs *)n->attrs)->flow->segment;
    cf_ctx_reset(s);
    cf_ctx_set_grad(s, grad);
    cf_ctx_set_kernels(s, cf_ctx_kernels(n->ctx));
    return s;
}

static cf_status segment_fwd(cf_node *n)
{
    const segment_attrs *a = n->attrs;
    cf_ctx *s = segment_ctx(n, false);
    cf_flow_io io = {.x = n->in[0], .batch = n->in[0]->shape[0]};
    cf_status st = segment_forward(a, s, &io);
    if (st == CF_OK && a->slot >= 0) /* the borrowed output: its slot (sized by run_segment) */
        n->out[0]->data = a->flow->slot[a->slot];
    if (st == CF_OK) {
        cf_tensor_copy(n->out[0], io.x);
        if (io.logdet)
            cf_tensor_copy(n->out[1], io.logdet);
        else
            cf_tensor_fill(n->out[1], 0.0);
    } else {
        cf_ctx_fail(n->ctx, st, "%s", cf_ctx_error(s));
    }
    cf_ctx_reset(s);
    return st;
}

/* x = the segment's layers inverted on its output y, written into the input's slot. The
 * output is right at this point: the last step of a chain keeps its output in the arena, and
 * each step's backward rebuilds its input, which is the output of the step before it. */
static cf_status rebuild_input(cf_node *n)
{
    const segment_attrs *a = n->attrs;
    cf_ctx *s = segment_ctx(n, false);
    cf_tensor *y = cf_tensor_new(s, n->out[0]->dtype, n->out[0]->ndim, n->out[0]->shape);
    if (!y) return cf_ctx_fail(n->ctx, cf_ctx_status(s), "%s", cf_ctx_error(s));
    cf_tensor_copy(y, n->out[0]);
    cf_flow_io io = {.x = y, .batch = y->shape[0]};
    for (int k = a->first + a->count - 1; k >= a->first; k--)
        if (cf_layer_inverse(a->flow->layers[k], s, &io) != CF_OK)
            return cf_ctx_fail(n->ctx, cf_ctx_status(s), "rebuilding a step's input: %s",
                               cf_ctx_error(s));
    cf_tensor_copy(n->in[0], io.x);
    return CF_OK;
}

static cf_status segment_bwd(cf_node *n)
{
    const segment_attrs *a = n->attrs;
    if (a->rebuild && rebuild_input(n) != CF_OK) return cf_ctx_status(n->ctx);
    cf_ctx *s = segment_ctx(n, true);
    cf_tensor *x = cf_tensor_new(s, n->in[0]->dtype, n->in[0]->ndim, n->in[0]->shape);
    if (!x) return cf_ctx_fail(n->ctx, cf_ctx_status(s), "%s", cf_ctx_error(s));
    cf_tensor_copy(x, n->in[0]);
    void *dx = cf_node_grad_in(n, 0);
    cf_node_grad_in(n, 1); /* the parameters' gradients are accumulated by the replay */
    if (dx) cf_tensor_requires_grad(s, x);
    cf_flow_io io = {.x = x, .batch = x->shape[0]};
    cf_status st = segment_forward(a, s, &io);
    cf_tensor *roots[2] = {io.x, io.logdet};
    const cf_tensor *seeds[2];
    cf_tensor g0 = *n->out[0], g1 = *n->out[1];
    g0.data = n->out[0]->grad, g1.data = n->out[1]->grad;
    seeds[0] = &g0, seeds[1] = &g1;
    if (st == CF_OK) st = cf_backward_multi(s, io.logdet ? 2 : 1, roots, seeds, 0);
    if (st == CF_OK && dx) {
        cf_tensor d = *n->in[0];
        d.data = dx;
        for (int64_t i = 0; i < d.numel; i++)
            cf_tensor_set(&d, i, cf_tensor_get(&d, i) + cf_buf_get(x->dtype, x->grad, i));
    }
    if (st != CF_OK) cf_ctx_fail(n->ctx, st, "%s", cf_ctx_error(s));
    cf_ctx_reset(s);
    return st;
}

static const cf_op_def segment_op = {
    .name = "flow_segment",
    .n_inputs = 2,
    .n_outputs = 2,
    .attrs_size = sizeof(segment_attrs),
    .infer = segment_infer,
    .forward = segment_fwd,
    .backward = segment_bwd,
    .doc = "a run of flow layers, recomputed during backward",
};

/* The same whose output x lives in one of the flow's two slots, not on the tape. */
static const cf_op_def segment_op_slot = {
    .name = "flow_segment_slot",
    .n_inputs = 2,
    .n_outputs = 2,
    .attrs_size = sizeof(segment_attrs),
    .infer = segment_infer,
    .forward = segment_fwd,
    .backward = segment_bwd,
    .borrowed_outputs = 1u << 0,
    .doc = "a run of flow layers, recomputed during backward, its output in a reused buffer",
};

/* The first layer of a recomputed run starting at k, and how many layers it takes (0: layer
 * k is not recomputed: it changes the shape or factors out). */
static int segment_length(const cf_flow *f, int k)
{
    int count = 0;
    while (k + count < f->n_layers && count < 3 && !f->layers[k + count]->factors_out &&
           memcmp(f->layers[k + count]->in_shape, f->layers[k + count]->out_shape,
                  sizeof f->layers[k]->in_shape) == 0)
        count++;
    return count;
}

/* The run's first parameter (the recomputed node's second input), or NULL: nothing to learn. */
static cf_tensor *segment_anchor(const cf_flow *f, int first, int count)
{
    for (int k = first; k < first + count; k++)
        if (f->layers[k]->n_params) return f->layers[k]->params[0];
    return NULL;
}

/* Applies layers [first, first + count) as one recomputed node; slot >= 0 puts its output x
 * in that slot instead of the arena, rebuild says its input is a slot. */
static cf_status run_segment(cf_flow *f, cf_ctx *ctx, cf_flow_io *io, int first, int count,
                             int slot, bool rebuild)
{
    if (!f->segment && !(f->segment = cf_ctx_new(0)))
        return cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: %s", cf_last_error());
    cf_tensor *anchor = segment_anchor(f, first, count);
    segment_attrs a = {f, first, count, slot, rebuild};
    if (!anchor) /* nothing to learn: run the layers on the tape as they are */
        return segment_forward(&a, ctx, io);
    CF_ASSERT(slot < 0 || (size_t)io->x->numel * cf_dtype_size(io->x->dtype) <= f->slot_bytes,
              "flow: a step's output does not fit its slot");
    cf_tensor *in[2] = {io->x, anchor}, *out[2];
    if (cf_op_apply(ctx, slot >= 0 ? &segment_op_slot : &segment_op, 2, in, &a, out) != CF_OK)
        return cf_ctx_status(ctx);
    io->x = out[0];
    return cf_flow_io_add_logdet(ctx, io, out[1]);
}

void cf_flow_set_rebuild_inputs(cf_flow *flow, bool on)
{
    flow->rebuild = on;
}

void cf_flow_set_recompute(cf_flow *flow, bool on)
{
    flow->recompute = on;
}

bool cf_flow_recompute(const cf_flow *flow)
{
    return flow->recompute;
}

static cf_tensor *keep(cf_ctx *ctx, const cf_tensor *t)
{
    if (!t) return NULL;
    cf_tensor *c = cf_tensor_new(ctx, t->dtype, t->ndim, t->shape);
    if (c) cf_tensor_copy(c, t);
    return c;
}

/* x copied into the flow's pass buffer i (grown as needed), as a tensor header in ctx over it:
 * what a grad-free pass hands from one layer to the next, in memory that does not grow with
 * the number of layers. NULL with a failure in ctx when memory runs out. */
static cf_tensor *keep_pass(cf_flow *f, cf_ctx *ctx, const cf_tensor *x, int i)
{
    if (!x) return NULL;
    size_t bytes = (size_t)x->numel * cf_dtype_size(x->dtype);
    if (bytes > f->pass_bytes[i]) {
        free(f->pass[i]);
        f->pass_bytes[i] = 0;
        if (posix_memalign(&f->pass[i], 64, bytes ? bytes : 64) != 0) {
            f->pass[i] = NULL;
            cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: no memory to pass %zu bytes between layers",
                        bytes);
            return NULL;
        }
        f->pass_bytes[i] = bytes;
    }
    cf_tensor *t = cf_ctx_alloc(ctx, sizeof *t, "a tensor header");
    if (!t) return NULL;
    *t = *x;
    t->data = f->pass[i];
    t->grad = NULL;
    t->name = NULL;
    t->node = NULL;
    t->flags = CF_TENSOR_VIEW;
    memcpy(t->data, x->data, bytes);
    return t;
}

/* Runs every layer, forward or inverse. With grad recording on (training), all in ctx, on the
 * tape. With it off (evaluation, encoding, sampling), each layer runs in the flow's scratch
 * context and only what passes on is kept before the scratch is reset: x in one of two
 * buffers of the flow (alternating), the running sums and the latents in ctx. Memory stays
 * that of one layer, whatever the depth and batch. */
static cf_status run_layers(cf_flow *f, cf_ctx *ctx, cf_flow_io *io, bool inverse)
{
    if (cf_ctx_grad_enabled(ctx) && f->recompute && !inverse) {
        /* With rebuild, a recomputed step whose output feeds another recomputed step puts it
         * in a slot (alternating), and that next step rebuilds it during backward. */
        bool prev_slot = false;
        int slot = 0;
        if (f->rebuild) { /* slots for the largest activation, before any node points at them */
            size_t bytes = 0;
            for (int k = 0; k < f->n_layers; k++) {
                const int64_t *sh = f->layers[k]->in_shape;
                size_t b = (size_t)(io->x->shape[0] * sh[0] * sh[1] * sh[2]) *
                           cf_dtype_size(io->x->dtype);
                if (b > bytes) bytes = b;
            }
            if (bytes > f->slot_bytes) {
                for (int i = 0; i < 2; i++) {
                    free(f->slot[i]);
                    if (posix_memalign(&f->slot[i], 64, bytes) != 0) f->slot[i] = NULL;
                }
                f->slot_bytes = f->slot[0] && f->slot[1] ? bytes : 0;
                if (!f->slot_bytes)
                    return cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: no memory for two step "
                                       "outputs (%zu bytes each)", bytes);
            }
        }
        for (int k = 0; k < f->n_layers;) {
            int count = segment_length(f, k);
            cf_status st;
            if (count) {
                int next = segment_length(f, k + count);
                bool to_slot = f->rebuild && next && segment_anchor(f, k, count) &&
                               segment_anchor(f, k + count, next);
                st = run_segment(f, ctx, io, k, count, to_slot ? slot : -1,
                                 f->rebuild && prev_slot);
                prev_slot = to_slot;
                if (to_slot) slot ^= 1;
            } else {
                st = cf_layer_forward(f->layers[k], ctx, io);
                prev_slot = false;
            }
            if (st != CF_OK) return cf_ctx_status(ctx);
            k += count ? count : 1;
        }
        return CF_OK;
    }
    if (cf_ctx_grad_enabled(ctx)) {
        for (int k = 0; k < f->n_layers; k++) {
            cf_layer *l = f->layers[inverse ? f->n_layers - 1 - k : k];
            if ((inverse ? cf_layer_inverse(l, ctx, io) : cf_layer_forward(l, ctx, io)) != CF_OK)
                return cf_ctx_status(ctx);
        }
        return CF_OK;
    }
    if (!f->scratch && !(f->scratch = cf_ctx_new(0)))
        return cf_ctx_fail(ctx, CF_ERR_NOMEM, "flow: %s", cf_last_error());
    cf_ctx *s = f->scratch;
    cf_ctx_set_grad(s, false);
    cf_ctx_set_kernels(s, cf_ctx_kernels(ctx));
    for (int k = 0; k < f->n_layers; k++) {
        cf_layer *l = f->layers[inverse ? f->n_layers - 1 - k : k];
        cf_ctx_reset(s);
        int before = io->n_latents;
        cf_status st = inverse ? cf_layer_inverse(l, s, io) : cf_layer_forward(l, s, io);
        if (st != CF_OK) {
            cf_ctx_fail(ctx, st, "%s", cf_ctx_error(s));
            cf_ctx_reset(s);
            return st;
        }
        io->x = keep_pass(f, ctx, io->x, k % 2);
        io->logdet = keep(ctx, io->logdet);
        io->logp = keep(ctx, io->logp);
        for (int i = before; i < io->n_latents; i++) io->latents[i] = keep(ctx, io->latents[i]);
        if (cf_ctx_status(ctx) != CF_OK) break;
    }
    cf_ctx_reset(s);
    io->x = keep(ctx, io->x); /* the caller's, in its context */
    return cf_ctx_status(ctx);
}

/* A flow has a density (and can be sampled) when its last layer factors the whole tensor out. */
static bool has_prior(cf_flow *f, cf_ctx *ctx)
{
    const cf_layer *last = f->n_layers ? f->layers[f->n_layers - 1] : NULL;
    if (last && last->terminal) return true;
    cf_ctx_fail(ctx, CF_ERR_STATE, "flow: its last layer%s%s%s does not factor the whole tensor "
                "out, so the flow has no density to evaluate or sample: end it with a prior",
                last ? " ('" : "", last ? last->name : "", last ? "')" : "");
    return false;
}

static bool check_input(cf_flow *f, cf_ctx *ctx, const cf_tensor *x)
{
    if (!x || !has_prior(f, ctx)) return false;
    if (x->ndim != 4 || x->shape[1] != f->shape[0] || x->shape[2] != f->shape[1] ||
        x->shape[3] != f->shape[2] || x->dtype != cf_params_dtype(f->ps)) {
        char d[96];
        cf_ctx_fail(ctx, CF_ERR_SHAPE, "flow: input %s, expected (B, %lld, %lld, %lld) %s",
                    cf_tensor_describe(x, d, sizeof d), (long long)f->shape[0],
                    (long long)f->shape[1], (long long)f->shape[2],
                    cf_dtype_name(cf_params_dtype(f->ps)));
        return false;
    }
    return true;
}

void cf_flow_set_reducer(cf_flow *f, cf_reduce_fn fn, void *user)
{
    f->reducer = (cf__reducer){fn, user};
}

cf_tensor *cf_flow_log_prob(cf_flow *f, cf_ctx *ctx, cf_tensor *x, cf_flow_io *io_out)
{
    cf_flow_io local = {0}, *io = io_out ? io_out : &local;
    memset(io, 0, sizeof *io);
    if (!check_input(f, ctx, x)) return NULL;
    io->x = x;
    io->batch = x->shape[0];
    cf__reducer outer = cf__set_reducer(f->reducer);
    cf_status st = run_layers(f, ctx, io, false);
    cf__set_reducer(outer);
    if (st != CF_OK) return NULL;
    if (!io->logdet) return io->logp;
    if (!io->logp) return io->logdet;
    return cf_add(ctx, io->logp, io->logdet);
}

cf_tensor *cf_flow_bpd_per_image(cf_flow *f, cf_ctx *ctx, cf_tensor *logp)
{
    if (!logp) return NULL;
    double D = (double)(f->shape[0] * f->shape[1] * f->shape[2]);
    /* -(log p - D log 256) / (D ln 2) = -log p / (D ln 2) + 8 */
    cf_tensor *eight = cf_tensor_new(ctx, logp->dtype, 0, NULL);
    if (!eight) return NULL;
    cf_tensor_set(eight, 0, 8.0);
    return cf_add(ctx, cf_scale(ctx, logp, -1.0 / (D * M_LN2)), eight);
}

cf_tensor *cf_flow_bpd(cf_flow *f, cf_ctx *ctx, cf_tensor *x)
{
    return cf_mean_all(ctx, cf_flow_bpd_per_image(f, ctx, cf_flow_log_prob(f, ctx, x, NULL)));
}

cf_status cf_flow_encode(cf_flow *f, cf_ctx *ctx, cf_tensor *x, cf_flow_io *io)
{
    bool old = cf_ctx_set_grad(ctx, false);
    cf_flow_log_prob(f, ctx, x, io);
    cf_ctx_set_grad(ctx, old);
    return cf_ctx_status(ctx);
}

cf_status cf_flow_decode(cf_flow *f, cf_ctx *ctx, cf_flow_io *io, cf_tensor **x)
{
    *x = NULL;
    io->x = NULL;
    if (!has_prior(f, ctx)) return cf_ctx_status(ctx);
    bool old = cf_ctx_set_grad(ctx, false);
    cf_status st = run_layers(f, ctx, io, true);
    cf_ctx_set_grad(ctx, old);
    *x = io->x;
    return st;
}

cf_status cf_flow_sample(cf_flow *f, cf_ctx *ctx, int64_t n, double temperature, cf_rng *rng,
                         cf_tensor **x)
{
    cf_flow_io io = {.temperature = temperature, .rng = rng, .batch = n};
    if (n < 1) return cf_ctx_fail(ctx, CF_ERR_ARG, "flow: cannot sample %lld images", (long long)n);
    return cf_flow_decode(f, ctx, &io, x);
}
