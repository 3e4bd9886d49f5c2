/* simd_avx512.c: the AVX-512 path of the hand-written kernels (cf_simd_impl.h), compiled with
 * -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma whatever the rest of the build uses; only
 * called when the CPU has them (cf_cpu.h). Written with intrinsics: the 16 x 16 masked
 * transpose, the 128-channel epilogue, the masked im2col copy of thin inputs and the direct
 * few-output-channel convolution (input channels on the 16 lanes); the rest is the shared C
 * loops (simd_loops_impl.h) compiled for AVX-512.
 *
 * Legend: K output channels, C input channels, P output pixels per block, T taps.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "simd_loops_impl.h"

#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512DQ__) ||              \
    !defined(__AVX512VL__) || !defined(__FMA__)
#error "simd_avx512.c needs -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma (CMakeLists.txt)"
#endif

/* finish_rows on 128 channels from k0 of n rows (stride K): the shifts and scales stay in 16
 * registers over the rows, so each vector of output costs one load and one store. */
static void finish_128(float *y, int64_t n, int64_t K, const float *sh, const float *sc,
                       bool relu)
{
    __m512 a[8], m[8];
    for (int j = 0; j < 8; j++) {
        a[j] = _mm512_loadu_ps(sh + 16 * j);
        m[j] = _mm512_loadu_ps(sc + 16 * j);
    }
    const __m512 z = _mm512_setzero_ps();
    for (int64_t p = 0; p < n; p++) {
        float *r = y + p * K;
        for (int j = 0; j < 8; j++) {
            __m512 v = _mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(r + 16 * j), a[j]), m[j]);
            _mm512_storeu_ps(r + 16 * j, relu ? _mm512_max_ps(v, z) : v);
        }
    }
}
static void finish_rows(float *y, int64_t n, int64_t K, const float *shift, const float *scale,
                        bool relu)
{
    if (K % 128 == 0) {
        for (int64_t k0 = 0; k0 < K; k0 += 128)
            finish_128(y + k0, n, K, shift + k0, scale + k0, relu);
        return;
    }
    loops_finish_rows(y, n, K, shift, scale, relu);
}

/* A few floats per tap row (thin inputs, KW * C <= 16): one masked copy each, no call. */
static void im2col_row(float *col, const float *s, const cf__conv_geom *g, int64_t lrow)
{
    const int64_t C = g->C, TC = g->KH * g->KW * C, KWC = g->KW * C;
    if (KWC > 16) {
        loops_im2col_row(col, s, g, lrow);
        return;
    }
    const __mmask16 m = (__mmask16)((1u << KWC) - 1);
    for (int64_t w = 0; w < g->Wo; w++)
        for (int64_t kh = 0; kh < g->KH; kh++)
            _mm512_mask_storeu_ps(col + w * TC + kh * KWC, m,
                                  _mm512_maskz_loadu_ps(m, s + ((lrow + kh) * g->Wp + w) * C));
}

/* dst[j * ldd + i] = src[i * lds + j] - (sub ? sub[j] : 0) for i < nr, j < nc (both <= 16):
 * masked loads and stores, so nothing outside the block is read or written. */
static inline void tr16(float *dst, int64_t ldd, const float *src, int64_t lds, const float *sub,
                        int nr, int nc)
{
    /* (fully unrolled, so r and t live in registers) */
    const __mmask16 mc = (__mmask16)((1u << nc) - 1), mr = (__mmask16)((1u << nr) - 1);
    const __m512 s = sub ? _mm512_maskz_loadu_ps(mc, sub) : _mm512_setzero_ps();
    __m512 r[16], t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        r[i] = i < nr ? _mm512_sub_ps(_mm512_maskz_loadu_ps(mc, src + i * lds), s)
                      : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 16
    for (int h = 0; h < 16; h += 8)
#pragma GCC unroll 16
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
#pragma GCC unroll 16
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++)
        if (j < nc) _mm512_mask_storeu_ps(dst + j * ldd, mr, r[j]);
}
static void transpose(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                      int64_t cols, const float *sub)
{
    for (int64_t i0 = 0; i0 < rows; i0 += 16)
        for (int64_t j0 = 0; j0 < cols; j0 += 16) {
            const int nr = rows - i0 < 16 ? (int)(rows - i0) : 16;
            const int nc = cols - j0 < 16 ? (int)(cols - j0) : 16;
            tr16(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds, sub ? sub + j0 : NULL, nr,
                 nc);
        }
}

/* ---- few output channels, direct ---------------------------------------------------------- */

