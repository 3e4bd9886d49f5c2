/* masked_conv.c: the mask kinds of the invertible convolutions (CInC, emerging causal and
 * anti-causal) and the inverse of a masked convolution, off the tape.
 *
 * Inverse: y = conv(x) + bias with a triangular current-pixel tap Wc, so at each pixel, taken
 * in the sweep order of the mask (raster, or reverse raster for anti-causal),
 *   x(i, j) = Mc^-1 (y(i, j) - bias - sum_{other taps t} M_t x(neighbour_t)),
 * with M_t[o][c] = W_t[c][o] (masked), the neighbours all solved already.
 *   Reference: plain loops in double; back-substitution over channels at each pixel.
 *   Fast (f32): the batch is innermost, X[hp][wp][c][b] (padded, rim zero), so one pixel of the
 *   whole batch is a (B x C) column-major matrix and the three (or two) taps of a kernel row
 *   are contiguous pixels, a (B x nkw*C) matrix. Mc^-1 is folded into the weights:
 *   F_t = -(Mc^-1 M_t)^T for neighbours and F_c = (Mc^-1)^T for the current pixel, whose slot
 *   holds y - bias until it is solved. Each pixel is then one strided batch-reduce GEMM over
 *   the kernel rows, X(i, j) = sum_rows X_row (B x nkw*C) F_row (nkw*C x C), written to a
 *   temporary and copied into the slot. Threads take disjoint slices of the batch.
 *
 * Not here: the forward convolution (conv2d.c), the log-determinant (conv_logdet.c).
 *
 * Legend: B batch, H, W image size, C channels, Hp, Wp padded size, Bp batch rounded up to 16
 * (the leading dimension of the fast layout), nr x nkw the rectangle of taps the mask keeps.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cf_conv_impl.h"

/* ---- masks ---------------------------------------------------------------------------- */

cf_conv_attrs cf_conv_attrs_masked(cf_conv_mask mask)
{
    cf_conv_attrs a = {{1, 1, 1, 1}, mask};
    if (mask == CF_CONV_MASK_CINC) a.pad[0] = a.pad[1] = 2, a.pad[2] = a.pad[3] = 0;
    return a;
}

const char *cf_conv_mask_name(cf_conv_mask mask)
{
    switch (mask) {
    case CF_CONV_MASK_NONE: return "none";
    case CF_CONV_MASK_CINC: return "cinc";
    case CF_CONV_MASK_EMERGING_CAUSAL: return "emerging_causal";
    case CF_CONV_MASK_EMERGING_ANTICAUSAL: return "emerging_anticausal";
    default: return "?";
    }
}

int cf_conv_mask_keeps(cf_conv_mask mask, int kh, int kw, int64_t c, int64_t o)
{
    switch (mask) {
    case CF_CONV_MASK_CINC:
        return kh == 2 && kw == 2 ? c >= o : 1;
    case CF_CONV_MASK_EMERGING_CAUSAL:
        if (kh > 1 || kw > 1) return 0;
        return kh == 1 && kw == 1 ? c >= o : 1;
    case CF_CONV_MASK_EMERGING_ANTICAUSAL:
        if (kh < 1 || kw < 1) return 0;
        return kh == 1 && kw == 1 ? c <= o : 1;
    default:
        return 1;
    }
}

int cf_conv_mask_centre(cf_conv_mask mask)
{
    return mask == CF_CONV_MASK_CINC ? 2 : 1;
}

bool cf_conv_mask_reverse(cf_conv_mask mask)
{
    return mask == CF_CONV_MASK_EMERGING_ANTICAUSAL;
}

/* The rectangle of taps a mask keeps: rows [*kh0, *kh0 + *nr), columns [*kw0, *kw0 + *nkw). */
static void support(cf_conv_mask mask, int *kh0, int *nr, int *kw0, int *nkw)
{
    switch (mask) {
    case CF_CONV_MASK_EMERGING_CAUSAL: *kh0 = 0, *nr = 2, *kw0 = 0, *nkw = 2; break;
    case CF_CONV_MASK_EMERGING_ANTICAUSAL: *kh0 = 1, *nr = 2, *kw0 = 1, *nkw = 2; break;
    default: *kh0 = 0, *nr = 3, *kw0 = 0, *nkw = 3; break;
    }
}

