/* conv_xsmm.c: the fast f32 convolution drivers on libxsmm, the cache of JIT kernels, and a
 * blocked transpose.
 *
 * libxsmm is column-major, so an NHWC row of Wo pixels with C channels is a (C x Wo) matrix
 * with leading dimension C, and an HWIO tap W[kh][kw] ([c][k] row-major) is a (K x C) matrix
 * with leading dimension K. The drivers pick one of six formulations by shape:
 *   few (1 to 4 output channels from a multiple of 16 input channels on the AVX-512 path, of
 *         8 on the AVX2 path; not on the generic path): written by hand per path
 *         (cf_simd_impl.h), no GEMM: the input channels on the vector lanes, blocks of output
 *         pixels with their K sums each in registers, the input read in place (see fwd_few);
 *   rows (the default): Y_row (K x Wo) += sum_taps W_tap (K x C) * Xpad_row_shifted (C x Wo),
 *         one batch-reduce GEMM (byte offsets) per output row;
 *   col2im (K not a multiple of 16 and below 128, where a K-row GEMM would leave vector lanes
 *         idle): per image, col (T*K x H*W) = Wr (T*K x C) X (C x H*W), one GEMM on the
 *         unpadded input with m = T*K, then each output pixel adds up its taps' K-vectors;
 *   pix (2 to 4 output channels on long rows where few does not apply, where even col2im's
 *         m = T*K leaves most lanes idle): per image, the input transposed into a zero-padded
 *         channel-major scratch, then Z (Ho*Wp x K) = sum_taps Xt shifted by the tap
 *         (Ho*Wp x C) * Wt_tap (C x K), one batch-reduce GEMM with the pixels on the lanes;
 *   im2col (few input channels, C < 16, or short rows, Wo < 16): the taps of an output pixel
 *         gathered into a column of T*C, then one GEMM with k = T*C instead of T batch entries
 *         of k = C, over an output row, or over a group of whole small images (about 64
 *         output pixels, so the weights are read once per group rather than once per row);
 *   1x1 without padding: one GEMM over all pixels, in chunks of pixels for threads.
 * Backward-data is the forward driver on dY with the taps flipped and transposed (the caller
 * builds them) and the complementary padding (KH-1-top, ...). Backward-weight accumulates
 * dW_tap (K x C) += sum_rows dY_row (K x Wo) Xpad_row_shifted^T (strided batch-reduce GEMM with
 * B transposed), or its transpose dW_tap^T (C x K) for the same K as col2im, or an im2col form
 * when C < 16, or chunks of pixels for an unpadded 1x1.
 *
 * Work items are images (col2im), groups of small images, or (image, block of output rows):
 * OpenMP over them, with row blocks within an image when the batch is too small to keep every
 * thread busy (col2im does not split an image). Each item copies the input rows it needs into
 * a per-thread zero-padded scratch (so the rim is always written, whatever the arena held
 * before), and the weight gradient accumulates into per-thread partial sums reduced at the end
 * (no atomics; the same result for a given thread count).
 *
 * Not here: masks, flipping weights, choosing between fast and reference (conv2d.c); the
 * hand-written per-path kernels (transpose, epilogue, thin im2col copy, few) (simd_*.c).
 *
 * Legend: B batch, H, W input size, C input channels, K output channels, KH, KW kernel,
 * Ho, Wo output size, Hp, Wp padded input size, T = KH * KW taps, N pixels.
 */
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <string.h>

#include "cf_simd_impl.h"

void cf__conv_geom_init(cf__conv_geom *g, const cf_tensor *x, const cf_tensor *w, const int pad[4])
{
    g->B = x->shape[0], g->H = x->shape[1], g->W = x->shape[2], g->C = x->shape[3];
    g->KH = w->shape[0], g->KW = w->shape[1], g->K = w->shape[3];
    g->pt = pad[0], g->pl = pad[1], g->pb = pad[2], g->pr = pad[3];
    g->Hp = g->H + g->pt + g->pb, g->Wp = g->W + g->pl + g->pr;
    g->Ho = g->Hp - g->KH + 1, g->Wo = g->Wp - g->KW + 1;
}

/* Prepares n output rows of K channels for GEMMs that add into them (beta = 1): with acc
 * (the output already holds values to add to) the bias is added, otherwise the rows are set to
 * the bias. Without a bias and without acc there is nothing to do, and the GEMMs write (beta =
 * 0): see out_beta. */
static void start_rows(float *y, const float *bias, int64_t n, int64_t K, bool acc)
{
    if (!bias) return;
    if (acc) {
        for (int64_t p = 0; p < n; p++)
            for (int64_t k = 0; k < K; k++) y[p * K + k] += bias[k];
    } else {
        for (int64_t p = 0; p < n; p++) memcpy(y + p * K, bias, (size_t)K * sizeof(float));
    }
}

/* Applies the epilogue (if any) to n finished output rows of K channels (the path's kernel:
 * cf_simd_impl.h). */
static void finish_rows(float *y, int64_t n, int64_t K, const cf__conv_epilogue *epi)
{
    if (epi) cf__simd_get()->finish_rows(y, n, K, epi->shift, epi->scale, epi->relu);
}

/* The GEMMs' beta: they add when the rows hold something (acc, or a bias from start_rows). */
static int out_beta(const float *bias, bool acc)
{
    return acc || bias ? 1 : 0;
}

/* ---- kernel cache ----------------------------------------------------------------------- */

#define CACHE_SLOTS 512

