/* flow_realnvp.c -- Real NVP affine coupling layers (Dinh, Sohl-Dickstein & Bengio 2017).
 *
 * Layer k conditions on c = z[c0, c0+dc) and transforms x = z[x0, x0+dt) (contiguous
 * halves, alternating with k; see flows.h):
 *   hid = act([W_s0; W_t0] c + [b_s0; b_t0])          one GEMM of 2H rows (R, 2H)
 *   s = scale ⊙ tanh(W_s2 hid[:, :H] + b_s2),  t = W_t2 hid[:, H:] + b_t2
 *   forward  y_x = x ⊙ exp(s) + t,      log|det| += Σ s
 *   inverse  x = (y_x − t) ⊙ exp(−s),   log|det| −= Σ s
 * The s and t networks are networks (net.h) in the arena's tensor order of 0.1.0: their
 * first layers stacked into one product, then s.2 and t.2 on its two halves. Their
 * products run on the pool (deterministic for any thread count); the element-wise
 * coupling runs in row tasks. The workspace keeps each layer's input state, its networks'
 * activations and tanh(raw s) for the backward pass.
 *
 * Backward of a forward layer (g = dL/dy, c = dL/dlogdet):
 *   dL/dx = g_x ⊙ e^s,  dL/dt = g_x,  dL/ds = g_x ⊙ x ⊙ e^s + c
 * of an inverse layer (g = dL/dx, c = dL/dlogdet_inv, x the layer's output):
 *   dL/dy_x = g_x ⊙ e^−s,  dL/dt = −g_x ⊙ e^−s,  dL/ds = −g_x ⊙ x − c
 * then dL/draw = dL/ds ⊙ scale ⊙ (1 − tanh²), dL/dscale = Σ_rows dL/ds ⊙ tanh, the
 * nets backward, and dL/dc += (the nets' input gradient). */
#include "flow_impl.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
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
    /* the layer's s and t networks: their outputs (raw s, t) and output gradients */
    const float *s_raw, *t_val;
    float *ds, *dt;
    int64_t lds, ldt;
} nvp_job;

static float *th_of(const flow_ws *w, int k) { return w->th + (int64_t)k * w->rows * w->ldt; }

static inline float scale_of(const nvp_job *j, int64_t i) {
    return j->L->scale >= 0 ? j->params[j->L->scale + i] : j->f->spec.fixed_scale;
}

/* the coupling: from the input state to the output state, given raw s and t */
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
        const float *zi = in + r * ld, *raw = j->s_raw + r * j->lds, *tt = j->t_val + r * j->ldt;
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

/* the coupling's backward: w->g holds dL/d(layer output); writes dL/d(raw s) and dL/dt
 * into the s and t networks' output gradients, dL/ds ⊙ tanh into w->dsc, and turns g_x
 * into dL/d(layer input)_x */
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
        float *g = w->g + r * ld + L->x0, *draw = j->ds + r * j->lds, *dtt = j->dt + r * j->ldt, *dsc = w->dsc + r * ldt;
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

/* g_c += the networks' input gradient (in g2); checks the row */
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

/* The networks of layer k on the conditioning half of `cond` (a state): hid = act([s.0;
 * t.0] c + b) (R, 2H), raw s = s.2 hid[:, :H], t = t.2 hid[:, H:]. */
static void nets_forward(vaec_flow_layer *L, nvp_job *j, const float *cond, int64_t ldz) {
    const int64_t H = j->f->spec.hidden, R = j->R;
    int64_t ldh;
    const float *hid = vaec_net_forward(&L->first, cond + L->c0, ldz, R, &ldh);
    j->s_raw = vaec_net_forward(&L->s_net, hid, ldh, R, &j->lds);
    j->t_val = vaec_net_forward(&L->t_net, hid + H, ldh, R, &j->ldt);
}

static void bind_nets(vaec_flow_layer *L, vaec_pool *pool, vaec_arena *a) {
    vaec_net_bind(&L->first, pool, a);
    vaec_net_bind(&L->s_net, pool, a);
    vaec_net_bind(&L->t_net, pool, a);
}

static vaec_status realnvp_forward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, int64_t R, flow_ws *w, int inverse) {
    const int K = f->spec.K;
    memset(w->ldrow, 0, (size_t)R * sizeof(double));
    for (int step = 0; step < K; step++) {
        int k = inverse ? K - 1 - step : step;
        vaec_flow_layer *L = &f->layer[k];
        bind_nets(L, pool, a);
        nvp_job j = {f, L, a->params, w, R, k, inverse, NULL, 0.0, K};
        /* the conditioning half is the same in the layer's input and output */
        nets_forward(L, &j, flow_state(w, inverse ? k + 1 : k), w->ldz);
        vaec_pool_run(pool, couple_task, &j, vaec_ntasks(R, FLOW_GRAIN));
        if (atomic_load(&j.bad) < K) return vaec_flow_nonfinite(f, k, "value");
    }
    return VAEC_OK;
}

