/* m2.c -- the semi-supervised M2 model (Kingma et al. 2014): classifier q(y|x),
 * encoder q(z|x,y), decoder p(x|y,z), the labelled and unlabelled bounds, their full
 * backward pass (including through q(y|x) in the unlabelled term) and Adam. See m2.h.
 *
 * A call is processed in chunks: labelled chunks of up to M2_ROWS rows (one encoder row
 * per row), unlabelled chunks of up to M2_ROWS / C rows (C encoder rows per row, row r's
 * copy for class c at index r*C + c). Per encoder row e: its parent x row p(e), its
 * class c(e) and the weight s(e) of its -L in the loss (wl, or wu q(c|x)), so one pass
 * serves both parts. Tasks split rows or output tiles; every sum runs in a fixed order. */
#include "m2.h"
#include "internal.h"
#include "elem.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

#define M2_ROWS 256
#define ROW_GRAIN 8
#define TILE_DOUBLES 4096

/* Streams of a call's noise: counter * 8 + purpose. (Streams 2 mod 4 under the model
 * seed initialize the arena; none of these is 2 mod 4.) */
enum { ST_EPS_L = 0, ST_BIN_L = 1, ST_EPS_U = 3, ST_BIN_U = 4 };
static uint64_t stream_id(uint64_t counter, int purpose) { return counter * 8 + (uint64_t)purpose; }

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

struct vaec_m2 {
    vaec_m2_config cfg;
    vaec_pool *pool;
    vaec_arena arena;
    int nh, nc;                                   /* encoder/decoder and classifier hidden layers */
    vaec_linear cls[VAEC_MAX_HIDDEN + 1];         /* cls[nc]: the output layer (C logits) */
    vaec_linear enc[VAEC_MAX_HIDDEN + 1];         /* enc[0]: in = D + C; enc[nh]: mu | logvar */
    vaec_linear dec[VAEC_MAX_HIDDEN + 1];         /* dec[0]: in = Z + C; dec[nh]: out (| logvar) */
    uint64_t rng_seed, rng_counter;
    /* workspace, ws_rows rows per buffer (row strides align16(width)) */
    int64_t ws_rows;
    float *ws;
    float *w_x, *w_A, *w_cls[VAEC_MAX_HIDDEN + 1], *w_logq, *d_cls[VAEC_MAX_HIDDEN + 1];
    float *w_enc[VAEC_MAX_HIDDEN + 1], *w_eps, *w_z, *w_dec[VAEC_MAX_HIDDEN + 1];
    float *d_enc[VAEC_MAX_HIDDEN + 1], *d_z, *d_dec[VAEC_MAX_HIDDEN + 1];
    float *wyT_enc, *wyT_dec;                     /* label columns of enc[0], dec[0], transposed (C rows) */
    float *e_scale;
    int32_t *e_cls;
    double *e_rec, *e_kl;
};

/* ---------------------------------------------------------------- config */
static vaec_status check_config(const vaec_m2_config *c) {
    if (c->input_dim < 1 || c->input_dim > (1 << 26))
        return vaec_fail(VAEC_ERR_ARG, "input_dim must be between 1 and 2^26, got %lld", (long long)c->input_dim);
    if (c->latent_dim < 1 || c->latent_dim > (1 << 20))
        return vaec_fail(VAEC_ERR_ARG, "latent_dim must be between 1 and 2^20, got %lld", (long long)c->latent_dim);
    if (c->n_classes < 2 || c->n_classes > VAEC_M2_MAX_CLASSES)
        return vaec_fail(VAEC_ERR_ARG, "n_classes must be between 2 and %d, got %lld", VAEC_M2_MAX_CLASSES,
                         (long long)c->n_classes);
    if (c->n_hidden < 0 || c->n_hidden > VAEC_MAX_HIDDEN)
        return vaec_fail(VAEC_ERR_ARG, "hidden must have at most %d layers, got %d", VAEC_MAX_HIDDEN, c->n_hidden);
    if (c->n_cls_hidden < 0 || c->n_cls_hidden > VAEC_MAX_HIDDEN)
        return vaec_fail(VAEC_ERR_ARG, "classifier_hidden must have at most %d layers, got %d", VAEC_MAX_HIDDEN,
                         c->n_cls_hidden);
    for (int i = 0; i < c->n_hidden; i++)
        if (c->hidden[i] < 1 || c->hidden[i] > (1 << 20))
            return vaec_fail(VAEC_ERR_ARG, "hidden[%d] must be between 1 and 2^20, got %lld", i, (long long)c->hidden[i]);
    for (int i = 0; i < c->n_cls_hidden; i++)
        if (c->cls_hidden[i] < 1 || c->cls_hidden[i] > (1 << 20))
            return vaec_fail(VAEC_ERR_ARG, "classifier_hidden[%d] must be between 1 and 2^20, got %lld", i,
                             (long long)c->cls_hidden[i]);
    if ((unsigned)c->activation >= VAEC_ACT_COUNT || c->activation == VAEC_ACT_IDENTITY)
        return vaec_fail(VAEC_ERR_ARG, "activation: unknown code %d", (int)c->activation);
    if (c->likelihood != VAEC_LIK_BERNOULLI && c->likelihood != VAEC_LIK_GAUSSIAN)
        return vaec_fail(VAEC_ERR_ARG, "likelihood: unknown code %d", (int)c->likelihood);
    if (!isfinite(c->alpha) || c->alpha < 0)
        return vaec_fail(VAEC_ERR_ARG, "alpha must be a finite number >= 0, got %g", c->alpha);
    if (c->threads > 256) return vaec_fail(VAEC_ERR_ARG, "threads must be at most 256, got %d", c->threads);
    return VAEC_OK;
}

/* Unlabelled rows per chunk, and the encoder rows a chunk can hold. */
static int64_t unl_rows(const vaec_m2 *m) {
    int64_t r = M2_ROWS / m->cfg.n_classes;
    return r < 1 ? 1 : r;
}

