/* elem_naive.c -- the reference elementwise kernels: plain loops over libm.
 * Activations in float exactly as act.c always computed them; the likelihood rows in
 * float64 throughout (each term and the row sums). These are what the vector kernels
 * are tested against, and the VAEC_ISA=naive path. */
#include "elem.h"
#include <math.h>
#include <string.h>

/* Stable forms: softplus(x) = max(x,0) + log1p(exp(-|x|)); sigmoid through exp(-|x|). */
static inline float softplus1(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
static inline float sigmoid1(float x) {
    float e = expf(-fabsf(x));
    return x >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

void vaec_elem_act_forward_naive(vaec_act act, float *y, const float *x, int64_t n) {
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
        for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : VAEC_LEAKY_SLOPE * x[i];
        break;
    default: break;
    }
}

void vaec_elem_act_backward_naive(vaec_act act, float *d, const float *y, int64_t n) {
    switch (act) {
    case VAEC_ACT_IDENTITY: break;
    case VAEC_ACT_TANH: for (int64_t i = 0; i < n; i++) d[i] *= 1.0f - y[i] * y[i]; break;
    case VAEC_ACT_RELU: for (int64_t i = 0; i < n; i++) d[i] = y[i] > 0.0f ? d[i] : 0.0f; break;
    case VAEC_ACT_SOFTPLUS: for (int64_t i = 0; i < n; i++) d[i] *= -expm1f(-y[i]); break;
    case VAEC_ACT_SIGMOID: for (int64_t i = 0; i < n; i++) d[i] *= y[i] * (1.0f - y[i]); break;
    case VAEC_ACT_ELU: for (int64_t i = 0; i < n; i++) d[i] *= y[i] > 0.0f ? 1.0f : y[i] + 1.0f; break;
    case VAEC_ACT_LEAKY_RELU:
        for (int64_t i = 0; i < n; i++) d[i] *= y[i] > 0.0f ? 1.0f : VAEC_LEAKY_SLOPE;
        break;
    default: break;
    }
}

void vaec_elem_bernoulli_rows_naive(int64_t R, int64_t D, const float *l, int64_t ldl,
                                    const float *x, int64_t ldx, float scale,
                                    float *dl, int64_t lddl, double *logp_add) {
    for (int64_t r = 0; r < R; r++) {
        const float *lr = l + r * ldl, *xr = x + r * ldx;
        double lp = 0.0;
        for (int64_t k = 0; k < D; k++) {
            /* log p = x l - softplus(l); d(-log p)/dl = sigmoid(l) - x */
            double lv = lr[k], xv = xr[k], e = exp(-fabs(lv));
            lp += xv * lv - (fmax(lv, 0.0) + log1p(e));
            if (dl) {
                double s = lv >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
                dl[r * lddl + k] = (float)((double)scale * (s - xv));
            }
        }
        logp_add[r] += lp;
    }
}

void vaec_elem_gaussian_rows_naive(int64_t R, int64_t D, const float *ml, int64_t ldml,
                                   const float *x, int64_t ldx, float scale,
                                   float *dml, int64_t lddml, double *logp_add) {
    for (int64_t r = 0; r < R; r++) {
        const float *m = ml + r * ldml, *v = m + D, *xr = x + r * ldx;
        double lp = 0.0;
        for (int64_t k = 0; k < D; k++) {
            /* log p = -0.5 (log 2 pi + v + (x - m)^2 exp(-v)) */
            double diff = (double)xr[k] - m[k], iv = exp(-(double)v[k]);
            double q = diff * diff * iv;
            lp += -0.5 * (VAEC_LOG_2PI + v[k] + q);
            if (dml) {
                dml[r * lddml + k] = (float)(-(double)scale * diff * iv);
                dml[r * lddml + D + k] = (float)((double)scale * 0.5 * (1.0 - q));
            }
        }
        logp_add[r] += lp;
    }
}

void vaec_elem_test_fn_naive(int which, float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        switch (which) {
        case VAEC_ELEM_FN_EXP: y[i] = expf(v); break;
        case VAEC_ELEM_FN_EXPM1: y[i] = expm1f(v); break;
        case VAEC_ELEM_FN_LOG1P: y[i] = log1pf(v); break;
        case VAEC_ELEM_FN_TANH: y[i] = tanhf(v); break;
        case VAEC_ELEM_FN_SIGMOID: y[i] = sigmoid1(v); break;
        case VAEC_ELEM_FN_SOFTPLUS: y[i] = softplus1(v); break;
        default: y[i] = NAN; break;
        }
    }
}

void vaec_elem_adam_naive(int64_t n, float *p, const float *g, float *m, float *v, const vaec_elem_adam_args *a) {
    for (int64_t i = 0; i < n; i++) {
        float gi = a->wd != 0.0f ? g[i] + a->wd * p[i] : g[i];
        m[i] = a->beta1 * m[i] + (1.0f - a->beta1) * gi;
        v[i] = a->beta2 * v[i] + (1.0f - a->beta2) * gi * gi;
        p[i] -= a->step * m[i] / (sqrtf(v[i]) + a->eps_bc2);
    }
}

void vaec_elem_adagrad_naive(int64_t n, float *p, const float *g, float *s, const vaec_elem_adagrad_args *a) {
    for (int64_t i = 0; i < n; i++) {
        float gi = a->wd != 0.0f ? g[i] + a->wd * p[i] : g[i];
        s[i] += gi * gi;
        p[i] -= a->lr * gi / (sqrtf(s[i]) + a->eps);
    }
}
