/* cf_check.h: the flow checker. Tests a flow layer the way gradcheck tests an op, so that a new
 * layer kind can be trusted before it is trained.
 *
 *     cf_params *ps = cf_params_new(CF_F64);            // the checks run in f64
 *     cf_rng rng;
 *     cf_rng_seed(&rng, 1, 0);
 *     cf_layer *l = cf_coupling_layer(ps, "c", (int64_t[]){4, 4, 8}, CF_COUPLING_KIND_QUAD,
 *                                     8, &rng);          // or your own layer
 *     cf_check_result r;
 *     if (cf_layer_check(l, NULL, &r) != CF_OK)          // NULL: the default options
 *         fprintf(stderr, "%s\n", r.message);            // which check, where, both values
 *     cf_check_print(l, &r, stdout);   // "PASS c  quad_coupling  roundtrip 1.1e-13 ..."
 *     cf_layer_free(l);
 *     cf_params_free(ps);
 *
 *     // every layer of a flow, one line each, then "N passed, N failed":
 *     cf_flow *f = cf_flow_new(&(cf_flow_config){.height = 8, .width = 8, .channels = 1,
 *                              .levels = 2, .depth = 2, .hidden = 8}, CF_F64);
 *     int n_failed = 0;
 *     cf_flow_check(f, NULL, stdout, &n_failed);
 *     cf_flow_free(f);
 *
 * What is checked, on `batch` random images of the layer's in_shape (uniform in [lo, hi]):
 *   1. shape: forward's output is (batch, out_shape) (forward failing counts here too);
 *   2. finite: the outputs, latents, log-det and log-density are finite after the first
 *      forward (which also runs data-dependent initialisations such as actnorm's, whose
 *      "initialized" flag is state) and again after every parameter was moved by Gaussian
 *      noise of std `perturb`; the checks below run on the perturbed layer, so layers that
 *      start as the identity (zero-initialised couplings) are really exercised;
 *   3. roundtrip: inverse(forward(x)) against x itself, the forward's own input: max |x' - x|
 *      / max(1, max |x|). Latents a layer factors out (split, prior) are passed back to its
 *      inverse as forward left them, and the inverse must take all of them back. The forward
 *      must not write into its input;
 *   4. logdet: per image, the layer's log-det against log|det J| of the dense Jacobian of its
 *      bijective part, x -> (output, latents pushed) (a latent that is the output itself,
 *      as in a prior, counts once), built row by row from one backward pass per output
 *      element and factorised by an LU with partial pivoting; |layer - dense| / (1 + |dense|).
 *      Images must not depend on each other: entries of J across images must be zero. The
 *      check is skipped (and says why) for a layer whose outputs have more elements than its
 *      input, or another count for a layer that factors out (no square Jacobian), and for
 *      one of more than max_dense elements per image; fewer elements out than in, in a layer
 *      that does not factor out, is a failure (not a bijection);
 *   5. grad: the gradient of L = sum_k w_k out_k + sum_b u_b logdet_b + sum_b v_b logp_b, with
 *      fixed random weights w, u, v of magnitude 0.5 to 1.5 (so every output element and the
 *      log-density matter), with respect to the input and to every parameter tensor, by
 *      cf_gradcheck_graph: central differences element by element, or along random directions
 *      for a tensor of more than max_elementwise elements. For split and prior layers, whose
 *      log-density is not a log-det, this is the check of what they add to log p.
 * Kernels: f64 runs the reference kernels (the fast f32 ones are held to them by
 * `cincflow gradcheck` and the op tests).
 *
 * Default tolerances, from the errors measured on every built-in layer kind (4x4x8 images,
 * batch 2, seeds 1 to 8) and on every layer of the six built-in flows (conv kinds x couplings)
 * on 8x8x1 and 8x8x4 images (L 2, K 2, width 8, seeds 1 to 4): roundtrip at most 3.2e-12 (quad
 * coupling, whose inverse feeds the recovered blocks through its networks; every other kind
 * below 4e-15), tolerance 1e-8; logdet at most 9e-15, tolerance 1e-9; gradients as
 * torch.autograd.gradcheck and cf_gradcheck.h (eps 1e-6, atol 1e-5, rtol 1e-3), with at most
 * 5.3e-7 absolute error measured. The faults they must catch are far above: a log-det wrong by
 * 1% in one channel (2e-3 to 7e-3 relative in tests/test_check.c), an inverse wrong in one
 * block of channels (errors of order 1), a backward wrong by 1% in one element.
 * One caveat, shared with every finite-difference check: an activation within eps of a ReLU
 * kink can make a single element fail; another seed tells such a failure from a real one.
 *
 * The layer is left as it was found: its parameters, state and parameter gradients are saved
 * before and restored after (so a flow whose actnorms are not initialised stays so).
 *
 * Not here: choosing the layer (cf_flow.h constructors or your own); f32 (the checks need f64
 * to tell a 1e-8 gradient error from rounding).
 */
