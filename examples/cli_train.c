/* cli_train.c: `cincflow train`, maximum-likelihood training of a flow on 8-bit images.
 *
 * One step: a batch, uniformly dequantized (x = k/256 - 0.5 + U(0, 1/256)); the mean bits/dim
 * of the batch as the loss; backward; one optimizer update. Actnorm layers take their
 * data-dependent initialisation from --init-images images before the first step. A step whose
 * loss or gradient is not finite changes nothing and is counted; --max-skips of them in a row
 * stop training with an error, leaving the last checkpoint as it was. SIGINT and SIGTERM
 * finish the current step, write the checkpoint and exit with status 130.
 *
 * --steps is the total number of steps (a resumed run continues up to it), --epochs the total
 * number of epochs, --minutes the wall-clock budget of this run; training stops at the first
 * reached. A resumed run restores parameters, optimizer moments, step, data order and noise,
 * so 2N steps in one run and N + N with a resume end with identical parameters.
 *
 * Many processes (`mpirun -np R cincflow train ...`, see cli_mpi.h): data parallelism. --batch
 * is each rank's; the batcher gives rank r its part of each step's R x batch images (so R ranks
 * with batch B train exactly as one process with batch R B, noise included), and each step
 * sums the gradients with one all-reduce over the flat gradient buffer and divides by R before
 * the optimizer, whose clipping and non-finite check then see the same gradient on every rank.
 * The loss reported is the mean over ranks; a second, four-value all-reduce per step carries
 * the losses and the ranks' wishes to stop (time budget, signals), so every rank skips and
 * stops at the same step. Actnorm's initialisation sums its statistics over the ranks (each
 * takes init-images / R of the init images), after which rank 0's parameters are broadcast.
 * Rank 0 alone prints, evaluates, writes the log and the checkpoints; on --resume every rank
 * reads the checkpoint, whose data state (epoch, position in the epoch's order, noise key) is
 * the same for all ranks. A failure only one rank sees ends the whole job (MPI_Abort).
 *
 * Not here: the model (models/), data and checkpoints (io/), MPI itself (cli_mpi.c).
 */
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "cli_mpi.h"

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

typedef struct train_opts {
    const char *data, *checkpoint, *resume, *log, *arch;
    cli_model model;
    bool shape_given;
    int optimizer;
    double lr, clip, minutes, beta1, beta2;
    int64_t warmup, batch, steps, epochs, seed, checkpoint_every, eval_every, eval_limit;
    int64_t init_images, max_skips, threads, print_every;
    int recompute; /* auto, on, off, rebuild */
    int64_t micro_batch; /* 0: CF_FLOW_MICRO_PER_THREAD per thread */
} train_opts;

/* Actnorm's data-dependent initialisation: one forward, grad recording off, on a batch of n
 * images; with R ranks each takes n / R of them (the first step of a batcher over R ranks) and
 * the flow's reducer sums the statistics. */
static cf_status init_actnorm(cf_flow *flow, cf_ctx *ctx, const cf_dataset *ds, int64_t n,
                              uint64_t seed, int rank, int size)
{
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    if (n > cf_dataset_count(ds)) n = cf_dataset_count(ds);
    n /= size;
    cf_batcher *b = cf_batcher_new(ds, &(cf_batcher_opts){.batch = n, .seed = seed ^ 0x1a17,
                                                          .rank = rank, .n_ranks = size});
    if (!b) return cf_ctx_fail(ctx, CF_ERR_ARG, "%s", cf_last_error());
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, n, h, w, c);
    cf_status st = x ? cf_batcher_next(b, x, NULL, NULL) : cf_ctx_status(ctx);
    cf_batcher_free(b);
    if (st != CF_OK) return st;
    bool old = cf_ctx_set_grad(ctx, false);
    cf_flow_log_prob(flow, ctx, x, NULL);
    cf_ctx_set_grad(ctx, old);
    st = cf_ctx_status(ctx);
    cf_ctx_reset(ctx);
    return st;
}