static struct {
    cf__xsmm_key key;
    cf__xsmm_fn fn;
} cache[CACHE_SLOTS];
static int cache_used;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static bool same_key(const cf__xsmm_key *a, const cf__xsmm_key *b)
{
    return a->kind == b->kind && a->m == b->m && a->n == b->n && a->k == b->k &&
           a->lda == b->lda && a->ldb == b->ldb && a->ldc == b->ldc &&
           a->stride_a == b->stride_a && a->stride_b == b->stride_b && a->beta == b->beta &&
           a->trans_b == b->trans_b;
}

static cf__xsmm_fn dispatch(const cf__xsmm_key *key)
{
    const float alpha = 1.0f, beta = key->beta ? 1.0f : 0.0f;
    const int flags = key->trans_b ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
    const int prefetch = LIBXSMM_GEMM_PREFETCH_NONE;
    const libxsmm_blasint lda = key->lda, ldb = key->ldb, ldc = key->ldc;
    cf__xsmm_fn fn = {0};
    switch (key->kind) {
    case CF__XSMM_GEMM:
        fn.gemm = libxsmm_smmdispatch(key->m, key->n, key->k, &lda, &ldb, &ldc, &alpha, &beta,
                                      &flags, &prefetch);
        break;
    case CF__XSMM_BR_OFFS:
        fn.offs = libxsmm_smmdispatch_reducebatch_offs(key->m, key->n, key->k, &lda, &ldb, &ldc,
                                                       &alpha, &beta, &flags, &prefetch);
        break;
    case CF__XSMM_BR_STRD:
        fn.strd = libxsmm_smmdispatch_reducebatch_strd(key->m, key->n, key->k, key->stride_a,
                                                       key->stride_b, &lda, &ldb, &ldc, &alpha,
                                                       &beta, &flags, &prefetch);
        break;
    }
    return fn;
}

bool cf__xsmm_get(const cf__xsmm_key *key, cf__xsmm_fn *fn)
{
    if (key->m <= 0 || key->n <= 0 || key->k <= 0) return false;
    pthread_mutex_lock(&cache_lock);
    for (int i = 0; i < cache_used; i++)
        if (same_key(&cache[i].key, key)) {
            *fn = cache[i].fn;
            pthread_mutex_unlock(&cache_lock);
            return true;
        }
    cf__xsmm_fn found = dispatch(key);
    /* A full cache still works: libxsmm keeps its own registry; we only stop remembering. */
    if (found.gemm && cache_used < CACHE_SLOTS) {
        cache[cache_used].key = *key;
        cache[cache_used].fn = found;
        cache_used++;
    }
    pthread_mutex_unlock(&cache_lock);
    *fn = found;
    return found.gemm != NULL;
}

/* ---- shared pieces ---------------------------------------------------------------------- */

/* Pixels per GEMM in the 1x1 path, and chunks per batch-reduce call of its weight gradient
 * (so the operands of one call stay in L2). */
#define PIX_CHUNK 64
#define PIX_GROUP 4
/* Output pixels per batch-reduce call of the weight gradient (images are grouped to reach it). */
#define GROUP_PIXELS 256
/* Output rows shorter than this take the im2col form over groups of whole images of about
 * IMG_PIXELS output pixels. */
#define SHORT_ROW 16
#define IMG_PIXELS 64
/* Input channel counts below this take the im2col form. */
#define THIN 16
/* Floats of im2col matrix per forward GEMM in the row form of im2col (rows are grouped up to
 * this, and at most MAX_RG rows). */
#define IM2COL_FLOATS 8192
#define MAX_RG 32

/* Output channel counts that leave vector lanes of a K-row GEMM idle (K not a multiple of 16)
 * and are small enough for the col2im form's buffer. */
static bool thin_k(int64_t K)
{
    return K % 16 != 0 && K < 128;
}

/* Output channel counts so small (2 to 4) that even the col2im form leaves most vector lanes
 * idle (m = T*K = 18 for K = 2: one full and one nearly empty vector), on rows long enough
 * that the pixel-major form's Wp - Wo discarded columns per row cost little: that form then
 * fills every lane (measured: 128 -> 2 at 14x14 from 50 to 63 GFLOP/s, 128 -> 4 from 67 to 84;
 * K = 1 and 7x7 images gained nothing). */
static bool pix_k(const cf__conv_geom *g)
{
    return g->K >= 2 && g->K <= 4 && 4 * (g->Wp - g->Wo) <= g->Wo;
}

bool cf__conv_fast_ok(const cf__conv_geom *g)
{
    if (g->KH < 1 || g->KH > 7 || g->KW < 1 || g->KW > 7) return false;
    if (g->pt < 0 || g->pt >= g->KH || g->pb < 0 || g->pb >= g->KH) return false;
    if (g->pl < 0 || g->pl >= g->KW || g->pr < 0 || g->pr >= g->KW) return false;
    if (g->Ho < 1 || g->Wo < 1 || g->C < 1 || g->K < 1) return false;
    /* Leading dimensions, counts and byte strides are ints in libxsmm's interface. */
    const int64_t lim = INT_MAX / 64;
    return g->Hp * g->Wp * g->C < lim && g->Wo * g->K * g->KH * g->KW < lim &&
           g->C * g->K * g->KH * g->KW < lim && g->B * g->H * g->W < lim;
}

/* Splits each image's Ho output rows into blocks so there are at least two work items per
 * thread when the batch is small. */
static void row_blocks(const cf__conv_geom *g, int nt, int64_t *nrb, int64_t *rows)
{
    int64_t want = g->B >= 2 * nt ? 1 : (2 * nt + g->B - 1) / g->B;
    if (want > g->Ho) want = g->Ho;
    *rows = (g->Ho + want - 1) / want;
    *nrb = (g->Ho + *rows - 1) / *rows;
}

/* s (nrows + KH - 1, Wp, C) = the zero-padded input rows that output rows [r0, r0 + nrows)
 * read, from image xb (H, W, C). Every element of s is written. */
