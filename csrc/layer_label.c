/* layer_label.c -- M2's Linear on [x, onehot(y)] (Kingma et al. 2014): the weight is
 * (out, in + C), torch naming, and the concatenation is never built:
 *   forward   y(E, OUT) = act(x(E/reps, IN) . W_x^T + b + W_y[:, cls(e)]): the GEMM on the x
 *             columns once per input row, then each of its `reps` output rows adds the label
 *             column its class picks (net->labels: the class of every output row);
 *   backward  dW_x (OUT, IN) += S^T . x with S the sum of each input row's reps gradients,
 *             db += colsum(g), dW_y[:, c] += the sum of g over the rows of class c (float64,
 *             in row order), din(E, IN) = (g . W_x) * in_act'(x) when asked (reps = 1).
 * For an unlabelled batch every x row is replicated once per class (reps = C) and its x
 * product is shared by the copies. The gradients are always added (M2 zeroes its arena's
 * gradients before a call). */
#include "net.h"
#include <string.h>

#define TILE_DOUBLES 4096

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static vaec_status label_shape(vaec_layer *L) {
    if (L->spec.out < 1 || L->spec.out > ((int64_t)1 << 26) || L->spec.classes < 1 || L->spec.classes > 1024)
        return vaec_fail(VAEC_ERR_ARG, "%s: a label layer needs 1 to 2^26 outputs and 1 to 1024 classes", L->names[0]);
    L->out = vaec_dims_flat(L->spec.out * L->heads);
    return VAEC_OK;
}

static vaec_status label_params(vaec_layer *L, vaec_arena *a) {
    const char *names[2] = {L->names[0], L->names[1]};
    return vaec_arena_add_linear(a, &L->lin, names, L->heads, vaec_dims_size(L->in) + L->spec.classes, L->spec.out);
}

/* ws: the x products (or, backward, their copies' sums) of up to `rows` input rows, then
 * the label columns transposed, W_y^T (C, OUT) */
static int64_t label_plan(vaec_layer *L, float *buf, int64_t rows) {
    const int64_t ld = align16(L->lin.out);
    (void)buf;
    return rows * ld + L->spec.classes * ld;
}

typedef struct {
    const vaec_layer *L;
    const int32_t *cls;
    float *out;
    const float *src;
    int64_t ld, E, reps;
    const float *wyT;
} expand_job;

/* out[e] = act(src[e / reps] + W_y[:, cls(e)]) */
static void expand_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    expand_job *j = ctx;
    const int64_t O = j->L->lin.out;
    int64_t a, b;
    vaec_task_rows(t, j->E, &a, &b);
    for (int64_t e = a; e < b; e++) {
        const float *s = j->src + (e / j->reps) * j->ld, *w = j->wyT + (int64_t)j->cls[e] * j->ld;
        float *o = j->out + e * j->ld;
        for (int64_t i = 0; i < O; i++) o[i] = s[i] + w[i];
        if (j->L->act != VAEC_ACT_IDENTITY) vaec_act_forward(j->L->act, o, o, O);
    }
}

/* y(E, OUT) = act(x(E/reps, IN) . W_x^T + b + W_y[:, cls]) */
static void label_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                          int64_t E) {
    const float *P = net->arena->params;
    const vaec_linear *l = &L->lin;
    const int64_t O = l->out, Din = l->in - L->spec.classes, C = L->spec.classes, reps = net->labels.reps;
    const int64_t Rin = E / reps;
    float *wyT = L->ws + net->rows * align16(O);
    const float *W = P + l->W;
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++) wyT[c * ldy + o] = W[o * l->in + Din + c];
    float *dst = reps > 1 ? L->ws : y;
    for (int64_t r = 0; r < Rin; r++) memcpy(dst + r * ldy, P + l->b, (size_t)O * sizeof(float));
    vaec_sgemm(net->pool, 0, 1, Rin, O, Din, x, ldx, W, l->in, 1.0f, dst, ldy);
    expand_job j = {L, net->labels.cls, y, dst, ldy, E, reps, wyT};
    vaec_pool_run(net->pool, expand_task, &j, vaec_ntasks(E, VAEC_ROW_GRAIN));
}

