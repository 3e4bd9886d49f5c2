/* cincflow.h: the whole public interface of libcincflow in one include.
 *
 * A worked example: a one-layer affine flow on 2-D points, trained by maximum likelihood,
 * then saved. (The CInC flow itself is one call: cf_flow_new, see cf_flow.h.)
 *
 *     #include <cincflow/cincflow.h>
 *
 *     cf_params *ps = cf_params_new(CF_F32);                       // owns parameters
 *     cf_tensor *w = cf_params_add(ps, "flow.log_scale", 1, (int64_t[]){2});
 *     cf_tensor *b = cf_params_add(ps, "flow.shift", 1, (int64_t[]){2});
 *     cf_adam *opt = cf_adam_new(ps, &(cf_adam_opts){.lr = 1e-2});  // Adam over the flat buffer
 *     cf_ctx *ctx = cf_ctx_new(0);                                  // arena + tape of a step
 *
 *     for (int step = 0; step < 100; step++) {
 *         cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 64, 2);       // a batch, in the arena
 *         // ... fill x->data with data ...
 *         // z = (x + b) * exp(w); log p(x) = log N(z) + sum(w)
 *         cf_tensor *z = cf_mul(ctx, cf_add(ctx, x, b), cf_exp(ctx, w));
 *         cf_tensor *logp = cf_add(ctx, cf_gaussian_logp_std(ctx, z), cf_sum_all(ctx, w));
 *         cf_tensor *loss = cf_scale(ctx, cf_mean_all(ctx, logp), -1.0);
 *         cf_params_zero_grad(ps);
 *         if (cf_backward(ctx, loss) != CF_OK)                      // one status per step
 *             fprintf(stderr, "%s\n", cf_ctx_error(ctx));
 *         cf_adam_step(opt, NULL);
 *         cf_ctx_reset(ctx);                                        // drop the step's tensors
 *     }
 *     cf_ckpt_meta meta = {.step = 100};
 *     if (cf_checkpoint_save("affine.h5", ps, opt, &meta) != CF_OK)  // HDF5, h5py-readable
 *         fprintf(stderr, "%s\n", cf_last_error());
 *     cf_ctx_free(ctx);
 *     cf_adam_free(opt);
 *     cf_params_free(ps);
 *
 * Ownership: functions named _new/_alloc return owned objects, freed by the matching _free
 * (which accepts NULL); tensors from a context's arena are owned by the context and die at
 * cf_ctx_reset; parameters are owned by their cf_params set. Everything else is borrowed.
 *
 * Errors: failures of the world return a negative cf_status with a message (cf_last_error(),
 * or cf_ctx_error() inside a step); misuse trips CF_ASSERT (cf_status.h).
 */
#ifndef CINCFLOW_H
#define CINCFLOW_H

#include "cf_version.h"
#include "cf_cpu.h"

#include "cf_status.h"
#include "cf_tensor.h"
#include "cf_op.h"
#include "cf_params.h"
#include "cf_rng.h"
#include "cf_gradcheck.h"
#include "cf_ops.h"
#include "cf_conv.h"
#include "cf_layer.h"
#include "cf_flow.h"
#include "cf_arch.h"
#include "cf_plugin.h"
#include "cf_check.h"
#include "cf_optim.h"
#include "cf_data.h"
#include "cf_image.h"
#include "cf_checkpoint.h"
#include "cf_flow_file.h"

#endif