static void pad_rows(float *s, const float *xb, const cf__conv_geom *g, int64_t r0, int64_t nrows)
{
    const int64_t C = g->C, WC = g->W * C, WpC = g->Wp * C;
    for (int64_t lr = 0; lr < nrows + g->KH - 1; lr++) {
        float *d = s + lr * WpC;
        const int64_t ir = r0 + lr - g->pt;
        if (ir < 0 || ir >= g->H) {
            memset(d, 0, (size_t)WpC * sizeof(float));
            continue;
        }
        memset(d, 0, (size_t)(g->pl * C) * sizeof(float));
        memcpy(d + g->pl * C, xb + ir * WC, (size_t)WC * sizeof(float));
        memset(d + g->pl * C + WC, 0, (size_t)(g->pr * C) * sizeof(float));
    }
}

/* Floats rounded up to a whole number of 64-byte lines, so per-thread slices do not share. */
static int64_t line_up(int64_t floats)
{
    return (floats + 15) & ~(int64_t)15;
}

/* The im2col matrix of output row i of a work item whose padded rows start at s: column w
 * holds the T*C inputs output pixel w reads, in HWIO order ([kh][kw][c]) (the path's kernel). */
static void im2col_row(float *col, const float *s, const cf__conv_geom *g, int64_t lrow)
{
    cf__simd_get()->im2col_row(col, s, g, lrow);
}

/* ---- transpose -------------------------------------------------------------------------- */

void cf__transpose_f32(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                       int64_t cols, const float *sub)
{
    cf__simd_get()->transpose(dst, ldd, src, lds, rows, cols, sub);
}

/* ---- forward (and backward-data) -------------------------------------------------------- */

/* 1x1 without padding: Y (K x N) += W (K x C) * X (C x N), in chunks of pixels. */
static bool fwd_1x1(float *y, const float *x, const float *w, const float *bias,
                    const cf__conv_geom *g, bool acc, const cf__conv_epilogue *epi)
{
    const int64_t N = g->B * g->H * g->W, C = g->C, K = g->K;
    if (N == 0) return true;
    const int64_t chunks = (N + PIX_CHUNK - 1) / PIX_CHUNK, tail = N - (chunks - 1) * PIX_CHUNK;
    cf__xsmm_key key = {.kind = CF__XSMM_GEMM, .m = (int)K, .n = PIX_CHUNK, .k = (int)C,
                        .lda = (int)K, .ldb = (int)C, .ldc = (int)K, .beta = out_beta(bias, acc)};
    cf__xsmm_fn full = {0}, last = {0};
    if (chunks > 1 && !cf__xsmm_get(&key, &full)) return false;
    key.n = (int)tail;
    if (!cf__xsmm_get(&key, &last)) return false;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        const int64_t p0 = ch * PIX_CHUNK, np = ch == chunks - 1 ? tail : PIX_CHUNK;
        float *yc = y + p0 * K;
        start_rows(yc, bias, np, K, acc);
        (ch == chunks - 1 ? last : full).gemm(w, x + p0 * C, yc);
        finish_rows(yc, np, K, epi);
    }
    return true;
}

/* Few output channels, col2im form: per image, col (T*K x H*W) = Wr (T*K x C) X (C x H*W) in one
 * GEMM on the unpadded input, then each output pixel gathers its taps' K-vectors from col
 * (taps that fall in the padding are skipped). Wr[t*K + k][c] = W[t][c][k]. */
static bool fwd_col2im(cf_node *n, float *y, const float *x, const float *w, const float *bias,
                       const cf__conv_geom *g, bool acc, const cf__conv_epilogue *epi)
{
    const int64_t C = g->C, K = g->K, H = g->H, W = g->W, Wo = g->Wo, Ho = g->Ho;
    const int64_t T = g->KH * g->KW, TK = T * K, HW = H * W;
    cf__xsmm_key key = {.kind = CF__XSMM_GEMM, .m = (int)TK, .n = (int)HW, .k = (int)C,
                        .lda = (int)TK, .ldb = (int)C, .ldc = (int)TK, .beta = 0};
    cf__xsmm_fn fn;
    if (!cf__xsmm_get(&key, &fn)) return false;
    const int nt = omp_get_max_threads();
    const int64_t per = line_up(TK * HW);
    float *wr = cf_node_scratch(n, (size_t)(TK * C) * sizeof(float));
    float *scratch = cf_node_scratch(n, (size_t)(per * nt) * sizeof(float));
    if (!wr || !scratch) return false;
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t k = 0; k < K; k++) wr[c * TK + t * K + k] = w[(t * C + c) * K + k];
#pragma omp parallel num_threads(nt)
    {
        float *col = scratch + per * omp_get_thread_num();
#pragma omp for schedule(static)
        for (int64_t b = 0; b < g->B; b++) {
            fn.gemm(wr, x + b * HW * C, col);
            for (int64_t i = 0; i < Ho; i++) {
                float *yr = y + (b * Ho + i) * Wo * K;
                if (out_beta(bias, acc))
                    start_rows(yr, bias, Wo, K, acc);
                else /* the taps add into the row: it starts from zero (in cache) */
                    memset(yr, 0, (size_t)(Wo * K) * sizeof(float));
                /* Tap (kh, kw) adds col's rows of input pixels (ih, j + kw - left), for the
                 * output columns j whose input column is inside the image. */
                for (int64_t kh = 0; kh < g->KH; kh++) {
                    const int64_t ih = i + kh - g->pt;
                    if (ih < 0 || ih >= H) continue;
                    for (int64_t kw = 0; kw < g->KW; kw++) {
                        const int64_t d = kw - g->pl;
                        const int64_t j0 = d < 0 ? -d : 0, j1 = W - d < Wo ? W - d : Wo;
                        if (j1 <= j0) continue;
                        const float *cr = col + (ih * W + j0 + d) * TK + (kh * g->KW + kw) * K;
                        float *yj = yr + j0 * K;
                        for (int64_t j = 0; j < j1 - j0; j++)
                            for (int64_t k = 0; k < K; k++) yj[j * K + k] += cr[j * TK + k];
                    }
                }
                finish_rows(yr, Wo, K, epi);
            }
        }
    }
    return true;
}

