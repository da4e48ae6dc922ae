/* flow_planar.c -- planar flows (Rezende & Mohamed 2015):
 *   f(z) = z + û h(wᵀz + b),  h = tanh,  û = u + (m(wᵀu) − wᵀu) w/‖w‖²,  m(x) = −1 + softplus(x).
 * wᵀû = m(wᵀu) > −1 makes every layer invertible whatever u is (their Appendix A).
 *   log|det| = log(1 + h'(a) wᵀû) = log(h² + (1 − h²) softplus(wᵀu))
 * (the second form has no cancellation). A task runs a block of FLOW_GRAIN rows
 * through all K layers (layer by layer, one vectorized tanh per layer and block, kept
 * for the backward pass); parameter gradients are summed per task, then over tasks in
 * order (fixed blocks: thread-count free). Dots and log-dets are in float64.
 *
 * Backward, per row (g = dL/dz', c = dL/dlogdet, det = h² + (1−h²) sp(p), p = wᵀu):
 *   da = (g·û) h' − 2 c m(p) h h' / det,   dL/dz = g + da w
 *   dL/dû += g h,  dL/dw += da z,  dL/db += da,  dL/dp += c h' σ(p) / det
 * and per layer, with γ = (m(p) − p)/q = (softplus(−p) − 1)/q, q = ‖w‖², s = Gû·w:
 *   dL/du = Gû + (s (σ(p) − 1)/q + Gp) w
 *   dL/dw = Gw + γ Gû + s ((σ(p) − 1)/q u − 2γ/q w) + Gp u
 *
 * Amortized ("planar:K:amortized", Rezende & Mohamed's own posterior): u, w, b are row
 * r's, read from the encoder's output (vaec_flow's cond), so p, q, γ and û are per row,
 * computed on the fly from u and w (û is never stored), and the formulas above apply
 * row by row: the gradients of the row's u, w, b are ADDED at dcond, one parameter row
 * per flow row (no sum over rows, hence no partials). */
#include "flow_impl.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

enum { S_M, S_SP, S_SIG, S_GAMMA, S_Q };

/* û and the per-layer scalars, from the parameters (serial: K x D work) */
static void precompute(const vaec_flow *f, const float *params, flow_ws *w) {
    const int64_t D = f->dim;
    for (int k = 0; k < f->spec.K; k++) {
        const vaec_flow_layer *L = &f->layer[k];
        const float *u = params + L->u, *wv = params + L->w;
        double p = 0.0, q = 0.0;
        for (int64_t j = 0; j < D; j++) {
            p += (double)wv[j] * u[j];
            q += (double)wv[j] * wv[j];
        }
        double sp = flow_softplus(p), spm = flow_softplus(-p);
        double gamma = q > 0.0 ? (spm - 1.0) / q : 0.0;
        double *s = w->lsc + (int64_t)k * FLOW_LSC;
        s[S_M] = sp - 1.0;
        s[S_SP] = sp;
        s[S_SIG] = flow_sigmoid(p);
        s[S_GAMMA] = gamma;
        s[S_Q] = q;
        float *uh = w->vec + (int64_t)k * w->ldz;
        for (int64_t j = 0; j < D; j++) uh[j] = (float)((double)u[j] + gamma * wv[j]);
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
} planar_job;

/* A block of rows through the layers, layer by layer: the tanh of the block's
 * pre-activations is one vectorized call; it is kept for the backward pass. */
static void forward_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    planar_job *j = ctx;
    const vaec_flow *f = j->f;
    flow_ws *w = j->w;
    const int64_t D = f->dim, ld = w->ldz, r0 = t * FLOW_GRAIN, n = flow_task_end(t, j->R) - r0;
    const int K = f->spec.K;
    float av[FLOW_GRAIN];
    double ldet[FLOW_GRAIN] = {0};
    for (int k = 0; k < K; k++) {
        const vaec_flow_layer *L = &f->layer[k];
        const float *wv = j->params + L->w, *uh = w->vec + (int64_t)k * ld;
        const float *zi = flow_state(w, k) + r0 * ld;
        float *zo = flow_state(w, k + 1) + r0 * ld, *hv = w->hcache + (int64_t)k * w->rows + r0;
        const double sp = w->lsc[(int64_t)k * FLOW_LSC + S_SP];
        for (int64_t i = 0; i < n; i++) {
            double a = j->params[L->b];
            for (int64_t d = 0; d < D; d++) a += (double)wv[d] * zi[i * ld + d];
            av[i] = (float)a;
        }
        vaec_act_forward(VAEC_ACT_TANH, hv, av, n);
        float chk = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            const float hf = hv[i];
            for (int64_t d = 0; d < D; d++) {
                zo[i * ld + d] = zi[i * ld + d] + uh[d] * hf;
                chk += zo[i * ld + d] * 0.0f;
            }
            const double h = hf, hp = 1.0 - h * h;
            ldet[i] += log(h * h + hp * sp);
            chk += (float)(ldet[i] * 0.0);
        }
        if (chk != 0.0f) {
            flow_mark_bad(&j->bad, k);
            return;
        }
    }
    for (int64_t i = 0; i < n; i++) w->ldrow[r0 + i] = ldet[i];
}

