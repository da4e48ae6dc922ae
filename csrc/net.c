/* net.c -- a network: its layer list, its workspace plan, forward and backward (net.h).
 * Nothing here knows a layer kind: each kind's file does its work through its ops. */
#include "net.h"
#include <stdio.h>
#include <string.h>

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

char *vaec_dims_format(vaec_dims d, char *buf, size_t n) {   /* shapes as torch writes them: (C, H, W) */
    if (d.flat) snprintf(buf, n, "(%lld)", (long long)d.c);
    else snprintf(buf, n, "(%lld, %lld, %lld)", (long long)d.c, (long long)d.h, (long long)d.w);
    return buf;
}

void vaec_net_init(vaec_net *net, const char *prefix, vaec_dims in, vaec_layer *storage, int cap) {
    memset(net, 0, sizeof *net);
    snprintf(net->prefix, sizeof net->prefix, "%s", prefix);
    net->in = net->out = in;
    net->layer = storage;
    net->cap = cap < VAEC_NET_MAX_LAYERS ? cap : VAEC_NET_MAX_LAYERS;
}

vaec_status vaec_net_add(vaec_net *net, vaec_arena *a, const vaec_layer_spec *spec, int index,
                         const char *const *names, int heads, int flags) {
    return vaec_net_add_heads(net, a, spec, index, names, heads, 0, flags);
}

vaec_status vaec_net_add_heads(vaec_net *net, vaec_arena *a, const vaec_layer_spec *spec, int index,
                               const char *const *names, int heads, int64_t extra, int flags) {
    if (extra > 0 && (spec->kind != VAEC_LAYER_LINEAR || !names || heads > 2))
        return vaec_fail(VAEC_ERR_ARG, "%s.%d: only a named Linear layer of at most 2 heads takes one more", net->prefix,
                         index);
    if (net->n >= net->cap)
        return vaec_fail(VAEC_ERR_ARG, "%s: at most %d layers", net->prefix, net->cap);
    const vaec_layer_ops *ops = vaec_layer_ops_of(spec->kind);
    if (!ops) return vaec_fail(VAEC_ERR_ARG, "%s.%d: unknown layer kind %d", net->prefix, index, (int)spec->kind);
    vaec_layer *L = &net->layer[net->n];
    memset(L, 0, sizeof *L);
    L->spec = *spec;
    L->ops = ops;
    L->in = net->out;
    L->act = VAEC_ACT_IDENTITY;
    L->flags = flags;
    L->alias = ops->alias;
    L->heads = heads < 1 ? 1 : heads;
    L->extra = extra > 0 ? extra : 0;
    for (int h = 0; h < L->heads + (L->extra > 0) && h < 3; h++) {
        if (names) snprintf(L->names[h], VAEC_NAME_LEN, "%s", names[h]);
        else snprintf(L->names[h], VAEC_NAME_LEN, "%s.%d", net->prefix, index);
    }
    if ((unsigned)spec->act >= VAEC_ACT_COUNT || (spec->kind == VAEC_LAYER_ACT && spec->act == VAEC_ACT_IDENTITY))
        return vaec_fail(VAEC_ERR_ARG, "%s: unknown activation code %d", L->names[0], (int)spec->act);
    if (spec->kind != VAEC_LAYER_ACT && spec->act != VAEC_ACT_IDENTITY && !ops->can_fuse_act)
        return vaec_fail(VAEC_ERR_ARG, "%s (%s): carries no activation; add an activation layer after it", L->names[0],
                         ops->name);
    vaec_status st = ops->shape(L);
    if (st) return st;
    L->p0 = L->p1 = a->n;
    if (ops->params) {
        if ((st = ops->params(L, a))) return st;
        L->p1 = a->n;
    }
    /* an activation after a layer that can carry it: done in that layer's epilogue (a leaky
     * ReLU of another slope than the kernels' 0.01 is an operation of its own, layer_act.c) */
    vaec_layer *prev = net->n ? &net->layer[net->n - 1] : NULL;
    if (spec->kind == VAEC_LAYER_ACT && vaec_act_custom_slope(spec)) {
        L->act = VAEC_ACT_IDENTITY;
    } else if (spec->kind == VAEC_LAYER_ACT && prev && !prev->fused && prev->ops->can_fuse_act &&
               prev->act == VAEC_ACT_IDENTITY) {
        prev->act = (vaec_act)spec->act;
        L->fused = 1;
    } else {
        L->act = (vaec_act)spec->act;   /* an activation layer's own, or one given with the layer */
    }
    net->out = L->out;
    net->n++;
    return VAEC_OK;
}

vaec_status vaec_net_finish(vaec_net *net, vaec_arena *a) {
    if (!vaec_dims_channels_last(net->out)) return VAEC_OK;
    vaec_layer_spec s = {0};
    s.kind = VAEC_LAYER_TO_NCHW;
    const char *name[1] = {net->prefix};
    return vaec_net_add(net, a, &s, net->n, name, 1, 0);
}

