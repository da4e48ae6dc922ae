/* flows.c -- what every flow type shares: the table of types, spec parsing, planning the
 * layers' tensors into a model's arena, the workspace layout, and the forward / backward /
 * inverse entry points that copy rows in and out and call the type's passes (flow_planar.c,
 * flow_radial.c, flow_realnvp.c). A new type is a file with its vaec_flow_ops (flow_impl.h)
 * and one line in TYPES. See flows.h for the mathematics and the contract. */
#include "flow_impl.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* The flow types: one line each (flow_impl.h says what a type provides). */
static const vaec_flow_ops *const TYPES[] = {
    &vaec_flow_planar_ops,
    &vaec_flow_radial_ops,
    &vaec_flow_realnvp_ops,
};
#define NTYPES ((int)(sizeof TYPES / sizeof TYPES[0]))

static const vaec_flow_ops *ops_of(vaec_flow_kind kind) {
    for (int i = 0; i < NTYPES; i++)
        if (TYPES[i]->kind == kind) return TYPES[i];
    return NULL;
}

const char VAEC_FLOW_ACCEPTED[] =
    "accepted: 'planar:K', 'planar:K:amortized' (a VAE's posterior only), 'radial:K' or "
    "'realnvp:K[:WIDTH[:tanh|relu[:learned|SCALE]]]' with K an integer between 1 and 128 (e.g. 'planar:8', "
    "'planar:10:amortized', 'radial:4', 'realnvp:4', 'realnvp:4:64')";
#define ACCEPTED VAEC_FLOW_ACCEPTED

#define WS_MAGIC 0x464c4f57  /* "FLOW" */
enum { WS_FORWARD = 1, WS_INVERSE = 2 };

const char *vaec_flow_kind_name(vaec_flow_kind kind) {
    const vaec_flow_ops *o = ops_of(kind);
    return o ? o->name : "?";
}

/* ------------------------------------------------------------------ specs */
long long vaec_flow_parse_uint(const char *s, long long max) {
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
    const vaec_flow_ops *o = ops_of(s->kind);
    if (!o) return vaec_fail(VAEC_ERR_ARG, "flow: unknown flow type code %d; %s", (int)s->kind, ACCEPTED);
    if (s->K < 1 || s->K > VAEC_FLOW_MAX_K)
        return vaec_fail(VAEC_ERR_ARG, "flow: K must be an integer between 1 and %d, got %d; %s", VAEC_FLOW_MAX_K, s->K,
                         ACCEPTED);
    return o->check ? o->check(s) : VAEC_OK;
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
    const vaec_flow_ops *o = NULL;
    for (int i = 0; i < NTYPES && !o; i++)
        if (strcmp(field[0], TYPES[i]->name) == 0) o = TYPES[i];
    if (!o) return vaec_fail(VAEC_ERR_ARG, "flow: unknown flow type '%s' in '%s'; %s", field[0], text, ACCEPTED);
    out->kind = o->kind;
    if (nf < 2) return vaec_fail(VAEC_ERR_ARG, "flow: '%s' has no number of layers K; %s", text, ACCEPTED);
    long long K = vaec_flow_parse_uint(field[1], VAEC_FLOW_MAX_K);
    if (K < 1 || K > VAEC_FLOW_MAX_K)
        return vaec_fail(VAEC_ERR_ARG, "flow: in '%s', K must be an integer between 1 and %d, got '%s'; %s", text,
                         VAEC_FLOW_MAX_K, field[1], ACCEPTED);
    out->K = (int)K;
    if (!o->parse) {
        if (nf > 2) return vaec_fail(VAEC_ERR_ARG, "flow: '%s': a %s flow takes only K; %s", text, field[0], ACCEPTED);
        return VAEC_OK;
    }
    return o->parse(out, field + 2, nf - 2, text);
}

char *vaec_flow_spec_format(const vaec_flow_spec *s, char *buf, size_t n) {
    const vaec_flow_ops *o = ops_of(s->kind);
    int w = snprintf(buf, n, "%s:%d", vaec_flow_kind_name(s->kind), s->K);
    if (o && o->format && w >= 0 && (size_t)w < n) o->format(s, buf + w, n - (size_t)w);
    return buf;
}

/* --------------------------------------------------------------- planning */
vaec_status vaec_flow_plan(vaec_flow *f, vaec_arena *a, const vaec_flow_spec *spec, int64_t dim, const char *prefix) {
    memset(f, 0, sizeof *f);
    vaec_status st = vaec_flow_spec_check(spec);
    if (st) return st;
    const vaec_flow_ops *o = ops_of(spec->kind);
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
    int need = spec->K * o->tensors(spec), left = VAEC_MAX_TENSORS - a->ntensors;
    if (need > left)
        return vaec_fail(VAEC_ERR_ARG, "flow '%s' needs %d parameter tensors but the model's arena has %d of its %d left; "
                         "use fewer layers (K)", sbuf, need, left, VAEC_MAX_TENSORS);
    f->spec = *spec;
    f->ops = o;
    f->dim = dim;
    snprintf(f->prefix, sizeof f->prefix, "%s", prefix);
    for (int k = 0; k < spec->K && !st; k++) st = o->plan(f, k, a);
    return st;
}

