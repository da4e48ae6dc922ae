/* layer_conv.c -- Conv2d and ConvTranspose2d, as GEMMs on the packed SIMD kernel (conv.c).
 * Both give channels-last outputs (H, W, C): the GEMM's rows are pixels and its columns
 * channels, so no transpose follows it, and the next layer's patches are runs of C floats.
 *
 * Conv2d(out, k, stride, padding): torch's weight (Cout, C, kh, kw), bias (Cout).
 *   forward   per block of G examples: col = im2col(x) (G HoWo, C kh kw), in (c, i, j) order
 *             for a channels-first input (the data), (i, j, c) for a channels-last one, with
 *             the weight permuted to match (Wp);
 *             y = act(col . Wp^T + b) (G HoWo, Cout), bias and activation in the epilogue.
 *   backward  dWp (+)= g^T . col (col from the forward, or made again), put back in torch's
 *             order; db (+)= colsum(g); din = col2im(g . Wp) * in_act'(x).
 * ConvTranspose2d(out, k, stride, padding, output_padding): torch's weight (Cin, Cout, kh,
 *   kw), bias (Cout). It is the data gradient of the Conv2d from its output shape to its
 *   input shape (`geom` is that convolution: C = Cout, (H, W) = the output's, channels last):
 *   forward   x_nhwc = x channels last (as it is, or transposed from channels first);
 *             col = x_nhwc . Wtp (G H W, kh kw Cout) with the weight permuted to (i, j, c);
 *             y = act(col2im(col) + b) (bias and activation in a pass after col2im);
 *   backward  colg = im2col(g); dWtp (+)= x_nhwc^T . colg, put back; db (+)= the sums of g per
 *             channel; din = (colg . Wtp^T, in x's layout) * in_act'(x).
 * The blocks hold G examples, G fixed by the shapes (about 2^24 floats of columns), so the
 * sums run in the same order whatever the number of threads; the first block's gradient
 * products write or add by the gradient protocol, the later ones add. When one block
 * holds the whole call, the backward uses the columns (Conv2d) or the channels-last input
 * (ConvTranspose2d) its forward left in the workspace instead of making them again. */
#define _POSIX_C_SOURCE 200809L
#include "net.h"
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define COL_BUDGET ((int64_t)1 << 24)   /* floats of columns a block holds (64 MB) */

/* The optional account of the time spent in the convolution layers and their multiply-adds
 * (vaec_conv_timing), for the benchmark's figure; off costs a relaxed load per call. */
static _Atomic int timing_on;
static _Atomic int64_t timing_ns, timing_macs;
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static void account(double t0, int64_t macs) {
    atomic_fetch_add_explicit(&timing_ns, (int64_t)((now_s() - t0) * 1e9), memory_order_relaxed);
    atomic_fetch_add_explicit(&timing_macs, macs, memory_order_relaxed);
}
void vaec_conv_timing(int on, double *seconds, double *macs) {
    int64_t ns = atomic_exchange(&timing_ns, 0), m = atomic_exchange(&timing_macs, 0);
    if (seconds) *seconds = (double)ns * 1e-9;
    if (macs) *macs = (double)m;
    atomic_store(&timing_on, on != 0);
}
#define TIMING_START double t0_ = atomic_load_explicit(&timing_on, memory_order_relaxed) ? now_s() : -1.0
#define TIMING_END(macs) do { if (t0_ >= 0.0) account(t0_, (macs)); } while (0)

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* "encoder.3 (Conv2d(64, (4, 4), stride (2, 2), padding (1, 1)))" */
static const char *describe(const vaec_layer *L, char *buf, size_t n) {
    const vaec_layer_spec *s = &L->spec;
    snprintf(buf, n, "%s (%s(%lld, (%d, %d), stride (%d, %d), padding (%d, %d)))", L->names[0], L->ops->name,
             (long long)s->out, s->kernel[0], s->kernel[1], s->stride[0], s->stride[1], s->padding[0], s->padding[1]);
    return buf;
}

