/* test_io_batcher.c: the batcher of io/: shuffled epochs, sharding over ranks, dequantization
 * noise that follows an image's place in the order, and its state restored exactly. */
#include "io_fixtures.h"

/* Draws one epoch's worth of indices (batches_per_epoch * B of them) into idx. */
static void draw_epoch(cf_batcher *b, cf_tensor *x, int64_t *idx)
{
    int64_t B = x->shape[0];
    for (int64_t k = 0; k < cf_batcher_batches_per_epoch(b); k++)
        ck_assert_int_eq(cf_batcher_next(b, x, NULL, idx + k * B), CF_OK);
}

static int compare_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

START_TEST(test_batcher_permutation)
{
    cf_dataset *ds = cf_dataset_open("synthetic:2x2x1:12", NULL);
    cf_batcher *b = make_batcher(ds, 4, 5, 0, 1);
    cf_tensor *x = batch_tensor(ds, 4, CF_F32);
    ck_assert_int_eq(cf_batcher_batches_per_epoch(b), 3);
    int64_t epochs[3][12];
    for (int e = 0; e < 3; e++) {
        draw_epoch(b, x, epochs[e]);
        ck_assert_int_eq(cf_batcher_get_state(b).epoch, e);
        int64_t sorted[12];
        memcpy(sorted, epochs[e], sizeof sorted);
        qsort(sorted, 12, sizeof sorted[0], compare_i64);
        for (int i = 0; i < 12; i++) ck_assert_int_eq(sorted[i], i);
    }
    int moved = 0, changed = 0;
    for (int i = 0; i < 12; i++) {
        moved += epochs[0][i] != i;
        changed += epochs[0][i] != epochs[1][i];
    }
    ck_assert_msg(moved > 0 && changed > 0, "not shuffled, or the same order every epoch");
    cf_tensor_free(x);
    cf_batcher_free(b);
    cf_dataset_free(ds);
}
END_TEST

/* The same seed gives the same indices and bit-identical values; another seed another order. */
START_TEST(test_batcher_deterministic)
{
    cf_dataset *ds = cf_dataset_open("synthetic:3x3x2:40", NULL);
    cf_batcher *a = make_batcher(ds, 5, 11, 0, 1), *b = make_batcher(ds, 5, 11, 0, 1);
    cf_batcher *other = make_batcher(ds, 5, 12, 0, 1);
    cf_tensor *xa = batch_tensor(ds, 5, CF_F32), *xb = batch_tensor(ds, 5, CF_F32);
    int differ = 0;
    for (int k = 0; k < 20; k++) {
        int64_t ia[5], ib[5], io[5];
        ck_assert_int_eq(cf_batcher_next(a, xa, NULL, ia), CF_OK);
        ck_assert_int_eq(cf_batcher_next(b, xb, NULL, ib), CF_OK);
        ck_assert_int_eq(memcmp(ia, ib, sizeof ia), 0);
        ck_assert_int_eq(memcmp(xa->data, xb->data, (size_t)xa->numel * sizeof(float)), 0);
        ck_assert_int_eq(cf_batcher_next(other, xb, NULL, io), CF_OK);
        differ += memcmp(ia, io, sizeof ia) != 0;
    }
    ck_assert_int_gt(differ, 10);
    cf_tensor_free(xa);
    cf_tensor_free(xb);
    cf_batcher_free(a);
    cf_batcher_free(b);
    cf_batcher_free(other);
    cf_dataset_free(ds);
}
END_TEST

/* Loop: N 12 (divisible by R B: each epoch covers the set) and N 14 (2 left over). At every
 * step the 3 ranks' batches, one after the other, are the batch of a single process with batch
 * R B: the same images in the same order and bit-identical values, noise included. */
