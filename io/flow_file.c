/* flow_file.c: whole flows to and from checkpoints (cf_flow_file.h): the built-in model's
 * settings as metadata, saving with the architecture, rebuilding from it (or, for format 1
 * files, from the settings), and bits/dim over a data set.
 *
 * Not here: the HDF5 layout (checkpoint.c), architectures (models/arch.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_flow_file.h"

cf_status cf_flow_config_to_meta(const cf_flow_config *c, cf_ckpt_meta *meta)
{
    const char *conv = cf_flow_config_conv(c), *coupling = cf_flow_config_coupling(c);
    if (!conv || !coupling)
        return cf_set_error(CF_ERR_ARG, "config: unknown coupling %d or convolution %d",
                            (int)c->coupling, (int)c->conv);
    cf_status st = cf_ckpt_meta_set_string(meta, "model", "glow-multiscale");
    if (st == CF_OK) st = cf_ckpt_meta_set_int(meta, "height", c->height);
    if (st == CF_OK) st = cf_ckpt_meta_set_int(meta, "width", c->width);
    if (st == CF_OK) st = cf_ckpt_meta_set_int(meta, "channels", c->channels);
    if (st == CF_OK) st = cf_ckpt_meta_set_int(meta, "levels", c->levels);
    if (st == CF_OK) st = cf_ckpt_meta_set_int(meta, "depth", c->depth);
    if (st == CF_OK) st = cf_ckpt_meta_set_int(meta, "hidden", c->hidden);
    if (st == CF_OK) st = cf_ckpt_meta_set_string(meta, "coupling", coupling);
    if (st == CF_OK) st = cf_ckpt_meta_set_string(meta, "conv", conv);
    if (st == CF_OK) st = cf_ckpt_meta_set_int(meta, "seed", (int64_t)c->seed);
    return st;
}

cf_status cf_flow_config_from_meta(const cf_ckpt_meta *meta, cf_flow_config *c)
{
    if (!cf_ckpt_meta_find(meta, "levels") || !cf_ckpt_meta_find(meta, "conv"))
        return cf_set_error(CF_ERR_NOT_FOUND, "the configuration does not describe the "
                            "built-in model (no 'levels' or 'conv')");
    int64_t v[7];
    const char *keys[7] = {"height", "width", "channels", "levels", "depth", "hidden", "seed"};
    for (int k = 0; k < 7; k++) {
        cf_status st = cf_ckpt_meta_get_int(meta, keys[k], &v[k]);
        if (st != CF_OK) return cf_set_error(CF_ERR_FORMAT, "%s", cf_last_error());
    }
    const char *coupling, *conv;
    cf_status st = cf_ckpt_meta_get_string(meta, "coupling", &coupling);
    if (st == CF_OK) st = cf_ckpt_meta_get_string(meta, "conv", &conv);
    if (st != CF_OK) return cf_set_error(CF_ERR_FORMAT, "%s", cf_last_error());
    const cf_layer_kind *kc = cf_layer_kind_for_choice("coupling", coupling);
    const cf_layer_kind *kv = cf_layer_kind_for_choice("invconv", conv);
    if (!kc || !kv) {
        char choices[256];
        return cf_set_error(CF_ERR_FORMAT, "config: %s '%s' is not a registered %s kind (%s)",
                            !kc ? "coupling" : "conv", !kc ? coupling : conv,
                            !kc ? "coupling" : "invconv",
                            cf_layer_kind_choices(!kc ? "coupling" : "invconv", choices,
                                                  sizeof choices));
    }
    for (int k = 0; k < 6; k++)
        if (v[k] < 1 || v[k] > (int64_t)1 << 30)
            return cf_set_error(CF_ERR_FORMAT, "config: %s is %lld (expected 1 to %d)", keys[k],
                                (long long)v[k], 1 << 30);
    *c = (cf_flow_config){.height = v[0], .width = v[1], .channels = v[2], .levels = (int)v[3],
                          .depth = (int)v[4], .hidden = v[5], .seed = (uint64_t)v[6],
                          .conv_name = kv->choice, .coupling_name = kc->choice};
    return CF_OK;
}

cf_status cf_flow_save(const char *path, const cf_flow *flow, const cf_adam *opt,
                       const cf_ckpt_meta *meta_in)
{
    cf_arch *arch = cf_flow_arch(flow);
    if (!arch) return cf_set_error(CF_ERR_STATE, "%s: %s", path, cf_last_error());
    char *json = cf_arch_to_json(arch);
    cf_arch_free(arch);
    if (!json) return cf_set_error(CF_ERR_NOMEM, "%s: out of memory", path);
    /* A copy of the caller's meta with the architecture (and the builder's settings). */
    cf_ckpt_meta m = {0};
    const cf_ckpt_meta none = {0};
    const cf_ckpt_meta *in = meta_in ? meta_in : &none;
    m.step = in->step, m.epoch = in->epoch, m.rng = in->rng, m.has_rng = in->has_rng;
    m.has_data_state = in->has_data_state, m.data_state = in->data_state;
    cf_status st = CF_OK;
    for (int i = 0; i < in->n_config && st == CF_OK; i++) {
        const cf_ckpt_entry *e = &in->config[i];
        st = e->type == CF_CKPT_TYPE_INT      ? cf_ckpt_meta_set_int(&m, e->key, e->i)
             : e->type == CF_CKPT_TYPE_DOUBLE ? cf_ckpt_meta_set_double(&m, e->key, e->d)
                                              : cf_ckpt_meta_set_string(&m, e->key, e->s);
    }
    const cf_flow_config *cfg = cf_flow_config_of(flow);
    if (st == CF_OK && cfg->levels > 0 && !cf_ckpt_meta_find(in, "levels"))
        st = cf_flow_config_to_meta(cfg, &m);
    if (st == CF_OK) st = cf_ckpt_meta_set_arch(&m, json);
    free(json);
    if (st == CF_OK) st = cf_checkpoint_save(path, cf_flow_params((cf_flow *)flow), opt, &m);
    else st = cf_set_error(st, "%s: %s", path, cf_last_error());
    cf_ckpt_meta_clear(&m);
    return st;
}

