/* m2.c -- the semi-supervised M2 model (Kingma et al. 2014): three networks (net.h),
 * the classifier q(y|x), the encoder q(z|x,y) and the decoder p(x|y,z), whose first
 * layers take [x, onehot(y)] and [z, onehot(y)] (layer_label.c); the labelled and
 * unlabelled bounds, their full backward pass (including through q(y|x) in the
 * unlabelled term) and Adam. See m2.h.
 *
 * A call is processed in chunks: labelled chunks of up to M2_ROWS rows (one encoder row
 * per row), unlabelled chunks of up to M2_ROWS / C rows (C encoder rows per row, row r's
 * copy for class c at index r*C + c). Per encoder row e: its parent x row p(e), its
 * class c(e) and the weight s(e) of its -L in the loss (wl, or wu q(c|x)), so one pass
 * serves both parts. Tasks split rows or output tiles; every sum runs in a fixed order. */
#include "m2.h"
#include "internal.h"
#include "elem.h"
#include "net.h"
#include "streams.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

#define M2_ROWS 256
#define ROW_GRAIN VAEC_ROW_GRAIN

/* Streams of a call's noise (streams.h) */
enum { ST_EPS_L = M2_STREAM_EPS_L, ST_BIN_L = M2_STREAM_BIN_L, ST_EPS_U = M2_STREAM_EPS_U, ST_BIN_U = M2_STREAM_BIN_U };
static uint64_t stream_id(uint64_t counter, int purpose) { return vaec_stream_m2(counter, purpose); }

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

