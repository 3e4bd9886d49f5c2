/* cf_gradcheck.h: checking backward against finite differences, and fast kernels against the
 * reference ones.
 *
 * Following torch.autograd.gradcheck: the outputs are reduced to L = sum_k w_k * out_k with
 * fixed random weights w, the analytic gradient of L comes from backward, the numeric one from
 * central differences (L(x + eps) - L(x - eps)) / (2 eps) one element at a time, and an element
 * passes when |analytic - numeric| <= atol + rtol * |numeric|. Defaults in f64: eps 1e-6,
 * atol 1e-5, rtol 1e-3. Inputs in f32 (ops without f64 kernels) are checked with eps 1e-3,
 * atol 1e-2, rtol 1e-2, since f32 differences carry about 1e-4 relative noise.
 *
 * The fast mode (for large inputs) compares directional derivatives: for random directions u,
 * sum_i <grad_i, u_i> against (L(x + eps u) - L(x - eps u)) / (2 eps).
 *
 * A check also fails when, for some input, both gradients are zero everywhere: such a check
 * proves nothing, the inputs were degenerate (a ReLU fed only negatives, say).
 */
#ifndef CF_GRADCHECK_H
#define CF_GRADCHECK_H

#include "cf_op.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cf_gradcheck_opts {
    double eps, atol, rtol; /* 0: the defaults for the inputs' dtype (see above) */
    bool fast;              /* random-direction mode */
    int n_directions;       /* fast mode; 0: 4 */
    uint64_t seed;          /* weights and directions */
    cf_kernels kernels;     /* kernel family used for forward and backward */
} cf_gradcheck_opts;

typedef struct cf_gradcheck_result {
    bool passed;
    int inputs_checked;       /* tensors differentiated */
    int64_t values_checked;   /* elements (or directions, in fast mode) compared */
    double max_abs_err;       /* max |analytic - numeric| */
    double max_rel_err;       /* max |analytic - numeric| / |numeric| where |numeric| > atol */
    char message[512];        /* why it failed: input, element, both values */
} cf_gradcheck_result;

/* Builds the graph under test in ctx from tensors it already knows (through `user`), and
 * returns its outputs: sets *n_out (at most CF_MAX_OUTPUTS) and out[]. */
typedef cf_status (*cf_graph_fn)(cf_ctx *ctx, void *user, int *n_out, cf_tensor **out);

/* Checks the gradient of the graph's outputs with respect to each tensor in wrt[] (heap or
 * parameter tensors with gradient buffers: see cf_tensor_requires_grad). Their data is
 * perturbed in place and restored; their gradients are overwritten. Returns CF_OK when the
 * check passed, CF_ERR_GRADCHECK when it failed (res->message says where), or the graph's own
 * failure. opts NULL: defaults. */
cf_status cf_gradcheck_graph(cf_graph_fn fn, void *user, int n_wrt, cf_tensor *const *wrt,
                             const cf_gradcheck_opts *opts, cf_gradcheck_result *res);

/* Checks one op on the given heap inputs (every input not in op->no_grad_inputs is checked). */
cf_status cf_gradcheck_op(const cf_op_def *op, int n_in, cf_tensor *const *inputs,
                          const void *attrs, const cf_gradcheck_opts *opts,
                          cf_gradcheck_result *res);

/* Fills case `index` of an op (its make_case, or the default (2, 3, 4, 5) case in [-2, 2]);
 * returns false past the last case. */
bool cf_op_case_get(const cf_op_def *op, int index, cf_op_case *c);
/* Allocates the inputs of a case in a dtype, drawn with rng; returns CF_OK or a failure.
 * Free them with cf_tensor_free. */
cf_status cf_op_case_inputs(const cf_op_case *c, cf_dtype dtype, uint64_t seed,
                            cf_tensor **inputs);

/* Compares an op's fast kernels (forward and backward, f32) with its reference kernels on the
 * same f32 inputs: max |fast - ref| / max(1, max |ref|) over outputs and input gradients.
 * Sets *has_fast false (and returns CF_OK) when the op has no fast f32 kernel. Fails with
 * CF_ERR_STATE (cf_last_error says which) when the run record (cf_op_runs) shows that the fast
 * forward, or the op's fast backward, did not run in the fast pass, or the reference kernels
 * did not run in the reference pass. */
cf_status cf_opcheck_fast(const cf_op_def *op, int n_in, cf_tensor *const *inputs,
                          const void *attrs, bool *has_fast, double *max_err);

#ifdef __cplusplus
}
#endif
#endif