static void forward_task_amor(void *ctx, int64_t t, int tid);
static void backward_task_amor(void *ctx, int64_t t, int tid);

static vaec_status planar_forward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, int64_t R, flow_ws *w, int inverse) {
    (void)inverse;
    const float *params = a->params;
    if (!f->spec.amortized) precompute(f, params, w);
    planar_job j = {f, params, w, R, NULL, 0.0, f->spec.K};
    vaec_pool_run(pool, f->spec.amortized ? forward_task_amor : forward_task, &j, vaec_ntasks(R, FLOW_GRAIN));
    int bad = atomic_load(&j.bad);
    return bad < f->spec.K ? vaec_flow_nonfinite(f, bad, "value") : VAEC_OK;
}

static void backward_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    planar_job *j = ctx;
    const vaec_flow *f = j->f;
    flow_ws *w = j->w;
    const int64_t D = f->dim, ld = w->ldz, P = w->P;
    const int K = f->spec.K;
    double *part = w->partial + t * K * P;
    memset(part, 0, (size_t)(K * P) * sizeof(double));
    for (int64_t r = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r < e; r++) {
        const double c = j->c ? j->c[r] : j->c_all;
        float *g = w->g + r * ld;
        for (int k = K - 1; k >= 0; k--) {
            const vaec_flow_layer *L = &f->layer[k];
            const double *s = w->lsc + (int64_t)k * FLOW_LSC;
            const float *wv = j->params + L->w, *uh = w->vec + (int64_t)k * ld;
            const float *zi = flow_state(w, k) + r * ld;
            double gu = 0.0;
            for (int64_t i = 0; i < D; i++) gu += (double)g[i] * uh[i];
            const double h = w->hcache[(int64_t)k * w->rows + r], hp = 1.0 - h * h;
            const double det = h * h + hp * s[S_SP];
            const double da = gu * hp - 2.0 * c * s[S_M] * h * hp / det;
            double *pk = part + (int64_t)k * P;     /* Gû (D), Gw (D), Gb, Gp */
            float daf = (float)da, chk = 0.0f;
            for (int64_t i = 0; i < D; i++) {
                pk[i] += (double)g[i] * h;
                pk[D + i] += da * zi[i];
                g[i] += daf * wv[i];
                chk += g[i] * 0.0f;
            }
            pk[2 * D] += da;
            pk[2 * D + 1] += c * hp * s[S_SIG] / det;
            if (chk != 0.0f) {
                flow_mark_bad(&j->bad, k);
                break;
            }
        }
    }
}

static vaec_status planar_backward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const double *c, double c_all,
                                   int64_t R, flow_ws *w, int inverse) {
    (void)inverse;
    const float *params = a->params;
    float *grads = a->grads;
    const int K = f->spec.K;
    const int64_t D = f->dim, P = w->P, ntasks = vaec_ntasks(R, FLOW_GRAIN);
    planar_job j = {f, params, w, R, c, c_all, K};
    if (f->spec.amortized) {   /* the rows' own parameters: their gradients go to dcond */
        vaec_pool_run(pool, backward_task_amor, &j, ntasks);
        int bad = atomic_load(&j.bad);
        return bad < K ? vaec_flow_nonfinite(f, bad, "gradient") : VAEC_OK;
    }
    precompute(f, params, w);
    vaec_pool_run(pool, backward_task, &j, ntasks);
    int bad = atomic_load(&j.bad);
    if (bad < K) return vaec_flow_nonfinite(f, bad, "gradient");
    flow_sum_partials(w->partial, ntasks, K * P);
    for (int k = 0; k < K; k++) {
        const vaec_flow_layer *L = &f->layer[k];
        const double *G = w->partial + (int64_t)k * P, *s = w->lsc + (int64_t)k * FLOW_LSC;
        const float *u = params + L->u, *wv = params + L->w;
        float *du = grads + L->u, *dw = grads + L->w;
        const double q = s[S_Q], gamma = s[S_GAMMA], Gp = G[2 * D + 1];
        double sw = 0.0;
        for (int64_t i = 0; i < D; i++) sw += G[i] * wv[i];
        double dgdp = q > 0.0 ? (s[S_SIG] - 1.0) / q : 0.0;   /* ∂γ/∂p */
        double dgdq = q > 0.0 ? -gamma / q : 0.0;             /* ∂γ/∂q */
        for (int64_t i = 0; i < D; i++) {
            du[i] += (float)(G[i] + (sw * dgdp + Gp) * wv[i]);
            dw[i] += (float)(G[D + i] + gamma * G[i] + sw * (dgdp * u[i] + 2.0 * dgdq * wv[i]) + Gp * u[i]);
        }
        grads[L->b] += (float)G[2 * D];
    }
    return VAEC_OK;
}

