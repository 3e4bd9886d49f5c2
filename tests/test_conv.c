/* test_conv.c: convolutions, masked convolutions, their log-det and inverse, and squeeze.
 *
 *   - fast f32 kernels (libxsmm) against the reference kernels, forward and backward, on odd
 *     shapes (1 and 3 channels, widths 1 to 33, batch 1 and 2, 1x1 and 3x3, several paddings,
 *     the three masks) and a few larger ones that take the threaded paths, with the arena
 *     filled with NaN junk first so scratch rims that are not written show up;
 *   - finite-difference gradient checks in f64 of conv2d, masked conv, conv_logdet, squeeze
 *     and unsqueeze;
 *   - the masked conv's log-det against log|det| of its dense Jacobian, built by applying the
 *     conv to unit vectors and factorised by LU with partial pivoting, to 1e-10 in f64;
 *   - inverse round trips (conv then inverse) to 1e-5 relative in f32 and 1e-10 in f64, fast
 *     against reference, in place, with a junk-filled workspace; a zero diagonal entry gives
 *     CF_ERR_SINGULAR naming it and no NaN;
 *   - squeeze's channel order on a hand-made example, round trip, and the odd-size errors.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_cpu.h"
#include "cincflow.h"

/* Relative L2 error accepted between fast f32 and reference (double-accumulated) kernels. */
#define FAST_TOLERANCE 1e-5

static const cf_conv_mask masks[] = {CF_CONV_MASK_CINC, CF_CONV_MASK_EMERGING_CAUSAL,
                                     CF_CONV_MASK_EMERGING_ANTICAUSAL};

static cf_tensor *heap(cf_dtype dt, int64_t b, int64_t h, int64_t w, int64_t c)
{
    cf_tensor *t = cf_tensor_alloc(dt, 4, (int64_t[]){b, h, w, c});
    ck_assert_ptr_nonnull(t);
    return t;
}

/* A context whose arena is full of NaN bytes, so uninitialised scratch is poison. */
static cf_ctx *polluted_ctx(cf_kernels kernels)
{
    cf_ctx *ctx = cf_ctx_new(0);
    ck_assert_ptr_nonnull(ctx);
    const size_t junk = (size_t)4 << 20;
    void *p = cf_ctx_alloc(ctx, junk, "junk");
    ck_assert_ptr_nonnull(p);
    memset(p, 0xff, junk);
    cf_ctx_reset(ctx);
    cf_ctx_set_kernels(ctx, kernels);
    return ctx;
}

/* ||a - ref|| / max(||ref||, 1) over n floats (inputs are O(1), so sums that cancel to
 * nearly zero are judged on the scale of their terms); NaN anywhere gives +inf. */
static double rel_err(const float *a, const float *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(ref[i])) return INFINITY;
        num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num) / fmax(sqrt(den), 1.0);
}

