/* layer_conv.c -- Conv2d and ConvTranspose2d, as GEMMs on the packed SIMD kernel (conv.c).
 * Both give channels-last outputs (H, W, C): the GEMM's rows are pixels and its columns
 * channels, so no transpose follows it, and the next layer's patches are runs of C floats.
 *
 * Conv2d(out, k, stride, padding): torch's weight (Cout, C, kh, kw), bias (Cout).
 *   forward   per group of examples: col = im2col(x) (m HoWo, C kh kw), in (c, i, j) order
 *             for a channels-first input (the data), (i, j, c) for a channels-last one, with
 *             the weight permuted to match (Wp);
 *             y = act(col . Wp^T + b) (m HoWo, Cout), bias and activation in the epilogue.
 *   backward  per group: col = im2col(x) again; dWp_lane (+)= g^T . col; db_lane += the
 *             sums of g; din = col2im(g . Wp) * in_act'(x); then dWp = the lanes' sum, put
 *             back in torch's order, db likewise.
 * ConvTranspose2d(out, k, stride, padding, output_padding): torch's weight (Cin, Cout, kh,
 *   kw), bias (Cout). It is the data gradient of the Conv2d from its output shape to its
 *   input shape (`geom` is that convolution: C = Cout, (H, W) = the output's, channels last):
 *   forward   per group: x_nhwc = x channels last (as it is, or transposed from channels
 *             first); col = x_nhwc . Wtp (m H W, kh kw Cout) with the weight permuted to
 *             (i, j, c); y = act(col2im(col) + b) (bias and activation in a pass after col2im);
 *   backward  per group: colg = im2col(g); dWtp_lane (+)= x_nhwc^T . colg; db_lane += the
 *             sums of g per channel; din = (colg . Wtp^T, in x's layout) * in_act'(x); then
 *             the lanes' sums as for Conv2d.
 * A group is one task from its columns to its gradients (below), so the sums run in the
 * same order whatever the number of threads. */
#define _POSIX_C_SOURCE 200809L
#include "net.h"
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define COL_BUDGET ((int64_t)1 << 18)   /* floats of columns a group holds (1 MB) */

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

/* The work is split into groups of examples, each group a task of one thread from its
 * columns to its gradients, so the columns are made, used and dropped while they are in
 * that core's cache, with no barrier between the steps. A group holds about COL_BUDGET
 * floats of columns. Groups go round-robin to at most CONV_LANES lanes; a lane runs its
 * groups in order and adds their weight and bias gradients into partial sums of its own,
 * which are then added lane by lane. The groups and lanes depend on the number of rows
 * only, so the sums run in the same order whatever the number of threads. */
#define CONV_LANES 8
static int64_t group_of(int64_t col_per_example) {
    int64_t G = COL_BUDGET / (col_per_example > 0 ? col_per_example : 1);
    return G < 1 ? 1 : G;
}

static int64_t up16(int64_t n) { return (n + 15) & ~(int64_t)15; }
static int64_t cdiv64(int64_t n, int64_t k) { return (n + k - 1) / k; }

/* R rows in groups of `size` (at most G, at least min(R, CONV_LANES) groups), on `lanes` */
typedef struct { int64_t size, count, lanes; } conv_split;
static conv_split split_of(int64_t G, int64_t R) {
    conv_split p = {1, 0, 0};
    if (R <= 0) return p;
    int64_t n = cdiv64(R, G);
    if (n < min64(R, CONV_LANES)) n = min64(R, CONV_LANES);
    p.size = cdiv64(R, n);
    p.count = cdiv64(R, p.size);
    p.lanes = min64(p.count, CONV_LANES);
    return p;
}

/* The workspace of both kinds: the permuted weight and its gradient, then min(rows,
 * CONV_LANES) times: a scratch slot (G rows of columns; G rows of a channels-last matrix,
 * for Conv2d its output or gradient when the layer's rows are not contiguous, for
 * ConvTranspose2d its input or the input's gradient), and a lane's weight gradient (nwk
 * floats) and bias gradient (nb doubles). A task uses its lane's sums and a free slot. */
