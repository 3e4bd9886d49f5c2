/* flow_memory.c: how much memory a model needs, estimated before it is built (from the built-in
 * model's settings) or from a built flow's layers (any architecture), so that a program can
 * refuse a model that would not fit before allocating it.
 *
 * The figures are calibrated on measured arenas (BENCHMARKS.md): each coupling network keeps
 * about 2.5 tensors of its width per image (the two hidden activations kept for backward, the
 * few gradients alive at once, dead ones recycled, and kernel scratch reused from kernel to
 * kernel); measured arenas of a plain step: 2.2 (the default model, 432 MB at 64 images; the
 * paper model, 9.0 GB at 64, 2.25 GB at 16). Every layer that keeps its shape keeps its input
 * and output (one with recomputation).
 *
 * Not here: what the machine has (the caller's sysconf), measuring (cf_ctx_arena_peak).
 */
#include "cf_flow_impl.h"

static bool is_affine(const cf_flow_config *c)
{
    const char *name = cf_flow_config_coupling(c);
    return name && strcmp(name, "affine") == 0;
}

double cf_flow_config_activation_bytes(const cf_flow_config *c, int64_t batch, bool recompute)
{
    double acts = 0, step_max = 0, inputs = 0, H = (double)c->height, W = (double)c->width;
    double C = (double)c->channels, nets = is_affine(c) ? 1 : 3;
    for (int l = 0; l < c->levels; l++) {
        H /= 2, W /= 2, C *= 4;
        double step = nets * 2.5 * H * W * (double)c->hidden;
        acts += (double)c->depth * step;
        inputs += (double)c->depth * 2 * H * W * C;
        if (step > step_max) step_max = step;
        C /= 2;
    }
    return 4.0 * (double)batch * (recompute ? step_max + inputs : acts + inputs);
}

double cf_flow_config_memory_bytes(const cf_flow_config *c, int64_t batch, bool training,
                                   bool recompute)
{
    double params = 0, H = (double)c->height, W = (double)c->width;
    double C = (double)c->channels, w = (double)c->hidden;
    for (int l = 0; l < c->levels; l++) {
        H /= 2, W /= 2, C *= 4;
        params += (double)c->depth * 3 * (9 * C * w + w * w + 9 * w * C + 9 * C * C);
        C /= 2;
    }
    double acts = training ? cf_flow_config_activation_bytes(c, batch, recompute)
                           : 4.0 * (double)batch * 16 * H * W * w;
    return params * 4 * (training ? 4 : 1) + acts;
}

double cf_flow_activation_bytes(const cf_flow *flow, int64_t batch, bool recompute)
{
    double acts = 0, step_max = 0, inputs = 0;
    for (int i = 0; i < flow->n_layers; i++) {
        const cf_layer *l = flow->layers[i];
        double hw = (double)(l->in_shape[0] * l->in_shape[1]);
        /* A layer with coupling networks: a "hidden" width, one network per conv1 weight. */
        const cf_hparam *hidden = cf_hparams_find(&l->hp, "hidden");
        if (hidden && hidden->type == CF_HP_INT) {
            int nets = 0;
            for (int k = 0; k < l->n_params; k++)
                nets += strstr(l->params[k]->name, "conv1.weight") != NULL;
            double step = (nets ? nets : 1) * 2.5 * hw * (double)hidden->i;
            acts += step;
            if (step > step_max) step_max = step;
        }
        if (!memcmp(l->in_shape, l->out_shape, sizeof l->in_shape) && !l->factors_out)
            inputs += (recompute ? 1.0 : 2.0) * hw * (double)l->in_shape[2];
    }
    return 4.0 * (double)batch * (recompute ? step_max + inputs : acts + inputs);
}

double cf_flow_memory_bytes(const cf_flow *flow, int64_t batch, bool training, bool recompute)
{
    double params = (double)cf_params_numel(flow->ps);
    double acts = cf_flow_activation_bytes(flow, batch, training ? recompute : true);
    return params * 4 * (training ? 4 : 1) + acts;
}