/* ---- checks --------------------------------------------------------------------------- */

static cf_status check_args(cf_tensor *x, const cf_tensor *y, const cf_tensor *w,
                            const cf_tensor *bias, const cf_conv_attrs *attrs)
{
    char s[96], t[96];
    CF_ASSERT(x && y && w && attrs, "cf_masked_conv_inverse needs x, y, weight and attrs");
    if (attrs->mask <= CF_CONV_MASK_NONE || attrs->mask >= CF_CONV_MASK_COUNT)
        return cf_set_error(CF_ERR_ARG, "cf_masked_conv_inverse: mask kind %d (%s) is not "
                            "invertible by construction; use CInC or an emerging mask",
                            (int)attrs->mask, cf_conv_mask_name(attrs->mask));
    const cf_conv_attrs want = cf_conv_attrs_masked(attrs->mask);
    if (memcmp(want.pad, attrs->pad, sizeof want.pad) != 0)
        return cf_set_error(CF_ERR_ARG, "cf_masked_conv_inverse: the %s mask needs padding "
                            "(%d, %d, %d, %d), got (%d, %d, %d, %d) (use cf_conv_attrs_masked)",
                            cf_conv_mask_name(attrs->mask), want.pad[0], want.pad[1],
                            want.pad[2], want.pad[3], attrs->pad[0], attrs->pad[1],
                            attrs->pad[2], attrs->pad[3]);
    if (y->ndim != 4 || y->shape[3] < 1)
        return cf_set_error(CF_ERR_SHAPE, "cf_masked_conv_inverse: y %s must be (B, H, W, C)",
                            CF__DESC(y, s));
    if (!cf_tensor_same_shape(x, y))
        return cf_set_error(CF_ERR_SHAPE, "cf_masked_conv_inverse: x %s must have y's shape %s",
                            CF__DESC(x, s), CF__DESC(y, t));
    const int64_t C = y->shape[3];
    if (w->ndim != 4 || w->shape[0] != 3 || w->shape[1] != 3 || w->shape[2] != C ||
        w->shape[3] != C)
        return cf_set_error(CF_ERR_SHAPE, "cf_masked_conv_inverse: weight %s must be (3, 3, "
                            "%lld, %lld) for y %s", CF__DESC(w, s), (long long)C, (long long)C,
                            CF__DESC(y, t));
    if (bias && (bias->ndim != 1 || bias->shape[0] != C))
        return cf_set_error(CF_ERR_SHAPE, "cf_masked_conv_inverse: bias %s must be (%lld)",
                            CF__DESC(bias, s), (long long)C);
    if (x->dtype != y->dtype || w->dtype != y->dtype || (bias && bias->dtype != y->dtype))
        return cf_set_error(CF_ERR_DTYPE, "cf_masked_conv_inverse: x, y, weight and bias must "
                            "share one dtype (y is %s, weight %s)", cf_dtype_name(y->dtype),
                            cf_dtype_name(w->dtype));
    return CF_OK;
}

/* CF_ERR_SINGULAR naming the first zero or non-finite diagonal entry of the current tap, whose
 * entries are wc[c * C + o]. */
static cf_status check_diagonal(const double *wc, int64_t C, cf_conv_mask mask)
{
    const int ce = cf_conv_mask_centre(mask);
    for (int64_t o = 0; o < C; o++) {
        const double d = wc[o * C + o];
        if (d == 0.0 || !isfinite(d))
            return cf_set_error(CF_ERR_SINGULAR, "cf_masked_conv_inverse: weight[%d][%d][%lld]"
                                "[%lld] = %g, a diagonal entry of the current-pixel tap, so the "
                                "%s convolution is not invertible", ce, ce, (long long)o,
                                (long long)o, d, cf_conv_mask_name(mask));
    }
    return CF_OK;
}

/* ---- reference -------------------------------------------------------------------------- */