static vaec_status realnvp_backward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const double *c, double c_all,
                                    int64_t R, flow_ws *w, int inverse) {
    const int K = f->spec.K;
    const int64_t H = f->spec.hidden, ntasks = vaec_ntasks(R, FLOW_GRAIN);
    float *grads = a->grads;
    for (int step = 0; step < K; step++) {
        int k = inverse ? step : K - 1 - step;
        vaec_flow_layer *L = &f->layer[k];
        bind_nets(L, pool, a);
        nvp_job j = {f, L, a->params, w, R, k, inverse, c, c_all, K};
        int64_t ldh;
        j.ds = vaec_net_dout(&L->s_net, &j.lds);
        j.dt = vaec_net_dout(&L->t_net, &j.ldt);
        vaec_pool_run(pool, couple_back_task, &j, ntasks);
        /* the scale's gradient: column sums over rows in row order */
        if (L->scale >= 0) {
            for (int64_t i = 0; i < L->dt; i++) {
                double acc = 0.0;
                for (int64_t r = 0; r < R; r++) acc += w->dsc[r * w->ldt + i];
                grads[L->scale + i] += (float)acc;
            }
        }
        /* s.2 and t.2, whose input gradients are the two halves of the first layers' output
         * gradient; then the first layers (their activation's derivative first) */
        const float *hid = vaec_net_out(&L->first, &ldh);
        float *dhid = vaec_net_dout(&L->first, &ldh);
        vaec_net_backward(&L->s_net, hid, ldh, R, dhid, ldh);
        vaec_net_backward(&L->t_net, hid + H, ldh, R, dhid + H, ldh);
        const float *cond = flow_state(w, inverse ? k + 1 : k) + L->c0;
        vaec_net_backward(&L->first, cond, w->ldz, R, w->g2, w->ldz);
        vaec_pool_run(pool, add_cond_task, &j, ntasks);
        if (atomic_load(&j.bad) < K) return vaec_flow_nonfinite(f, k, "gradient");
    }
    return VAEC_OK;
}

/* ------------------------------------------------------------ the type */
/* layer k: the halves it conditions on and transforms, and its networks: first layers
 * "{prefix}.{k}.s.0" and ".t.0" stacked (torch.nn.Linear init), "s.2", "t.2", then the
 * learned scale ".scale" (zeros: each layer starts volume preserving) */
static vaec_status realnvp_plan(vaec_flow *f, int k, vaec_arena *a) {
    const vaec_flow_spec *spec = &f->spec;
    const int64_t dim = f->dim, half = dim / 2;
    vaec_flow_layer *L = &f->layer[k];
    L->scale = -1;
    if (k % 2 == 0) { L->c0 = 0; L->dc = half; L->x0 = half; L->dt = dim - half; }
    else { L->c0 = half; L->dc = dim - half; L->x0 = 0; L->dt = half; }
    char n0[VAEC_NAME_LEN], n1[VAEC_NAME_LEN];
    const char *heads[2] = {n0, n1};
    vaec_layer_spec s = {0};
    s.kind = VAEC_LAYER_LINEAR;
    vaec_status st;
    vaec_net_init(&L->first, f->prefix, vaec_dims_flat(L->dc), &L->nets_layers[0], 1);
    vaec_net_init(&L->s_net, f->prefix, vaec_dims_flat(spec->hidden), &L->nets_layers[1], 1);
    vaec_net_init(&L->t_net, f->prefix, vaec_dims_flat(spec->hidden), &L->nets_layers[2], 1);
    snprintf(n0, sizeof n0, "%s.%d.s.0", f->prefix, k);
    snprintf(n1, sizeof n1, "%s.%d.t.0", f->prefix, k);
    s.out = spec->hidden;
    s.act = (int32_t)spec->act;
    if ((st = vaec_net_add(&L->first, a, &s, 0, heads, 2, 0))) return st;
    s.out = L->dt;
    s.act = VAEC_ACT_IDENTITY;
    snprintf(n0, sizeof n0, "%s.%d.s.2", f->prefix, k);
    if ((st = vaec_net_add(&L->s_net, a, &s, 2, heads, 1, 0))) return st;
    snprintf(n0, sizeof n0, "%s.%d.t.2", f->prefix, k);
    if ((st = vaec_net_add(&L->t_net, a, &s, 2, heads, 1, 0))) return st;
    if (spec->fixed_scale <= 0.0f) {
        snprintf(n0, sizeof n0, "%s.%d.scale", f->prefix, k);
        if ((st = vaec_arena_add_tensor(a, &L->scale, n0, 1, L->dt, 0, 0.0f))) return st;
    }
    return VAEC_OK;
}

static int realnvp_tensors(const vaec_flow_spec *s) { return 8 + (s->fixed_scale > 0.0f ? 0 : 1); }

