/* cf_params.h: named parameters and state, as views into flat buffers.
 *
 * A parameter set owns the model's learnable tensors and their gradients. Each parameter has a
 * dotted name ("levels.0.steps.3.conv.weight", as in a PyTorch state_dict) and is a view into
 * one flat data buffer, with its gradient a view into one flat gradient buffer at the same
 * offset. So an optimizer is one loop over cf_params_data()/cf_params_grad(), an all-reduce is
 * one call on the gradient buffer, and a checkpoint is a walk over the names.
 *
 * State tensors (actnorm's "initialized" flag, running statistics) are named like parameters
 * but live in a separate flat buffer: they are saved and loaded, never trained, and have no
 * gradient.
 *
 * Adding a tensor may move the flat buffers: the cf_tensor pointers stay valid and their data
 * and grad fields are updated, but raw pointers taken earlier from ->data are not. Declare the
 * model first, then train.
 */
#ifndef CF_PARAMS_H
#define CF_PARAMS_H

#include "cf_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cf_params cf_params;

/* Returns an owned, empty set of the given dtype (free with cf_params_free), or NULL. */
cf_params *cf_params_new(cf_dtype dtype);
/* Frees the set and every tensor in it; NULL is accepted. */
void cf_params_free(cf_params *ps);

cf_dtype cf_params_dtype(const cf_params *ps);

/* Adds a zero-filled trainable parameter that requires a gradient. The name is copied.
 * Returns the tensor (borrowed: owned by the set) or NULL with cf_last_error() for a
 * duplicate or empty name, a bad shape, or no memory. */
cf_tensor *cf_params_add(cf_params *ps, const char *name, int ndim, const int64_t *shape);
/* Adds a zero-filled state tensor (saved, not trained). Same ownership and failures. */
cf_tensor *cf_params_add_state(cf_params *ps, const char *name, int ndim, const int64_t *shape);

/* Lookup by name among parameters and state; NULL when absent. Borrowed. */
cf_tensor *cf_params_find(const cf_params *ps, const char *name);

/* Trainable parameters, in the order added. Borrowed. */
int cf_params_count(const cf_params *ps);
cf_tensor *cf_params_at(const cf_params *ps, int i);
/* State tensors, in the order added. Borrowed. */
int cf_params_state_count(const cf_params *ps);
cf_tensor *cf_params_state_at(const cf_params *ps, int i);

/* The flat buffers (borrowed) and the number of elements they hold; parameters sit at
 * 64-byte-aligned offsets, and the gaps between them are zero and stay zero. */
void *cf_params_data(cf_params *ps);
void *cf_params_grad(cf_params *ps);
size_t cf_params_flat_numel(const cf_params *ps);
/* Where parameter i starts in the flat buffers, in elements. */
size_t cf_params_offset(const cf_params *ps, int i);
/* Total learnable elements (without the alignment gaps). */
int64_t cf_params_numel(const cf_params *ps);

/* Sets every gradient to zero. */
void cf_params_zero_grad(cf_params *ps);

#ifdef __cplusplus
}
#endif
#endif
