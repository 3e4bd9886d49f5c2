/* arch.c: architectures as data (cf_arch.h): the list itself, the built-in multi-scale model
 * as a list, a flow's list, building a flow from a list, and the JSON form (on libcjson).
 *
 * Not here: checkpoints (io/), what any layer computes.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>

#include "cf_arch.h"
#include "cf_models_impl.h"
#include "cf_plugin.h"

cf_arch *cf_arch_new(const int64_t shape[3])
{
    for (int d = 0; d < 3; d++)
        if (shape[d] < 1 || shape[d] > (int64_t)1 << 20) {
            cf_set_error(CF_ERR_SHAPE, "architecture: image shape %lld x %lld x %lld is empty or "
                         "too large", (long long)shape[0], (long long)shape[1],
                         (long long)shape[2]);
            return NULL;
        }
    cf_arch *a = calloc(1, sizeof *a);
    if (!a) {
        cf_set_error(CF_ERR_NOMEM, "architecture: out of memory");
        return NULL;
    }
    memcpy(a->shape, shape, sizeof a->shape);
    return a;
}

void cf_arch_free(cf_arch *a)
{
    if (!a) return;
    free(a->layers);
    free(a);
}

static bool good_name(const char *s, size_t max, bool dots)
{
    if (!s || !*s || strlen(s) >= max) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-' || (dots && *p == '.')))
            return false;
    return !dots || (s[0] != '.' && s[strlen(s) - 1] != '.' && !strstr(s, ".."));
}

static cf_arch_layer *append(cf_arch *a, const char *name, const char *kind, const cf_hparams *hp)
{
    if (!good_name(name, CF_NAME_MAX - 32, true)) {
        cf_set_error(CF_ERR_ARG, "architecture: layer name '%s' is empty, longer than %d "
                     "characters, or not dotted words of letters, digits, '_' and '-'",
                     name ? name : "", CF_NAME_MAX - 33);
        return NULL;
    }
    if (!good_name(kind, CF_HP_KEY_MAX, false)) {
        cf_set_error(CF_ERR_ARG, "architecture: layer '%s': kind '%s' is empty, too long or not "
                     "a word of letters, digits and '_'", name, kind ? kind : "");
        return NULL;
    }
    /* Names also prefix the tensors, so one may not be a prefix of another at a dot either;
     * the parameter set refuses duplicate tensors, this refuses duplicate layers early. */
    for (int i = 0; i < a->n_layers; i++)
        if (strcmp(a->layers[i].name, name) == 0) {
            cf_set_error(CF_ERR_ARG, "architecture: two layers are named '%s'", name);
            return NULL;
        }
    if (a->n_layers >= CF_ARCH_MAX_LAYERS) {
        cf_set_error(CF_ERR_ARG, "architecture: more than %d layers", CF_ARCH_MAX_LAYERS);
        return NULL;
    }
    if (a->n_layers == a->cap_layers) {
        int cap = a->cap_layers ? 2 * a->cap_layers : 64;
        cf_arch_layer *l = realloc(a->layers, (size_t)cap * sizeof *l);
        if (!l) {
            cf_set_error(CF_ERR_NOMEM, "architecture: out of memory");
            return NULL;
        }
        a->layers = l, a->cap_layers = cap;
    }
    cf_arch_layer *l = &a->layers[a->n_layers++];
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "%s", name);
    snprintf(l->kind, sizeof l->kind, "%s", kind);
    if (hp) l->hp = *hp;
    return l;
}

cf_status cf_arch_add(cf_arch *a, const char *name, const char *kind, const cf_hparams *hp)
{
    return append(a, name, kind, hp) ? CF_OK : cf_set_error(CF_ERR_ARG, "%s", cf_last_error());
}

/* ---- the built-in model ------------------------------------------------------------------ */

static const cf_layer_kind *choose(const char *role, const char *name)
{
    if (!name) name = "";
    const cf_layer_kind *k = cf_layer_kind_for_choice(role, name);
    if (!k) {
        char choices[256];
        cf_set_error(CF_ERR_ARG, "flow: no %s kind is called '%s' (registered: %s)", role, name,
                     cf_layer_kind_choices(role, choices, sizeof choices));
    }
    return k;
}

