/* layer_pool.c -- MaxPool2d(k, stride) and AvgPool2d(k, stride): torch's, without padding
 * (an output pixel for every window that fits: Ho = (H - kh) / sh + 1, floor mode).
 *   MaxPool2d  forward   y = the largest value of each window (the first one of equal
 *                        values, in the window's row-major order, as torch), its position
 *                        kept for the backward;
 *              backward  din = 0, then din[argmax] += g (windows may overlap), then
 *                        din *= in_act'(x).
 *   AvgPool2d  forward   y = the mean of each window (float64 sum);
 *              backward  din = the sum over the windows covering a pixel of g / (kh kw),
 *                        then din *= in_act'(x).
 * Channels first or last, as the input is (the output keeps its layout). One example a
 * task: results do not depend on the thread count. */
#include "net.h"
#include <stdio.h>
#include <string.h>

static vaec_status pool_shape(vaec_layer *L) {
    const vaec_layer_spec *s = &L->spec;
    char a[64];
    if (L->in.flat)
        return vaec_fail(VAEC_ERR_ARG, "%s (%s): needs a (C, H, W) input, got %s; put an Unflatten(C, H, W) before it",
                         L->names[0], L->ops->name, vaec_dims_format(L->in, a, sizeof a));
    for (int k = 0; k < 2; k++)
        if (s->kernel[k] < 1 || s->kernel[k] > 1024 || s->stride[k] < 1 || s->stride[k] > 1024)
            return vaec_fail(VAEC_ERR_ARG, "%s (%s): kernel_size and stride must be between 1 and 1024, got (%d, %d) "
                             "and (%d, %d)", L->names[0], L->ops->name, s->kernel[0], s->kernel[1], s->stride[0],
                             s->stride[1]);
    if (L->in.h < s->kernel[0] || L->in.w < s->kernel[1])
        return vaec_fail(VAEC_ERR_ARG, "%s (%s(%d, %d)): the window is larger than its input %s", L->names[0],
                         L->ops->name, s->kernel[0], s->kernel[1], vaec_dims_format(L->in, a, sizeof a));
    vaec_conv_geom *g = &L->geom;
    *g = (vaec_conv_geom){L->in.c, L->in.h, L->in.w, s->kernel[0], s->kernel[1], s->stride[0], s->stride[1], 0, 0,
                          (L->in.h - s->kernel[0]) / s->stride[0] + 1, (L->in.w - s->kernel[1]) / s->stride[1] + 1,
                          L->in.nhwc};
    L->out = (vaec_dims){0, L->in.c, g->Ho, g->Wo, L->in.nhwc};
    return VAEC_OK;
}

/* MaxPool2d: the position of each output's maximum, rows x (C Ho Wo) int32 */
static int64_t maxpool_plan(vaec_layer *L, float *buf, int64_t rows) {
    (void)buf;
    return rows * L->in.c * L->geom.Ho * L->geom.Wo;
}

/* where (c, h, w) lies in an example of H x W pixels and C channels */
static inline int64_t at(const vaec_conv_geom *g, int64_t c, int64_t h, int64_t w, int64_t H, int64_t W) {
    return g->nhwc ? (h * W + w) * g->C + c : (c * H + h) * W + w;
}

typedef struct {
    const vaec_layer *L;
    float *y; int64_t ldy;
    const float *x; int64_t ldx;
    float *din; int64_t lddin;
    const float *g; int64_t ldg;
    int32_t *arg;
    int avg;
} pool_job;

