/* conv.c -- the pieces of a convolution as GEMMs (darknet's convolutional_layer.c, ggml's
 * im2col + mul_mat), and the naive direct convolution kept beside them as the reference.
 *
 * Geometry (vaec_conv_geom): an example's input (C, H, W), a kernel (kh, kw), stride
 * (sh, sw), padding (ph, pw); the output is Ho = (H + 2 ph - kh) / sh + 1 by
 * Wo = (W + 2 pw - kw) / sw + 1. A patch is the C kh kw values under the kernel at an
 * output pixel, in (c, i, j) order: the order of torch's Conv2d weight (out, C, kh, kw), so
 * the weight is a (Cout, C kh kw) matrix as it is.
 *
 *   im2col     col(n HoWo + p, (c, i, j)) = x_n(c, oh sh - ph + i, ow sw - pw + j) (0 off
 *              the image), p = oh Wo + ow: one row per output pixel, so a forward is
 *              out(G HoWo, Cout) = col . W^T with the bias and activation in the GEMM's
 *              epilogue, channels last (NHWC). Between convolutions the tensors stay channels
 *              last, (H, W, C): a patch is then in (i, j, c) order, each kernel row i a run of
 *              kw C consecutive floats of the image, and the weight is permuted to match
 *              (vaec_conv_weight_to_ijc).
 *   col2im     the adjoint: x_n(c, ih, iw) += col(...) over every patch covering it, in
 *              patch order (one task per example: thread-count free).
 * The convolution's backward is two GEMMs (dW = g^T col, dcol = g W) and col2im; a
 * transposed convolution is the convolution's data gradient, and the other way round. */
#include "internal.h"
#include <string.h>

int64_t vaec_conv_out_size(int64_t in, int k, int s, int p) { return (in + 2 * (int64_t)p - k) / s + 1; }

/* ------------------------------------------------------------------ im2col */
typedef struct {
    const vaec_conv_geom *g;
    const float *x;
    int64_t ldx;
    float *col;
    float *dx;          /* col2im */
    int64_t lddx;
} col_job;

/* The copies of a patch row are a few floats (the kernel's width): short loops that
 * must stay loops, not calls of memcpy/memset (which the compiler would make of them, at
 * a call's cost for every 4 floats). */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_MEMCPY_IDIOM __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define NO_MEMCPY_IDIOM
#endif

/* Channels last: the patch row i of the kernel is kw pixels of C channels, kw C
 * consecutive floats of the image. */
NO_MEMCPY_IDIOM static void im2col_example_nhwc(const vaec_conv_geom *g, const float *restrict x,
                                                float *restrict col) {
    const int64_t C = g->C, H = g->H, W = g->W, Ho = g->Ho, Wo = g->Wo, kh = g->kh, kw = g->kw;
    const int64_t K = C * kh * kw, run = kw * C;
    for (int64_t oh = 0; oh < Ho; oh++) {
        const int64_t h0 = oh * g->sh - g->ph;
        for (int64_t ow = 0; ow < Wo; ow++) {
            float *row = col + (oh * Wo + ow) * K;
            const int64_t w0 = ow * g->sw - g->pw;
            const int cols_inside = w0 >= 0 && w0 + kw <= W;
            for (int64_t i = 0; i < kh; i++, row += run) {
                const int64_t ih = h0 + i;
                if (ih < 0 || ih >= H) {
                    for (int64_t q = 0; q < run; q++) row[q] = 0.0f;
                    continue;
                }
                const float *src = x + (ih * W + w0) * C;
                if (cols_inside) {
                    if (run >= 16) memcpy(row, src, (size_t)run * sizeof(float));   /* the library's widest copy */
                    else
                        for (int64_t q = 0; q < run; q++) row[q] = src[q];
                    continue;
                }
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = w0 + j;
                    float *d = row + j * C;
                    if (iw >= 0 && iw < W)
                        for (int64_t c = 0; c < C; c++) d[c] = src[j * C + c];
                    else
                        for (int64_t c = 0; c < C; c++) d[c] = 0.0f;
                }
            }
        }
    }
}