/* Very few output channels, pixel-major form: per image, the input is transposed into a
 * zero-padded channel-major scratch xt[c][L] (the padded image, Hp x Wp, flattened, then
 * slack), so that for every tap the (output pixel x channel) operand is xt shifted by the tap's
 * flattened offset: Z (M x K) = sum_taps xt_tap (M x C, lda L) * Wt_tap (C x K), one
 * batch-reduce GEMM with the pixels on the vector lanes (M = Ho * Wp, the output rows computed
 * over the padded width; the Wp - Wo extra columns per row are discarded). Wt[t][k][c] =
 * W[t][c][k]. The rim of xt is zeroed once per thread; images only write its interior. */
static bool fwd_pix(cf_node *n, float *y, const float *x, const float *w, const float *bias,
                    const cf__conv_geom *g, bool acc, const cf__conv_epilogue *epi)
{
    const int64_t C = g->C, K = g->K, H = g->H, W = g->W, Wp = g->Wp, Wo = g->Wo, Ho = g->Ho;
    const int64_t T = g->KH * g->KW, M = Ho * Wp, L = line_up(g->Hp * Wp + g->KW - 1);
    cf__xsmm_key key = {.kind = CF__XSMM_BR_OFFS, .m = (int)M, .n = (int)K, .k = (int)C,
                        .lda = (int)L, .ldb = (int)C, .ldc = (int)M, .beta = 0};
    cf__xsmm_fn fn;
    if (!cf__xsmm_get(&key, &fn)) return false;
    unsigned long long a_offs[49], b_offs[49];
    for (int64_t t = 0; t < T; t++) {
        a_offs[t] = (unsigned long long)((t / g->KW) * Wp + t % g->KW) * sizeof(float);
        b_offs[t] = (unsigned long long)(t * K * C) * sizeof(float);
    }
    const int nt = omp_get_max_threads();
    const int64_t per = line_up(C * L) + line_up(M * K);
    float *wt = cf_node_scratch(n, (size_t)(T * K * C) * sizeof(float));
    float *scratch = cf_node_scratch(n, (size_t)(per * nt) * sizeof(float));
    if (!wt || !scratch) return false;
    for (int64_t t = 0; t < T; t++)
        cf__transpose_f32(wt + t * K * C, C, w + t * C * K, K, C, K, NULL);
    const int64_t off0 = g->pt * Wp + g->pl; /* xt position of input pixel (0, 0) */
#pragma omp parallel num_threads(nt)
    {
        float *xt = scratch + per * omp_get_thread_num(), *z = xt + line_up(C * L);
        bool rim = false; /* zeroed on this thread's first image */
#pragma omp for schedule(static)
        for (int64_t b = 0; b < g->B; b++) {
            if (!rim) memset(xt, 0, (size_t)(C * L) * sizeof(float)), rim = true;
            const float *xb = x + b * H * W * C;
            for (int64_t ih = 0; ih < H; ih++)
                cf__transpose_f32(xt + off0 + ih * Wp, L, xb + ih * W * C, C, W, C, NULL);
            unsigned long long count = (unsigned long long)T;
            fn.offs(xt, wt, z, &count, a_offs, b_offs);
            for (int64_t i = 0; i < Ho; i++) {
                float *yr = y + (b * Ho + i) * Wo * K;
                const float *zr = z + i * Wp;
                for (int64_t j = 0; j < Wo; j++)
                    for (int64_t k = 0; k < K; k++) {
                        const float v = zr[k * M + j] + (bias ? bias[k] : 0.0f);
                        yr[j * K + k] = acc ? yr[j * K + k] + v : v;
                    }
                finish_rows(yr, Wo, K, epi);
            }
        }
    }
    return true;
}

/* im2col: few input channels (one GEMM per output row, k = T*C), or small images (one GEMM
 * per group of whole images, n = their pixels, so the weights are read once per ~64 output
 * pixels instead of once per short row). */