struct vaec_m2 {
    vaec_m2_config cfg;
    vaec_pool *pool;
    vaec_arena arena;      /* the classifier's tensors, the encoder's, the decoder's */
    int nh, nc;            /* encoder/decoder and classifier hidden layers */
    vaec_net cls;          /* x -> C logits */
    vaec_net enc;          /* [x, onehot(y)] -> [mu | logvar] */
    vaec_net dec;          /* [z, onehot(y)] -> logits, or [mean | logvar] */
    vaec_layer cls_layers[VAEC_MAX_HIDDEN + 1], enc_layers[VAEC_MAX_HIDDEN + 1], dec_layers[VAEC_MAX_HIDDEN + 1];
    uint64_t rng_seed, rng_counter;
    /* the workspace (m2_plan), ws_rows rows per buffer (row strides align16(width)) */
    int64_t ws_rows;
    float *ws;
    float *w_x, *w_logq, *w_eps, *w_z, *d_z;
    float *w_logits, *d_logits, *w_heads, *d_heads, *w_out, *d_out;   /* the networks' outputs */
    int64_t ld_logits, ld_heads, ld_out;
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

/* Counts (buf NULL) or lays out the workspace of `rows` rows: the input, the three
 * networks' plans, the latent buffers and the per-row state. */
static int64_t m2_plan(vaec_m2 *m, float *buf, int64_t rows) {
    const vaec_m2_config *c = &m->cfg;
    const int64_t D = c->input_dim, Z = c->latent_dim, C = c->n_classes;
    int64_t off = 0;
    float *p, *cls_ws, *enc_ws, *dec_ws;
#define TAKE(ptr, type, nfloats) do { p = buf ? buf + off : NULL; (ptr) = (type *)p; off += align16(nfloats); } while (0)
    TAKE(m->w_x, float, rows * align16(D));
    TAKE(cls_ws, float, vaec_net_plan(&m->cls, NULL, rows));
    TAKE(enc_ws, float, vaec_net_plan(&m->enc, NULL, rows));
    TAKE(dec_ws, float, vaec_net_plan(&m->dec, NULL, rows));
    TAKE(m->w_logq, float, rows * align16(C));
    TAKE(m->w_eps, float, rows * align16(Z));
    TAKE(m->w_z, float, rows * align16(Z));
    TAKE(m->d_z, float, rows * align16(Z));
    TAKE(m->e_scale, float, rows);
    TAKE(m->e_cls, int32_t, rows);
    TAKE(m->e_rec, double, 2 * rows);
    TAKE(m->e_kl, double, 2 * rows);
#undef TAKE
    if (buf) {
        vaec_net_plan(&m->cls, cls_ws, rows);
        vaec_net_plan(&m->enc, enc_ws, rows);
        vaec_net_plan(&m->dec, dec_ws, rows);
        m->w_logits = vaec_net_out(&m->cls, &m->ld_logits);
        m->d_logits = vaec_net_dout(&m->cls, &m->ld_logits);
        m->w_heads = vaec_net_out(&m->enc, &m->ld_heads);
        m->d_heads = vaec_net_dout(&m->enc, &m->ld_heads);
        m->w_out = vaec_net_out(&m->dec, &m->ld_out);
        m->d_out = vaec_net_dout(&m->dec, &m->ld_out);
    }
    return off;
}

static vaec_status alloc_workspace(vaec_m2 *m) {
    int64_t rows = unl_rows(m) * m->cfg.n_classes;
    if (rows < M2_ROWS) rows = M2_ROWS;
    rows = (rows + ROW_GRAIN - 1) / ROW_GRAIN * ROW_GRAIN;
    float *ws = vaec_alloc((size_t)m2_plan(m, NULL, rows), sizeof(float));
    if (!ws) return vaec_fail(VAEC_ERR_NOMEM, "out of memory for a workspace of %lld rows", (long long)rows);
    m->ws = ws;
    m->ws_rows = rows;
    m2_plan(m, ws, rows);
    return VAEC_OK;
}

/* The three networks, planned into the arena in this order. The first layer of the
 * encoder and of the decoder takes the label too; without hidden layers it is the heads. */
static vaec_status plan_networks(vaec_m2 *m) {
    const vaec_m2_config *c = &m->cfg;
    const int64_t D = c->input_dim, Z = c->latent_dim, C = c->n_classes;
    const int nh = m->nh, nc = m->nc;
    vaec_arena *A = &m->arena;
    vaec_status st = VAEC_OK;
    vaec_layer_spec s = {0};
    vaec_net_init(&m->cls, "classifier", vaec_dims_flat(D), m->cls_layers, VAEC_MAX_HIDDEN + 1);
    for (int i = 0; i < nc && !st; i++) {
        s = (vaec_layer_spec){.kind = VAEC_LAYER_LINEAR, .act = (int32_t)c->activation, .out = c->cls_hidden[i]};
        st = vaec_net_add(&m->cls, A, &s, i, NULL, 1, 0);
    }
    const char *cls_out[1] = {"classifier.out"};
    s = (vaec_layer_spec){.kind = VAEC_LAYER_LINEAR, .out = C};
    if (!st) st = vaec_net_add(&m->cls, A, &s, nc, cls_out, 1, 0);
    /* encoder: [x, onehot(y)] -> hidden layers -> [mu | logvar] */
    const char *heads[2] = {"encoder.mu", "encoder.logvar"};
    vaec_net_init(&m->enc, "encoder", vaec_dims_flat(D), m->enc_layers, VAEC_MAX_HIDDEN + 1);
    for (int i = 0; i <= nh && !st; i++) {
        s = (vaec_layer_spec){.kind = i ? VAEC_LAYER_LINEAR : VAEC_LAYER_LABEL_LINEAR,
                              .act = i < nh ? (int32_t)c->activation : 0, .out = i < nh ? c->hidden[i] : Z,
                              .classes = i ? 0 : C};
        st = vaec_net_add(&m->enc, A, &s, i, i < nh ? NULL : heads, i < nh ? 1 : 2, 0);
    }
    /* decoder: [z, onehot(y)] -> hidden layers (the encoder's, mirrored) -> the output */
    const char *out[2] = {"decoder.out", "decoder.logvar"};
    const int gauss = c->likelihood == VAEC_LIK_GAUSSIAN;
    vaec_net_init(&m->dec, "decoder", vaec_dims_flat(Z), m->dec_layers, VAEC_MAX_HIDDEN + 1);
    for (int i = 0; i <= nh && !st; i++) {
        s = (vaec_layer_spec){.kind = i ? VAEC_LAYER_LINEAR : VAEC_LAYER_LABEL_LINEAR,
                              .act = i < nh ? (int32_t)c->activation : 0, .out = i < nh ? c->hidden[nh - 1 - i] : D,
                              .classes = i ? 0 : C};
        st = vaec_net_add(&m->dec, A, &s, i, i < nh ? NULL : out, i < nh ? 1 : (gauss ? 2 : 1), 0);
    }
    return st;
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
    vaec_arena *A = &m->arena;
    st = plan_networks(m);
    if (!st) st = vaec_arena_alloc(A, cfg->seed);
    if (!st) st = alloc_workspace(m);
    if (!st) st = vaec_pool_create(&m->pool, cfg->threads);
    if (st) { vaec_m2_destroy(m); return st; }
    vaec_net_bind(&m->cls, m->pool, A);
    vaec_net_bind(&m->enc, m->pool, A);
    vaec_net_bind(&m->dec, m->pool, A);
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
    int64_t row0;              /* the part's first row in the whole batch's part (a share), else 0 */
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
            vaec_rng_uniform(u, cnt, k->seed, k->bin_stream, (uint64_t)((k->row0 + row) * D + d0));
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

/* ----------------------------------------------------------------- networks */
/* The encoder and decoder see the classes of the chunk's encoder rows (e_cls) and how many
 * encoder rows share one x row (their first layer, layer_label.c). */
static void set_labels(chunk *k) {
    vaec_net_labels lab = {k->m->e_cls, k->reps};
    k->m->enc.labels = lab;
    lab.reps = 1;
    k->m->dec.labels = lab;
}

/* ------------------------------------------------------------- classifier */
static void logsoftmax_row(chunk *k, int64_t r) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    const float *l = m->w_logits + r * m->ld_logits;
    float *lq = m->w_logq + r * lc;
    float mx = l[0];
    for (int64_t c = 1; c < C; c++) mx = l[c] > mx ? l[c] : mx;
    double s = 0.0;
    for (int64_t c = 0; c < C; c++) s += exp((double)l[c] - mx);
    double lse = mx + log(s);
    for (int64_t c = 0; c < C; c++) lq[c] = (float)((double)l[c] - lse);
}

static void classifier_forward(chunk *k) {
    int64_t ld;
    vaec_net_forward(&k->m->cls, k->xin, k->ldx, k->R, &ld);
    par_rows(k, logsoftmax_row, k->R);
}

/* ------------------------------------------------------------ z and KL */
/* Encoder row e of a labelled chunk: x row e, its label, weight wl. */
static void labelled_setup_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    m->e_cls[e] = k->y[k->r0 + e];
    m->e_scale[e] = k->scale;
}

