/* cf_layer.h: writing a flow layer kind, and the registry of kinds.
 *
 * A layer kind is one file: a struct that starts with cf_layer, three functions (forward on
 * the tape, inverse off it, flops), a constructor that declares the layer's tensors, and a
 * cf_layer_kind that names the kind, declares its hyperparameters and registers it. The
 * built-in kinds (actnorm, cinc_conv, quad_coupling, ...) are written exactly this way and
 * registered exactly as yours is. A worked example, a layer y = x * exp(s) with one learned
 * per-channel log-scale s (the whole file):
 *
 *     #include <cincflow/cincflow.h>
 *
 *     typedef struct scale_layer {
 *         cf_layer base;   // first: the flow sees only this
 *         cf_tensor *logs; // (C), borrowed from the flow's cf_params
 *     } scale_layer;
 *
 *     static cf_status scale_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
 *     {   // on the tape: registered ops only, so backward comes for free
 *         scale_layer *l = (scale_layer *)self;
 *         io->x = cf_mul(ctx, io->x, cf_exp(ctx, l->logs));
 *         // log|det| = H W sum(s), a scalar added to every image's log-det
 *         double hw = (double)(self->in_shape[0] * self->in_shape[1]);
 *         return cf_flow_io_add_logdet(ctx, io, cf_scale(ctx, cf_sum(ctx, l->logs), hw));
 *     }
 *     static cf_status scale_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
 *     {   // off the tape (grad recording is off): any code, here ops again
 *         scale_layer *l = (scale_layer *)self;
 *         io->x = cf_mul(ctx, io->x, cf_exp(ctx, cf_scale(ctx, l->logs, -1.0)));
 *         return cf_ctx_status(ctx);
 *     }
 *     static double scale_flops(const cf_layer *self)
 *     {
 *         return 2.0 * (double)(self->in_shape[0] * self->in_shape[1] * self->in_shape[2]);
 *     }
 *     static const cf_layer_vtable scale_vt = {"scale", scale_forward, scale_inverse,
 *                                              scale_flops, NULL};  // NULL free: free(self)
 *
 *     static cf_layer *scale_create(const cf_layer_args *a)
 *     {
 *         scale_layer *l = cf_layer_alloc(sizeof *l, &scale_vt, a, a->in_shape);
 *         if (!l) return NULL;
 *         double init = cf_hparams_float(a->hp, "init");  // declared below, so present
 *         int64_t C = a->in_shape[2];
 *         l->logs = cf_layer_param(&l->base, a, "logs", 1, &C, cf_init_const(init));
 *         return l->logs ? &l->base : cf_layer_fail(&l->base);
 *     }
 *
 *     static const cf_hparam_spec scale_hparams[] = {
 *         {"init", CF_HP_FLOAT, .def = 0.0, .min = -10, .max = 10,
 *          .doc = "initial log-scale of every channel"},
 *     };
 *     const cf_layer_kind scale_kind = {
 *         .name = "scale", .summary = "y = x * exp(s), one learned log-scale per channel",
 *         .conventions = "logs[c] multiplies channel c of NHWC input by exp(logs[c])",
 *         .hparams = scale_hparams, .n_hparams = 1, .create = scale_create,
 *     };
 *
 *     // once, before use (a plugin does it in cf_plugin_init):
 *     cf_layer_kind_register(&scale_kind);
 *     // then by name, in code, in an architecture file, or from a checkpoint:
 *     cf_hparams hp = {0};
 *     cf_hparams_set_float(&hp, "init", 0.1);
 *     cf_flow_add(flow, cf_layer_create("scale", ps, "levels.0.steps.0.scale", shape, &hp, &rng));
 *
 * Check a new kind with cf_layer_check (cf_check.h) or `cincflow check --kind NAME`: it
 * compares the log-det with the dense Jacobian, the round trip with the input and the
 * gradients with finite differences.
 *
 * Ownership: a kind (and the hparam specs it points to) is borrowed by the registry for the
 * life of the process: make it static. A layer is owned by whoever created it until
 * cf_flow_add takes it; its tensors are owned by the cf_params set they were declared in.
 *
 * Not here: the flow container and the built-in model builder (cf_flow.h), architectures as
 * data (cf_arch.h).
 */
#ifndef CF_LAYER_H
#define CF_LAYER_H

#include <stdbool.h>
#include <stdint.h>

#include "cf_params.h"
#include "cf_rng.h"
#include "cf_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CF_FLOW_MAX_LATENTS 16
#define CF_LAYER_MAX_TENSORS 64
#define CF_NAME_MAX 96