cf_arch *cf_arch_builtin(const cf_flow_config *c)
{
    if (c->levels < 1 || c->levels > CF_FLOW_MAX_LATENTS - 1 || c->depth < 1 || c->hidden < 1 ||
        c->height < 1 || c->width < 1 || c->channels < 1) {
        cf_set_error(CF_ERR_ARG, "flow: levels %d (1 to %d), depth %d, width %lld and image "
                     "%lld x %lld x %lld must be positive", c->levels, CF_FLOW_MAX_LATENTS - 1,
                     c->depth, (long long)c->hidden, (long long)c->height, (long long)c->width,
                     (long long)c->channels);
        return NULL;
    }
    const cf_layer_kind *conv = choose("invconv", cf_flow_config_conv(c));
    const cf_layer_kind *coupling = conv ? choose("coupling", cf_flow_config_coupling(c)) : NULL;
    if (!coupling) return NULL;
    cf_arch *a = cf_arch_new((int64_t[]){c->height, c->width, c->channels});
    if (!a) return NULL;
    cf_hparams net = {0};
    cf_hparams_set_int(&net, "hidden", c->hidden);
    char name[CF_NAME_MAX];
    bool ok = true;
    for (int i = 0; ok && i < c->levels; i++) {
        snprintf(name, sizeof name, "levels.%d.squeeze", i);
        ok = append(a, name, "squeeze", NULL);
        for (int j = 0; ok && j < c->depth; j++) {
            snprintf(name, sizeof name, "levels.%d.steps.%d.actnorm", i, j);
            ok = append(a, name, "actnorm", NULL);
            snprintf(name, sizeof name, "levels.%d.steps.%d.conv", i, j);
            ok = ok && append(a, name, conv->name, NULL);
            snprintf(name, sizeof name, "levels.%d.steps.%d.coupling", i, j);
            ok = ok && append(a, name, coupling->name, &net);
        }
        snprintf(name, sizeof name, "levels.%d.split", i);
        if (ok && i < c->levels - 1) ok = append(a, name, "split", NULL);
    }
    if (!ok || !append(a, "prior", "prior", NULL)) {
        cf_arch_free(a);
        return NULL;
    }
    return a;
}

/* ---- flows and architectures ------------------------------------------------------------- */

cf_arch *cf_flow_arch(const cf_flow *flow)
{
    cf_arch *a = cf_arch_new(cf_flow_shape(flow));
    if (!a) return NULL;
    for (int i = 0; i < cf_flow_layer_count(flow); i++) {
        const cf_layer *l = cf_flow_layer((cf_flow *)flow, i);
        if (!l->kind) {
            cf_set_error(CF_ERR_STATE, "flow: layer '%s' (%s) was not made through a registered "
                         "kind (cf_layer_create), so the flow cannot be described as data",
                         l->name, l->vt->kind);
            cf_arch_free(a);
            return NULL;
        }
        cf_arch_layer *al = append(a, l->name, l->kind->name, &l->hp);
        if (!al) {
            cf_arch_free(a);
            return NULL;
        }
        snprintf(al->provider, sizeof al->provider, "%s", cf_layer_kind_provider(l->kind));
        al->has_shapes = true;
        memcpy(al->in, l->in_shape, sizeof al->in);
        memcpy(al->out, l->out_shape, sizeof al->out);
    }
    return a;
}