static cf_status inverse_ref(cf_tensor *x, const cf_tensor *y, const cf_tensor *w,
                             const cf_tensor *bias, const cf_conv_attrs *attrs)
{
    const int64_t B = y->shape[0], H = y->shape[1], W = y->shape[2], C = y->shape[3];
    const cf_conv_mask mask = attrs->mask;
    const int ce = cf_conv_mask_centre(mask), pt = attrs->pad[0], pl = attrs->pad[1];
    const bool reverse = cf_conv_mask_reverse(mask);
    double *wm = malloc((size_t)(9 * C * C) * sizeof(double));
    double *xs = calloc((size_t)(y->numel ? y->numel : 1), sizeof(double));
    double *r = malloc((size_t)C * sizeof(double));
    cf_status st = wm && xs && r ? CF_OK : cf_set_error(CF_ERR_NOMEM, "cf_masked_conv_inverse: "
                                                        "out of memory");
    if (st != CF_OK) goto done;
    for (int kh = 0, e = 0; kh < 3; kh++)
        for (int kw = 0; kw < 3; kw++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t o = 0; o < C; o++, e++)
                    wm[e] = cf_conv_mask_keeps(mask, kh, kw, c, o) ? cf_tensor_get(w, e) : 0.0;
    const double *wc = wm + (ce * 3 + ce) * C * C; /* wc[c * C + o] */
    if ((st = check_diagonal(wc, C, mask)) != CF_OK) goto done;

    for (int64_t b = 0; b < B; b++)
        for (int64_t step = 0; step < H * W; step++) {
            const int64_t p = reverse ? H * W - 1 - step : step, i = p / W, j = p % W;
            const int64_t at = ((b * H + i) * W + j) * C;
            for (int64_t o = 0; o < C; o++)
                r[o] = cf_tensor_get(y, at + o) - (bias ? cf_tensor_get(bias, o) : 0.0);
            for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++) {
                    const int64_t ih = i + kh - pt, iw = j + kw - pl;
                    if ((kh == ce && kw == ce) || !cf_conv_mask_keeps(mask, kh, kw, 0, 0))
                        continue;
                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                    const double *xn = xs + ((b * H + ih) * W + iw) * C;
                    const double *wt = wm + (kh * 3 + kw) * C * C;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t o = 0; o < C; o++) r[o] -= wt[c * C + o] * xn[c];
                }
            /* Back-substitution: y_o = sum_c Wc[c][o] x_c over c >= o (causal) or c <= o. */
            double *xo = xs + at;
            if (!reverse) {
                for (int64_t o = C - 1; o >= 0; o--) {
                    double s = r[o];
                    for (int64_t c = o + 1; c < C; c++) s -= wc[c * C + o] * xo[c];
                    xo[o] = s / wc[o * C + o];
                }
            } else {
                for (int64_t o = 0; o < C; o++) {
                    double s = r[o];
                    for (int64_t c = 0; c < o; c++) s -= wc[c * C + o] * xo[c];
                    xo[o] = s / wc[o * C + o];
                }
            }
        }
    for (int64_t e = 0; e < x->numel; e++) cf_tensor_set(x, e, xs[e]);
done:
    free(wm);
    free(xs);
    free(r);
    return st;
}

/* ---- fast f32 --------------------------------------------------------------------------- */

/* Sizes of the fast kernel's workspace, in floats, each part a whole number of 64-byte lines. */
typedef struct inv_layout {
    int64_t B, H, W, C, Bp, Hp, Wp;
    int kh0, nr, kw0, nkw;
    int64_t kk;                                /* nkw * C, the k of each GEMM */
    int64_t xbuf, folded, temp, wmask, dbl;    /* parts, floats */
} inv_layout;

static int64_t lines(int64_t floats)
{
    return (floats + 15) & ~(int64_t)15;
}

static void inv_layout_init(inv_layout *L, const cf_tensor *y, const cf_conv_attrs *attrs)
{
    L->B = y->shape[0], L->H = y->shape[1], L->W = y->shape[2], L->C = y->shape[3];
    L->Bp = lines(L->B);
    L->Hp = L->H + attrs->pad[0] + attrs->pad[2], L->Wp = L->W + attrs->pad[1] + attrs->pad[3];
    support(attrs->mask, &L->kh0, &L->nr, &L->kw0, &L->nkw);
    L->kk = L->nkw * L->C;
    L->xbuf = lines(L->Hp * L->Wp * L->C * L->Bp);
    L->folded = lines(L->nr * L->kk * L->C);
    L->temp = lines(L->Bp * L->C);
    L->wmask = lines(9 * L->C * L->C + L->W * L->C); /* masked weights, bias along a row */
    /* Mc^-1, a tap's coefficients and its weights with rows padded to 32 (f64) */
    L->dbl = lines(2 * (2 * L->C * L->C + L->C * (L->C + 31) / 32 * 32));
}

