/* flow_impl.h -- what flows.c shares with the per-type files flow_planar.c,
 * flow_radial.c and flow_realnvp.c: the workspace layout and the per-type passes.
 * Not used outside the flow files. */
#ifndef VAEC_FLOW_IMPL_H
#define VAEC_FLOW_IMPL_H

#include "flows.h"
#include <math.h>
#include <stdatomic.h>

#define FLOW_GRAIN 16             /* rows per task: fixed, so sums do not depend on threads */
#define FLOW_LSC 8                /* per-layer precomputed scalars (planar, radial) */

/* The workspace, cut from the caller's float buffer (see vaec_flow_layout). */
typedef struct {
    int64_t rows, ldz, ntasks;
    float *states;        /* K+1 blocks of rows x ldz: state k is the input of layer k */
    float *g, *g2;        /* gradient rows and scratch (rows x ldz) */
    double *ldrow;        /* per-row log-det (rows) */
    /* planar / radial */
    float *vec;           /* per layer: û (planar) or z0 (radial), K x ldz */
    float *hcache;        /* planar: tanh(wᵀz + b) per layer and row, K x rows */
    double *lsc;          /* per layer: FLOW_LSC scalars */
    int64_t P;            /* partial sums per layer and task */
    double *partial;      /* ntasks x K x P */
    /* realnvp */
    int64_t ldh, ldt;
    float *hid;           /* K blocks of rows x ldh: hidden activations (s | t) */
    float *th;            /* K blocks of rows x ldt: tanh of the raw scale */
    float *dhid;          /* rows x ldh */
    float *st;            /* rows x 2 ldt: raw s | t (forward), their gradients (backward) */
    float *dsc;           /* rows x ldt: dL/ds ⊙ tanh, for the scale's gradient */
    int32_t *header;      /* what the workspace holds: direction, rows */
} flow_ws;

/* Lay the workspace out over ws (NULL: just count); returns the floats needed. */
int64_t vaec_flow_layout(const vaec_flow *f, float *ws, int64_t rows, flow_ws *out);

static inline float *flow_state(const flow_ws *w, int k) { return w->states + (int64_t)k * w->rows * w->ldz; }
static inline int64_t flow_task_end(int64_t t, int64_t R) {
    int64_t b = (t + 1) * FLOW_GRAIN;
    return b < R ? b : R;
}

/* First layer (lowest index) that produced a non-finite value, shared by the tasks. */
static inline void flow_mark_bad(_Atomic int *bad, int k) {
    int cur = atomic_load(bad);
    while (k < cur && !atomic_compare_exchange_weak(bad, &cur, k)) {}
}
/* Add the per-task parameter-gradient sums of tasks 1..ntasks-1 into task 0's, in task
 * order (K layers of P doubles each): the sum does not depend on the thread count. */
static inline void flow_sum_partials(double *partial, int64_t ntasks, int64_t KP) {
    for (int64_t t = 1; t < ntasks; t++) {
        const double *src = partial + t * KP;
        for (int64_t i = 0; i < KP; i++) partial[i] += src[i];
    }
}

/* VAEC_ERR_NONFINITE "flow.3 (planar) produced a non-finite value" (what = "value"
 * or "gradient"). */
vaec_status vaec_flow_nonfinite(const vaec_flow *f, int layer, const char *what);

static inline double flow_softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static inline double flow_sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* The per-type passes: states[0] (forward) or states[K] (inverse) hold the input; the
 * pass fills the other states and w->ldrow. Backward passes start from w->g = dL/d(output)
 * and leave dL/d(input) in w->g. c: per-row weights of the log-det, or NULL -> c_all. */
vaec_status vaec_flow_planar_forward(const vaec_flow *f, vaec_pool *pool, const float *params, int64_t R, flow_ws *w);
vaec_status vaec_flow_planar_backward(const vaec_flow *f, vaec_pool *pool, const float *params, float *grads,
                                      const double *c, double c_all, int64_t R, flow_ws *w);
vaec_status vaec_flow_radial_forward(const vaec_flow *f, vaec_pool *pool, const float *params, int64_t R, flow_ws *w);
vaec_status vaec_flow_radial_backward(const vaec_flow *f, vaec_pool *pool, const float *params, float *grads,
                                      const double *c, double c_all, int64_t R, flow_ws *w);
vaec_status vaec_flow_realnvp_forward(const vaec_flow *f, vaec_pool *pool, const float *params, int64_t R,
                                      flow_ws *w, int inverse);
vaec_status vaec_flow_realnvp_backward(const vaec_flow *f, vaec_pool *pool, const float *params, float *grads,
                                       const double *c, double c_all, int64_t R, flow_ws *w, int inverse);

#endif