/* ---- what layers pass along --------------------------------------------------------------
 * Forward fills logdet, logp and latents; inverse consumes latents. */
typedef struct cf_flow_io {
    cf_tensor *x;      /* (B, H, W, C): the current tensor */
    cf_tensor *logdet; /* (B): sum of the layers' log|det dz/dx| so far (forward) */
    cf_tensor *logp;   /* (B): log-density of the latents factored out so far (forward) */
    int n_latents;
    cf_tensor *latents[CF_FLOW_MAX_LATENTS]; /* forward: appended, in order of factoring out;
                                              * inverse: taken from the end; when none is left a
                                              * layer draws its latent from its prior */
    double temperature; /* inverse: standard deviations of drawn latents are scaled by this */
    cf_rng *rng;        /* inverse: draws latents; needed only when some are drawn */
    int64_t batch;      /* inverse: images to draw when no tensor gives the batch size */
} cf_flow_io;

/* io->logdet += term, a scalar (the same for every image) or (B); io->logdet is created when
 * NULL. On the tape when recording. Returns the context's status. */
cf_status cf_flow_io_add_logdet(cf_ctx *ctx, cf_flow_io *io, cf_tensor *term);
/* io->logp += term ((B)): for layers that factor latents out. */
cf_status cf_flow_io_add_logp(cf_ctx *ctx, cf_flow_io *io, cf_tensor *term);

/* ---- hyperparameters: a small typed record -------------------------------------------------
 * Keys are at most 31 characters of letters, digits and '_'; strings at most 63 bytes. A
 * record is a plain value (copy it with =); start from {0}. */
typedef enum cf_hp_type {
    CF_HP_INT = 0,    /* int64 */
    CF_HP_FLOAT = 1,  /* double, finite */
    CF_HP_STRING = 2, /* UTF-8 */
    CF_HP_BOOL = 3,
} cf_hp_type;

#define CF_HPARAMS_MAX 16
#define CF_HP_KEY_MAX 32
#define CF_HP_STRING_MAX 64

typedef struct cf_hparam {
    char key[CF_HP_KEY_MAX];
    cf_hp_type type;
    int64_t i;                 /* CF_HP_INT; CF_HP_BOOL (0 or 1) */
    double f;                  /* CF_HP_FLOAT */
    char s[CF_HP_STRING_MAX];  /* CF_HP_STRING */
} cf_hparam;

typedef struct cf_hparams {
    int n;
    cf_hparam items[CF_HPARAMS_MAX];
} cf_hparams;

/* Set key (replacing any earlier value of any type). CF_ERR_ARG for a bad key or a string
 * that is too long, CF_ERR_NOMEM when the record is full; the message names the key. */
cf_status cf_hparams_set_int(cf_hparams *hp, const char *key, int64_t value);
cf_status cf_hparams_set_float(cf_hparams *hp, const char *key, double value);
cf_status cf_hparams_set_string(cf_hparams *hp, const char *key, const char *value);
cf_status cf_hparams_set_bool(cf_hparams *hp, const char *key, bool value);
/* The entry for key, or NULL; borrowed from hp. */
const cf_hparam *cf_hparams_find(const cf_hparams *hp, const char *key);
/* Values of keys that must be there with that type (a kind's constructor reads its declared
 * hyperparameters, which the registry has filled in and checked): CF_ASSERT otherwise. The
 * string is borrowed from hp. An int is also read as a float. */
int64_t cf_hparams_int(const cf_hparams *hp, const char *key);
double cf_hparams_float(const cf_hparams *hp, const char *key);
const char *cf_hparams_string(const cf_hparams *hp, const char *key);
bool cf_hparams_bool(const cf_hparams *hp, const char *key);

/* A kind's declaration of one hyperparameter: its type, its default (used when a record leaves
 * it out), its range (numbers, inclusive; min == max == 0: any) or choices (strings, "a|b|c";
 * NULL: any), and one line of documentation. */
typedef struct cf_hparam_spec {
    const char *key;
    cf_hp_type type;
    double def;           /* default of a number or bool */
    const char *def_str;  /* default of a string */
    double min, max;
    const char *choices;
    const char *doc;
} cf_hparam_spec;

/* ---- the layer base ------------------------------------------------------------------------ */
typedef struct cf_layer cf_layer;
typedef struct cf_layer_kind cf_layer_kind;