NO_MEMCPY_IDIOM static void col2im_example_nhwc(const vaec_conv_geom *g, const float *restrict col,
                                                float *restrict dx) {
    const int64_t C = g->C, H = g->H, W = g->W, Ho = g->Ho, Wo = g->Wo, kh = g->kh, kw = g->kw;
    const int64_t K = C * kh * kw, run = kw * C;
    memset(dx, 0, (size_t)(C * H * W) * sizeof(float));
    for (int64_t oh = 0; oh < Ho; oh++) {
        const int64_t h0 = oh * g->sh - g->ph;
        for (int64_t ow = 0; ow < Wo; ow++) {
            const float *row = col + (oh * Wo + ow) * K;
            const int64_t w0 = ow * g->sw - g->pw;
            const int cols_inside = w0 >= 0 && w0 + kw <= W;
            for (int64_t i = 0; i < kh; i++, row += run) {
                const int64_t ih = h0 + i;
                if (ih < 0 || ih >= H) continue;
                float *dst = dx + (ih * W + w0) * C;
                if (cols_inside) {
                    for (int64_t q = 0; q < run; q++) dst[q] += row[q];
                    continue;
                }
                for (int64_t j = 0; j < kw; j++) {
                    const int64_t iw = w0 + j;
                    if (iw >= 0 && iw < W)
                        for (int64_t c = 0; c < C; c++) dst[j * C + c] += row[j * C + c];
                }
            }
        }
    }
}

/* rows of one example's patches */
NO_MEMCPY_IDIOM static void im2col_example(const vaec_conv_geom *g, const float *restrict x, float *restrict col) {
    const int64_t C = g->C, H = g->H, W = g->W, Ho = g->Ho, Wo = g->Wo, kh = g->kh, kw = g->kw;
    const int64_t K = C * kh * kw;
    for (int64_t oh = 0; oh < Ho; oh++) {
        const int64_t h0 = oh * g->sh - g->ph;
        const int rows_inside = h0 >= 0 && h0 + kh <= H;
        for (int64_t ow = 0; ow < Wo; ow++) {
            float *row = col + (oh * Wo + ow) * K;
            const int64_t w0 = ow * g->sw - g->pw;
            if (rows_inside && w0 >= 0 && w0 + kw <= W) {   /* the patch lies inside the image */
                for (int64_t c = 0; c < C; c++) {
                    const float *src = x + (c * H + h0) * W + w0;
                    for (int64_t i = 0; i < kh; i++, row += kw, src += W)
                        for (int64_t j = 0; j < kw; j++) row[j] = src[j];
                }
                continue;
            }
            for (int64_t c = 0; c < C; c++) {
                const float *xc = x + c * H * W;
                for (int64_t i = 0; i < kh; i++, row += kw) {
                    const int64_t ih = h0 + i;
                    if (ih < 0 || ih >= H) {
                        for (int64_t j = 0; j < kw; j++) row[j] = 0.0f;
                        continue;
                    }
                    const float *src = xc + ih * W;
                    for (int64_t j = 0; j < kw; j++) {
                        const int64_t iw = w0 + j;
                        row[j] = iw >= 0 && iw < W ? src[iw] : 0.0f;
                    }
                }
            }
        }
    }
}

NO_MEMCPY_IDIOM static void col2im_example(const vaec_conv_geom *g, const float *restrict col, float *restrict dx) {
    const int64_t C = g->C, H = g->H, W = g->W, Ho = g->Ho, Wo = g->Wo, kh = g->kh, kw = g->kw;
    const int64_t K = C * kh * kw;
    memset(dx, 0, (size_t)(C * H * W) * sizeof(float));
    for (int64_t oh = 0; oh < Ho; oh++) {
        const int64_t h0 = oh * g->sh - g->ph;
        const int rows_inside = h0 >= 0 && h0 + kh <= H;
        for (int64_t ow = 0; ow < Wo; ow++) {
            const float *row = col + (oh * Wo + ow) * K;
            const int64_t w0 = ow * g->sw - g->pw;
            if (rows_inside && w0 >= 0 && w0 + kw <= W) {
                for (int64_t c = 0; c < C; c++) {
                    float *dst = dx + (c * H + h0) * W + w0;
                    for (int64_t i = 0; i < kh; i++, row += kw, dst += W)
                        for (int64_t j = 0; j < kw; j++) dst[j] += row[j];
                }
                continue;
            }
            for (int64_t c = 0; c < C; c++) {
                float *xc = dx + c * H * W;
                for (int64_t i = 0; i < kh; i++, row += kw) {
                    const int64_t ih = h0 + i;
                    if (ih < 0 || ih >= H) continue;
                    float *dst = xc + ih * W;
                    for (int64_t j = 0; j < kw; j++) {
                        const int64_t iw = w0 + j;
                        if (iw >= 0 && iw < W) dst[iw] += row[j];
                    }
                }
            }
        }
    }
}

