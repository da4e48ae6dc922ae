/* elem.c -- dispatch of the elementwise kernels to the active ISA (see elem.h). */
#include "elem.h"

typedef struct {
    void (*act_forward)(vaec_act, float *, const float *, int64_t);
    void (*act_backward)(vaec_act, float *, const float *, int64_t);
    void (*bernoulli_rows)(int64_t, int64_t, const float *, int64_t, const float *, int64_t, float,
                           float *, int64_t, double *);
    void (*gaussian_rows)(int64_t, int64_t, const float *, int64_t, const float *, int64_t, float,
                          float *, int64_t, double *);
    void (*adam)(int64_t, float *, const float *, float *, float *, const vaec_elem_adam_args *);
    void (*adagrad)(int64_t, float *, const float *, float *, const vaec_elem_adagrad_args *);
    void (*test_fn)(int, float *, const float *, int64_t);
} elem_ops;

#define ELEM_OPS(sfx)                                                                        \
    { vaec_elem_act_forward##sfx, vaec_elem_act_backward##sfx, vaec_elem_bernoulli_rows##sfx, \
      vaec_elem_gaussian_rows##sfx, vaec_elem_adam##sfx, vaec_elem_adagrad##sfx, vaec_elem_test_fn##sfx }

static const elem_ops ops_naive = ELEM_OPS(_naive);
static const elem_ops ops_scalar = ELEM_OPS(_scalar);
#if defined(VAEC_X86)
static const elem_ops ops_avx2 = ELEM_OPS(_avx2);
static const elem_ops ops_avx512 = ELEM_OPS(_avx512);
#endif
#if defined(VAEC_ARM64)
static const elem_ops ops_neon = ELEM_OPS(_neon);
#endif

static const elem_ops *ops(void) {
    switch (vaec_cpu_active_isa()) {
    case VAEC_ISA_NAIVE: return &ops_naive;
#if defined(VAEC_X86)
    case VAEC_ISA_AVX512: return &ops_avx512;
    case VAEC_ISA_AVX2: return &ops_avx2;
#endif
#if defined(VAEC_ARM64)
    case VAEC_ISA_NEON: return &ops_neon;
#endif
    default: return &ops_scalar;
    }
}

void vaec_elem_act_forward(vaec_act act, float *y, const float *x, int64_t n) {
    if (n > 0) ops()->act_forward(act, y, x, n);
}

void vaec_elem_act_backward(vaec_act act, float *d, const float *y, int64_t n) {
    if (n > 0) ops()->act_backward(act, d, y, n);
}

void vaec_elem_bernoulli_rows(int64_t R, int64_t D, const float *l, int64_t ldl,
                              const float *x, int64_t ldx, float scale,
                              float *dl, int64_t lddl, double *logp_add) {
    if (R > 0 && D >= 0) ops()->bernoulli_rows(R, D, l, ldl, x, ldx, scale, dl, lddl, logp_add);
}

void vaec_elem_gaussian_rows(int64_t R, int64_t D, const float *ml, int64_t ldml,
                             const float *x, int64_t ldx, float scale,
                             float *dml, int64_t lddml, double *logp_add) {
    if (R > 0 && D >= 0) ops()->gaussian_rows(R, D, ml, ldml, x, ldx, scale, dml, lddml, logp_add);
}

void vaec_elem_adam(int64_t n, float *p, const float *g, float *m, float *v, const vaec_elem_adam_args *a) {
    if (n > 0) ops()->adam(n, p, g, m, v, a);
}

void vaec_elem_adagrad(int64_t n, float *p, const float *g, float *s, const vaec_elem_adagrad_args *a) {
    if (n > 0) ops()->adagrad(n, p, g, s, a);
}

void vaec_elem_test_fn(int which, float *y, const float *x, int64_t n) {
    if (n > 0) ops()->test_fn(which, y, x, n);
}