static vaec_status alloc_workspace(vaec_m2 *m) {
    const vaec_m2_config *c = &m->cfg;
    const int64_t D = c->input_dim, Z = c->latent_dim, C = c->n_classes;
    int64_t rows = unl_rows(m) * C;
    if (rows < M2_ROWS) rows = M2_ROWS;
    rows = (rows + ROW_GRAIN - 1) / ROW_GRAIN * ROW_GRAIN;
    int64_t per_row = align16(D) + align16(m->enc[0].out) + align16(C) + 2 * align16(Z);
    for (int i = 0; i <= m->nc; i++) per_row += 2 * align16(m->cls[i].out);
    for (int i = 0; i <= m->nh; i++) per_row += 2 * align16(m->enc[i].out) + 2 * align16(m->dec[i].out);
    per_row += align16(Z) + 2 + 4 + 4;  /* d_z, scale + class, two doubles (+ pad) */
    int64_t extra = C * (align16(m->enc[0].out) + align16(m->dec[0].out));
    if (per_row > (INT64_MAX / 8) / rows) return vaec_fail(VAEC_ERR_NOMEM, "workspace size overflows");
    float *ws = vaec_alloc((size_t)(rows * per_row + extra + 64), sizeof(float));
    if (!ws) return vaec_fail(VAEC_ERR_NOMEM, "out of memory for a workspace of %lld rows", (long long)rows);
    m->ws = ws;
    m->ws_rows = rows;
    float *p = ws;
#define TAKE(ptr, cols) do { (ptr) = p; p += rows * align16(cols); } while (0)
    TAKE(m->w_x, D);
    TAKE(m->w_A, m->enc[0].out);
    TAKE(m->w_logq, C);
    TAKE(m->w_eps, Z);
    TAKE(m->w_z, Z);
    TAKE(m->d_z, Z);
    for (int i = 0; i <= m->nc; i++) { TAKE(m->w_cls[i], m->cls[i].out); TAKE(m->d_cls[i], m->cls[i].out); }
    for (int i = 0; i <= m->nh; i++) {
        TAKE(m->w_enc[i], m->enc[i].out);
        TAKE(m->d_enc[i], m->enc[i].out);
        TAKE(m->w_dec[i], m->dec[i].out);
        TAKE(m->d_dec[i], m->dec[i].out);
    }
#undef TAKE
    m->e_scale = p;
    p += rows;
    m->e_cls = (int32_t *)p;
    p += rows;
    p += (16 - ((p - ws) & 15)) & 15;  /* 64-byte alignment for the doubles */
    m->e_rec = (double *)p;
    p += 2 * rows;
    m->e_kl = (double *)p;
    p += 2 * rows;
    m->wyT_enc = p;
    p += C * align16(m->enc[0].out);
    m->wyT_dec = p;
    return VAEC_OK;
}

vaec_status vaec_m2_create(vaec_m2 **out, const vaec_m2_config *cfg) {
    *out = NULL;
    vaec_status st = check_config(cfg);
    if (st) return st;
    vaec_m2 *m = vaec_alloc(1, sizeof *m);
    if (!m) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->nh = cfg->n_hidden;
    m->nc = cfg->n_cls_hidden;
    const int64_t D = cfg->input_dim, Z = cfg->latent_dim, C = cfg->n_classes;
    const int nh = m->nh, nc = m->nc;
    vaec_arena *A = &m->arena;
    char name[VAEC_NAME_LEN];
    const char *nm[1] = {name};
    int64_t prev = D;
    for (int i = 0; i < nc && !st; i++) {
        snprintf(name, sizeof name, "classifier.%d", i);
        st = vaec_arena_add_linear(A, &m->cls[i], nm, 1, prev, cfg->cls_hidden[i]);
        prev = cfg->cls_hidden[i];
    }
    const char *cls_out[1] = {"classifier.out"};
    if (!st) st = vaec_arena_add_linear(A, &m->cls[nc], cls_out, 1, prev, C);
    prev = D + C;
    for (int i = 0; i < nh && !st; i++) {
        snprintf(name, sizeof name, "encoder.%d", i);
        st = vaec_arena_add_linear(A, &m->enc[i], nm, 1, prev, cfg->hidden[i]);
        prev = cfg->hidden[i];
    }
    const char *enc_heads[2] = {"encoder.mu", "encoder.logvar"};
    if (!st) st = vaec_arena_add_linear(A, &m->enc[nh], enc_heads, 2, prev, Z);
    prev = Z + C;
    for (int i = 0; i < nh && !st; i++) {
        snprintf(name, sizeof name, "decoder.%d", i);
        int64_t w = cfg->hidden[nh - 1 - i];
        st = vaec_arena_add_linear(A, &m->dec[i], nm, 1, prev, w);
        prev = w;
    }
    const char *dec_heads[2] = {"decoder.out", "decoder.logvar"};
    if (!st)
        st = vaec_arena_add_linear(A, &m->dec[nh], dec_heads, cfg->likelihood == VAEC_LIK_GAUSSIAN ? 2 : 1, prev, D);
    if (!st) st = vaec_arena_alloc(A, cfg->seed);
    if (!st) st = alloc_workspace(m);
    if (!st) st = vaec_pool_create(&m->pool, cfg->threads);
    if (st) { vaec_m2_destroy(m); return st; }
    m->rng_seed = cfg->seed;
    m->rng_counter = 0;
    *out = m;
    return VAEC_OK;
}

void vaec_m2_destroy(vaec_m2 *m) {
    if (!m) return;
    vaec_pool_destroy(m->pool);
    vaec_arena_free(&m->arena);
    vaec_free(m->ws);
    vaec_free(m);
}