#ifndef CF_CHECK_H
#define CF_CHECK_H

#include <stdio.h>

#include "cf_flow.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The checks, as bits of cf_check_result.failed and .skipped. */
enum {
    CF_CHECK_SHAPE = 1u << 0,
    CF_CHECK_FINITE = 1u << 1,
    CF_CHECK_ROUNDTRIP = 1u << 2,
    CF_CHECK_LOGDET = 1u << 3,
    CF_CHECK_GRAD = 1u << 4,
};
#define CF_CHECK_COUNT 5

/* "shape", "finite", "roundtrip", "logdet" or "grad" for one CF_CHECK_* bit; "?" otherwise. */
const char *cf_check_name(unsigned check);

/* Zero fields take the defaults given. */
typedef struct cf_check_opts {
    int64_t batch;          /* images per input; 0: 2 */
    uint64_t seed;          /* inputs, perturbation and weights; 0: 1 */
    double lo, hi;          /* inputs uniform in [lo, hi]; both 0: [-1, 1] */
    double perturb;         /* std of the noise added to every parameter; 0: 0.1; < 0: none */
    double roundtrip_tol;   /* 0: 1e-8 */
    double logdet_tol;      /* 0: 1e-9 */
    double eps, atol, rtol; /* gradient check; 0: 1e-6, 1e-5, 1e-3 */
    int64_t max_dense;      /* most elements per image for the dense Jacobian; 0: 1024 */
    int64_t max_elementwise; /* larger tensors are checked along directions; 0: 4096 */
} cf_check_opts;

typedef struct cf_check_result {
    bool passed;              /* no check failed */
    unsigned failed;          /* CF_CHECK_* bits of the checks that failed */
    unsigned skipped;         /* CF_CHECK_* bits of the checks that could not run */
    double roundtrip_err;     /* max |x' - x| / max(1, max |x|) */
    double logdet_err;        /* max over images of |layer - dense| / (1 + |dense|) */
    double grad_err;          /* max |backward - finite differences| over tensors */
    int64_t grad_values;      /* elements (and directions) compared */
    int grad_directional;     /* tensors checked along directions (too large) */
    int tensors_checked;      /* the input and the parameter tensors */
    char message[1024];       /* each failed check: "logdet: layer says X, dense Jacobian
                               * gives Y (image 0)", and why a check was skipped, joined by
                               * "; "; empty when everything ran and passed */
} cf_check_result;

/* Checks one layer (see the header comment); layer is borrowed, and its tensors are restored
 * before returning; opts NULL: the defaults; out is filled. Returns CF_OK when every check
 * passed, CF_ERR_NUMERIC when one failed (out says which and why), CF_ERR_DTYPE when the layer
 * holds a tensor that is not f64, CF_ERR_ARG for options out of range, or CF_ERR_NOMEM; each
 * failure also leaves its message in cf_last_error(). */
cf_status cf_layer_check(cf_layer *layer, const cf_check_opts *opts, cf_check_result *out);

/* Writes one line for a checked layer: "PASS <name>  <kind>  roundtrip E logdet E grad E",
 * or "FAIL ...", followed by the message (if any) on the same line; "-" for a skipped check. */
void cf_check_print(const cf_layer *layer, const cf_check_result *r, FILE *out);

/* Checks every layer of the flow in order (borrowed and restored, as above), each with
 * opts->seed plus its index, writes its line to report (borrowed; NULL: nothing is written)
 * and closes with "N passed, N failed". Sets *n_failed (may be NULL) to the count of layers
 * that failed.
 * Returns CF_OK when all passed, CF_ERR_NUMERIC when some failed, or the first failure that
 * stopped the checks (CF_ERR_DTYPE for a flow that is not f64, with cf_last_error()). */
cf_status cf_flow_check(cf_flow *flow, const cf_check_opts *opts, FILE *report, int *n_failed);

/* Checks a registered layer kind by name: builds one layer of it, named after the kind, in a
 * parameter set of its own in f64 on images of `shape` (H, W, C) with hyperparameters hp (NULL:
 * the kind's defaults), initialised from opts' seed, runs cf_layer_check on it, prints its line
 * to report (may be NULL) and frees it. Returns as cf_layer_check, or the failure of building it
 * (CF_ERR_NOT_FOUND: no such kind; CF_ERR_ARG, CF_ERR_SHAPE: hyperparameters or a shape the
 * kind refuses), with cf_last_error() naming the kind; out is filled when the layer was built. */
cf_status cf_layer_kind_check(const char *kind, const int64_t shape[3], const cf_hparams *hp,
                              const cf_check_opts *opts, FILE *report, cf_check_result *out);

#ifdef __cplusplus
}
#endif
#endif