static bool fwd_im2col(cf_node *n, float *y, const float *x, const float *w, const float *bias,
                       const cf__conv_geom *g, bool acc, const cf__conv_epilogue *epi)
{
    const int64_t C = g->C, K = g->K, Wp = g->Wp, Wo = g->Wo, Ho = g->Ho, HWo = Ho * Wo;
    const int64_t TC = g->KH * g->KW * C;
    const int nt = omp_get_max_threads();
    int64_t nrb, rows, G = 0;
    row_blocks(g, nt, &nrb, &rows);
    if (nrb == 1 && HWo < IMG_PIXELS) { /* groups of G whole images */
        G = IMG_PIXELS / HWo;
        const int64_t cap = g->B / (2 * nt);
        if (G > cap) G = cap;
        if (G < 1) G = 1;
    }
    const int64_t items = G ? (g->B + G - 1) / G : g->B * nrb;
    const int64_t last = G ? g->B - (items - 1) * G : 0; /* images in the last group */
    /* Otherwise up to RG consecutive output rows share one GEMM (n = their pixels), as many
     * as keep the im2col matrix small: a row of 14 pixels alone is too short a GEMM. */
    int64_t RG = G ? 1 : IM2COL_FLOATS / (TC * Wo);
    if (RG > rows) RG = rows;
    if (RG > MAX_RG) RG = MAX_RG;
    if (RG < 1) RG = 1;
    const int64_t npix = G ? G * HWo : RG * Wo; /* GEMM n (full group or RG rows) */
    const int64_t srows = rows + g->KH - 1, simg = srows * Wp * C;
    cf__xsmm_key key = {.kind = CF__XSMM_GEMM, .m = (int)K, .n = (int)npix, .k = (int)TC,
                        .lda = (int)K, .ldb = (int)TC, .ldc = (int)K, .beta = out_beta(bias, acc)};
    cf__xsmm_fn fn, fn_last = {0}, fn_rows[MAX_RG + 1] = {{0}};
    if (!cf__xsmm_get(&key, &fn)) return false;
    if (G && last != G) {
        key.n = (int)(last * HWo);
        if (!cf__xsmm_get(&key, &fn_last)) return false;
    }
    for (int64_t r = 1; !G && r <= RG; r++) { /* n for every shorter run of rows */
        key.n = (int)(r * Wo);
        if (!cf__xsmm_get(&key, &fn_rows[r])) return false;
    }
    const int64_t sper = line_up((G ? G : 1) * simg), per = sper + line_up(TC * npix);
    float *scratch = cf_node_scratch(n, (size_t)(per * nt) * sizeof(float));
    if (!scratch) return false;
#pragma omp parallel num_threads(nt)
    {
        float *s = scratch + per * omp_get_thread_num(), *col = s + sper;
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; it++) {
            if (G) {
                const int64_t b0 = it * G, gn = it == items - 1 ? last : G;
                float *yg = y + b0 * HWo * K;
                for (int64_t gi = 0; gi < gn; gi++) {
                    pad_rows(s + gi * simg, x + (b0 + gi) * g->H * g->W * C, g, 0, Ho);
                    for (int64_t i = 0; i < Ho; i++)
                        im2col_row(col + (gi * Ho + i) * Wo * TC, s + gi * simg, g, i);
                }
                start_rows(yg, bias, gn * HWo, K, acc);
                (gn == G ? fn : fn_last).gemm(w, col, yg);
                finish_rows(yg, gn * HWo, K, epi);
                continue;
            }
            const int64_t b = it / nrb, r0 = (it % nrb) * rows;
            const int64_t r1 = r0 + rows < Ho ? r0 + rows : Ho;
            pad_rows(s, x + b * g->H * g->W * C, g, r0, r1 - r0);
            for (int64_t i = r0; i < r1; i += RG) {
                const int64_t nr = r1 - i < RG ? r1 - i : RG;
                float *yr = y + (b * Ho + i) * Wo * K; /* nr consecutive rows of the image */
                start_rows(yr, bias, nr * Wo, K, acc);
                for (int64_t r = 0; r < nr; r++) im2col_row(col + r * Wo * TC, s, g, i + r - r0);
                fn_rows[nr].gemm(w, col, yr);
                finish_rows(yr, nr * Wo, K, epi);
            }
        }
    }
    return true;
}

/* Few output channels, direct form (written by hand, per instruction-set path: libxsmm's GEMMs
 * put output channels or pixels on the vector lanes, and 1 to 4 output channels fill neither;
 * see fwd_pix). The input channels go on the lanes (C a multiple of the path's lanes): a block
 * of P output pixels of one row keeps P x K accumulators of partial sums in registers, each
 * tap and slice of channels loads the K weight vectors once and one input vector per pixel,
 * read in place from x (NHWC: a pixel's channels are contiguous; taps in the padding read a
 * zero vector, or are skipped when the whole input row is outside); the partial sums are added
 * at the end (the kernels: cf_simd_impl.h's few table). Per block and slice, K + P loads feed
 * K * P FMAs. */
#define FEW_K CF__FEW_K
#define FEW_P CF__FEW_P

static bool few_ok(const cf__simd *k, const cf__conv_geom *g)
{
    return k->few_lanes && g->K <= FEW_K && g->C % k->few_lanes == 0 && g->KH * g->KW <= 49;
}

static bool fwd_few(const cf__simd *kern, cf_node *n, float *y, const float *x, const float *w,
                    const float *bias, const cf__conv_geom *g, bool acc,
                    const cf__conv_epilogue *epi)
{
    const int64_t C = g->C, K = g->K, H = g->H, W = g->W, Wo = g->Wo, Ho = g->Ho;
    const int64_t T = g->KH * g->KW;
    /* Output rows in blocks of P pixels as even as the register budget allows. */
    const int64_t pmax = kern->few_pmax[K - 1], nblk = (Wo + pmax - 1) / pmax, P = (Wo + nblk - 1) / nblk;
    float *wt = cf_node_scratch(n, (size_t)(T * K * C + C) * sizeof(float));
    /* Per (output row, block), the same for every image: the taps whose input row is inside
     * the image (consecutive: nv of them from tap row `first`), and for each tap and pixel the
     * input pixel's offset in the image, or -1 in the padding. */
    const int64_t nrb = Ho * nblk;
    int32_t *offs = cf_node_scratch(n, (size_t)(nrb * T * FEW_P + 2 * nrb) * sizeof(int32_t));
    if (!wt || !offs) return false;
    int32_t *nvs = offs + nrb * T * FEW_P, *firsts = nvs + nrb;
    for (int64_t t = 0; t < T; t++) /* wt[t][k][c] = W[t][c][k] */
        cf__transpose_f32(wt + t * K * C, C, w + t * C * K, K, C, K, NULL);
    float *zero = wt + T * K * C;
    memset(zero, 0, (size_t)C * sizeof(float));
    for (int64_t i = 0; i < Ho; i++)
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t rb = i * nblk + blk, j0 = blk * P, np = Wo - j0 < P ? Wo - j0 : P;
            int32_t *o = offs + rb * T * FEW_P, nv = 0, first = -1;
            for (int64_t kh = 0; kh < g->KH; kh++) {
                const int64_t ih = i + kh - g->pt;
                if (ih < 0 || ih >= H) continue;
                if (first < 0) first = (int32_t)kh;
                for (int64_t kw = 0; kw < g->KW; kw++, nv++)
                    for (int64_t p = 0; p < np; p++) {
                        const int64_t iw = j0 + p + kw - g->pl;
                        o[nv * FEW_P + p] = iw < 0 || iw >= W ? -1 : (int32_t)((ih * W + iw) * C);
                    }
            }
            nvs[rb] = nv;
            firsts[rb] = first;
        }
