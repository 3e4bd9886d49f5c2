/* cf_flow.h: flows declared as a sequence of layers, the built-in layers' constructors, and the
 * CInC, Glow and Emerging model builder.
 *
 * A flow layer (cf_layer.h, which also says how to write a kind of your own) is a small
 * vtable: forward records on the tape and maps x to z while adding its log|det| to the
 * per-image log-det; inverse runs off the tape and maps z back to x; the layer's parameters
 * and state are listed in its base struct (the parameter walk), each a named tensor of the
 * flow's cf_params set ("levels.0.steps.3.conv.weight"). The constructors below are thin
 * wrappers over cf_layer_create of the built-in kinds.
 *
 * Everything a layer passes along travels in a cf_flow_io: the current tensor x, the per-image
 * log-det and the log-density of latents already factored out, and the list of latents. Split
 * layers factor half the channels out (forward: push a latent and add its log-density under a
 * learned conditional prior; inverse: pop it, or draw it from that prior at a temperature).
 *
 * A flow is declared once (cf_flow_new for the built-in models, or cf_flow_empty plus
 * cf_flow_add for your own architecture) and reused every step:
 *
 *     cf_flow *flow = cf_flow_new(&(cf_flow_config){.height = 28, .width = 28, .channels = 1,
 *                                 .levels = 2, .depth = 8, .hidden = 128}, CF_F32);
 *     cf_tensor *bpd = cf_flow_bpd(flow, ctx, x);   // x dequantized: x/256 - 0.5 + U(0, 1/256)
 *     cf_backward(ctx, bpd);
 *
 * The model follows Glow (Kingma and Dhariwal 2018): L levels, each a squeeze, K steps of
 * actnorm, an invertible convolution and a coupling, then (but for the last level) a split;
 * the last level's output has a learned prior. Its CInC variant (Nagar et al. 2021) uses the
 * masked 3x3 convolution of cf_conv.h as the invertible convolution and may use quad
 * coupling. Conventions as in Glow: squeeze order c*4 + dy*2 + dx, scales sigmoid(l + 2),
 * zero-initialised output convolutions scaled by exp(3 logs), actnorm's data-dependent
 * initialisation on the first batch it sees (its "initialized" flag is state, saved with the
 * parameters). One convention differs in form only: the conditional priors' zero-initialised
 * convolutions give the mean in their first half of channels and the log-scale in the second
 * (Glow interleaves them); both are learned from zero, so the model family is the same.
 *
 * Not here: data loading and dequantization of 8-bit images (io/), training loops (examples/).
 */
#ifndef CF_FLOW_H
#define CF_FLOW_H

#include <stdio.h>

#include "cf_conv.h"
#include "cf_layer.h"
#include "cf_ops.h"
#include "cf_params.h"
#include "cf_rng.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the layers --------------------------------------------------------------------------
 * Each constructor registers the layer's tensors in ps under `name`, initialises them (rng),
 * and returns an owned layer (free with cf_layer_free), or NULL with cf_last_error() naming the
 * layer and what did not fit. Shapes are (H, W, C) of one image. */

typedef enum cf_coupling_kind {
    CF_COUPLING_KIND_QUAD = 0, /* the default */
    CF_COUPLING_KIND_AFFINE = 1,
} cf_coupling_kind;

typedef enum cf_invconv_kind {
    CF_INVCONV_KIND_CINC = 0,     /* masked 3x3, CInC (the default) */
    CF_INVCONV_KIND_1X1 = 1,      /* Glow's LU-parametrised 1x1 */
    CF_INVCONV_KIND_EMERGING = 2, /* 1x1, then masked causal and anti-causal 2x2 */
} cf_invconv_kind;

cf_layer *cf_actnorm_layer(cf_params *ps, const char *name, const int64_t shape[3]);
cf_layer *cf_cinc_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                             cf_rng *rng);
/* A masked 3x3 conv of any mask kind (CInC's is cf_cinc_conv_layer). */
cf_layer *cf_masked_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                               cf_conv_mask mask, cf_rng *rng);
cf_layer *cf_invconv1x1_layer(cf_params *ps, const char *name, const int64_t shape[3],
                              cf_rng *rng);
cf_layer *cf_emerging_conv_layer(cf_params *ps, const char *name, const int64_t shape[3],
                                 cf_rng *rng);
/* Coupling with networks of `hidden` channels (conv3x3 + actnorm, ReLU, conv1x1 + actnorm,
 * ReLU, zero-initialised conv3x3 scaled by exp(3 logs)). Quad needs C divisible by 4; affine
 * C >= 2. */
cf_layer *cf_coupling_layer(cf_params *ps, const char *name, const int64_t shape[3],
                            cf_coupling_kind kind, int64_t hidden, cf_rng *rng);
/* Squeeze: (H, W, C) -> (H/2, W/2, 4C); H and W even. */
cf_layer *cf_squeeze_layer(const char *name, const int64_t shape[3]);
/* Split: keeps the first C/2 channels, factors the rest out under a Gaussian whose mean and
 * log-scale come from a zero-initialised conv3x3 of the kept half. C >= 2. */