/* Every rank takes rank 0's parameters and state (identical already, by construction: this
 * guards against any rank-dependent rounding of the reductions). */
static cf_status sync_params(cf_params *ps)
{
    cf_status st = cli_mpi_bcast(cf_params_data(ps), cf_params_flat_numel(ps), cf_params_dtype(ps));
    for (int i = 0; st == CF_OK && i < cf_params_state_count(ps); i++) {
        cf_tensor *t = cf_params_state_at(ps, i);
        st = cli_mpi_bcast(t->data, (size_t)t->numel, t->dtype);
    }
    return st;
}

/* The mean over ranks of the gradients: one all-reduce over the flat buffer, then / size. */
static cf_status average_gradients(cf_params *ps, int size)
{
    size_t n = cf_params_flat_numel(ps);
    cf_status st = cli_mpi_sum(cf_params_grad(ps), n, cf_params_dtype(ps));
    if (st != CF_OK) return st;
    if (cf_params_dtype(ps) == CF_F32) {
        float *g = cf_params_grad(ps), inv = 1.0f / (float)size;
        for (size_t i = 0; i < n; i++) g[i] *= inv;
    } else {
        double *g = cf_params_grad(ps), inv = 1.0 / (double)size;
        for (size_t i = 0; i < n; i++) g[i] *= inv;
    }
    return CF_OK;
}

static cf_status save(const char *path, cf_flow *flow, cf_adam *opt, cf_batcher *b,
                      int64_t step, const char *data)
{
    cf_ckpt_meta meta = {0};
    meta.step = step;
    meta.epoch = cf_batcher_get_state(b).epoch;
    meta.has_data_state = true;
    meta.data_state = cf_batcher_get_state(b);
    cf_status st = cf_ckpt_meta_set_string(&meta, "data", data);
    if (st == CF_OK) st = cf_flow_save(path, flow, opt, &meta);
    cf_ckpt_meta_clear(&meta);
    return st;
}

static void progress(bool tty, int64_t step, int64_t total, double bpd, double ips, double eta)
{
    if (tty) {
        int width = 24, done = total > 0 ? (int)((double)width * (double)step / (double)total) : 0;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r[%s] step %lld", bar, (long long)step);
        if (total > 0) fprintf(stderr, "/%lld", (long long)total);
        fprintf(stderr, "  bpd %.4f  %.1f img/s", bpd, ips);
        if (eta >= 0) fprintf(stderr, "  ETA %dm%02ds", (int)(eta / 60), (int)fmod(eta, 60));
        fprintf(stderr, "   ");
        fflush(stderr);
    } else {
        printf("step %lld  bpd %.4f  %.1f img/s\n", (long long)step, bpd, ips);
        fflush(stdout);
    }
}

/* The command on this rank of size; *agreed tells a failure every rank reached together (so
 * no rank needs ending by force) from one this rank alone saw. */