static float *copy_floats(const void *src, int64_t n)
{
    float *d = malloc((size_t)(n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(d);
    memcpy(d, src, (size_t)n * sizeof(float));
    return d;
}

/* Outputs and gradients of one forward + seeded backward. */
typedef struct conv_result {
    float *y, *dx, *dw, *db;
    int64_t ny;
} conv_result;

static void conv_result_free(conv_result *r)
{
    free(r->y), free(r->dx), free(r->dw), free(r->db);
}

static void zero_grad(cf_tensor *t)
{
    if (t && t->grad) memset(t->grad, 0, (size_t)t->numel * cf_dtype_size(t->dtype));
}

static conv_result run_conv(cf_kernels kernels, cf_tensor *x, cf_tensor *w, cf_tensor *b,
                            const cf_conv_attrs *a)
{
    zero_grad(x), zero_grad(w), zero_grad(b);
    cf_ctx *ctx = polluted_ctx(kernels);
    cf_tensor *y = cf_conv2d(ctx, x, w, b, a);
    ck_assert_msg(y != NULL, "conv2d failed: %s", cf_ctx_error(ctx));
    cf_tensor *seed = cf_tensor_new(ctx, CF_F32, 4, y->shape);
    cf_rng rng;
    cf_rng_seed(&rng, 99, 1);
    cf_tensor_fill_uniform(seed, &rng, -1, 1);
    ck_assert_int_eq(cf_backward_ex(ctx, y, seed, 0), CF_OK);
    conv_result r = {copy_floats(y->data, y->numel),
                     x->grad ? copy_floats(x->grad, x->numel) : NULL,
                     w->grad ? copy_floats(w->grad, w->numel) : NULL,
                     b && b->grad ? copy_floats(b->grad, b->numel) : NULL, y->numel};
    cf_ctx_free(ctx);
    return r;
}

/* Fast against reference for one geometry; fails with the error norms. */
static void check_fast_conv(int64_t B, int64_t H, int64_t W, int64_t C, int64_t K, int kh,
                            int kw, const cf_conv_attrs *a, bool bias, uint64_t seed)
{
    cf_tensor *x = heap(CF_F32, B, H, W, C);
    cf_tensor *w = cf_tensor_alloc(CF_F32, 4, (int64_t[]){kh, kw, C, K});
    cf_tensor *b = bias ? cf_tensor_alloc(CF_F32, 1, (int64_t[]){K}) : NULL;
    cf_rng rng;
    cf_rng_seed(&rng, seed, 7);
    cf_tensor_fill_uniform(x, &rng, -1, 1);
    cf_tensor_fill_uniform(w, &rng, -1, 1);
    if (b) cf_tensor_fill_uniform(b, &rng, -1, 1);
    ck_assert_int_eq(cf_tensor_requires_grad(NULL, x), CF_OK);
    ck_assert_int_eq(cf_tensor_requires_grad(NULL, w), CF_OK);
    if (b) ck_assert_int_eq(cf_tensor_requires_grad(NULL, b), CF_OK);
    conv_result f = run_conv(CF_KERNELS_FAST, x, w, b, a);
    conv_result r = run_conv(CF_KERNELS_REFERENCE, x, w, b, a);
    const double ey = rel_err(f.y, r.y, r.ny), ex = rel_err(f.dx, r.dx, x->numel);
    const double ew = rel_err(f.dw, r.dw, w->numel), eb = b ? rel_err(f.db, r.db, K) : 0;
    ck_assert_msg(ey <= FAST_TOLERANCE && ex <= FAST_TOLERANCE && ew <= FAST_TOLERANCE &&
                      eb <= FAST_TOLERANCE,
                  "x (%lld, %lld, %lld, %lld) -> %lld, %dx%d pad (%d, %d, %d, %d) mask %s: "
                  "relative errors y %.2e dx %.2e dw %.2e db %.2e", (long long)B, (long long)H,
                  (long long)W, (long long)C, (long long)K, kh, kw, a->pad[0], a->pad[1],
                  a->pad[2], a->pad[3], cf_conv_mask_name(a->mask), ey, ex, ew, eb);
    conv_result_free(&f);
    conv_result_free(&r);
    cf_tensor_free(x), cf_tensor_free(w), cf_tensor_free(b);
}

/* The fast tests run once per kernel path (cf_cpu.h): loop index i selects path i / per and
 * case i % per. Makes the path current and returns true, or notes and returns false when the
 * CPU cannot run it. */
static bool use_path(int path)
{
    if (path > (int)cf_cpu_isa_supported()) {
        printf("test_conv: path %s not available on this CPU (best %s): not tested here\n",
               cf_isa_name((cf_isa)path), cf_isa_name(cf_cpu_isa_supported()));
        return false;
    }
    ck_assert_int_eq(cf_cpu_set_isa((cf_isa)path), CF_OK);
    return true;
}

/* ---- fast against reference ------------------------------------------------------------- */

/* Loop test over widths 1 to 33 (per path): every padding kind, 1 and 3 channels, batch 1 or
 * 2. */
#define ODD_WIDTHS 33
START_TEST(test_fast_conv_odd_shapes)
{
    if (!use_path(_i / ODD_WIDTHS)) return;
    const int64_t W = 1 + _i % ODD_WIDTHS, H = 1 + W % 4, B = W % 2 ? 1 : 2;
    static const struct {
        int k;
        int pad[4];
    } geoms[] = {
        {3, {1, 1, 1, 1}}, {3, {2, 2, 0, 0}}, {3, {0, 1, 2, 0}}, {3, {0, 0, 0, 0}},
        {1, {0, 0, 0, 0}}, {1, {1, 0, 0, 1}},
    };
    for (int64_t C = 1; C <= 3; C += 2)
        for (size_t g = 0; g < sizeof geoms / sizeof geoms[0]; g++) {
            const int k = geoms[g].k;
            cf_conv_attrs a = {{0}, CF_CONV_MASK_NONE};
            memcpy(a.pad, geoms[g].pad, sizeof a.pad);
            if (H + a.pad[0] + a.pad[2] < k || W + a.pad[1] + a.pad[3] < k) continue;
            const int64_t K = 1 + (W + (int64_t)g) % 4;
            check_fast_conv(B, H, W, C, K, k, k, &a, (W + g) % 2 == 0, 1000 + (uint64_t)W);
        }
    for (size_t m = 0; m < 3; m++) {
        const cf_conv_attrs a = cf_conv_attrs_masked(masks[m]);
        check_fast_conv(B, H + 1, W, 3, 3, 3, 3, &a, true, 2000 + (uint64_t)W);
        check_fast_conv(1, H, W, 1, 1, 3, 3, &a, false, 3000 + (uint64_t)W);
    }
}
END_TEST

/* Shapes that take every formulation of the fast drivers (rows, col2im for output channels
 * that are not a multiple of 16, pix for 2 to 4 of them on long rows, few for 1 to 4 of them
 * from a multiple of 16 inputs, im2col for few input
 * channels, 1x1 over pixel chunks, and their backward-weight forms), threaded over images and
 * over row blocks of one image, with partial pixel chunks and partial vectors; per path (the few
 * form needs a multiple of 16 input channels with AVX-512, of 8 with AVX2, and is not used on
 * the generic path). */
START_TEST(test_fast_conv_larger_shapes)
{
    if (!use_path(_i)) return;
    const cf_conv_attrs same = {{1, 1, 1, 1}, CF_CONV_MASK_NONE};
    const cf_conv_attrs none = {{0, 0, 0, 0}, CF_CONV_MASK_NONE};
    const cf_conv_attrs causal = {{2, 2, 0, 0}, CF_CONV_MASK_NONE};
    check_fast_conv(1, 9, 17, 16, 32, 3, 3, &same, true, 10);  /* rows, one image in blocks */
    check_fast_conv(3, 5, 7, 32, 16, 3, 3, &causal, true, 11); /* rows both ways */
    check_fast_conv(1, 9, 17, 16, 24, 3, 3, &same, true, 12);  /* col2im */
    check_fast_conv(5, 8, 8, 33, 20, 3, 3, &same, true, 13);
    check_fast_conv(3, 7, 6, 6, 32, 3, 3, &causal, false, 14); /* im2col */
    check_fast_conv(1, 6, 9, 3, 48, 3, 3, &same, true, 15);
    check_fast_conv(2, 9, 11, 17, 32, 1, 1, &none, true, 16);  /* 1x1 chunks, partial */
    check_fast_conv(3, 10, 13, 32, 16, 1, 1, &none, false, 17);
    check_fast_conv(2, 9, 11, 17, 18, 1, 1, &none, true, 18);
    check_fast_conv(4, 6, 5, 40, 12, 3, 3, &same, true, 19);
    check_fast_conv(9, 3, 4, 16, 32, 3, 3, &same, true, 20);  /* groups of small images */
    check_fast_conv(3, 14, 14, 40, 2, 3, 3, &same, true, 21); /* pix, and im2col back */
    check_fast_conv(2, 13, 15, 20, 3, 3, 3, &causal, false, 22);
    const cf_conv_attrs odd = {{0, 1, 2, 0}, CF_CONV_MASK_NONE};
    check_fast_conv(2, 9, 12, 17, 4, 3, 3, &odd, true, 23);
    check_fast_conv(3, 14, 14, 2, 24, 3, 3, &same, true, 24); /* backward-data by pix */
    check_fast_conv(2, 7, 18, 20, 32, 3, 3, &odd, true, 25);  /* rows, uneven padding */
    check_fast_conv(2, 6, 17, 16, 16, 3, 3, &none, false, 26); /* rows, no padding */
    check_fast_conv(1, 2, 2, 16, 16, 3, 3, &same, true, 27);   /* every row cut short */
    /* few: 1 to 4 outputs from a multiple of 16 inputs, blocks of pixels, taps in padding */
    check_fast_conv(3, 14, 14, 128, 2, 3, 3, &same, true, 28);
    check_fast_conv(2, 7, 7, 32, 4, 3, 3, &same, true, 29);     /* blocks of 4 + 3 */
    check_fast_conv(2, 9, 17, 16, 1, 3, 3, &causal, false, 30); /* blocks of 6, 6, 5 */
    check_fast_conv(2, 5, 19, 48, 3, 3, 3, &odd, true, 31);
    check_fast_conv(1, 3, 2, 16, 2, 3, 3, &same, false, 32);    /* shorter than a block */
    const cf_conv_attrs wide = {{2, 2, 2, 2}, CF_CONV_MASK_NONE};
    check_fast_conv(2, 6, 9, 32, 3, 5, 5, &wide, true, 33);     /* 5x5 */
    check_fast_conv(2, 6, 11, 2, 32, 3, 3, &same, true, 34);    /* backward-data by few */
    check_fast_conv(2, 7, 13, 8, 4, 3, 3, &same, true, 35);     /* few on AVX2 only: 8 in, */
    check_fast_conv(2, 5, 9, 24, 3, 3, 3, &odd, false, 36);     /* 24 in, */
    check_fast_conv(1, 4, 3, 8, 2, 3, 3, &causal, true, 37);    /* shorter than a block */
    const cf_conv_attrs cinc = cf_conv_attrs_masked(CF_CONV_MASK_CINC);
    check_fast_conv(3, 8, 8, 12, 12, 3, 3, &cinc, true, 16);
}
END_TEST

/* ---- gradient checks in f64 -------------------------------------------------------------- */

static void gradcheck_inputs(const cf_op_def *op, int n, cf_tensor **in, const void *attrs,
                             const char *what)
{
    cf_gradcheck_result res;
    cf_status st = cf_gradcheck_op(op, n, in, attrs, NULL, &res);
    ck_assert_msg(st == CF_OK, "%s: %s", what, res.message);
    ck_assert_int_gt(res.values_checked, 0);
    for (int i = 0; i < n; i++) cf_tensor_free(in[i]);
}

START_TEST(test_gradcheck_conv)
{
    cf_rng rng;
    cf_rng_seed(&rng, 5, 0);
    const cf_op_def *op = cf_op_find("conv2d");
    ck_assert_ptr_eq(op, &cf__op_conv2d);
    {
        cf_tensor *in[3] = {heap(CF_F64, 2, 3, 4, 2),
                            cf_tensor_alloc(CF_F64, 4, (int64_t[]){3, 3, 2, 3}),
                            cf_tensor_alloc(CF_F64, 1, (int64_t[]){3})};
        for (int i = 0; i < 3; i++) cf_tensor_fill_uniform(in[i], &rng, -1, 1);
        const cf_conv_attrs a = {{1, 1, 1, 1}, CF_CONV_MASK_NONE};
        gradcheck_inputs(op, 3, in, &a, "conv2d 3x3 same");
    }
    for (size_t m = 0; m < 3; m++) {
        cf_tensor *in[3] = {heap(CF_F64, 1, 3, 4, 3),
                            cf_tensor_alloc(CF_F64, 4, (int64_t[]){3, 3, 3, 3}),
                            cf_tensor_alloc(CF_F64, 1, (int64_t[]){3})};
        for (int i = 0; i < 3; i++) cf_tensor_fill_uniform(in[i], &rng, -1, 1);
        const cf_conv_attrs a = cf_conv_attrs_masked(masks[m]);
        gradcheck_inputs(op, 3, in, &a, cf_conv_mask_name(masks[m]));
    }
}
END_TEST

/* Masked entries of the weight get exactly zero gradient, whatever they hold. */
START_TEST(test_masked_entries_get_no_gradient)
{
    for (size_t m = 0; m < 3; m++) {
        for (int family = 0; family < 2; family++) {
            cf_tensor *x = heap(CF_F32, 2, 4, 5, 3);
            cf_tensor *w = cf_tensor_alloc(CF_F32, 4, (int64_t[]){3, 3, 3, 3});
            cf_rng rng;
            cf_rng_seed(&rng, 8, m);
            cf_tensor_fill_uniform(x, &rng, -1, 1);
            cf_tensor_fill_uniform(w, &rng, -1, 1);
            ck_assert_int_eq(cf_tensor_requires_grad(NULL, w), CF_OK);
            const cf_conv_attrs a = cf_conv_attrs_masked(masks[m]);
            conv_result r = run_conv(family ? CF_KERNELS_REFERENCE : CF_KERNELS_FAST, x, w,
                                     NULL, &a);
            int zeros = 0;
            for (int kh = 0, e = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++)
                    for (int c = 0; c < 3; c++)
                        for (int o = 0; o < 3; o++, e++) {
                            if (cf_conv_mask_keeps(masks[m], kh, kw, c, o)) continue;
                            ck_assert_msg(r.dw[e] == 0.0f, "%s: masked dW[%d][%d][%d][%d] = %g",
                                          cf_conv_mask_name(masks[m]), kh, kw, c, o, r.dw[e]);
                            zeros++;
                        }
            ck_assert_int_gt(zeros, 0);
            conv_result_free(&r);
            cf_tensor_free(x), cf_tensor_free(w);
        }
    }
}
END_TEST

START_TEST(test_gradcheck_logdet_squeeze)
{
    cf_rng rng;
    cf_rng_seed(&rng, 6, 0);
    for (size_t m = 0; m < 3; m++) {
        cf_tensor *w = cf_tensor_alloc(CF_F64, 4, (int64_t[]){3, 3, 4, 4});
        cf_tensor_fill_uniform(w, &rng, 0.3, 1.5);
        /* negative diagonal entries too: log|d| */
        const int ce = cf_conv_mask_centre(masks[m]);
        cf_tensor_set(w, ((ce * 3 + ce) * 4 + 1) * 4 + 1, -0.7);
        const cf_conv_logdet_attrs a = {masks[m], 3, 5};
        gradcheck_inputs(&cf__op_conv_logdet, 1, &w, &a, "conv_logdet");
    }
    cf_tensor *x = heap(CF_F64, 2, 4, 2, 3);
    cf_tensor_fill_uniform(x, &rng, -1, 1);
    gradcheck_inputs(&cf__op_squeeze, 1, &x, NULL, "squeeze");
    x = heap(CF_F64, 1, 2, 3, 8);
    cf_tensor_fill_uniform(x, &rng, -1, 1);
    gradcheck_inputs(&cf__op_unsqueeze, 1, &x, NULL, "unsqueeze");
}
END_TEST

/* ---- log-det against a dense determinant ------------------------------------------------- */

/* log|det A| of an n x n row-major matrix by LU factorisation with partial pivoting (A is
 * overwritten). A written-out LU keeps the oracle independent of the code under test. */
static double lu_logabsdet(double *A, int n)
{
    double s = 0;
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(A[i * n + k]) > fabs(A[p * n + k])) p = i;
        if (A[p * n + k] == 0.0) return -INFINITY;
        if (p != k)
            for (int j = 0; j < n; j++) {
                const double t = A[k * n + j];
                A[k * n + j] = A[p * n + j], A[p * n + j] = t;
            }
        s += log(fabs(A[k * n + k]));
        for (int i = k + 1; i < n; i++) {
            const double f = A[i * n + k] / A[k * n + k];
            for (int j = k; j < n; j++) A[i * n + j] -= f * A[k * n + j];
        }
    }
    return s;
}