cf_flow *cf_flow_from_arch(const cf_arch *a, cf_dtype dtype, uint64_t seed)
{
    cf_flow *f = cf_flow_empty(a->shape, dtype);
    if (!f) return NULL;
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0x1a7e);
    const int64_t *shape = a->shape;
    for (int i = 0; i < a->n_layers; i++) {
        const cf_arch_layer *al = &a->layers[i];
        if (!cf_layer_kind_find(al->kind)) {
            if (al->provider[0] && strcmp(al->provider, "cincflow") != 0)
                cf_set_error(CF_ERR_NOT_FOUND, "layer '%s' has kind '%s', which is not "
                             "registered; the architecture says '%s' provides it (load that "
                             "plugin first: --plugin)", al->name, al->kind, al->provider);
            else
                cf_set_error(CF_ERR_NOT_FOUND, "layer '%s' has kind '%s', which is not "
                             "registered (a kind of another library version or a plugin?)",
                             al->name, al->kind);
            cf_flow_free(f);
            return NULL;
        }
        if (al->has_shapes && memcmp(al->in, shape, sizeof al->in) != 0) {
            cf_set_error(CF_ERR_SHAPE, "layer '%s': the architecture says it takes %lld x %lld x "
                         "%lld images, but it receives %lld x %lld x %lld", al->name,
                         (long long)al->in[0], (long long)al->in[1], (long long)al->in[2],
                         (long long)shape[0], (long long)shape[1], (long long)shape[2]);
            cf_flow_free(f);
            return NULL;
        }
        cf_layer *l = cf_layer_create(al->kind, cf_flow_params(f), al->name, shape, &al->hp, &rng);
        if (l && al->has_shapes && memcmp(al->out, l->out_shape, sizeof al->out) != 0) {
            cf_set_error(CF_ERR_SHAPE, "layer '%s': the architecture says it gives %lld x %lld x "
                         "%lld images, but the %s layer gives %lld x %lld x %lld", al->name,
                         (long long)al->out[0], (long long)al->out[1], (long long)al->out[2],
                         al->kind, (long long)l->out_shape[0], (long long)l->out_shape[1],
                         (long long)l->out_shape[2]);
            cf_layer_free(l);
            l = NULL;
        }
        if (cf_flow_add(f, l) != CF_OK) {
            cf_flow_free(f);
            return NULL;
        }
        shape = l->out_shape;
    }
    const cf_layer *last = a->n_layers ? cf_flow_layer(f, a->n_layers - 1) : NULL;
    if (!last || !last->terminal) {
        cf_set_error(CF_ERR_ARG, "the architecture's last layer%s%s%s does not factor the whole "
                     "tensor out, so the flow would have no density: end it with a prior (kind "
                     "'prior')", last ? " ('" : "", last ? last->name : "", last ? "')" : "");
        cf_flow_free(f);
        return NULL;
    }
    return f;
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static cJSON *shape_json(const int64_t s[3])
{
    cJSON *arr = cJSON_CreateArray();
    for (int d = 0; arr && d < 3; d++) cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)s[d]));
    return arr;
}