const vaec_m2_config *vaec_m2_config_get(const vaec_m2 *m) { return &m->cfg; }
int vaec_m2_threads(const vaec_m2 *m) { return vaec_pool_size(m->pool); }
vaec_arena *vaec_m2_arena(vaec_m2 *m) { return &m->arena; }
vaec_status vaec_m2_adam_step(vaec_m2 *m, float lr) { return vaec_arena_adam_step(&m->arena, m->pool, lr); }
uint64_t vaec_m2_rng_seed(const vaec_m2 *m) { return m->rng_seed; }
uint64_t vaec_m2_rng_counter(const vaec_m2 *m) { return m->rng_counter; }
void vaec_m2_rng_set(vaec_m2 *m, uint64_t seed, uint64_t counter) {
    m->rng_seed = seed;
    m->rng_counter = counter;
}

/* ------------------------------------------------------------ chunk state */
typedef struct {
    vaec_m2 *m;
    const vaec_input *x;
    const int32_t *y;          /* labels of the whole input (labelled part), or NULL */
    int64_t r0, R;             /* x rows [r0, r0+R) */
    int64_t reps, E;           /* encoder rows per x row (1 or C), E = R * reps */
    const float *xin;          /* R prepared rows, stride ldx */
    int64_t ldx;
    const float *eps;          /* the part's explicit noise (whole input) or NULL */
    uint64_t seed, eps_stream, bin_stream;
    float scale;               /* wl or wu */
    double alpha;
    int grad;
    double *row_out;           /* per x row of the whole input: L(x,y) or U(x); may be NULL */
    double sums[3];            /* -L, -log q, -U over the chunk */
} chunk;

typedef void (*row_fn)(chunk *k, int64_t r);
typedef struct { chunk *k; row_fn fn; int64_t n; } rows_job;
static void rows_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    rows_job *j = ctx;
    int64_t a = t * ROW_GRAIN, b = min64(a + ROW_GRAIN, j->n);
    for (int64_t r = a; r < b; r++) j->fn(j->k, r);
}
static void par_rows(chunk *k, row_fn fn, int64_t n) {
    rows_job j = {k, fn, n};
    vaec_pool_run(k->m->pool, rows_task, &j, vaec_ntasks(n, ROW_GRAIN));
}

/* activations over whole ROW_GRAIN row blocks (rows are padded to ROW_GRAIN) */
typedef struct { vaec_act act; float *y; float *d; int64_t cols; } act_job;
static void act_fwd_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    act_job *j = ctx;
    int64_t off = t * ROW_GRAIN * j->cols;
    vaec_act_forward(j->act, j->y + off, j->y + off, ROW_GRAIN * j->cols);
}
static void act_bwd_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    act_job *j = ctx;
    int64_t off = t * ROW_GRAIN * j->cols;
    vaec_act_backward(j->act, j->d + off, j->y + off, ROW_GRAIN * j->cols);
}
static void par_act_forward(vaec_m2 *m, float *y, int64_t rows, int64_t cols) {
    act_job j = {m->cfg.activation, y, NULL, cols};
    vaec_pool_run(m->pool, act_fwd_task, &j, vaec_ntasks(rows, ROW_GRAIN));
}
static void par_act_backward(vaec_m2 *m, float *d, const float *y, int64_t rows, int64_t cols) {
    act_job j = {m->cfg.activation, (float *)y, d, cols};
    vaec_pool_run(m->pool, act_bwd_task, &j, vaec_ntasks(rows, ROW_GRAIN));
}

/* ------------------------------------------------------------------ input */
static void input_row(chunk *k, int64_t r) {
    const int64_t D = k->x->dim, row = k->r0 + r;
    float *dst = k->m->w_x + r * align16(D);
    if (k->x->dtype == VAEC_U8) {
        const uint8_t *s = (const uint8_t *)k->x->data + row * D;
        for (int64_t d = 0; d < D; d++) dst[d] = (float)s[d] * (1.0f / 255.0f);
    } else {
        memcpy(dst, (const float *)k->x->data + row * D, (size_t)D * sizeof(float));
    }
    if (k->x->binarize) {
        float u[256];
        for (int64_t d0 = 0; d0 < D; d0 += 256) {
            int64_t cnt = min64(D - d0, 256);
            vaec_rng_uniform(u, cnt, k->seed, k->bin_stream, (uint64_t)(row * D + d0));
            for (int64_t d = 0; d < cnt; d++) dst[d0 + d] = u[d] < dst[d0 + d] ? 1.0f : 0.0f;
        }
    }
}

static void prepare_input(chunk *k) {
    if (k->x->dtype == VAEC_F32 && !k->x->binarize) {
        k->ldx = k->x->dim;
        k->xin = (const float *)k->x->data + k->r0 * k->x->dim;
        return;
    }
    par_rows(k, input_row, k->R);
    k->ldx = align16(k->x->dim);
    k->xin = k->m->w_x;
}

/* ----------------------------------------------------------------- layers */
static void layer_forward(vaec_m2 *m, const vaec_linear *L, float *out, const float *in, int64_t ldi, int64_t R) {
    vaec_dense_forward_strided(m->pool, out, align16(L->out), in, ldi, m->arena.params + L->W,
                               m->arena.params + L->b, R, L->in, L->out);
}
static void layer_backward(vaec_m2 *m, const vaec_linear *L, float *din, int64_t ldin, const float *dout,
                           const float *in, int64_t ldi, int64_t R) {
    vaec_dense_backward_strided(m->pool, din, ldin, m->arena.grads + L->W, m->arena.grads + L->b, dout,
                                align16(L->out), in, ldi, m->arena.params + L->W, R, L->in, L->out);
}

/* wyT (C, align16(O)) = the label columns [Din, Din + C) of L's weight, transposed. */
static void gather_label_columns(vaec_m2 *m, const vaec_linear *L, int64_t Din, float *wyT) {
    const float *W = m->arena.params + L->W;
    const int64_t C = m->cfg.n_classes, O = L->out, ldo = align16(O);
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++) wyT[c * ldo + o] = W[o * L->in + Din + c];
}

/* The concatenation layer, forward: out[e] = W_x in[e / reps] + b + W_y[:, class(e)].
 * With reps > 1 the GEMM runs once per input row into tmp, then each copy adds its
 * label column. */