typedef struct { float *col, *mat, *dw; double *db; } conv_lane;
typedef struct { float *wp, *dwp; conv_lane lane[CONV_LANES]; } conv_ws;
static int64_t conv_layout(const vaec_layer *L, float *buf, int64_t rows, int64_t col_row, int64_t mat_row,
                           int64_t nw, int64_t nwk, int64_t nb, conv_ws *w) {
    const int64_t G = min64(L->group, rows), lanes = min64(rows, CONV_LANES);
    int64_t off = 0;
#define CONV_TAKE(ptr, n) do { if (w) (ptr) = buf ? buf + off : NULL; off += up16(n); } while (0)
    float *dbf = NULL;
    if (w) *w = (conv_ws){0};
    CONV_TAKE(w->wp, nw);
    CONV_TAKE(w->dwp, nw);
    for (int64_t l = 0; l < lanes; l++) {
        CONV_TAKE(w->lane[l].col, G * col_row);
        CONV_TAKE(w->lane[l].mat, G * mat_row);
        CONV_TAKE(w->lane[l].dw, nwk);
        CONV_TAKE(dbf, 2 * nb);
        if (w) w->lane[l].db = (double *)dbf;
    }
#undef CONV_TAKE
    return off;
}

/* the lanes' sums: out (+)= sum_l lane[l].dw (nwk floats), db (+)= sum_l lane[l].db, each
 * element's terms in lane order; flags a non-finite result */
typedef struct { const conv_ws *w; int64_t lanes, n, chunk; float *out; int add; } lane_sum_job;
static void lane_sum_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    const lane_sum_job *j = ctx;
    const int64_t e0 = t * j->chunk, e1 = min64(e0 + j->chunk, j->n);
    for (int64_t e = e0; e < e1; e++) {
        float s = j->add ? j->out[e] : 0.0f;
        float p = j->w->lane[0].dw[e];
        for (int64_t l = 1; l < j->lanes; l++) p += j->w->lane[l].dw[e];
        j->out[e] = s + p;
    }
}
static void lanes_reduce(vaec_net *net, const conv_ws *w, int64_t lanes, float *dW, int64_t nwk, int addW, float *db,
                         int64_t nb, int addb) {
    lane_sum_job j = {w, lanes, nwk, 4096, dW, addW};
    vaec_pool_run(nwk * lanes > (1 << 15) ? net->pool : NULL, lane_sum_task, &j, cdiv64(nwk, j.chunk));
    for (int64_t c = 0; c < nb; c++) {
        double t = 0.0;
        for (int64_t l = 0; l < lanes; l++) t += w->lane[l].db[c];
        db[c] = addb ? db[c] + (float)t : (float)t;
    }
    if (vaec_check_range(dW, nwk, 0.0f, 0.0f, 0) >= 0 || vaec_check_range(db, nb, 0.0f, 0.0f, 0) >= 0)
        atomic_store(&net->nonfinite, 1);
}

/* db[c] += the sums of g's rows (rows x C, row stride ld) per channel, in row order */
static void chan_sums(double *db, const float *g, int64_t ld, int64_t rows, int64_t C) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < C; c++) db[c] += g[r * ld + c];
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
    return conv_layout(L, buf, rows, P * K, P * Cout, conv_permuted(L) ? Cout * K : 0, Cout * K, Cout, NULL);
}

typedef struct {
    vaec_net *net;
    const vaec_layer *L;
    const conv_ws *w;
    conv_split sp;
    const float *W, *x, *g;
    float *y, *din;
    int64_t ldx, ldy, ldg, lddin, R;
    vaec_act in_act;
    _Atomic unsigned busy;   /* the scratch slots in use */
} conv_job;

/* A task's scratch (columns, matrix) is a free slot's, the lowest: the threads keep using
 * the same few buffers, which stay in their caches, whichever lanes they run. At most
 * CONV_LANES tasks run at once, so one is always free. Only the buffers depend on it. */
static int slot_take(conv_job *j) {
    for (;;)
        for (int s = 0; s < CONV_LANES; s++)
            if (!(atomic_fetch_or(&j->busy, 1u << s) & (1u << s))) return s;
}
static void slot_give(conv_job *j, int s) { atomic_fetch_and(&j->busy, ~(1u << s)); }

/* The backward of both kinds, its job set up: the lanes (`lane`), then their sums into the
 * weight gradient (wrows x K, torch's order; through the permuted one when `perm`) and the
 * bias gradient (nb); no rows: zero gradients, or nothing added. */