char *cf_arch_to_json(const cf_arch *a)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *kinds = root ? cJSON_CreateObject() : NULL;
    cJSON *layers = kinds ? cJSON_CreateArray() : NULL;
    if (!layers) {
        cJSON_Delete(root);
        cJSON_Delete(kinds);
        return NULL;
    }
    cJSON_AddStringToObject(root, "format", CF_ARCH_FORMAT);
    cJSON_AddNumberToObject(root, "version", CF_ARCH_VERSION);
    cJSON_AddItemToObject(root, "input", shape_json(a->shape));
    cJSON_AddItemToObject(root, "kinds", kinds);
    cJSON_AddItemToObject(root, "layers", layers);
    for (int i = 0; i < a->n_layers; i++) {
        const cf_arch_layer *al = &a->layers[i];
        cJSON *o = cJSON_CreateObject(), *hp = cJSON_CreateObject();
        if (!o || !hp) {
            cJSON_Delete(o), cJSON_Delete(hp), cJSON_Delete(root);
            return NULL;
        }
        cJSON_AddItemToArray(layers, o);
        cJSON_AddStringToObject(o, "name", al->name);
        cJSON_AddStringToObject(o, "kind", al->kind);
        cJSON_AddItemToObject(o, "hparams", hp);
        for (int j = 0; j < al->hp.n; j++) {
            const cf_hparam *h = &al->hp.items[j];
            switch (h->type) {
            case CF_HP_INT: cJSON_AddNumberToObject(hp, h->key, (double)h->i); break;
            case CF_HP_FLOAT: cJSON_AddNumberToObject(hp, h->key, h->f); break;
            case CF_HP_STRING: cJSON_AddStringToObject(hp, h->key, h->s); break;
            case CF_HP_BOOL: cJSON_AddBoolToObject(hp, h->key, h->i != 0); break;
            }
        }
        if (al->has_shapes) {
            cJSON_AddItemToObject(o, "in", shape_json(al->in));
            cJSON_AddItemToObject(o, "out", shape_json(al->out));
        }
        /* Each kind once: where it comes from and what a reader needs to redo it. */
        if (cJSON_GetObjectItemCaseSensitive(kinds, al->kind)) continue;
        const cf_layer_kind *k = cf_layer_kind_find(al->kind);
        const char *provider = al->provider[0] ? al->provider
                               : k             ? cf_layer_kind_provider(k)
                                               : NULL;
        cJSON *ko = cJSON_AddObjectToObject(kinds, al->kind);
        if (!ko) continue;
        if (provider) cJSON_AddStringToObject(ko, "provider", provider);
        if (k && k->summary) cJSON_AddStringToObject(ko, "summary", k->summary);
        if (k && k->conventions) cJSON_AddStringToObject(ko, "conventions", k->conventions);
        if (k && k->n_hparams) {
            cJSON *docs = cJSON_AddObjectToObject(ko, "hparams");
            for (int j = 0; docs && j < k->n_hparams; j++)
                if (k->hparams[j].doc)
                    cJSON_AddStringToObject(docs, k->hparams[j].key, k->hparams[j].doc);
        }
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

static cf_status json_fail(const char *source, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static cf_status json_fail(const char *source, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cf_set_error(CF_ERR_FORMAT, "%s: %s", source, msg);
}

/* An integral JSON number in [lo, hi] (cJSON keeps numbers as doubles, exact up to 2^53). */
static bool json_int(const cJSON *v, double lo, double hi, int64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < lo || d > hi) return false;
    *out = (int64_t)d;
    return true;
}

static bool json_shape(const cJSON *v, int64_t out[3])
{
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3) return false;
    for (int d = 0; d < 3; d++)
        if (!json_int(cJSON_GetArrayItem(v, d), 1, (double)(1 << 20), &out[d])) return false;
    return true;
}

static cf_status parse_hparams(const cJSON *obj, const char *source, const char *layer,
                               cf_hparams *hp)
{
    if (!obj) return CF_OK;
    if (!cJSON_IsObject(obj))
        return json_fail(source, "layer '%s': \"hparams\" must be an object", layer);
    const cJSON *v;
    cJSON_ArrayForEach(v, obj)
    {
        const char *key = v->string;
        cf_status st;
        int64_t i;
        if (cJSON_IsBool(v))
            st = cf_hparams_set_bool(hp, key, cJSON_IsTrue(v));
        else if (cJSON_IsString(v))
            st = cf_hparams_set_string(hp, key, v->valuestring);
        else if (json_int(v, -9007199254740992.0, 9007199254740992.0, &i))
            st = cf_hparams_set_int(hp, key, i);
        else if (cJSON_IsNumber(v) && isfinite(v->valuedouble))
            st = cf_hparams_set_float(hp, key, v->valuedouble);
        else
            return json_fail(source, "layer '%s': hyperparameter '%s' must be a finite number, "
                             "a string or a boolean", layer, key ? key : "");
        if (st != CF_OK) return json_fail(source, "layer '%s': %s", layer, cf_last_error());
    }
    return CF_OK;
}

