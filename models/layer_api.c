/* layer_api.c: the public layer API of cf_layer.h: typed hyperparameter records, the layer
 * base (allocation, tensor declarations with their initialisers), the registry of layer kinds
 * (the built-in ones from cf_layer_list.h, registered on first use exactly as a user's), and
 * building a layer of a kind by name.
 *
 * Not here: what any kind computes (one file per kind), the flow container (flow.c).
 */
#include <ctype.h>
#include <pthread.h>

#include "cf_layer_list.h"
#include "cf_models_impl.h"
#include "cf_plugin.h"

/* ---- hyperparameter records --------------------------------------------------------------- */

static bool good_key(const char *key)
{
    if (!key || !*key || strlen(key) >= CF_HP_KEY_MAX) return false;
    for (const char *p = key; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_') return false;
    return true;
}

static cf_hparam *slot_for(cf_hparams *hp, const char *key, cf_status *st)
{
    if (!good_key(key)) {
        *st = cf_set_error(CF_ERR_ARG, "hyperparameter key '%s' is empty, too long (at most %d) "
                           "or not made of letters, digits and '_'", key ? key : "",
                           CF_HP_KEY_MAX - 1);
        return NULL;
    }
    for (int k = 0; k < hp->n; k++)
        if (strcmp(hp->items[k].key, key) == 0) return &hp->items[k];
    if (hp->n >= CF_HPARAMS_MAX) {
        *st = cf_set_error(CF_ERR_NOMEM, "hyperparameter '%s': the record is full (%d entries)",
                           key, CF_HPARAMS_MAX);
        return NULL;
    }
    cf_hparam *h = &hp->items[hp->n++];
    memset(h, 0, sizeof *h);
    snprintf(h->key, sizeof h->key, "%s", key);
    return h;
}

cf_status cf_hparams_set_int(cf_hparams *hp, const char *key, int64_t value)
{
    cf_status st = CF_OK;
    cf_hparam *h = slot_for(hp, key, &st);
    if (!h) return st;
    h->type = CF_HP_INT, h->i = value, h->f = 0, h->s[0] = 0;
    return CF_OK;
}

cf_status cf_hparams_set_float(cf_hparams *hp, const char *key, double value)
{
    if (!isfinite(value))
        return cf_set_error(CF_ERR_ARG, "hyperparameter '%s': %g is not finite", key, value);
    cf_status st = CF_OK;
    cf_hparam *h = slot_for(hp, key, &st);
    if (!h) return st;
    h->type = CF_HP_FLOAT, h->f = value, h->i = 0, h->s[0] = 0;
    return CF_OK;
}

cf_status cf_hparams_set_string(cf_hparams *hp, const char *key, const char *value)
{
    if (!value || strlen(value) >= CF_HP_STRING_MAX)
        return cf_set_error(CF_ERR_ARG, "hyperparameter '%s': the string is missing or longer "
                            "than %d bytes", key ? key : "", CF_HP_STRING_MAX - 1);
    cf_status st = CF_OK;
    cf_hparam *h = slot_for(hp, key, &st);
    if (!h) return st;
    h->type = CF_HP_STRING, h->i = 0, h->f = 0;
    snprintf(h->s, sizeof h->s, "%s", value);
    return CF_OK;
}

cf_status cf_hparams_set_bool(cf_hparams *hp, const char *key, bool value)
{
    cf_status st = CF_OK;
    cf_hparam *h = slot_for(hp, key, &st);
    if (!h) return st;
    h->type = CF_HP_BOOL, h->i = value ? 1 : 0, h->f = 0, h->s[0] = 0;
    return CF_OK;
}

const cf_hparam *cf_hparams_find(const cf_hparams *hp, const char *key)
{
    if (!hp || !key) return NULL;
    for (int k = 0; k < hp->n; k++)
        if (strcmp(hp->items[k].key, key) == 0) return &hp->items[k];
    return NULL;
}

static const cf_hparam *must_find(const cf_hparams *hp, const char *key, cf_hp_type type)
{
    const cf_hparam *h = cf_hparams_find(hp, key);
    CF_ASSERT(h != NULL, "hyperparameter '%s' is not in the record (declare it in the kind's "
              "specs)", key);
    CF_ASSERT(h->type == type || (type == CF_HP_FLOAT && h->type == CF_HP_INT),
              "hyperparameter '%s' has another type", key);
    return h;
}

int64_t cf_hparams_int(const cf_hparams *hp, const char *key)
{
    return must_find(hp, key, CF_HP_INT)->i;
}

double cf_hparams_float(const cf_hparams *hp, const char *key)
{
    const cf_hparam *h = must_find(hp, key, CF_HP_FLOAT);
    return h->type == CF_HP_INT ? (double)h->i : h->f;
}

const char *cf_hparams_string(const cf_hparams *hp, const char *key)
{
    return must_find(hp, key, CF_HP_STRING)->s;
}

bool cf_hparams_bool(const cf_hparams *hp, const char *key)
{
    return must_find(hp, key, CF_HP_BOOL)->i != 0;
}

/* ---- the layer base ----------------------------------------------------------------------- */

bool cf_layer_init(cf_layer *l, const cf_layer_vtable *vt, const char *name,
                   const int64_t in[3], const int64_t out[3])
{
    l->vt = vt;
    if (!name || !*name || strlen(name) >= CF_NAME_MAX - 32) {
        cf_set_error(CF_ERR_ARG, "layer name '%s' is empty or too long (at most %d characters)",
                     name ? name : "", CF_NAME_MAX - 32);
        return false;
    }
    snprintf(l->name, sizeof l->name, "%s", name);
    for (int d = 0; d < 3; d++) l->in_shape[d] = in[d], l->out_shape[d] = out[d];
    return true;
}

void *cf_layer_alloc(size_t size, const cf_layer_vtable *vt, const cf_layer_args *a,
                     const int64_t out_shape[3])
{
    CF_ASSERT(size >= sizeof(cf_layer), "a layer struct starts with cf_layer");
    cf_layer *l = calloc(1, size);
    if (!l) {
        cf_set_error(CF_ERR_NOMEM, "%s: out of memory", a->name ? a->name : "layer");
        return NULL;
    }
    if (!cf_layer_init(l, vt, a->name, a->in_shape, out_shape)) {
        free(l);
        return NULL;
    }
    if (a->hp) l->hp = *a->hp;
    return l;
}

static void apply_init(cf_tensor *t, cf_init init, cf_rng *rng)
{
    switch (init.kind) {
    case CF_INIT_KIND_CONST:
        if (init.a != 0.0)
            for (int64_t i = 0; i < t->numel; i++) cf_tensor_set(t, i, init.a);
        break;
    case CF_INIT_KIND_NORMAL:
        CF_ASSERT(rng != NULL, "a normal initialiser needs the constructor's rng");
        cf_tensor_fill_normal(t, rng, init.a, init.b);
        break;
    case CF_INIT_KIND_UNIFORM:
        CF_ASSERT(rng != NULL, "a uniform initialiser needs the constructor's rng");
        for (int64_t i = 0; i < t->numel; i++)
            cf_tensor_set(t, i, init.a + (init.b - init.a) * cf_rng_uniform(rng));
        break;
    case CF_INIT_KIND_CUSTOM: break;
    }
}

static cf_tensor *add_tensor(cf_layer *l, const cf_layer_args *a, const char *suffix, int ndim,
                             const int64_t *shape, cf_init init, bool trainable)
{
    char full[CF_NAME_MAX + 32];
    snprintf(full, sizeof full, "%s.%s", l->name, suffix);
    int *count = trainable ? &l->n_params : &l->n_state;
    if (*count >= CF_LAYER_MAX_TENSORS) {
        cf_set_error(CF_ERR_ARG, "layer '%s' declares more than %d %s tensors", l->name,
                     CF_LAYER_MAX_TENSORS, trainable ? "parameter" : "state");
        return NULL;
    }
    cf_tensor *t = trainable ? cf_params_add(a->ps, full, ndim, shape)
                             : cf_params_add_state(a->ps, full, ndim, shape);
    if (!t) return NULL;
    (trainable ? l->params : l->state)[(*count)++] = t;
    if (trainable) l->n_learnable += t->numel;
    apply_init(t, init, a->rng);
    return t;
}

cf_tensor *cf_layer_param(cf_layer *l, const cf_layer_args *a, const char *suffix, int ndim,
                          const int64_t *shape, cf_init init)
{
    return add_tensor(l, a, suffix, ndim, shape, init, true);
}

cf_tensor *cf_layer_state(cf_layer *l, const cf_layer_args *a, const char *suffix, int ndim,
                          const int64_t *shape, cf_init init)
{
    return add_tensor(l, a, suffix, ndim, shape, init, false);
}

void cf_layer_free(cf_layer *layer)
{
    if (!layer) return;
    if (layer->vt && layer->vt->free)
        layer->vt->free(layer);
    else
        free(layer);
}

cf_layer *cf_layer_fail(cf_layer *l)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", cf_last_error());
    cf_status st = CF_ERR_ARG;
    cf_layer_free(l);
    cf_set_error(st, "%s", msg);
    return NULL;
}