void vaec_net_bind(vaec_net *net, vaec_pool *pool, vaec_arena *a) {
    net->pool = pool;
    net->arena = a;
}

int64_t vaec_net_plan(vaec_net *net, float *buf, int64_t rows) {
    /* each block starts on a 16-float boundary of buf (itself 64-byte aligned) */
    int64_t off = 0;
#define TAKE(ptr, nfloats) do { (ptr) = buf ? buf + off : NULL; off += align16(nfloats); } while (0)
    /* counting writes nothing into the network */
    for (int i = 0; i < net->n; i++) {
        vaec_layer *L = &net->layer[i];
        const int64_t ld = align16(vaec_dims_size(L->out));
        float *y = NULL, *g = NULL, *ws = NULL;
        if (!L->fused && !L->alias) {   /* else the layer before's (an alias: its input's) */
            TAKE(y, rows * ld);
            TAKE(g, rows * ld);
        }
        TAKE(ws, L->ops->plan ? L->ops->plan(L, NULL, rows) : 0);
        if (!buf) continue;
        L->ld = ld;
        L->y = y;
        L->g = g;
        L->ws = ws;
        if (L->ops->plan) L->ops->plan(L, ws, rows);
    }
#undef TAKE
    if (buf) net->rows = rows;
    return off;
}

/* The layer that holds layer i's output: itself, or for a fused activation the layer it
 * was fused into; an alias layer's output is its input's (NULL: the network's input). */
static const vaec_layer *holder(const vaec_net *net, int i) {
    while (i >= 0 && (net->layer[i].fused || net->layer[i].alias)) i--;
    return i >= 0 ? &net->layer[i] : NULL;
}

const float *vaec_net_forward(vaec_net *net, const float *x, int64_t ldx, int64_t R, int64_t *ldy) {
    const float *in = x;
    int64_t ldi = ldx;
    for (int i = 0; i < net->n; i++) {
        vaec_layer *L = &net->layer[i];
        if (L->fused || L->alias) continue;
        L->ops->forward(net, L, L->y, L->ld, in, ldi, R);
        in = L->y;
        ldi = L->ld;
    }
    *ldy = ldi;
    return in;
}

float *vaec_net_out(vaec_net *net, int64_t *ld) {
    const vaec_layer *L = holder(net, net->n - 1);
    *ld = L ? L->ld : 0;
    return L ? L->y : NULL;
}

float *vaec_net_dout(vaec_net *net, int64_t *ld) {
    const vaec_layer *L = holder(net, net->n - 1);
    *ld = L ? L->ld : 0;
    return L ? L->g : NULL;
}

void vaec_net_backward(vaec_net *net, const float *x, int64_t ldx, int64_t R, float *dx, int64_t lddx) {
    int last = net->n - 1;
    while (last >= 0 && (net->layer[last].fused || net->layer[last].alias)) last--;
    if (last < 0) return;
    vaec_layer *top = &net->layer[last];
    /* the caller gave dL/d(output); the layers take dL/d(before their activation) */
    if (top->act != VAEC_ACT_IDENTITY)
        vaec_rows_act_backward(net->pool, top->act, top->g, top->ld, top->y, top->ld, R, vaec_dims_size(top->out));
    for (int i = last; i >= 0; i--) {
        vaec_layer *L = &net->layer[i];
        if (L->fused || L->alias) continue;
        const vaec_layer *below = holder(net, i - 1);
        const float *in = below ? below->y : x;
        int64_t ldi = below ? below->ld : ldx;
        float *din = below ? below->g : dx;
        int64_t lddin = below ? below->ld : lddx;
        vaec_act in_act = below ? below->act : VAEC_ACT_IDENTITY;
        const uint64_t bit = (uint64_t)1 << i;
        const int accumulate = !(net->track && (net->fresh & bit));
        net->fresh &= ~bit;
        L->ops->backward(net, L, din, lddin, in_act, L->g, L->ld, in, ldi, R, accumulate);
    }
}

/* ------------------------------------------------------------ the record */
void vaec_layer_record_put(unsigned char *p, const vaec_layer_spec *s) {
    int32_t i32[12] = {s->kind, s->act, 0, 0, s->kernel[0], s->kernel[1], s->stride[0], s->stride[1],
                       s->padding[0], s->padding[1], s->output_padding[0], s->output_padding[1]};
    memcpy(p, i32, 8);
    memcpy(p + 8, &s->out, 8);
    memcpy(p + 16, i32 + 4, 32);
    memcpy(p + 48, &s->scale, 4);
    memcpy(p + 52, &s->slope, 4);
    memcpy(p + 56, s->shape, 24);
    memcpy(p + 80, &s->classes, 8);
}

