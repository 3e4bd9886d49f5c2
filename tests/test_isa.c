/* test_isa.c: the choice of kernel path (cf_cpu.h) and every path the machine can run against
 * the reference kernels.
 *
 *   - names and parsing; the choice for each kind of CF_ISA request, including one above what
 *     the CPU supports (refused with a message, the best path runs instead);
 *   - the CF_ISA variable end to end (first, so it also holds without Check's fork);
 *   - cf_cpu_set_isa refusing a path above the CPU;
 *   - for every path up to the CPU's best: each registered op's fast kernels against its
 *     reference on its own cases, and on larger cases that reach the hand-written kernels
 *     (the fused convolution + actnorm epilogue for 128 and for 20 channels, actnorm's
 *     backward loops with and without the ReLU, few-output-channel convolutions from 8, 16
 *     and 24 input channels). The convolution drivers' shapes are walked per path in
 *     test_conv.c.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_cpu.h"
#include "cincflow.h"

/* As `cincflow gradcheck --fast`: fast f32 against double-accumulated reference, relative to
 * the largest reference value. */
#define FAST_TOLERANCE 1e-4

/* Check runs each test in a fork; without one (CK_FORK=no, as under valgrind) the process's
 * choice is made by the first test, which is this one. */
START_TEST(test_env_forces_path)
{
    setenv("CF_ISA", "generic", 1);
    ck_assert_int_eq(cf_cpu_isa(), CF_ISA_GENERIC);
    ck_assert_str_eq(cf_isa_name(cf_cpu_isa()), "generic");
    ck_assert_int_ge(cf_cpu_isa_supported(), CF_ISA_GENERIC);
    /* The choice is made once: a later change of the variable does not move it. */
    setenv("CF_ISA", "avx2", 1);
    ck_assert_int_eq(cf_cpu_isa(), CF_ISA_GENERIC);
    unsetenv("CF_ISA");
    ck_assert_int_eq(cf_cpu_set_isa(cf_cpu_isa_supported()), CF_OK);
}
END_TEST

START_TEST(test_names_parse)
{
    for (int i = 0; i < CF_ISA_COUNT; i++) {
        cf_isa back = CF_ISA_COUNT;
        ck_assert(cf_isa_parse(cf_isa_name((cf_isa)i), &back));
        ck_assert_int_eq(back, i);
    }
    ck_assert_str_eq(cf_isa_name(CF_ISA_AVX512), "avx512");
    ck_assert_str_eq(cf_isa_name(CF_ISA_AVX2), "avx2");
    ck_assert_str_eq(cf_isa_name((cf_isa)7), "unknown");
    cf_isa out = CF_ISA_AVX2;
    ck_assert(!cf_isa_parse(NULL, &out));
    ck_assert(!cf_isa_parse("", &out));
    ck_assert(!cf_isa_parse("AVX2", &out));
    ck_assert(!cf_isa_parse("avx2 ", &out));
    ck_assert_int_eq(out, CF_ISA_AVX2);
}
END_TEST

START_TEST(test_choose)
{
    char why[256];
    /* no request: the CPU's best, silently */
    ck_assert_int_eq(cf_cpu_isa_choose(NULL, CF_ISA_AVX512, why, sizeof why), CF_ISA_AVX512);
    ck_assert_str_eq(why, "");
    ck_assert_int_eq(cf_cpu_isa_choose("", CF_ISA_AVX2, why, sizeof why), CF_ISA_AVX2);
    ck_assert_str_eq(why, "");
    /* at or below the CPU: obeyed */
    ck_assert_int_eq(cf_cpu_isa_choose("avx2", CF_ISA_AVX512, why, sizeof why), CF_ISA_AVX2);
    ck_assert_str_eq(why, "");
    ck_assert_int_eq(cf_cpu_isa_choose("generic", CF_ISA_AVX2, why, sizeof why),
                     CF_ISA_GENERIC);
    ck_assert_int_eq(cf_cpu_isa_choose("avx2", CF_ISA_AVX2, why, sizeof why), CF_ISA_AVX2);
    /* above the CPU: refused, the best supported runs, and the message says so */
    ck_assert_int_eq(cf_cpu_isa_choose("avx512", CF_ISA_AVX2, why, sizeof why), CF_ISA_AVX2);
    ck_assert_msg(strstr(why, "CF_ISA=avx512") && strstr(why, "using avx2"), "message: %s", why);
    ck_assert_int_eq(cf_cpu_isa_choose("avx2", CF_ISA_GENERIC, why, sizeof why),
                     CF_ISA_GENERIC);
    ck_assert_msg(strstr(why, "above") && strstr(why, "using generic"), "message: %s", why);
    /* unknown: the same, naming the value and the choices */
    ck_assert_int_eq(cf_cpu_isa_choose("sse4", CF_ISA_AVX512, why, sizeof why), CF_ISA_AVX512);
    ck_assert_msg(strstr(why, "CF_ISA='sse4'") && strstr(why, "avx512, avx2, generic"),
                  "message: %s", why);
    /* no room for a message: still the same choice */
    ck_assert_int_eq(cf_cpu_isa_choose("avx512", CF_ISA_GENERIC, NULL, 0), CF_ISA_GENERIC);
}
END_TEST