/* ------------------------------------------------------------ amortized */
/* Row r's layer-k scalars from its u and w: p = wᵀu, q = ‖w‖², sp = softplus(p), γ. */
typedef struct {
    double p, q, sp, gamma;
} row_scalars;

static inline const float *amor_params(const vaec_flow *f, int64_t r, int k) {
    return f->cond + (r % f->period) * f->ldc + (int64_t)k * (2 * f->dim + 1);
}

static inline row_scalars amor_scalars(const float *u, const float *wv, int64_t D) {
    row_scalars s = {0.0, 0.0, 0.0, 0.0};
    for (int64_t j = 0; j < D; j++) {
        s.p += (double)wv[j] * u[j];
        s.q += (double)wv[j] * wv[j];
    }
    s.sp = flow_softplus(s.p);
    s.gamma = s.q > 0.0 ? (flow_softplus(-s.p) - 1.0) / s.q : 0.0;
    return s;
}

static void forward_task_amor(void *ctx, int64_t t, int tid) {
    (void)tid;
    planar_job *j = ctx;
    const vaec_flow *f = j->f;
    flow_ws *w = j->w;
    const int64_t D = f->dim, ld = w->ldz, r0 = t * FLOW_GRAIN, n = flow_task_end(t, j->R) - r0;
    const int K = f->spec.K;
    float av[FLOW_GRAIN];
    double ldet[FLOW_GRAIN] = {0}, spv[FLOW_GRAIN], gv[FLOW_GRAIN];
    for (int k = 0; k < K; k++) {
        const float *zi = flow_state(w, k) + r0 * ld;
        float *zo = flow_state(w, k + 1) + r0 * ld, *hv = w->hcache + (int64_t)k * w->rows + r0;
        for (int64_t i = 0; i < n; i++) {
            const float *u = amor_params(f, r0 + i, k), *wv = u + D;
            const row_scalars s = amor_scalars(u, wv, D);
            spv[i] = s.sp;
            gv[i] = s.gamma;
            double a = u[2 * D];   /* b, after u and w */
            for (int64_t d = 0; d < D; d++) a += (double)wv[d] * zi[i * ld + d];
            av[i] = (float)a;
        }
        vaec_act_forward(VAEC_ACT_TANH, hv, av, n);
        float chk = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            const float *u = amor_params(f, r0 + i, k), *wv = u + D;
            const float hf = hv[i], gm = (float)gv[i];
            for (int64_t d = 0; d < D; d++) {
                zo[i * ld + d] = zi[i * ld + d] + (u[d] + gm * wv[d]) * hf;
                chk += zo[i * ld + d] * 0.0f;
            }
            const double h = hf, hp = 1.0 - h * h;
            ldet[i] += log(h * h + hp * spv[i]);
            chk += (float)(ldet[i] * 0.0);
        }
        if (chk != 0.0f) {
            flow_mark_bad(&j->bad, k);
            return;
        }
    }
    for (int64_t i = 0; i < n; i++) w->ldrow[r0 + i] = ldet[i];
}

/* Row by row, layer K-1 down to 0: dL/dz through the layer (in w->g) and the row's
 * parameter gradients added at dcond. */
