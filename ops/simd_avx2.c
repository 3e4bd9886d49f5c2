/* simd_avx2.c: the AVX2 + FMA path of the hand-written kernels (cf_simd_impl.h), compiled with
 * -mavx2 -mfma (and without AVX-512) whatever the rest of the build uses; only called when the
 * CPU has them (cf_cpu.h). Written with intrinsics: the 8 x 8 masked transpose, the masked
 * im2col copy of thin inputs and the direct few-output-channel convolution (input channels on
 * the 8 lanes, 16 vector registers); the rest is the shared C loops (simd_loops_impl.h)
 * compiled for AVX2.
 *
 * Legend: K output channels, C input channels, P output pixels per block, T taps.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "simd_loops_impl.h"

#if !defined(__AVX2__) || !defined(__FMA__) || defined(__AVX512F__)
#error "simd_avx2.c needs -mavx2 -mfma and no AVX-512 (CMakeLists.txt)"
#endif

/* first_n(n): a lane mask of the first n (0 to 8) lanes, for maskload and maskstore. */
static const int32_t mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static inline __m256i first_n(int n)
{
    return _mm256_loadu_si256((const __m256i *)(mask_table + 8 - n));
}

/* A few floats per tap row (thin inputs, KW * C <= 8): one masked copy each, no call. */
static void im2col_row(float *col, const float *s, const cf__conv_geom *g, int64_t lrow)
{
    const int64_t C = g->C, TC = g->KH * g->KW * C, KWC = g->KW * C;
    if (KWC > 8) {
        loops_im2col_row(col, s, g, lrow);
        return;
    }
    const __m256i m = first_n((int)KWC);
    for (int64_t w = 0; w < g->Wo; w++)
        for (int64_t kh = 0; kh < g->KH; kh++)
            _mm256_maskstore_ps(col + w * TC + kh * KWC, m,
                                _mm256_maskload_ps(s + ((lrow + kh) * g->Wp + w) * C, m));
}

/* ---- transpose -------------------------------------------------------------------------- */

/* dst[j * ldd + i] = src[i * lds + j] - (sub ? sub[j] : 0) for i < nr, j < nc (both <= 8):
 * masked loads and stores, so nothing outside the block is read or written. */
static inline void tr8(float *dst, int64_t ldd, const float *src, int64_t lds, const float *sub,
                       int nr, int nc)
{
    const __m256i mc = first_n(nc), mr = first_n(nr);
    const __m256 s = sub ? _mm256_maskload_ps(sub, mc) : _mm256_setzero_ps();
    __m256 r[8], t[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        r[i] = i < nr ? _mm256_sub_ps(_mm256_maskload_ps(src + i * lds, mc), s)
                      : _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < 8; i += 2) { /* t[i]: pairs of lanes 0,1 (and 4,5); t[i+1]: 2,3 (6,7) */
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 8
    for (int h = 0; h < 8; h += 4) { /* r[h + j]: column j (low half) and j + 4 (high half) */
        r[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
        r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);
        r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
        r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 4; j++) {
        t[j] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20);
        t[j + 4] = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++)
        if (j < nc) _mm256_maskstore_ps(dst + j * ldd, mr, t[j]);
}

static void transpose(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                      int64_t cols, const float *sub)
{
    for (int64_t i0 = 0; i0 < rows; i0 += 8)
        for (int64_t j0 = 0; j0 < cols; j0 += 8) {
            const int nr = rows - i0 < 8 ? (int)(rows - i0) : 8;
            const int nc = cols - j0 < 8 ? (int)(cols - j0) : 8;
            tr8(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds, sub ? sub + j0 : NULL, nr,
                nc);
        }
}

/* ---- few output channels, direct ---------------------------------------------------------- */

/* out[i] = the sum of v[i]'s 8 lanes, for i < n: pairwise horizontal adds fold 8 vectors
 * into one (sums of lanes 0-3 in the low half, of lanes 4-7 in the high half), then the two
 * halves are added. */
static inline __attribute__((always_inline)) void hsum8(float *out, const __m256 *v, int n)
{
    const __m256 a = _mm256_hadd_ps(v[0], v[1]), b = _mm256_hadd_ps(v[2], v[3]);
    const __m256 c = _mm256_hadd_ps(v[4], v[5]), d = _mm256_hadd_ps(v[6], v[7]);
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    const __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20),
                                   _mm256_permute2f128_ps(ab, cd, 0x31));
    if (n == 8)
        _mm256_storeu_ps(out, r);
    else
        _mm256_maskstore_ps(out, first_n(n), r);
}