START_TEST(test_set_refuses_above_cpu)
{
    const cf_isa best = cf_cpu_isa_supported();
    for (int i = 0; i <= (int)best; i++) {
        ck_assert_int_eq(cf_cpu_set_isa((cf_isa)i), CF_OK);
        ck_assert_int_eq(cf_cpu_isa(), i);
    }
    for (int i = (int)best + 1; i <= CF_ISA_COUNT; i++) {
        ck_assert_int_eq(cf_cpu_set_isa((cf_isa)i), CF_ERR_ARG);
        ck_assert_msg(strstr(cf_last_error(), "supports up to"), "message: %s", cf_last_error());
        ck_assert_int_eq(cf_cpu_isa(), best); /* unchanged */
    }
}
END_TEST

/* ---- every path against the reference ----------------------------------------------------- */

/* Makes path i current; false (and a note) when the CPU cannot run it. */
static bool use_path(int i)
{
    if (i > (int)cf_cpu_isa_supported()) {
        printf("test_isa: path %s not available on this CPU (best %s): not tested here\n",
               cf_isa_name((cf_isa)i), cf_isa_name(cf_cpu_isa_supported()));
        return false;
    }
    ck_assert_int_eq(cf_cpu_set_isa((cf_isa)i), CF_OK);
    cf_cpu_paths_used_reset();
    return true;
}

/* The dispatch record shows that path i's code served the kernels, and no other path's. */
static void expect_only_path(int i)
{
    ck_assert_msg(cf_cpu_paths_used() == 1u << i, "path %s forced, but the kernels were handed "
                  "paths 0x%x (bit 0 generic, 1 avx2, 2 avx512)", cf_isa_name((cf_isa)i),
                  cf_cpu_paths_used());
}

/* Every registered op with a fast f32 kernel, on each of its cases. */
START_TEST(test_ops_fast_per_path)
{
    if (!use_path(_i)) return;
    int checked = 0;
    for (int o = 0; o < cf_op_count(); o++) {
        const cf_op_def *op = cf_op_at(o);
        cf_op_case c;
        for (int k = 0; cf_op_case_get(op, k, &c); k++) {
            cf_tensor *in[CF_MAX_INPUTS];
            ck_assert_int_eq(cf_op_case_inputs(&c, CF_F32, 5 + (uint64_t)k, in), CF_OK);
            bool has_fast = false;
            double err = 0;
            cf_status st = cf_opcheck_fast(op, c.n_in, in, c.attrs, &has_fast, &err);
            for (int i = 0; i < c.n_in; i++) cf_tensor_free(in[i]);
            ck_assert_msg(st == CF_OK && err <= FAST_TOLERANCE,
                          "path %s, op %s case %d: fast differs from reference by %.3g (%s)",
                          cf_isa_name(cf_cpu_isa()), op->name, k, err,
                          st == CF_OK ? "ok" : cf_last_error());
            checked += has_fast;
        }
    }
    ck_assert_int_gt(checked, 10);
    expect_only_path(_i);
}
END_TEST