static void backward_task_amor(void *ctx, int64_t t, int tid) {
    (void)tid;
    planar_job *j = ctx;
    const vaec_flow *f = j->f;
    flow_ws *w = j->w;
    const int64_t D = f->dim, ld = w->ldz;
    const int K = f->spec.K;
    for (int64_t r = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r < e; r++) {
        const double c = j->c ? j->c[r] : j->c_all;
        float *g = w->g + r * ld;
        for (int k = K - 1; k >= 0; k--) {
            const float *u = amor_params(f, r, k), *wv = u + D;
            float *du = f->dcond + (r % f->period) * f->ldc + (int64_t)k * (2 * D + 1), *dw = du + D;
            const float *zi = flow_state(w, k) + r * ld;
            const row_scalars s = amor_scalars(u, wv, D);
            const double m = s.sp - 1.0, sig = flow_sigmoid(s.p);
            double gu = 0.0, gw = 0.0;   /* g·û, g·w */
            for (int64_t i = 0; i < D; i++) {
                gu += (double)g[i] * (u[i] + s.gamma * wv[i]);
                gw += (double)g[i] * wv[i];
            }
            const double h = w->hcache[(int64_t)k * w->rows + r], hp = 1.0 - h * h;
            const double det = h * h + hp * s.sp;
            const double da = gu * hp - 2.0 * c * m * h * hp / det;
            const double Gp = c * hp * sig / det, sw = h * gw;        /* Gû·w = h g·w */
            const double dgdp = s.q > 0.0 ? (sig - 1.0) / s.q : 0.0;  /* ∂γ/∂p */
            const double dgdq = s.q > 0.0 ? -s.gamma / s.q : 0.0;     /* ∂γ/∂q */
            const double cu = sw * dgdp + Gp;                          /* du = Gû + cu w */
            float daf = (float)da, chk = 0.0f;
            for (int64_t i = 0; i < D; i++) {
                const double Gu = (double)g[i] * h;
                du[i] += (float)(Gu + cu * wv[i]);
                dw[i] += (float)(da * zi[i] + s.gamma * Gu + sw * (dgdp * u[i] + 2.0 * dgdq * wv[i]) + Gp * u[i]);
                g[i] += daf * wv[i];
                chk += g[i] * 0.0f;
            }
            du[2 * D] += daf;
            if (chk != 0.0f) {
                flow_mark_bad(&j->bad, k);
                break;
            }
        }
    }
}

/* ------------------------------------------------------------ the type */
/* tensors "{prefix}.{k}.u" (D), ".w" (D), ".b" (1), initialized U(+-1/sqrt(D)) */
static vaec_status planar_plan(vaec_flow *f, int k, vaec_arena *a) {
    vaec_flow_layer *L = &f->layer[k];
    if (f->spec.amortized) {   /* no tensors: the encoder gives every row its u, w, b */
        L->u = L->w = L->b = L->scale = -1;
        return VAEC_OK;
    }
    const float bound = 1.0f / sqrtf((float)f->dim);
    char name[VAEC_NAME_LEN];
    vaec_status st;
    L->scale = -1;
    snprintf(name, sizeof name, "%s.%d.u", f->prefix, k);
    if ((st = vaec_arena_add_tensor(a, &L->u, name, 1, f->dim, 0, bound))) return st;
    snprintf(name, sizeof name, "%s.%d.w", f->prefix, k);
    if ((st = vaec_arena_add_tensor(a, &L->w, name, 1, f->dim, 0, bound))) return st;
    snprintf(name, sizeof name, "%s.%d.b", f->prefix, k);
    return vaec_arena_add_tensor(a, &L->b, name, 1, 1, 0, bound);
}

static int planar_tensors(const vaec_flow_spec *s) { return s->amortized ? 0 : 3; }
static int64_t planar_params(const vaec_flow *f) { return f->spec.amortized ? 0 : (int64_t)f->spec.K * (2 * f->dim + 1); }

/* "planar:K:amortized" */
static vaec_status planar_parse(vaec_flow_spec *out, char *const *field, int nf, const char *text) {
    if (nf == 0) return VAEC_OK;
    if (nf == 1 && strcmp(field[0], "amortized") == 0) {
        out->amortized = 1;
        return VAEC_OK;
    }
    return vaec_fail(VAEC_ERR_ARG, "flow: '%s': a planar flow takes K and optionally ':amortized'; %s", text,
                     VAEC_FLOW_ACCEPTED);
}

static void planar_format(const vaec_flow_spec *s, char *buf, size_t n) {
    if (s->amortized) snprintf(buf, n, ":amortized");
}

/* tanh per layer and row; for the global flow also û per layer, the per-layer scalars and
 * the per-task partial sums (an amortized flow computes its scalars row by row and writes
 * its parameters' gradients into the encoder head's rows, so it has none of these) */
static int64_t planar_layout(vaec_flow *f, float *base, int64_t off, int64_t rows, flow_ws *w) {
    const int64_t K = f->spec.K, D = f->dim;
    w->P = 2 * D + 2;
    w->hcache = flow_take(base, &off, K * rows);
    if (f->spec.amortized) return off;
    w->vec = flow_take(base, &off, K * w->ldz);
    w->lsc = flow_take(base, &off, 2 * K * FLOW_LSC);
    w->partial = flow_take(base, &off, 2 * w->ntasks * K * w->P);
    return off;
}

const vaec_flow_ops vaec_flow_planar_ops = {
    VAEC_FLOW_PLANAR, "planar", 0, planar_parse, NULL, planar_format, planar_tensors, planar_plan, planar_params,
    planar_layout,
    planar_forward, planar_backward,
};