static void backward_run(conv_job *j, vaec_task_fn lane, int perm, int64_t wrows, int64_t K, int64_t nb,
                         int accumulate) {
    const vaec_layer *L = j->L;
    float *Gr = j->net->arena->grads;
    if (j->R <= 0) {
        if (!accumulate) {
            memset(Gr + L->lin.W, 0, (size_t)(wrows * K) * sizeof(float));
            memset(Gr + L->lin.b, 0, (size_t)nb * sizeof(float));
        }
        return;
    }
    vaec_pool_run(j->net->pool, lane, j, j->sp.lanes);
    lanes_reduce(j->net, j->w, j->sp.lanes, perm ? j->w->dwp : Gr + L->lin.W, wrows * K, accumulate && !perm,
                 Gr + L->lin.b, nb, accumulate);
    if (perm)
        vaec_conv_weight_from_ijc(j->w->dwp, Gr + L->lin.W, wrows, K / (L->geom.kh * L->geom.kw), L->geom.kh,
                                  L->geom.kw, accumulate);
}

/* lane l: its groups' rows [n0, n0 + m) */
#define FOR_LANE_GROUPS(j, l, n0, m)                                                                  \
    for (int64_t gi_ = (l), n0, m; gi_ < (j)->sp.count &&                                             \
                                   (n0 = gi_ * (j)->sp.size, m = min64((j)->sp.size, (j)->R - n0), 1); \
         gi_ += (j)->sp.lanes)

static void conv_forward_lane(void *ctx, int64_t l, int tid) {
    (void)tid;
    conv_job *j = ctx;
    const vaec_conv_geom *g = &j->L->geom;
    const int64_t K = g->C * g->kh * g->kw, Cout = j->L->spec.out, Np = g->Ho * g->Wo;
    const int slot = slot_take(j);
    float *col = j->w->lane[slot].col, *mat = j->w->lane[slot].mat;
    const int direct = j->ldy == Np * Cout;
    vaec_gemm_epilogue e = {j->net->arena->params + j->L->lin.b, j->L->act, NULL, 0, NULL};
    FOR_LANE_GROUPS(j, l, n0, m) {
        float *out = direct ? j->y + n0 * j->ldy : mat;
        vaec_conv_im2col(NULL, g, j->x + n0 * j->ldx, j->ldx, m, col);
        vaec_sgemm_fused(NULL, 0, 1, m * Np, Cout, K, col, K, j->W, K, 0.0f, out, Cout, &e);
        if (!direct)
            for (int64_t n = 0; n < m; n++)
                memcpy(j->y + (n0 + n) * j->ldy, out + n * Np * Cout, (size_t)(Np * Cout) * sizeof(float));
    }
    slot_give(j, slot);
}

/* y(R, (Ho, Wo, Cout)) = act(conv(x(R, (C, H, W) or (H, W, C))) + b) */
static void conv_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                         int64_t R) {
    const vaec_conv_geom *g = &L->geom;
    const int64_t K = g->C * g->kh * g->kw, Cout = L->spec.out, Np = g->Ho * g->Wo;
    conv_ws w;
    conv_layout(L, L->ws, net->rows, Np * K, Np * Cout, conv_permuted(L) ? Cout * K : 0, Cout * K, Cout, &w);
    const float *W = net->arena->params + L->lin.W;
    if (conv_permuted(L)) {
        vaec_conv_weight_to_ijc(W, w.wp, Cout, g->C, g->kh, g->kw);
        W = w.wp;
    }
    TIMING_START;
    conv_job j = {net, L, &w, split_of(min64(L->group, net->rows), R), W, x, NULL, y, NULL, ldx, ldy, 0, 0, R, 0, 0};
    vaec_pool_run(net->pool, conv_forward_lane, &j, j.sp.lanes);
    TIMING_END(R * Np * Cout * K);
}

static void conv_backward_lane(void *ctx, int64_t l, int tid) {
    (void)tid;
    conv_job *j = ctx;
    const vaec_conv_geom *geo = &j->L->geom;
    const int64_t K = geo->C * geo->kh * geo->kw, Cout = j->L->spec.out, Np = geo->Ho * geo->Wo;
    const conv_lane *ln = &j->w->lane[l];
    const int slot = slot_take(j);
    float *col = j->w->lane[slot].col, *mat = j->w->lane[slot].mat;
    const int direct = j->ldg == Np * Cout;
    for (int64_t c = 0; c < Cout; c++) ln->db[c] = 0.0;
    int first = 1;
    FOR_LANE_GROUPS(j, l, n0, m) {
        const float *gn = j->g + n0 * j->ldg;
        if (!direct) {
            for (int64_t n = 0; n < m; n++)
                memcpy(mat + n * Np * Cout, j->g + (n0 + n) * j->ldg, (size_t)(Np * Cout) * sizeof(float));
            gn = mat;
        }
        vaec_conv_im2col(NULL, geo, j->x + n0 * j->ldx, j->ldx, m, col);
        vaec_sgemm(NULL, 1, 0, Cout, K, m * Np, gn, Cout, col, K, first ? 0.0f : 1.0f, ln->dw, K);
        chan_sums(ln->db, gn, Cout, m * Np, Cout);
        first = 0;
        if (!j->din) continue;
        vaec_sgemm(NULL, 0, 0, m * Np, K, Cout, gn, Cout, j->W, K, 0.0f, col, K);
        vaec_conv_col2im(NULL, geo, col, m, j->din + n0 * j->lddin, j->lddin);
        vaec_rows_act_backward(NULL, j->in_act, j->din + n0 * j->lddin, j->lddin, j->x + n0 * j->ldx, j->ldx, m,
                               geo->C * geo->H * geo->W);
    }
    slot_give(j, slot);
}

