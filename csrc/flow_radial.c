/* flow_radial.c -- radial flows (Rezende & Mohamed 2015):
 *   f(z) = z + β h(α, r) (z − z0),  h = 1/(α + r),  r = ‖z − z0‖,
 * with α = softplus(α') > 0 and β = −α + softplus(β') > −α (invertible). Writing
 * A = α + r and sb = softplus(β'), the two factors of the determinant are positive
 * sums, so the log-det has no cancellation:
 *   1 + β/A          = (r + sb)/A
 *   1 + β/A − βr/A²  = (r (2α + r) + α sb)/A²
 *   log|det| = (D−1) log((r + sb)/A) + log((r(2α + r) + α sb)/A²)
 * Backward, per row (d = z − z0, g = dL/dz', c = dL/dlogdet, Q = r(2α+r) + α sb):
 *   ∂ld/∂r = −(D−1) β/(A (r+sb)) − 2βα/(A Q)
 *   dL/dz  = (1 + β/A) g + [−β (g·d)/A² + c ∂ld/∂r] d/r,   dL/dz0 = g − dL/dz
 *   dL/dα  = −β (g·d)/A² + c [−(D−1) β/(A (r+sb)) + β (r − α)/(A Q)]   (β held fixed)
 *   dL/dβ  = (g·d)/A + c [(D−1)/(r+sb) + α/Q]
 *   dL/dα' = (dL/dα − dL/dβ) σ(α'),   dL/dβ' = dL/dβ σ(β')
 * Tasks, per-task sums and float64 as in flow_planar.c. */
#include "flow_impl.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

enum { S_ALPHA, S_BETA, S_SB, S_SIGA, S_SIGB };

static void precompute(const vaec_flow *f, const float *params, flow_ws *w) {
    for (int k = 0; k < f->spec.K; k++) {
        const vaec_flow_layer *L = &f->layer[k];
        double ar = params[L->alpha], br = params[L->beta];
        double *s = w->lsc + (int64_t)k * FLOW_LSC;
        s[S_ALPHA] = flow_softplus(ar);
        s[S_SB] = flow_softplus(br);
        s[S_BETA] = s[S_SB] - s[S_ALPHA];
        s[S_SIGA] = flow_sigmoid(ar);
        s[S_SIGB] = flow_sigmoid(br);
        memcpy(w->vec + (int64_t)k * w->ldz, params + L->z0, (size_t)f->dim * sizeof(float));
    }
}

typedef struct {
    const vaec_flow *f;
    const float *params;
    flow_ws *w;
    int64_t R;
    const double *c;
    double c_all;
    _Atomic int bad;
} radial_job;

static void forward_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    radial_job *j = ctx;
    const vaec_flow *f = j->f;
    flow_ws *w = j->w;
    const int64_t D = f->dim, ld = w->ldz;
    const int K = f->spec.K;
    for (int64_t r0 = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r0 < e; r0++) {
        double ldet = 0.0;
        for (int k = 0; k < K; k++) {
            const double *s = w->lsc + (int64_t)k * FLOW_LSC;
            const float *z0 = w->vec + (int64_t)k * ld;
            const float *zi = flow_state(w, k) + r0 * ld;
            float *zo = flow_state(w, k + 1) + r0 * ld;
            double r2 = 0.0;
            for (int64_t i = 0; i < D; i++) {
                double d = (double)zi[i] - z0[i];
                r2 += d * d;
            }
            const double r = sqrt(r2), al = s[S_ALPHA], sb = s[S_SB], A = al + r;
            const float bh = (float)(s[S_BETA] / A);
            float chk = 0.0f;
            for (int64_t i = 0; i < D; i++) {
                zo[i] = zi[i] + bh * (zi[i] - z0[i]);
                chk += zo[i] * 0.0f;
            }
            double lk = (double)(D - 1) * (log(r + sb) - log(A)) + log(r * (2.0 * al + r) + al * sb) - 2.0 * log(A);
            ldet += lk;
            if (chk != 0.0f || !isfinite(lk)) {
                flow_mark_bad(&j->bad, k);
                break;
            }
        }
        w->ldrow[r0] = ldet;
    }
}

static vaec_status radial_forward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, int64_t R, flow_ws *w, int inverse) {
    (void)inverse;
    const float *params = a->params;
    precompute(f, params, w);
    radial_job j = {f, params, w, R, NULL, 0.0, f->spec.K};
    vaec_pool_run(pool, forward_task, &j, vaec_ntasks(R, FLOW_GRAIN));
    int bad = atomic_load(&j.bad);
    return bad < f->spec.K ? vaec_flow_nonfinite(f, bad, "value") : VAEC_OK;
}

