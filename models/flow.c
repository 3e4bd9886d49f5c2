/* flow.c: a flow as an ordered list of layers (the container: adding, freeing, trimming its
 * working memory, its accessors and printout) and the Glow/CInC/Emerging builder (cf_flow_new,
 * which builds its architecture's list and then the flow from it).
 *
 * Not here: running the layers (flow_run.c), the training step (flow_train.c), the layers
 * themselves (one file each), data and dequantization (io/).
 */
#include "cf_arch.h"
#include "cf_flow_impl.h"

cf_flow *cf_flow_empty(const int64_t shape[3], cf_dtype dtype)
{
    if (shape[0] < 1 || shape[1] < 1 || shape[2] < 1) {
        cf_set_error(CF_ERR_SHAPE, "flow: image shape %lld x %lld x %lld is empty",
                     (long long)shape[0], (long long)shape[1], (long long)shape[2]);
        return NULL;
    }
    cf_flow *f = calloc(1, sizeof *f);
    if (!f || !(f->ps = cf_params_new(dtype))) {
        free(f);
        cf_set_error(CF_ERR_NOMEM, "flow: out of memory");
        return NULL;
    }
    for (int d = 0; d < 3; d++) f->shape[d] = shape[d];
    f->cfg.height = shape[0], f->cfg.width = shape[1], f->cfg.channels = shape[2];
    return f;
}

cf_status cf_flow_add(cf_flow *f, cf_layer *layer)
{
    /* A NULL layer is a failed constructor call passed straight in (cf_flow_add(f, ctor(...))):
     * its message stays as the constructor left it. */
    if (!layer) return CF_ERR_ARG; /* the constructor's failure is cf_last_error() already */
    if (f->n_layers && f->layers[f->n_layers - 1]->terminal) {
        const cf_layer *last = f->layers[f->n_layers - 1];
        cf_status st = cf_set_error(CF_ERR_ARG, "flow: layer '%s' cannot follow '%s' (%s), which "
                                    "factors the whole tensor out: a flow ends with its prior",
                                    layer->name, last->name, last->vt->kind);
        cf_layer_free(layer);
        return st;
    }
    const int64_t *prev = f->n_layers ? f->layers[f->n_layers - 1]->out_shape : f->shape;
    if (memcmp(prev, layer->in_shape, sizeof layer->in_shape) != 0) {
        cf_status st = cf_set_error(CF_ERR_SHAPE, "flow: layer '%s' takes %lld x %lld x %lld "
                                    "images but receives %lld x %lld x %lld", layer->name,
                                    (long long)layer->in_shape[0], (long long)layer->in_shape[1],
                                    (long long)layer->in_shape[2], (long long)prev[0],
                                    (long long)prev[1], (long long)prev[2]);
        cf_layer_free(layer);
        return st;
    }
    if (f->n_layers == f->cap_layers) {
        int cap = f->cap_layers ? 2 * f->cap_layers : 32;
        cf_layer **layers = realloc(f->layers, (size_t)cap * sizeof *layers);
        if (!layers) {
            cf_layer_free(layer);
            return cf_set_error(CF_ERR_NOMEM, "flow: out of memory");
        }
        f->layers = layers;
        f->cap_layers = cap;
    }
    f->layers[f->n_layers++] = layer;
    return CF_OK;
}

void cf_flow_trim(cf_flow *f)
{
    if (!f) return;
    cf_ctx_free(f->scratch);
    cf_ctx_free(f->segment);
    f->scratch = f->segment = NULL;
    free(f->slot[0]);
    free(f->slot[1]);
    f->slot[0] = f->slot[1] = NULL;
    f->slot_bytes = 0;
    for (int i = 0; i < 2; i++) {
        free(f->pass[i]);
        f->pass[i] = NULL;
        f->pass_bytes[i] = 0;
    }
    for (int i = 0; i < f->n_workers; i++) {
        cf_ctx_free(f->workers[i].ctx);
        free(f->workers[i].grad);
    }
    free(f->workers);
    f->workers = NULL;
    f->n_workers = 0;
}

void cf_flow_free(cf_flow *f)
{
    if (!f) return;
    cf_flow_trim(f);
    for (int i = 0; i < f->n_layers; i++) cf_layer_free(f->layers[i]);
    free(f->layers);
    cf_params_free(f->ps);
    free(f);
}

