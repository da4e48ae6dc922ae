/* layer_shape.c -- the layers that only reshape or repeat: Flatten(), Unflatten(C, H, W)
 * and Upsample(scale) (nearest neighbour, torch's nn.Upsample(scale_factor=s)), and the
 * network's last step when its output is channels last (ToNCHW, net.h).
 *   Flatten    (C, H, W) -> (C H W) in NCHW order (torch's): the same memory, no work, for a
 *              channels-first input (or one channel); a channels-last one is transposed
 *              (backward: the gradient transposed back, * in_act'(x))
 *   Unflatten  (C H W) -> (C, H, W) channels first; the same memory: no work
 *   Upsample   forward   y(c, i, j) = x(c, i / s, j / s), in x's layout;
 *              backward  din(c, a, b) = the sum of g over its s x s block, * in_act'(x).
 *   ToNCHW     channels last -> channels first (and back, for the gradient). */
#include "net.h"
#include <stdio.h>
#include <string.h>

static vaec_status flatten_shape(vaec_layer *L) {
    L->out = vaec_dims_flat(vaec_dims_size(L->in));
    L->alias = !vaec_dims_channels_last(L->in);
    return VAEC_OK;
}

/* a channels-last input, (H W, C) per example -> (C, H W) (Flatten, ToNCHW) */
static void to_nchw_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                            int64_t R) {
    vaec_conv_nhwc_to_nchw(net->pool, x, ldx, y, ldy, R, L->in.h * L->in.w, L->in.c);
}

/* din = g channels last again, * in_act'(x) */
static void to_nchw_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                             int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    (void)accumulate;
    if (!din) return;
    vaec_conv_nchw_to_nhwc(net->pool, g, ldg, din, lddin, R, L->in.h * L->in.w, L->in.c);
    vaec_rows_act_backward(net->pool, in_act, din, lddin, x, ldx, R, vaec_dims_size(L->in));
}

static vaec_status to_nchw_shape(vaec_layer *L) {
    L->out = L->in;
    L->out.nhwc = 0;
    return VAEC_OK;
}

static vaec_status unflatten_shape(vaec_layer *L) {
    const int64_t *s = L->spec.shape;
    char a[64];
    for (int k = 0; k < 3; k++)
        if (s[k] < 1 || s[k] > (1 << 26))
            return vaec_fail(VAEC_ERR_ARG, "%s (Unflatten(%lld, %lld, %lld)): every size must be between 1 and 2^26",
                             L->names[0], (long long)s[0], (long long)s[1], (long long)s[2]);
    if (s[0] * s[1] * s[2] != vaec_dims_size(L->in))
        return vaec_fail(VAEC_ERR_ARG, "%s (Unflatten(%lld, %lld, %lld)): its input %s has %lld values, not %lld",
                         L->names[0], (long long)s[0], (long long)s[1], (long long)s[2],
                         vaec_dims_format(L->in, a, sizeof a), (long long)vaec_dims_size(L->in),
                         (long long)(s[0] * s[1] * s[2]));
    L->out = (vaec_dims){0, s[0], s[1], s[2], s[0] == 1};
    return VAEC_OK;
}

/* the network never calls these: an alias layer's output is its input */
static void alias_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                          int64_t R) {
    (void)net; (void)L; (void)y; (void)ldy; (void)x; (void)ldx; (void)R;
}
static void alias_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                           int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    (void)net; (void)L; (void)din; (void)lddin; (void)in_act; (void)g; (void)ldg; (void)x; (void)ldx; (void)R;
    (void)accumulate;
}

const vaec_layer_ops vaec_layer_flatten = {
    "Flatten", 0, flatten_shape, NULL, NULL, to_nchw_forward, to_nchw_backward, 1,
};
const vaec_layer_ops vaec_layer_to_nchw = {
    "ToNCHW", 0, to_nchw_shape, NULL, NULL, to_nchw_forward, to_nchw_backward, 0,
};
const vaec_layer_ops vaec_layer_unflatten = {
    "Unflatten", 0, unflatten_shape, NULL, NULL, alias_forward, alias_backward, 1,
};