/* (see fwd_few in conv_xsmm.c) A block of P output pixels of one row keeps P x K accumulators
 * of 16 partial sums in registers; each tap and 16-channel slice loads the K weight vectors
 * once and one input vector per pixel; the 16 partial sums are added at the end. Per block and
 * slice, K + P loads feed K * P FMAs. */

/* out[i] = the sum of v[i]'s 16 lanes, for i < n: a transposing reduction (pairs of vectors
 * fold halves, then quarters, then pairs and single lanes of 128-bit lanes into each other),
 * 45 shuffles and adds for 16 sums instead of 16 separate reductions of 8 steps each. */
static inline __attribute__((always_inline)) void hsum16(float *out, __m512 *v, int n)
{
    for (int i = 0; i < 8; i++) /* v[i]: v[2i] in quarters 0-1, v[2i+1] in quarters 2-3 */
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++) /* quarter j of v[i]: original v[4i + j] */
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++) /* quarter j: v[8i + j] in lanes 0-1, v[8i + 4 + j] in 2-3 */
        v[i] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0xEE));
    /* lane 4j + m: the sum of v[4m + j] */
    const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88),
                                   _mm512_shuffle_ps(v[0], v[1], 0xDD));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_mask_storeu_ps(out, (__mmask16)((1u << n) - 1), _mm512_permutexvar_ps(idx, r));
}

static inline __attribute__((always_inline)) void few_block(float *out, const float *xb,
                                                            const float *zero,
                                                            const int32_t *offs, const float *wt,
                                                            int64_t C, int ntaps, const int P,
                                                            const int K)
{
    __m512 acc[CF__FEW_P][CF__FEW_K];
    for (int p = 0; p < P; p++)
        for (int k = 0; k < K; k++) acc[p][k] = _mm512_setzero_ps();
    for (int t = 0; t < ntaps; t++) {
        const float *ps[CF__FEW_P]; /* the tap's input pixels (zeros in the padding) */
        for (int p = 0; p < P; p++) {
            const int32_t o = offs[t * CF__FEW_P + p];
            ps[p] = o >= 0 ? xb + o : zero;
        }
        const float *wk = wt + (int64_t)t * K * C; /* this tap's [k][c] */
        for (int64_t c = 0; c < C; c += 16) {
            __m512 wv[CF__FEW_K];
            for (int k = 0; k < K; k++) wv[k] = _mm512_load_ps(wk + k * C + c);
            for (int p = 0; p < P; p++) {
                __m512 xv = _mm512_loadu_ps(ps[p] + c);
                __asm__("" : "+v"(xv)); /* one load for the K FMAs, not one folded into each */
                for (int k = 0; k < K; k++) acc[p][k] = _mm512_fmadd_ps(xv, wv[k], acc[p][k]);
            }
        }
    }
    /* out[p * K + k] = the sum of acc[p][k]'s lanes, 16 sums at a time */
    for (int q0 = 0; q0 < P * K; q0 += 16) {
        __m512 v[16];
        for (int q = 0; q < 16; q++)
            v[q] = q0 + q < P * K ? acc[(q0 + q) / K][(q0 + q) % K] : _mm512_setzero_ps();
        const int left = P * K - q0;
        hsum16(out + q0, v, left < 16 ? left : 16);
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

const cf__simd cf__simd_avx512 = {
    .isa = CF_ISA_AVX512,
    .transpose = transpose,
    .finish_rows = finish_rows,
    .im2col_row = im2col_row,
    .actnorm_rows_fwd = loops_actnorm_rows_fwd,
    .actnorm_rows_bwd = loops_actnorm_rows_bwd,
    /* P * K accumulators, K weights and one input vector within the 32 vector registers */
    .few_lanes = 16,
    .few_pmax = {8, 8, 8, 6},
    .few = {FEW_ROW(1), FEW_ROW(2), FEW_ROW(3), FEW_ROW(4), FEW_ROW(5), FEW_ROW(6), FEW_ROW(7),
            FEW_ROW(8)},
};

#else /* not x86: the path is never chosen (cf_cpu.h); its table holds the plain loops */
#include "simd_loops_impl.h"
const cf__simd cf__simd_avx512 = {
    .isa = CF_ISA_AVX512,
    .transpose = loops_transpose,
    .finish_rows = loops_finish_rows,
    .im2col_row = loops_im2col_row,
    .actnorm_rows_fwd = loops_actnorm_rows_fwd,
    .actnorm_rows_bwd = loops_actnorm_rows_bwd,
};
#endif
