/* flow_realnvp.c -- Real NVP affine coupling layers (Dinh, Sohl-Dickstein & Bengio 2017).
 *
 * Layer k conditions on c = z[c0, c0+dc) and transforms x = z[x0, x0+dt) (contiguous
 * halves, alternating with k; see flows.h):
 *   hid = act([W_s0; W_t0] c + [b_s0; b_t0])          one GEMM of 2H rows (R, 2H)
 *   s = scale ⊙ tanh(W_s2 hid[:, :H] + b_s2),  t = W_t2 hid[:, H:] + b_t2
 *   forward  y_x = x ⊙ exp(s) + t,      log|det| += Σ s
 *   inverse  x = (y_x − t) ⊙ exp(−s),   log|det| −= Σ s
 * The GEMMs run on the pool (deterministic for any thread count); the element-wise
 * coupling runs in row tasks. The workspace keeps each layer's input state, hidden
 * activations and tanh(raw s) for the backward pass.
 *
 * Backward of a forward layer (g = dL/dy, c = dL/dlogdet):
 *   dL/dx = g_x ⊙ e^s,  dL/dt = g_x,  dL/ds = g_x ⊙ x ⊙ e^s + c
 * of an inverse layer (g = dL/dx, c = dL/dlogdet_inv, x the layer's output):
 *   dL/dy_x = g_x ⊙ e^−s,  dL/dt = −g_x ⊙ e^−s,  dL/ds = −g_x ⊙ x − c
 * then dL/draw = dL/ds ⊙ scale ⊙ (1 − tanh²), dL/dscale = Σ_rows dL/ds ⊙ tanh, the
 * nets backward, and dL/dc += (the nets' input gradient). */
#include "flow_impl.h"
#include <math.h>
#include <string.h>

typedef struct {
    const vaec_flow *f;
    const vaec_flow_layer *L;
    const float *params;
    flow_ws *w;
    int64_t R;
    int k, inverse;
    const double *c;
    double c_all;
    _Atomic int bad;
} nvp_job;

static float *hid_of(const flow_ws *w, int k) { return w->hid + (int64_t)k * w->rows * w->ldh; }
static float *th_of(const flow_ws *w, int k) { return w->th + (int64_t)k * w->rows * w->ldt; }

/* hid = act(...) over the task's rows */
static void act_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    nvp_job *j = ctx;
    const int64_t ldh = j->w->ldh, H2 = 2 * j->f->spec.hidden;
    for (int64_t r = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r < e; r++) {
        float *h = hid_of(j->w, j->k) + r * ldh;
        vaec_act_forward(j->f->spec.act, h, h, H2);
    }
}

/* dhid *= act'(hid) over the task's rows */
static void act_back_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    nvp_job *j = ctx;
    const int64_t ldh = j->w->ldh, H2 = 2 * j->f->spec.hidden;
    for (int64_t r = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r < e; r++)
        vaec_act_backward(j->f->spec.act, j->w->dhid + r * ldh, hid_of(j->w, j->k) + r * ldh, H2);
}

static inline float scale_of(const nvp_job *j, int64_t i) {
    return j->L->scale >= 0 ? j->params[j->L->scale + i] : j->f->spec.fixed_scale;
}

/* the coupling: from the input state to the output state, raw s | t in w->st */
static void couple_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    nvp_job *j = ctx;
    const vaec_flow_layer *L = j->L;
    flow_ws *w = j->w;
    const int64_t ld = w->ldz, ldt = w->ldt, dt = L->dt;
    const int k = j->k;
    const float *in = flow_state(w, j->inverse ? k + 1 : k);
    float *out = flow_state(w, j->inverse ? k : k + 1);
    float *th = th_of(w, k);
    for (int64_t r = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r < e; r++) {
        const float *zi = in + r * ld, *raw = w->st + r * 2 * ldt, *tt = raw + ldt;
        float *zo = out + r * ld, *thr = th + r * ldt;
        vaec_act_forward(VAEC_ACT_TANH, thr, raw, dt);
        memcpy(zo + L->c0, zi + L->c0, (size_t)L->dc * sizeof(float));
        double ssum = 0.0;
        float chk = 0.0f;
        for (int64_t i = 0; i < dt; i++) {
            float s = scale_of(j, i) * thr[i];
            ssum += s;
            zo[L->x0 + i] = j->inverse ? (zi[L->x0 + i] - tt[i]) * expf(-s) : zi[L->x0 + i] * expf(s) + tt[i];
            chk += zo[L->x0 + i] * 0.0f;
        }
        w->ldrow[r] += j->inverse ? -ssum : ssum;
        if (chk != 0.0f || !isfinite(w->ldrow[r])) flow_mark_bad(&j->bad, k);
    }
}

/* the coupling's backward: w->g holds dL/d(layer output); writes dL/d(raw s) | dL/dt
 * into w->st, dL/ds ⊙ tanh into w->dsc, and turns g_x into dL/d(layer input)_x */