#pragma omp parallel for schedule(static)
    for (int64_t it = 0; it < g->B * Ho; it++) {
        const int64_t b = it / Ho, i = it % Ho;
        const float *xb = x + b * H * W * C;
        float *yr = y + it * Wo * K;
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t rb = i * nblk + blk, j0 = blk * P, np = Wo - j0 < P ? Wo - j0 : P;
            float out[FEW_P * FEW_K];
            if (nvs[rb])
                kern->few[np - 1][K - 1](out, xb, zero, offs + rb * T * FEW_P,
                                       wt + firsts[rb] * g->KW * K * C, C, nvs[rb]);
            else
                memset(out, 0, sizeof out);
            float *yj = yr + j0 * K;
            for (int64_t p = 0; p < np; p++)
                for (int64_t k = 0; k < K; k++) {
                    const float v = out[p * K + k] + (bias ? bias[k] : 0.0f);
                    yj[p * K + k] = acc ? yj[p * K + k] + v : v;
                }
        }
        finish_rows(yr, Wo, K, epi);
    }
    return true;
}

/* The default: one batch-reduce GEMM over the taps per output row. */
static bool fwd_rows(cf_node *n, float *y, const float *x, const float *w, const float *bias,
                     const cf__conv_geom *g, bool acc, const cf__conv_epilogue *epi)
{
    const int64_t C = g->C, K = g->K, Wp = g->Wp, Wo = g->Wo, Ho = g->Ho, T = g->KH * g->KW;
    const int nt = omp_get_max_threads();
    int64_t nrb, rows;
    row_blocks(g, nt, &nrb, &rows);
    cf__xsmm_key key = {.kind = CF__XSMM_BR_OFFS, .m = (int)K, .n = (int)Wo, .k = (int)C,
                        .lda = (int)K, .ldb = (int)C, .ldc = (int)K, .beta = out_beta(bias, acc)};
    cf__xsmm_fn fn;
    if (!cf__xsmm_get(&key, &fn)) return false;
    unsigned long long a_offs[49], b_offs[49];
    for (int64_t t = 0; t < T; t++) {
        a_offs[t] = (unsigned long long)(t * C * K) * sizeof(float);
        b_offs[t] = (unsigned long long)(((t / g->KW) * Wp + t % g->KW) * C) * sizeof(float);
    }
    const int64_t per = line_up((rows + g->KH - 1) * Wp * C);
    float *scratch = cf_node_scratch(n, (size_t)(per * nt) * sizeof(float));
    if (!scratch) return false;
#pragma omp parallel num_threads(nt)
    {
        float *s = scratch + per * omp_get_thread_num();
#pragma omp for schedule(static)
        for (int64_t it = 0; it < g->B * nrb; it++) {
            const int64_t b = it / nrb, r0 = (it % nrb) * rows;
            const int64_t r1 = r0 + rows < Ho ? r0 + rows : Ho;
            pad_rows(s, x + b * g->H * g->W * C, g, r0, r1 - r0);
            for (int64_t i = r0; i < r1; i++) {
                float *yr = y + (b * Ho + i) * Wo * K;
                start_rows(yr, bias, Wo, K, acc);
                unsigned long long count = (unsigned long long)T;
                fn.offs(w, s + (i - r0) * Wp * C, yr, &count, a_offs, b_offs);
                finish_rows(yr, Wo, K, epi);
            }
        }
    }
    return true;
}

bool cf__conv_forward_f32(cf_node *n, float *y, const float *x, const float *w, const float *bias,
                          const cf__conv_geom *g, bool acc, const cf__conv_epilogue *epi)
{
    CF_ASSERT(!(acc && epi), "cf__conv_forward_f32: an epilogue needs a written output");
    if (g->B == 0) return true;
    const cf__simd *kern = cf__simd_get();
    if (few_ok(kern, g)) return fwd_few(kern, n, y, x, w, bias, g, acc, epi);
    if (pix_k(g)) return fwd_pix(n, y, x, w, bias, g, acc, epi);
    if (thin_k(g->K)) return fwd_col2im(n, y, x, w, bias, g, acc, epi);
    if (g->KH == 1 && g->KW == 1 && !g->pt && !g->pl && !g->pb && !g->pr)
        return fwd_1x1(y, x, w, bias, g, acc, epi);
    if (g->C < THIN || g->Wo < SHORT_ROW) return fwd_im2col(n, y, x, w, bias, g, acc, epi);
    return fwd_rows(n, y, x, w, bias, g, acc, epi);
}

/* ---- backward-weight -------------------------------------------------------------------- */

typedef enum bw_form { BW_ROWS, BW_TRANSPOSED, BW_IM2COL, BW_1X1 } bw_form;

/* Adds the per-thread partial sums into dw (masked) and db. Partials are laid out as dw
 * ([t][c][k]) except in the transposed form ([t][k][c]). */
