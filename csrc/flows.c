/* flows.c -- what every flow type shares: spec parsing, planning the layers' tensors
 * into a model's arena, the workspace layout, and the forward / backward / inverse
 * entry points that copy rows in and out and dispatch to flow_planar.c,
 * flow_radial.c and flow_realnvp.c. See flows.h for the mathematics and the contract. */
#include "flow_impl.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char ACCEPTED[] =
    "accepted: 'planar:K', 'radial:K' or 'realnvp:K[:WIDTH[:tanh|relu[:learned|SCALE]]]' with K an integer "
    "between 1 and 128 (e.g. 'planar:8', 'radial:4', 'realnvp:4', 'realnvp:4:64')";

#define WS_MAGIC 0x464c4f57  /* "FLOW" */
enum { WS_FORWARD = 1, WS_INVERSE = 2 };

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }
/* row stride of a buffer of n columns: n itself when small (2-D flows), else padded */
static int64_t flow_ld(int64_t n) { return n < 16 ? n : align16(n); }

const char *vaec_flow_kind_name(vaec_flow_kind kind) {
    switch (kind) {
    case VAEC_FLOW_PLANAR: return "planar";
    case VAEC_FLOW_RADIAL: return "radial";
    case VAEC_FLOW_REALNVP: return "realnvp";
    }
    return "?";
}

/* ------------------------------------------------------------------ specs */
/* a non-negative decimal integer, digits only, <= max; -1 if not */
static long long parse_uint(const char *s, long long max) {
    if (!*s) return -1;
    long long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
        if (v > max) return max + 1;
    }
    return v;
}

vaec_status vaec_flow_spec_check(const vaec_flow_spec *s) {
    if (s->kind != VAEC_FLOW_PLANAR && s->kind != VAEC_FLOW_RADIAL && s->kind != VAEC_FLOW_REALNVP)
        return vaec_fail(VAEC_ERR_ARG, "flow: unknown flow type code %d; %s", (int)s->kind, ACCEPTED);
    if (s->K < 1 || s->K > VAEC_FLOW_MAX_K)
        return vaec_fail(VAEC_ERR_ARG, "flow: K must be an integer between 1 and %d, got %d; %s", VAEC_FLOW_MAX_K, s->K,
                         ACCEPTED);
    if (s->kind == VAEC_FLOW_REALNVP) {
        if (s->hidden < 1 || s->hidden > VAEC_FLOW_MAX_WIDTH)
            return vaec_fail(VAEC_ERR_ARG, "flow: the Real NVP width must be between 1 and %d, got %lld; %s",
                             VAEC_FLOW_MAX_WIDTH, (long long)s->hidden, ACCEPTED);
        if (s->act != VAEC_ACT_TANH && s->act != VAEC_ACT_RELU)
            return vaec_fail(VAEC_ERR_ARG, "flow: the Real NVP activation must be tanh or relu; %s", ACCEPTED);
        if (!(s->fixed_scale >= 0.0f && s->fixed_scale <= 100.0f))
            return vaec_fail(VAEC_ERR_ARG, "flow: the Real NVP scale must be 'learned' or a number in (0, 100]; %s",
                             ACCEPTED);
    }
    return VAEC_OK;
}