int64_t vaec_flow_num_params(const vaec_flow *f) { return f->ops->params(f); }

int64_t vaec_flow_cond_width(const vaec_flow_spec *s, int64_t dim) {
    return s->amortized ? (int64_t)s->K * (2 * dim + 1) : 0;
}

int vaec_flow_has_inverse(const vaec_flow *f) { return f->ops && f->ops->inverse; }

/* -------------------------------------------------------------- workspace */
int64_t vaec_flow_layout(vaec_flow *f, float *ws, int64_t rows, flow_ws *w) {
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
    w->header = flow_take(base, &off, 16);
    w->states = flow_take(base, &off, (K + 1) * rows * w->ldz);
    w->g = flow_take(base, &off, rows * w->ldz);
    w->g2 = flow_take(base, &off, rows * w->ldz);
    w->ldrow = flow_take(base, &off, 2 * rows);
    off = f->ops->layout(f, base, off, rows, w);
    return off + 16;  /* + the alignment slack */
}

int64_t vaec_flow_ws_floats(vaec_flow *f, int64_t rows) {
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
    if (f->spec.amortized && (!f->cond || f->period < 1 || f->ldc < vaec_flow_cond_width(&f->spec, f->dim)))
        return vaec_fail(VAEC_ERR_ARG, "%s: an amortized flow takes its parameters from the encoder; none were given", fn);
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

static vaec_status run(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *in, int64_t ldi,
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
    if (R > 0) st = f->ops->forward(f, pool, a, R, &w, inverse);
    if (st) return st;
    copy_rows(out, ldo, flow_state(&w, inverse ? 0 : K), w.ldz, R, f->dim);
    if (logdet) memcpy(logdet, w.ldrow, (size_t)R * sizeof(double));
    mark(&w, inverse ? WS_INVERSE : WS_FORWARD, R);
    return VAEC_OK;
}

static vaec_status run_back(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *gin, int64_t ldg,
                            const double *c, double c_all, float *gout, int64_t ldo, int64_t R, float *ws,
                            int64_t ws_rows, int inverse) {
    const char *fn = inverse ? "vaec_flow_inverse_backward" : "vaec_flow_backward";
    vaec_status st = check_call(f, fn, R, ws_rows, ws, ldg, gout ? ldo : f->dim);
    if (st) return st;
    if (f->spec.amortized && (!f->dcond || f->period < R))   /* one row per parameter row: no races */
        return vaec_fail(VAEC_ERR_ARG, "%s: an amortized flow's backward needs a gradient buffer for each of its "
                         "%lld rows' parameters", fn, (long long)R);
    flow_ws w;
    vaec_flow_layout(f, ws, ws_rows, &w);
    if ((st = check_mark(&w, inverse ? WS_INVERSE : WS_FORWARD, R, fn))) return st;
    if (R == 0) return VAEC_OK;
    copy_rows(w.g, w.ldz, gin, ldg, R, f->dim);
    if ((st = f->ops->backward(f, pool, a, c, c_all, R, &w, inverse))) return st;
    if (gout) copy_rows(gout, ldo, w.g, w.ldz, R, f->dim);
    return VAEC_OK;
}

vaec_status vaec_flow_forward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *z0, int64_t ldz0,
                              float *zK, int64_t ldzK, double *logdet, int64_t R, float *ws, int64_t ws_rows) {
    return run(f, pool, a, z0, ldz0, zK, ldzK, logdet, R, ws, ws_rows, 0);
}

vaec_status vaec_flow_inverse(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *x, int64_t ldx,
                              float *z0, int64_t ldz0, double *logdet_inv, int64_t R, float *ws, int64_t ws_rows) {
    return run(f, pool, a, x, ldx, z0, ldz0, logdet_inv, R, ws, ws_rows, 1);
}

vaec_status vaec_flow_backward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *dzK, int64_t lddzK,
                               const double *dlogdet, double dlogdet_all, float *dz0, int64_t lddz0, int64_t R,
                               float *ws, int64_t ws_rows) {
    return run_back(f, pool, a, dzK, lddzK, dlogdet, dlogdet_all, dz0, lddz0, R, ws, ws_rows, 0);
}

vaec_status vaec_flow_inverse_backward(vaec_flow *f, vaec_pool *pool, vaec_arena *a, const float *dz0,
                                       int64_t lddz0, const double *dlogdet_inv, double dlogdet_inv_all, float *dx,
                                       int64_t lddx, int64_t R, float *ws, int64_t ws_rows) {
    return run_back(f, pool, a, dz0, lddz0, dlogdet_inv, dlogdet_inv_all, dx, lddx, R, ws, ws_rows, 1);
}