static vaec_status check_spec(vaec_layer *L, int transposed) {
    const vaec_layer_spec *s = &L->spec;
    char d[160], a[64];
    describe(L, d, sizeof d);
    if (L->in.flat)
        return vaec_fail(VAEC_ERR_ARG, "%s: needs a (C, H, W) input, got %s; put an Unflatten(C, H, W) before it", d,
                         vaec_dims_format(L->in, a, sizeof a));
    if (s->out < 1 || s->out > (1 << 16))
        return vaec_fail(VAEC_ERR_ARG, "%s: out_channels must be between 1 and 65536", d);
    for (int k = 0; k < 2; k++) {
        if (s->kernel[k] < 1 || s->kernel[k] > 1024 || s->stride[k] < 1 || s->stride[k] > 1024 || s->padding[k] < 0 ||
            s->padding[k] > 1024)
            return vaec_fail(VAEC_ERR_ARG, "%s: kernel_size and stride must be between 1 and 1024, padding between 0 "
                             "and 1024", d);
        if (!transposed && s->output_padding[k] != 0)
            return vaec_fail(VAEC_ERR_ARG, "%s: output_padding is for ConvTranspose2d", d);
        if (transposed && (s->output_padding[k] < 0 || s->output_padding[k] >= s->stride[k]))
            return vaec_fail(VAEC_ERR_ARG, "%s: output_padding must be smaller than the stride, got (%d, %d)", d,
                             s->output_padding[0], s->output_padding[1]);
    }
    return VAEC_OK;
}

/* the block size: about COL_BUDGET floats of columns, at least one example */
static int64_t group_of(int64_t col_per_example) {
    int64_t G = COL_BUDGET / (col_per_example > 0 ? col_per_example : 1);
    return G < 1 ? 1 : G;
}

static int64_t up16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* The workspace of both kinds, laid out the same way: G rows of columns; G rows of a
 * channels-last matrix (Conv2d: its output or gradient when the layer's rows are not
 * contiguous; ConvTranspose2d: its input); the permuted weight and its gradient. */
typedef struct { float *col, *mat, *wp, *dwp; } conv_ws;
static int64_t conv_layout(const vaec_layer *L, float *buf, int64_t rows, int64_t col_row, int64_t mat_row,
                           int64_t nw, conv_ws *w) {
    const int64_t G = min64(L->group, rows);
    int64_t off = 0;
    float *p[4];
    const int64_t n[4] = {G * col_row, G * mat_row, nw, nw};
    for (int k = 0; k < 4; k++) {
        p[k] = buf ? buf + off : NULL;
        off += up16(n[k]);
    }
    if (w) *w = (conv_ws){p[0], p[1], p[2], p[3]};
    return off;
}

/* -------------------------------------------------------------------- Conv2d */
static vaec_status conv_shape(vaec_layer *L) {
    vaec_status st = check_spec(L, 0);
    if (st) return st;
    const vaec_layer_spec *s = &L->spec;
    vaec_conv_geom *g = &L->geom;
    /* a one-channel input is channels last as well: its patches are the same either way */
    *g = (vaec_conv_geom){L->in.c, L->in.h, L->in.w, s->kernel[0], s->kernel[1], s->stride[0], s->stride[1],
                          s->padding[0], s->padding[1], 0, 0, L->in.nhwc || L->in.c == 1};
    if (g->H + 2 * g->ph < g->kh || g->W + 2 * g->pw < g->kw) {
        char d[160], a[64];
        return vaec_fail(VAEC_ERR_ARG, "%s: the kernel (%lld, %lld) is larger than its padded input %s", describe(L, d, sizeof d),
                         (long long)g->kh, (long long)g->kw, vaec_dims_format(L->in, a, sizeof a));
    }
    g->Ho = vaec_conv_out_size(g->H, (int)g->kh, (int)g->sh, (int)g->ph);
    g->Wo = vaec_conv_out_size(g->W, (int)g->kw, (int)g->sw, (int)g->pw);
    L->out = vaec_dims_nhwc(s->out, g->Ho, g->Wo);
    L->group = group_of(g->Ho * g->Wo * g->C * g->kh * g->kw);
    return VAEC_OK;
}

/* weight (Cout, C, kh, kw) and bias (Cout), initialized as torch does: U(+-1/sqrt(fan_in)) */
static vaec_status conv_params(vaec_layer *L, vaec_arena *a) {
    const vaec_conv_geom *g = &L->geom;
    const int64_t K = g->C * g->kh * g->kw, Cout = L->spec.out;
    const float bound = 1.0f / sqrtf((float)K);
    char name[VAEC_NAME_LEN + 8];
    vaec_status st;
    snprintf(name, sizeof name, "%s.weight", L->names[0]);
    const int64_t shape[4] = {Cout, g->C, g->kh, g->kw};
    if ((st = vaec_arena_add_tensor_nd(a, &L->lin.W, name, 4, shape, bound))) return st;
    snprintf(name, sizeof name, "%s.bias", L->names[0]);
    if ((st = vaec_arena_add_tensor(a, &L->lin.b, name, 1, Cout, 0, bound))) return st;
    L->lin.in = K;
    L->lin.out = Cout;
    return VAEC_OK;
}