static void im2col_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    col_job *j = ctx;
    float *col = j->col + n * j->g->Ho * j->g->Wo * j->g->C * j->g->kh * j->g->kw;
    if (j->g->nhwc) im2col_example_nhwc(j->g, j->x + n * j->ldx, col);
    else im2col_example(j->g, j->x + n * j->ldx, col);
}

static void col2im_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    col_job *j = ctx;
    const float *col = j->col + n * j->g->Ho * j->g->Wo * j->g->C * j->g->kh * j->g->kw;
    if (j->g->nhwc) col2im_example_nhwc(j->g, col, j->dx + n * j->lddx);
    else col2im_example(j->g, col, j->dx + n * j->lddx);
}

void vaec_conv_weight_to_ijc(const float *W, float *Wp, int64_t O, int64_t C, int64_t kh, int64_t kw) {
    const int64_t kk = kh * kw;
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t q = 0; q < kk; q++) Wp[(o * kk + q) * C + c] = W[(o * C + c) * kk + q];
}

void vaec_conv_weight_from_ijc(const float *Wp, float *W, int64_t O, int64_t C, int64_t kh, int64_t kw, int add) {
    const int64_t kk = kh * kw;
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t q = 0; q < kk; q++) {
                const float v = Wp[(o * kk + q) * C + c];
                float *d = W + (o * C + c) * kk + q;
                *d = add ? *d + v : v;
            }
}

void vaec_conv_im2col(vaec_pool *pool, const vaec_conv_geom *g, const float *x, int64_t ldx, int64_t G, float *col) {
    col_job j = {g, x, ldx, col, NULL, 0};
    vaec_pool_run(pool, im2col_task, &j, G);
}

void vaec_conv_col2im(vaec_pool *pool, const vaec_conv_geom *g, const float *col, int64_t G, float *dx, int64_t lddx) {
    col_job j = {g, NULL, 0, (float *)col, dx, lddx};
    vaec_pool_run(pool, col2im_task, &j, G);
}

/* --------------------------------------------------------------- layouts */
typedef struct { const float *src; int64_t lds; float *dst; int64_t ldd; int64_t P, Cn; } tr_job;

/* d[c * ldd + p] = s[p * lds + c] for p < P, c < Cn, in 8 x 8 tiles: each tile reads and
 * writes 8 runs of 8 floats, so both sides stay in a few cache lines */
static void transpose_tiles(const float *restrict s, int64_t lds, float *restrict d, int64_t ldd, int64_t P,
                            int64_t Cn) {
    int64_t p0 = 0;
    for (; p0 + 8 <= P; p0 += 8) {
        int64_t c0 = 0;
        for (; c0 + 8 <= Cn; c0 += 8)
            for (int c = 0; c < 8; c++)
                for (int p = 0; p < 8; p++) d[(c0 + c) * ldd + p0 + p] = s[(p0 + p) * lds + c0 + c];
        for (int64_t c = c0; c < Cn; c++)
            for (int p = 0; p < 8; p++) d[c * ldd + p0 + p] = s[(p0 + p) * lds + c];
    }
    for (int64_t p = p0; p < P; p++)
        for (int64_t c = 0; c < Cn; c++) d[c * ldd + p] = s[p * lds + c];
}

/* example n: src (P, Cn) channels last -> dst (Cn, P) channels first */
static void nhwc_to_nchw_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    tr_job *j = ctx;
    transpose_tiles(j->src + n * j->lds, j->Cn, j->dst + n * j->ldd, j->P, j->P, j->Cn);
}

static void nchw_to_nhwc_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    tr_job *j = ctx;
    transpose_tiles(j->src + n * j->lds, j->P, j->dst + n * j->ldd, j->Cn, j->Cn, j->P);
}