void vaec_layer_record_get(const unsigned char *p, vaec_layer_spec *s) {
    int32_t i32[8];
    memset(s, 0, sizeof *s);
    memcpy(&s->kind, p, 4);
    memcpy(&s->act, p + 4, 4);
    memcpy(&s->out, p + 8, 8);
    memcpy(i32, p + 16, 32);
    memcpy(&s->scale, p + 48, 4);
    memcpy(&s->slope, p + 52, 4);
    memcpy(s->shape, p + 56, 24);
    memcpy(&s->classes, p + 80, 8);
    for (int k = 0; k < 2; k++) {
        s->kernel[k] = i32[k];
        s->stride[k] = i32[2 + k];
        s->padding[k] = i32[4 + k];
        s->output_padding[k] = i32[6 + k];
    }
}

/* ------------------------------------------------------ gradient protocol */
typedef struct { int64_t lo, hi; } range;

void vaec_net_param_range(const vaec_net *net, int64_t *lo, int64_t *hi) {
    *lo = *hi = 0;
    int any = 0;
    for (int i = 0; i < net->n; i++) {
        const vaec_layer *L = &net->layer[i];
        if (L->p1 <= L->p0) continue;
        if (!any || L->p0 < *lo) *lo = L->p0;
        if (!any || L->p1 > *hi) *hi = L->p1;
        any = 1;
    }
}

void vaec_nets_grads_begin(vaec_arena *a, vaec_net *const *nets, int n) {
    /* the layers' ranges in arena order (insertion sort: a few dozen at most) */
    range r[4 * VAEC_NET_MAX_LAYERS];
    int nr = 0;
    for (int k = 0; k < n; k++) {
        vaec_net *net = nets[k];
        net->fresh = 0;
        net->track = 1;
        atomic_store(&net->nonfinite, 0);
        for (int i = 0; i < net->n; i++) {
            const vaec_layer *L = &net->layer[i];
            if (L->p1 <= L->p0) continue;
            net->fresh |= (uint64_t)1 << i;
            if (nr < (int)(sizeof r / sizeof r[0])) {
                int j = nr++;
                while (j > 0 && r[j - 1].lo > L->p0) { r[j] = r[j - 1]; j--; }
                r[j] = (range){L->p0, L->p1};
            }
        }
    }
    float *g = a->grads;
    int64_t at = 0;
    for (int j = 0; j < nr; j++) {
        if (r[j].lo > at) memset(g + at, 0, (size_t)(r[j].lo - at) * sizeof(float));
        if (r[j].hi > at) at = r[j].hi;
    }
    if (a->n > at) memset(g + at, 0, (size_t)(a->n - at) * sizeof(float));
}

int vaec_nets_grads_end(vaec_net *const *nets, int n) {
    int bad = 0;
    for (int k = 0; k < n; k++) {
        vaec_net *net = nets[k];
        for (int i = 0; i < net->n; i++) {
            const vaec_layer *L = &net->layer[i];
            if (net->fresh & ((uint64_t)1 << i))
                memset(net->arena->grads + L->p0, 0, (size_t)(L->p1 - L->p0) * sizeof(float));
        }
        net->fresh = 0;
        net->track = 0;
        bad |= atomic_load(&net->nonfinite);
    }
    return bad;
}

/* ------------------------------------------------- row-parallel activations */
typedef struct { vaec_act act; float *d; int64_t ldd; const float *y; int64_t ldy, R, n; } rows_act_job;

static void act_backward_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    rows_act_job *j = ctx;
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
    for (int64_t r = a; r < b; r++) vaec_act_backward(j->act, j->d + r * j->ldd, j->y + r * j->ldy, j->n);
}

static void act_forward_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    rows_act_job *j = ctx;
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
    for (int64_t r = a; r < b; r++) vaec_act_forward(j->act, j->d + r * j->ldd, j->y + r * j->ldy, j->n);
}

void vaec_rows_act_backward(vaec_pool *pool, vaec_act act, float *d, int64_t ldd, const float *y, int64_t ldy,
                            int64_t R, int64_t n) {
    if (act == VAEC_ACT_IDENTITY || R <= 0) return;
    rows_act_job j = {act, d, ldd, y, ldy, R, n};
    vaec_pool_run(pool, act_backward_task, &j, vaec_ntasks(R, VAEC_ROW_GRAIN));
}

void vaec_rows_act_forward(vaec_pool *pool, vaec_act act, float *y, int64_t ldy, const float *x, int64_t ldx,
                           int64_t R, int64_t n) {
    if (R <= 0) return;
    rows_act_job j = {act, y, ldy, x, ldx, R, n};
    vaec_pool_run(pool, act_forward_task, &j, vaec_ntasks(R, VAEC_ROW_GRAIN));
}