START_TEST(test_logdet_matches_dense_determinant)
{
    static const int64_t sizes[][3] = {{3, 3, 2}, {4, 4, 2}, {2, 3, 3}};
    for (size_t m = 0; m < 3; m++)
        for (size_t sz = 0; sz < 3; sz++) {
            const int64_t H = sizes[sz][0], W = sizes[sz][1], C = sizes[sz][2];
            const int n = (int)(H * W * C);
            cf_tensor *w = cf_tensor_alloc(CF_F64, 4, (int64_t[]){3, 3, C, C});
            cf_rng rng;
            cf_rng_seed(&rng, 21 + sz, m);
            /* every entry random, masked ones included: the op must ignore them */
            cf_tensor_fill_normal(w, &rng, 0.0, 0.5);
            const int ce = cf_conv_mask_centre(masks[m]);
            for (int64_t o = 0; o < C; o++) {
                const double d = (0.5 + cf_rng_uniform(&rng)) * (o % 2 ? -1 : 1);
                cf_tensor_set(w, ((ce * 3 + ce) * C + o) * C + o, d);
            }
            cf_ctx *ctx = cf_ctx_new(0);
            cf_ctx_set_kernels(ctx, CF_KERNELS_REFERENCE);
            cf_ctx_set_grad(ctx, false);
            /* J[:, k] = conv(e_k): column k of the Jacobian, stored row-major in J. */
            double *J = malloc((size_t)n * n * sizeof(double));
            for (int k = 0; k < n; k++) {
                cf_tensor *e = cf_tensor_new(ctx, CF_F64, 4, (int64_t[]){1, H, W, C});
                cf_tensor_set(e, k, 1.0);
                cf_tensor *y = cf_masked_conv2d(ctx, e, w, NULL, masks[m]);
                ck_assert_msg(y != NULL, "%s", cf_ctx_error(ctx));
                for (int i = 0; i < n; i++) J[i * n + k] = cf_tensor_get(y, i);
                cf_ctx_reset(ctx);
            }
            cf_tensor *ld = cf_conv_logdet(ctx, w, masks[m], H, W);
            ck_assert_ptr_nonnull(ld);
            ck_assert_int_eq(ld->ndim, 0);
            const double got = cf_tensor_get(ld, 0), want = lu_logabsdet(J, n);
            ck_assert_msg(fabs(got - want) <= 1e-10, "%s %lldx%lldx%lld: logdet %.15g, dense "
                          "slogdet %.15g", cf_conv_mask_name(masks[m]), (long long)H,
                          (long long)W, (long long)C, got, want);
            free(J);
            cf_ctx_free(ctx);
            cf_tensor_free(w);
        }
}
END_TEST

