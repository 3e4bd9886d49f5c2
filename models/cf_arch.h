/* cf_arch.h: architectures as data. A flow's architecture is its input shape and an ordered
 * list of layers, each a name, a registered kind (cf_layer.h) and that kind's hyperparameters;
 * from it and a seed any program that has the kinds registered rebuilds the same flow. It is
 * what `cincflow arch` prints, what `cincflow train --arch FILE` reads and what every
 * checkpoint stores (its /arch group, cf_checkpoint.h), so a checkpoint describes itself.
 *
 *     cf_arch *a = cf_arch_new((int64_t[]){28, 28, 1});
 *     cf_arch_add(a, "squeeze", "squeeze", NULL);
 *     cf_hparams hp = {0};
 *     cf_hparams_set_int(&hp, "hidden", 64);
 *     cf_arch_add(a, "steps.0.actnorm", "actnorm", NULL);
 *     cf_arch_add(a, "steps.0.coupling", "affine_coupling", &hp);
 *     cf_arch_add(a, "prior", "prior", NULL);
 *     char *json = cf_arch_to_json(a);         // owned: free()
 *     cf_flow *flow = cf_flow_from_arch(a, CF_F32, 7);  // owned: cf_flow_free
 *     cf_arch_free(a);
 *
 * The JSON form (one object):
 *
 *   {"format": "cincflow-architecture", "version": 1,
 *    "input": [H, W, C],
 *    "kinds": {"squeeze": {"provider": "cincflow", "summary": "...", "conventions": "...",
 *                          "hparams": {"key": "what it means"}}, ...},
 *    "layers": [{"name": "levels.0.squeeze", "kind": "squeeze", "hparams": {},
 *                "in": [28, 28, 1], "out": [14, 14, 4]}, ...]}
 *
 * name, kind and hparams define a layer; "in" and "out" (the shapes of one image, H W C) are
 * checked against the built flow when present. "kinds" describes each kind used, once: its
 * provider (the library, or the plugin that registered it), a summary, and the conventions a
 * reader needs to redo its math without this library (mask directions, channel orders, which
 * half is kept); it is for readers and for the message when a kind is missing, and is
 * optional in files given to cf_arch_from_json. Hyperparameter values are JSON numbers (an
 * integral number is an int), strings or booleans.
 *
 * Not here: the built-in model's settings (cf_flow_config in cf_flow.h, whose cf_arch_builtin
 * gives the list), reading and writing checkpoints (cf_flow_file.h).
 */
#ifndef CF_ARCH_H
#define CF_ARCH_H

#include "cf_flow.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CF_ARCH_FORMAT "cincflow-architecture"
#define CF_ARCH_VERSION 1
#define CF_ARCH_MAX_LAYERS 65536

typedef struct cf_arch_layer {
    char name[CF_NAME_MAX];
    char kind[CF_HP_KEY_MAX];
    char provider[CF_HP_STRING_MAX]; /* "" or as a file said: information only */
    cf_hparams hp;
    bool has_shapes;                 /* in and out were given (JSON) or computed (a flow) */
    int64_t in[3], out[3];
} cf_arch_layer;

typedef struct cf_arch {
    int64_t shape[3]; /* (H, W, C) of the images the flow takes */
    int n_layers;
    cf_arch_layer *layers; /* owned */
    int cap_layers;
} cf_arch;

/* An empty architecture on images of shape (H, W, C). Owned: cf_arch_free. NULL with
 * cf_last_error() for an empty shape or no memory. */
cf_arch *cf_arch_new(const int64_t shape[3]);
void cf_arch_free(cf_arch *a); /* accepts NULL */
/* Appends a layer (everything is copied; hp NULL: the kind's defaults). The kind need not be
 * registered yet: that is checked when a flow is built. CF_ERR_ARG for a name or kind that is
 * empty, too long, or a name already used; CF_ERR_NOMEM. */
cf_status cf_arch_add(cf_arch *a, const char *name, const char *kind, const cf_hparams *hp);

/* The built-in multi-scale model of cfg (cf_flow_new's) as a list: per level a squeeze, depth
 * x (actnorm, invertible conv, coupling), a split but after the last level, then the prior.
 * Owned, or NULL with cf_last_error() (bad settings, an unknown conv or coupling choice). */
cf_arch *cf_arch_builtin(const cf_flow_config *cfg);

/* A flow's architecture (its layers' names, kinds and hyperparameters, with shapes and
 * providers). Owned, or NULL with cf_last_error() when a layer was not made through a
 * registered kind (cf_layer_create), so cannot be described. */
cf_arch *cf_flow_arch(const cf_flow *flow);

/* Builds the flow: each layer by cf_layer_create in order, initialised from one generator
 * seeded with seed (the same flow as cf_flow_new for cf_arch_builtin's list of the same
 * config and seed). Returns it owned, or NULL with cf_last_error() naming the layer: a kind
 * that is not registered (and the provider the architecture names for it), hyperparameters
 * the kind refuses, a shape it cannot take, "in"/"out" shapes that disagree with the built
 * layer, a last layer that is not a prior (a layer that factors the whole tensor out and so
 * gives the density) or a layer after one. */
cf_flow *cf_flow_from_arch(const cf_arch *a, cf_dtype dtype, uint64_t seed);

/* The JSON form above, indented; kinds that are registered add their provider, summary and
 * conventions. Owned (free()), or NULL on no memory. */
char *cf_arch_to_json(const cf_arch *a);
/* Parses the JSON form (text: a NUL-terminated string; source names it in messages, e.g. a
 * file name). Owned, or NULL with cf_last_error() naming source and the layer or field at
 * fault: malformed JSON, a format or version this library does not read, a missing or
 * mistyped field, a shape out of range, more than CF_ARCH_MAX_LAYERS layers, duplicate names.
 * Kinds are not looked up here. */
cf_arch *cf_arch_from_json(const char *text, const char *source);
/* cf_arch_from_json of a file's contents (at most 64 MB). */
cf_arch *cf_arch_read_file(const char *path);

#ifdef __cplusplus
}
#endif
#endif
