/* two_moons.c: density estimation on the two-moons toy data with a small RealNVP-style flow,
 * trained by maximum likelihood with Adam, using the public headers only.
 *
 * The data: two interleaved half circles (scikit-learn's make_moons layout: the upper moon
 * (cos a, sin a), the lower one (1 - cos a, 0.5 - sin a), a uniform in [0, pi]) with Gaussian
 * noise of standard deviation 0.1, drawn from a seeded generator inside the program.
 *
 * The flow, x -> z, with log p(x) = log N(z; 0, I) + sum of the layers' log-determinants:
 *   actnorm:     z = (x + bias) * exp(log_scale), bias and log_scale set from the training
 *                data's mean and standard deviation; log-det sum(log_scale)
 *   L couplings: layer k keeps coordinate c = 1 - k % 2 and transforms d = k % 2:
 *                (s_raw, t) = MLP(x_c)  (Linear 1->H, tanh, Linear H->H, tanh, Linear H->2,
 *                the last zero-initialised so the flow starts as the identity),
 *                s = scale * tanh(s_raw), y_d = x_d * exp(s) + t; log-det s
 * Parameters are named like a PyTorch state_dict ("layers.3.net.2.weight").
 *
 * Not here: sampling (the inverse), learning-rate decay, checkpoints.
 *
 * Run: ./two_moons [--steps N] [--seed S] [--check]
 *   prints the training NLL (nats per point) every 250 steps, then the average NLL on a fresh
 *   held-out sample. --check compares that with a known-good value (below) and exits 1 when it
 *   is outside the tolerance. Exit status: 0 success, 1 failure or check outside, 2 bad usage.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cincflow.h"

#define N_LAYERS      8
#define HIDDEN        32
#define BATCH         256
#define N_TRAIN       8192
#define N_TEST        20000
#define EVAL_CHUNK    2000
#define NOISE         0.1
#define PRINT_EVERY   250
#define DEFAULT_STEPS 3000
#define DEFAULT_SEED  1

/* Known-good held-out NLL for --check: 1.0847, measured with the defaults (--seed 1 --steps
 * 3000, 20000 test points) on the development machine (x86-64 with AVX-512, Debian's libm and
 * OpenBLAS 0.3.21, f32 training). Seeds 2, 3 and 4 gave 1.0581, 1.0712 and 1.0651, and the
 * same seed built without -march=native (CF_NATIVE=OFF) 1.1001, so runs differ by about 0.03;
 * the tolerance of 0.05 leaves room for other libm and BLAS builds and still fails a flow that
 * learned little (the untrained flow, a Gaussian fit, scores 2.02; 300 steps reach 1.23). */
#define CHECK_NLL 1.0847
#define CHECK_TOL 0.05

/* ---- data -------------------------------------------------------------------------------- */

/* Fills xy (n, 2) with two-moons points. */
static void make_moons(float *xy, int64_t n, cf_rng *rng)
{
    for (int64_t i = 0; i < n; i++) {
        double a = M_PI * cf_rng_uniform(rng);
        bool lower = cf_rng_uniform(rng) < 0.5;
        double x = lower ? 1.0 - cos(a) : cos(a);
        double y = lower ? 0.5 - sin(a) : sin(a);
        xy[2 * i] = (float)(x + NOISE * cf_rng_normal(rng));
        xy[2 * i + 1] = (float)(y + NOISE * cf_rng_normal(rng));
    }
}

/* ---- the model --------------------------------------------------------------------------- */

typedef struct coupling {
    cf_tensor *w0, *b0; /* (1, H), (H) */
    cf_tensor *w2, *b2; /* (H, H), (H) */
    cf_tensor *w4, *b4; /* (H, 2), (2): zero-initialised */
    cf_tensor *scale;   /* (1): bound of the log-scale, s = scale * tanh(s_raw) */
} coupling;

typedef struct flow {
    cf_params *ps;
    cf_tensor *an_bias, *an_log_scale; /* (2) each */
    coupling layers[N_LAYERS];
} flow;

static cf_tensor *add_param(cf_params *ps, const char *name, int ndim, const int64_t *shape)
{
    cf_tensor *t = cf_params_add(ps, name, ndim, shape);
    if (!t) {
        fprintf(stderr, "two_moons: %s\n", cf_last_error());
        exit(1);
    }
    return t;
}

/* Adds "layers.<k>.<suffix>". */
static cf_tensor *layer_param(cf_params *ps, int k, const char *suffix, int ndim,
                              const int64_t *shape)
{
    char name[64];
    snprintf(name, sizeof name, "layers.%d.%s", k, suffix);
    return add_param(ps, name, ndim, shape);
}

/* Declares every parameter and initialises it like torch.nn.Linear (uniform in +-1/sqrt(fan
 * in)), but for the zero last layer of each MLP. */