/* ---- inverse ----------------------------------------------------------------------------- */

/* DESIGN's initialisation: N(0, 0.02) everywhere plus the identity on the current tap. */
static cf_tensor *init_weight(cf_dtype dt, int64_t C, cf_conv_mask mask, uint64_t seed)
{
    cf_tensor *w = cf_tensor_alloc(dt, 4, (int64_t[]){3, 3, C, C});
    cf_rng rng;
    cf_rng_seed(&rng, seed, 3);
    cf_tensor_fill_normal(w, &rng, 0.0, 0.02);
    const int ce = cf_conv_mask_centre(mask);
    for (int64_t o = 0; o < C; o++) {
        const int64_t e = ((ce * 3 + ce) * C + o) * C + o;
        cf_tensor_set(w, e, cf_tensor_get(w, e) + 1.0);
    }
    return w;
}

/* y = masked_conv(x) + bias with grad recording off; returns an owned heap tensor. */
static cf_tensor *forward_heap(cf_kernels kernels, cf_tensor *x, cf_tensor *w, cf_tensor *b,
                               cf_conv_mask mask)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_ctx_set_kernels(ctx, kernels);
    cf_ctx_set_grad(ctx, false);
    cf_tensor *y = cf_masked_conv2d(ctx, x, w, b, mask);
    ck_assert_msg(y != NULL, "%s", cf_ctx_error(ctx));
    cf_tensor *out = cf_tensor_alloc(x->dtype, 4, y->shape);
    cf_tensor_copy(out, y);
    cf_ctx_free(ctx);
    return out;
}