vaec_status vaec_flow_spec_parse(vaec_flow_spec *out, const char *text) {
    memset(out, 0, sizeof *out);
    out->hidden = 64;
    out->act = VAEC_ACT_TANH;
    if (!text) return vaec_fail(VAEC_ERR_ARG, "flow: no spec given; %s", ACCEPTED);
    char buf[128];
    size_t len = strlen(text);
    if (len == 0 || len >= sizeof buf) return vaec_fail(VAEC_ERR_ARG, "flow: malformed spec '%.60s'; %s", text, ACCEPTED);
    memcpy(buf, text, len + 1);
    char *field[6];
    int nf = 0;
    for (char *p = buf;;) {
        if (nf == 6) return vaec_fail(VAEC_ERR_ARG, "flow: malformed spec '%s' (too many fields); %s", text, ACCEPTED);
        field[nf++] = p;
        char *c = strchr(p, ':');
        if (!c) break;
        *c = '\0';
        p = c + 1;
    }
    if (strcmp(field[0], "planar") == 0) out->kind = VAEC_FLOW_PLANAR;
    else if (strcmp(field[0], "radial") == 0) out->kind = VAEC_FLOW_RADIAL;
    else if (strcmp(field[0], "realnvp") == 0) out->kind = VAEC_FLOW_REALNVP;
    else return vaec_fail(VAEC_ERR_ARG, "flow: unknown flow type '%s' in '%s'; %s", field[0], text, ACCEPTED);
    if (nf < 2) return vaec_fail(VAEC_ERR_ARG, "flow: '%s' has no number of layers K; %s", text, ACCEPTED);
    long long K = parse_uint(field[1], VAEC_FLOW_MAX_K);
    if (K < 1 || K > VAEC_FLOW_MAX_K)
        return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', K must be an integer between 1 and %d, got '%s'; %s", text,
                         VAEC_FLOW_MAX_K, field[1], ACCEPTED);
    out->K = (int)K;
    if (out->kind != VAEC_FLOW_REALNVP) {
        if (nf > 2) return vaec_fail(VAEC_ERR_ARG, "flow: '%s': a %s flow takes only K; %s", text, field[0], ACCEPTED);
        return VAEC_OK;
    }
    if (nf > 2) {
        long long W = parse_uint(field[2], VAEC_FLOW_MAX_WIDTH);
        if (W < 1 || W > VAEC_FLOW_MAX_WIDTH)
            return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', the width must be an integer between 1 and %d, got '%s'; %s",
                             text, VAEC_FLOW_MAX_WIDTH, field[2], ACCEPTED);
        out->hidden = W;
    }
    if (nf > 3) {
        if (strcmp(field[3], "tanh") == 0) out->act = VAEC_ACT_TANH;
        else if (strcmp(field[3], "relu") == 0) out->act = VAEC_ACT_RELU;
        else return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', the activation must be 'tanh' or 'relu', got '%s'; %s", text,
                              field[3], ACCEPTED);
    }
    if (nf > 4) {
        if (strcmp(field[4], "learned") != 0) {
            char *end = NULL;
            errno = 0;
            double v = strtod(field[4], &end);
            if (!*field[4] || *end || errno || !(v > 0.0 && v <= 100.0))
                return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', the scale must be 'learned' or a number in (0, 100], "
                                 "got '%s'; %s", text, field[4], ACCEPTED);
            out->fixed_scale = (float)v;
        }
    }
    if (nf > 5) return vaec_fail(VAEC_ERR_ARG, "flow: malformed spec '%s'; %s", text, ACCEPTED);
    return VAEC_OK;
}

char *vaec_flow_spec_format(const vaec_flow_spec *s, char *buf, size_t n) {
    if (s->kind == VAEC_FLOW_REALNVP) {
        char sc[32];
        if (s->fixed_scale > 0.0f) snprintf(sc, sizeof sc, "%g", (double)s->fixed_scale);
        else snprintf(sc, sizeof sc, "learned");
        snprintf(buf, n, "realnvp:%d:%lld:%s:%s", s->K, (long long)s->hidden, vaec_act_name(s->act), sc);
    } else {
        snprintf(buf, n, "%s:%d", vaec_flow_kind_name(s->kind), s->K);
    }
    return buf;
}

/* --------------------------------------------------------------- planning */
static int tensors_per_layer(const vaec_flow_spec *s) {
    switch (s->kind) {
    case VAEC_FLOW_PLANAR:
    case VAEC_FLOW_RADIAL: return 3;
    case VAEC_FLOW_REALNVP: return 8 + (s->fixed_scale > 0.0f ? 0 : 1);
    }
    return 0;
}

