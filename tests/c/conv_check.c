/* conv_check.c -- Conv2d and ConvTranspose2d layers (im2col/col2im + the packed GEMM of the
 * active ISA: VAEC_ISA, or the best the CPU has) against the naive direct convolution
 * (float64 sums), forward and backward (dx, dW, db), on awkward shapes: odd sizes,
 * non-square kernels, strides and paddings, output padding, blocks of examples smaller than
 * the batch, inputs channels first (the data) and channels last (another spatial layer's
 * output; the outputs are always channels last); and the same bits with 1 and 2 threads. Prints "conv_check: N passed, M
 * failed" and exits non-zero on failure. */
#include "net.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;
static unsigned seed = 1;
static float frand(void) { seed = seed * 1664525u + 1013904223u; return (float)(seed >> 8) / 16777216.0f - 0.5f; }

/* max |a - b| over max |b| (float32 sums against float64 ones: a few 1e-7 of the values'
 * scale per term's rounding; NaN anywhere gives infinity) */
static double rel(const float *a, int64_t lda, const float *b, int64_t ldb, int64_t rows, int64_t cols) {
    double worst = 0.0, scale = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double x = a[r * lda + c], y = b[r * ldb + c], e = fabs(x - y);
            if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
            if (fabs(y) > scale) scale = fabs(y);
        }
    return worst / (scale > 0.0 ? scale : 1.0);
}

typedef struct {
    int transposed;
    int64_t C, H, W, Cout;
    int kh, kw, sh, sw, ph, pw, oph, opw;
    int64_t R;
    int nhwc;   /* the input channels last (a spatial layer's output); else channels first (the data) */
} conv_case;

/* G examples (C, P) channels first <-> (P, C) channels last, rows of stride ld */
static void to_nhwc(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t G, int64_t C, int64_t P) {
    for (int64_t n = 0; n < G; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < P; p++) dst[n * ldd + p * C + c] = src[n * lds + c * P + p];
}
static void to_nchw(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t G, int64_t C, int64_t P) {
    for (int64_t n = 0; n < G; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < P; p++) dst[n * ldd + c * P + p] = src[n * lds + p * C + c];
}