static cf_tensor *filled(int ndim, const int64_t *shape, uint64_t seed, double lo, double hi)
{
    cf_tensor *t = cf_tensor_alloc(CF_F32, ndim, shape);
    ck_assert_ptr_nonnull(t);
    cf_rng rng;
    cf_rng_seed(&rng, seed, 3);
    cf_tensor_fill_uniform(t, &rng, lo, hi);
    return t;
}

static void check_op(const char *name, int n_in, cf_tensor **in, const void *attrs,
                     const char *what)
{
    const cf_op_def *op = cf_op_find(name);
    ck_assert_ptr_nonnull(op);
    bool has_fast = false;
    double err = 0;
    cf_status st = cf_opcheck_fast(op, n_in, in, attrs, &has_fast, &err);
    ck_assert_msg(has_fast && st == CF_OK && err <= FAST_TOLERANCE,
                  "path %s, %s %s: fast differs from reference by %.3g (%s)",
                  cf_isa_name(cf_cpu_isa()), name, what, err, st == CF_OK ? "ok" : cf_last_error());
    for (int i = 0; i < n_in; i++) cf_tensor_free(in[i]);
}

/* conv2d_actnorm (B, H, W, C) -> K, 3x3 same padding; logs small so values stay O(1). */
static void check_conv_actnorm(int64_t B, int64_t H, int64_t W, int64_t C, int64_t K, int relu,
                               uint64_t seed)
{
    cf_tensor *in[4] = {filled(4, (int64_t[]){B, H, W, C}, seed, -1, 1),
                        filled(4, (int64_t[]){3, 3, C, K}, seed + 1, -0.2, 0.2),
                        filled(1, (int64_t[]){K}, seed + 2, -0.5, 0.5),
                        filled(1, (int64_t[]){K}, seed + 3, -0.3, 0.3)};
    const cf_conv_actnorm_attrs a = {{1, 1, 1, 1}, relu};
    char what[96];
    snprintf(what, sizeof what, "(%lld, %lld, %lld, %lld) -> %lld relu %d", (long long)B,
             (long long)H, (long long)W, (long long)C, (long long)K, relu);
    check_op("conv2d_actnorm", 4, in, &a, what);
}

START_TEST(test_kernels_per_path)
{
    if (!use_path(_i)) return;
    /* the epilogue: 128 channels (the blocked AVX-512 kernel) and 20 (the loops) */
    check_conv_actnorm(2, 5, 6, 16, 128, 1, 10);
    check_conv_actnorm(2, 5, 6, 16, 128, 0, 20);
    check_conv_actnorm(2, 6, 5, 7, 20, 1, 30);
    /* the few-output-channel kernels (inputs on the lanes: 8 for AVX2, 16 for AVX-512; other
     * counts take the GEMM forms), blocks of pixels with edges, taps in the padding */
    for (int64_t C = 8; C <= 24; C += 8)
        for (int64_t K = 1; K <= 4; K++) check_conv_actnorm(2, 4, 11, C, K, (int)(K % 2), 40 + K);
    /* actnorm over rows of 37 channels (vectors and a tail), with and without the ReLU */
    for (int relu = 0; relu <= 1; relu++) {
        cf_tensor *in[3] = {filled(4, (int64_t[]){3, 5, 7, 37}, 50, -2, 2),
                            filled(1, (int64_t[]){37}, 51, -1, 1),
                            filled(1, (int64_t[]){37}, 52, -0.5, 0.5)};
        const cf_actnorm_attrs a = {relu};
        check_op("actnorm", 3, in, &a, relu ? "relu, 37 channels" : "37 channels");
    }
    expect_only_path(_i);
}
END_TEST

static Suite *isa_suite(void)
{
    Suite *s = suite_create("isa");
    TCase *choice = tcase_create("choice");
    tcase_add_test(choice, test_env_forces_path);
    tcase_add_test(choice, test_names_parse);
    tcase_add_test(choice, test_choose);
    tcase_add_test(choice, test_set_refuses_above_cpu);
    suite_add_tcase(s, choice);
    TCase *paths = tcase_create("paths");
    tcase_add_loop_test(paths, test_ops_fast_per_path, 0, CF_ISA_COUNT);
    tcase_add_loop_test(paths, test_kernels_per_path, 0, CF_ISA_COUNT);
    suite_add_tcase(s, paths);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(isa_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
