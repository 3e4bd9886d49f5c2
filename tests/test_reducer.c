/* test_reducer.c: the flow's reducer hook (cf_flow_set_reducer), which data-parallel training
 * uses to initialise actnorm from the statistics of all processes' batches, without MPI.
 *
 *  - two "processes" (threads, each with its own flow of the same seed, joined by a reducer
 *    that sums through shared memory) each seeing half a batch end with the same parameters,
 *    bit for bit, and with those of one flow that saw the whole batch (to rounding);
 *  - a flow that is initialised calls its reducer no more;
 *  - a failing reducer fails the forward with a message, and the layer stays uninitialised.
 */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cincflow.h"

static const cf_flow_config config = {.height = 8, .width = 8, .channels = 1, .levels = 1,
                                      .depth = 2, .hidden = 8, .seed = 5};

/* Two threads summing buffers of equal length: each puts its own in its slot, then both add
 * the slots in the same order, so both get the same bits. */
typedef struct shared_sum {
    pthread_barrier_t barrier;
    double *slot[2];
    int calls[2];
} shared_sum;

typedef struct rank_arg {
    shared_sum *sum;
    int rank;
    cf_flow *flow;
    cf_tensor *x; /* this rank's half of the batch */
    cf_status status;
} rank_arg;

static cf_status sum_two(double *buf, size_t n, void *user)
{
    rank_arg *a = user;
    shared_sum *s = a->sum;
    double *copy = malloc(n * sizeof *copy);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, buf, n * sizeof *copy);
    s->slot[a->rank] = copy;
    s->calls[a->rank]++;
    pthread_barrier_wait(&s->barrier);
    for (size_t i = 0; i < n; i++) buf[i] = s->slot[0][i] + s->slot[1][i];
    pthread_barrier_wait(&s->barrier);
    free(copy);
    return CF_OK;
}

static void *run_rank(void *p)
{
    rank_arg *a = p;
    cf_ctx *ctx = cf_ctx_new(0);
    cf_flow_set_reducer(a->flow, sum_two, a);
    bool old = cf_ctx_set_grad(ctx, false);
    cf_flow_log_prob(a->flow, ctx, a->x, NULL);
    cf_ctx_set_grad(ctx, old);
    a->status = cf_ctx_status(ctx);
    cf_ctx_free(ctx);
    return NULL;
}

/* Images (n, 8, 8, 1) as dequantized pixels would be, each half from a different range, so
 * that the halves' statistics differ. */
static cf_tensor *images(int64_t n, int64_t first)
{
    cf_tensor *x = cf_tensor_alloc(CF_F32, 4, (int64_t[]){n, 8, 8, 1});
    ck_assert_ptr_nonnull(x);
    cf_rng rng;
    for (int64_t b = 0; b < n; b++) {
        cf_rng_seed(&rng, 17, (uint64_t)(first + b));
        double lo = first + b < 8 ? -0.5 : -0.1;
        for (int64_t i = 0; i < 64; i++)
            cf_tensor_set(x, b * 64 + i, lo + 0.6 * cf_rng_uniform(&rng));
    }
    return x;
}

static void init_alone(cf_flow *flow, cf_tensor *x)
{
    cf_ctx *ctx = cf_ctx_new(0);
    bool old = cf_ctx_set_grad(ctx, false);
    ck_assert_ptr_nonnull(cf_flow_log_prob(flow, ctx, x, NULL));
    cf_ctx_set_grad(ctx, old);
    cf_ctx_free(ctx);
}

