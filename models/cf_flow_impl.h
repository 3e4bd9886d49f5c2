/* cf_flow_impl.h: the flow container's fields, shared by the three files of the flow (not
 * installed): flow.c (the container and the builder), flow_run.c (running the layers, with
 * recomputation, the objective, encoding, decoding, sampling) and flow_train.c (a training
 * step on micro-batches and threads). */
#ifndef CF_FLOW_IMPL_H
#define CF_FLOW_IMPL_H

#include "cf_models_impl.h"

struct cf_flow {
    cf_flow_config cfg;
    int64_t shape[3];
    cf_params *ps;
    cf_layer **layers;
    int n_layers, cap_layers;
    cf_ctx *scratch; /* runs one layer at a time with grad recording off (see run_layers) */
    bool recompute;  /* keep only step inputs on the tape (see run_segment) */
    bool rebuild;    /* with recompute: not even those, rebuilt by the inverses (see below) */
    cf_ctx *segment; /* where a step's forward is recomputed during backward */
    void *slot[2];   /* rebuild: the two buffers consecutive steps' outputs alternate in */
    size_t slot_bytes;
    void *pass[2];   /* grad-free passes: the two buffers consecutive layers' x alternate in */
    size_t pass_bytes[2];
    cf__reducer reducer; /* sums actnorm's statistics over processes (fn NULL: one) */
    /* Training on several threads: each thread's own context and (but the first's) gradient
     * buffer (see train_step_threads). */
    struct cf__worker {
        cf_ctx *ctx;
        void *grad;
        size_t grad_bytes;
    } *workers;
    int n_workers;
};

#endif