/* Encoder row e of an unlabelled chunk: x row e / C, class e % C, weight wu q(c|x). */
static void unlabelled_setup_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, r = e / k->reps;
    int32_t c = (int32_t)(e % C);
    m->e_cls[e] = c;
    m->e_scale[e] = k->scale * expf(m->w_logq[r * align16(C) + c]);
}

/* KL per row; with grad, d(mu, logvar) = s(e) dKL; eps drawn or copied; z = mu + sigma eps */
static void latent_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t Z = m->cfg.latent_dim, lh = m->ld_heads, lz = align16(Z);
    const float *mu = m->w_heads + e * lh, *lv = mu + Z;
    double kl = 0.0;
    for (int64_t i = 0; i < Z; i++) kl += (double)mu[i] * mu[i] + exp((double)lv[i]) - 1.0 - lv[i];
    m->e_kl[e] = 0.5 * kl;
    m->e_rec[e] = 0.0;
    float *eps = m->w_eps + e * lz, *z = m->w_z + e * lz;
    /* noise index: (x row of the whole input, or of the whole batch for a share) * reps + copy */
    uint64_t idx = (uint64_t)(((k->row0 + k->r0) * k->reps + e) * Z);
    if (k->eps) memcpy(eps, k->eps + idx, (size_t)Z * sizeof(float));
    else vaec_rng_normal(eps, Z, k->seed, k->eps_stream, idx);
    for (int64_t i = 0; i < Z; i++) z[i] = mu[i] + expf(0.5f * lv[i]) * eps[i];
    if (k->grad) {
        float s = m->e_scale[e], *dmu = m->d_heads + e * lh, *dlv = dmu + Z;
        for (int64_t i = 0; i < Z; i++) {
            dmu[i] = s * mu[i];
            dlv[i] = s * 0.5f * expm1f(lv[i]);
        }
    }
}

/* dz -> d(mu, logvar): dmu += dz, dlogvar += dz eps exp(logvar/2) / 2 */
static void reparam_back_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t Z = m->cfg.latent_dim, lh = m->ld_heads, lz = align16(Z);
    const float *lv = m->w_heads + e * lh + Z, *eps = m->w_eps + e * lz, *dz = m->d_z + e * lz;
    float *dmu = m->d_heads + e * lh, *dlv = dmu + Z;
    for (int64_t i = 0; i < Z; i++) {
        dmu[i] += dz[i];
        dlv[i] += dz[i] * eps[i] * 0.5f * expf(0.5f * lv[i]);
    }
}