static void flow_init(flow *f, cf_rng *rng)
{
    f->ps = cf_params_new(CF_F32);
    if (!f->ps) exit(1);
    f->an_bias = add_param(f->ps, "actnorm.bias", 1, (int64_t[]){2});
    f->an_log_scale = add_param(f->ps, "actnorm.log_scale", 1, (int64_t[]){2});
    for (int k = 0; k < N_LAYERS; k++) {
        coupling *c = &f->layers[k];
        c->w0 = layer_param(f->ps, k, "net.0.weight", 2, (int64_t[]){1, HIDDEN});
        c->b0 = layer_param(f->ps, k, "net.0.bias", 1, (int64_t[]){HIDDEN});
        c->w2 = layer_param(f->ps, k, "net.2.weight", 2, (int64_t[]){HIDDEN, HIDDEN});
        c->b2 = layer_param(f->ps, k, "net.2.bias", 1, (int64_t[]){HIDDEN});
        c->w4 = layer_param(f->ps, k, "net.4.weight", 2, (int64_t[]){HIDDEN, 2});
        c->b4 = layer_param(f->ps, k, "net.4.bias", 1, (int64_t[]){2});
        c->scale = layer_param(f->ps, k, "scale", 1, (int64_t[]){1});
        double r2 = 1.0 / sqrt(HIDDEN);
        cf_tensor_fill_uniform(c->w0, rng, -1, 1);
        cf_tensor_fill_uniform(c->b0, rng, -1, 1);
        cf_tensor_fill_uniform(c->w2, rng, -r2, r2);
        cf_tensor_fill_uniform(c->b2, rng, -r2, r2);
        cf_tensor_fill(c->scale, 1.0);
    }
}

/* Actnorm's data-dependent initialisation: zero mean, unit variance on the training data. */
static void actnorm_init(flow *f, const float *xy, int64_t n)
{
    for (int d = 0; d < 2; d++) {
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < n; i++) sum += xy[2 * i + d];
        double mean = sum / (double)n;
        for (int64_t i = 0; i < n; i++) sq += (xy[2 * i + d] - mean) * (xy[2 * i + d] - mean);
        double std = sqrt(sq / (double)n);
        cf_tensor_set(f->an_bias, d, -mean);
        cf_tensor_set(f->an_log_scale, d, -log(std + 1e-6));
    }
}

static cf_tensor *linear(cf_ctx *ctx, cf_tensor *x, cf_tensor *w, cf_tensor *b)
{
    return cf_add(ctx, cf_matmul(ctx, x, w), b);
}

/* log p(x) for a batch x (B, 2): returns (B), or NULL once the context holds a failure. */
static cf_tensor *flow_log_prob(cf_ctx *ctx, const flow *f, cf_tensor *x)
{
    cf_tensor *z = cf_mul(ctx, cf_add(ctx, x, f->an_bias), cf_exp(ctx, f->an_log_scale));
    cf_tensor *logdet = NULL; /* (B) */
    for (int k = 0; k < N_LAYERS; k++) {
        const coupling *c = &f->layers[k];
        int d = k % 2;
        cf_tensor *xs[2], *st[2];
        if (cf_split(ctx, z, 2, (int64_t[]){1, 1}, xs) != CF_OK) return NULL;
        cf_tensor *h = cf_tanh(ctx, linear(ctx, xs[1 - d], c->w0, c->b0)); /* (B, H) */
        h = cf_tanh(ctx, linear(ctx, h, c->w2, c->b2));
        if (cf_split(ctx, linear(ctx, h, c->w4, c->b4), 2, (int64_t[]){1, 1}, st) != CF_OK)
            return NULL;
        cf_tensor *s = cf_mul(ctx, cf_tanh(ctx, st[0]), c->scale); /* (B, 1) */
        cf_tensor *y = cf_add(ctx, cf_mul(ctx, xs[d], cf_exp(ctx, s)), st[1]);
        xs[d] = y;
        z = cf_concat(ctx, 2, xs);
        logdet = logdet ? cf_add(ctx, logdet, cf_sum(ctx, s)) : cf_sum(ctx, s);
    }
    cf_tensor *logp = cf_add(ctx, cf_gaussian_logp_std(ctx, z), logdet);
    return cf_add(ctx, logp, cf_sum_all(ctx, f->an_log_scale));
}

/* Average negative log-likelihood (nats per point) of xy (n, 2), recording nothing. */
static double evaluate(cf_ctx *ctx, const flow *f, const float *xy, int64_t n)
{
    bool was = cf_ctx_set_grad(ctx, false);
    double total = 0;
    for (int64_t start = 0; start < n; start += EVAL_CHUNK) {
        int64_t b = n - start < EVAL_CHUNK ? n - start : EVAL_CHUNK;
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, b, 2);
        if (x) memcpy(x->data, xy + 2 * start, (size_t)b * 2 * sizeof(float));
        cf_tensor *logp = flow_log_prob(ctx, f, x);
        if (cf_ctx_status(ctx) != CF_OK) {
            fprintf(stderr, "two_moons: evaluation failed: %s\n", cf_ctx_error(ctx));
            exit(1);
        }
        for (int64_t i = 0; i < b; i++) total -= cf_tensor_get(logp, i);
        cf_ctx_reset(ctx);
    }
    cf_ctx_set_grad(ctx, was);
    return total / (double)n;
}