/* dW (+)= g^T . col, db (+)= colsum(g), din(R, x's shape) = col2im(g . W) * in_act'(x) */
static void conv_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                          int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    const vaec_conv_geom *geo = &L->geom;
    const int64_t K = geo->C * geo->kh * geo->kw, Cout = L->spec.out, Np = geo->Ho * geo->Wo;
    const int perm = conv_permuted(L);
    conv_ws w;
    conv_layout(L, L->ws, net->rows, Np * K, Np * Cout, perm ? Cout * K : 0, Cout * K, Cout, &w);
    const float *W = perm ? w.wp : net->arena->params + L->lin.W;   /* the forward permuted it */
    TIMING_START;
    conv_job j = {net, L, &w, split_of(min64(L->group, net->rows), R), W, x, g, NULL, din, ldx, 0, ldg, lddin, R, in_act, 0};
    backward_run(&j, conv_backward_lane, perm, Cout, K, Cout, accumulate);
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
    L->group = group_of(L->in.h * L->in.w * (s->out * g->kh * g->kw + L->in.c));
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
    const int64_t HW = L->in.h * L->in.w, Cin = L->in.c, K = L->lin.out;
    return conv_layout(L, buf, rows, HW * K, HW * Cin, convt_permuted(L) ? Cin * K : 0, Cin * K, L->spec.out, NULL);
}

/* the rows [n0, n0+m) of x channels last: x itself, or put into `mat` */
static const float *convt_input(const vaec_layer *L, float *mat, const float *x, int64_t ldx, int64_t n0, int64_t m) {
    const int64_t HW = L->in.h * L->in.w, Cin = L->in.c;
    if (convt_input_nhwc(L) && ldx == HW * Cin) return x + n0 * ldx;
    if (convt_input_nhwc(L))
        for (int64_t n = 0; n < m; n++) memcpy(mat + n * HW * Cin, x + (n0 + n) * ldx, (size_t)(HW * Cin) * sizeof(float));
    else
        vaec_conv_nchw_to_nhwc(NULL, x + n0 * ldx, ldx, mat, HW * Cin, m, HW, Cin);
    return mat;
}

static void convt_forward_lane(void *ctx, int64_t l, int tid) {
    (void)tid;
    conv_job *j = ctx;
    const vaec_layer *L = j->L;
    const vaec_conv_geom *g = &L->geom;
    const int64_t Cin = L->in.c, HW = L->in.h * L->in.w, K = L->lin.out, C = g->C, P = g->H * g->W;
    const float *b = j->net->arena->params + L->lin.b;
    const int slot = slot_take(j);
    float *col = j->w->lane[slot].col, *mat = j->w->lane[slot].mat;
    FOR_LANE_GROUPS(j, l, n0, m) {
        const float *xn = convt_input(L, mat, j->x, j->ldx, n0, m);
        vaec_sgemm(NULL, 0, 0, m * HW, K, Cin, xn, Cin, j->W, K, 0.0f, col, K);
        vaec_conv_col2im(NULL, g, col, m, j->y + n0 * j->ldy, j->ldy);
        for (int64_t n = 0; n < m; n++) {   /* y[p, c] = act(y[p, c] + b[c]), channels last */
            float *y = j->y + (n0 + n) * j->ldy;
            for (int64_t p = 0; p < P; p++)
                for (int64_t c = 0; c < C; c++) y[p * C + c] += b[c];
            if (L->act != VAEC_ACT_IDENTITY) vaec_act_forward(L->act, y, y, C * P);
        }
    }
    slot_give(j, slot);
}