/* whether the weight is used permuted, (i, j, c): a channels-last input of several channels */
static int conv_permuted(const vaec_layer *L) { return L->geom.nhwc && L->geom.C > 1; }

static int64_t conv_plan(vaec_layer *L, float *buf, int64_t rows) {
    const vaec_conv_geom *g = &L->geom;
    const int64_t P = g->Ho * g->Wo, K = g->C * g->kh * g->kw, Cout = L->spec.out;
    return conv_layout(L, buf, rows, P * K, P * Cout, conv_permuted(L) ? Cout * K : 0, NULL);
}

/* y(R, (Ho, Wo, Cout)) = act(conv(x(R, (C, H, W) or (H, W, C))) + b) */
static void conv_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                         int64_t R) {
    const vaec_conv_geom *g = &L->geom;
    const float *P = net->arena->params;
    const int64_t K = g->C * g->kh * g->kw, Cout = L->spec.out, Np = g->Ho * g->Wo;
    const int64_t G = min64(L->group, net->rows);
    conv_ws w;
    conv_layout(L, L->ws, net->rows, Np * K, Np * Cout, conv_permuted(L) ? Cout * K : 0, &w);
    const float *W = P + L->lin.W;
    if (conv_permuted(L)) {
        vaec_conv_weight_to_ijc(W, w.wp, Cout, g->C, g->kh, g->kw);
        W = w.wp;
    }
    /* the rows of y are the GEMM's output as they are when they follow one another */
    const int direct = ldy == Np * Cout;
    vaec_gemm_epilogue e = {P + L->lin.b, L->act, NULL, 0, NULL};
    TIMING_START;
    for (int64_t n0 = 0; n0 < R; n0 += G) {
        const int64_t m = min64(G, R - n0);
        float *out = direct ? y + n0 * ldy : w.mat;
        vaec_conv_im2col(net->pool, g, x + n0 * ldx, ldx, m, w.col);
        vaec_sgemm_fused(net->pool, 0, 1, m * Np, Cout, K, w.col, K, W, K, 0.0f, out, Cout, &e);
        if (!direct)
            for (int64_t n = 0; n < m; n++) memcpy(y + (n0 + n) * ldy, out + n * Np * Cout, (size_t)(Np * Cout) * sizeof(float));
    }
    L->sp_for = R <= G ? x : NULL;   /* the columns of all of x stay in the workspace */
    L->sp_rows = R;
    TIMING_END(R * Np * Cout * K);
}