/* S[r] = sum_c g[r*reps + c], c in order */
typedef struct { const float *g; float *S; int64_t ld, O, rows, reps; } reduce_job;
static void reduce_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reduce_job *j = ctx;
    int64_t a, b;
    vaec_task_rows(t, j->rows, &a, &b);
    for (int64_t r = a; r < b; r++) {
        float *s = j->S + r * j->ld;
        const float *d = j->g + r * j->reps * j->ld;
        memcpy(s, d, (size_t)j->O * sizeof(float));
        for (int64_t c = 1; c < j->reps; c++)
            for (int64_t i = 0; i < j->O; i++) s[i] += d[c * j->ld + i];
    }
}

/* db += the column sums of dsum's rows (float64, rows in order), and the label columns:
 * dW[o, Din + c] += the sum of g[e, o] over the rows e of class c (float64, in order) */
typedef struct {
    const int32_t *cls; int64_t C, E; const float *dsum; int64_t nsum; const float *g; int64_t ld, O, Din, tile;
    float *gW, *gb; int64_t ldw;
} colsum_job;
static void colsum_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    colsum_job *j = ctx;
    const int64_t C = j->C;
    int64_t o0 = t * j->tile, o1 = min64(o0 + j->tile, j->O);
    double acc[TILE_DOUBLES];
    for (int64_t o = o0; o < o1; o++) acc[o - o0] = 0.0;
    for (int64_t r = 0; r < j->nsum; r++)
        for (int64_t o = o0; o < o1; o++) acc[o - o0] += j->dsum[r * j->ld + o];
    for (int64_t o = o0; o < o1; o++) j->gb[o] += (float)acc[o - o0];
    int64_t w = o1 - o0;
    for (int64_t i = 0; i < w * C; i++) acc[i] = 0.0;
    for (int64_t e = 0; e < j->E; e++) {
        double *a = acc + (int64_t)j->cls[e] * w;
        const float *d = j->g + e * j->ld + o0;
        for (int64_t o = 0; o < w; o++) a[o] += d[o];
    }
    for (int64_t c = 0; c < C; c++)
        for (int64_t o = 0; o < w; o++) j->gW[(o0 + o) * j->ldw + j->Din + c] += (float)acc[c * w + o];
}

/* dW_x += S(E/reps, OUT)^T . x, db += colsum(g), dW_y += g by class, din(E, IN) = (g . W_x) * in_act'(x) */
static void label_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                           int64_t ldg, const float *x, int64_t ldx, int64_t E, int accumulate) {
    const vaec_linear *l = &L->lin;
    const int64_t O = l->out, C = L->spec.classes, Din = l->in - C, reps = net->labels.reps, Rin = E / reps;
    float *G = net->arena->grads;
    if (!accumulate) memset(G + L->p0, 0, (size_t)(L->p1 - L->p0) * sizeof(float));
    const float *dsum = g;
    if (reps > 1) {
        reduce_job rj = {g, L->ws, ldg, O, Rin, reps};
        vaec_pool_run(net->pool, reduce_task, &rj, vaec_ntasks(Rin, VAEC_ROW_GRAIN));
        dsum = L->ws;
    }
    float *gW = G + l->W;
    vaec_sgemm(net->pool, 1, 0, O, Din, Rin, dsum, ldg, x, ldx, 1.0f, gW, l->in);
    int64_t tile = TILE_DOUBLES / C;
    if (tile > 256) tile = 256;
    colsum_job cj = {net->labels.cls, C, E, dsum, Rin, g, ldg, O, Din, tile, gW, G + l->b, l->in};
    vaec_pool_run(net->pool, colsum_task, &cj, vaec_ntasks(O, tile));
    if (din) {
        vaec_sgemm(net->pool, 0, 0, E, Din, O, g, ldg, net->arena->params + l->W, l->in, 0.0f, din, lddin);
        vaec_rows_act_backward(net->pool, in_act, din, lddin, x, ldx, E, Din);
    }
}

const vaec_layer_ops vaec_layer_label = {
    "label Linear", 1, label_shape, label_params, label_plan, label_forward, label_backward, 0,
};