START_TEST(test_reducer_two_halves)
{
    omp_set_num_threads(1);
    cf_flow *whole = cf_flow_new(&config, CF_F32);
    cf_flow *half[2] = {cf_flow_new(&config, CF_F32), cf_flow_new(&config, CF_F32)};
    ck_assert_ptr_nonnull(whole);
    ck_assert_ptr_nonnull(half[0]);
    ck_assert_ptr_nonnull(half[1]);
    cf_tensor *x = images(16, 0);
    init_alone(whole, x);

    shared_sum sum = {0};
    pthread_barrier_init(&sum.barrier, NULL, 2);
    rank_arg args[2];
    pthread_t threads[2];
    for (int r = 0; r < 2; r++) {
        args[r] = (rank_arg){.sum = &sum, .rank = r, .flow = half[r], .x = images(8, 8 * r)};
        ck_assert_int_eq(pthread_create(&threads[r], NULL, run_rank, &args[r]), 0);
    }
    for (int r = 0; r < 2; r++) {
        pthread_join(threads[r], NULL);
        ck_assert_int_eq(args[r].status, CF_OK);
    }
    ck_assert_int_gt(sum.calls[0], 0);
    ck_assert_int_eq(sum.calls[0], sum.calls[1]);

    cf_params *pw = cf_flow_params(whole), *p0 = cf_flow_params(half[0]);
    cf_params *p1 = cf_flow_params(half[1]);
    size_t n = cf_params_flat_numel(pw);
    ck_assert_int_eq(memcmp(cf_params_data(p0), cf_params_data(p1), n * sizeof(float)), 0);
    const float *w = cf_params_data(pw), *h = cf_params_data(p0);
    double diff = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)w[i] - h[i]));
        scale = fmax(scale, fabs((double)w[i]));
    }
    ck_assert_msg(diff <= 1e-5 * scale, "halves and whole differ by %g (scale %g)", diff, scale);
    /* Every actnorm initialised in both, and a second forward reduces nothing. */
    for (int i = 0; i < cf_params_state_count(p0); i++)
        ck_assert(cf_tensor_get(cf_params_state_at(p0, i), 0) == 1.0);
    int before = sum.calls[0];
    cf_flow_set_reducer(half[0], sum_two, &args[0]);
    init_alone(half[0], args[0].x); /* would block on the barrier if it reduced */
    ck_assert_int_eq(sum.calls[0], before);

    pthread_barrier_destroy(&sum.barrier);
    for (int r = 0; r < 2; r++) {
        cf_tensor_free(args[r].x);
        cf_flow_free(half[r]);
    }
    cf_tensor_free(x);
    cf_flow_free(whole);
}
END_TEST

static cf_status failing(double *buf, size_t n, void *user)
{
    (void)buf, (void)n, (void)user;
    return CF_ERR_IO;
}

START_TEST(test_reducer_failure)
{
    cf_flow *flow = cf_flow_new(&config, CF_F32);
    ck_assert_ptr_nonnull(flow);
    cf_flow_set_reducer(flow, failing, NULL);
    cf_tensor *x = images(4, 0);
    cf_ctx *ctx = cf_ctx_new(0);
    cf_ctx_set_grad(ctx, false);
    ck_assert_ptr_null(cf_flow_log_prob(flow, ctx, x, NULL));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_IO);
    ck_assert_msg(strstr(cf_ctx_error(ctx), "actnorm initialisation"), "%s", cf_ctx_error(ctx));
    cf_params *ps = cf_flow_params(flow);
    for (int i = 0; i < cf_params_state_count(ps); i++) /* no actnorm initialised */
        ck_assert(cf_tensor_get(cf_params_state_at(ps, i), 0) == 0.0);
    /* Back to one process: the same flow initialises. */
    cf_flow_set_reducer(flow, NULL, NULL);
    cf_ctx_reset(ctx);
    ck_assert_ptr_nonnull(cf_flow_log_prob(flow, ctx, x, NULL));
    cf_ctx_free(ctx);
    cf_tensor_free(x);
    cf_flow_free(flow);
}
END_TEST

static Suite *reducer_suite(void)
{
    Suite *s = suite_create("reducer");
    TCase *tc = tcase_create("actnorm");
    tcase_add_test(tc, test_reducer_two_halves);
    tcase_add_test(tc, test_reducer_failure);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(reducer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