/* ---- the program ------------------------------------------------------------------------- */

static int usage(void)
{
    fprintf(stderr, "usage: two_moons [--steps N] [--seed S] [--check]\n");
    return 2;
}

static bool parse_count(const char *text, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    if (!text || !*text || text[0] == '-') return false;
    *out = strtoull(text, &end, 10);
    return !*end && !errno;
}

int main(int argc, char **argv)
{
    unsigned long long steps = DEFAULT_STEPS, seed = DEFAULT_SEED;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--check") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--steps") == 0 || strcmp(argv[i], "--seed") == 0) {
            bool is_steps = argv[i][3] == 't';
            if (!parse_count(i + 1 < argc ? argv[i + 1] : NULL, is_steps ? &steps : &seed)) {
                fprintf(stderr, "two_moons: %s expects a non-negative integer\n", argv[i]);
                return usage();
            }
            i++;
        } else {
            fprintf(stderr, "two_moons: unknown argument '%s'\n", argv[i]);
            return usage();
        }
    }

    cf_rng data_rng, init_rng, batch_rng, test_rng;
    cf_rng_seed(&data_rng, seed, 0);
    cf_rng_seed(&init_rng, seed, 1);
    cf_rng_seed(&batch_rng, seed, 2);
    cf_rng_seed(&test_rng, seed, 3);
    float *train = malloc(N_TRAIN * 2 * sizeof *train);
    float *test = malloc(N_TEST * 2 * sizeof *test);
    if (!train || !test) return 1;
    make_moons(train, N_TRAIN, &data_rng);
    make_moons(test, N_TEST, &test_rng);

    flow f;
    flow_init(&f, &init_rng);
    actnorm_init(&f, train, N_TRAIN);
    cf_adam *opt =
        cf_adam_new(f.ps, &(cf_adam_opts){.lr = 3e-3, .warmup_steps = 100, .clip_norm = 10});
    cf_ctx *ctx = cf_ctx_new(0);
    if (!opt || !ctx) {
        fprintf(stderr, "two_moons: %s\n", cf_last_error());
        return 1;
    }
    printf("two moons: %d points (noise %.2f), flow of %d affine couplings (%lld parameters), "
           "Adam, %llu steps of %d, seed %llu\n",
           N_TRAIN, NOISE, N_LAYERS, (long long)cf_params_numel(f.ps), steps, BATCH, seed);
    printf("held-out NLL before training: %.4f nats/point\n", evaluate(ctx, &f, test, N_TEST));

    double running = 0;
    int64_t in_window = 0, skipped = 0;
    for (unsigned long long step = 1; step <= steps; step++) {
        cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, BATCH, 2);
        float *xd = x ? x->data : NULL;
        for (int b = 0; xd && b < BATCH; b++) {
            uint64_t j = cf_rng_below(&batch_rng, N_TRAIN);
            xd[2 * b] = train[2 * j];
            xd[2 * b + 1] = train[2 * j + 1];
        }
        cf_tensor *loss = cf_scale(ctx, cf_mean_all(ctx, flow_log_prob(ctx, &f, x)), -1.0);
        cf_params_zero_grad(f.ps);
        cf_status st = cf_backward(ctx, loss);
        if (st != CF_OK) {
            fprintf(stderr, "two_moons: step %llu: %s\n", step, cf_ctx_error(ctx));
            return 1;
        }
        running += cf_tensor_get(loss, 0);
        in_window++;
        cf_step_info info;
        if (cf_adam_step(opt, &info) != CF_OK) {
            fprintf(stderr, "two_moons: step %llu skipped: %s\n", step, cf_last_error());
            skipped++;
        }
        cf_ctx_reset(ctx);
        if (step % PRINT_EVERY == 0 || step == steps) {
            printf("step %5llu  train NLL %.4f nats/point  (grad norm %.3f, lr %.2g)\n", step,
                   running / (double)in_window, info.grad_norm, info.lr);
            running = 0, in_window = 0;
        }
    }

    double nll = evaluate(ctx, &f, test, N_TEST);
    printf("held-out NLL after training: %.4f nats/point on %d fresh points\n", nll, N_TEST);
    if (skipped) printf("%lld steps skipped for non-finite gradients\n", (long long)skipped);
    int status = (unsigned long long)skipped > steps / 10 ? 1 : 0;
    if (check) {
        bool ok = fabs(nll - CHECK_NLL) <= CHECK_TOL;
        if (steps != DEFAULT_STEPS || seed != DEFAULT_SEED)
            printf("note: the known-good value is for --seed %d --steps %d\n", DEFAULT_SEED,
                   DEFAULT_STEPS);
        printf("check: held-out NLL %.4f vs known-good %.4f +- %.2f: %s\n", nll, CHECK_NLL,
               CHECK_TOL, ok ? "ok" : "OUTSIDE");
        if (!ok) status = 1;
    }
    cf_ctx_free(ctx);
    cf_adam_free(opt);
    cf_params_free(f.ps);
    free(train);
    free(test);
    return status;
}