static void pool_forward_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    pool_job *j = ctx;
    const vaec_conv_geom *g = &j->L->geom;
    const float *x = j->x + n * j->ldx;
    float *y = j->y + n * j->ldy;
    int32_t *arg = j->avg ? NULL : j->arg + n * g->C * g->Ho * g->Wo;
    const double inv = 1.0 / (double)(g->kh * g->kw);
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t oh = 0; oh < g->Ho; oh++)
            for (int64_t ow = 0; ow < g->Wo; ow++) {
                const int64_t o = at(g, c, oh, ow, g->Ho, g->Wo), h0 = oh * g->sh, w0 = ow * g->sw;
                if (j->avg) {
                    double s = 0.0;
                    for (int64_t i = 0; i < g->kh; i++)
                        for (int64_t k = 0; k < g->kw; k++) s += x[at(g, c, h0 + i, w0 + k, g->H, g->W)];
                    y[o] = (float)(s * inv);
                } else {
                    int64_t best = at(g, c, h0, w0, g->H, g->W);
                    float m = x[best];
                    for (int64_t i = 0; i < g->kh; i++)
                        for (int64_t k = 0; k < g->kw; k++) {
                            const int64_t a = at(g, c, h0 + i, w0 + k, g->H, g->W);
                            if (x[a] > m || (x[a] != x[a] && m == m)) { m = x[a]; best = a; }   /* NaN wins */
                        }
                    y[o] = m;
                    arg[o] = (int32_t)best;
                }
            }
}

static void pool_backward_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    pool_job *j = ctx;
    const vaec_conv_geom *g = &j->L->geom;
    const float *gr = j->g + n * j->ldg;
    float *d = j->din + n * j->lddin;
    const int32_t *arg = j->avg ? NULL : j->arg + n * g->C * g->Ho * g->Wo;
    const float inv = (float)(1.0 / (double)(g->kh * g->kw));
    memset(d, 0, (size_t)(g->C * g->H * g->W) * sizeof(float));
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t oh = 0; oh < g->Ho; oh++)
            for (int64_t ow = 0; ow < g->Wo; ow++) {
                const int64_t o = at(g, c, oh, ow, g->Ho, g->Wo);
                if (!j->avg) {
                    d[arg[o]] += gr[o];
                    continue;
                }
                const float v = gr[o] * inv;
                for (int64_t i = 0; i < g->kh; i++)
                    for (int64_t k = 0; k < g->kw; k++) d[at(g, c, oh * g->sh + i, ow * g->sw + k, g->H, g->W)] += v;
            }
}

/* y(R, (C, Ho, Wo)) = the max or the mean over each window of x(R, (C, H, W)), in x's layout */
static void pool_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t R,
                         int avg) {
    pool_job j = {L, y, ldy, x, ldx, NULL, 0, NULL, 0, (int32_t *)L->ws, avg};
    vaec_pool_run(net->pool, pool_forward_task, &j, R);
}

/* din(R, (C, H, W)) = the windows' gradient back at their inputs, * in_act'(x) */
static void pool_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                          int64_t ldg, const float *x, int64_t ldx, int64_t R, int avg) {
    if (!din) return;
    pool_job j = {L, NULL, 0, x, ldx, din, lddin, g, ldg, (int32_t *)L->ws, avg};
    vaec_pool_run(net->pool, pool_backward_task, &j, R);
    vaec_rows_act_backward(net->pool, in_act, din, lddin, x, ldx, R, vaec_dims_size(L->in));
}

static void maxpool_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                            int64_t R) {
    pool_forward(net, L, y, ldy, x, ldx, R, 0);
}
static void avgpool_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                            int64_t R) {
    pool_forward(net, L, y, ldy, x, ldx, R, 1);
}
static void maxpool_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                             int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    (void)accumulate;
    pool_backward(net, L, din, lddin, in_act, g, ldg, x, ldx, R, 0);
}
static void avgpool_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                             int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    (void)accumulate;
    pool_backward(net, L, din, lddin, in_act, g, ldg, x, ldx, R, 1);
}

const vaec_layer_ops vaec_layer_maxpool2d = {
    "MaxPool2d", 0, pool_shape, NULL, maxpool_plan, maxpool_forward, maxpool_backward, 0,
};
const vaec_layer_ops vaec_layer_avgpool2d = {
    "AvgPool2d", 0, pool_shape, NULL, NULL, avgpool_forward, avgpool_backward, 0,
};