/* Two architectures with the same layers (names, kinds, hyperparameters), in order. */
static bool same_layers(const cf_arch *a, const cf_arch *b)
{
    if (a->n_layers != b->n_layers || memcmp(a->shape, b->shape, sizeof a->shape) != 0)
        return false;
    for (int i = 0; i < a->n_layers; i++) {
        const cf_arch_layer *x = &a->layers[i], *y = &b->layers[i];
        if (strcmp(x->name, y->name) || strcmp(x->kind, y->kind) || x->hp.n != y->hp.n)
            return false;
        for (int k = 0; k < x->hp.n; k++) {
            const cf_hparam *p = &x->hp.items[k], *q = cf_hparams_find(&y->hp, p->key);
            if (!q || p->type != q->type || p->i != q->i || p->f != q->f || strcmp(p->s, q->s))
                return false;
        }
    }
    return true;
}

/* The flow a file's metadata describes, with fresh parameters. */
static cf_flow *build(const char *path, const cf_ckpt_meta *m, cf_dtype dtype)
{
    cf_flow_config cfg;
    cf_status cst = cf_flow_config_from_meta(m, &cfg);
    if (cst != CF_OK && cst != CF_ERR_NOT_FOUND) {
        cf_set_error(cst, "%s: %s", path, cf_last_error());
        return NULL;
    }
    if (!m->arch_json) { /* format 1: the built-in model's settings are all there is */
        if (cst != CF_OK) {
            cf_set_error(CF_ERR_FORMAT, "%s: the checkpoint has neither an architecture (/arch) "
                         "nor the built-in model's settings in /config", path);
            return NULL;
        }
        cf_flow *f = cf_flow_new(&cfg, dtype);
        if (!f) cf_set_error(CF_ERR_FORMAT, "%s: %s", path, cf_last_error());
        return f;
    }
    char source[1100];
    snprintf(source, sizeof source, "%s: /arch", path);
    cf_arch *arch = cf_arch_from_json(m->arch_json, source);
    if (!arch) return NULL;
    cf_flow *f = NULL;
    if (cst == CF_OK) { /* the built-in model, if the list is exactly its: keeps its settings */
        cf_arch *builtin = cf_arch_builtin(&cfg);
        if (builtin && same_layers(arch, builtin)) f = cf_flow_new(&cfg, dtype);
        cf_arch_free(builtin);
    }
    if (!f) {
        const cf_ckpt_entry *seed = cf_ckpt_meta_find(m, "seed");
        f = cf_flow_from_arch(arch, dtype, seed && seed->type == CF_CKPT_TYPE_INT ?
                                                (uint64_t)seed->i : 0);
        if (!f) {
            bool known = true;
            for (int i = 0; i < arch->n_layers && known; i++)
                known = cf_layer_kind_find(arch->layers[i].kind) != NULL;
            cf_set_error(known ? CF_ERR_FORMAT : CF_ERR_NOT_FOUND, "%s: %s", path,
                         cf_last_error());
        }
    }
    cf_arch_free(arch);
    return f;
}

