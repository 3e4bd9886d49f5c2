/* invconv1x1_layer.c: Glow's invertible 1x1 convolution, LU-parametrised:
 *   W = P (L + I) (U + diag(sign * exp(log_s))),  y = x W  per pixel,
 *   log|det| = H W sum(log_s)   (no slogdet)
 * with L strictly lower and U strictly upper (the other entries of their tensors are masked
 * and get zero gradient), P a fixed permutation and sign fixed signs, both state. Init: a random
 * rotation, LU-decomposed with partial pivoting. The inverse applies W^-1, computed off the
 * tape in double by Gauss-Jordan elimination (C x C, once per call).
 * Tensors: <name>.lower (C, C), <name>.upper (C, C), <name>.log_s (C); state <name>.perm (C),
 * <name>.sign (C). */
#include "cf_models_impl.h"

typedef struct invconv_layer {
    cf_layer base;
    cf_tensor *lower, *upper, *log_s, *perm, *sign;
    cf_tensor *lmask, *umask, *eye, *pmat; /* constants (heap) */
} invconv_layer;

/* W on the tape, (C, C) */
static cf_tensor *weight(invconv_layer *l, cf_ctx *ctx)
{
    cf_tensor *L = cf_add(ctx, cf_mul(ctx, l->lower, l->lmask), l->eye);
    cf_tensor *diag = cf_mul(ctx, l->eye, cf_mul(ctx, l->sign, cf_exp(ctx, l->log_s)));
    cf_tensor *U = cf_add(ctx, cf_mul(ctx, l->upper, l->umask), diag);
    for (int64_t i = 0; i < l->perm->numel; i++) /* P from the permutation state */
        for (int64_t j = 0; j < l->perm->numel; j++)
            cf_tensor_set(l->pmat, i * l->perm->numel + j,
                          (int64_t)cf_tensor_get(l->perm, i) == j ? 1.0 : 0.0);
    return cf_matmul(ctx, cf_matmul(ctx, l->pmat, L), U);
}

static cf_status invconv_forward(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    invconv_layer *l = (invconv_layer *)self;
    io->x = cf_matmul(ctx, io->x, weight(l, ctx));
    double hw = (double)(self->in_shape[0] * self->in_shape[1]);
    return cf_flow_io_add_logdet(ctx, io, cf_scale(ctx, cf_sum_all(ctx, l->log_s), hw));
}

/* Inverts the n x n matrix a (row-major, double) in place; false if singular. */
static bool invert(double *a, double *inv, int64_t n)
{
    for (int64_t i = 0; i < n * n; i++) inv[i] = (i / n == i % n) ? 1.0 : 0.0;
    for (int64_t c = 0; c < n; c++) {
        int64_t piv = c;
        for (int64_t r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[piv * n + c])) piv = r;
        if (a[piv * n + c] == 0.0 || !isfinite(a[piv * n + c])) return false;
        for (int64_t k = 0; k < n; k++) {
            double t = a[c * n + k];
            a[c * n + k] = a[piv * n + k], a[piv * n + k] = t;
            t = inv[c * n + k];
            inv[c * n + k] = inv[piv * n + k], inv[piv * n + k] = t;
        }
        double d = a[c * n + c];
        for (int64_t k = 0; k < n; k++) a[c * n + k] /= d, inv[c * n + k] /= d;
        for (int64_t r = 0; r < n; r++) {
            if (r == c || a[r * n + c] == 0.0) continue;
            double f = a[r * n + c];
            for (int64_t k = 0; k < n; k++) a[r * n + k] -= f * a[c * n + k], inv[r * n + k] -= f * inv[c * n + k];
        }
    }
    return true;
}

static cf_status invconv_inverse(cf_layer *self, cf_ctx *ctx, cf_flow_io *io)
{
    invconv_layer *l = (invconv_layer *)self;
    cf_tensor *w = weight(l, ctx);
    if (!w || !io->x) return cf_ctx_status(ctx);
    int64_t C = w->shape[0];
    double *a = cf_ctx_alloc(ctx, (size_t)(2 * C * C) * sizeof(double), "a 1x1 inverse");
    if (!a) return cf_ctx_status(ctx);
    for (int64_t i = 0; i < C * C; i++) a[i] = cf_tensor_get(w, i);
    if (!invert(a, a + C * C, C))
        return cf_ctx_fail(ctx, CF_ERR_SINGULAR, "%s: the 1x1 convolution's matrix is singular",
                           self->name);
    cf_tensor *winv = cf_tensor_new_v(ctx, w->dtype, C, C);
    if (!winv) return cf_ctx_status(ctx);
    for (int64_t i = 0; i < C * C; i++) cf_tensor_set(winv, i, a[C * C + i]);
    io->x = cf_matmul(ctx, io->x, winv);
    return cf_ctx_status(ctx);
}

static double invconv_flops(const cf_layer *self)
{
    const int64_t *s = self->in_shape;
    return cf__conv_flops(s[0], s[1], 1, s[2], s[2]);
}

static void invconv_free(cf_layer *self)
{
    invconv_layer *l = (invconv_layer *)self;
    cf_tensor_free(l->lmask);
    cf_tensor_free(l->umask);
    cf_tensor_free(l->eye);
    cf_tensor_free(l->pmat);
    free(l);
}

static const cf_layer_vtable invconv_vt = {"invconv1x1", invconv_forward, invconv_inverse,
                                           invconv_flops, invconv_free};

/* A random rotation (Gram-Schmidt on a Gaussian matrix), LU-decomposed with partial pivoting
 * into the layer's tensors: q = P L U. */