cf_status cf_layer_forward(cf_layer *layer, cf_ctx *ctx, cf_flow_io *io)
{
    if (cf_ctx_status(ctx) != CF_OK) return cf_ctx_status(ctx);
    return layer->vt->forward(layer, ctx, io);
}

cf_status cf_layer_inverse(cf_layer *layer, cf_ctx *ctx, cf_flow_io *io)
{
    if (cf_ctx_status(ctx) != CF_OK) return cf_ctx_status(ctx);
    bool old = cf_ctx_set_grad(ctx, false);
    cf_status st = layer->vt->inverse(layer, ctx, io);
    cf_ctx_set_grad(ctx, old);
    return st;
}

/* ---- the registry ------------------------------------------------------------------------- */

#define MAX_KINDS 256
static const cf_layer_kind *kinds[MAX_KINDS];
static const char *providers[MAX_KINDS]; /* the plugin that registered it, or NULL */
static int n_kinds;
/* Set by cf_plugin_load while a plugin's init runs (plugin.c). */
const char *cf__registering_plugin;
static pthread_mutex_t kinds_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t builtins_once = PTHREAD_ONCE_INIT;

static const char *type_name(cf_hp_type t)
{
    switch (t) {
    case CF_HP_INT: return "an integer";
    case CF_HP_FLOAT: return "a number";
    case CF_HP_STRING: return "a string";
    case CF_HP_BOOL: return "a bool";
    }
    return "?";
}