typedef struct { chunk *k; float *out; const float *src; int64_t lds, ldo, O, reps; const float *wyT; } expand_job;
static void expand_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    expand_job *j = ctx;
    int64_t a = t * ROW_GRAIN, b = min64(a + ROW_GRAIN, j->k->E);
    for (int64_t e = a; e < b; e++) {
        const float *s = j->src + (e / j->reps) * j->lds, *w = j->wyT + (int64_t)j->k->m->e_cls[e] * j->ldo;
        float *o = j->out + e * j->ldo;
        for (int64_t i = 0; i < j->O; i++) o[i] = s[i] + w[i];
    }
}

static void concat_forward(chunk *k, const vaec_linear *L, int64_t Din, const float *in, int64_t ldi,
                           int64_t Rin, int64_t reps, float *out, float *tmp, const float *wyT) {
    vaec_m2 *m = k->m;
    const int64_t O = L->out, ldo = align16(O);
    float *dst = reps > 1 ? tmp : out;
    const float *b = m->arena.params + L->b;
    for (int64_t r = 0; r < Rin; r++) memcpy(dst + r * ldo, b, (size_t)O * sizeof(float));
    vaec_sgemm(m->pool, 0, 1, Rin, O, Din, in, ldi, m->arena.params + L->W, L->in, 1.0f, dst, ldo);
    expand_job j = {k, out, dst, ldo, ldo, O, reps, wyT};
    vaec_pool_run(m->pool, expand_task, &j, vaec_ntasks(k->E, ROW_GRAIN));
}

/* sum of the reps copies of each row: S[r] = sum_c dpre[r*reps + c], c in order */
typedef struct { const float *dpre; float *S; int64_t ld, O, rows, reps; } reduce_job;
static void reduce_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reduce_job *j = ctx;
    int64_t a = t * ROW_GRAIN, b = min64(a + ROW_GRAIN, j->rows);
    for (int64_t r = a; r < b; r++) {
        float *s = j->S + r * j->ld;
        const float *d = j->dpre + r * j->reps * j->ld;
        memcpy(s, d, (size_t)j->O * sizeof(float));
        for (int64_t c = 1; c < j->reps; c++)
            for (int64_t i = 0; i < j->O; i++) s[i] += d[c * j->ld + i];
    }
}

/* db += column sums of rows (float64, rows in order), and the label columns of dW:
 * dW[o, Din + c] += sum of dpre[e, o] over the rows e of class c (float64, in order). */
typedef struct {
    chunk *k; const float *dsum; int64_t nsum; const float *dpre; int64_t ld, O, Din, tile;
    float *gW, *gb; int64_t ldw;
} colsum_job;
static void colsum_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    colsum_job *j = ctx;
    const int64_t C = j->k->m->cfg.n_classes;
    int64_t o0 = t * j->tile, o1 = min64(o0 + j->tile, j->O);
    double acc[TILE_DOUBLES];
    for (int64_t o = o0; o < o1; o++) acc[o - o0] = 0.0;
    for (int64_t r = 0; r < j->nsum; r++)
        for (int64_t o = o0; o < o1; o++) acc[o - o0] += j->dsum[r * j->ld + o];
    for (int64_t o = o0; o < o1; o++) j->gb[o] += (float)acc[o - o0];
    int64_t w = o1 - o0;
    for (int64_t i = 0; i < w * C; i++) acc[i] = 0.0;
    for (int64_t e = 0; e < j->k->E; e++) {
        double *a = acc + (int64_t)j->k->m->e_cls[e] * w;
        const float *d = j->dpre + e * j->ld + o0;
        for (int64_t o = 0; o < w; o++) a[o] += d[o];
    }
    for (int64_t c = 0; c < C; c++)
        for (int64_t o = 0; o < w; o++) j->gW[(o0 + o) * j->ldw + j->Din + c] += (float)acc[c * w + o];
}

/* Backward of concat_forward: adds dW_x, db, dW_y; writes din (E rows) when given. */
static void concat_backward(chunk *k, const vaec_linear *L, int64_t Din, const float *in, int64_t ldi,
                            int64_t Rin, int64_t reps, const float *dpre, float *S, float *din, int64_t ldin) {
    vaec_m2 *m = k->m;
    const int64_t O = L->out, ld = align16(O), C = m->cfg.n_classes;
    const float *dsum = dpre;
    if (reps > 1) {
        reduce_job rj = {dpre, S, ld, O, Rin, reps};
        vaec_pool_run(m->pool, reduce_task, &rj, vaec_ntasks(Rin, ROW_GRAIN));
        dsum = S;
    }
    float *gW = m->arena.grads + L->W;
    vaec_sgemm(m->pool, 1, 0, O, Din, Rin, dsum, ld, in, ldi, 1.0f, gW, L->in);
    int64_t tile = TILE_DOUBLES / C;
    if (tile > 256) tile = 256;
    colsum_job cj = {k, dsum, Rin, dpre, ld, O, Din, tile, gW, m->arena.grads + L->b, L->in};
    vaec_pool_run(m->pool, colsum_task, &cj, vaec_ntasks(O, tile));
    if (din) vaec_sgemm(m->pool, 0, 0, k->E, Din, O, dpre, ld, m->arena.params + L->W, L->in, 0.0f, din, ldin);
}

/* ------------------------------------------------------------- classifier */
static void logsoftmax_row(chunk *k, int64_t r) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    const float *l = m->w_cls[m->nc] + r * lc;
    float *lq = m->w_logq + r * lc;
    float mx = l[0];
    for (int64_t c = 1; c < C; c++) mx = l[c] > mx ? l[c] : mx;
    double s = 0.0;
    for (int64_t c = 0; c < C; c++) s += exp((double)l[c] - mx);
    double lse = mx + log(s);
    for (int64_t c = 0; c < C; c++) lq[c] = (float)((double)l[c] - lse);
}