static void init_lu(invconv_layer *l, int64_t C, cf_rng *rng)
{
    double *q = calloc((size_t)(C * C), sizeof(double));
    int64_t *perm = calloc((size_t)C, sizeof(int64_t));
    CF_ASSERT(q && perm, "out of memory initialising a 1x1 convolution");
    for (int64_t i = 0; i < C * C; i++) q[i] = cf_rng_normal(rng);
    for (int64_t r = 0; r < C; r++) { /* orthonormal rows */
        for (int64_t p = 0; p < r; p++) {
            double d = 0;
            for (int64_t k = 0; k < C; k++) d += q[r * C + k] * q[p * C + k];
            for (int64_t k = 0; k < C; k++) q[r * C + k] -= d * q[p * C + k];
        }
        double nrm = 0;
        for (int64_t k = 0; k < C; k++) nrm += q[r * C + k] * q[r * C + k];
        nrm = sqrt(nrm);
        for (int64_t k = 0; k < C; k++) q[r * C + k] /= nrm;
    }
    /* Doolittle LU with row pivoting: rows of q are permuted so that q[perm] = L U. */
    for (int64_t i = 0; i < C; i++) perm[i] = i;
    for (int64_t c = 0; c < C; c++) {
        int64_t piv = c;
        for (int64_t r = c + 1; r < C; r++)
            if (fabs(q[r * C + c]) > fabs(q[piv * C + c])) piv = r;
        for (int64_t k = 0; k < C; k++) {
            double t = q[c * C + k];
            q[c * C + k] = q[piv * C + k], q[piv * C + k] = t;
        }
        int64_t t = perm[c];
        perm[c] = perm[piv], perm[piv] = t;
        for (int64_t r = c + 1; r < C; r++) {
            q[r * C + c] /= q[c * C + c];
            for (int64_t k = c + 1; k < C; k++) q[r * C + k] -= q[r * C + c] * q[c * C + k];
        }
    }
    /* Original rows: row perm[i] of the rotation is row i of L U, so the rotation is P L U with
     * P[perm[i]][i] = 1; we store P's rows as indices: P[r][j] = 1 for j = pinv[r]. */
    for (int64_t i = 0; i < C; i++) cf_tensor_set(l->perm, perm[i], (double)i);
    for (int64_t r = 0; r < C; r++)
        for (int64_t k = 0; k < C; k++) {
            double v = q[r * C + k];
            cf_tensor_set(l->lower, r * C + k, k < r ? v : 0.0);
            cf_tensor_set(l->upper, r * C + k, k > r ? v : 0.0);
            if (k == r) {
                cf_tensor_set(l->sign, r, v < 0 ? -1.0 : 1.0);
                cf_tensor_set(l->log_s, r, log(fabs(v)));
            }
        }
    free(q);
    free(perm);
}

static cf_layer *invconv_create(const cf_layer_args *a)
{
    invconv_layer *l = cf_layer_alloc(sizeof *l, &invconv_vt, a, a->in_shape);
    if (!l) return NULL;
    int64_t C = a->in_shape[2];
    cf_dtype dt = cf_params_dtype(a->ps);
    cf_init custom = cf_init_custom();
    if (!(l->lower = cf_layer_param(&l->base, a, "lower", 2, (int64_t[]){C, C}, custom)) ||
        !(l->upper = cf_layer_param(&l->base, a, "upper", 2, (int64_t[]){C, C}, custom)) ||
        !(l->log_s = cf_layer_param(&l->base, a, "log_s", 1, &C, custom)) ||
        !(l->perm = cf_layer_state(&l->base, a, "perm", 1, &C, custom)) ||
        !(l->sign = cf_layer_state(&l->base, a, "sign", 1, &C, custom)) ||
        !(l->lmask = cf_tensor_alloc(dt, 2, (int64_t[]){C, C})) ||
        !(l->umask = cf_tensor_alloc(dt, 2, (int64_t[]){C, C})) ||
        !(l->eye = cf_tensor_alloc(dt, 2, (int64_t[]){C, C})) ||
        !(l->pmat = cf_tensor_alloc(dt, 2, (int64_t[]){C, C})))
        return cf_layer_fail(&l->base);
    for (int64_t r = 0; r < C; r++)
        for (int64_t k = 0; k < C; k++) {
            cf_tensor_set(l->lmask, r * C + k, k < r);
            cf_tensor_set(l->umask, r * C + k, k > r);
            cf_tensor_set(l->eye, r * C + k, k == r);
        }
    init_lu(l, C, a->rng);
    l->base.n_learnable = C * C; /* C(C-1)/2 in L, as many in U, C in log_s */
    l->base.n_convs = 1;
    return &l->base;
}

const cf_layer_kind cf__kind_invconv1x1 = {
    .name = "invconv1x1",
    .summary = "Glow's LU-parametrised invertible 1x1 convolution",
    .conventions = "per pixel y = x W with x a row of C channels and W (C_in, C_out) = P (L + I) "
                   "(U + diag(sign * exp(log_s))); L = lower with entries on and above the "
                   "diagonal ignored, U = upper with entries on and below it ignored; P[i][j] = 1 "
                   "where perm[i] == j (state); log|det| = H*W*sum(log_s)",
    .create = invconv_create,
    .role = "invconv",
    .choice = "1x1",
};

cf_layer *cf_invconv1x1_layer(cf_params *ps, const char *name, const int64_t shape[3],
                              cf_rng *rng)
{
    return cf_layer_create("invconv1x1", ps, name, shape, NULL, rng);
}