cf_flow *cf_flow_load(const char *path, cf_dtype dtype, cf_ckpt_meta *meta)
{
    cf_ckpt_meta m = {0};
    if (cf_checkpoint_read_config(path, &m) != CF_OK) return NULL;
    cf_flow *f = build(path, &m, dtype);
    cf_ckpt_meta_clear(&m);
    if (!f) return NULL;
    if (cf_checkpoint_load(path, cf_flow_params(f), NULL, meta) != CF_OK) {
        cf_flow_free(f);
        return NULL;
    }
    return f;
}

cf_adam *cf_flow_load_optimizer(const char *path, cf_flow *flow)
{
    cf_ckpt_meta m = {0};
    if (cf_checkpoint_read_config(path, &m) != CF_OK) return NULL;
    if (!m.has_optimizer) {
        cf_ckpt_meta_clear(&m);
        cf_set_error(CF_ERR_STATE, "%s: the checkpoint holds no optimizer state", path);
        return NULL;
    }
    cf_adam *opt = cf_adam_new(cf_flow_params(flow), &m.optimizer);
    cf_ckpt_meta_clear(&m);
    if (!opt) return NULL;
    if (cf_checkpoint_load(path, cf_flow_params(flow), opt, NULL) != CF_OK) {
        cf_adam_free(opt);
        return NULL;
    }
    return opt;
}

cf_status cf_flow_eval_bpd(cf_flow *flow, const cf_dataset *ds, int64_t limit, int64_t batch,
                           cf_dequant dequant, uint64_t seed, double *bpd)
{
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    const int64_t *shape = cf_flow_shape(flow);
    if (shape[0] != h || shape[1] != w || shape[2] != c)
        return cf_set_error(CF_ERR_SHAPE, "the flow takes %lldx%lldx%lld images, the data set "
                            "holds %dx%dx%d", (long long)shape[0], (long long)shape[1],
                            (long long)shape[2], h, w, c);
    if (batch < 1) return cf_set_error(CF_ERR_ARG, "batch %lld (at least 1)", (long long)batch);
    int64_t n = cf_dataset_count(ds);
    if (limit > 0 && limit < n) n = limit;
    cf_ctx *ctx = cf_ctx_new(0);
    if (!ctx) return cf_set_error(CF_ERR_NOMEM, "out of memory");
    cf_ctx_set_grad(ctx, false);
    cf_rng rng;
    cf_rng_seed(&rng, seed, 0xe7a1);
    double total = 0;
    cf_status st = CF_OK;
    for (int64_t first = 0; first < n && st == CF_OK; first += batch) {
        int64_t b = first + batch <= n ? batch : n - first;
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, b, h, w, c);
        st = x ? cf_dataset_fill(ds, first, x, dequant, &rng) : cf_ctx_status(ctx);
        cf_tensor *per = st == CF_OK ? cf_flow_bpd_per_image(flow, ctx,
                                                             cf_flow_log_prob(flow, ctx, x, NULL))
                                     : NULL;
        if (st == CF_OK && !per)
            st = cf_set_error(cf_ctx_status(ctx), "images %lld to %lld: %s", (long long)first,
                              (long long)(first + b - 1), cf_ctx_error(ctx));
        for (int64_t i = 0; st == CF_OK && i < b; i++) total += cf_tensor_get(per, i);
        cf_ctx_reset(ctx);
    }
    cf_ctx_free(ctx);
    *bpd = n ? total / (double)n : NAN;
    return st;
}