size_t cf_masked_conv_inverse_workspace(const cf_tensor *y, const cf_conv_attrs *attrs)
{
    if (!y || !attrs || y->dtype != CF_F32 || y->ndim != 4) return 0;
    inv_layout L;
    inv_layout_init(&L, y, attrs);
    return (size_t)(L.xbuf + L.folded + L.temp + L.wmask + L.dbl) * sizeof(float) + 64;
}

/* Folds the current tap's inverse into the weights: folded[r][o][q] (q = kwr * C + c) for the
 * tap (kh0 + r, kw0 + kwr). wm is the masked weight [kh][kw][c][o]; minv, coef and wtp are
 * C x C doubles of scratch. Returns CF_OK or CF_ERR_SINGULAR. */
/* Columns of one tap's coefficients computed together in fold_weights (kept in registers). */
#define FOLD_BLOCK 32

static cf_status fold_weights(float *folded, double *minv, double *coef, double *wtp,
                              const float *wm, const inv_layout *L, cf_conv_mask mask)
{
    const int64_t C = L->C;
    const int ce = cf_conv_mask_centre(mask);
    const bool upper = !cf_conv_mask_reverse(mask);
    /* Mc[o][c] = Wc[c][o] is triangular: upper (c >= o) or lower (c <= o). */
    const float *wc = wm + (ce * 3 + ce) * C * C;
    for (int64_t o = 0; o < C; o++) coef[o * C + o] = wc[o * C + o];
    cf_status st = check_diagonal(coef, C, mask);
    if (st != CF_OK) return st;
    /* minv = Mc^-1 (stored minv[o * C + k]) by substitution on whole rows:
     * minv[o][:] = (e_o - sum_{c beyond o} Mc[o][c] minv[c][:]) / Mc[o][o], rows in solve order. */
    for (int64_t step = 0; step < C; step++) {
        const int64_t o = upper ? C - 1 - step : step;
        double *mo = minv + o * C;
        for (int64_t k = 0; k < C; k++) mo[k] = k == o ? 1.0 : 0.0;
        const int64_t c0 = upper ? o + 1 : 0, c1 = upper ? C : o;
        for (int64_t c = c0; c < c1; c++) {
            const double f = wc[c * C + o];
            const double *mc = minv + c * C;
#pragma omp simd
            for (int64_t k = 0; k < C; k++) mo[k] -= f * mc[k];
        }
        const double inv = 1.0 / wc[o * C + o];
#pragma omp simd
        for (int64_t k = 0; k < C; k++) mo[k] *= inv;
    }
    for (int r = 0; r < L->nr; r++)
        for (int kwr = 0; kwr < L->nkw; kwr++) {
            const int kh = L->kh0 + r, kw = L->kw0 + kwr;
            if (kh == ce && kw == ce) {
                memcpy(coef, minv, (size_t)(C * C) * sizeof(double));
            } else {
                /* coef[o][c] = -sum_p minv[o][p] * W[kh][kw][c][p], as rows: coef[o][:] -=
                 * minv[o][p] * wtp[p][:] with wtp[p][c] = W[kh][kw][c][p] (rows padded with
                 * zeros to ldw, a multiple of FOLD_BLOCK, so a block of coef[o][:] stays in
                 * registers over p); minv is triangular, so p runs over its nonzero part. */
                const float *wt = wm + (kh * 3 + kw) * C * C;
                const int64_t ldw = (C + FOLD_BLOCK - 1) / FOLD_BLOCK * FOLD_BLOCK;
                for (int64_t p = 0; p < C; p++) {
                    for (int64_t c = 0; c < C; c++) wtp[p * ldw + c] = wt[c * C + p];
                    for (int64_t c = C; c < ldw; c++) wtp[p * ldw + c] = 0.0;
                }
                for (int64_t o = 0; o < C; o++) {
                    const int64_t p0 = upper ? o : 0, p1 = upper ? C : o + 1;
                    for (int64_t c0 = 0; c0 < C; c0 += FOLD_BLOCK) {
                        double acc[FOLD_BLOCK] = {0};
                        for (int64_t p = p0; p < p1; p++) {
                            const double m = -minv[o * C + p];
                            const double *wr = wtp + p * ldw + c0;
#pragma omp simd
                            for (int j = 0; j < FOLD_BLOCK; j++) acc[j] += m * wr[j];
                        }
                        for (int64_t j = 0; j < FOLD_BLOCK && c0 + j < C; j++)
                            coef[o * C + c0 + j] = acc[j];
                    }
                }
            }
            for (int64_t o = 0; o < C; o++)
                for (int64_t c = 0; c < C; c++) {
                    const double v = coef[o * C + c];
                    if (!(fabs(v) <= 1e30))
                        return cf_set_error(CF_ERR_SINGULAR, "cf_masked_conv_inverse: the "
                                            "current-pixel tap weight[%d][%d] is too close to "
                                            "singular (its inverse overflows)", ce, ce);
                    folded[((int64_t)r * C + o) * L->kk + kwr * C + c] = (float)v;
                }
        }
    return CF_OK;
}

