/* layer_act.c -- an activation as a layer: ReLU(), Tanh(), Softplus(), Sigmoid(), ELU(),
 * LeakyReLU() (act.c has the functions). After a layer that can carry it (Linear) the
 * network fuses it into that layer's epilogue and this code never runs (net.h); alone it
 * is "the identity, then the activation":
 *   forward   y(R, N) = act(x(R, N)), row by row;
 *   backward  din(R, N) = g * in_act'(x): g is already dL/dx, the identity's gradient. */
#include "net.h"
#include <string.h>

static vaec_status act_shape(vaec_layer *L) {
    L->out = L->in;
    return VAEC_OK;
}

/* y(R, N) = act(x(R, N)) */
static void act_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t R) {
    vaec_rows_act_forward(net->pool, L->act, y, ldy, x, ldx, R, vaec_dims_size(L->out));
}

/* din(R, N) = g(R, N) * in_act'(x) */
static void act_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                         int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    (void)accumulate;
    if (!din) return;
    const int64_t n = vaec_dims_size(L->in);
    for (int64_t r = 0; r < R; r++) memcpy(din + r * lddin, g + r * ldg, (size_t)n * sizeof(float));
    vaec_rows_act_backward(net->pool, in_act, din, lddin, x, ldx, R, n);
}

const vaec_layer_ops vaec_layer_act = {
    "activation", 0, act_shape, NULL, NULL, act_forward, act_backward, 0,
};