START_TEST(test_batcher_sharding)
{
    int N = _i ? 14 : 12, R = 3, B = 2;
    char spec[64];
    snprintf(spec, sizeof spec, "synthetic:2x2x1:%d", N);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    cf_tensor *x = batch_tensor(ds, B, CF_F64), *whole = batch_tensor(ds, R * B, CF_F64);
    cf_batcher *ranks[3], *one = make_batcher(ds, R * B, 99, 0, 1);
    for (int r = 0; r < R; r++) {
        ranks[r] = make_batcher(ds, B, 99, r, R);
        ck_assert_int_eq(cf_batcher_slice_size(ranks[r]), 4);
        ck_assert_int_eq(cf_batcher_batches_per_epoch(ranks[r]), 2);
    }
    int64_t D = x->numel / B;
    for (int e = 0; e < 3; e++) {
        int seen[14] = {0}, total = 0;
        for (int k = 0; k < 2; k++) {
            int64_t iw[6];
            ck_assert_int_eq(cf_batcher_next(one, whole, NULL, iw), CF_OK);
            for (int r = 0; r < R; r++) {
                int64_t idx[2];
                ck_assert_int_eq(cf_batcher_next(ranks[r], x, NULL, idx), CF_OK);
                ck_assert_int_eq(cf_batcher_get_state(ranks[r]).epoch, e);
                for (int i = 0; i < B; i++, total++) {
                    seen[idx[i]]++;
                    ck_assert_int_eq(idx[i], iw[r * B + i]);
                }
                ck_assert_int_eq(memcmp(x->data, (double *)whole->data + r * B * D,
                                        (size_t)x->numel * sizeof(double)),
                                 0);
            }
        }
        for (int i = 0; i < N; i++) ck_assert_msg(seen[i] <= 1, "image %d seen twice", i);
        ck_assert_int_eq(total, 12);
        if (N == 12)
            for (int i = 0; i < N; i++) ck_assert_msg(seen[i] == 1, "epoch %d missed %d", e, i);
    }
    for (int r = 0; r < R; r++) {
        cf_batcher_state s = cf_batcher_get_state(ranks[r]), t = cf_batcher_get_state(one);
        ck_assert_int_eq(memcmp(&s, &t, sizeof s), 0); /* one state for every rank */
        cf_batcher_free(ranks[r]);
    }
    cf_batcher_free(one);
    cf_tensor_free(x);
    cf_tensor_free(whole);
    cf_dataset_free(ds);
}
END_TEST

/* Ranks draw different noise: the same image at the same place of two epochs' orders, or at
 * two places, is dequantized differently (sequential order: image i sits at position i). */
START_TEST(test_batcher_noise_per_position)
{
    cf_dataset *ds = cf_dataset_open("synthetic:4x4x1:8", NULL);
    cf_tensor *a = batch_tensor(ds, 2, CF_F32), *b = batch_tensor(ds, 2, CF_F32);
    cf_batcher *r0 = cf_batcher_new(
        ds, &(cf_batcher_opts){.batch = 2, .seed = 4, .rank = 0, .n_ranks = 2, .sequential = true});
    cf_batcher *r1 = cf_batcher_new(
        ds, &(cf_batcher_opts){.batch = 2, .seed = 4, .rank = 1, .n_ranks = 2, .sequential = true});
    ck_assert_ptr_nonnull(r0);
    ck_assert_ptr_nonnull(r1);
    int64_t i0[2], i1[2];
    ck_assert_int_eq(cf_batcher_next(r0, a, NULL, i0), CF_OK);
    ck_assert_int_eq(cf_batcher_next(r1, b, NULL, i1), CF_OK);
    ck_assert_int_eq(i0[0], 0);
    ck_assert_int_eq(i1[0], 2);
    ck_assert_int_ne(memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)), 0);
    float first[32];
    memcpy(first, a->data, sizeof first);
    for (int k = 0; k < 2; k++) ck_assert_int_eq(cf_batcher_next(r0, a, NULL, i0), CF_OK);
    ck_assert_int_eq(cf_batcher_get_state(r0).epoch, 1);
    ck_assert_int_eq(i0[0], 0); /* image 0 again, at position 0 of epoch 1 */
    ck_assert_int_ne(memcmp(a->data, first, sizeof first), 0);
    cf_batcher_free(r0);
    cf_batcher_free(r1);
    cf_tensor_free(a);
    cf_tensor_free(b);
    cf_dataset_free(ds);
}
END_TEST