/* log p(x|y,z) per encoder row, and d_out = s(e) d(-log p)/d(out) */
static void lik_row(chunk *k, int64_t e) {
    vaec_m2 *m = k->m;
    const int64_t D = m->cfg.input_dim, lo = m->ld_out;
    const float *x = k->xin + (e / k->reps) * k->ldx, *o = m->w_out + e * lo;
    float *d = k->grad ? m->d_out + e * lo : NULL;
    if (m->cfg.likelihood == VAEC_LIK_BERNOULLI)
        vaec_elem_bernoulli_rows(1, D, o, lo, x, k->ldx, m->e_scale[e], d, lo, &m->e_rec[e]);
    else
        vaec_elem_gaussian_rows(1, D, o, lo, x, k->ldx, m->e_scale[e], d, lo, &m->e_rec[e]);
}

/* ---------------------------------------------------------------- the terms */
/* The bound's networks on the chunk's E encoder rows (classes in e_cls, weights in e_scale):
 * the encoder, z, the decoder, log p(x|y,z) per row (e_rec), the KL (e_kl) and, with
 * gradients, the KL's gradient and the likelihood's; then the backward of all that. */
static void bound_forward(chunk *k) {
    vaec_m2 *m = k->m;
    const int64_t lz = align16(m->cfg.latent_dim);
    int64_t ld;
    set_labels(k);
    vaec_net_forward(&m->enc, k->xin, k->ldx, k->E, &ld);
    par_rows(k, latent_row, k->E);
    vaec_net_forward(&m->dec, m->w_z, lz, k->E, &ld);
    par_rows(k, lik_row, k->E);
}

static void bound_backward(chunk *k) {
    vaec_m2 *m = k->m;
    const int64_t lz = align16(m->cfg.latent_dim);
    vaec_net_backward(&m->dec, m->w_z, lz, k->E, m->d_z, lz);
    par_rows(k, reparam_back_row, k->E);
    vaec_net_backward(&m->enc, k->xin, k->ldx, k->E, NULL, 0);
}

/* Labelled row r: L(x,y) = log p(x|y,z) + log p(y) - KL, and the gradient of the
 * classification loss -alpha log q(y|x) on the logits, alpha (q_c - [c == y]) * wl. */
static void labelled_row(chunk *k, int64_t r) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    const float *lq = m->w_logq + r * lc;
    double L = m->e_rec[r] - m->e_kl[r] - log((double)C);
    if (k->row_out) k->row_out[k->r0 + r] = L;
    if (k->grad) {
        float *dl = m->d_logits + r * m->ld_logits;
        int32_t y = m->e_cls[r];
        for (int64_t c = 0; c < C; c++)
            dl[c] = (float)(k->scale * k->alpha * (exp((double)lq[c]) - (c == y ? 1.0 : 0.0)));
    }
}

/* Unlabelled row r: U(x) = sum_c q(c|x) L(x,c) + H(q(y|x)). With f_c = -L(x,c) + log q_c,
 * -U = sum_c q_c f_c and d(-U)/dl_c = q_c (f_c + U), times wu. */
static void unlabelled_row(chunk *k, int64_t r) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    const double logC = log((double)C);
    const float *lq = m->w_logq + r * lc;
    double f[VAEC_M2_MAX_CLASSES], negU = 0.0;
    for (int64_t c = 0; c < C; c++) {
        int64_t e = r * C + c;
        double L = m->e_rec[e] - m->e_kl[e] - logC;
        f[c] = -L + lq[c];
        negU += exp((double)lq[c]) * f[c];
    }
    if (k->row_out) k->row_out[k->r0 + r] = -negU;
    if (k->grad) {
        float *dl = m->d_logits + r * m->ld_logits;
        for (int64_t c = 0; c < C; c++) dl[c] = (float)(k->scale * exp((double)lq[c]) * (f[c] - negU));
    }
}

/* The labelled term on a chunk: sums[0] += sum -L(x,y), sums[1] += sum -log q(y|x) (when
 * the classifier runs: training), then the backward. */