static void backward_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    radial_job *j = ctx;
    const vaec_flow *f = j->f;
    flow_ws *w = j->w;
    const int64_t D = f->dim, ld = w->ldz, P = w->P;
    const int K = f->spec.K;
    const double Dm1 = (double)(D - 1);
    double *part = w->partial + t * K * P;
    memset(part, 0, (size_t)(K * P) * sizeof(double));
    for (int64_t r0 = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r0 < e; r0++) {
        const double c = j->c ? j->c[r0] : j->c_all;
        float *g = w->g + r0 * ld;
        for (int k = K - 1; k >= 0; k--) {
            const double *s = w->lsc + (int64_t)k * FLOW_LSC;
            const float *z0 = w->vec + (int64_t)k * ld;
            const float *zi = flow_state(w, k) + r0 * ld;
            double r2 = 0.0, gd = 0.0;
            for (int64_t i = 0; i < D; i++) {
                double d = (double)zi[i] - z0[i];
                r2 += d * d;
                gd += (double)g[i] * d;
            }
            const double r = sqrt(r2), al = s[S_ALPHA], be = s[S_BETA], sb = s[S_SB];
            const double A = al + r, Apb = r + sb, Q = r * (2.0 * al + r) + al * sb;
            const double ldr = -Dm1 * be / (A * Apb) - 2.0 * be * al / (A * Q);
            const double dal = -be * gd / (A * A) + c * (-Dm1 * be / (A * Apb) + be * (r - al) / (A * Q));
            const double dbe = gd / A + c * (Dm1 / Apb + al / Q);
            const double coef = r > 0.0 ? (-be * gd / (A * A) + c * ldr) / r : 0.0;
            const double diag = 1.0 + be / A;
            double *pk = part + (int64_t)k * P;     /* Gz0 (D), Gα, Gβ */
            float chk = 0.0f;
            for (int64_t i = 0; i < D; i++) {
                double d = (double)zi[i] - z0[i];
                double gz = diag * g[i] + coef * d;
                pk[i] += (double)g[i] - gz;
                g[i] = (float)gz;
                chk += g[i] * 0.0f;
            }
            pk[D] += dal;
            pk[D + 1] += dbe;
            if (chk != 0.0f) {
                flow_mark_bad(&j->bad, k);
                break;
            }
        }
    }
}

static vaec_status radial_backward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const double *c, double c_all,
                                   int64_t R, flow_ws *w, int inverse) {
    (void)inverse;
    const float *params = a->params;
    float *grads = a->grads;
    precompute(f, params, w);
    const int K = f->spec.K;
    const int64_t D = f->dim, P = w->P, ntasks = vaec_ntasks(R, FLOW_GRAIN);
    radial_job j = {f, params, w, R, c, c_all, K};
    vaec_pool_run(pool, backward_task, &j, ntasks);
    int bad = atomic_load(&j.bad);
    if (bad < K) return vaec_flow_nonfinite(f, bad, "gradient");
    flow_sum_partials(w->partial, ntasks, K * P);
    for (int k = 0; k < K; k++) {
        const vaec_flow_layer *L = &f->layer[k];
        const double *G = w->partial + (int64_t)k * P, *s = w->lsc + (int64_t)k * FLOW_LSC;
        for (int64_t i = 0; i < D; i++) grads[L->z0 + i] += (float)G[i];
        grads[L->alpha] += (float)((G[D] - G[D + 1]) * s[S_SIGA]);
        grads[L->beta] += (float)(G[D + 1] * s[S_SIGB]);
    }
    return VAEC_OK;
}

/* ------------------------------------------------------------ the type */
/* tensors "{prefix}.{k}.z0" (D), ".alpha" (1, holds α'), ".beta" (1, holds β'),
 * initialized U(+-1/sqrt(D)) */
static vaec_status radial_plan(vaec_flow *f, int k, vaec_arena *a) {
    vaec_flow_layer *L = &f->layer[k];
    const float bound = 1.0f / sqrtf((float)f->dim);
    char name[VAEC_NAME_LEN];
    vaec_status st;
    L->scale = -1;
    snprintf(name, sizeof name, "%s.%d.z0", f->prefix, k);
    if ((st = vaec_arena_add_tensor(a, &L->z0, name, 1, f->dim, 0, bound))) return st;
    snprintf(name, sizeof name, "%s.%d.alpha", f->prefix, k);
    if ((st = vaec_arena_add_tensor(a, &L->alpha, name, 1, 1, 0, bound))) return st;
    snprintf(name, sizeof name, "%s.%d.beta", f->prefix, k);
    return vaec_arena_add_tensor(a, &L->beta, name, 1, 1, 0, bound);
}

static int radial_tensors(const vaec_flow_spec *s) { (void)s; return 3; }
static int64_t radial_params(const vaec_flow *f) { return (int64_t)f->spec.K * (f->dim + 2); }

/* z0 per layer, the per-layer scalars, the per-task partial sums */
static int64_t radial_layout(vaec_flow *f, float *base, int64_t off, int64_t rows, flow_ws *w) {
    (void)rows;
    const int64_t K = f->spec.K, D = f->dim;
    w->P = D + 2;
    w->vec = flow_take(base, &off, K * w->ldz);
    w->lsc = flow_take(base, &off, 2 * K * FLOW_LSC);
    w->partial = flow_take(base, &off, 2 * w->ntasks * K * w->P);
    return off;
}

const vaec_flow_ops vaec_flow_radial_ops = {
    VAEC_FLOW_RADIAL, "radial", 0, NULL, NULL, NULL, radial_tensors, radial_plan, radial_params, radial_layout,
    radial_forward, radial_backward,
};
