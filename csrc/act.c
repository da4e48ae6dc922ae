/* act.c -- activations and their derivatives.
 * Every derivative here can be written in terms of the activation's OUTPUT y, so the
 * forward pass caches only its outputs:
 *   tanh' = 1 - y^2          sigmoid' = y (1 - y)      relu' = [y > 0]
 *   softplus' = sigmoid(x) = 1 - exp(-y)               elu' = y > 0 ? 1 : y + 1
 *   leaky_relu' = y > 0 ? 1 : 0.01                     (torch's defaults: elu alpha 1,
 *                                                       leaky slope 0.01) */
#include "internal.h"
#include <math.h>

#define LEAKY_SLOPE 0.01f

const char *vaec_act_name(vaec_act act) {
    static const char *names[VAEC_ACT_COUNT] = {"identity", "tanh", "relu", "softplus",
                                                "sigmoid", "elu", "leaky_relu"};
    return (unsigned)act < VAEC_ACT_COUNT ? names[act] : "unknown";
}

/* Stable forms: softplus(x) = max(x,0) + log1p(exp(-|x|)); sigmoid through exp(-|x|). */
static inline float softplus1(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
static inline float sigmoid1(float x) {
    float e = expf(-fabsf(x));
    return x >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

void vaec_act_forward(vaec_act act, float *y, const float *x, int64_t n) {
    switch (act) {
    case VAEC_ACT_IDENTITY:
        if (y != x) for (int64_t i = 0; i < n; i++) y[i] = x[i];
        break;
    case VAEC_ACT_TANH: for (int64_t i = 0; i < n; i++) y[i] = tanhf(x[i]); break;
    case VAEC_ACT_RELU: for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f; break;
    case VAEC_ACT_SOFTPLUS: for (int64_t i = 0; i < n; i++) y[i] = softplus1(x[i]); break;
    case VAEC_ACT_SIGMOID: for (int64_t i = 0; i < n; i++) y[i] = sigmoid1(x[i]); break;
    case VAEC_ACT_ELU: for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : expm1f(x[i]); break;
    case VAEC_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : LEAKY_SLOPE * x[i];
        break;
    default: break;
    }
}

void vaec_act_backward(vaec_act act, float *d, const float *y, int64_t n) {
    switch (act) {
    case VAEC_ACT_IDENTITY: break;
    case VAEC_ACT_TANH: for (int64_t i = 0; i < n; i++) d[i] *= 1.0f - y[i] * y[i]; break;
    case VAEC_ACT_RELU: for (int64_t i = 0; i < n; i++) d[i] = y[i] > 0.0f ? d[i] : 0.0f; break;
    case VAEC_ACT_SOFTPLUS: for (int64_t i = 0; i < n; i++) d[i] *= -expm1f(-y[i]); break;
    case VAEC_ACT_SIGMOID: for (int64_t i = 0; i < n; i++) d[i] *= y[i] * (1.0f - y[i]); break;
    case VAEC_ACT_ELU: for (int64_t i = 0; i < n; i++) d[i] *= y[i] > 0.0f ? 1.0f : y[i] + 1.0f; break;
    case VAEC_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) d[i] *= y[i] > 0.0f ? 1.0f : LEAKY_SLOPE;
        break;
    default: break;
    }
}