static void labelled_chunk(chunk *k, int need_cls) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    prepare_input(k);
    if (need_cls) classifier_forward(k);
    par_rows(k, labelled_setup_row, k->E);
    bound_forward(k);
    par_rows(k, labelled_row, k->R);
    for (int64_t r = 0; r < k->R; r++) {   /* in row order */
        k->sums[0] -= m->e_rec[r] - m->e_kl[r] - log((double)C);
        if (need_cls) k->sums[1] -= m->w_logq[r * lc + m->e_cls[r]];
    }
    if (!k->grad) return;
    bound_backward(k);
    if (need_cls) vaec_net_backward(&m->cls, k->xin, k->ldx, k->R, NULL, 0);
}

/* The unlabelled term on a chunk: every x row once per class (E = C R encoder rows, the
 * x product of the encoder's first layer shared), sums[2] += sum -U(x), then the backward,
 * through q(y|x) too. */
static void unlabelled_chunk(chunk *k) {
    vaec_m2 *m = k->m;
    const int64_t C = m->cfg.n_classes, lc = align16(C);
    prepare_input(k);
    classifier_forward(k);
    par_rows(k, unlabelled_setup_row, k->E);
    bound_forward(k);
    par_rows(k, unlabelled_row, k->R);
    for (int64_t r = 0; r < k->R; r++) {   /* in row order */
        double negU = 0.0;
        for (int64_t c = 0; c < C; c++) {
            int64_t e = r * C + c;
            double lq = m->w_logq[r * lc + c];
            negU += exp(lq) * (-(m->e_rec[e] - m->e_kl[e] - log((double)C)) + lq);
        }
        k->sums[2] += negU;
    }
    if (!k->grad) return;
    bound_backward(k);
    vaec_net_backward(&m->cls, k->xin, k->ldx, k->R, NULL, 0);
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
                     uint64_t counter, int64_t row0, int grad, float scale, double alpha, int need_cls,
                     double *row_out, double sums[3]) {
    const int64_t reps = y ? 1 : m->cfg.n_classes, step = y ? M2_ROWS : unl_rows(m);
    for (int64_t r0 = 0; r0 < x->n; r0 += step) {
        chunk k = {0};
        k.m = m;
        k.x = x;
        k.y = y;
        k.r0 = r0;
        k.row0 = row0;
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
        if (y) labelled_chunk(&k, need_cls);
        else unlabelled_chunk(&k);
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
}

vaec_status vaec_m2_loss_grad(vaec_m2 *m, const vaec_m2_batch *b, double *loss, double parts[3]) {
    vaec_status st;
    if ((st = check_x(m, b->xl, "X_labeled")) || (st = check_x(m, b->xu, "X_unlabeled"))) return st;
    int64_t nl = b->xl ? b->xl->n : 0, nu = b->xu ? b->xu->n : 0;
    if (b->n_total < 0 || b->row_offset_l < 0 || b->row_offset_u < 0 ||
        (b->n_total == 0 && (b->row_offset_l || b->row_offset_u)) ||
        (b->n_total > 0 && b->row_offset_l + nl + b->row_offset_u + nu > b->n_total))
        return vaec_fail(VAEC_ERR_ARG, "row_offset_l, row_offset_u, n_total: labelled rows [%lld, %lld) and unlabelled "
                         "rows [%lld, %lld) are not a share of a batch of %lld rows", (long long)b->row_offset_l,
                         (long long)(b->row_offset_l + nl), (long long)b->row_offset_u, (long long)(b->row_offset_u + nu),
                         (long long)b->n_total);
    if (b->n_total > 0 && (b->eps_l || b->eps_u))
        return vaec_fail(VAEC_ERR_ARG, "eps: explicit noise is indexed by the call's own rows; a share of a batch "
                         "(n_total) draws its noise from the RNG");
    if (nl + nu == 0 && b->n_total == 0)
        return vaec_fail(VAEC_ERR_ARG, "empty batch; the loss needs at least one example");
    if ((st = check_y(m, b->yl, nl, "y_labeled"))) return st;
    if (!isfinite(b->alpha) || !isfinite(b->wl) || !isfinite(b->wu))
        return vaec_fail(VAEC_ERR_ARG, "alpha and the weights must be finite");
    uint64_t seed, counter;
    begin_call(m, b->use_seed, b->seed, &seed, &counter);
    vaec_arena_zero_grads(&m->arena);
    double sums[3] = {0, 0, 0};
    if (nl) run_part(m, b->xl, b->yl, b->eps_l, seed, counter, b->row_offset_l, 1, (float)b->wl, b->alpha, 1, NULL, sums);
    if (nu) run_part(m, b->xu, NULL, b->eps_u, seed, counter, b->row_offset_u, 1, (float)b->wu, 0.0, 1, NULL, sums);
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
    run_part(m, x, y, eps, s, counter, 0, 0, 1.0f, 0.0, y == NULL, out, sums);
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
    const int64_t Z = m->cfg.latent_dim;
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
        par_rows(&k, labelled_setup_row, k.E);
        set_labels(&k);
        int64_t lh;
        const float *heads = vaec_net_forward(&m->enc, k.xin, k.ldx, k.E, &lh);
        for (int64_t r = 0; r < k.R; r++) {
            const float *h = heads + r * lh;
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
    const int64_t D = m->cfg.input_dim, Z = m->cfg.latent_dim, lz = align16(Z);
    for (int64_t r0 = 0; r0 < n; r0 += M2_ROWS) {
        chunk k = {0};
        k.m = m;
        k.y = y;
        k.r0 = r0;
        k.R = min64(n - r0, M2_ROWS);
        k.reps = 1;
        k.E = k.R;
        par_rows(&k, labelled_setup_row, k.E);
        for (int64_t r = 0; r < k.R; r++) memcpy(m->w_z + r * lz, z + (r0 + r) * Z, (size_t)Z * sizeof(float));
        set_labels(&k);
        int64_t lo;
        const float *outs = vaec_net_forward(&m->dec, m->w_z, lz, k.E, &lo);
        for (int64_t r = 0; r < k.R; r++) {
            float *dst = out + (r0 + r) * D;
            const float *o = outs + r * lo;
            if (m->cfg.likelihood == VAEC_LIK_BERNOULLI) vaec_act_forward(VAEC_ACT_SIGMOID, dst, o, D);
            else memcpy(dst, o, (size_t)D * sizeof(float));
        }
    }
    return VAEC_OK;
}

/* ------------------------------------------------------------------ files */
/* Config record, little-endian. Version 1 (0.1.0, 184 bytes): i64 input_dim, latent_dim,
 * n_classes; i32 n_hidden, n_cls_hidden, activation, likelihood; i64 hidden[8]; i64
 * cls_hidden[8]; u64 seed; f64 alpha. Version 2: "M2\0\0", u32 2, version 1's 184 bytes,
 * i32 n_cls, n_enc, n_dec, 0, then the three networks' layers (VAEC_LAYER_RECORD bytes
 * each, net.h): the lists the configuration gives, which a reader checks. */
#define M2_CONFIG_V1 184
static const char M2_TAG[4] = {'M', '2', 0, 0};

static void put_v1(unsigned char *rec, const vaec_m2_config *c) {
    int64_t i64[3] = {c->input_dim, c->latent_dim, c->n_classes};
    int32_t i32[4] = {c->n_hidden, c->n_cls_hidden, (int32_t)c->activation, (int32_t)c->likelihood};
    int64_t hid[VAEC_MAX_HIDDEN] = {0}, chid[VAEC_MAX_HIDDEN] = {0};
    for (int i = 0; i < c->n_hidden && i < VAEC_MAX_HIDDEN; i++) hid[i] = c->hidden[i];
    for (int i = 0; i < c->n_cls_hidden && i < VAEC_MAX_HIDDEN; i++) chid[i] = c->cls_hidden[i];
    memcpy(rec, i64, 24);
    memcpy(rec + 24, i32, 16);
    memcpy(rec + 40, hid, 64);
    memcpy(rec + 104, chid, 64);
    memcpy(rec + 168, &c->seed, 8);
    memcpy(rec + 176, &c->alpha, 8);
}

static void get_v1(const unsigned char *rec, vaec_m2_config *c) {
    int64_t i64[3], hid[VAEC_MAX_HIDDEN], chid[VAEC_MAX_HIDDEN];
    int32_t i32[4];
    memcpy(i64, rec, 24);
    memcpy(i32, rec + 24, 16);
    memcpy(hid, rec + 40, 64);
    memcpy(chid, rec + 104, 64);
    memcpy(&c->seed, rec + 168, 8);
    memcpy(&c->alpha, rec + 176, 8);
    c->input_dim = i64[0];
    c->latent_dim = i64[1];
    c->n_classes = i64[2];
    c->n_hidden = i32[0];
    c->n_cls_hidden = i32[1];
    c->activation = (vaec_act)i32[2];
    c->likelihood = (vaec_likelihood)i32[3];
    for (int i = 0; i < VAEC_MAX_HIDDEN; i++) {
        c->hidden[i] = hid[i];
        c->cls_hidden[i] = chid[i];
    }
}

vaec_status vaec_m2_save(const vaec_m2 *m, const char *path, const void *extra, uint32_t extra_len) {
    const vaec_net *nets[3] = {&m->cls, &m->enc, &m->dec};
    const size_t len = 8 + M2_CONFIG_V1 + 16 + (size_t)(m->cls.n + m->enc.n + m->dec.n) * VAEC_LAYER_RECORD;
    unsigned char *rec = vaec_alloc(len, 1);
    if (!rec) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    uint32_t version = 2;
    int32_t i32[4] = {m->cls.n, m->enc.n, m->dec.n, 0};
    memcpy(rec, M2_TAG, 4);
    memcpy(rec + 4, &version, 4);
    put_v1(rec + 8, &m->cfg);
    memcpy(rec + 8 + M2_CONFIG_V1, i32, 16);
    unsigned char *p = rec + 8 + M2_CONFIG_V1 + 16;
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < nets[k]->n; i++, p += VAEC_LAYER_RECORD) vaec_layer_record_put(p, &nets[k]->layer[i].spec);
    vaec_status st = vaec_file_write_ex(path, VAEC_KIND_M2, rec, (uint32_t)len, &m->arena, m->rng_seed, m->rng_counter,
                                        extra, extra_len);
    vaec_free(rec);
    return st;
}

/* A version 2 record's layer lists against those of the model its configuration made. */
static int layers_match(const vaec_m2 *m, const unsigned char *p, uint32_t len) {
    const vaec_net *nets[3] = {&m->cls, &m->enc, &m->dec};
    int32_t i32[4];
    memcpy(i32, p, 16);
    p += 16;
    if (i32[0] != m->cls.n || i32[1] != m->enc.n || i32[2] != m->dec.n ||
        len != 16 + (uint32_t)(m->cls.n + m->enc.n + m->dec.n) * VAEC_LAYER_RECORD)
        return 0;
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < nets[k]->n; i++, p += VAEC_LAYER_RECORD) {
            vaec_layer_spec s;
            vaec_layer_record_get(p, &s);
            if (memcmp(&s, &nets[k]->layer[i].spec, sizeof s) != 0) return 0;
        }
    return 1;
}