/* y(R, (Ho, Wo, Cout)) = act(col2im(x_nhwc . W) + b) */
static void convt_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                          int64_t R) {
    const vaec_conv_geom *g = &L->geom;
    const int64_t Cin = L->in.c, HW = L->in.h * L->in.w, K = L->lin.out;
    conv_ws w;
    conv_layout(L, L->ws, net->rows, HW * K, HW * Cin, convt_permuted(L) ? Cin * K : 0, Cin * K, L->spec.out, &w);
    const float *W = net->arena->params + L->lin.W;
    if (convt_permuted(L)) {
        vaec_conv_weight_to_ijc(W, w.wp, Cin, g->C, g->kh, g->kw);
        W = w.wp;
    }
    TIMING_START;
    conv_job j = {net, L, &w, split_of(min64(L->group, net->rows), R), W, x, NULL, y, NULL, ldx, ldy, 0, 0, R, 0, 0};
    vaec_pool_run(net->pool, convt_forward_lane, &j, j.sp.lanes);
    TIMING_END(R * HW * Cin * K);
}

static void convt_backward_lane(void *ctx, int64_t l, int tid) {
    (void)tid;
    conv_job *j = ctx;
    const vaec_layer *L = j->L;
    const vaec_conv_geom *geo = &L->geom;
    const int64_t Cin = L->in.c, HW = L->in.h * L->in.w, K = L->lin.out, Cout = L->spec.out;
    const conv_lane *ln = &j->w->lane[l];
    const int slot = slot_take(j);
    float *col = j->w->lane[slot].col, *mat = j->w->lane[slot].mat;
    const int din_direct = convt_input_nhwc(L) && j->lddin == HW * Cin;
    for (int64_t c = 0; c < Cout; c++) ln->db[c] = 0.0;
    int first = 1;
    FOR_LANE_GROUPS(j, l, n0, m) {
        const float *gn = j->g + n0 * j->ldg;
        for (int64_t n = 0; n < m; n++) chan_sums(ln->db, gn + n * j->ldg, Cout, geo->H * geo->W, Cout);
        vaec_conv_im2col(NULL, geo, gn, j->ldg, m, col);
        const float *xn = convt_input(L, mat, j->x, j->ldx, n0, m);
        vaec_sgemm(NULL, 1, 0, Cin, K, m * HW, xn, Cin, col, K, first ? 0.0f : 1.0f, ln->dw, K);
        first = 0;
        if (!j->din) continue;
        float *dn = din_direct ? j->din + n0 * j->lddin : mat;   /* the input is done with */
        vaec_sgemm(NULL, 0, 1, m * HW, Cin, K, col, K, j->W, K, 0.0f, dn, Cin);
        if (!din_direct) {
            if (convt_input_nhwc(L))
                for (int64_t n = 0; n < m; n++)
                    memcpy(j->din + (n0 + n) * j->lddin, dn + n * HW * Cin, (size_t)(HW * Cin) * sizeof(float));
            else
                vaec_conv_nhwc_to_nchw(NULL, dn, HW * Cin, j->din + n0 * j->lddin, j->lddin, m, HW, Cin);
        }
        vaec_rows_act_backward(NULL, j->in_act, j->din + n0 * j->lddin, j->lddin, j->x + n0 * j->ldx, j->ldx, m,
                               Cin * HW);
    }
    slot_give(j, slot);
}

/* dW (+)= x_nhwc^T . im2col(g), db (+)= sum(g), din = (im2col(g) . W^T, x's layout) * in_act'(x) */
static void convt_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                           int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    const int64_t Cin = L->in.c, HW = L->in.h * L->in.w, K = L->lin.out, Cout = L->spec.out;
    const int perm = convt_permuted(L);
    conv_ws w;
    conv_layout(L, L->ws, net->rows, HW * K, HW * Cin, perm ? Cin * K : 0, Cin * K, Cout, &w);
    const float *W = perm ? w.wp : net->arena->params + L->lin.W;   /* the forward permuted it */
    TIMING_START;
    conv_job j = {net, L, &w, split_of(min64(L->group, net->rows), R), W, x, g, NULL, din, ldx, 0, ldg, lddin, R, in_act, 0};
    backward_run(&j, convt_backward_lane, perm, Cin, K, Cout, accumulate);
    TIMING_END(R * HW * Cin * K * (din ? 2 : 1));
}

const vaec_layer_ops vaec_layer_convt2d = {
    "ConvTranspose2d", 1, convt_shape, convt_params, convt_plan, convt_forward, convt_backward, 0,
};