static cf_flow_config with_defaults(const cf_flow_config *cfg)
{
    cf_flow_config c = {0};
    if (cfg) c = *cfg;
    if (!c.height) c.height = 28;
    if (!c.width) c.width = 28;
    if (!c.channels) c.channels = 1;
    if (!c.levels) c.levels = 2;
    if (!c.depth) c.depth = 8;
    if (!c.hidden) c.hidden = 128;
    return c;
}

static const char *const conv_names[] = {"cinc", "1x1", "emerging"};
static const char *const coupling_names[] = {"quad", "affine"};

const char *cf_flow_config_conv(const cf_flow_config *c)
{
    return c->conv_name ? c->conv_name : (unsigned)c->conv < 3 ? conv_names[c->conv] : NULL;
}

const char *cf_flow_config_coupling(const cf_flow_config *c)
{
    return c->coupling_name            ? c->coupling_name
           : (unsigned)c->coupling < 2 ? coupling_names[c->coupling]
                                       : NULL;
}

cf_flow *cf_flow_new(const cf_flow_config *cfg_in, cf_dtype dtype)
{
    cf_flow_config cfg = with_defaults(cfg_in);
    if ((unsigned)cfg.coupling > CF_COUPLING_KIND_AFFINE || (unsigned)cfg.conv > CF_INVCONV_KIND_EMERGING) {
        cf_set_error(CF_ERR_ARG, "flow: unknown coupling %d or convolution %d",
                     (int)cfg.coupling, (int)cfg.conv);
        return NULL;
    }
    cf_arch *arch = cf_arch_builtin(&cfg);
    cf_flow *f = arch ? cf_flow_from_arch(arch, dtype, cfg.seed) : NULL;
    if (arch && !f) {
        /* Say which level failed: layer names start with it. */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", cf_last_error());
        cf_set_error(CF_ERR_SHAPE, "cannot build the %d-level flow on %lld x %lld x %lld images: "
                     "%s", cfg.levels, (long long)cfg.height, (long long)cfg.width,
                     (long long)cfg.channels, msg);
    }
    cf_arch_free(arch);
    if (!f) return NULL;
    /* The kinds' own (static) choice names, so the config holds no borrowed string. */
    cfg.conv_name = cf_layer_kind_for_choice("invconv", cf_flow_config_conv(&cfg))->choice;
    cfg.coupling_name =
        cf_layer_kind_for_choice("coupling", cf_flow_config_coupling(&cfg))->choice;
    for (int k = 0; k < 3; k++)
        if (strcmp(cfg.conv_name, conv_names[k]) == 0) cfg.conv = (cf_invconv_kind)k;
    for (int k = 0; k < 2; k++)
        if (strcmp(cfg.coupling_name, coupling_names[k]) == 0) cfg.coupling = (cf_coupling_kind)k;
    f->cfg = cfg;
    return f;
}

cf_params *cf_flow_params(cf_flow *f)
{
    return f->ps;
}
const cf_flow_config *cf_flow_config_of(const cf_flow *f)
{
    return &f->cfg;
}
int cf_flow_layer_count(const cf_flow *f)
{
    return f->n_layers;
}
cf_layer *cf_flow_layer(cf_flow *f, int i)
{
    CF_ASSERT(i >= 0 && i < f->n_layers, "layer %d of %d", i, f->n_layers);
    return f->layers[i];
}
const int64_t *cf_flow_shape(const cf_flow *f)
{
    return f->shape;
}

double cf_flow_flops(const cf_flow *f)
{
    double total = 0;
    for (int i = 0; i < f->n_layers; i++) total += f->layers[i]->vt->flops(f->layers[i]);
    return total;
}

/* A copy of t in ctx's arena (t NULL: NULL). */

void cf_flow_print(const cf_flow *f, FILE *out)
{
    int64_t total = 0;
    for (int i = 0; i < f->n_layers; i++) {
        const cf_layer *l = f->layers[i];
        fprintf(out, "%-36s %-16s %3lldx%-3lldx%-4lld -> %3lldx%-3lldx%-4lld params %lld\n",
                l->name, l->vt->kind, (long long)l->in_shape[0], (long long)l->in_shape[1],
                (long long)l->in_shape[2], (long long)l->out_shape[0],
                (long long)l->out_shape[1], (long long)l->out_shape[2],
                (long long)l->n_learnable);
        total += l->n_learnable;
    }
    fprintf(out, "params: %lld, forward GFLOP/image: %.3f\n", (long long)total,
            cf_flow_flops(f) / 1e9);
}