static void reduce_partials(float *dw, float *db, const float *part, int nt, int64_t per,
                            const cf__conv_geom *g, cf_conv_mask mask, bool transposed)
{
    const int64_t C = g->C, K = g->K, T = g->KH * g->KW, WN = T * C * K;
    if (!transposed && mask == CF_CONV_MASK_NONE) {
        /* Same layout, every element kept: blocks of 64 that vectorise. */
#pragma omp parallel for schedule(static) if (WN > CF__PAR_MIN)
        for (int64_t e0 = 0; e0 < WN; e0 += 64) {
            const int64_t ne = WN - e0 < 64 ? WN - e0 : 64;
            float s[64] = {0};
            for (int i = 0; i < nt; i++) {
                const float *restrict pi = part + i * per + e0;
                for (int64_t e = 0; e < ne; e++) s[e] += pi[e];
            }
            float *restrict d = dw + e0;
            for (int64_t e = 0; e < ne; e++) d[e] += s[e];
        }
    } else {
#pragma omp parallel for schedule(static) if (WN > CF__PAR_MIN)
        for (int64_t tc = 0; tc < T * C; tc++) {
            const int kh = (int)(tc / C / g->KW), kw = (int)(tc / C % g->KW);
            const int64_t t = tc / C, c = tc % C;
            for (int64_t k = 0; k < K; k++) {
                const int64_t e = transposed ? (t * K + k) * C + c : tc * K + k;
                float s = 0;
                for (int i = 0; i < nt; i++) s += part[i * per + e];
                if (mask == CF_CONV_MASK_NONE || cf_conv_mask_keeps(mask, kh, kw, c, k))
                    dw[tc * K + k] += s;
            }
        }
    }
    if (db)
        for (int64_t k = 0; k < K; k++) {
            float s = 0;
            for (int i = 0; i < nt; i++) s += part[i * per + WN + k];
            db[k] += s;
        }
}