/* dW (+)= g^T . col, db (+)= colsum(g), din(R, x's shape) = col2im(g . W) * in_act'(x) */
static void conv_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                          int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    const vaec_conv_geom *geo = &L->geom;
    float *Gr = net->arena->grads;
    const int64_t K = geo->C * geo->kh * geo->kw, Cout = L->spec.out, Np = geo->Ho * geo->Wo;
    const int64_t G = min64(L->group, net->rows);
    const int perm = conv_permuted(L);
    conv_ws w;
    conv_layout(L, L->ws, net->rows, Np * K, Np * Cout, perm ? Cout * K : 0, &w);
    const float *W = perm ? w.wp : net->arena->params + L->lin.W;   /* the forward permuted it */
    float *dW = perm ? w.dwp : Gr + L->lin.W;
    const int direct = ldg == Np * Cout;
    vaec_gemm_epilogue chk = {NULL, VAEC_ACT_IDENTITY, NULL, 0, &net->nonfinite};
    TIMING_START;
    if (R <= 0 && !accumulate) {
        memset(Gr + L->lin.W, 0, (size_t)(Cout * K) * sizeof(float));
        memset(Gr + L->lin.b, 0, (size_t)Cout * sizeof(float));
    }
    for (int64_t n0 = 0; n0 < R; n0 += G) {
        const int64_t m = min64(G, R - n0);
        /* a permuted weight's gradient is made apart and put back once: its blocks add up
         * from zero there, so the first block writes whatever the protocol says */
        const int add = n0 > 0 || (accumulate && !perm);
        const float *gn = g + n0 * ldg;
        if (!direct) {
            for (int64_t n = 0; n < m; n++)
                memcpy(w.mat + n * Np * Cout, g + (n0 + n) * ldg, (size_t)(Np * Cout) * sizeof(float));
            gn = w.mat;
        }
        if (!(L->sp_for == x && L->sp_rows == R)) vaec_conv_im2col(net->pool, geo, x + n0 * ldx, ldx, m, w.col);
        vaec_sgemm_fused(net->pool, 1, 0, Cout, K, m * Np, gn, Cout, w.col, K, add ? 1.0f : 0.0f, dW, K, &chk);
        vaec_dense_bias_grad(net->pool, Gr + L->lin.b, gn, Cout, m * Np, Cout, n0 > 0 || accumulate, &net->nonfinite);
        if (!din) continue;
        L->sp_for = NULL;   /* the columns give way to their gradient */
        vaec_sgemm(net->pool, 0, 0, m * Np, K, Cout, gn, Cout, W, K, 0.0f, w.col, K);
        vaec_conv_col2im(net->pool, geo, w.col, m, din + n0 * lddin, lddin);
        vaec_rows_act_backward(net->pool, in_act, din + n0 * lddin, lddin, x + n0 * ldx, ldx, m,
                               geo->C * geo->H * geo->W);
    }
    if (perm && R > 0) vaec_conv_weight_from_ijc(w.dwp, Gr + L->lin.W, Cout, geo->C, geo->kh, geo->kw, accumulate);
    TIMING_END(R * Np * Cout * K * (din ? 2 : 1));
}

const vaec_layer_ops vaec_layer_conv2d = {
    "Conv2d", 1, conv_shape, conv_params, conv_plan, conv_forward, conv_backward, 0,
};

/* ----------------------------------------------------------- ConvTranspose2d */
static vaec_status convt_shape(vaec_layer *L) {
    vaec_status st = check_spec(L, 1);
    if (st) return st;
    const vaec_layer_spec *s = &L->spec;
    const int64_t Ho = (L->in.h - 1) * s->stride[0] - 2 * (int64_t)s->padding[0] + s->kernel[0] + s->output_padding[0];
    const int64_t Wo = (L->in.w - 1) * s->stride[1] - 2 * (int64_t)s->padding[1] + s->kernel[1] + s->output_padding[1];
    if (Ho < 1 || Wo < 1) {
        char d[160], a[64];
        return vaec_fail(VAEC_ERR_ARG, "%s: its output from %s would be (%lld, %lld, %lld): the padding is too large",
                         describe(L, d, sizeof d), vaec_dims_format(L->in, a, sizeof a), (long long)s->out,
                         (long long)Ho, (long long)Wo);
    }
    /* the convolution it is the data gradient of: from the output's shape (channels last)
     * to the input's */
    vaec_conv_geom *g = &L->geom;
    *g = (vaec_conv_geom){s->out, Ho, Wo, s->kernel[0], s->kernel[1], s->stride[0], s->stride[1], s->padding[0],
                          s->padding[1], L->in.h, L->in.w, 1};
    L->out = vaec_dims_nhwc(s->out, Ho, Wo);
    L->group = group_of(L->in.h * L->in.w * (s->out * g->kh * g->kw + 2 * L->in.c));
    return VAEC_OK;
}

/* weight (Cin, Cout, kh, kw) and bias (Cout); torch's fan_in for it is Cout kh kw */
static vaec_status convt_params(vaec_layer *L, vaec_arena *a) {
    const vaec_conv_geom *g = &L->geom;
    const int64_t Cin = L->in.c, Cout = L->spec.out, K = Cout * g->kh * g->kw;
    const float bound = 1.0f / sqrtf((float)K);
    char name[VAEC_NAME_LEN + 8];
    vaec_status st;
    snprintf(name, sizeof name, "%s.weight", L->names[0]);
    const int64_t shape[4] = {Cin, Cout, g->kh, g->kw};
    if ((st = vaec_arena_add_tensor_nd(a, &L->lin.W, name, 4, shape, bound))) return st;
    snprintf(name, sizeof name, "%s.bias", L->names[0]);
    if ((st = vaec_arena_add_tensor(a, &L->lin.b, name, 1, Cout, 0, bound))) return st;
    L->lin.in = Cin;
    L->lin.out = K;
    return VAEC_OK;
}