static void run_case(const conv_case *t, vaec_pool *pool, vaec_pool *pool1) {
    vaec_arena A;
    memset(&A, 0, sizeof A);
    vaec_net net;
    vaec_layer storage[1];
    vaec_dims in = {0, t->C, t->H, t->W, t->nhwc};
    vaec_net_init(&net, "conv", in, storage, 1);
    vaec_layer_spec s = {0};
    s.kind = t->transposed ? VAEC_LAYER_CONVT2D : VAEC_LAYER_CONV2D;
    s.out = t->Cout;
    s.kernel[0] = t->kh; s.kernel[1] = t->kw;
    s.stride[0] = t->sh; s.stride[1] = t->sw;
    s.padding[0] = t->ph; s.padding[1] = t->pw;
    s.output_padding[0] = t->oph; s.output_padding[1] = t->opw;
    char what[160];
    snprintf(what, sizeof what, "%s C=%lld %lldx%lld -> %lld, k %dx%d s %dx%d p %dx%d op %dx%d, R=%lld, %s",
             t->transposed ? "ConvT" : "Conv", (long long)t->C, (long long)t->H, (long long)t->W, (long long)t->Cout,
             t->kh, t->kw, t->sh, t->sw, t->ph, t->pw, t->oph, t->opw, (long long)t->R,
             t->nhwc ? "channels last" : "channels first");
    if (vaec_net_add(&net, &A, &s, 0, NULL, 1, 0) || vaec_arena_alloc(&A, 3)) {
        printf("FAIL %s: %s\n", what, vaec_last_error());
        failed++;
        return;
    }
    vaec_layer *L = &net.layer[0];
    /* small blocks, so that the batch takes several */
    L->group = t->R > 2 ? (t->R + 2) / 3 : 1;
    const int64_t R = t->R, nin = vaec_dims_size(L->in), nout = vaec_dims_size(L->out);
    const int64_t ldi = nin + 3, ldo = nout + 5;
    float *ws = vaec_alloc((size_t)vaec_net_plan(&net, NULL, R), sizeof(float));
    vaec_net_plan(&net, ws, R);
    float *x = malloc(sizeof(float) * R * ldi), *g = malloc(sizeof(float) * R * ldo);
    for (int64_t i = 0; i < R * ldi; i++) x[i] = frand();
    for (int64_t i = 0; i < R * ldo; i++) g[i] = frand();
    /* x and g are channels first (the reference's layout); the layer takes x in its layout
     * and gives its output, and takes its output's gradient, channels last */
    const int64_t Pin = t->H * t->W, Pout = nout / L->out.c;
    float *xl = malloc(sizeof(float) * R * ldi), *gl = malloc(sizeof(float) * R * ldo);
    memcpy(xl, x, sizeof(float) * R * ldi);
    if (t->nhwc) to_nhwc(x, ldi, xl, ldi, R, t->C, Pin);
    to_nhwc(g, ldo, gl, ldo, R, L->out.c, Pout);
    for (int64_t i = 0; i < A.n; i++) A.params[i] = frand();
    /* fast: forward, backward with dx */
    vaec_net_bind(&net, pool, &A);
    int64_t ldy;
    const float *y = vaec_net_forward(&net, xl, ldi, R, &ldy);
    float *yf = malloc(sizeof(float) * R * ldy);
    memcpy(yf, y, sizeof(float) * R * ldy);
    int64_t ldg;
    float *gb = vaec_net_dout(&net, &ldg);
    for (int64_t r = 0; r < R; r++) memcpy(gb + r * ldg, gl + r * ldo, sizeof(float) * nout);
    float *dx = malloc(sizeof(float) * R * ldi);
    memset(A.grads, 0, sizeof(float) * A.n);
    vaec_net_backward(&net, xl, ldi, R, dx, ldi);
    /* the same with one thread: the same bits */
    float *g1 = malloc(sizeof(float) * A.n), *dx1 = malloc(sizeof(float) * R * ldi);
    memcpy(g1, A.grads, sizeof(float) * A.n);
    vaec_net_bind(&net, pool1, &A);
    y = vaec_net_forward(&net, xl, ldi, R, &ldy);
    int same = 1;
    for (int64_t r = 0; r < R; r++) same &= memcmp(y + r * ldy, yf + r * ldy, sizeof(float) * nout) == 0;
    gb = vaec_net_dout(&net, &ldg);
    for (int64_t r = 0; r < R; r++) memcpy(gb + r * ldg, gl + r * ldo, sizeof(float) * nout);
    memset(A.grads, 0, sizeof(float) * A.n);
    vaec_net_backward(&net, xl, ldi, R, dx1, ldi);
    same &= memcmp(A.grads, g1, sizeof(float) * A.n) == 0;
    for (int64_t r = 0; r < R; r++) same &= memcmp(dx + r * ldi, dx1 + r * ldi, sizeof(float) * nin) == 0;
    /* back to channels first for the comparison with the reference */
    float *tmp = malloc(sizeof(float) * R * (ldy > ldi ? ldy : ldi));
    to_nchw(yf, ldy, tmp, ldy, R, L->out.c, Pout);
    memcpy(yf, tmp, sizeof(float) * R * ldy);
    if (t->nhwc) {
        to_nchw(dx, ldi, tmp, ldi, R, t->C, Pin);
        memcpy(dx, tmp, sizeof(float) * R * ldi);
    }
    free(tmp);
    /* naive: a convolution of geometry L->geom (for the transposed one, its adjoint) */
    const vaec_conv_geom *geo = &L->geom;
    const float *Wt = A.params + L->lin.W, *b = A.params + L->lin.b;
    float *yn = calloc((size_t)(R * nout), sizeof(float)), *dxn = calloc((size_t)(R * nin), sizeof(float));
    int64_t nw = t->transposed ? t->C * t->Cout * t->kh * t->kw : t->Cout * t->C * t->kh * t->kw;
    float *dWn = calloc((size_t)nw, sizeof(float)), *dbn = calloc((size_t)t->Cout, sizeof(float));
    float *gn = malloc(sizeof(float) * R * nout);
    for (int64_t r = 0; r < R; r++) memcpy(gn + r * nout, g + r * ldo, sizeof(float) * nout);
    if (!t->transposed) {
        vaec_conv2d_forward_naive(geo, t->Cout, yn, nout, x, ldi, Wt, b, R);
        vaec_conv2d_backward_naive(geo, t->Cout, dxn, nin, dWn, dbn, gn, nout, x, ldi, Wt, R);
    } else {
        /* y = conv^T(x) + b; dx = conv(g); dW from the adjoint's weight gradient; db = sums of g */
        float *xin = malloc(sizeof(float) * R * nin);
        for (int64_t r = 0; r < R; r++) memcpy(xin + r * nin, x + r * ldi, sizeof(float) * nin);
        vaec_conv2d_backward_naive(geo, t->C, yn, nout, NULL, NULL, xin, nin, gn, nout, Wt, R);
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < t->Cout; c++)
                for (int64_t p = 0; p < geo->H * geo->W; p++) yn[r * nout + c * geo->H * geo->W + p] += b[c];
        vaec_conv2d_forward_naive(geo, t->C, dxn, nin, gn, nout, Wt, NULL, R);
        vaec_conv2d_backward_naive(geo, t->C, NULL, 0, dWn, NULL, xin, nin, gn, nout, Wt, R);
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < t->Cout; c++)
                for (int64_t p = 0; p < geo->H * geo->W; p++) dbn[c] += gn[r * nout + c * geo->H * geo->W + p];
        free(xin);
    }
    double ey = rel(yf, ldy, yn, nout, R, nout), ex = rel(dx, ldi, dxn, nin, R, nin);
    double ew = rel(g1 + L->lin.W, 0, dWn, 0, 1, nw), eb = rel(g1 + L->lin.b, 0, dbn, 0, 1, t->Cout);
    const double tol = 1e-5;
    int ok = ey < tol && ex < tol && ew < tol && eb < tol && same;
    if (ok) passed++;
    else {
        failed++;
        printf("FAIL %s: y %.2e dx %.2e dW %.2e db %.2e, 1 vs 2 threads %s\n", what, ey, ex, ew, eb,
               same ? "same" : "DIFFER");
    }
    free(x); free(g); free(xl); free(gl); free(yf); free(dx); free(g1); free(dx1); free(yn); free(dxn); free(dWn); free(dbn); free(gn);
    vaec_free(ws);
    vaec_arena_free(&A);
}