/* (see fwd_few in conv_xsmm.c) P x K accumulators of 8 partial sums in registers; each tap and
 * 8-channel slice loads the K weight vectors once and one input vector per pixel. */
static inline __attribute__((always_inline)) void few_block(float *out, const float *xb,
                                                            const float *zero,
                                                            const int32_t *offs, const float *wt,
                                                            int64_t C, int ntaps, const int P,
                                                            const int K)
{
    __m256 acc[CF__FEW_P][CF__FEW_K];
    for (int p = 0; p < P; p++)
        for (int k = 0; k < K; k++) acc[p][k] = _mm256_setzero_ps();
    for (int t = 0; t < ntaps; t++) {
        const float *ps[CF__FEW_P]; /* the tap's input pixels (zeros in the padding) */
        for (int p = 0; p < P; p++) {
            const int32_t o = offs[t * CF__FEW_P + p];
            ps[p] = o >= 0 ? xb + o : zero;
        }
        const float *wk = wt + (int64_t)t * K * C; /* this tap's [k][c] */
        for (int64_t c = 0; c < C; c += 8) {
            __m256 wv[CF__FEW_K];
            for (int k = 0; k < K; k++) wv[k] = _mm256_loadu_ps(wk + k * C + c);
            for (int p = 0; p < P; p++) {
                __m256 xv = _mm256_loadu_ps(ps[p] + c);
                __asm__("" : "+x"(xv)); /* one load for the K FMAs, not one folded into each */
                for (int k = 0; k < K; k++) acc[p][k] = _mm256_fmadd_ps(xv, wv[k], acc[p][k]);
            }
        }
    }
    /* out[p * K + k] = the sum of acc[p][k]'s lanes, 8 sums at a time */
    for (int q0 = 0; q0 < P * K; q0 += 8) {
        __m256 v[8];
        for (int q = 0; q < 8; q++)
            v[q] = q0 + q < P * K ? acc[(q0 + q) / K][(q0 + q) % K] : _mm256_setzero_ps();
        const int left = P * K - q0;
        hsum8(out + q0, v, left < 8 ? left : 8);
    }
}

#define FEW_DEF(P, K)                                                                        \
    static void few_##P##_##K(float *o, const float *xb, const float *z, const int32_t *offs, \
                              const float *w, int64_t C, int n)                              \
    {                                                                                        \
        few_block(o, xb, z, offs, w, C, n, P, K);                                            \
    }
#define FEW_DEF_P(P) FEW_DEF(P, 1) FEW_DEF(P, 2) FEW_DEF(P, 3) FEW_DEF(P, 4)
FEW_DEF_P(1) FEW_DEF_P(2) FEW_DEF_P(3) FEW_DEF_P(4) FEW_DEF_P(5) FEW_DEF_P(6) FEW_DEF_P(7)
FEW_DEF_P(8)
#define FEW_ROW(P) {few_##P##_1, few_##P##_2, few_##P##_3, few_##P##_4}

const cf__simd cf__simd_avx2 = {
    .isa = CF_ISA_AVX2,
    .transpose = transpose,
    .finish_rows = loops_finish_rows,
    .im2col_row = im2col_row,
    .actnorm_rows_fwd = loops_actnorm_rows_fwd,
    .actnorm_rows_bwd = loops_actnorm_rows_bwd,
    /* P * K accumulators, K weights and one input vector within the 16 vector registers */
    .few_lanes = 8,
    .few_pmax = {8, 6, 4, 2},
    .few = {FEW_ROW(1), FEW_ROW(2), FEW_ROW(3), FEW_ROW(4), FEW_ROW(5), FEW_ROW(6), FEW_ROW(7),
            FEW_ROW(8)},
};

#else /* not x86: the path is never chosen (cf_cpu.h); its table holds the plain loops */
#include "simd_loops_impl.h"
const cf__simd cf__simd_avx2 = {
    .isa = CF_ISA_AVX2,
    .transpose = loops_transpose,
    .finish_rows = loops_finish_rows,
    .im2col_row = loops_im2col_row,
    .actnorm_rows_fwd = loops_actnorm_rows_fwd,
    .actnorm_rows_bwd = loops_actnorm_rows_bwd,
};
#endif
