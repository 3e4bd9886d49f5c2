/* cf_optim.h: Adam, AdamW and Adamax over a parameter set's flat buffers, with linear
 * learning-rate warmup, global gradient-norm clipping, and a step that refuses non-finite
 * gradients instead of poisoning the parameters.
 *
 * The optimizer knows nothing of layers: it sees one flat parameter buffer, one flat gradient
 * buffer and keeps two flat moment buffers of the same layout (so a checkpoint stores the
 * moments under the parameters' names, and MPI all-reduces one gradient buffer).
 *
 * Update at step t (1-based), with g the (clipped) gradient and lr_t the scheduled rate:
 *   Adam:   g += weight_decay * p (L2); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 *           p -= lr_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 *   AdamW:  as Adam without the L2 term, and p -= lr_t * weight_decay * p with p taken before
 *           the update (decoupled)
 *   Adamax: g += weight_decay * p (L2); m as Adam; u = max(b2 u, |g| + eps);
 *           p -= lr_t / (1 - b1^t) * m / u
 * (PyTorch's torch.optim.Adam/AdamW/Adamax with the same hyper-parameters give the same
 * sequence; note Adamax adds eps inside the max, as PyTorch does, so u is at least eps.)
 * Warmup: lr_t = lr * min(1, t / warmup_steps). Clipping, before all of this, is
 * torch.nn.utils.clip_grad_norm_'s: when the norm exceeds clip_norm, the gradient buffer is
 * scaled in place by clip_norm / (norm + 1e-6).
 */
#ifndef CF_OPTIM_H
#define CF_OPTIM_H

#include "cf_params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cf_optim_kind {
    CF_OPTIM_KIND_ADAM = 0,
    CF_OPTIM_KIND_ADAMW = 1,
    CF_OPTIM_KIND_ADAMAX = 2,
} cf_optim_kind;

typedef struct cf_adam_opts {
    cf_optim_kind kind;
    double lr;            /* 0: 1e-3 */
    double beta1, beta2;  /* 0: 0.9 and 0.999 */
    double eps;           /* 0: 1e-8 */
    double weight_decay;  /* L2 (Adam) or decoupled (AdamW); 0: none */
    int64_t warmup_steps; /* linear warmup over this many steps; 0: none */
    double clip_norm;     /* > 0: scale the gradient so its global L2 norm is at most this */
} cf_adam_opts;

typedef struct cf_adam cf_adam;

/* What one step did. */
typedef struct cf_step_info {
    double grad_norm; /* global L2 norm of the gradient before clipping (inf/NaN if not finite) */
    double lr;        /* learning rate applied (0 when skipped) */
    bool clipped;     /* the gradient was scaled down to clip_norm */
    bool skipped;     /* a gradient was not finite: nothing changed, the skip was counted */
} cf_step_info;

/* Returns an owned optimizer over ps (borrowed: it must outlive the optimizer, and get no new
 * parameters after this call), or NULL with cf_last_error() for bad options or no memory.
 * opts NULL: Adam with the defaults. Free with cf_adam_free (NULL accepted). */
cf_adam *cf_adam_new(cf_params *ps, const cf_adam_opts *opts);
void cf_adam_free(cf_adam *opt);

/* Applies one update from the gradients in ps. Returns CF_OK, or CF_ERR_NUMERIC when a
 * gradient was NaN or infinite: then no parameter or moment changed, the step count did not
 * advance, the skip was counted, and cf_last_error() names the first offending parameter.
 * info may be NULL. */
cf_status cf_adam_step(cf_adam *opt, cf_step_info *info);

/* The options in force (defaults filled in). */
const cf_adam_opts *cf_adam_options(const cf_adam *opt);
/* Updates applied so far (t), and steps skipped for non-finite gradients. */
int64_t cf_adam_step_count(const cf_adam *opt);
int64_t cf_adam_skipped_count(const cf_adam *opt);
/* The learning rate the schedule gives at update t (1-based). */
double cf_adam_lr_at(const cf_adam *opt, int64_t t);

/* The moment buffers (borrowed), laid out like cf_params_data(): m, and v (u for Adamax).
 * Their alignment gaps stay zero, except Adamax's u, which holds eps there once updated. */
void *cf_adam_m(cf_adam *opt);
void *cf_adam_v(cf_adam *opt);
/* Restores counters after loading moments from a checkpoint. */
void cf_adam_set_counts(cf_adam *opt, int64_t steps, int64_t skipped);

#ifdef __cplusplus
}
#endif
#endif