int main(void) {
    vaec_pool *pool = NULL, *pool1 = NULL;
    vaec_pool_create(&pool, 2);
    vaec_pool_create(&pool1, 1);
    printf("conv_check on %s\n", vaec_isa_name(vaec_cpu_active_isa()));
    static const conv_case cases[] = {
        /* T  C  H   W  Cout kh kw sh sw ph pw oph opw R  nhwc */
        {0, 1, 28, 28, 32, 4, 4, 2, 2, 1, 1, 0, 0, 5, 0},
        {0, 32, 14, 14, 64, 4, 4, 2, 2, 1, 1, 0, 0, 4, 1},
        {0, 32, 14, 14, 64, 4, 4, 2, 2, 1, 1, 0, 0, 4, 0},
        {0, 3, 13, 11, 5, 3, 3, 1, 1, 1, 1, 0, 0, 7, 0},
        {0, 3, 13, 11, 5, 3, 3, 1, 1, 1, 1, 0, 0, 7, 1},
        {0, 5, 13, 11, 6, 3, 2, 2, 1, 0, 1, 0, 0, 3, 1},
        {0, 2, 7, 9, 3, 7, 1, 3, 2, 0, 0, 0, 0, 2, 0},
        {0, 4, 6, 6, 33, 1, 1, 1, 1, 0, 0, 0, 0, 9, 1},
        {0, 6, 5, 5, 4, 5, 5, 1, 1, 2, 2, 0, 0, 1, 1},
        {1, 64, 7, 7, 32, 4, 4, 2, 2, 1, 1, 0, 0, 4, 0},
        {1, 64, 7, 7, 32, 4, 4, 2, 2, 1, 1, 0, 0, 4, 1},
        {1, 32, 14, 14, 1, 4, 4, 2, 2, 1, 1, 0, 0, 3, 1},
        {1, 5, 6, 5, 3, 3, 3, 2, 2, 1, 1, 1, 0, 5, 0},
        {1, 3, 4, 7, 2, 3, 2, 2, 3, 0, 1, 1, 2, 3, 1},
        {1, 2, 5, 5, 4, 1, 1, 1, 1, 0, 0, 0, 0, 2, 0},
        {1, 7, 3, 3, 6, 5, 4, 3, 2, 2, 1, 2, 1, 4, 1},
        /* channels last with C a multiple of 8: the indirect GEMMs (taps partly outside,
         * odd sizes, more rows than one GEMM block; ConvTranspose2d's taps are Cout's) */
        {0, 8, 9, 7, 5, 3, 3, 2, 1, 1, 1, 0, 0, 3, 1},
        {0, 16, 11, 10, 7, 5, 3, 1, 2, 2, 0, 0, 0, 6, 1},
        {1, 3, 5, 6, 16, 3, 3, 2, 2, 1, 1, 1, 0, 3, 1},
        {1, 9, 4, 3, 24, 4, 2, 3, 1, 0, 1, 2, 0, 5, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], pool, pool1);
    vaec_pool_destroy(pool);
    vaec_pool_destroy(pool1);
    printf("conv_check: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