static double rel_err_t(const cf_tensor *a, const cf_tensor *ref)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < ref->numel; i++) {
        const double u = cf_tensor_get(a, i), v = cf_tensor_get(ref, i);
        if (!isfinite(u)) return INFINITY;
        num += (u - v) * (u - v), den += v * v;
    }
    return sqrt(num) / fmax(sqrt(den), 1e-300);
}

/* Round trip for one shape and mask, in one dtype and kernel family; the fast path gets a
 * workspace full of NaN bytes. Returns the relative error. */
static double round_trip(cf_dtype dt, cf_kernels kernels, int64_t B, int64_t H, int64_t W,
                         int64_t C, cf_conv_mask mask, bool in_place, uint64_t seed)
{
    cf_tensor *x = heap(dt, B, H, W, C), *back = heap(dt, B, H, W, C);
    cf_tensor *w = init_weight(dt, C, mask, seed);
    cf_tensor *b = cf_tensor_alloc(dt, 1, (int64_t[]){C});
    cf_rng rng;
    cf_rng_seed(&rng, seed, 4);
    cf_tensor_fill_normal(x, &rng, 0.0, 1.0);
    cf_tensor_fill_normal(b, &rng, 0.0, 0.1);
    cf_tensor *y = forward_heap(kernels, x, w, b, mask);
    const cf_conv_attrs a = cf_conv_attrs_masked(mask);
    cf_conv_inverse_opts opts = {.kernels = kernels};
    opts.workspace_size = cf_masked_conv_inverse_workspace(y, &a);
    if (kernels == CF_KERNELS_FAST && dt == CF_F32) ck_assert_uint_gt(opts.workspace_size, 0);
    if (opts.workspace_size) {
        opts.workspace = malloc(opts.workspace_size);
        memset(opts.workspace, 0xff, opts.workspace_size);
    }
    cf_status st;
    if (in_place) {
        st = cf_masked_conv_inverse_ex(y, y, w, b, &a, &opts);
        cf_tensor_copy(back, y);
    } else {
        st = cf_masked_conv_inverse_ex(back, y, w, b, &a, &opts);
    }
    ck_assert_msg(st == CF_OK, "inverse: %s", cf_last_error());
    const double err = rel_err_t(back, x);
    free(opts.workspace);
    cf_tensor_free(x), cf_tensor_free(back), cf_tensor_free(w), cf_tensor_free(b);
    cf_tensor_free(y);
    return err;
}