static void classifier_forward(chunk *k) {
    vaec_m2 *m = k->m;
    const float *h = k->xin;
    int64_t ldh = k->ldx;
    for (int i = 0; i <= m->nc; i++) {
        layer_forward(m, &m->cls[i], m->w_cls[i], h, ldh, k->R);
        if (i < m->nc) par_act_forward(m, m->w_cls[i], k->R, align16(m->cls[i].out));
        h = m->w_cls[i];
        ldh = align16(m->cls[i].out);
    }
    par_rows(k, logsoftmax_row, k->R);
}

static void classifier_backward(chunk *k) {
    vaec_m2 *m = k->m;
    for (int i = m->nc; i >= 0; i--) {
        const float *in = i ? m->w_cls[i - 1] : k->xin;
        int64_t ldi = i ? align16(m->cls[i - 1].out) : k->ldx;
        float *din = i ? m->d_cls[i - 1] : NULL;
        layer_backward(m, &m->cls[i], din, i ? ldi : 0, m->d_cls[i], in, ldi, k->R);
        if (i) par_act_backward(m, m->d_cls[i - 1], m->w_cls[i - 1], k->R, ldi);
    }
}

/* ------------------------------------------------------------ z and KL */
static void setup_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, r = e / k->reps;
    if (k->y) {
        m->e_cls[e] = k->y[k->r0 + r];
        m->e_scale[e] = k->scale;
    } else {
        int32_t c = (int32_t)(e % C);
        m->e_cls[e] = c;
        m->e_scale[e] = k->scale * expf(m->w_logq[r * align16(C) + c]);
    }
}

/* KL per row; with grad, d(mu, logvar) = s(e) dKL; eps drawn or copied; z = mu + sigma eps */
static void latent_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t Z = m->cfg.latent_dim, lh = align16(2 * Z), lz = align16(Z);
    const float *mu = m->w_enc[m->nh] + e * lh, *lv = mu + Z;
    double kl = 0.0;
    for (int64_t i = 0; i < Z; i++) kl += (double)mu[i] * mu[i] + exp((double)lv[i]) - 1.0 - lv[i];
    m->e_kl[e] = 0.5 * kl;
    m->e_rec[e] = 0.0;
    float *eps = m->w_eps + e * lz, *z = m->w_z + e * lz;
    /* noise index: (x row of the whole input) * reps + copy */
    uint64_t idx = (uint64_t)((k->r0 * k->reps + e) * Z);
    if (k->eps) memcpy(eps, k->eps + idx, (size_t)Z * sizeof(float));
    else vaec_rng_normal(eps, Z, k->seed, k->eps_stream, idx);
    for (int64_t i = 0; i < Z; i++) z[i] = mu[i] + expf(0.5f * lv[i]) * eps[i];
    if (k->grad) {
        float s = m->e_scale[e], *dmu = m->d_enc[m->nh] + e * lh, *dlv = dmu + Z;
        for (int64_t i = 0; i < Z; i++) {
            dmu[i] = s * mu[i];
            dlv[i] = s * 0.5f * expm1f(lv[i]);
        }
    }
}

/* dz -> d(mu, logvar): dmu += dz, dlogvar += dz eps exp(logvar/2) / 2 */
static void reparam_back_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t Z = m->cfg.latent_dim, lh = align16(2 * Z), lz = align16(Z);
    const float *lv = m->w_enc[m->nh] + e * lh + Z, *eps = m->w_eps + e * lz, *dz = m->d_z + e * lz;
    float *dmu = m->d_enc[m->nh] + e * lh, *dlv = dmu + Z;
    for (int64_t i = 0; i < Z; i++) {
        dmu[i] += dz[i];
        dlv[i] += dz[i] * eps[i] * 0.5f * expf(0.5f * lv[i]);
    }
}

/* log p(x|y,z) per encoder row, and d_out = s(e) d(-log p)/d(out) */
static void lik_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t D = m->cfg.input_dim, lo = align16(m->dec[m->nh].out);
    const float *x = k->xin + (e / k->reps) * k->ldx, *o = m->w_dec[m->nh] + e * lo;
    float *d = k->grad ? m->d_dec[m->nh] + e * lo : NULL;
    if (m->cfg.likelihood == VAEC_LIK_BERNOULLI)
        vaec_elem_bernoulli_rows(1, D, o, lo, x, k->ldx, m->e_scale[e], d, lo, &m->e_rec[e]);
    else
        vaec_elem_gaussian_rows(1, D, o, lo, x, k->ldx, m->e_scale[e], d, lo, &m->e_rec[e]);
}

/* ---------------------------------------------------------------- chunks */
/* Per x row: the bound (L or U) and the classifier's logit gradient. */
static void bound_row(chunk *k, int64_t r) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    const double logC = log((double)C);
    const float *lq = m->w_logq + r * lc;
    float *dl = m->d_cls[m->nc] + r * lc;
    if (k->y) {
        double L = m->e_rec[r] - m->e_kl[r] - logC;
        if (k->row_out) k->row_out[k->r0 + r] = L;
        if (k->grad) {
            int32_t y = m->e_cls[r];
            /* d(-alpha log q_y)/dl_c = alpha (q_c - [c == y]) */
            for (int64_t c = 0; c < C; c++)
                dl[c] = (float)(k->scale * k->alpha * (exp((double)lq[c]) - (c == y ? 1.0 : 0.0)));
        }
    } else {
        /* f_c = -L(x,c) + log q_c ;  -U = sum_c q_c f_c ;  d(-U)/dl_c = q_c (f_c + U) */
        double f[VAEC_M2_MAX_CLASSES], negU = 0.0;
        for (int64_t c = 0; c < C; c++) {
            int64_t e = r * C + c;
            double L = m->e_rec[e] - m->e_kl[e] - logC;
            f[c] = -L + lq[c];
            negU += exp((double)lq[c]) * f[c];
        }
        if (k->row_out) k->row_out[k->r0 + r] = -negU;
        if (k->grad)
            for (int64_t c = 0; c < C; c++) dl[c] = (float)(k->scale * exp((double)lq[c]) * (f[c] - negU));
    }
}