static int train(int argc, char **argv, int rank, int size, bool *agreed)
{
    bool lead = rank == 0; /* prints, evaluates, logs and checkpoints */
    train_opts o = {.data = "fashion-mnist", .model = cli_model_defaults(), .lr = 1e-3,
                    .clip = 50, .beta1 = 0.9, .beta2 = 0.999, .warmup = 500, .batch = 64,
                    .seed = 1, .checkpoint_every = 500, .init_images = 512, .max_skips = 20,
                    .print_every = 50};
    cli_flag flags[40] = {
        {"--data", CLI_STRING, &o.data, 0, 0, NULL, "idx:FILE, fashion-mnist, cifar10:DIR, png:DIR or synthetic:HxWxC[:N]"},
        {"--optimizer", CLI_CHOICE, &o.optimizer, 0, 0, "adam|adamw|adamax", "optimizer (default adam)"},
        {"--lr", CLI_DOUBLE, &o.lr, 1e-12, 10, NULL, "learning rate (default 1e-3)"},
        {"--beta1", CLI_DOUBLE, &o.beta1, 0, 0.999999, NULL, "Adam beta1 (default 0.9)"},
        {"--beta2", CLI_DOUBLE, &o.beta2, 0, 0.999999999, NULL, "Adam beta2 (default 0.999)"},
        {"--warmup", CLI_INT, &o.warmup, 0, 1e9, NULL, "linear warmup steps (default 500)"},
        {"--batch", CLI_INT, &o.batch, 1, 65536, NULL, "images per step, on each rank under mpirun (default 64)"},
        {"--clip", CLI_DOUBLE, &o.clip, 0, 1e12, NULL, "gradient-norm clip, 0 for none (default 50)"},
        {"--steps", CLI_INT, &o.steps, 1, 1e12, NULL, "train up to this step count"},
        {"--epochs", CLI_INT, &o.epochs, 1, 1e9, NULL, "train up to this many epochs"},
        {"--minutes", CLI_DOUBLE, &o.minutes, 0.001, 1e7, NULL, "wall-clock budget of this run"},
        {"--seed", CLI_INT, &o.seed, 0, 9.2e18, NULL, "initialisation, data order and noise (default 1)"},
        {"--checkpoint", CLI_STRING, &o.checkpoint, 0, 0, NULL, "checkpoint file written periodically and at the end"},
        {"--checkpoint-every", CLI_INT, &o.checkpoint_every, 1, 1e12, NULL, "steps between checkpoints (default 500)"},
        {"--resume", CLI_STRING, &o.resume, 0, 0, NULL, "continue from this checkpoint"},
        {"--arch", CLI_STRING, &o.arch, 0, 0, NULL, "train this architecture (JSON, see `cincflow arch`) instead of the model flags' one"},
        {"--log", CLI_STRING, &o.log, 0, 0, NULL, "CSV log, one line per step"},
        {"--eval-every", CLI_INT, &o.eval_every, 1, 1e12, NULL, "steps between test evaluations"},
        {"--eval-limit", CLI_INT, &o.eval_limit, 1, 1e12, NULL, "test images per evaluation (default all)"},
        {"--init-images", CLI_INT, &o.init_images, 1, 1e6, NULL, "images for actnorm's initialisation, over all ranks (default 512)"},
        {"--max-skips", CLI_INT, &o.max_skips, 1, 1e9, NULL, "non-finite steps in a row before stopping (default 20)"},
        {"--threads", CLI_INT, &o.threads, 1, 4096, NULL, "threads (default all cores)"},
        {"--print-every", CLI_INT, &o.print_every, 1, 1e12, NULL, "steps between progress lines when not on a terminal (default 50)"},
        {"--recompute", CLI_CHOICE, &o.recompute, 0, 0, "auto|on|off|rebuild", "keep one activation per step and recompute during backward (auto: when activations would pass 4 GB; rebuild: not even that, each step's input rebuilt with the inverses)"},
        {"--micro-batch", CLI_INT, &o.micro_batch, 1, 65536, NULL, "images per forward and backward pass within a step, the step's gradient added up over its batch (default 16 per thread; the batch size or more: all at once)"},
    };
    int n = 25;
    n += cli_model_flags(flags + n, &o.model);
    int rc = cli_begin("train", "[options]", argc, argv, flags, n);
    if (rc >= 0) return rc;
    const char *model_flag = NULL;
    for (int i = 0; i < argc; i++) {
        o.shape_given |= strcmp(argv[i], "--shape") == 0;
        for (int k = 25; k < n && !model_flag; k++)
            if (strcmp(argv[i], flags[k].name) == 0) model_flag = flags[k].name;
    }
    if (o.arch && (o.resume || model_flag)) {
        fprintf(stderr, "cincflow train: --arch gives the model; it cannot go with %s\n",
                o.resume ? "--resume (the model is the checkpoint's)" : model_flag);
        return 2;
    }
    cf_arch *arch = NULL;
    if (o.arch && !(arch = cf_arch_read_file(o.arch))) {
        fprintf(stderr, "cincflow train: --arch %s\n", cf_last_error());
        return 2;
    }
    if (!o.steps && !o.epochs && !o.minutes) {
        fprintf(stderr, "cincflow train: say how long to train: --steps, --epochs or --minutes\n");
        return 2;
    }
    if (!o.threads && size > 1 && !getenv("OMP_NUM_THREADS")) /* share the cores */
        o.threads = omp_get_num_procs() / cli_mpi_local_size() > 0
                        ? omp_get_num_procs() / cli_mpi_local_size()
                        : 1;
    if (o.threads) omp_set_num_threads((int)o.threads);

    cf_dataset *ds = NULL, *test = NULL;
    /* Leaves before training starts: what was made so far is given back. */
#define EARLY(rc)                                                                              \
    do {                                                                                       \
        cf_dataset_free(ds);                                                                   \
        cf_dataset_free(test);                                                                 \
        cf_arch_free(arch);                                                                    \
        return (rc);                                                                           \
    } while (0)
    ds = cf_dataset_open(o.data, "train");
    if (!ds) {
        fprintf(stderr, "cincflow train: --data %s: %s\n", o.data, cf_last_error());
        EARLY(1);
    }
    test = o.eval_every ? cf_dataset_open(o.data, "test") : NULL;
    if (o.eval_every && !test) {
        fprintf(stderr, "cincflow train: --eval-every needs a test split: %s\n", cf_last_error());
        EARLY(1);
    }
    int h, w, c;
    cf_dataset_shape(ds, &h, &w, &c);
    if (o.shape_given && (o.model.shape[0] != h || o.model.shape[1] != w || o.model.shape[2] != c)) {
        fprintf(stderr, "cincflow train: --shape %lldx%lldx%lld, but --data %s holds %dx%dx%d "
                        "images\n", (long long)o.model.shape[0], (long long)o.model.shape[1],
                (long long)o.model.shape[2], o.data, h, w, c);
        EARLY(2);
    }
    o.model.shape[0] = h, o.model.shape[1] = w, o.model.shape[2] = c;
    cf_flow_config cfg = cli_model_config(&o.model);
    cfg.seed = (uint64_t)o.seed;
    cf_ckpt_meta meta = {0};
    bool builtin = !arch;
    if (o.resume) { /* the model is the checkpoint's: the built-in one, or its architecture */
        cf_status st = cf_checkpoint_read_config(o.resume, &meta);
        if (st == CF_OK) {
            st = cf_flow_config_from_meta(&meta, &cfg);
            builtin = st == CF_OK;
            if (st == CF_ERR_NOT_FOUND && meta.arch_json) st = CF_OK;
        }
        cf_ckpt_meta_clear(&meta);
        if (st != CF_OK) {
            fprintf(stderr, "cincflow train: --resume %s: %s\n", o.resume, cf_last_error());
            EARLY(1);
        }
    }
    if (arch && (arch->shape[0] != h || arch->shape[1] != w || arch->shape[2] != c)) {
        fprintf(stderr, "cincflow train: --arch %s takes %lldx%lldx%lld images, but --data %s "
                        "holds %dx%dx%d\n", o.arch, (long long)arch->shape[0],
                (long long)arch->shape[1], (long long)arch->shape[2], o.data, h, w, c);
        EARLY(2);
    }
    /* Activations are those of one micro-batch (by default CF_FLOW_MICRO_PER_THREAD images
     * per thread). */
    if (!o.micro_batch) o.micro_batch = CF_FLOW_MICRO_PER_THREAD * omp_get_max_threads();
    const int64_t pass = o.micro_batch < o.batch ? o.micro_batch : o.batch;
    bool recompute = o.recompute == 1 || o.recompute == 3;
    cf_flow *flow = NULL;
    if (builtin && !o.resume) { /* sizes checked before anything is allocated */
        recompute |= o.recompute == 0 && cf_flow_config_activation_bytes(&cfg, pass, false) > 4e9;
        if (!cli_check_memory("train", &cfg, pass, true, recompute)) EARLY(2);
        flow = cf_flow_new(&cfg, CF_F32);
    } else if (arch) {
        flow = cf_flow_from_arch(arch, CF_F32, (uint64_t)o.seed);
    } else {
        flow = cf_flow_load(o.resume, CF_F32, NULL);
    }
    cf_arch_free(arch);
    arch = NULL;
    if (!flow) {
        fprintf(stderr, "cincflow train: %s\n", cf_last_error());
        EARLY(o.resume ? 1 : 2);
    }
    if (!builtin || o.resume) {
        recompute |= o.recompute == 0 && cf_flow_activation_bytes(flow, pass, false) > 4e9;
        if (!cli_check_flow_memory("train", flow, pass, true, recompute)) {
            cf_flow_free(flow);
            EARLY(2);
        }
    }
#undef EARLY
    const cf_flow_config *fcfg = cf_flow_config_of(flow);
    cf_flow_set_recompute(flow, recompute);
    cf_flow_set_rebuild_inputs(flow, o.recompute == 3);
    cf_adam_opts aopts = {.kind = (cf_optim_kind)o.optimizer, .lr = o.lr, .beta1 = o.beta1,
                          .beta2 = o.beta2, .warmup_steps = o.warmup, .clip_norm = o.clip};
    cf_adam *opt = cf_adam_new(cf_flow_params(flow), &aopts);
    cf_batcher *batcher = cf_batcher_new(ds, &(cf_batcher_opts){.batch = o.batch,
                                                                .seed = (uint64_t)o.seed,
                                                                .rank = rank, .n_ranks = size});
    cf_ctx *ctx = cf_ctx_new(0);
    FILE *log = NULL;
    int status = 0;
    int64_t step = 0;
    if (!opt || !batcher || !ctx) {
        fprintf(stderr, "cincflow train: %s\n", cf_last_error());
        status = 1;
        goto done;
    }
    if (o.resume) {
        if (cf_checkpoint_load(o.resume, cf_flow_params(flow), opt, &meta) != CF_OK ||
            (meta.has_data_state && cf_batcher_set_state(batcher, &meta.data_state) != CF_OK)) {
            fprintf(stderr, "cincflow train: --resume: %s\n", cf_last_error());
            status = 1;
            goto done;
        }
        step = meta.step;
        if (lead) printf("resumed %s at step %lld\n", o.resume, (long long)step);
    } else {
        if (size > 1) cf_flow_set_reducer(flow, cli_mpi_reduce, NULL);
        cf_status st = init_actnorm(flow, ctx, ds, o.init_images, (uint64_t)o.seed, rank, size);
        cf_flow_set_reducer(flow, NULL, NULL); /* initialised: nothing more to reduce */
        cf_flow_trim(flow); /* the pass over init-images kept a layer's worth of them */
        if (st != CF_OK) {
            fprintf(stderr, "cincflow train: initialising actnorm: %s\n", cf_ctx_error(ctx));
            status = 1;
            goto done;
        }
    }
    if (size > 1 && sync_params(cf_flow_params(flow)) != CF_OK) {
        fprintf(stderr, "cincflow train: %s\n", cf_last_error());
        status = 1;
        goto done;
    }
    if (o.log && lead) {
        log = fopen(o.log, o.resume ? "a" : "w");
        if (!log) {
            fprintf(stderr, "cincflow train: --log %s: cannot open for writing\n", o.log);
            status = 1;
            goto done;
        }
        if (!o.resume)
            fprintf(log, "step,epoch,wall_s,train_bpd,lr,grad_norm,skipped,images_per_s,"
                         "test_bpd,peak_rss_mb\n");
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    bool tty = lead && isatty(STDERR_FILENO);
    if (lead) {
        if (fcfg->levels > 0)
            printf("training %s+%s L=%d K=%d width %lld", cf_flow_config_conv(fcfg),
                   cf_flow_config_coupling(fcfg), fcfg->levels, fcfg->depth, (long long)fcfg->hidden);
        else
            printf("training the %d-layer architecture of %s", cf_flow_layer_count(flow),
                   o.arch ? o.arch : o.resume);
        printf(" on %s (%lld images of %dx%dx%d): %lld parameters%s\n", o.data,
               (long long)cf_dataset_count(ds), h, w, c,
               (long long)cf_params_numel(cf_flow_params(flow)),
               o.recompute == 3 ? ", recomputing steps in backward from rebuilt inputs"
               : recompute      ? ", recomputing steps in backward"
                                : "");
        if (size > 1)
            printf("%d ranks x batch %lld = %lld images per step\n", size, (long long)o.batch,
                   (long long)o.batch * size);
        fflush(stdout);
    }

    double t_start = cli_now(), t_last = t_start;
    int64_t skips_in_row = 0, start_step = step, global_batch = o.batch * size;
    /* Several ranks: some rank wants to stop, some rank was interrupted (agreed each step). */
    bool stop_all = false, interrupted_any = false;
    cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){o.batch, h, w, c});
    if (!x) {
        status = 1;
        goto done;
    }
    for (;;) {
        double elapsed = cli_now() - t_start;
        /* Epochs done: the batcher moves to the next epoch only when its next batch is taken,
         * so an epoch whose last step was taken counts as done. */
        const cf_batcher_state bs = cf_batcher_get_state(batcher);
        int64_t epoch = bs.epoch + (bs.position >= cf_batcher_batches_per_epoch(batcher) *
                                                       global_batch);
        bool stop = size > 1 ? stop_all : (o.minutes && elapsed >= 60 * o.minutes) || interrupted;
        if ((o.steps && step >= o.steps) || (o.epochs && epoch >= o.epochs) || stop) break;
        if (cf_batcher_next(batcher, x, NULL, NULL) != CF_OK) {
            fprintf(stderr, "\ncincflow train: %s\n", cf_last_error());
            status = 1;
            break;
        }
        double t0 = cli_now();
        double loss;
        if (cf_flow_train_step(flow, ctx, x, o.micro_batch, &loss) != CF_OK) {
            fprintf(stderr, "\ncincflow train: step %lld: %s\n", (long long)step + 1, cf_ctx_error(ctx));
            status = 1;
            break;
        }
        if (size > 1) { /* the mean loss, whether any rank's was not finite, and stops */
            double v[4] = {isfinite(loss) ? loss : 0, !isfinite(loss),
                           o.minutes && cli_now() - t_start >= 60 * o.minutes, interrupted};
            cf_status st = cli_mpi_sum(v, 4, CF_F64);
            if (st == CF_OK && v[1] == 0) st = average_gradients(cf_flow_params(flow), size);
            if (st != CF_OK) {
                fprintf(stderr, "\ncincflow train: step %lld: %s\n", (long long)step + 1,
                        cf_last_error());
                status = 1;
                break;
            }
            loss = v[1] > 0 ? NAN : v[0] / size;
            stop_all = v[2] > 0 || v[3] > 0;
            interrupted_any = v[3] > 0;
        }
        cf_step_info info = {0};
        bool skipped = !isfinite(loss) || cf_adam_step(opt, &info) != CF_OK;
        cf_ctx_reset(ctx);
        if (skipped) {
            if (!isfinite(loss)) /* the optimizer did not see this step: count it there too */
                cf_adam_set_counts(opt, cf_adam_step_count(opt), cf_adam_skipped_count(opt) + 1);
            if (++skips_in_row >= o.max_skips) {
                *agreed = true; /* every rank counted the same skips */
                if (lead)
                    fprintf(stderr, "\ncincflow train: stopped after %lld non-finite steps in a "
                                    "row (loss %g)%s%s%s\n", (long long)skips_in_row, loss,
                            o.checkpoint ? "; the last good checkpoint is " : "",
                            o.checkpoint ? o.checkpoint : "",
                            o.checkpoint ? ", left as it was" : "");
                status = 1;
                break;
            }
            continue;
        }
        skips_in_row = 0;
        step++;
        double now = cli_now(), ips = (double)global_batch / (now - t0);
        double test_bpd = NAN;
        if (lead && o.eval_every && step % o.eval_every == 0) {
            if (cf_flow_eval_bpd(flow, test, o.eval_limit, 256, CF_DEQUANT_UNIFORM, 7, &test_bpd) != CF_OK) {
                fprintf(stderr, "\ncincflow train: evaluation: %s\n", cf_last_error());
                status = 1;
                break;
            }
            cf_flow_trim(flow); /* the evaluation's batches of 256 */
            if (!tty) printf("step %lld  test bpd %.4f\n", (long long)step, test_bpd);
        }
        if (log) {
            fprintf(log, "%lld,%lld,%.3f,%.6f,%.6g,%.6g,%lld,%.2f,", (long long)step,
                    (long long)cf_batcher_get_state(batcher).epoch, now - t_start, loss, info.lr,
                    info.grad_norm, (long long)cf_adam_skipped_count(opt), ips);
            if (isfinite(test_bpd)) fprintf(log, "%.6f", test_bpd);
            fprintf(log, ",%.1f\n", peak_rss_mb());
        }
        if (lead && (tty || step % o.print_every == 0 || step == start_step + 1)) {
            double rate = (double)(step - start_step) / (now - t_start), eta = -1;
            if (o.steps) eta = (double)(o.steps - step) / rate;
            if (o.minutes) eta = fmax(0, 60 * o.minutes - (now - t_start));
            if (tty ? now - t_last > 0.2 : true) {
                progress(tty, step, o.steps, loss, (double)global_batch * rate, eta);
                t_last = now;
            }
        }
        if (lead && o.checkpoint && step % o.checkpoint_every == 0 &&
            save(o.checkpoint, flow, opt, batcher, step, o.data) != CF_OK) {
            fprintf(stderr, "\ncincflow train: %s\n", cf_last_error());
            status = 1;
            break;
        }
    }
    if (tty) fprintf(stderr, "\n");
    if (lead && status == 0 && o.checkpoint) {
        if (save(o.checkpoint, flow, opt, batcher, step, o.data) != CF_OK) {
            fprintf(stderr, "cincflow train: %s\n", cf_last_error());
            status = 1;
        } else {
            printf("checkpoint: %s (step %lld)\n", o.checkpoint, (long long)step);
        }
    }
    if (lead)
        printf("trained %lld steps in %.1f s (%lld skipped), peak memory %.0f MB%s\n",
               (long long)(step - start_step), cli_now() - t_start,
               (long long)cf_adam_skipped_count(opt), peak_rss_mb(),
               size > 1 ? " (rank 0)" : "");
    if ((size > 1 ? interrupted_any : interrupted) && status == 0) {
        if (lead) printf("interrupted: stopped after step %lld\n", (long long)step);
        status = 130;
    }
    cf_tensor_free(x);
done:
    if (log) fclose(log);
    cf_ckpt_meta_clear(&meta);
    cf_ctx_free(ctx);
    cf_batcher_free(batcher);
    cf_adam_free(opt);
    cf_flow_free(flow);
    cf_dataset_free(test);
    cf_dataset_free(ds);
    return status;
}

int cli_train(int argc, char **argv)
{
    int rank, size;
    if (cli_mpi_init(&rank, &size) != CF_OK) return 1;
    bool agreed = false;
    int status = train(argc, argv, rank, size, &agreed);
    /* A failure of this rank alone: the others may be waiting for it in a reduction. */
    if (size > 1 && status == 1 && !agreed) {
        fprintf(stderr, "cincflow train: rank %d of %d failed: ending every rank\n", rank, size);
        cli_mpi_abort(status);
    }
    cli_mpi_finalize();
    return status;
}
