/* cf_simd_impl.h: the hand-written f32 kernels that exist once per instruction-set path (not
 * installed), gathered in one table per path and chosen at run time (cf_cpu.h).
 *
 * Each path is its own translation unit compiled with its own flags (CMakeLists.txt):
 * simd_avx512.c (-mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma), simd_avx2.c (-mavx2
 * -mfma), simd_generic.c (the build's baseline). The plain C loops they share are written once
 * in simd_loops_impl.h and compiled into each, so the compiler vectorises them for that path.
 * Callers fetch the table once per kernel call (cf__simd_get: one load, no CPUID).
 *
 * Legend: K output channels, C input channels, P output pixels per block, T taps.
 */
#ifndef CF_SIMD_IMPL_H
#define CF_SIMD_IMPL_H

#include "cf_conv_impl.h"
#include "cf_cpu.h"

/* The direct few-output-channel convolution block (see fwd_few in conv_xsmm.c): up to
 * CF__FEW_P output pixels of one row and CF__FEW_K output channels. */
#define CF__FEW_K 4
#define CF__FEW_P 8

/* out[p * K + k] (p < P, k < K, both fixed by the table entry) = sum over the ntaps taps and
 * the C input channels of the input pixel at xb + offs[t * CF__FEW_P + p] (offs -1: the
 * C-float zero vector `zero`) times wt[t][k][c] (wt: (ntaps, K, C)). C is a multiple of the
 * path's few_lanes. Reads only; writes out[0 .. P*K). */
typedef void (*cf__few_fn)(float *out, const float *xb, const float *zero, const int32_t *offs,
                           const float *wt, int64_t C, int ntaps);

typedef struct cf__simd {
    cf_isa isa;
    /* dst[j * ldd + i] = src[i * lds + j] - (sub ? sub[j] : 0), i < rows, j < cols (the
     * contract of cf__transpose_f32). */
    void (*transpose)(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                      int64_t cols, const float *sub);
    /* n rows of K (stride K): y = (y + shift) * scale, then max(y, 0) with relu. */
    void (*finish_rows)(float *y, int64_t n, int64_t K, const float *shift, const float *scale,
                        bool relu);
    /* The im2col matrix of output row lrow of padded rows s (Wp * C floats a row): column w
     * (T*C floats) holds the taps of output pixel w, [kh][kw][c]. */
    void (*im2col_row)(float *col, const float *s, const cf__conv_geom *g, int64_t lrow);
    /* Actnorm's forward over np rows of C (actnorm.c): y = (x + bias) * scale, then max(y, 0)
     * with relu. */
    void (*actnorm_rows_fwd)(int64_t np, int64_t C, const float *x, float *y,
                             const float *bias, const float *scale, bool relu);
    /* Actnorm's backward over np rows of C (actnorm.c, rows_bwd): dx (set: =, else +=; NULL:
     * none; with set it may alias g) = g' scale; sg += g', sgy += g' y, with g' = g masked
     * by y > 0 under relu. */
    void (*actnorm_rows_bwd)(int64_t np, int64_t C, const float *g, const float *y, float *dx,
                             const float *scale, float *sg, float *sgy, bool relu, bool set);
    /* The direct few-output-channel kernels: few_lanes 0 when the path has none, else the
     * input channels per vector (C must be a multiple); few_pmax[K - 1] the most pixels per
     * block for K outputs within the path's registers; few[P - 1][K - 1]. */
    int few_lanes;
    int few_pmax[CF__FEW_K];
    cf__few_fn few[CF__FEW_P][CF__FEW_K];
} cf__simd;

extern const cf__simd cf__simd_generic, cf__simd_avx2, cf__simd_avx512;

/* The table of path isa (any path may be fetched; running one above the CPU's faults). */
const cf__simd *cf__simd_for(cf_isa isa);

/* The table of the path in use (cf_cpu_isa()). */
static inline const cf__simd *cf__simd_get(void)
{
    return cf__simd_for(cf_cpu_isa());
}

#endif