typedef struct cf_layer_vtable {
    const char *kind; /* the kind's name, for messages */
    /* Forward on the tape: replaces io->x by the layer's output and adds its log|det| with
     * cf_flow_io_add_logdet (layers that factor latents out also append to io->latents and
     * add their log-density with cf_flow_io_add_logp). Only registered ops, so that backward
     * and recomputation work. Failures are also the context's status. */
    cf_status (*forward)(cf_layer *self, cf_ctx *ctx, cf_flow_io *io);
    /* Inverse, with grad recording off: replaces io->x by the layer's input. */
    cf_status (*inverse)(cf_layer *self, cf_ctx *ctx, cf_flow_io *io);
    /* Forward floating-point operations for one image (a multiply-add counts 2). */
    double (*flops)(const cf_layer *self);
    /* Frees what the layer allocated beyond itself, then the layer (not its tensors, which the
     * cf_params set owns). NULL: free(self). */
    void (*free)(cf_layer *self);
} cf_layer_vtable;

/* The base every layer starts with. Set by cf_layer_alloc / cf_layer_init and the tensor
 * declarations below; a kind may set n_convs, factors_out and n_learnable itself. */
struct cf_layer {
    const cf_layer_vtable *vt;
    const cf_layer_kind *kind;    /* set by cf_layer_create (NULL for a layer built by hand) */
    cf_hparams hp;                /* its hyperparameters, every declared key present */
    char name[CF_NAME_MAX];       /* dotted prefix of its tensors' names */
    int64_t in_shape[3];          /* (H, W, C) of one input image */
    int64_t out_shape[3];         /* (H, W, C) of one output image */
    int n_params, n_state;        /* the parameter and state walks: */
    cf_tensor *params[CF_LAYER_MAX_TENSORS]; /* trainable tensors (borrowed from the set) */
    cf_tensor *state[CF_LAYER_MAX_TENSORS];  /* saved, untrained tensors */
    int n_convs;                  /* invertible convolutions applied (1x1, masked) */
    bool factors_out;             /* touches io->latents and io->logp (split, prior) */
    bool terminal;                /* factors the whole tensor out (prior): a flow ends with
                                   * one such layer, which gives the density, and nothing
                                   * may follow it */
    int64_t n_learnable;          /* learnable scalars (masked entries excluded) */
};

/* What a kind's constructor receives (all borrowed for the call). */
typedef struct cf_layer_args {
    cf_params *ps;           /* where the layer declares its tensors */
    const char *name;        /* its dotted name ("levels.0.steps.3.conv") */
    int64_t in_shape[3];     /* (H, W, C) of the images it takes */
    const cf_hparams *hp;    /* checked against the kind's specs, defaults filled in */
    cf_rng *rng;             /* initialisation draws, in declaration order */
} cf_layer_args;

/* Allocates a zeroed layer struct of `size` bytes (at least sizeof(cf_layer), the base
 * first) and fills its base: vtable, name, shapes, and a copy of a->hp. Returns it owned, or
 * NULL with cf_last_error() naming the layer (name too long, out of memory). */
void *cf_layer_alloc(size_t size, const cf_layer_vtable *vt, const cf_layer_args *a,
                     const int64_t out_shape[3]);
/* Fills the base of a layer you allocated yourself; false (cf_last_error) when the name is
 * empty or too long (at most CF_NAME_MAX - 32 characters). */
bool cf_layer_init(cf_layer *l, const cf_layer_vtable *vt, const char *name,
                   const int64_t in_shape[3], const int64_t out_shape[3]);

/* How a declared tensor starts. The rng is a->rng, drawn in declaration order. */
typedef enum cf_init_kind {
    CF_INIT_KIND_CONST = 0,  /* every element a */
    CF_INIT_KIND_NORMAL = 1, /* N(a, b^2) */
    CF_INIT_KIND_UNIFORM = 2,/* U(a, b) */
    CF_INIT_KIND_CUSTOM = 3, /* left zero: the constructor writes the values itself */
} cf_init_kind;
typedef struct cf_init {
    cf_init_kind kind;
    double a, b;
} cf_init;
static inline cf_init cf_init_const(double v) { return (cf_init){CF_INIT_KIND_CONST, v, 0}; }
static inline cf_init cf_init_normal(double mean, double std)
{
    return (cf_init){CF_INIT_KIND_NORMAL, mean, std};
}
static inline cf_init cf_init_uniform(double lo, double hi)
{
    return (cf_init){CF_INIT_KIND_UNIFORM, lo, hi};
}
static inline cf_init cf_init_custom(void) { return (cf_init){CF_INIT_KIND_CUSTOM, 0, 0}; }