cf_arch *cf_arch_from_json(const char *text, const char *source)
{
    if (!source) source = "architecture";
    cJSON *root = cJSON_Parse(text);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        json_fail(source, "not valid JSON (near byte %lld)",
                  at && at >= text ? (long long)(at - text) : -1LL);
        return NULL;
    }
    cf_arch *a = NULL;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(root, "input");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    int64_t version = 0, shape[3];
    if (!cJSON_IsObject(root)) {
        json_fail(source, "expected a JSON object with \"input\" and \"layers\"");
    } else if (fmt && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, CF_ARCH_FORMAT) != 0)) {
        json_fail(source, "\"format\" is not \"%s\"", CF_ARCH_FORMAT);
    } else if (ver && (!json_int(ver, 1, 1e9, &version) || version > CF_ARCH_VERSION)) {
        json_fail(source, "architecture version %s is not one this library reads (1 to %d)",
                  cJSON_IsNumber(ver) ? "given" : "malformed", CF_ARCH_VERSION);
    } else if (!json_shape(input, shape)) {
        json_fail(source, "\"input\" must be [H, W, C], three integers from 1 to %d", 1 << 20);
    } else if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) < 1) {
        json_fail(source, "\"layers\" must be a non-empty array");
    } else if (cJSON_GetArraySize(layers) > CF_ARCH_MAX_LAYERS) {
        json_fail(source, "more than %d layers", CF_ARCH_MAX_LAYERS);
    } else if ((a = cf_arch_new(shape)) != NULL) {
        const cJSON *o;
        int idx = 0;
        cJSON_ArrayForEach(o, layers)
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
            const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
            if (!cJSON_IsObject(o) || !cJSON_IsString(name) || !cJSON_IsString(kind)) {
                json_fail(source, "layer %d: expected an object with string fields \"name\" and "
                          "\"kind\"", idx);
                goto fail;
            }
            cf_hparams hp = {0};
            if (parse_hparams(cJSON_GetObjectItemCaseSensitive(o, "hparams"), source,
                              name->valuestring, &hp) != CF_OK)
                goto fail;
            cf_arch_layer *al = append(a, name->valuestring, kind->valuestring, &hp);
            if (!al) {
                json_fail(source, "layer %d: %s", idx, cf_last_error());
                goto fail;
            }
            const cJSON *in = cJSON_GetObjectItemCaseSensitive(o, "in");
            const cJSON *out = cJSON_GetObjectItemCaseSensitive(o, "out");
            if (in || out) {
                if (!json_shape(in, al->in) || !json_shape(out, al->out)) {
                    json_fail(source, "layer '%s': \"in\" and \"out\" must both be [H, W, C]",
                              al->name);
                    goto fail;
                }
                al->has_shapes = true;
            }
            const cJSON *prov = cJSON_GetObjectItemCaseSensitive(o, "provider");
            const cJSON *kinfo = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(root, "kinds"), al->kind);
            if (!cJSON_IsString(prov)) prov = cJSON_GetObjectItemCaseSensitive(kinfo, "provider");
            if (cJSON_IsString(prov))
                snprintf(al->provider, sizeof al->provider, "%s", prov->valuestring);
            idx++;
        }
    }
    cJSON_Delete(root);
    return a;
fail:
    cJSON_Delete(root);
    cf_arch_free(a);
    return NULL;
}

cf_arch *cf_arch_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        cf_set_error(errno == ENOENT ? CF_ERR_NOT_FOUND : CF_ERR_IO, "%s: cannot open (%s)", path,
                     strerror(errno));
        return NULL;
    }
    const size_t cap = (size_t)64 << 20;
    size_t size = 0, alloc = 1 << 16;
    char *buf = malloc(alloc);
    while (buf) {
        if (size + 1 >= alloc) {
            if (alloc >= cap) break;
            char *b = realloc(buf, alloc * 2);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b, alloc *= 2;
        }
        size_t got = fread(buf + size, 1, alloc - 1 - size, f);
        size += got;
        if (got == 0) break;
    }
    bool err = ferror(f) != 0, big = buf && size + 1 >= alloc && alloc >= cap;
    fclose(f);
    if (!buf || err || big) {
        cf_set_error(!buf ? CF_ERR_NOMEM : CF_ERR_IO, "%s: %s", path,
                     !buf ? "out of memory" : big ? "larger than 64 MB" : "read error");
        free(buf);
        return NULL;
    }
    buf[size] = 0;
    if (strlen(buf) != size) {
        free(buf);
        cf_set_error(CF_ERR_FORMAT, "%s: holds a NUL byte (not a JSON text)", path);
        return NULL;
    }
    cf_arch *a = cf_arch_from_json(buf, path);
    free(buf);
    return a;
}