/* whether the weight is used permuted to (Cin, kh, kw, Cout): several output channels */
static int convt_permuted(const vaec_layer *L) { return L->spec.out > 1; }
/* whether the input is channels last as it is (else it is transposed into the workspace) */
static int convt_input_nhwc(const vaec_layer *L) { return L->in.nhwc || L->in.c == 1; }

static int64_t convt_plan(vaec_layer *L, float *buf, int64_t rows) {
    const int64_t HW = L->in.h * L->in.w;
    return conv_layout(L, buf, rows, HW * L->lin.out, HW * L->in.c, convt_permuted(L) ? L->in.c * L->lin.out : 0, NULL);
}

typedef struct { const float *b; vaec_act act; float *y; int64_t ldy, C, P; } bias_act_job;
/* y[p, c] = act(y[p, c] + b[c]) (channels last), one example a task */
static void bias_act_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    bias_act_job *j = ctx;
    float *y = j->y + n * j->ldy;
    for (int64_t p = 0; p < j->P; p++) {
        float *yp = y + p * j->C;
        for (int64_t c = 0; c < j->C; c++) yp[c] += j->b[c];
    }
    if (j->act != VAEC_ACT_IDENTITY) vaec_act_forward(j->act, y, y, j->C * j->P);
}

/* the rows [n0, n0+m) of x channels last: x itself, or transposed into w->mat */
static const float *convt_input(vaec_net *net, const vaec_layer *L, const conv_ws *w, const float *x, int64_t ldx,
                                int64_t n0, int64_t m, int64_t *ld) {
    const int64_t HW = L->in.h * L->in.w, Cin = L->in.c;
    if (convt_input_nhwc(L) && ldx == HW * Cin) {
        *ld = Cin;
        return x + n0 * ldx;
    }
    if (convt_input_nhwc(L))
        for (int64_t n = 0; n < m; n++) memcpy(w->mat + n * HW * Cin, x + (n0 + n) * ldx, (size_t)(HW * Cin) * sizeof(float));
    else
        vaec_conv_nchw_to_nhwc(net->pool, x + n0 * ldx, ldx, w->mat, HW * Cin, m, HW, Cin);
    *ld = Cin;
    return w->mat;
}

/* y(R, (Ho, Wo, Cout)) = act(col2im(x_nhwc . W) + b) */
static void convt_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                          int64_t R) {
    const vaec_conv_geom *g = &L->geom;
    const float *P = net->arena->params;
    const int64_t Cin = L->in.c, HW = L->in.h * L->in.w, K = L->lin.out;
    const int64_t G = min64(L->group, net->rows);
    conv_ws w;
    conv_layout(L, L->ws, net->rows, HW * K, HW * Cin, convt_permuted(L) ? Cin * K : 0, &w);
    const float *W = P + L->lin.W;
    if (convt_permuted(L)) {
        vaec_conv_weight_to_ijc(W, w.wp, Cin, g->C, g->kh, g->kw);
        W = w.wp;
    }
    TIMING_START;
    for (int64_t n0 = 0; n0 < R; n0 += G) {
        const int64_t m = min64(G, R - n0);
        int64_t ldn;
        const float *xn = convt_input(net, L, &w, x, ldx, n0, m, &ldn);
        vaec_sgemm(net->pool, 0, 0, m * HW, K, Cin, xn, ldn, W, K, 0.0f, w.col, K);
        vaec_conv_col2im(net->pool, g, w.col, m, y + n0 * ldy, ldy);
        bias_act_job j = {P + L->lin.b, L->act, y + n0 * ldy, ldy, g->C, g->H * g->W};
        vaec_pool_run(net->pool, bias_act_task, &j, m);
    }
    /* x channels last stays in the workspace when it was put there for all of x */
    L->sp_for = R <= G && !(convt_input_nhwc(L) && ldx == HW * Cin) ? x : NULL;
    L->sp_rows = R;
    TIMING_END(R * HW * Cin * K);
}

typedef struct { const float *g; int64_t ldg, C, P; double *acc; } chan_sum_job;
/* the sums of g (channels last) over the positions of each channel, example n into
 * acc[n C + c], positions in order */
static void chan_sum_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    chan_sum_job *j = ctx;
    double *a = j->acc + n * j->C;
    for (int64_t c = 0; c < j->C; c++) a[c] = 0.0;
    const float *g = j->g + n * j->ldg;
    for (int64_t p = 0; p < j->P; p++)
        for (int64_t c = 0; c < j->C; c++) a[c] += g[p * j->C + c];
}

