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
    /* realnvp (the s and t networks keep their activations in their own plans) */
    int64_t ldt;
    float *th;            /* K blocks of rows x ldt: tanh of the raw scale */
    float *dsc;           /* rows x ldt: dL/ds ⊙ tanh, for the scale's gradient */
    int32_t *header;      /* what the workspace holds: direction, rows */
} flow_ws;

/* One flow type: its own file (flow_planar.c, ...) and one line in flows.c's table.
 *   parse     the spec's fields after "name:K" (nf of them; NULL: the type takes none)
 *   check     a spec's type-specific ranges (NULL: none)
 *   format    the canonical text of those fields, appended after "name:K" (NULL: none)
 *   tensors   arena tensors per layer
 *   plan      layer k's tensors into the arena, "{prefix}.{k}.{name}"
 *   params    parameters (floats) of the stack, padding excluded
 *   layout    the type's part of the workspace (see TAKE in flows.c): floats, from `off`
 *   forward   states[0] (or states[K], inverse) hold the input; fills the other states
 *             and w->ldrow
 *   backward  from w->g = dL/d(output): adds the parameter gradients, leaves dL/d(input)
 *             in w->g; c: per-row weights of the log-det, or NULL -> c_all
 * inverse: 1 when the type has a closed-form inverse (forward and backward take it). */
typedef struct vaec_flow_ops {
    vaec_flow_kind kind;
    const char *name;
    int inverse;
    vaec_status (*parse)(vaec_flow_spec *s, char *const *fields, int nf, const char *text);
    vaec_status (*check)(const vaec_flow_spec *s);
    void (*format)(const vaec_flow_spec *s, char *buf, size_t n);
    int (*tensors)(const vaec_flow_spec *s);
    vaec_status (*plan)(vaec_flow *f, int k, vaec_arena *a);
    int64_t (*params)(const vaec_flow *f);
    int64_t (*layout)(vaec_flow *f, float *base, int64_t off, int64_t rows, flow_ws *w);
    vaec_status (*forward)(vaec_flow *f, vaec_pool *pool, vaec_arena *a, int64_t R, flow_ws *w, int inverse);
    vaec_status (*backward)(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const double *c, double c_all, int64_t R,
                            flow_ws *w, int inverse);
} vaec_flow_ops;

extern const vaec_flow_ops vaec_flow_planar_ops, vaec_flow_radial_ops, vaec_flow_realnvp_ops;

/* "The accepted forms" for messages, and a helper for the types' layouts: a block of n
 * floats (n rounded up to 16) at *off, NULL when only counting. */
extern const char VAEC_FLOW_ACCEPTED[];
/* a non-negative decimal integer, digits only, <= max; -1 if not (max + 1 above it) */
long long vaec_flow_parse_uint(const char *s, long long max);
static inline void *flow_take(float *base, int64_t *off, int64_t n) {
    void *p = base ? (void *)(base + *off) : NULL;
    *off += (n + 15) & ~(int64_t)15;
    return p;
}
/* row stride of a buffer of n columns: n itself when small (2-D flows), else padded */
static inline int64_t flow_ld(int64_t n) { return n < 16 ? n : (n + 15) & ~(int64_t)15; }

/* Lay the workspace out over ws (NULL: just count); returns the floats needed. */
int64_t vaec_flow_layout(vaec_flow *f, float *ws, int64_t rows, flow_ws *out);

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

#endif