static void run_chunk(chunk *k, int need_cls) {
    vaec_m2 *m = k->m;
    const int nh = m->nh;
    const int64_t D = m->cfg.input_dim, Z = m->cfg.latent_dim, lz = align16(Z), E = k->E;
    prepare_input(k);
    if (need_cls) classifier_forward(k);
    par_rows(k, setup_row, E);
    /* encoder */
    concat_forward(k, &m->enc[0], D, k->xin, k->ldx, k->R, k->reps, m->w_enc[0], m->w_A, m->wyT_enc);
    for (int i = 0; i <= nh; i++) {
        if (i) layer_forward(m, &m->enc[i], m->w_enc[i], m->w_enc[i - 1], align16(m->enc[i - 1].out), E);
        if (i < nh) par_act_forward(m, m->w_enc[i], E, align16(m->enc[i].out));
    }
    par_rows(k, latent_row, E);
    /* decoder */
    concat_forward(k, &m->dec[0], Z, m->w_z, lz, E, 1, m->w_dec[0], NULL, m->wyT_dec);
    for (int i = 0; i <= nh; i++) {
        if (i) layer_forward(m, &m->dec[i], m->w_dec[i], m->w_dec[i - 1], align16(m->dec[i - 1].out), E);
        if (i < nh) par_act_forward(m, m->w_dec[i], E, align16(m->dec[i].out));
    }
    par_rows(k, lik_row, E);
    par_rows(k, bound_row, k->R);
    /* sums in row order */
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    for (int64_t r = 0; r < k->R; r++) {
        if (k->y) {
            k->sums[0] -= m->e_rec[r] - m->e_kl[r] - log((double)C);
            if (need_cls) k->sums[1] -= m->w_logq[r * lc + m->e_cls[r]];
        } else {
            double negU = 0.0;
            for (int64_t c = 0; c < C; c++) {
                int64_t e = r * C + c;
                double lq = m->w_logq[r * lc + c];
                negU += exp(lq) * (-(m->e_rec[e] - m->e_kl[e] - log((double)C)) + lq);
            }
            k->sums[2] += negU;
        }
    }
    if (!k->grad) return;
    /* decoder backward, down to dz */
    for (int i = nh; i >= 1; i--) {
        int64_t ldi = align16(m->dec[i - 1].out);
        layer_backward(m, &m->dec[i], m->d_dec[i - 1], ldi, m->d_dec[i], m->w_dec[i - 1], ldi, E);
        par_act_backward(m, m->d_dec[i - 1], m->w_dec[i - 1], E, ldi);
    }
    concat_backward(k, &m->dec[0], Z, m->w_z, lz, E, 1, m->d_dec[0], NULL, m->d_z, lz);
    par_rows(k, reparam_back_row, E);
    /* encoder backward */
    for (int i = nh; i >= 1; i--) {
        int64_t ldi = align16(m->enc[i - 1].out);
        layer_backward(m, &m->enc[i], m->d_enc[i - 1], ldi, m->d_enc[i], m->w_enc[i - 1], ldi, E);
        par_act_backward(m, m->d_enc[i - 1], m->w_enc[i - 1], E, ldi);
    }
    concat_backward(k, &m->enc[0], D, k->xin, k->ldx, k->R, k->reps, m->d_enc[0], m->w_A, NULL, 0);
    if (need_cls) classifier_backward(k);
}

/* --------------------------------------------------------------- checks */
static vaec_status check_x(const vaec_m2 *m, const vaec_input *x, const char *name) {
    if (!x) return VAEC_OK;
    if (!x->data && x->n > 0) return vaec_fail(VAEC_ERR_ARG, "%s: no data", name);
    if (x->n < 0) return vaec_fail(VAEC_ERR_ARG, "%s: negative number of rows", name);
    if (x->dim != m->cfg.input_dim)
        return vaec_fail(VAEC_ERR_ARG, "%s: expected %lld columns (input_dim), got %lld", name,
                         (long long)m->cfg.input_dim, (long long)x->dim);
    if (x->dtype != VAEC_F32 && x->dtype != VAEC_U8) return vaec_fail(VAEC_ERR_ARG, "%s: unknown dtype", name);
    return VAEC_OK;
}

static vaec_status check_y(const vaec_m2 *m, const int32_t *y, int64_t n, const char *name) {
    if (n > 0 && !y) return vaec_fail(VAEC_ERR_ARG, "%s: no labels", name);
    for (int64_t i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= m->cfg.n_classes)
            return vaec_fail(VAEC_ERR_ARG, "%s: label %d at index %lld is out of range [0, %lld)", name, (int)y[i],
                             (long long)i, (long long)m->cfg.n_classes);
    return VAEC_OK;
}

/* One part (labelled or unlabelled) of a call, chunk by chunk. */
static void run_part(vaec_m2 *m, const vaec_input *x, const int32_t *y, const float *eps, uint64_t seed,
                     uint64_t counter, int grad, float scale, double alpha, int need_cls, double *row_out,
                     double sums[3]) {
    const int64_t reps = y ? 1 : m->cfg.n_classes, step = y ? M2_ROWS : unl_rows(m);
    for (int64_t r0 = 0; r0 < x->n; r0 += step) {
        chunk k = {0};
        k.m = m;
        k.x = x;
        k.y = y;
        k.r0 = r0;
        k.R = min64(x->n - r0, step);
        k.reps = reps;
        k.E = k.R * reps;
        k.eps = eps;
        k.seed = seed;
        k.eps_stream = stream_id(counter, y ? ST_EPS_L : ST_EPS_U);
        k.bin_stream = stream_id(counter, y ? ST_BIN_L : ST_BIN_U);
        k.scale = scale;
        k.alpha = alpha;
        k.grad = grad;
        k.row_out = row_out;
        run_chunk(&k, need_cls);
        for (int i = 0; i < 3; i++) sums[i] += k.sums[i];
    }
}