cf_layer *cf_split_layer(cf_params *ps, const char *name, const int64_t shape[3]);
/* Learned prior on the final tensor: N(mean, exp(logs)) with mean and logs of the image's
 * shape, zero-initialised. Factors the whole tensor out as the last latent. */
cf_layer *cf_prior_layer(cf_params *ps, const char *name, const int64_t shape[3]);


/* ---- flows -------------------------------------------------------------------------------- */

/* Zero fields take the defaults of the Fashion-MNIST model: 28 x 28 x 1, L = 2, K = 8,
 * hidden 128, quad coupling, CInC convolutions. */
typedef struct cf_flow_config {
    int64_t height, width, channels; /* input images; 0: 28 x 28 x 1 */
    int levels;                      /* L; 0: 2 */
    int depth;                       /* K steps per level; 0: 8 */
    int64_t hidden;                  /* coupling network width; 0: 128 */
    cf_coupling_kind coupling;       /* default quad */
    cf_invconv_kind conv;            /* default CInC */
    /* Or any registered kind by its choice name (cf_layer_kind_for_choice): a kind of role
     * "invconv" ("cinc", "1x1", "emerging", or a plugin's) and one of role "coupling" ("quad",
     * "affine", ...), which then replace conv and coupling. NULL: the enums decide. */
    const char *conv_name, *coupling_name;
    uint64_t seed;                   /* initialisation */
} cf_flow_config;

typedef struct cf_flow cf_flow;

/* Builds a Glow-style multi-scale flow (see the header comment) with an owned parameter set
 * of the given dtype; cfg NULL: the defaults. Returns an owned flow (cf_flow_free), or NULL with cf_last_error()
 * naming the level and the shape that cannot work (odd size at a squeeze, channels not
 * divisible by 4 for quad coupling, ...). */
cf_flow *cf_flow_new(const cf_flow_config *cfg, cf_dtype dtype);
/* The choice names of a config's invertible-convolution and coupling kinds: conv_name and
 * coupling_name when set, else the enums' ("cinc", "1x1", "emerging"; "quad", "affine"); NULL
 * for an enum value out of range. Borrowed (static or the config's). */
const char *cf_flow_config_conv(const cf_flow_config *cfg);
const char *cf_flow_config_coupling(const cf_flow_config *cfg);
/* An empty flow on images of (H, W, C), for declaring your own architecture: add layers in
 * order with cf_flow_add, which takes ownership of the layer (and frees it on failure), checks
 * that it takes the previous layer's output shape, and accepts a failed constructor's NULL
 * straight away: cf_flow_add(f, cf_actnorm_layer(...)) then returns CF_ERR_ARG and leaves the
 * constructor's message in cf_last_error(). */
cf_flow *cf_flow_empty(const int64_t shape[3], cf_dtype dtype);
cf_status cf_flow_add(cf_flow *flow, cf_layer *layer);
void cf_flow_free(cf_flow *flow);

cf_params *cf_flow_params(cf_flow *flow); /* borrowed: owned by the flow */
const cf_flow_config *cf_flow_config_of(const cf_flow *flow);
int cf_flow_layer_count(const cf_flow *flow);
cf_layer *cf_flow_layer(cf_flow *flow, int i);
/* Shape (H, W, C) of the images the flow takes. */
const int64_t *cf_flow_shape(const cf_flow *flow);
/* Forward FLOPs per image, summed over layers. */
double cf_flow_flops(const cf_flow *flow);

/* Several processes training one model on shards of the data (data parallelism): a reducer
 * sums buf (n doubles) in place over all of them and returns CF_OK, or a negative status when
 * the exchange failed. Every process calls it with the same n, in the same order. The flow uses
 * it for actnorm's data-dependent initialisation, so that the statistics are those of the
 * union of the processes' batches and every process starts from the same parameters; nothing
 * else in the library communicates (averaging gradients is the training loop's business, one
 * all-reduce over cf_params_grad()). The library itself knows nothing of MPI: the command-line
 * tool passes an MPI_Allreduce here. */
typedef cf_status (*cf_reduce_fn)(double *buf, size_t n, void *user);
/* Sets the flow's reducer (fn NULL: a single process, the default); user is passed along,
 * borrowed. The reducer is called only during cf_flow_log_prob and cf_flow_encode, from the
 * calling thread, and only while some actnorm layer is not initialised yet. */
void cf_flow_set_reducer(cf_flow *flow, cf_reduce_fn fn, void *user);

/* Memory that does not grow with depth: when on, a training forward keeps on the tape only
 * each flow step's input (one activation per step) and recomputes the step's forward, on a
 * tape of its own, during backward; so only one step's coupling-network activations are alive
 * at a time, for about one more forward pass of compute. Gradients are those of the plain
 * path (to rounding). Off by default. Steps are the runs of layers between squeezes, splits
 * and priors, cut into pieces of at most 3 layers. */
void cf_flow_set_recompute(cf_flow *flow, bool on);
bool cf_flow_recompute(const cf_flow *flow);
/* With recomputation on, keep not even the steps' inputs: consecutive steps' outputs alternate
 * between two buffers of the flow, and each step's backward first rebuilds its input from its
 * output with the layers' inverses (exact up to rounding), then recomputes. Memory then no
 * longer grows with depth at all, for one more inverse pass of compute. Off by default. */