/* Loop: f32 or f64. Uniform values lie in [k/256 - 0.5, (k+1)/256 - 0.5) and are spread over
 * it; midpoint values are exactly k/256 - 0.5 + 1/512; labels and indices agree with the set. */
START_TEST(test_batcher_dequantization)
{
    cf_dtype dt = _i ? CF_F64 : CF_F32;
    const char *images = tpath("train-images-idx3-ubyte");
    write_idx_pair(images, tpath("train-labels-idx1-ubyte"), false, false);
    char spec[600];
    snprintf(spec, sizeof spec, "idx:%s", images);
    cf_dataset *ds = cf_dataset_open(spec, NULL);
    ck_assert_msg(ds, "%s", cf_last_error());
    int64_t B = 4, D = IDX_H * IDX_W;
    cf_tensor *x = batch_tensor(ds, B, dt);
    for (int mode = 0; mode < 2; mode++) {
        cf_batcher *b = cf_batcher_new(
            ds, &(cf_batcher_opts){.batch = B,
                                   .seed = 3,
                                   .dequant = mode ? CF_DEQUANT_MIDPOINT : CF_DEQUANT_UNIFORM});
        ck_assert_ptr_nonnull(b);
        int above_half = 0, total = 0;
        for (int k = 0; k < 25; k++) {
            int labels[4];
            int64_t idx[4];
            ck_assert_int_eq(cf_batcher_next(b, x, labels, idx), CF_OK);
            for (int64_t i = 0; i < B; i++) {
                ck_assert_int_eq(labels[i], cf_dataset_label(ds, idx[i]));
                const uint8_t *img = cf_dataset_image(ds, idx[i]);
                for (int64_t j = 0; j < D; j++, total++) {
                    double v = cf_tensor_get(x, i * D + j), lo = img[j] / 256.0 - 0.5;
                    if (mode) {
                        ck_assert_msg(v == lo + 1.0 / 512, "midpoint %.17g for k %d", v, img[j]);
                        continue;
                    }
                    ck_assert_msg(v >= lo && v < lo + 1.0 / 256, "%.17g outside the bin of k %d", v,
                                  img[j]);
                    above_half += v >= lo + 1.0 / 512;
                }
            }
        }
        if (!mode)
            ck_assert_msg(above_half > total / 3 && above_half < 2 * total / 3,
                          "noise not uniform: %d of %d in the upper half", above_half, total);
        cf_batcher_free(b);
    }
    cf_tensor_free(x);
    cf_dataset_free(ds);
}
END_TEST

/* A state taken mid-epoch, set on a fresh batcher, gives the same next batches bit for bit,
 * across the epoch boundary. */
START_TEST(test_batcher_state_restore)
{
    cf_dataset *ds = cf_dataset_open("synthetic:3x2x1:10", NULL);
    cf_batcher *a = make_batcher(ds, 3, 21, 1, 2); /* rank 1 of 2: 1 step of 6 images */
    cf_tensor *xa = batch_tensor(ds, 3, CF_F32), *xb = batch_tensor(ds, 3, CF_F32);
    for (int k = 0; k < 5; k++) ck_assert_int_eq(cf_batcher_next(a, xa, NULL, NULL), CF_OK);
    cf_batcher_state saved = cf_batcher_get_state(a);
    ck_assert_int_eq(saved.epoch, 4);
    ck_assert_int_eq(saved.position, 6); /* global: both ranks' 3 */
    cf_batcher *b = make_batcher(ds, 3, 21, 1, 2);
    ck_assert_int_eq(cf_batcher_set_state(b, &saved), CF_OK);
    for (int k = 0; k < 4; k++) {
        int64_t ia[3], ib[3];
        ck_assert_int_eq(cf_batcher_next(a, xa, NULL, ia), CF_OK);
        ck_assert_int_eq(cf_batcher_next(b, xb, NULL, ib), CF_OK);
        ck_assert_int_eq(memcmp(ia, ib, sizeof ia), 0);
        ck_assert_int_eq(memcmp(xa->data, xb->data, (size_t)xa->numel * sizeof(float)), 0);
    }
    cf_batcher_free(a);
    cf_batcher_free(b);
    cf_tensor_free(xa);
    cf_tensor_free(xb);
    cf_dataset_free(ds);
}
END_TEST