START_TEST(test_inverse_round_trip)
{
    static const int64_t shapes[][4] = {
        {3, 5, 7, 3}, {17, 4, 6, 1}, {1, 1, 1, 2}, {20, 8, 8, 12}, {2, 3, 33, 5}, {40, 4, 4, 48},
    };
    for (size_t m = 0; m < 3; m++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int64_t *sh = shapes[s];
            const double e32 = round_trip(CF_F32, CF_KERNELS_FAST, sh[0], sh[1], sh[2], sh[3],
                                          masks[m], s % 2 == 1, 40 + s);
            ck_assert_msg(e32 <= 1e-5, "%s (%lld, %lld, %lld, %lld) f32 fast: relative error "
                          "%.3g", cf_conv_mask_name(masks[m]), (long long)sh[0],
                          (long long)sh[1], (long long)sh[2], (long long)sh[3], e32);
            const double r32 = round_trip(CF_F32, CF_KERNELS_REFERENCE, sh[0], sh[1], sh[2],
                                          sh[3], masks[m], false, 50 + s);
            ck_assert_msg(r32 <= 1e-5, "%s f32 reference: relative error %.3g",
                          cf_conv_mask_name(masks[m]), r32);
            if (sh[0] * sh[1] * sh[2] * sh[3] > 4000) continue;
            const double e64 = round_trip(CF_F64, CF_KERNELS_FAST, sh[0], sh[1], sh[2], sh[3],
                                          masks[m], s % 2 == 0, 60 + s);
            ck_assert_msg(e64 <= 1e-10, "%s (%lld, %lld, %lld, %lld) f64: relative error %.3g",
                          cf_conv_mask_name(masks[m]), (long long)sh[0], (long long)sh[1],
                          (long long)sh[2], (long long)sh[3], e64);
        }
}
END_TEST

/* The fast inverse against the reference inverse on the same f32 inputs (not a round trip:
 * y is arbitrary here, so an error in one sweep cannot cancel against the forward). */