vaec_status vaec_flow_plan(vaec_flow *f, vaec_arena *a, const vaec_flow_spec *spec, int64_t dim, const char *prefix) {
    memset(f, 0, sizeof *f);
    vaec_status st = vaec_flow_spec_check(spec);
    if (st) return st;
    char sbuf[96];
    vaec_flow_spec_format(spec, sbuf, sizeof sbuf);
    if (dim < 1 || dim > (1 << 20))
        return vaec_fail(VAEC_ERR_ARG, "flow '%s': the dimension must be between 1 and 2^20, got %lld", sbuf, (long long)dim);
    if (spec->kind == VAEC_FLOW_REALNVP && dim < 2)
        return vaec_fail(VAEC_ERR_ARG, "flow '%s' needs a dimension of at least 2 (each coupling layer transforms one "
                         "half of z given the other), got %lld; accepted for dimension 1: 'planar:K' or 'radial:K'",
                         sbuf, (long long)dim);
    if (!prefix || strlen(prefix) == 0 || strlen(prefix) >= VAEC_FLOW_PREFIX_LEN - 8)
        return vaec_fail(VAEC_ERR_ARG, "flow: the tensor name prefix must have 1 to %d characters", VAEC_FLOW_PREFIX_LEN - 9);
    int need = spec->K * tensors_per_layer(spec), left = VAEC_MAX_TENSORS - a->ntensors;
    if (need > left)
        return vaec_fail(VAEC_ERR_ARG, "flow '%s' needs %d parameter tensors but the model's arena has %d of its %d left; "
                         "use fewer layers (K)", sbuf, need, left, VAEC_MAX_TENSORS);
    f->spec = *spec;
    f->dim = dim;
    snprintf(f->prefix, sizeof f->prefix, "%s", prefix);
    const float bound = 1.0f / sqrtf((float)dim);
    char name[VAEC_NAME_LEN];
    for (int k = 0; k < spec->K && !st; k++) {
        vaec_flow_layer *L = &f->layer[k];
        L->scale = -1;
#define ADD(off, nm, n, bnd) do { \
            snprintf(name, sizeof name, "%s.%d." nm, prefix, k); \
            if (!st) st = vaec_arena_add_tensor(a, &(off), name, 1, (n), 0, (bnd)); } while (0)
        switch (spec->kind) {
        case VAEC_FLOW_PLANAR:
            ADD(L->u, "u", dim, bound);
            ADD(L->w, "w", dim, bound);
            ADD(L->b, "b", 1, bound);
            break;
        case VAEC_FLOW_RADIAL:
            ADD(L->z0, "z0", dim, bound);
            ADD(L->alpha, "alpha", 1, bound);
            ADD(L->beta, "beta", 1, bound);
            break;
        case VAEC_FLOW_REALNVP: {
            int64_t half = dim / 2;
            if (k % 2 == 0) { L->c0 = 0; L->dc = half; L->x0 = half; L->dt = dim - half; }
            else { L->c0 = half; L->dc = dim - half; L->x0 = 0; L->dt = half; }
            char n0[VAEC_NAME_LEN], n1[VAEC_NAME_LEN];
            const char *heads[2] = {n0, n1};
            snprintf(n0, sizeof n0, "%s.%d.s.0", prefix, k);
            snprintf(n1, sizeof n1, "%s.%d.t.0", prefix, k);
            if (!st) st = vaec_arena_add_linear(a, &L->hidden, heads, 2, L->dc, spec->hidden);
            snprintf(n0, sizeof n0, "%s.%d.s.2", prefix, k);
            if (!st) st = vaec_arena_add_linear(a, &L->s_out, heads, 1, spec->hidden, L->dt);
            snprintf(n0, sizeof n0, "%s.%d.t.2", prefix, k);
            if (!st) st = vaec_arena_add_linear(a, &L->t_out, heads, 1, spec->hidden, L->dt);
            if (spec->fixed_scale <= 0.0f) ADD(L->scale, "scale", L->dt, 0.0f);
            break;
        }
        }
#undef ADD
    }
    return st;
}

int64_t vaec_flow_num_params(const vaec_flow *f) {
    const int64_t D = f->dim, K = f->spec.K, H = f->spec.hidden;
    if (f->spec.kind == VAEC_FLOW_PLANAR) return K * (2 * D + 1);
    if (f->spec.kind == VAEC_FLOW_RADIAL) return K * (D + 2);
    int64_t n = 0;
    for (int k = 0; k < f->spec.K; k++) {
        const vaec_flow_layer *L = &f->layer[k];
        n += 2 * H * (L->dc + 1) + 2 * L->dt * (H + 1) + (L->scale >= 0 ? L->dt : 0);
    }
    return n;
}

int vaec_flow_has_inverse(const vaec_flow *f) { return f->spec.kind == VAEC_FLOW_REALNVP; }