static void couple_back_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    nvp_job *j = ctx;
    const vaec_flow_layer *L = j->L;
    flow_ws *w = j->w;
    const int64_t ld = w->ldz, ldt = w->ldt, dt = L->dt;
    const int k = j->k;
    const float *th = th_of(w, k);
    /* forward: x = the layer's input (state k); inverse: x = the layer's output (state k) */
    const float *xs = flow_state(w, k);
    for (int64_t r = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r < e; r++) {
        const double c = j->c ? j->c[r] : j->c_all;
        const float *thr = th + r * ldt, *x = xs + r * ld + L->x0;
        float *g = w->g + r * ld + L->x0, *draw = w->st + r * 2 * ldt, *dtt = draw + ldt, *dsc = w->dsc + r * ldt;
        for (int64_t i = 0; i < dt; i++) {
            float sc = scale_of(j, i), s = sc * thr[i], gx = g[i], ds;
            if (j->inverse) {
                float e = expf(-s);
                dtt[i] = -gx * e;
                ds = (float)(-(double)gx * x[i] - c);
                g[i] = gx * e;
            } else {
                float e = expf(s);
                dtt[i] = gx;
                ds = (float)((double)gx * x[i] * e + c);
                g[i] = gx * e;
            }
            draw[i] = ds * sc * (1.0f - thr[i] * thr[i]);
            dsc[i] = ds * thr[i];
        }
    }
}

/* g_c += the nets' input gradient (in g2); checks the row */
static void add_cond_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    nvp_job *j = ctx;
    const vaec_flow_layer *L = j->L;
    flow_ws *w = j->w;
    const int64_t ld = w->ldz, D = j->f->dim;
    for (int64_t r = t * FLOW_GRAIN, e = flow_task_end(t, j->R); r < e; r++) {
        float *g = w->g + r * ld;
        const float *g2 = w->g2 + r * ld;
        float chk = 0.0f;
        for (int64_t i = 0; i < L->dc; i++) g[L->c0 + i] += g2[i];
        for (int64_t i = 0; i < D; i++) chk += g[i] * 0.0f;
        if (chk != 0.0f) flow_mark_bad(&j->bad, j->k);
    }
}

/* hid and raw s | t of layer k, from the conditioning half of `cond` (a state) */
static void nets_forward(vaec_pool *pool, nvp_job *j, const float *cond) {
    const vaec_flow_layer *L = j->L;
    flow_ws *w = j->w;
    const float *P = j->params;
    const int64_t H = j->f->spec.hidden, R = j->R;
    float *hid = hid_of(w, j->k);
    vaec_dense_forward_strided(pool, hid, w->ldh, cond + L->c0, w->ldz, P + L->hidden.W, P + L->hidden.b, R, L->dc, 2 * H);
    vaec_pool_run(pool, act_task, j, vaec_ntasks(R, FLOW_GRAIN));
    vaec_dense_forward_strided(pool, w->st, 2 * w->ldt, hid, w->ldh, P + L->s_out.W, P + L->s_out.b, R, H, L->dt);
    vaec_dense_forward_strided(pool, w->st + w->ldt, 2 * w->ldt, hid + H, w->ldh, P + L->t_out.W, P + L->t_out.b, R, H,
                               L->dt);
}

vaec_status vaec_flow_realnvp_forward(const vaec_flow *f, vaec_pool *pool, const float *params, int64_t R,
                                      flow_ws *w, int inverse) {
    const int K = f->spec.K;
    memset(w->ldrow, 0, (size_t)R * sizeof(double));
    for (int step = 0; step < K; step++) {
        int k = inverse ? K - 1 - step : step;
        nvp_job j = {f, &f->layer[k], params, w, R, k, inverse, NULL, 0.0, K};
        /* the conditioning half is the same in the layer's input and output */
        nets_forward(pool, &j, flow_state(w, inverse ? k + 1 : k));
        vaec_pool_run(pool, couple_task, &j, vaec_ntasks(R, FLOW_GRAIN));
        if (atomic_load(&j.bad) < K) return vaec_flow_nonfinite(f, k, "value");
    }
    return VAEC_OK;
}

vaec_status vaec_flow_realnvp_backward(const vaec_flow *f, vaec_pool *pool, const float *params, float *grads,
                                       const double *c, double c_all, int64_t R, flow_ws *w, int inverse) {
    const int K = f->spec.K;
    const int64_t H = f->spec.hidden, ntasks = vaec_ntasks(R, FLOW_GRAIN);
    for (int step = 0; step < K; step++) {
        int k = inverse ? step : K - 1 - step;
        const vaec_flow_layer *L = &f->layer[k];
        nvp_job j = {f, L, params, w, R, k, inverse, c, c_all, K};
        vaec_pool_run(pool, couple_back_task, &j, ntasks);
        /* the scale's gradient: column sums over rows in row order */
        if (L->scale >= 0) {
            for (int64_t i = 0; i < L->dt; i++) {
                double acc = 0.0;
                for (int64_t r = 0; r < R; r++) acc += w->dsc[r * w->ldt + i];
                grads[L->scale + i] += (float)acc;
            }
        }
        float *hid = hid_of(w, k);
        vaec_dense_backward_strided(pool, w->dhid, w->ldh, grads + L->s_out.W, grads + L->s_out.b, w->st, 2 * w->ldt,
                                    hid, w->ldh, params + L->s_out.W, R, H, L->dt);
        vaec_dense_backward_strided(pool, w->dhid + H, w->ldh, grads + L->t_out.W, grads + L->t_out.b, w->st + w->ldt,
                                    2 * w->ldt, hid + H, w->ldh, params + L->t_out.W, R, H, L->dt);
        vaec_pool_run(pool, act_back_task, &j, ntasks);
        const float *cond = flow_state(w, inverse ? k + 1 : k) + L->c0;
        vaec_dense_backward_strided(pool, w->g2, w->ldz, grads + L->hidden.W, grads + L->hidden.b, w->dhid, w->ldh,
                                    cond, w->ldz, params + L->hidden.W, R, L->dc, 2 * H);
        vaec_pool_run(pool, add_cond_task, &j, ntasks);
        if (atomic_load(&j.bad) < K) return vaec_flow_nonfinite(f, k, "gradient");
    }
    return VAEC_OK;
}
