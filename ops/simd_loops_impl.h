/* simd_loops_impl.h: the plain C loops of cf_simd_impl.h's table, included (once) by each
 * path's translation unit (simd_generic.c, simd_avx2.c, simd_avx512.c), which compiles them
 * with its own instruction set. Static functions: each unit has its own copy.
 *
 * The arithmetic is the same on every path, so results differ only by what the compiler may
 * do per path (fused multiply-adds where the path has them).
 */
#ifndef CF_SIMD_LOOPS_IMPL_H
#define CF_SIMD_LOOPS_IMPL_H

#include <string.h>

#include "cf_simd_impl.h"

static inline void loops_transpose(float *dst, int64_t ldd, const float *src, int64_t lds,
                            int64_t rows, int64_t cols, const float *sub)
{
    for (int64_t i0 = 0; i0 < rows; i0 += 16)
        for (int64_t j0 = 0; j0 < cols; j0 += 16) {
            const int64_t nr = rows - i0 < 16 ? rows - i0 : 16;
            const int64_t nc = cols - j0 < 16 ? cols - j0 : 16;
            for (int64_t i = 0; i < nr; i++)
                for (int64_t j = 0; j < nc; j++)
                    dst[(j0 + j) * ldd + i0 + i] =
                        src[(i0 + i) * lds + j0 + j] - (sub ? sub[j0 + j] : 0.0f);
        }
}

static inline void loops_finish_rows(float *y, int64_t n, int64_t K, const float *restrict sh,
                              const float *restrict sc, bool relu)
{
    for (int64_t p = 0; p < n; p++) {
        float *restrict r = y + p * K;
        if (relu)
            for (int64_t k = 0; k < K; k++) {
                const float v = (r[k] + sh[k]) * sc[k];
                r[k] = v > 0.0f ? v : 0.0f;
            }
        else
            for (int64_t k = 0; k < K; k++) r[k] = (r[k] + sh[k]) * sc[k];
    }
}

static inline void loops_im2col_row(float *col, const float *s, const cf__conv_geom *g, int64_t lrow)
{
    const int64_t C = g->C, TC = g->KH * g->KW * C, KWC = g->KW * C;
    for (int64_t w = 0; w < g->Wo; w++)
        for (int64_t kh = 0; kh < g->KH; kh++)
            memcpy(col + w * TC + kh * KWC, s + ((lrow + kh) * g->Wp + w) * C,
                   (size_t)KWC * sizeof(float));
}

static inline void loops_actnorm_rows_fwd(int64_t np, int64_t C, const float *x, float *y,
                                          const float *bias, const float *scale, bool relu)
{
    for (int64_t p = 0; p < np; p++) {
        const float *restrict xr = x + p * C, *restrict b = bias, *restrict s = scale;
        float *restrict yr = y + p * C;
        if (relu)
            for (int64_t c = 0; c < C; c++) {
                const float v = (xr[c] + b[c]) * s[c];
                yr[c] = v > 0.0f ? v : 0.0f;
            }
        else
            for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] + b[c]) * s[c];
    }
}

/* One row (see the table's actnorm_rows_bwd). With set, dx may be g itself (each element is
 * read before it is written, and nothing carries from one element to the next: ivdep). g is
 * read unconditionally and then masked, so the loops vectorise without masked loads; the
 * branches outside the loops let them vectorise. */
static inline void loops_actnorm_row(int64_t C, const float *g, const float *restrict y,
                                     float *dx, const float *restrict scale,
                                     float *restrict sg, float *restrict sgy, bool relu,
                                     bool set)
{
    if (dx && set) {
        if (relu) {
#pragma GCC ivdep
            for (int64_t c = 0; c < C; c++) {
                const float gc = g[c], ge = y[c] > 0.0f ? gc : 0.0f;
                sg[c] += ge;
                sgy[c] += ge * y[c];
                dx[c] = ge * scale[c];
            }
        } else {
#pragma GCC ivdep
            for (int64_t c = 0; c < C; c++) {
                const float ge = g[c];
                sg[c] += ge;
                sgy[c] += ge * y[c];
                dx[c] = ge * scale[c];
            }
        }
    } else if (relu) {
        for (int64_t c = 0; c < C; c++) {
            const float gc = g[c], ge = y[c] > 0.0f ? gc : 0.0f;
            sg[c] += ge;
            sgy[c] += ge * y[c];
        }
        if (dx)
#pragma GCC ivdep
            for (int64_t c = 0; c < C; c++) {
                const float gc = g[c];
                dx[c] += (y[c] > 0.0f ? gc : 0.0f) * scale[c];
            }
    } else {
        for (int64_t c = 0; c < C; c++) {
            sg[c] += g[c];
            sgy[c] += g[c] * y[c];
        }
        if (dx)
#pragma GCC ivdep
            for (int64_t c = 0; c < C; c++) dx[c] += g[c] * scale[c];
    }
}

static inline void loops_actnorm_rows_bwd(int64_t np, int64_t C, const float *g, const float *y,
                                   float *dx, const float *scale, float *sg, float *sgy,
                                   bool relu, bool set)
{
    for (int64_t p = 0; p < np; p++)
        loops_actnorm_row(C, g + p * C, y + p * C, dx ? dx + p * C : NULL, scale, sg, sgy, relu,
                          set);
}

#endif