/* -------------------------------------------------------------- workspace */
int64_t vaec_flow_layout(const vaec_flow *f, float *ws, int64_t rows, flow_ws *w) {
    flow_ws tmp;
    if (!w) w = &tmp;
    memset(w, 0, sizeof *w);
    const int64_t K = f->spec.K, D = f->dim;
    w->rows = rows;
    w->ldz = flow_ld(D);
    w->ntasks = vaec_ntasks(rows, FLOW_GRAIN);
    /* the base is aligned to 64 bytes inside; every block starts on a 16-float boundary */
    float *base = ws ? (float *)(((uintptr_t)ws + 63) & ~(uintptr_t)63) : NULL;
    int64_t off = 0;
#define TAKE(ptr, type, nfloats) do { \
        (ptr) = ws ? (type *)(base + off) : NULL; off += align16(nfloats); } while (0)
    TAKE(w->header, int32_t, 16);
    TAKE(w->states, float, (K + 1) * rows * w->ldz);
    TAKE(w->g, float, rows * w->ldz);
    TAKE(w->g2, float, rows * w->ldz);
    TAKE(w->ldrow, double, 2 * rows);
    if (f->spec.kind == VAEC_FLOW_REALNVP) {
        int64_t H = f->spec.hidden, dtmax = D - D / 2;
        w->ldh = flow_ld(2 * H);
        w->ldt = flow_ld(dtmax);
        TAKE(w->hid, float, K * rows * w->ldh);
        TAKE(w->th, float, K * rows * w->ldt);
        TAKE(w->dhid, float, rows * w->ldh);
        TAKE(w->st, float, rows * 2 * w->ldt);
        TAKE(w->dsc, float, rows * w->ldt);
    } else {
        w->P = f->spec.kind == VAEC_FLOW_PLANAR ? 2 * D + 2 : D + 2;
        TAKE(w->vec, float, K * w->ldz);
        if (f->spec.kind == VAEC_FLOW_PLANAR) TAKE(w->hcache, float, K * rows);
        TAKE(w->lsc, double, 2 * K * FLOW_LSC);
        TAKE(w->partial, double, 2 * w->ntasks * K * w->P);
    }
#undef TAKE
    return off + 16;  /* + the alignment slack */
}

int64_t vaec_flow_ws_floats(const vaec_flow *f, int64_t rows) {
    if (rows < 1) rows = 1;
    return vaec_flow_layout(f, NULL, rows, NULL);
}

vaec_status vaec_flow_nonfinite(const vaec_flow *f, int layer, const char *what) {
    return vaec_fail(VAEC_ERR_NONFINITE, "%s.%d (%s) produced a non-finite %s", f->prefix, layer,
                     vaec_flow_kind_name(f->spec.kind), what);
}

/* ------------------------------------------------------------ entry points */
static vaec_status check_call(const vaec_flow *f, const char *fn, int64_t R, int64_t ws_rows, const float *ws,
                              int64_t ld_in, int64_t ld_out) {
    if (f->spec.K < 1) return vaec_fail(VAEC_ERR_ARG, "%s: the flow is not planned", fn);
    if (R < 0 || R > ws_rows)
        return vaec_fail(VAEC_ERR_ARG, "%s: %lld rows do not fit a workspace of %lld rows", fn, (long long)R,
                         (long long)ws_rows);
    if (!ws) return vaec_fail(VAEC_ERR_ARG, "%s: no workspace", fn);
    if (ld_in < f->dim || ld_out < f->dim)
        return vaec_fail(VAEC_ERR_ARG, "%s: row strides must be at least the dimension %lld", fn, (long long)f->dim);
    return VAEC_OK;
}

static void copy_rows(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t R, int64_t D) {
    if (dst == src && ldd == lds) return;
    for (int64_t r = 0; r < R; r++) memmove(dst + r * ldd, src + r * lds, (size_t)D * sizeof(float));
}

static void mark(flow_ws *w, int direction, int64_t R) {
    w->header[0] = WS_MAGIC;
    w->header[1] = direction;
    memcpy(w->header + 2, &R, sizeof R);
}

static vaec_status check_mark(const flow_ws *w, int direction, int64_t R, const char *fn) {
    int64_t r;
    memcpy(&r, w->header + 2, sizeof r);
    if (w->header[0] != WS_MAGIC || w->header[1] != direction || r != R)
        return vaec_fail(VAEC_ERR_ARG, "%s: the workspace does not hold the %s pass of these %lld rows", fn,
                         direction == WS_FORWARD ? "forward" : "inverse", (long long)R);
    return VAEC_OK;
}

