/* elem.h -- the elementwise kernels (activations, likelihood rows); internal.
 *
 * vaec_elem_* dispatch on vaec_cpu_active_isa(): naive -> the plain libm / float64
 * reference loops (elem_naive.c), scalar/avx2/avx512/neon -> the kernel written once in
 * elem_kernel.inc on top of vmath.inc. Every function is single-threaded and works on
 * the rows or elements it is given, so a caller that splits rows over threads gets the
 * same bits whatever the split. Each element's value does not depend on its position
 * (the leftover elements of a row run through the same vector code, padded). */
#ifndef VAEC_ELEM_H
#define VAEC_ELEM_H

#include "internal.h"
#include <math.h>
#include <string.h>

/* y = act(x), n elements (x may equal y). */
void vaec_elem_act_forward(vaec_act act, float *y, const float *x, int64_t n);
/* d *= act'(.) written in terms of the output y (see act.c). */
void vaec_elem_act_backward(vaec_act act, float *d, const float *y, int64_t n);

/* Bernoulli log-likelihood of R rows of D logits l (row stride ldl) for targets x
 * (stride ldx): logp_add[r] += sum_d x l - softplus(l), accumulated in float64 (vector
 * kernels: float32 partial sums of at most 8 terms per lane, then float64).
 * When dl != NULL: dl[r*lddl + d] = scale * (sigmoid(l) - x)  (= scale * d(-log p)/dl).
 * dl may equal l (same stride). */
void vaec_elem_bernoulli_rows(int64_t R, int64_t D, const float *l, int64_t ldl,
                              const float *x, int64_t ldx, float scale,
                              float *dl, int64_t lddl, double *logp_add);
/* Gaussian: each row of ml holds [mean (D) | logvar (D)]. logp_add[r] +=
 * -1/2 sum_d (log 2pi + v + (x - m)^2 e^-v); when dml != NULL its rows get
 * [dmean | dlogvar] = [-scale (x - m) e^-v | scale/2 (1 - (x - m)^2 e^-v)]. */
void vaec_elem_gaussian_rows(int64_t R, int64_t D, const float *ml, int64_t ldml,
                             const float *x, int64_t ldx, float scale,
                             float *dml, int64_t lddml, double *logp_add);

/* Bias-corrected Adam over n parameters (see elem_kernel.inc); bitwise the same on
 * every path. torch's p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) is computed as
 * p -= step * m / (sqrt(v) + eps_bc2) with step = lr sqrt(bc2)/bc1, eps_bc2 = eps sqrt(bc2):
 * the same value, one division fewer (the divider, not memory, bounds this loop). */
typedef struct { float beta1, beta2, eps_bc2, step, wd; } vaec_elem_adam_args;
void vaec_elem_adam(int64_t n, float *p, const float *g, float *m, float *v, const vaec_elem_adam_args *a);
/* Adagrad (Duchi et al. 2011; torch.optim.Adagrad without lr decay) over n parameters, the
 * same bits on every path: s += g g; p -= (lr g) / (sqrt(s) + eps). Both optimizers take
 * torch's L2 weight decay, g = grad + wd p, when wd != 0 (wd 0: the gradient as it is). */
typedef struct { float lr, eps, wd; } vaec_elem_adagrad_args;
void vaec_elem_adagrad(int64_t n, float *p, const float *g, float *s, const vaec_elem_adagrad_args *a);

/* Test hook: y = f(x) for f = VAEC_ELEM_FN_* on the active path (naive: libm float). */
enum { VAEC_ELEM_FN_EXP = 0, VAEC_ELEM_FN_EXPM1, VAEC_ELEM_FN_LOG1P, VAEC_ELEM_FN_TANH,
       VAEC_ELEM_FN_SIGMOID, VAEC_ELEM_FN_SOFTPLUS, VAEC_ELEM_FN_COUNT };
void vaec_elem_test_fn(int which, float *y, const float *x, int64_t n);

/* The per-path implementations (same signatures). */
#define VAEC_ELEM_DECLARE(sfx)                                                                    \
    void vaec_elem_act_forward##sfx(vaec_act act, float *y, const float *x, int64_t n);           \
    void vaec_elem_act_backward##sfx(vaec_act act, float *d, const float *y, int64_t n);          \
    void vaec_elem_bernoulli_rows##sfx(int64_t R, int64_t D, const float *l, int64_t ldl,         \
                                       const float *x, int64_t ldx, float scale, float *dl,       \
                                       int64_t lddl, double *logp_add);                           \
    void vaec_elem_gaussian_rows##sfx(int64_t R, int64_t D, const float *ml, int64_t ldml,        \
                                      const float *x, int64_t ldx, float scale, float *dml,       \
                                      int64_t lddml, double *logp_add);                           \
    void vaec_elem_adam##sfx(int64_t n, float *p, const float *g, float *m, float *v,             \
                             const vaec_elem_adam_args *a);                                       \
    void vaec_elem_adagrad##sfx(int64_t n, float *p, const float *g, float *s,                    \
                                const vaec_elem_adagrad_args *a);                                 \
    void vaec_elem_test_fn##sfx(int which, float *y, const float *x, int64_t n);
VAEC_ELEM_DECLARE(_naive)
VAEC_ELEM_DECLARE(_scalar)
#if defined(VAEC_X86)
VAEC_ELEM_DECLARE(_avx2)
VAEC_ELEM_DECLARE(_avx512)
#endif
#if defined(VAEC_ARM64)
VAEC_ELEM_DECLARE(_neon)
#endif

#define VAEC_LOG_2PI 1.8378770664093453
#define VAEC_LEAKY_SLOPE 0.01f

#endif