static int choice_index(const char *choices, const char *value)
{
    size_t len = strlen(value);
    int i = 0;
    for (const char *p = choices; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, value, n) == 0) return i;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

static cf_status check_kind(const cf_layer_kind *k)
{
    if (!k) return cf_set_error(CF_ERR_ARG, "cf_layer_kind_register: NULL kind");
    if (!good_key(k->name))
        return cf_set_error(CF_ERR_ARG, "cf_layer_kind_register: kind name '%s' is empty, too "
                            "long or not made of letters, digits and '_'", k->name ? k->name : "");
    if (!k->create)
        return cf_set_error(CF_ERR_ARG, "cf_layer_kind_register: kind '%s' has no create",
                            k->name);
    if (k->n_hparams < 0 || k->n_hparams > CF_HPARAMS_MAX || (k->n_hparams && !k->hparams))
        return cf_set_error(CF_ERR_ARG, "cf_layer_kind_register: kind '%s' declares %d "
                            "hyperparameters (0 to %d, with the specs)", k->name, k->n_hparams,
                            CF_HPARAMS_MAX);
    for (int i = 0; i < k->n_hparams; i++) {
        const cf_hparam_spec *s = &k->hparams[i];
        if (!good_key(s->key) || (unsigned)s->type > CF_HP_BOOL)
            return cf_set_error(CF_ERR_ARG, "cf_layer_kind_register: kind '%s': hyperparameter "
                                "%d has a bad key or type", k->name, i);
        for (int j = 0; j < i; j++)
            if (strcmp(k->hparams[j].key, s->key) == 0)
                return cf_set_error(CF_ERR_ARG, "cf_layer_kind_register: kind '%s' declares "
                                    "'%s' twice", k->name, s->key);
        if (s->type == CF_HP_STRING &&
            (!s->def_str || strlen(s->def_str) >= CF_HP_STRING_MAX ||
             (s->choices && choice_index(s->choices, s->def_str) < 0)))
            return cf_set_error(CF_ERR_ARG, "cf_layer_kind_register: kind '%s': string '%s' "
                                "needs a default among its choices", k->name, s->key);
    }
    return CF_OK;
}

static cf_status register_locked(const cf_layer_kind *k)
{
    cf_status st = check_kind(k);
    if (st != CF_OK) return st;
    for (int i = 0; i < n_kinds; i++)
        if (strcmp(kinds[i]->name, k->name) == 0)
            return cf_set_error(CF_ERR_EXISTS, "cf_layer_kind_register: a layer kind named '%s' "
                                "is already registered%s%s", k->name,
                                kinds[i]->provider ? " by " : "",
                                kinds[i]->provider ? kinds[i]->provider : "");
    if (n_kinds >= MAX_KINDS)
        return cf_set_error(CF_ERR_NOMEM, "cf_layer_kind_register: the registry is full (%d "
                            "kinds)", MAX_KINDS);
    providers[n_kinds] = cf__registering_plugin;
    kinds[n_kinds++] = k;
    return CF_OK;
}