/* ---------------------------------------------------------------- Upsample */
static vaec_status upsample_shape(vaec_layer *L) {
    char a[64];
    const int64_t s = L->spec.scale;
    if (L->in.flat)
        return vaec_fail(VAEC_ERR_ARG, "%s (Upsample): needs a (C, H, W) input, got %s; put an Unflatten(C, H, W) "
                         "before it", L->names[0], vaec_dims_format(L->in, a, sizeof a));
    if (s < 1 || s > 64)
        return vaec_fail(VAEC_ERR_ARG, "%s (Upsample(%lld)): the scale must be an integer between 1 and 64",
                         L->names[0], (long long)s);
    L->out = (vaec_dims){0, L->in.c, L->in.h * s, L->in.w * s, L->in.nhwc};
    return VAEC_OK;
}

typedef struct {
    const vaec_layer *L;
    float *y; int64_t ldy;
    const float *x; int64_t ldx;
} up_job;

static void up_forward_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    up_job *j = ctx;
    const vaec_dims in = j->L->in, out = j->L->out;
    const int64_t s = j->L->spec.scale, C = in.c;
    const float *x = j->x + n * j->ldx;
    float *y = j->y + n * j->ldy;
    if (in.nhwc) {   /* (h, w, c): each pixel's C values repeated */
        for (int64_t i = 0; i < out.h; i++)
            for (int64_t k = 0; k < out.w; k++)
                memcpy(y + (i * out.w + k) * C, x + ((i / s) * in.w + k / s) * C, (size_t)C * sizeof(float));
        return;
    }
    for (int64_t c = 0; c < out.c; c++)
        for (int64_t i = 0; i < out.h; i++) {
            const float *xr = x + (c * in.h + i / s) * in.w;
            float *yr = y + (c * out.h + i) * out.w;
            for (int64_t k = 0; k < out.w; k++) yr[k] = xr[k / s];
        }
}

/* y = the input (j->x, the gradient) summed over each s x s block into j->y (din) */
static void up_backward_task(void *ctx, int64_t n, int tid) {
    (void)tid;
    up_job *j = ctx;
    const vaec_dims in = j->L->in, out = j->L->out;
    const int64_t s = j->L->spec.scale, C = in.c;
    const float *g = j->x + n * j->ldx;
    float *d = j->y + n * j->ldy;
    memset(d, 0, (size_t)vaec_dims_size(in) * sizeof(float));
    if (in.nhwc) {
        for (int64_t i = 0; i < out.h; i++)
            for (int64_t k = 0; k < out.w; k++) {
                const float *gp = g + (i * out.w + k) * C;
                float *dp = d + ((i / s) * in.w + k / s) * C;
                for (int64_t c = 0; c < C; c++) dp[c] += gp[c];
            }
        return;
    }
    for (int64_t c = 0; c < out.c; c++)
        for (int64_t i = 0; i < out.h; i++) {
            const float *gr = g + (c * out.h + i) * out.w;
            float *dr = d + (c * in.h + i / s) * in.w;
            for (int64_t k = 0; k < out.w; k++) dr[k / s] += gr[k];
        }
}

/* y(R, (C, sH, sW)) = x(R, (C, H, W)) repeated */
static void upsample_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                             int64_t R) {
    up_job j = {L, y, ldy, x, ldx};
    vaec_pool_run(net->pool, up_forward_task, &j, R);
}

/* din(R, (C, H, W)) = the block sums of g(R, (C, sH, sW)), * in_act'(x) */
static void upsample_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                              int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    (void)accumulate;
    if (!din) return;
    up_job j = {L, din, lddin, g, ldg};
    vaec_pool_run(net->pool, up_backward_task, &j, R);
    vaec_rows_act_backward(net->pool, in_act, din, lddin, x, ldx, R, vaec_dims_size(L->in));
}

const vaec_layer_ops vaec_layer_upsample = {
    "Upsample", 0, upsample_shape, NULL, NULL, upsample_forward, upsample_backward, 0,
};