/* Thread slice s of nt: images [*m0, *m1), whole vectors of 16 except at the end. */
static void batch_slice(const inv_layout *L, int s, int nt, int64_t *m0, int64_t *m1)
{
    const int64_t vecs = L->Bp / 16;
    *m0 = 16 * (vecs * s / nt);
    *m1 = 16 * (vecs * (s + 1) / nt);
    if (*m1 > L->B) *m1 = L->B;
    if (*m0 > *m1) *m0 = *m1;
}

static cf_status inverse_fast(cf_tensor *x, const cf_tensor *y, const cf_tensor *weight,
                              const cf_tensor *bias, const cf_conv_attrs *attrs, void *workspace,
                              size_t workspace_size)
{
    inv_layout L;
    inv_layout_init(&L, y, attrs);
    const cf_conv_mask mask = attrs->mask;
    const size_t need = cf_masked_conv_inverse_workspace(y, attrs);
    if (workspace && workspace_size < need)
        return cf_set_error(CF_ERR_ARG, "cf_masked_conv_inverse: the workspace has %zu bytes, "
                            "%zu are needed (cf_masked_conv_inverse_workspace)", workspace_size,
                            need);
    const int nt = omp_get_max_threads();
    void *owned = NULL;
    cf__xsmm_fn *fns = malloc((size_t)nt * sizeof *fns);
    if (!fns || (!workspace && posix_memalign(&owned, 64, need) != 0)) {
        free(fns);
        return cf_set_error(CF_ERR_NOMEM, "cf_masked_conv_inverse: cannot allocate a %zu-byte "
                            "workspace", need);
    }
    if (!workspace) workspace = owned;
    float *X = (float *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);
    float *F = X + L.xbuf, *temp = F + L.folded, *wm = temp + L.temp;
    double *minv = (double *)(wm + L.wmask), *coef = minv + L.C * L.C, *wtp = coef + L.C * L.C;
    const int64_t B = L.B, H = L.H, W = L.W, C = L.C, Bp = L.Bp, Wp = L.Wp;
    const int pt = attrs->pad[0], pl = attrs->pad[1];
    const bool reverse = cf_conv_mask_reverse(mask);

    /* The masked weight: taps outside the support are never read; the current tap loses its
     * masked triangle. */
    memcpy(wm, weight->data, (size_t)(9 * C * C) * sizeof(float));
    {
        const int ce = cf_conv_mask_centre(mask);
        float *wc = wm + (ce * 3 + ce) * C * C;
        for (int64_t c = 0; c < C; c++)
            for (int64_t o = 0; o < C; o++)
                if (!cf_conv_mask_keeps(mask, ce, ce, c, o)) wc[c * C + o] = 0.0f;
    }
    cf_status st = fold_weights(F, minv, coef, wtp, wm, &L, mask);

    /* One kernel per thread slice (slices differ in size by at most a vector of 16). */
    cf__xsmm_key key = {.kind = CF__XSMM_BR_STRD, .n = (int)C, .k = (int)L.kk, .lda = (int)Bp,
                        .ldb = (int)L.kk, .stride_a = (int)(Wp * C * Bp * (int64_t)sizeof(float)),
                        .stride_b = (int)(L.kk * C * (int64_t)sizeof(float)), .beta = 0};
    for (int s = 0; s < nt && st == CF_OK; s++) {
        int64_t m0, m1;
        batch_slice(&L, s, nt, &m0, &m1);
        fns[s].strd = NULL;
        if (m1 <= m0) continue;
        key.m = key.ldc = (int)(m1 - m0);
        if (!cf__xsmm_get(&key, &fns[s]))
            st = cf_set_error(CF_ERR_STATE, "cf_masked_conv_inverse: no libxsmm kernel for "
                              "m %lld, n %lld, k %lld", (long long)(m1 - m0), (long long)C,
                              (long long)L.kk);
    }
    if (st != CF_OK) {
        free(owned);
        free(fns);
        return st;
    }

    float *bq = wm + 9 * C * C; /* bq[q] = bias[q % C] along an image row */
    for (int64_t q = 0; q < W * C; q++) bq[q] = bias ? ((const float *)bias->data)[q % C] : 0.0f;
    const float *yv = y->data;
    float *xv = x->data;
    const int64_t HW = H * W, WC = W * C;
#pragma omp parallel num_threads(nt)
    {
        /* y - bias into the padded, batch-innermost buffer; zero rim. */
#pragma omp for schedule(static)
        for (int64_t hp = 0; hp < L.Hp; hp++) {
            float *row = X + hp * Wp * C * Bp;
            const int64_t i = hp - pt;
            if (i < 0 || i >= H) {
                memset(row, 0, (size_t)(Wp * C * Bp) * sizeof(float));
                continue;
            }
            memset(row, 0, (size_t)(pl * C * Bp) * sizeof(float));
            memset(row + (pl + W) * C * Bp, 0, (size_t)((Wp - pl - W) * C * Bp) * sizeof(float));
            cf__transpose_f32(row + pl * C * Bp, Bp, yv + i * WC, HW * C, B, WC, bq);
        }
        /* (the implicit barrier of the loop above: every slot holds y - bias) */
        const int tid = omp_get_thread_num(), nteam = omp_get_num_threads();
        for (int s = tid; s < nt; s += nteam) {
            int64_t m0, m1;
            batch_slice(&L, s, nt, &m0, &m1);
            const int64_t m = m1 - m0;
            if (m <= 0) continue;
            float *tm = temp + m0 * C;
            unsigned long long count = (unsigned long long)L.nr;
            for (int64_t step = 0; step < HW; step++) {
                const int64_t p = reverse ? HW - 1 - step : step, i = p / W, j = p % W;
                fns[s].strd(X + ((i + L.kh0) * Wp + j + L.kw0) * C * Bp + m0, F, tm, &count);
                float *slot = X + ((i + pt) * Wp + j + pl) * C * Bp + m0;
                for (int64_t c = 0; c < C; c++)
                    memcpy(slot + c * Bp, tm + c * m, (size_t)m * sizeof(float));
            }
        }
#pragma omp barrier
        /* Back to NHWC. */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < H; i++)
            cf__transpose_f32(xv + i * WC, HW * C, X + ((i + pt) * Wp + pl) * C * Bp, Bp, WC, B,
                              NULL);
    }
    free(owned);
    free(fns);
    return CF_OK;
}

/* ---- entry points ----------------------------------------------------------------------- */

cf_status cf_masked_conv_inverse_ex(cf_tensor *x, const cf_tensor *y, const cf_tensor *weight,
                                    const cf_tensor *bias, const cf_conv_attrs *attrs,
                                    const cf_conv_inverse_opts *opts)
{
    cf_status st = check_args(x, y, weight, bias, attrs);
    if (st != CF_OK) return st;
    const cf_kernels kernels = opts ? opts->kernels : CF_KERNELS_FAST;
    if (y->dtype == CF_F32 && kernels == CF_KERNELS_FAST && y->numel > 0)
        return inverse_fast(x, y, weight, bias, attrs, opts ? opts->workspace : NULL,
                            opts ? opts->workspace_size : 0);
    return inverse_ref(x, y, weight, bias, attrs);
}

cf_status cf_masked_conv_inverse(cf_tensor *x, const cf_tensor *y, const cf_tensor *weight,
                                 const cf_tensor *bias, const cf_conv_attrs *attrs)
{
    return cf_masked_conv_inverse_ex(x, y, weight, bias, attrs, NULL);
}
