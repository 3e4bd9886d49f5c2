/* cf_conv_impl.h: pieces shared by the convolution files of ops/ (not installed): conv
 * geometry, the libxsmm kernel cache, and the fast f32 convolution drivers.
 *
 * Legend: B batch, H, W input height and width, C input channels, K output channels,
 * KH, KW kernel size, Ho, Wo output size, Hp = H + top + bottom, Wp = W + left + right (padded).
 */
#ifndef CF_CONV_IMPL_H
#define CF_CONV_IMPL_H

#include <libxsmm.h>

#include "cf_conv.h"
#include "cf_ops_impl.h"

/* The sizes of one convolution y = conv(x, w). */
typedef struct cf__conv_geom {
    int64_t B, H, W, C, K, KH, KW;
    int64_t pt, pl, pb, pr; /* padding: top, left, bottom, right */
    int64_t Ho, Wo, Hp, Wp;
} cf__conv_geom;

/* Fills g from x (B, H, W, C), weight (KH, KW, C, K) and the padding. */
void cf__conv_geom_init(cf__conv_geom *g, const cf_tensor *x, const cf_tensor *w, const int pad[4]);

/* ---- libxsmm kernels, dispatched once per shape and cached -------------------------------- */

typedef enum cf__xsmm_kind {
    CF__XSMM_GEMM = 0,    /* C = A B + beta C */
    CF__XSMM_BR_OFFS = 1, /* C = sum_i A(a + a_offs[i]) B(b + b_offs[i]) + beta C, byte offsets */
    CF__XSMM_BR_STRD = 2, /* C = sum_i A(a + i stride_a) B(b + i stride_b) + beta C, bytes */
} cf__xsmm_kind;

/* Column-major f32 shapes: C (m x n, ldc) += A (m x k, lda) * op(B) (k x n); op(B) = B, or
 * with trans_b, B stored (n x k, ldb) and transposed. */
typedef struct cf__xsmm_key {
    int kind;
    int m, n, k, lda, ldb, ldc;
    int stride_a, stride_b; /* BR_STRD only, bytes */
    int beta;               /* 0 or 1 */
    int trans_b;            /* 0 or 1 */
} cf__xsmm_key;

typedef union cf__xsmm_fn {
    libxsmm_smmfunction gemm;
    libxsmm_smmfunction_reducebatch_offs offs;
    libxsmm_smmfunction_reducebatch_strd strd;
} cf__xsmm_fn;

/* The JIT kernel for key, from a small thread-safe cache (dispatched on first use); false
 * when libxsmm cannot generate it (the caller then takes the reference path). */
bool cf__xsmm_get(const cf__xsmm_key *key, cf__xsmm_fn *fn);

/* dst[j * ldd + i] = src[i * lds + j] - (sub ? sub[j] : 0) for i < rows, j < cols: a blocked
 * transpose (16 x 16 blocks with masked edges on the AVX-512 path, 8 x 8 on the AVX2 path,
 * plain loops on the generic one: cf_simd_impl.h); touches nothing outside the two matrices. */
void cf__transpose_f32(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                       int64_t cols, const float *sub);

/* ---- fast f32 convolution drivers (libxsmm, OpenMP over images and row blocks) ------------ */

/* True when the fast drivers handle this geometry (kernel at most 7x7, every pad below the
 * kernel size, sizes whose strides fit libxsmm's int arguments). */
bool cf__conv_fast_ok(const cf__conv_geom *g);

/* A per-channel transform applied to the output rows right after the GEMMs produce them,
 * while they are in cache: y = (y + shift) * scale, then max(y, 0) with relu (the fused
 * convolution + actnorm of the coupling networks). */
typedef struct cf__conv_epilogue {
    const float *shift, *scale; /* K each */
    bool relu;
} cf__conv_epilogue;

/* y (B, Ho, Wo, K) = conv(x (B, H, W, C), w taps (KH*KW, C, K)) + bias (K, or NULL), every
 * element written whatever y held, then the epilogue (NULL: none); with acc (and no
 * epilogue), y += conv + bias instead. Returns false when a kernel could not be dispatched or
 * scratch could not be had (the context then holds the failure, or nothing was written). */
bool cf__conv_forward_f32(cf_node *n, float *y, const float *x, const float *w, const float *bias,
                          const cf__conv_geom *g, bool acc, const cf__conv_epilogue *epi);
/* dx (B, H, W, C) = the backward-data convolution of dy (B, Ho, Wo, K) with the taps w
 * (KH*KW, C, K, already masked), or dx += it with acc. Same failure convention. */
bool cf__conv_backward_data_f32(cf_node *n, float *dx, bool acc, const float *dy, const float *w,
                                const cf__conv_geom *g);
/* dw (KH*KW, C, K) += mask * (sum over pixels of x-patches times dy) and db (K) += the sum of
 * dy (db may be NULL); dw and db are accumulated into. Same failure convention. */
bool cf__conv_backward_weight_f32(cf_node *n, float *dw, float *db, const float *x,
                                  const float *dy, const cf__conv_geom *g, cf_conv_mask mask);

/* ---- reference pieces (conv2d.c), plain loops in double --------------------------------- */

/* A buffer's values as doubles: the buffer itself for f64, else a converted arena copy (NULL
 * when the arena is exhausted). */
const double *cf__as_f64(cf_node *n, cf_dtype dt, const void *buf, int64_t numel);
/* dst (dtype dt) += src, element by element. */
void cf__add_into(cf_dtype dt, void *dst, const double *src, int64_t numel);
/* y = conv(x, w) + bias (bias may be NULL); w is the (already masked) HWIO weight. */
void cf__conv_ref_forward(const cf__conv_geom *g, const double *x, const double *w,
                          const double *bias, double *y);
/* gx += dconv/dx, gw += dconv/dw, gb += sum of dy (each may be NULL) for output gradient dy. */
void cf__conv_ref_backward(const cf__conv_geom *g, const double *x, const double *w,
                           const double *dy, double *gx, double *gw, double *gb);

#endif