bool cf__conv_backward_weight_f32(cf_node *n, float *dw, float *db, const float *x,
                                  const float *dy, const cf__conv_geom *g, cf_conv_mask mask)
{
    if (g->B == 0) return true;
    const int64_t C = g->C, K = g->K, Wp = g->Wp, Wo = g->Wo, Ho = g->Ho, T = g->KH * g->KW;
    const int64_t WN = T * C * K, TC = T * C, fs = (int64_t)sizeof(float);
    const bool plain1x1 = g->KH == 1 && g->KW == 1 && !g->pt && !g->pl && !g->pb && !g->pr;
    const bw_form form = thin_k(K) ? BW_TRANSPOSED : plain1x1 ? BW_1X1
                         : C < THIN ? BW_IM2COL : BW_ROWS;
    const int nt = omp_get_max_threads();
    /* Work items: row blocks of one image when the batch is small, else groups of G images
     * with about GROUP_PIXELS output pixels, so each call reduces over enough pixels to
     * amortise reading and writing its (K x C) block of the gradient. */
    int64_t nrb, rows, G = 1;
    row_blocks(g, nt, &nrb, &rows);
    if (nrb == 1) {
        G = GROUP_PIXELS / (Ho * Wo);
        const int64_t cap = g->B / (2 * nt);
        if (G > cap) G = cap;
        if (G < 1) G = 1;
    }
    const int64_t items = nrb > 1 ? g->B * nrb : (g->B + G - 1) / G;
    const int64_t srows = rows + g->KH - 1; /* padded rows per image of an item */
    const int64_t N = g->B * g->H * g->W, full = N / PIX_CHUNK, tail = N % PIX_CHUNK;

    /* Every form: C (m x n) += A (m x k) * B^T with B stored (n x k). */
    cf__xsmm_key key = {.kind = CF__XSMM_BR_OFFS, .beta = 1, .trans_b = 1};
    switch (form) {
    case BW_ROWS: /* dW_t (K x C) += dY_row (K x Wo) * X_row^T, rows by offsets */
        key.m = (int)K, key.n = (int)C, key.k = (int)Wo, key.lda = (int)K, key.ldb = (int)C;
        break;
    case BW_TRANSPOSED: /* dW_t^T (C x K) += X_row (C x Wo) * dY_row^T */
        key.m = (int)C, key.n = (int)K, key.k = (int)Wo, key.lda = (int)C, key.ldb = (int)K;
        break;
    case BW_IM2COL: /* dW (K x T*C) += dY_row (K x Wo) * col_row^T, rows contiguous */
        key.kind = CF__XSMM_BR_STRD;
        key.m = (int)K, key.n = (int)TC, key.k = (int)Wo, key.lda = (int)K, key.ldb = (int)TC;
        key.stride_a = (int)(Wo * K * fs), key.stride_b = (int)(TC * Wo * fs);
        break;
    case BW_1X1: /* dW (K x C) += dY_chunk (K x 64) * X_chunk^T */
        key.kind = CF__XSMM_BR_STRD;
        key.m = (int)K, key.n = (int)C, key.k = PIX_CHUNK, key.lda = (int)K, key.ldb = (int)C;
        key.stride_a = (int)(PIX_CHUNK * K * fs), key.stride_b = (int)(PIX_CHUNK * C * fs);
        break;
    }
    key.ldc = key.m;
    cf__xsmm_fn fn = {0}, fn_tail = {0}, fn_kw[7] = {{0}};
    /* (the rows and transposed forms take one kernel per tap column, below) */
    if ((form == BW_IM2COL || (form == BW_1X1 && full > 0)) && !cf__xsmm_get(&key, &fn))
        return false;
    if (form == BW_1X1 && tail > 0) {
        key.k = (int)tail;
        if (!cf__xsmm_get(&key, &fn_tail)) return false;
    }
    /* The rows and transposed forms read x in place, without a padded copy: tap column kw pairs
     * output columns [j0, j1) (those whose input column is inside the image) with input
     * columns [j0 + kw - left, ...), one kernel per width; rows whose input row is outside the
     * image are left out of the batch. (The padding's zeros contribute nothing.) */
    const bool in_place = form == BW_TRANSPOSED || form == BW_ROWS;
    int64_t kw_j0[7] = {0}, kw_j1[7] = {0};
    for (int64_t kw = 0; in_place && kw < g->KW; kw++) {
        kw_j0[kw] = g->pl - kw > 0 ? g->pl - kw : 0;
        kw_j1[kw] = g->W + g->pl - kw < Wo ? g->W + g->pl - kw : Wo;
        key.k = (int)(kw_j1[kw] - kw_j0[kw]);
        if (key.k > 0 && !cf__xsmm_get(&key, &fn_kw[kw])) return false;
    }

    const int64_t per = line_up(WN + K);
    const int64_t sper = form == BW_IM2COL ? line_up(G * srows * Wp * C) : 0;
    const int64_t cper = form == BW_IM2COL ? line_up(G * rows * TC * Wo) : 0;
    const int64_t oper = G * rows; /* offsets per array */
    float *part = cf_node_scratch(n, (size_t)(per * nt) * sizeof(float));
    float *scratch = sper ? cf_node_scratch(n, (size_t)((sper + cper) * nt) * sizeof(float)) : NULL;
    unsigned long long *offs = cf_node_scratch(n, (size_t)(2 * oper * nt) * sizeof *offs);
    if (!part || (sper && !scratch) || !offs) return false;
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num();
        float *pw = part + per * tid, *pb = pw + WN;
        /* Every slice is zeroed, also those of threads missing from a smaller team. */
        for (int i = tid; i < nt; i += omp_get_num_threads())
            memset(part + per * i, 0, (size_t)per * sizeof(float));
#pragma omp barrier
        if (form == BW_1X1) {
            /* Contiguous ranges of full chunks per thread, PIX_GROUP chunks per call; the
             * partial chunk at the end (if any) goes to the last thread. */
            const int nteam = omp_get_num_threads();
            const bool last = tid == nteam - 1;
            const int64_t c0 = full * tid / nteam, c1 = full * (tid + 1) / nteam;
            for (int64_t c = c0; c < c1; c += PIX_GROUP) {
                unsigned long long count =
                    (unsigned long long)(c1 - c < PIX_GROUP ? c1 - c : PIX_GROUP);
                fn.strd(dy + c * PIX_CHUNK * K, x + c * PIX_CHUNK * C, pw, &count);
            }
            if (last && tail > 0) {
                unsigned long long count = 1;
                fn_tail.strd(dy + full * PIX_CHUNK * K, x + full * PIX_CHUNK * C, pw, &count);
            }
            if (db)
                for (int64_t p = c0 * PIX_CHUNK; p < (last ? N : c1 * PIX_CHUNK); p++)
                    for (int64_t k = 0; k < K; k++) pb[k] += dy[p * K + k];
        } else {
            float *s = scratch ? scratch + (sper + cper) * tid : NULL, *col = s ? s + sper : NULL;
            unsigned long long *dy_offs = offs + 2 * oper * tid, *s_offs = dy_offs + oper;
#pragma omp for schedule(static)
            for (int64_t it = 0; it < items; it++) {
                /* Images [b0, b0 + gn), output rows [r0, r1) of each. */
                const int64_t b0 = nrb > 1 ? it / nrb : it * G;
                const int64_t gn = nrb > 1 ? 1 : (g->B - b0 < G ? g->B - b0 : G);
                const int64_t r0 = nrb > 1 ? (it % nrb) * rows : 0;
                const int64_t r1 = r0 + rows < Ho ? r0 + rows : Ho, nr = r1 - r0;
                /* The item's dY is contiguous: one image's row block, or whole images. */
                const float *dyb = dy + (b0 * Ho + r0) * Wo * K;
                if (db)
                    for (int64_t p = 0; p < gn * nr * Wo; p++)
                        for (int64_t k = 0; k < K; k++) pb[k] += dyb[p * K + k];
                if (form == BW_IM2COL) {
                    for (int64_t gi = 0; gi < gn; gi++) {
                        float *sg = s + gi * srows * Wp * C;
                        pad_rows(sg, x + (b0 + gi) * g->H * g->W * C, g, r0, nr);
                        for (int64_t r = 0; r < nr; r++)
                            im2col_row(col + (gi * nr + r) * TC * Wo, sg, g, r);
                    }
                    unsigned long long count = (unsigned long long)(gn * nr);
                    fn.strd(dyb, col, pw, &count);
                    continue;
                }
                for (int64_t t = 0; t < T; t++) {
                    const int64_t kh = t / g->KW, kw = t % g->KW;
                    if (kw_j1[kw] <= kw_j0[kw]) continue;
                    unsigned long long cnt = 0;
                    for (int64_t gi = 0; gi < gn; gi++)
                        for (int64_t i = r0; i < r1; i++) {
                            const int64_t ih = i + kh - g->pt, b = b0 + gi;
                            if (ih < 0 || ih >= g->H) continue;
                            s_offs[cnt] = (unsigned long long)(((b * g->H + ih) * g->W +
                                                                kw_j0[kw] + kw - g->pl) * C * fs);
                            dy_offs[cnt] =
                                (unsigned long long)(((b * Ho + i) * Wo + kw_j0[kw]) * K * fs);
                            cnt++;
                        }
                    if (cnt && form == BW_ROWS)
                        fn_kw[kw].offs(dy, x, pw + t * C * K, &cnt, dy_offs, s_offs);
                    else if (cnt)
                        fn_kw[kw].offs(x, dy, pw + t * K * C, &cnt, s_offs, dy_offs);
                }
            }
        }
    }
    reduce_partials(dw, db, part, nt, per, g, mask, form == BW_TRANSPOSED);
    return true;
}