static vaec_status run(const vaec_flow *f, vaec_pool *pool, const vaec_arena *a, const float *in, int64_t ldi,
                       float *out, int64_t ldo, double *logdet, int64_t R, float *ws, int64_t ws_rows, int inverse) {
    const char *fn = inverse ? "vaec_flow_inverse" : "vaec_flow_forward";
    vaec_status st = check_call(f, fn, R, ws_rows, ws, ldi, ldo);
    if (st) return st;
    if (inverse && !vaec_flow_has_inverse(f)) {
        char sbuf[96];
        return vaec_fail(VAEC_ERR_ARG, "flow '%s' has no closed-form inverse (only Real NVP flows do)",
                         vaec_flow_spec_format(&f->spec, sbuf, sizeof sbuf));
    }
    flow_ws w;
    vaec_flow_layout(f, ws, ws_rows, &w);
    w.header[0] = 0;
    const int K = f->spec.K;
    copy_rows(flow_state(&w, inverse ? K : 0), w.ldz, in, ldi, R, f->dim);
    if (R > 0) {
        switch (f->spec.kind) {
        case VAEC_FLOW_PLANAR: st = vaec_flow_planar_forward(f, pool, a->params, R, &w); break;
        case VAEC_FLOW_RADIAL: st = vaec_flow_radial_forward(f, pool, a->params, R, &w); break;
        case VAEC_FLOW_REALNVP: st = vaec_flow_realnvp_forward(f, pool, a->params, R, &w, inverse); break;
        }
    }
    if (st) return st;
    copy_rows(out, ldo, flow_state(&w, inverse ? 0 : K), w.ldz, R, f->dim);
    if (logdet) memcpy(logdet, w.ldrow, (size_t)R * sizeof(double));
    mark(&w, inverse ? WS_INVERSE : WS_FORWARD, R);
    return VAEC_OK;
}

static vaec_status run_back(const vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *gin, int64_t ldg,
                            const double *c, double c_all, float *gout, int64_t ldo, int64_t R, float *ws,
                            int64_t ws_rows, int inverse) {
    const char *fn = inverse ? "vaec_flow_inverse_backward" : "vaec_flow_backward";
    vaec_status st = check_call(f, fn, R, ws_rows, ws, ldg, gout ? ldo : f->dim);
    if (st) return st;
    flow_ws w;
    vaec_flow_layout(f, ws, ws_rows, &w);
    if ((st = check_mark(&w, inverse ? WS_INVERSE : WS_FORWARD, R, fn))) return st;
    if (R == 0) return VAEC_OK;
    copy_rows(w.g, w.ldz, gin, ldg, R, f->dim);
    switch (f->spec.kind) {
    case VAEC_FLOW_PLANAR: st = vaec_flow_planar_backward(f, pool, a->params, a->grads, c, c_all, R, &w); break;
    case VAEC_FLOW_RADIAL: st = vaec_flow_radial_backward(f, pool, a->params, a->grads, c, c_all, R, &w); break;
    case VAEC_FLOW_REALNVP: st = vaec_flow_realnvp_backward(f, pool, a->params, a->grads, c, c_all, R, &w, inverse); break;
    }
    if (st) return st;
    if (gout) copy_rows(gout, ldo, w.g, w.ldz, R, f->dim);
    return VAEC_OK;
}

vaec_status vaec_flow_forward(const vaec_flow *f, vaec_pool *pool, const vaec_arena *a, const float *z0, int64_t ldz0,
                              float *zK, int64_t ldzK, double *logdet, int64_t R, float *ws, int64_t ws_rows) {
    return run(f, pool, a, z0, ldz0, zK, ldzK, logdet, R, ws, ws_rows, 0);
}

vaec_status vaec_flow_inverse(const vaec_flow *f, vaec_pool *pool, const vaec_arena *a, const float *x, int64_t ldx,
                              float *z0, int64_t ldz0, double *logdet_inv, int64_t R, float *ws, int64_t ws_rows) {
    return run(f, pool, a, x, ldx, z0, ldz0, logdet_inv, R, ws, ws_rows, 1);
}

vaec_status vaec_flow_backward(const vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *dzK, int64_t lddzK,
                               const double *dlogdet, double dlogdet_all, float *dz0, int64_t lddz0, int64_t R,
                               float *ws, int64_t ws_rows) {
    return run_back(f, pool, a, dzK, lddzK, dlogdet, dlogdet_all, dz0, lddz0, R, ws, ws_rows, 0);
}

vaec_status vaec_flow_inverse_backward(const vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *dz0,
                                       int64_t lddz0, const double *dlogdet_inv, double dlogdet_inv_all, float *dx,
                                       int64_t lddx, int64_t R, float *ws, int64_t ws_rows) {
    return run_back(f, pool, a, dz0, lddz0, dlogdet_inv, dlogdet_inv_all, dx, lddx, R, ws, ws_rows, 1);
}
