/* checkpoint_meta.c: a checkpoint's metadata (cf_ckpt_meta): the configuration entries, their
 * checks, the architecture's JSON, and the configuration as one JSON object (libcjson).
 *
 * Not here: HDF5 (checkpoint_h5.c, checkpoint.c).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_checkpoint_impl.h"
#include "cf_io_impl.h"

/* ---- the meta's configuration ----------------------------------------------------------- */

cf_status cf__ck_check_key(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    bool ok = n > 0 && n <= MAX_KEY_BYTES && strcmp(key, "json") != 0 && strcmp(key, ".") != 0;
    for (size_t i = 0; ok && i < n; i++) ok = (unsigned char)key[i] >= 0x20 && key[i] != 0x7f;
    if (!ok)
        return cf_set_error(CF_ERR_ARG,
                            "checkpoint config key '%s': expected 1 to %d printable "
                            "characters, not \"json\" or \".\"",
                            key ? key : "(null)", MAX_KEY_BYTES);
    return CF_OK;
}

const cf_ckpt_entry *cf_ckpt_meta_find(const cf_ckpt_meta *meta, const char *key)
{
    for (int i = 0; i < meta->n_config; i++)
        if (strcmp(meta->config[i].key, key) == 0) return &meta->config[i];
    return NULL;
}

/* Sets key to a value of `type`; value_s is copied for strings. An existing key keeps its
 * place in the order. */
static cf_status set_entry(cf_ckpt_meta *meta, const char *key, cf_ckpt_type type, int64_t i,
                           double d, const char *value_s)
{
    cf_status st = cf__ck_check_key(key);
    if (st != CF_OK) return st;
    char *s = NULL;
    if (type == CF_CKPT_TYPE_STRING && !(s = strdup(value_s)))
        return cf_set_error(CF_ERR_NOMEM, "checkpoint config key '%s': out of memory", key);
    cf_ckpt_entry *e = (cf_ckpt_entry *)cf_ckpt_meta_find(meta, key);
    if (!e) {
        cf_ckpt_entry *grown = realloc(meta->config, (size_t)(meta->n_config + 1) * sizeof *e);
        char *copy = grown ? strdup(key) : NULL;
        if (grown) meta->config = grown;
        if (!copy) {
            free(s);
            return cf_set_error(CF_ERR_NOMEM, "checkpoint config key '%s': out of memory", key);
        }
        e = &meta->config[meta->n_config++];
        *e = (cf_ckpt_entry){.key = copy};
    }
    free(e->s);
    e->type = type;
    e->i = i;
    e->d = d;
    e->s = s;
    return CF_OK;
}

cf_status cf_ckpt_meta_set_int(cf_ckpt_meta *meta, const char *key, int64_t value)
{
    return set_entry(meta, key, CF_CKPT_TYPE_INT, value, 0, NULL);
}

cf_status cf_ckpt_meta_set_double(cf_ckpt_meta *meta, const char *key, double value)
{
    return set_entry(meta, key, CF_CKPT_TYPE_DOUBLE, 0, value, NULL);
}

cf_status cf_ckpt_meta_set_string(cf_ckpt_meta *meta, const char *key, const char *value)
{
    CF_ASSERT(value, "cf_ckpt_meta_set_string: NULL value for '%s'", key ? key : "(null)");
    return set_entry(meta, key, CF_CKPT_TYPE_STRING, 0, 0, value);
}

static const char *type_name(cf_ckpt_type type)
{
    return type == CF_CKPT_TYPE_INT      ? "an integer"
           : type == CF_CKPT_TYPE_DOUBLE ? "a number"
                                         : "a string";
}

static cf_status get_entry(const cf_ckpt_meta *meta, const char *key, cf_ckpt_type want,
                           const cf_ckpt_entry **out)
{
    *out = cf_ckpt_meta_find(meta, key);
    if (!*out) return cf_set_error(CF_ERR_NOT_FOUND, "checkpoint config has no '%s'", key);
    cf_ckpt_type have = (*out)->type;
    if (have != want && !(want == CF_CKPT_TYPE_DOUBLE && have == CF_CKPT_TYPE_INT))
        return cf_set_error(CF_ERR_DTYPE, "checkpoint config '%s' is %s, expected %s", key,
                            type_name(have), type_name(want));
    return CF_OK;
}

cf_status cf_ckpt_meta_get_int(const cf_ckpt_meta *meta, const char *key, int64_t *value)
{
    const cf_ckpt_entry *e;
    cf_status st = get_entry(meta, key, CF_CKPT_TYPE_INT, &e);
    if (st == CF_OK) *value = e->i;
    return st;
}

cf_status cf_ckpt_meta_get_double(const cf_ckpt_meta *meta, const char *key, double *value)
{
    const cf_ckpt_entry *e;
    cf_status st = get_entry(meta, key, CF_CKPT_TYPE_DOUBLE, &e);
    if (st == CF_OK) *value = e->type == CF_CKPT_TYPE_INT ? (double)e->i : e->d;
    return st;
}

cf_status cf_ckpt_meta_get_string(const cf_ckpt_meta *meta, const char *key, const char **value)
{
    const cf_ckpt_entry *e;
    cf_status st = get_entry(meta, key, CF_CKPT_TYPE_STRING, &e);
    if (st == CF_OK) *value = e->s;
    return st;
}

cf_status cf_ckpt_meta_set_arch(cf_ckpt_meta *meta, const char *json)
{
    char *copy = NULL;
    if (json && !(copy = strdup(json))) return cf_set_error(CF_ERR_NOMEM, "out of memory");
    free(meta->arch_json);
    meta->arch_json = copy;
    return CF_OK;
}

void cf_ckpt_meta_clear(cf_ckpt_meta *meta)
{
    if (!meta) return;
    for (int i = 0; i < meta->n_config; i++) {
        free(meta->config[i].key);
        free(meta->config[i].s);
    }
    free(meta->config);
    free(meta->arch_json);
    memset(meta, 0, sizeof *meta);
}

/* ---- JSON (libcjson) ---------------------------------------------------------------------- */

/* A double as the shortest text that reads back as the same value, always with a '.' or an
 * exponent so a JSON reader keeps it a float (cJSON would print 3.0 as 3, and int64 values
 * beyond 2^53 inexactly, so numbers go in as raw text); NaN and infinities as Python's json
 * module writes them. */
static cJSON *json_number(const cf_ckpt_entry *e)
{
    char buf[48];
    if (e->type == CF_CKPT_TYPE_INT) {
        snprintf(buf, sizeof buf, "%lld", (long long)e->i);
    } else if (!isfinite(e->d)) {
        snprintf(buf, sizeof buf, "%s", isnan(e->d) ? "NaN" : e->d > 0 ? "Infinity" : "-Infinity");
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, sizeof buf, "%.*g", prec, e->d);
            if (strtod(buf, NULL) == e->d) break;
        }
        if (!strpbrk(buf, ".e")) strcat(buf, ".0");
    }
    return cJSON_CreateRaw(buf);
}

char *cf__ck_config_json(const cf_ckpt_meta *meta)
{
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && meta && i < meta->n_config; i++) {
        const cf_ckpt_entry *e = &meta->config[i];
        cJSON *v = e->type == CF_CKPT_TYPE_STRING ? cJSON_CreateString(e->s) : json_number(e);
        if (!v || !cJSON_AddItemToObject(o, e->key, v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            return NULL;
        }
    }
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return text;
}