START_TEST(test_inverse_fast_matches_reference)
{
    if (!use_path(_i)) return; /* (per path: the sweeps transpose) */
    for (size_t m = 0; m < 3; m++) {
        cf_tensor *y = heap(CF_F32, 19, 6, 5, 7), *xf = heap(CF_F32, 19, 6, 5, 7);
        cf_tensor *xr = heap(CF_F32, 19, 6, 5, 7);
        cf_tensor *w = init_weight(CF_F32, 7, masks[m], 70 + m);
        cf_rng rng;
        cf_rng_seed(&rng, 71, m);
        cf_tensor_fill_uniform(y, &rng, -1, 1);
        const cf_conv_attrs a = cf_conv_attrs_masked(masks[m]);
        const cf_conv_inverse_opts ref = {.kernels = CF_KERNELS_REFERENCE};
        ck_assert_int_eq(cf_masked_conv_inverse(xf, y, w, NULL, &a), CF_OK);
        ck_assert_int_eq(cf_masked_conv_inverse_ex(xr, y, w, NULL, &a, &ref), CF_OK);
        const double e = rel_err_t(xf, xr);
        ck_assert_msg(e <= 1e-5, "%s: fast and reference inverses differ by %.3g",
                      cf_conv_mask_name(masks[m]), e);
        cf_tensor_free(y), cf_tensor_free(xf), cf_tensor_free(xr), cf_tensor_free(w);
    }
}
END_TEST

START_TEST(test_inverse_singular)
{
    for (size_t m = 0; m < 3; m++)
        for (int dt = 0; dt < 2; dt++)
            for (int family = 0; family < 2; family++) {
                const cf_dtype dtype = dt ? CF_F64 : CF_F32;
                cf_tensor *y = heap(dtype, 2, 3, 3, 3), *x = heap(dtype, 2, 3, 3, 3);
                cf_tensor *w = init_weight(dtype, 3, masks[m], 80);
                cf_rng rng;
                cf_rng_seed(&rng, 81, 0);
                cf_tensor_fill_uniform(y, &rng, -1, 1);
                const int ce = cf_conv_mask_centre(masks[m]);
                cf_tensor_set(w, ((ce * 3 + ce) * 3 + 1) * 3 + 1, 0.0);
                const cf_conv_attrs a = cf_conv_attrs_masked(masks[m]);
                const cf_conv_inverse_opts opts = {.kernels = family ? CF_KERNELS_REFERENCE
                                                                     : CF_KERNELS_FAST};
                ck_assert_int_eq(cf_masked_conv_inverse_ex(x, y, w, NULL, &a, &opts),
                                 CF_ERR_SINGULAR);
                char want[64];
                snprintf(want, sizeof want, "weight[%d][%d][1][1]", ce, ce);
                ck_assert_msg(strstr(cf_last_error(), want), "message '%s' does not name %s",
                              cf_last_error(), want);
                for (int64_t i = 0; i < x->numel; i++) ck_assert(isfinite(cf_tensor_get(x, i)));
                /* A non-finite diagonal entry is refused the same way. */
                cf_tensor_set(w, ((ce * 3 + ce) * 3 + 1) * 3 + 1, NAN);
                ck_assert_int_eq(cf_masked_conv_inverse_ex(x, y, w, NULL, &a, &opts),
                                 CF_ERR_SINGULAR);
                for (int64_t i = 0; i < x->numel; i++) ck_assert(isfinite(cf_tensor_get(x, i)));
                /* The log-det op reports it too. */
                cf_tensor_set(w, ((ce * 3 + ce) * 3 + 1) * 3 + 1, 0.0);
                cf_ctx *ctx = cf_ctx_new(0);
                ck_assert_ptr_null(cf_conv_logdet(ctx, w, masks[m], 3, 3));
                ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_SINGULAR);
                ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), want));
                cf_ctx_free(ctx);
                cf_tensor_free(y), cf_tensor_free(x), cf_tensor_free(w);
            }
}
END_TEST

START_TEST(test_conv_argument_errors)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 1, 4, 4, 3);
    cf_tensor *w = cf_tensor_new_v(ctx, CF_F32, 3, 3, 3, 3);
    /* a masked kind with the wrong padding */
    const cf_conv_attrs bad = {{1, 1, 1, 1}, CF_CONV_MASK_CINC};
    ck_assert_ptr_null(cf_conv2d(ctx, x, w, NULL, &bad));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_ARG);
    cf_ctx_reset(ctx);
    /* channels of x and weight disagree */
    cf_tensor *w2 = cf_tensor_new_v(ctx, CF_F32, 3, 3, 2, 3);
    ck_assert_ptr_null(cf_conv2d_same(ctx, x, w2, NULL));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_SHAPE);
    cf_ctx_free(ctx);
    /* the inverse of an unmasked conv */
    cf_tensor *y = heap(CF_F32, 1, 2, 2, 3), *xi = heap(CF_F32, 1, 2, 2, 3);
    cf_tensor *wi = init_weight(CF_F32, 3, CF_CONV_MASK_CINC, 1);
    const cf_conv_attrs plain = {{1, 1, 1, 1}, CF_CONV_MASK_NONE};
    ck_assert_int_eq(cf_masked_conv_inverse(xi, y, wi, NULL, &plain), CF_ERR_ARG);
    cf_tensor_free(y), cf_tensor_free(xi), cf_tensor_free(wi);
}
END_TEST