vaec_status vaec_m2_load(vaec_m2 **out, const char *path, int threads, void **extra, uint32_t *extra_len) {
    *out = NULL;
    if (extra) { *extra = NULL; *extra_len = 0; }
    vaec_file f;
    vaec_status st = vaec_file_read(&f, path);
    if (st) return st;
    vaec_m2 *m = NULL;
    const unsigned char *rec = f.config;
    uint32_t version = 0;
    if (f.config_len >= 8) memcpy(&version, rec + 4, 4);
    const int v2 = f.config_len >= 8 + M2_CONFIG_V1 + 16 && memcmp(rec, M2_TAG, 4) == 0 && version == 2;
    if (f.kind != VAEC_KIND_M2) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds a model of kind %u, not an M2 model", path, f.kind);
    } else if (f.config_len != M2_CONFIG_V1 && !v2) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: an M2 config record of %u bytes", path, f.config_len);
    } else {
        vaec_m2_config c = {0};
        get_v1(v2 ? rec + 8 : rec, &c);
        c.threads = threads;
        if ((st = check_config(&c)))
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds an invalid M2 configuration (%s)", path, vaec_last_error());
        else if ((vaec_arena_expect(f.nparams, path), st = vaec_m2_create(&m, &c), vaec_arena_expect(-1, NULL), st) == VAEC_OK) {
            if (v2 && !layers_match(m, rec + 8 + M2_CONFIG_V1, f.config_len - 8 - M2_CONFIG_V1))
                st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: its layer lists are not those of its "
                               "configuration", path);
            else if ((st = vaec_file_apply(&f, &m->arena)) == VAEC_OK) {
                m->rng_seed = f.rng_seed;
                m->rng_counter = f.rng_counter;
                st = vaec_file_extra_copy(&f, extra, extra_len);
            }
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