START_TEST(test_batcher_errors)
{
    cf_dataset *ds = cf_dataset_open("synthetic:4x4x3:10", NULL);
    ck_assert_ptr_null(cf_batcher_new(ds, &(cf_batcher_opts){.batch = 0}));
    expect_failure(-1, "batch size 0");
    ck_assert_ptr_null(cf_batcher_new(ds, &(cf_batcher_opts){.batch = 2, .rank = 3, .n_ranks = 3}));
    expect_failure(-1, "rank 3 of 3");
    ck_assert_ptr_null(cf_batcher_new(ds, &(cf_batcher_opts){.batch = 4, .n_ranks = 3}));
    expect_failure(-1, "fewer than a batch of 4");
    cf_batcher *b = make_batcher(ds, 2, 1, 0, 1);
    cf_batcher_state before = cf_batcher_get_state(b);
    cf_tensor *wrong = cf_tensor_alloc(CF_F32, 4, (int64_t[]){2, 4, 3, 4});
    expect_failure(cf_batcher_next(b, wrong, NULL, NULL), "(2, 4, 3, 4)");
    cf_batcher_state after = cf_batcher_get_state(b);
    ck_assert_int_eq(memcmp(&before, &after, sizeof before), 0);
    expect_failure(cf_batcher_set_state(b, &(cf_batcher_state){.epoch = 0, .position = 11}),
                   "position 11");
    expect_failure(cf_batcher_set_state(b, &(cf_batcher_state){.epoch = -1}), "epoch -1");
    cf_tensor_free(wrong);
    cf_batcher_free(b);
    cf_batcher_free(NULL);
    cf_dataset_free(ds);
}
END_TEST

/* cf_dataset_fill: consecutive images for evaluation, the tail in a smaller tensor. */
START_TEST(test_dataset_fill)
{
    cf_dataset *ds = cf_dataset_open("synthetic:2x3x1:7", NULL);
    cf_tensor *x = batch_tensor(ds, 3, CF_F64);
    ck_assert_int_eq(cf_dataset_fill(ds, 4, x, CF_DEQUANT_MIDPOINT, NULL), CF_OK);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 6; j++)
            ck_assert_double_eq(cf_tensor_get(x, i * 6 + j),
                                (cf_dataset_image(ds, 4 + i)[j] + 0.5) / 256 - 0.5);
    expect_failure(cf_dataset_fill(ds, 5, x, CF_DEQUANT_MIDPOINT, NULL), "images 5 to 7");
    cf_rng rng;
    cf_rng_seed(&rng, 1, 0);
    ck_assert_int_eq(cf_dataset_fill(ds, 0, x, CF_DEQUANT_UNIFORM, &rng), CF_OK);
    cf_tensor_free(x);
    cf_dataset_free(ds);
}
END_TEST

/* ---- the runner ------------------------------------------------------------------------- */

static Suite *io_suite(void)
{
    Suite *s = suite_create("io batcher");
    TCase *batcher = tcase_create("batcher");
    tcase_add_checked_fixture(batcher, make_tmpdir, remove_tmpdir);
    tcase_add_test(batcher, test_batcher_permutation);
    tcase_add_test(batcher, test_batcher_deterministic);
    tcase_add_loop_test(batcher, test_batcher_sharding, 0, 2);
    tcase_add_test(batcher, test_batcher_noise_per_position);
    tcase_add_loop_test(batcher, test_batcher_dequantization, 0, 2);
    tcase_add_test(batcher, test_batcher_state_restore);
    tcase_add_test(batcher, test_batcher_errors);
    tcase_add_test(batcher, test_dataset_fill);
    suite_add_tcase(s, batcher);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc, (void)argv;
    SRunner *sr = srunner_create(io_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