void cf_flow_set_rebuild_inputs(cf_flow *flow, bool on);

/* Gives back the memory of the flow's own working arenas (the one-layer-at-a-time arena of
 * grad-free passes and the recomputation arena); they are made again when next needed. For
 * after a large one-off pass, such as actnorm's initialisation on many images. */
void cf_flow_trim(cf_flow *flow);

/* Forward on the tape: x (B, H, W, C), dequantized. Returns log p(x) per image (B) (the
 * latents' log-densities plus the log-determinants), and fills io (may be NULL) with the
 * latents. NULL on failure (the context's status says why). */
cf_tensor *cf_flow_log_prob(cf_flow *flow, cf_ctx *ctx, cf_tensor *x, cf_flow_io *io);
/* Mean bits per dimension of a batch of dequantized 8-bit images (x = k/256 - 0.5 + u):
 * -(log p(x) - D log 256) / (D ln 2), D = H W C, averaged over the batch; a scalar. */
cf_tensor *cf_flow_bpd(cf_flow *flow, cf_ctx *ctx, cf_tensor *x);
/* One training step's loss and gradients: the parameters' gradients are zeroed, then set to
 * those of the mean bits/dim of the batch x (B, H, W, C; dequantized), which goes through the
 * flow in micro-batches of `micro` images (the last one may be smaller; 0, or at least B: the
 * whole batch at once), forward and backward one after the other on ctx, which is reset after
 * each (and so is empty on return). The gradients are the whole batch's up to rounding, the
 * memory that of a micro-batch; and micro-batches whose activations stay in cache train
 * faster (the default model: 64 images in 4 x 16, about 4% faster per image and a quarter of
 * the arena). A flow whose actnorms are not initialised yet takes the whole batch at once, so
 * they initialise from all of it. *loss is the batch's mean bits/dim (NaN when a micro-batch's
 * is not finite: skip the update then). Returns CF_OK, or the context's failure.
 *
 * With more than one OpenMP thread (omp_get_max_threads(), outside a parallel region) and
 * without recomputation, the threads split the batch as processes would (data parallelism):
 * each micro-batch is cut into one part per thread, each thread runs its parts' forward and
 * backward on a context of its own (kept by the flow; ctx's arena limit is shared among
 * them) with single-threaded kernels, and their gradients are added up in thread order. The
 * result is deterministic for a given thread count and equals the one-thread result up to
 * rounding; ctx's arena peak counts the threads' arenas. Ops called from it must be
 * thread-safe (the built-in ones are), and the parameters are only read. */
cf_status cf_flow_train_step(cf_flow *flow, cf_ctx *ctx, const cf_tensor *x, int64_t micro,
                             double *loss);
/* A good micro-batch on this machine kind, per thread (what `cincflow train` uses): 16 images
 * of the default model per thread keep a thread's activations in its cache (one thread: 5%
 * faster than 64 at once; two threads, each with its own 16: 5% faster than threads sharing
 * each op). */
#define CF_FLOW_MICRO_PER_THREAD 16
/* bits/dim of each image, from log p(x) per image (no averaging). */
cf_tensor *cf_flow_bpd_per_image(cf_flow *flow, cf_ctx *ctx, cf_tensor *logp);

/* Inverse through every layer, with grad recording off: from io->latents (as forward left
 * them; missing ones are drawn at io->temperature with io->rng) to images in *x. */
cf_status cf_flow_decode(cf_flow *flow, cf_ctx *ctx, cf_flow_io *io, cf_tensor **x);
/* Encodes with grad recording off: io gets every latent. */
cf_status cf_flow_encode(cf_flow *flow, cf_ctx *ctx, cf_tensor *x, cf_flow_io *io);
/* Draws n images at temperature T: every latent from its prior. */
cf_status cf_flow_sample(cf_flow *flow, cf_ctx *ctx, int64_t n, double temperature,
                         cf_rng *rng, cf_tensor **x);

/* Memory estimates (bytes, f32), for refusing a model before it is allocated: what a training
 * step keeps of activations for `batch` images (plain, or with recomputation), and what the
 * model needs in all (parameters, and when training their gradients and two Adam moments, plus
 * activations; a grad-free pass needs about a layer's worth). From the built-in model's
 * settings, before building it, or from a built flow of any architecture. Rough: calibrated on
 * measured arenas to about 10%. */
double cf_flow_config_activation_bytes(const cf_flow_config *cfg, int64_t batch, bool recompute);
double cf_flow_config_memory_bytes(const cf_flow_config *cfg, int64_t batch, bool training,
                                   bool recompute);
double cf_flow_activation_bytes(const cf_flow *flow, int64_t batch, bool recompute);
double cf_flow_memory_bytes(const cf_flow *flow, int64_t batch, bool training, bool recompute);

/* Prints the layer list (name, kind, in and out shapes, parameters) and closes with
 * "params: N, forward GFLOP/image: F". */
void cf_flow_print(const cf_flow *flow, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