/* ---- squeeze ----------------------------------------------------------------------------- */

START_TEST(test_squeeze_channel_order)
{
    cf_ctx *ctx = cf_ctx_new(0);
    /* x (1, 2, 4, 2): value 100*h + 10*w + c */
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 1, 2, 4, 2);
    for (int h = 0; h < 2; h++)
        for (int w = 0; w < 4; w++)
            for (int c = 0; c < 2; c++) cf_tensor_set(x, (h * 4 + w) * 2 + c, 100 * h + 10 * w + c);
    for (int family = 0; family < 2; family++) {
        cf_ctx_set_kernels(ctx, family ? CF_KERNELS_REFERENCE : CF_KERNELS_FAST);
        cf_tensor *y = cf_squeeze(ctx, x);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->shape[1], 1);
        ck_assert_int_eq(y->shape[2], 2);
        ck_assert_int_eq(y->shape[3], 8);
        /* Glow: channel c*4 + dy*2 + dx of squeezed pixel (0, j) is x[dy][2j + dx][c]. */
        static const float want[2][8] = {
            {0, 10, 100, 110, 1, 11, 101, 111},
            {20, 30, 120, 130, 21, 31, 121, 131},
        };
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 8; k++)
                ck_assert_msg(cf_tensor_get(y, j * 8 + k) == want[j][k], "y[0][%d][%d] = %g, "
                              "want %g", j, k, cf_tensor_get(y, j * 8 + k), want[j][k]);
        cf_tensor *back = cf_unsqueeze(ctx, y);
        ck_assert_ptr_nonnull(back);
        ck_assert(cf_tensor_same_shape(back, x));
        ck_assert_int_eq(memcmp(back->data, x->data, (size_t)x->numel * sizeof(float)), 0);
    }
    /* a larger random round trip, both ways */
    cf_tensor *r = cf_tensor_new_v(ctx, CF_F32, 3, 6, 10, 5);
    cf_rng rng;
    cf_rng_seed(&rng, 9, 0);
    cf_tensor_fill_uniform(r, &rng, -1, 1);
    cf_tensor *rb = cf_unsqueeze(ctx, cf_squeeze(ctx, r));
    ck_assert_ptr_nonnull(rb);
    ck_assert_int_eq(memcmp(rb->data, r->data, (size_t)r->numel * sizeof(float)), 0);
    cf_ctx_free(ctx);
}
END_TEST

START_TEST(test_squeeze_odd_sizes)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F32, 1, 3, 4, 2);
    ck_assert_ptr_null(cf_squeeze(ctx, x));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "odd height"));
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "(1, 3, 4, 2)"));
    cf_ctx_reset(ctx);
    x = cf_tensor_new_v(ctx, CF_F32, 1, 4, 5, 2);
    ck_assert_ptr_null(cf_squeeze(ctx, x));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(cf_ctx_error(ctx), "odd width"));
    cf_ctx_reset(ctx);
    x = cf_tensor_new_v(ctx, CF_F32, 1, 2, 2, 6);
    ck_assert_ptr_null(cf_unsqueeze(ctx, x));
    ck_assert_int_eq(cf_ctx_status(ctx), CF_ERR_SHAPE);
    cf_ctx_free(ctx);
}
END_TEST

static Suite *conv_suite(void)
{
    Suite *s = suite_create("conv");
    TCase *fast = tcase_create("fast against reference");
    tcase_set_timeout(fast, 120);
    tcase_add_loop_test(fast, test_fast_conv_odd_shapes, 0, CF_ISA_COUNT * ODD_WIDTHS);
    tcase_add_loop_test(fast, test_fast_conv_larger_shapes, 0, CF_ISA_COUNT);
    suite_add_tcase(s, fast);
    TCase *grad = tcase_create("gradients");
    tcase_set_timeout(grad, 120);
    tcase_add_test(grad, test_gradcheck_conv);
    tcase_add_test(grad, test_masked_entries_get_no_gradient);
    tcase_add_test(grad, test_gradcheck_logdet_squeeze);
    tcase_add_test(grad, test_logdet_matches_dense_determinant);
    suite_add_tcase(s, grad);
    TCase *inv = tcase_create("inverse");
    tcase_set_timeout(inv, 120);
    tcase_add_test(inv, test_inverse_round_trip);
    tcase_add_loop_test(inv, test_inverse_fast_matches_reference, 0, CF_ISA_COUNT);
    tcase_add_test(inv, test_inverse_singular);
    tcase_add_test(inv, test_conv_argument_errors);
    suite_add_tcase(s, inv);
    TCase *sq = tcase_create("squeeze");
    tcase_add_test(sq, test_squeeze_channel_order);
    tcase_add_test(sq, test_squeeze_odd_sizes);
    suite_add_tcase(s, sq);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(conv_suite());
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