/* Declares "<layer name>.<suffix>" as a trainable parameter of shape (ndim, shape) in a->ps,
 * lists it in the layer's parameter walk and counts its elements as learnable, and
 * initialises it. Returns the tensor (borrowed from the set), or NULL with cf_last_error()
 * (duplicate name, out of memory). */
cf_tensor *cf_layer_param(cf_layer *l, const cf_layer_args *a, const char *suffix, int ndim,
                          const int64_t *shape, cf_init init);
/* The same for a state tensor: saved in checkpoints, not trained (actnorm's flag, ...). */
cf_tensor *cf_layer_state(cf_layer *l, const cf_layer_args *a, const char *suffix, int ndim,
                          const int64_t *shape, cf_init init);
/* For a constructor's failure path: frees l (through its vtable) and returns NULL, keeping
 * cf_last_error() as it was. */
cf_layer *cf_layer_fail(cf_layer *l);

/* ---- kinds and their registry ------------------------------------------------------------- */
struct cf_layer_kind {
    const char *name;        /* "cinc_conv": letters, digits, '_' */
    const char *summary;     /* one line: what it computes */
    /* What a reader of a checkpoint needs to redo the layer's math without this library:
     * index conventions, mask directions, channel orders. Stored with each layer. */
    const char *conventions;
    const cf_hparam_spec *hparams; /* the hyperparameters it takes (may be NULL) */
    int n_hparams;
    /* Builds a layer on a->in_shape from a->hp (complete and checked); its output shape is
     * the kind's to decide. Returns it owned, or NULL with cf_last_error() naming a->name and
     * what does not fit (a shape the kind cannot take, ...). */
    cf_layer *(*create)(const cf_layer_args *a);
    /* Where the kind comes from: NULL for the library's, else the plugin's name. Recorded in
     * checkpoints (as information only: loading never runs code named by a file). */
    const char *provider;
    /* Optional: a role the built-in model builder may fill with this kind, and its name
     * among the command line's choices (--conv cinc, --coupling quad). NULL: none. */
    const char *role;        /* "invconv" or "coupling" (coupling kinds take "hidden") */
    const char *choice;
};

/* Registers a kind (borrowed: keep it alive). CF_ERR_EXISTS when the name is taken,
 * CF_ERR_ARG for a malformed kind (no name or create, a bad spec); the message says which.
 * Thread-safe; the built-in kinds are registered first, on first use of the registry. */
cf_status cf_layer_kind_register(const cf_layer_kind *kind);
/* The kind of that name, or NULL. */
const cf_layer_kind *cf_layer_kind_find(const char *name);
/* Registered kinds, in order of registration (built-ins first). */
int cf_layer_kind_count(void);
const cf_layer_kind *cf_layer_kind_at(int i);
/* The kind filling a role with a given choice name ("coupling", "quad"), or NULL. */
const cf_layer_kind *cf_layer_kind_for_choice(const char *role, const char *choice);
/* The choices of a role in registration order, "a|b|c", in buf (always terminated). */
const char *cf_layer_kind_choices(const char *role, char *buf, size_t size);

/* Checks hp (NULL: empty) against kind's specs and returns the complete record in *out:
 * every declared key, defaults for the missing ones. CF_ERR_ARG, naming the layer, the kind
 * and the key: a key the kind does not declare, a value of another type (an int given for a
 * float is accepted), out of range, or not among the choices. */
cf_status cf_layer_kind_hparams(const cf_layer_kind *kind, const char *layer,
                                const cf_hparams *hp, cf_hparams *out);

/* Builds a layer of a registered kind: looks the kind up, completes and checks hp, and calls
 * its constructor with the rest. Returns the layer owned (cf_flow_add takes it), or NULL with
 * cf_last_error() naming the layer and the kind (CF_ERR_NOT_FOUND: no such kind). */
cf_layer *cf_layer_create(const char *kind, cf_params *ps, const char *name,
                          const int64_t in_shape[3], const cf_hparams *hp, cf_rng *rng);

/* Generic dispatch. */
cf_status cf_layer_forward(cf_layer *layer, cf_ctx *ctx, cf_flow_io *io);
cf_status cf_layer_inverse(cf_layer *layer, cf_ctx *ctx, cf_flow_io *io);
void cf_layer_free(cf_layer *layer); /* accepts NULL */

#ifdef __cplusplus
}
#endif
#endif