static void begin_call(vaec_m2 *m, int use_seed, uint64_t seed, uint64_t *s, uint64_t *counter) {
    if (use_seed) {
        *s = seed;
        *counter = 0;
    } else {
        *s = m->rng_seed;
        *counter = m->rng_counter++;
    }
    gather_label_columns(m, &m->enc[0], m->cfg.input_dim, m->wyT_enc);
    gather_label_columns(m, &m->dec[0], m->cfg.latent_dim, m->wyT_dec);
}

vaec_status vaec_m2_loss_grad(vaec_m2 *m, const vaec_m2_batch *b, double *loss, double parts[3]) {
    vaec_status st;
    if ((st = check_x(m, b->xl, "X_labeled")) || (st = check_x(m, b->xu, "X_unlabeled"))) return st;
    int64_t nl = b->xl ? b->xl->n : 0, nu = b->xu ? b->xu->n : 0;
    if (nl + nu == 0) return vaec_fail(VAEC_ERR_ARG, "empty batch; the loss needs at least one example");
    if ((st = check_y(m, b->yl, nl, "y_labeled"))) return st;
    if (!isfinite(b->alpha) || !isfinite(b->wl) || !isfinite(b->wu))
        return vaec_fail(VAEC_ERR_ARG, "alpha and the weights must be finite");
    uint64_t seed, counter;
    begin_call(m, b->use_seed, b->seed, &seed, &counter);
    vaec_arena_zero_grads(&m->arena);
    double sums[3] = {0, 0, 0};
    if (nl) run_part(m, b->xl, b->yl, b->eps_l, seed, counter, 1, (float)b->wl, b->alpha, 1, NULL, sums);
    if (nu) run_part(m, b->xu, NULL, b->eps_u, seed, counter, 1, (float)b->wu, 0.0, 1, NULL, sums);
    double l = b->wl * (sums[0] + b->alpha * sums[1]) + b->wu * sums[2];
    if (parts) for (int i = 0; i < 3; i++) parts[i] = sums[i];
    if (loss) *loss = l;
    if (!isfinite(l)) return vaec_fail(VAEC_ERR_NONFINITE, "the loss is %s (non-finite)", isnan(l) ? "NaN" : "Inf");
    return VAEC_OK;
}

vaec_status vaec_m2_train_step(vaec_m2 *m, const vaec_m2_batch *b, float lr, double *loss, double parts[3]) {
    if (!(lr >= 0.0f) || !isfinite(lr)) return vaec_fail(VAEC_ERR_ARG, "lr must be a finite number >= 0, got %g", lr);
    vaec_status st = vaec_m2_loss_grad(m, b, loss, parts);
    if (st) return st;
    return vaec_arena_adam_step(&m->arena, m->pool, lr);
}

vaec_status vaec_m2_elbo(vaec_m2 *m, const vaec_input *x, const int32_t *y, const float *eps, int use_seed,
                         uint64_t seed, double *out) {
    vaec_status st;
    if (!x) return vaec_fail(VAEC_ERR_ARG, "x: no data");
    if ((st = check_x(m, x, "x")) || (y && (st = check_y(m, y, x->n, "y")))) return st;
    uint64_t s, counter;
    begin_call(m, use_seed, seed, &s, &counter);
    double sums[3] = {0, 0, 0};
    run_part(m, x, y, eps, s, counter, 0, 1.0f, 0.0, y == NULL, out, sums);
    return VAEC_OK;
}

/* ------------------------------------------------------------ inference */
vaec_status vaec_m2_classify(vaec_m2 *m, const vaec_input *x, float *logq) {
    vaec_status st;
    if (!x) return vaec_fail(VAEC_ERR_ARG, "x: no data");
    if ((st = check_x(m, x, "x"))) return st;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    for (int64_t r0 = 0; r0 < x->n; r0 += M2_ROWS) {
        chunk k = {0};
        k.m = m;
        k.x = x;
        k.r0 = r0;
        k.R = min64(x->n - r0, M2_ROWS);
        k.reps = 1;
        k.E = k.R;
        k.seed = m->rng_seed;
        k.bin_stream = stream_id(m->rng_counter, ST_BIN_L);
        prepare_input(&k);
        classifier_forward(&k);
        for (int64_t r = 0; r < k.R; r++) memcpy(logq + (r0 + r) * C, m->w_logq + r * lc, (size_t)C * sizeof(float));
    }
    return VAEC_OK;
}

vaec_status vaec_m2_encode(vaec_m2 *m, const vaec_input *x, const int32_t *y, float *mu, float *logvar) {
    vaec_status st;
    if (!x) return vaec_fail(VAEC_ERR_ARG, "x: no data");
    if ((st = check_x(m, x, "x")) || (st = check_y(m, y, x->n, "y"))) return st;
    const int nh = m->nh;
    const int64_t Z = m->cfg.latent_dim, lh = align16(2 * Z);
    gather_label_columns(m, &m->enc[0], m->cfg.input_dim, m->wyT_enc);
    for (int64_t r0 = 0; r0 < x->n; r0 += M2_ROWS) {
        chunk k = {0};
        k.m = m;
        k.x = x;
        k.y = y;
        k.r0 = r0;
        k.R = min64(x->n - r0, M2_ROWS);
        k.reps = 1;
        k.E = k.R;
        k.seed = m->rng_seed;
        k.bin_stream = stream_id(m->rng_counter, ST_BIN_L);
        prepare_input(&k);
        par_rows(&k, setup_row, k.E);
        concat_forward(&k, &m->enc[0], m->cfg.input_dim, k.xin, k.ldx, k.R, 1, m->w_enc[0], m->w_A, m->wyT_enc);
        for (int i = 0; i <= nh; i++) {
            if (i) layer_forward(m, &m->enc[i], m->w_enc[i], m->w_enc[i - 1], align16(m->enc[i - 1].out), k.E);
            if (i < nh) par_act_forward(m, m->w_enc[i], k.E, align16(m->enc[i].out));
        }
        for (int64_t r = 0; r < k.R; r++) {
            const float *h = m->w_enc[nh] + r * lh;
            if (mu) memcpy(mu + (r0 + r) * Z, h, (size_t)Z * sizeof(float));
            if (logvar) memcpy(logvar + (r0 + r) * Z, h + Z, (size_t)Z * sizeof(float));
        }
    }
    return VAEC_OK;
}