#define CF__KIND_DECL(name) extern const cf_layer_kind cf__kind_##name;
CF_LAYER_LIST(CF__KIND_DECL)
#undef CF__KIND_DECL

static void init_builtins(void)
{
    pthread_mutex_lock(&kinds_lock);
#define CF__KIND_REG(name)                                                                     \
    CF_ASSERT(register_locked(&cf__kind_##name) == CF_OK, "built-in kind: %s", cf_last_error());
    CF_LAYER_LIST(CF__KIND_REG)
#undef CF__KIND_REG
    pthread_mutex_unlock(&kinds_lock);
}

cf_status cf_layer_kind_register(const cf_layer_kind *kind)
{
    pthread_once(&builtins_once, init_builtins);
    pthread_mutex_lock(&kinds_lock);
    cf_status st = register_locked(kind);
    pthread_mutex_unlock(&kinds_lock);
    return st;
}

const cf_layer_kind *cf_layer_kind_find(const char *name)
{
    pthread_once(&builtins_once, init_builtins);
    if (!name) return NULL;
    pthread_mutex_lock(&kinds_lock);
    const cf_layer_kind *found = NULL;
    for (int i = 0; i < n_kinds && !found; i++)
        if (strcmp(kinds[i]->name, name) == 0) found = kinds[i];
    pthread_mutex_unlock(&kinds_lock);
    return found;
}

int cf_layer_kind_count(void)
{
    pthread_once(&builtins_once, init_builtins);
    pthread_mutex_lock(&kinds_lock);
    int n = n_kinds;
    pthread_mutex_unlock(&kinds_lock);
    return n;
}

const cf_layer_kind *cf_layer_kind_at(int i)
{
    pthread_once(&builtins_once, init_builtins);
    pthread_mutex_lock(&kinds_lock);
    const cf_layer_kind *k = i >= 0 && i < n_kinds ? kinds[i] : NULL;
    pthread_mutex_unlock(&kinds_lock);
    return k;
}

const char *cf_layer_kind_provider(const cf_layer_kind *kind)
{
    if (!kind) return "cincflow";
    if (kind->provider) return kind->provider;
    pthread_mutex_lock(&kinds_lock);
    const char *p = NULL;
    for (int i = 0; i < n_kinds && !p; i++)
        if (kinds[i] == kind) p = providers[i];
    pthread_mutex_unlock(&kinds_lock);
    return p ? p : "cincflow";
}

const cf_layer_kind *cf_layer_kind_for_choice(const char *role, const char *choice)
{
    int n = cf_layer_kind_count();
    for (int i = 0; i < n; i++) {
        const cf_layer_kind *k = cf_layer_kind_at(i);
        if (k->role && k->choice && strcmp(k->role, role) == 0 && strcmp(k->choice, choice) == 0)
            return k;
    }
    return NULL;
}

const char *cf_layer_kind_choices(const char *role, char *buf, size_t size)
{
    size_t used = 0;
    if (size) buf[0] = 0;
    int n = cf_layer_kind_count();
    for (int i = 0; i < n; i++) {
        const cf_layer_kind *k = cf_layer_kind_at(i);
        if (!k->role || !k->choice || strcmp(k->role, role) != 0) continue;
        int w = snprintf(buf + used, size > used ? size - used : 0, "%s%s", used ? "|" : "",
                         k->choice);
        if (w > 0) used += (size_t)w;
        if (used >= size) break;
    }
    return buf;
}

cf_status cf_layer_kind_hparams(const cf_layer_kind *kind, const char *layer,
                                const cf_hparams *hp, cf_hparams *out)
{
    cf_hparams res = {0};
    const char *who = layer ? layer : "layer";
    if (hp)
        for (int k = 0; k < hp->n; k++) {
            int s = 0;
            while (s < kind->n_hparams && strcmp(kind->hparams[s].key, hp->items[k].key) != 0) s++;
            if (s == kind->n_hparams) {
                char known[512] = "";
                size_t used = 0;
                for (int j = 0; j < kind->n_hparams && used < sizeof known; j++) {
                    int w = snprintf(known + used, sizeof known - used, "%s%s", j ? ", " : "",
                                     kind->hparams[j].key);
                    if (w > 0) used += (size_t)w;
                }
                return cf_set_error(CF_ERR_ARG, "%s: layer kind '%s' has no hyperparameter '%s' "
                                    "(it takes: %s)", who, kind->name, hp->items[k].key,
                                    kind->n_hparams ? known : "none");
            }
        }
    for (int s = 0; s < kind->n_hparams; s++) {
        const cf_hparam_spec *spec = &kind->hparams[s];
        const cf_hparam *given = cf_hparams_find(hp, spec->key);
        cf_hparam v = {0};
        snprintf(v.key, sizeof v.key, "%s", spec->key);
        v.type = spec->type;
        if (!given) {
            if (spec->type == CF_HP_FLOAT) v.f = spec->def;
            else if (spec->type == CF_HP_STRING) snprintf(v.s, sizeof v.s, "%s", spec->def_str);
            else v.i = (int64_t)spec->def;
        } else {
            bool ok = given->type == spec->type ||
                      (spec->type == CF_HP_FLOAT && given->type == CF_HP_INT);
            if (!ok)
                return cf_set_error(CF_ERR_ARG, "%s: hyperparameter '%s' of layer kind '%s' "
                                    "must be %s", who, spec->key, kind->name,
                                    type_name(spec->type));
            if (spec->type == CF_HP_FLOAT)
                v.f = given->type == CF_HP_INT ? (double)given->i : given->f;
            else if (spec->type == CF_HP_STRING) memcpy(v.s, given->s, sizeof v.s);
            else v.i = given->i;
        }
        bool ranged = spec->min != 0 || spec->max != 0;
        if (spec->type == CF_HP_INT && ranged && ((double)v.i < spec->min || (double)v.i > spec->max))
            return cf_set_error(CF_ERR_ARG, "%s: hyperparameter '%s' of layer kind '%s' is %lld; "
                                "expected an integer from %.0f to %.0f", who, spec->key,
                                kind->name, (long long)v.i, spec->min, spec->max);
        if (spec->type == CF_HP_FLOAT && (!isfinite(v.f) || (ranged && (v.f < spec->min ||
                                                                       v.f > spec->max))))
            return cf_set_error(CF_ERR_ARG, "%s: hyperparameter '%s' of layer kind '%s' is %g; "
                                "expected a number from %g to %g", who, spec->key, kind->name,
                                v.f, spec->min, spec->max);
        if (spec->type == CF_HP_BOOL && v.i != 0 && v.i != 1)
            return cf_set_error(CF_ERR_ARG, "%s: hyperparameter '%s' of layer kind '%s' must be "
                                "true or false", who, spec->key, kind->name);
        if (spec->type == CF_HP_STRING && spec->choices && choice_index(spec->choices, v.s) < 0)
            return cf_set_error(CF_ERR_ARG, "%s: hyperparameter '%s' of layer kind '%s' is '%s'; "
                                "expected one of %s", who, spec->key, kind->name, v.s,
                                spec->choices);
        res.items[res.n++] = v;
    }
    *out = res;
    return CF_OK;
}

cf_layer *cf_layer_create(const char *kind_name, cf_params *ps, const char *name,
                          const int64_t in_shape[3], const cf_hparams *hp, cf_rng *rng)
{
    const cf_layer_kind *kind = cf_layer_kind_find(kind_name);
    if (!kind) {
        cf_set_error(CF_ERR_NOT_FOUND, "%s: no layer kind named '%s' is registered",
                     name ? name : "layer", kind_name ? kind_name : "");
        return NULL;
    }
    if (!name || !*name || strlen(name) >= CF_NAME_MAX - 32) {
        cf_set_error(CF_ERR_ARG, "layer name '%s' is empty or too long (at most %d characters)",
                     name ? name : "", CF_NAME_MAX - 32);
        return NULL;
    }
    for (int d = 0; d < 3; d++)
        if (in_shape[d] < 1 || in_shape[d] > (int64_t)1 << 30) {
            cf_set_error(CF_ERR_SHAPE, "%s: input shape %lld x %lld x %lld is empty or too "
                         "large", name, (long long)in_shape[0], (long long)in_shape[1],
                         (long long)in_shape[2]);
            return NULL;
        }
    cf_layer_args a = {.ps = ps, .name = name, .rng = rng};
    memcpy(a.in_shape, in_shape, sizeof a.in_shape);
    cf_hparams full;
    if (cf_layer_kind_hparams(kind, name, hp, &full) != CF_OK) return NULL;
    a.hp = &full;
    cf_layer *l = kind->create(&a);
    if (!l) return NULL;
    l->kind = kind;
    l->hp = full;
    for (int d = 0; d < 3; d++)
        CF_ASSERT(l->out_shape[d] >= 1, "layer kind '%s' left an empty output shape", kind->name);
    return l;
}
