/* cf_flow_file.h: a whole flow to and from a checkpoint, and what every program that opens one
 * needs: the built-in model's settings as checkpoint metadata, and bits/dim over a data set.
 *
 * A checkpoint describes its flow (its /arch group, cf_arch.h), so any program that has the
 * flow's layer kinds registered (the built-in ones always are; a plugin's after it is loaded)
 * rebuilds it, whoever wrote it:
 *
 *     cf_ckpt_meta meta = {0};
 *     cf_flow *flow = cf_flow_load("m.h5", CF_F32, &meta);   // owned: cf_flow_free
 *     if (!flow) { fprintf(stderr, "%s\n", cf_last_error()); return 1; }
 *     cf_ctx *ctx = cf_ctx_new(0);
 *     cf_tensor *x = NULL;
 *     cf_rng rng;
 *     cf_rng_seed(&rng, 1, 0);
 *     cf_flow_sample(flow, ctx, 16, 0.7, &rng, &x);           // 16 images
 *     ...
 *     meta.step += 1;
 *     cf_flow_save("m2.h5", flow, NULL, &meta);               // its architecture goes along
 *     cf_ckpt_meta_clear(&meta);
 *
 * Checkpoints of format version 1 (before architectures were stored) hold the built-in
 * model's settings in /config; cf_flow_load rebuilds those with cf_flow_new, so they still load
 * (and are written as version 2 when saved again).
 *
 * Opening a checkpoint never runs code: the kinds it names must already be registered. The
 * checkpoint says which plugin provides a kind it needs, and that is only a message.
 *
 * Not here: the file layout (cf_checkpoint.h), the list form (cf_arch.h).
 */
#ifndef CF_FLOW_FILE_H
#define CF_FLOW_FILE_H

#include "cf_arch.h"
#include "cf_checkpoint.h"
#include "cf_data.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The built-in model's settings (cf_flow_config) as /config entries: model =
 * "glow-multiscale", height, width, channels, levels, depth, hidden, coupling and conv (the
 * kinds' choice names), seed. Added to meta (entries already there are replaced). */
cf_status cf_flow_config_to_meta(const cf_flow_config *cfg, cf_ckpt_meta *meta);
/* Back: CF_ERR_NOT_FOUND when meta does not describe the built-in model, CF_ERR_FORMAT naming
 * the entry when an entry is of the wrong type or names no registered kind. The strings in
 * *cfg are the kinds' own (static). */
cf_status cf_flow_config_from_meta(const cf_ckpt_meta *meta, cf_flow_config *cfg);

/* Saves flow's parameters and state (and opt's moments and options when opt is not NULL: it
 * must be the optimizer of cf_flow_params(flow)), meta (NULL: step 0, no configuration) and the
 * flow's architecture, atomically, as cf_checkpoint_save does. A flow built by cf_flow_new
 * also gets its settings in /config (cf_flow_config_to_meta) unless meta has them. Everything
 * is borrowed. CF_ERR_STATE when a layer was not made through a registered kind (the flow
 * cannot be described); else as cf_checkpoint_save. */
cf_status cf_flow_save(const char *path, const cf_flow *flow, const cf_adam *opt,
                       const cf_ckpt_meta *meta);

/* Rebuilds the flow a checkpoint describes, in dtype, and loads its parameters and state.
 * meta (may be NULL; else zeroed or used before) receives the file's metadata as
 * cf_checkpoint_load gives it. The optimizer is not restored: make one on
 * cf_flow_params(flow) and call cf_checkpoint_load(path, cf_flow_params(flow), opt, NULL)
 * (cf_flow_load_optimizer does both). Returns the flow owned, or NULL with cf_last_error()
 * naming path and what was wrong: CF_ERR_NOT_FOUND for a missing file or a layer kind that
 * is not registered (the message names the layer, the kind and the plugin the file says
 * provides it), else as cf_checkpoint_load and cf_flow_from_arch. */
cf_flow *cf_flow_load(const char *path, cf_dtype dtype, cf_ckpt_meta *meta);
/* The optimizer a checkpoint holds, on flow's parameters (which must match the file's, as
 * after cf_flow_load of the same file): its kind and options from the file, its moments and
 * counts restored. Returns it owned (cf_adam_free), or NULL with cf_last_error() (the file has
 * no optimizer state: CF_ERR_STATE). */
cf_adam *cf_flow_load_optimizer(const char *path, cf_flow *flow);

/* Mean bits/dim of images [0, limit) of ds (limit 0: all), in batches of `batch`, with grad
 * recording off; uniform dequantization noise from a generator seeded with seed. On a
 * failure the message names the batch. */
cf_status cf_flow_eval_bpd(cf_flow *flow, const cf_dataset *ds, int64_t limit, int64_t batch,
                           cf_dequant dequant, uint64_t seed, double *bpd);

#ifdef __cplusplus
}
#endif
#endif