vaec_status vaec_m2_decode(vaec_m2 *m, const int32_t *y, const float *z, int64_t n, float *out) {
    vaec_status st;
    if (n < 0) return vaec_fail(VAEC_ERR_ARG, "z: negative number of rows");
    if ((st = check_y(m, y, n, "y"))) return st;
    const int nh = m->nh;
    const int64_t D = m->cfg.input_dim, Z = m->cfg.latent_dim, lz = align16(Z), lo = align16(m->dec[nh].out);
    gather_label_columns(m, &m->dec[0], Z, m->wyT_dec);
    for (int64_t r0 = 0; r0 < n; r0 += M2_ROWS) {
        chunk k = {0};
        k.m = m;
        k.y = y;
        k.r0 = r0;
        k.R = min64(n - r0, M2_ROWS);
        k.reps = 1;
        k.E = k.R;
        par_rows(&k, setup_row, k.E);
        for (int64_t r = 0; r < k.R; r++) memcpy(m->w_z + r * lz, z + (r0 + r) * Z, (size_t)Z * sizeof(float));
        concat_forward(&k, &m->dec[0], Z, m->w_z, lz, k.E, 1, m->w_dec[0], NULL, m->wyT_dec);
        for (int i = 0; i <= nh; i++) {
            if (i) layer_forward(m, &m->dec[i], m->w_dec[i], m->w_dec[i - 1], align16(m->dec[i - 1].out), k.E);
            if (i < nh) par_act_forward(m, m->w_dec[i], k.E, align16(m->dec[i].out));
        }
        for (int64_t r = 0; r < k.R; r++) {
            float *dst = out + (r0 + r) * D;
            const float *o = m->w_dec[nh] + r * lo;
            if (m->cfg.likelihood == VAEC_LIK_BERNOULLI) vaec_act_forward(VAEC_ACT_SIGMOID, dst, o, D);
            else memcpy(dst, o, (size_t)D * sizeof(float));
        }
    }
    return VAEC_OK;
}

/* ------------------------------------------------------------------ files */
/* Config record (little-endian): i64 input_dim, latent_dim, n_classes; i32 n_hidden,
 * n_cls_hidden, activation, likelihood; i64 hidden[8]; i64 cls_hidden[8]; u64 seed;
 * f64 alpha: 184 bytes. */
#define M2_CONFIG_BYTES 184

vaec_status vaec_m2_save(const vaec_m2 *m, const char *path) {
    unsigned char rec[M2_CONFIG_BYTES] = {0};
    const vaec_m2_config *c = &m->cfg;
    int64_t i64[3] = {c->input_dim, c->latent_dim, c->n_classes};
    int32_t i32[4] = {c->n_hidden, c->n_cls_hidden, (int32_t)c->activation, (int32_t)c->likelihood};
    int64_t hid[VAEC_MAX_HIDDEN] = {0}, chid[VAEC_MAX_HIDDEN] = {0};
    for (int i = 0; i < c->n_hidden; i++) hid[i] = c->hidden[i];
    for (int i = 0; i < c->n_cls_hidden; i++) chid[i] = c->cls_hidden[i];
    memcpy(rec, i64, 24);
    memcpy(rec + 24, i32, 16);
    memcpy(rec + 40, hid, 64);
    memcpy(rec + 104, chid, 64);
    memcpy(rec + 168, &c->seed, 8);
    memcpy(rec + 176, &c->alpha, 8);
    return vaec_file_write(path, VAEC_KIND_M2, rec, M2_CONFIG_BYTES, &m->arena, m->rng_seed, m->rng_counter);
}

vaec_status vaec_m2_load(vaec_m2 **out, const char *path, int threads) {
    *out = NULL;
    vaec_file f;
    vaec_status st = vaec_file_read(&f, path);
    if (st) return st;
    vaec_m2 *m = NULL;
    if (f.kind != VAEC_KIND_M2) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds a model of kind %u, not an M2 model", path, f.kind);
    } else if (f.config_len != M2_CONFIG_BYTES) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: an M2 config record of %u bytes", path, f.config_len);
    } else {
        const unsigned char *rec = f.config;
        vaec_m2_config c = {0};
        int64_t i64[3], hid[VAEC_MAX_HIDDEN], chid[VAEC_MAX_HIDDEN];
        int32_t i32[4];
        memcpy(i64, rec, 24);
        memcpy(i32, rec + 24, 16);
        memcpy(hid, rec + 40, 64);
        memcpy(chid, rec + 104, 64);
        memcpy(&c.seed, rec + 168, 8);
        memcpy(&c.alpha, rec + 176, 8);
        c.input_dim = i64[0];
        c.latent_dim = i64[1];
        c.n_classes = i64[2];
        c.n_hidden = i32[0];
        c.n_cls_hidden = i32[1];
        c.activation = (vaec_act)i32[2];
        c.likelihood = (vaec_likelihood)i32[3];
        for (int i = 0; i < VAEC_MAX_HIDDEN; i++) {
            c.hidden[i] = hid[i];
            c.cls_hidden[i] = chid[i];
        }
        c.threads = threads;
        if ((st = check_config(&c)))
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds an invalid M2 configuration (%s)", path, vaec_last_error());
        else if ((st = vaec_m2_create(&m, &c)) == VAEC_OK && (st = vaec_file_apply(&f, &m->arena)) == VAEC_OK) {
            m->rng_seed = f.rng_seed;
            m->rng_counter = f.rng_counter;
        }
    }
    vaec_file_close(&f);
    if (st) {
        vaec_m2_destroy(m);
        return st;
    }
    *out = m;
    return VAEC_OK;
}
