/* act.c -- activations and their derivatives.
 * Every derivative here can be written in terms of the activation's OUTPUT y, so the
 * forward pass caches only its outputs:
 *   tanh' = 1 - y^2          sigmoid' = y (1 - y)      relu' = [y > 0]
 *   softplus' = sigmoid(x) = 1 - exp(-y)               elu' = y > 0 ? 1 : y + 1
 *   leaky_relu' = y > 0 ? 1 : 0.01                     (torch's defaults: elu alpha 1,
 *                                                       leaky slope 0.01)
 * The loops live in the elementwise kernels (elem.h): the vectorized ones of the active
 * ISA (elem_kernel.inc), or the plain libm loops of elem_naive.c on the naive path. */
#include "elem.h"

const char *vaec_act_name(vaec_act act) {
    static const char *names[VAEC_ACT_COUNT] = {"identity", "tanh", "relu", "softplus",
                                                "sigmoid", "elu", "leaky_relu"};
    return (unsigned)act < VAEC_ACT_COUNT ? names[act] : "unknown";
}

void vaec_act_forward(vaec_act act, float *y, const float *x, int64_t n) {
    vaec_elem_act_forward(act, y, x, n);
}

void vaec_act_backward(vaec_act act, float *d, const float *y, int64_t n) {
    vaec_elem_act_backward(act, d, y, n);
}