void vaec_conv_nhwc_to_nchw(vaec_pool *pool, const float *src, int64_t lds, float *dst, int64_t ldd, int64_t G,
                            int64_t P, int64_t Cn) {
    tr_job j = {src, lds, dst, ldd, P, Cn};
    vaec_pool_run(pool, nhwc_to_nchw_task, &j, G);
}

void vaec_conv_nchw_to_nhwc(vaec_pool *pool, const float *src, int64_t lds, float *dst, int64_t ldd, int64_t G,
                            int64_t P, int64_t Cn) {
    tr_job j = {src, lds, dst, ldd, P, Cn};
    vaec_pool_run(pool, nchw_to_nhwc_task, &j, G);
}

/* ---------------------------------------------------------- the reference */
/* y(R, (Cout, Ho, Wo)) = conv(x) + b, direct loops with float64 sums. */
void vaec_conv2d_forward_naive(const vaec_conv_geom *g, int64_t Cout, float *y, int64_t ldy, const float *x,
                               int64_t ldx, const float *Wt, const float *b, int64_t R) {
    const int64_t K = g->C * g->kh * g->kw;
    for (int64_t n = 0; n < R; n++)
        for (int64_t o = 0; o < Cout; o++)
            for (int64_t oh = 0; oh < g->Ho; oh++)
                for (int64_t ow = 0; ow < g->Wo; ow++) {
                    double s = b ? b[o] : 0.0;
                    for (int64_t c = 0; c < g->C; c++)
                        for (int64_t i = 0; i < g->kh; i++)
                            for (int64_t j = 0; j < g->kw; j++) {
                                int64_t ih = oh * g->sh - g->ph + i, iw = ow * g->sw - g->pw + j;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
                                s += (double)Wt[o * K + (c * g->kh + i) * g->kw + j] *
                                     x[n * ldx + (c * g->H + ih) * g->W + iw];
                            }
                    y[n * ldy + (o * g->Ho + oh) * g->Wo + ow] = (float)s;
                }
}

/* The adjoint of the forward in x and in W: dx(R, (C, H, W)) = conv^T(dy) (written),
 * dW(Cout, K) and db(Cout) written, float64 sums. */
void vaec_conv2d_backward_naive(const vaec_conv_geom *g, int64_t Cout, float *dx, int64_t lddx, float *dW, float *db,
                                const float *dy, int64_t lddy, const float *x, int64_t ldx, const float *Wt,
                                int64_t R) {
    const int64_t K = g->C * g->kh * g->kw, HW = g->H * g->W;
    double *ax = vaec_alloc((size_t)(HW * g->C), sizeof(double));
    double *aw = vaec_alloc((size_t)(Cout * K + Cout), sizeof(double));
    if (!ax || !aw) {
        vaec_free(ax);
        vaec_free(aw);
        return;
    }
    for (int64_t n = 0; n < R; n++) {
        memset(ax, 0, (size_t)(HW * g->C) * sizeof(double));
        for (int64_t o = 0; o < Cout; o++)
            for (int64_t oh = 0; oh < g->Ho; oh++)
                for (int64_t ow = 0; ow < g->Wo; ow++) {
                    double d = dy[n * lddy + (o * g->Ho + oh) * g->Wo + ow];
                    aw[Cout * K + o] += d;
                    for (int64_t c = 0; c < g->C; c++)
                        for (int64_t i = 0; i < g->kh; i++)
                            for (int64_t j = 0; j < g->kw; j++) {
                                int64_t ih = oh * g->sh - g->ph + i, iw = ow * g->sw - g->pw + j;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
                                int64_t wi = o * K + (c * g->kh + i) * g->kw + j, xi = (c * g->H + ih) * g->W + iw;
                                ax[xi] += d * Wt[wi];
                                aw[wi] += d * x[n * ldx + xi];
                            }
                }
        if (dx)
            for (int64_t i = 0; i < HW * g->C; i++) dx[n * lddx + i] = (float)ax[i];
    }
    if (dW)
        for (int64_t i = 0; i < Cout * K; i++) dW[i] = (float)aw[i];
    if (db)
        for (int64_t o = 0; o < Cout; o++) db[o] = (float)aw[Cout * K + o];
    vaec_free(ax);
    vaec_free(aw);
}
