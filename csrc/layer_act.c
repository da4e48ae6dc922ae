/* layer_act.c -- an activation as a layer: ReLU(), Tanh(), Softplus(), Sigmoid(), ELU(),
 * LeakyReLU(slope) (act.c has the functions). After a layer that can carry it (Linear,
 * Conv2d, ...) the network fuses it into that layer's epilogue and this code never runs
 * (net.h); alone it is "the identity, then the activation":
 *   forward   y(R, N) = act(x(R, N)), row by row;
 *   backward  din(R, N) = g * in_act'(x): g is already dL/dx, the identity's gradient.
 * A leaky ReLU whose slope a is not the kernels' 0.01 is an operation of its own, with no
 * activation after it:
 *   forward   y = x > 0 ? x : a x;    backward  din = g * (x > 0 ? 1 : a) * in_act'(x). */
#include "net.h"
#include <math.h>
#include <string.h>

static vaec_status act_shape(vaec_layer *L) {
    if (!isfinite(L->spec.slope) || (L->spec.act != VAEC_ACT_LEAKY_RELU && L->spec.slope != 0.0f))
        return vaec_fail(VAEC_ERR_ARG, "%s (%s): a slope is for LeakyReLU only, and must be finite", L->names[0],
                         vaec_act_name((vaec_act)L->spec.act));
    L->out = L->in;
    return VAEC_OK;
}

/* y(R, N) = act(x(R, N)) */
static void act_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t R) {
    const int64_t n = vaec_dims_size(L->out);
    if (vaec_act_custom_slope(&L->spec)) {
        const float a = L->spec.slope;
        for (int64_t r = 0; r < R; r++)
            for (int64_t i = 0; i < n; i++) {
                float v = x[r * ldx + i];
                y[r * ldy + i] = v > 0.0f ? v : a * v;
            }
        return;
    }
    vaec_rows_act_forward(net->pool, L->act, y, ldy, x, ldx, R, n);
}

/* din(R, N) = g(R, N) * in_act'(x) */
static void act_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                         int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    (void)accumulate;
    if (!din) return;
    const int64_t n = vaec_dims_size(L->in);
    if (vaec_act_custom_slope(&L->spec)) {
        const float a = L->spec.slope;
        for (int64_t r = 0; r < R; r++)
            for (int64_t i = 0; i < n; i++) din[r * lddin + i] = x[r * ldx + i] > 0.0f ? g[r * ldg + i] : a * g[r * ldg + i];
    } else {
        for (int64_t r = 0; r < R; r++) memcpy(din + r * lddin, g + r * ldg, (size_t)n * sizeof(float));
    }
    vaec_rows_act_backward(net->pool, in_act, din, lddin, x, ldx, R, n);
}

const vaec_layer_ops vaec_layer_act = {
    "activation", 0, act_shape, NULL, NULL, act_forward, act_backward, 0,
};