/* dW (+)= x_nhwc^T . im2col(g), db (+)= sum(g), din = (im2col(g) . W^T, x's layout) * in_act'(x) */
static void convt_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                           int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    const vaec_conv_geom *geo = &L->geom;
    float *Gr = net->arena->grads;
    const int64_t Cin = L->in.c, HW = L->in.h * L->in.w, K = L->lin.out, Cout = L->spec.out;
    const int64_t G = min64(L->group, net->rows);
    const int perm = convt_permuted(L);
    conv_ws w;
    conv_layout(L, L->ws, net->rows, HW * K, HW * Cin, perm ? Cin * K : 0, &w);
    const float *W = perm ? w.wp : net->arena->params + L->lin.W;   /* the forward permuted it */
    float *dW = perm ? w.dwp : Gr + L->lin.W;
    vaec_gemm_epilogue chk = {NULL, VAEC_ACT_IDENTITY, NULL, 0, &net->nonfinite};
    TIMING_START;
    if (R <= 0 && !accumulate) {
        memset(Gr + L->lin.W, 0, (size_t)(Cin * K) * sizeof(float));
        memset(Gr + L->lin.b, 0, (size_t)Cout * sizeof(float));
    }
    /* the bias: per channel, the examples' sums in example order (float64), once */
    if (R > 0) {
        double *acc = (double *)w.col;   /* the columns are free until the first block */
        chan_sum_job cj = {g, ldg, Cout, geo->H * geo->W, acc};
        float *db = Gr + L->lin.b;
        for (int64_t n0 = 0; n0 < R; n0 += G) {
            const int64_t m = min64(G, R - n0);
            cj.g = g + n0 * ldg;
            vaec_pool_run(net->pool, chan_sum_task, &cj, m);
            for (int64_t c = 0; c < Cout; c++) {
                double s = 0.0;
                for (int64_t n = 0; n < m; n++) s += acc[n * Cout + c];
                db[c] = accumulate || n0 > 0 ? db[c] + (float)s : (float)s;
            }
        }
        if (vaec_check_range(db, Cout, 0.0f, 0.0f, 0) >= 0) atomic_store(&net->nonfinite, 1);
    }
    const int din_direct = convt_input_nhwc(L) && lddin == HW * Cin;
    for (int64_t n0 = 0; n0 < R; n0 += G) {
        const int64_t m = min64(G, R - n0);
        const int add = n0 > 0 || (accumulate && !perm);
        vaec_conv_im2col(net->pool, geo, g + n0 * ldg, ldg, m, w.col);
        int64_t ldn = Cin;
        const float *xn = L->sp_for == x && L->sp_rows == R ? w.mat : convt_input(net, L, &w, x, ldx, n0, m, &ldn);
        vaec_sgemm_fused(net->pool, 1, 0, Cin, K, m * HW, xn, ldn, w.col, K, add ? 1.0f : 0.0f, dW, K, &chk);
        if (!din) continue;
        L->sp_for = NULL;   /* the input gives way to its gradient */
        float *dn = din_direct ? din + n0 * lddin : w.mat;
        vaec_sgemm(net->pool, 0, 1, m * HW, Cin, K, w.col, K, W, K, 0.0f, dn, Cin);
        if (!din_direct) {
            if (convt_input_nhwc(L))
                for (int64_t n = 0; n < m; n++) memcpy(din + (n0 + n) * lddin, dn + n * HW * Cin, (size_t)(HW * Cin) * sizeof(float));
            else
                vaec_conv_nhwc_to_nchw(net->pool, dn, HW * Cin, din + n0 * lddin, lddin, m, HW, Cin);
        }
        vaec_rows_act_backward(net->pool, in_act, din + n0 * lddin, lddin, x + n0 * ldx, ldx, m, Cin * HW);
    }
    if (perm && R > 0) vaec_conv_weight_from_ijc(w.dwp, Gr + L->lin.W, Cin, Cout, geo->kh, geo->kw, accumulate);
    TIMING_END(R * HW * Cin * K * (din ? 2 : 1));
}

const vaec_layer_ops vaec_layer_convt2d = {
    "ConvTranspose2d", 1, convt_shape, convt_params, convt_plan, convt_forward, convt_backward, 0,
};