static int64_t realnvp_params(const vaec_flow *f) {
    const int64_t H = f->spec.hidden;
    int64_t n = 0;
    for (int k = 0; k < f->spec.K; k++) {
        const vaec_flow_layer *L = &f->layer[k];
        n += 2 * H * (L->dc + 1) + 2 * L->dt * (H + 1) + (L->scale >= 0 ? L->dt : 0);
    }
    return n;
}

/* tanh of the raw scale per layer (kept for the backward), dL/ds ⊙ tanh, and each layer's
 * networks' plans (their activations and gradients) */
static int64_t realnvp_layout(vaec_flow *f, float *base, int64_t off, int64_t rows, flow_ws *w) {
    const int64_t K = f->spec.K, D = f->dim;
    w->ldt = flow_ld(D - D / 2);
    w->th = flow_take(base, &off, K * rows * w->ldt);
    w->dsc = flow_take(base, &off, rows * w->ldt);
    for (int k = 0; k < K; k++) {
        vaec_net *nets[3] = {&f->layer[k].first, &f->layer[k].s_net, &f->layer[k].t_net};
        for (int i = 0; i < 3; i++) {
            float *p = flow_take(base, &off, vaec_net_plan(nets[i], NULL, rows));
            if (base) vaec_net_plan(nets[i], p, rows);
        }
    }
    return off;
}

/* the fields after K: WIDTH, tanh|relu, learned|SCALE */
static vaec_status realnvp_parse(vaec_flow_spec *out, char *const *field, int nf, const char *text) {
    const char *ACCEPTED = VAEC_FLOW_ACCEPTED;
    if (nf > 0) {
        long long W = vaec_flow_parse_uint(field[0], VAEC_FLOW_MAX_WIDTH);
        if (W < 1 || W > VAEC_FLOW_MAX_WIDTH)
            return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', the width must be an integer between 1 and %d, got '%s'; %s",
                             text, VAEC_FLOW_MAX_WIDTH, field[0], ACCEPTED);
        out->hidden = W;
    }
    if (nf > 1) {
        if (strcmp(field[1], "tanh") == 0) out->act = VAEC_ACT_TANH;
        else if (strcmp(field[1], "relu") == 0) out->act = VAEC_ACT_RELU;
        else return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', the activation must be 'tanh' or 'relu', got '%s'; %s", text,
                              field[1], ACCEPTED);
    }
    if (nf > 2) {
        if (strcmp(field[2], "learned") != 0) {
            char *end = NULL;
            errno = 0;
            double v = strtod(field[2], &end);
            if (!*field[2] || *end || errno || !(v > 0.0 && v <= 100.0))
                return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', the scale must be 'learned' or a number in (0, 100], "
                                 "got '%s'; %s", text, field[2], ACCEPTED);
            out->fixed_scale = (float)v;
        }
    }
    if (nf > 3) return vaec_fail(VAEC_ERR_ARG, "flow: malformed spec '%s'; %s", text, ACCEPTED);
    return VAEC_OK;
}

static vaec_status realnvp_check(const vaec_flow_spec *s) {
    const char *ACCEPTED = VAEC_FLOW_ACCEPTED;
    if (s->hidden < 1 || s->hidden > VAEC_FLOW_MAX_WIDTH)
        return vaec_fail(VAEC_ERR_ARG, "flow: the Real NVP width must be between 1 and %d, got %lld; %s",
                         VAEC_FLOW_MAX_WIDTH, (long long)s->hidden, ACCEPTED);
    if (s->act != VAEC_ACT_TANH && s->act != VAEC_ACT_RELU)
        return vaec_fail(VAEC_ERR_ARG, "flow: the Real NVP activation must be tanh or relu; %s", ACCEPTED);
    if (!(s->fixed_scale >= 0.0f && s->fixed_scale <= 100.0f))
        return vaec_fail(VAEC_ERR_ARG, "flow: the Real NVP scale must be 'learned' or a number in (0, 100]; %s",
                         ACCEPTED);
    return VAEC_OK;
}

/* ":WIDTH:ACT:learned|SCALE" */
static void realnvp_format(const vaec_flow_spec *s, char *buf, size_t n) {
    char sc[32];
    if (s->fixed_scale > 0.0f) snprintf(sc, sizeof sc, "%g", (double)s->fixed_scale);
    else snprintf(sc, sizeof sc, "learned");
    snprintf(buf, n, ":%lld:%s:%s", (long long)s->hidden, vaec_act_name(s->act), sc);
}

const vaec_flow_ops vaec_flow_realnvp_ops = {
    VAEC_FLOW_REALNVP, "realnvp", 1, realnvp_parse, realnvp_check, realnvp_format, realnvp_tensors, realnvp_plan,
    realnvp_params, realnvp_layout, realnvp_forward, realnvp_backward,
};
