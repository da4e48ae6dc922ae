/* vae.c -- the variational autoencoder: Gaussian encoder, Bernoulli or Gaussian decoder,
 * the ELBO with the reparameterization trick, its full backward pass, and Adam.
 *
 *   encoder  h_0 = x, h_i = act(W_i h_{i-1} + b_i), [mu | logvar] = W_h h + b_h
 *   z        = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)
 *   decoder  g_0 = z, g_i = act(...), out = W_o g + b_o   (logits, or [mean | logvar])
 *   ELBO     = (1/L) sum_l log p(x | z_l) - KL(N(mu, exp(logvar)) || N(0, I))
 *
 * The mu and logvar heads are one (2*latent, H) matrix in the arena (mu rows first), so
 * they cost one GEMM; the Gaussian decoder's mean and logvar heads likewise.
 * Batches are processed in chunks of at most VAE_CHUNK rows; gradients of every chunk
 * are added, so memory is bounded and the results depend only on the inputs.
 * Tasks are split by rows or output tiles, never by reduction order, so the results
 * are bitwise identical for every thread count. */
#include <float.h>
#include "internal.h"
#include "vae_impl.h"
#include "elem.h"
#include <math.h>
#include <string.h>

#define ROW_GRAIN 8

enum { STREAM_EPS = 0, STREAM_BINARIZE = 1, STREAM_INIT = 2, STREAM_DREAM = 3 };
static uint64_t stream_id(uint64_t counter, int purpose) { return counter * 4 + (uint64_t)purpose; }

/* ------------------------------------------------------------------ model */
static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

static vaec_status check_config(const vaec_vae_config *c) {
    if (c->input_dim < 1 || c->input_dim > (1 << 26))
        return vaec_fail(VAEC_ERR_ARG, "input_dim must be between 1 and 2^26, got %lld", (long long)c->input_dim);
    if (c->latent_dim < 1 || c->latent_dim > (1 << 20))
        return vaec_fail(VAEC_ERR_ARG, "latent_dim must be between 1 and 2^20, got %lld", (long long)c->latent_dim);
    if (c->n_hidden < 0 || c->n_hidden > VAEC_MAX_HIDDEN)
        return vaec_fail(VAEC_ERR_ARG, "hidden must have at most %d layers, got %d", VAEC_MAX_HIDDEN, c->n_hidden);
    for (int i = 0; i < c->n_hidden; i++)
        if (c->hidden[i] < 1 || c->hidden[i] > (1 << 20))
            return vaec_fail(VAEC_ERR_ARG, "hidden[%d] must be between 1 and 2^20, got %lld", i, (long long)c->hidden[i]);
    if ((unsigned)c->activation >= VAEC_ACT_COUNT || c->activation == VAEC_ACT_IDENTITY)
        return vaec_fail(VAEC_ERR_ARG, "activation: unknown code %d", (int)c->activation);
    if (c->likelihood != VAEC_LIK_BERNOULLI && c->likelihood != VAEC_LIK_GAUSSIAN)
        return vaec_fail(VAEC_ERR_ARG, "likelihood: unknown code %d", (int)c->likelihood);
    if (c->threads > 256)
        return vaec_fail(VAEC_ERR_ARG, "threads must be at most 256, got %d", c->threads);
    if (!memchr(c->flow, 0, sizeof c->flow)) return vaec_fail(VAEC_ERR_ARG, "flow: the spec is too long");
    if (c->deterministic != 0 && c->deterministic != 1)
        return vaec_fail(VAEC_ERR_ARG, "deterministic must be 0 or 1, got %d", c->deterministic);
    if (c->deterministic && c->flow[0])
        return vaec_fail(VAEC_ERR_ARG, "flow: an autoencoder has no posterior for a flow to act on");
    if (c->flow[0]) {
        vaec_flow_spec spec;
        vaec_status st = vaec_flow_spec_parse(&spec, c->flow);
        if (st) return st;
        if (spec.kind == VAEC_FLOW_REALNVP && c->latent_dim < 2)
            return vaec_fail(VAEC_ERR_ARG, "flow: Real NVP needs latent_dim >= 2 (it splits z in two halves); "
                             "planar and radial flows work in any dimension");
    }
    return VAEC_OK;
}

vaec_status vaec_vae_create(vaec_vae **out, const vaec_vae_config *cfg) {
    *out = NULL;
    vaec_status st = check_config(cfg);
    if (st) return st;
    vaec_vae *m = vaec_alloc(1, sizeof *m);
    if (!m) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    const int64_t D = cfg->input_dim, Z = cfg->latent_dim;
    const int nh = cfg->n_hidden;
    vaec_arena *A = &m->arena;
    char name[VAEC_NAME_LEN];
    const char *nm[1] = {name};
    int64_t prev = D;
    for (int i = 0; i < nh && !st; i++) {
        snprintf(name, sizeof name, "encoder.%d", i);
        /* the first layer keeps W^T: the sparse path reads and writes its rows */
        st = i ? vaec_arena_add_linear(A, &m->enc[i], nm, 1, prev, cfg->hidden[i])
               : vaec_arena_add_linear_wt(A, &m->enc[i], name, prev, cfg->hidden[i]);
        prev = cfg->hidden[i];
    }
    const char *enc_heads[2] = {"encoder.mu", "encoder.logvar"}, *ae_head[1] = {"encoder.code"};
    if (!st) st = vaec_arena_add_linear(A, &m->enc_heads, cfg->deterministic ? ae_head : enc_heads,
                                        cfg->deterministic ? 1 : 2, prev, Z);
    if (!st && cfg->flow[0]) {
        vaec_flow_spec spec;
        st = vaec_flow_spec_parse(&spec, cfg->flow);
        if (!st) st = vaec_flow_plan(&m->flow, A, &spec, Z, "flow");
        m->has_flow = !st;
    }
    prev = Z;
    for (int i = 0; i < nh && !st; i++) {
        snprintf(name, sizeof name, "decoder.%d", i);
        int64_t w = cfg->hidden[nh - 1 - i];
        st = vaec_arena_add_linear(A, &m->dec[i], nm, 1, prev, w);
        prev = w;
    }
    const char *dec_heads[2] = {"decoder.out", "decoder.logvar"};
    int dec_nheads = cfg->likelihood == VAEC_LIK_GAUSSIAN && !cfg->deterministic ? 2 : 1;
    if (!st) st = vaec_arena_add_linear(A, &m->dec_out, dec_heads, dec_nheads, prev, D);
    if (!st) st = vaec_arena_alloc(A, cfg->seed);
    if (!st) st = vaec_pool_create(&m->pool, cfg->threads);
    if (st) { vaec_vae_destroy(m); return st; }
    m->rng_seed = cfg->seed;
    m->rng_counter = 0;
    *out = m;
    return VAEC_OK;
}

void vaec_vae_destroy(vaec_vae *m) {
    if (!m) return;
    vaec_pool_destroy(m->pool);
    vaec_arena_free(&m->arena);
    vaec_free(m->ws);
    vaec_free(m->w_lw);
    vaec_free(m->w_fws);
    vaec_spx_free(&m->spx);
    vaec_free(m);
}

const vaec_vae_config *vaec_vae_config_get(const vaec_vae *m) { return &m->cfg; }
int vaec_vae_threads(const vaec_vae *m) { return vaec_pool_size(m->pool); }
vaec_arena *vaec_vae_arena(vaec_vae *m) { return &m->arena; }
vaec_status vaec_vae_adam_step(vaec_vae *m, float lr) { return vaec_arena_adam_step(&m->arena, m->pool, lr); }
double vaec_vae_last_rec(const vaec_vae *m) { return m->last_rec; }
uint64_t vaec_vae_rng_counter(const vaec_vae *m) { return m->rng_counter; }
uint64_t vaec_vae_rng_seed(const vaec_vae *m) { return m->rng_seed; }
void vaec_vae_rng_set(vaec_vae *m, uint64_t seed, uint64_t counter) {
    m->rng_seed = seed;
    m->rng_counter = counter;
}

/* -------------------------------------------------------------- workspace */
/* Every buffer holds `rows` rows, rows rounded up to ROW_GRAIN. */
static vaec_status ensure_workspace(vaec_vae *m, int64_t rows) {
    rows = (rows + ROW_GRAIN - 1) / ROW_GRAIN * ROW_GRAIN;
    if (rows <= m->ws_rows) return VAEC_OK;
    const vaec_vae_config *c = &m->cfg;
    const int nh = c->n_hidden;
    int64_t D = c->input_dim, Z = c->latent_dim, Dout = m->dec_out.out;
    int64_t per_row = 0, hsum = 0;
    for (int i = 0; i < nh; i++) hsum += align16(c->hidden[i]);
    /* x, enc acts, heads, eps, z, dec acts, out, then the gradient twins */
    per_row = align16(D) + 2 * hsum + 2 * align16(2 * Z) + 3 * align16(Z) + 2 * align16(Dout) + 2 * hsum;
    per_row += align16(Z) + 2;   /* per-dimension KL, per-row IWAE weight (float) */
    per_row += 2 * align16(Z);    /* z_K and its gradient (flows) */
    per_row += 2 * 8;             /* eight float64 per row: rec, kl, lp, lpq, lse max and sum, logdet, its weight */
    float *fws = NULL;
    if (m->has_flow && !(fws = vaec_alloc((size_t)vaec_flow_ws_floats(&m->flow, rows), sizeof(float))))
        return vaec_fail(VAEC_ERR_NOMEM, "out of memory for the flow's workspace of %lld rows", (long long)rows);
    float *ws = vaec_alloc((size_t)rows, (size_t)per_row * sizeof(float));
    if (!ws) {
        vaec_free(fws);
        return vaec_fail(VAEC_ERR_NOMEM, "out of memory for a workspace of %lld rows", (long long)rows);
    }
    vaec_free(m->w_fws);
    m->w_fws = fws;
    vaec_free(m->ws);
    vaec_free(m->w_lw);
    m->w_lw = NULL;
    m->lw_cap = 0;
    m->ws = ws;
    m->ws_rows = rows;
    float *p = ws;
#define TAKE(ptr, cols) do { (ptr) = p; p += rows * align16(cols); } while (0)
    TAKE(m->w_x, D);
    for (int i = 0; i < nh; i++) TAKE(m->w_enc[i], c->hidden[i]);
    TAKE(m->w_heads, 2 * Z);
    TAKE(m->w_eps, Z);
    TAKE(m->w_z, Z);
    for (int i = 0; i < nh; i++) TAKE(m->w_dec[i], m->dec[i].out);
    TAKE(m->w_out, Dout);
    TAKE(m->d_out, Dout);
    for (int i = 0; i < nh; i++) TAKE(m->d_dec[i], m->dec[i].out);
    TAKE(m->d_z, Z);
    TAKE(m->d_heads, 2 * Z);
    for (int i = 0; i < nh; i++) TAKE(m->d_enc[i], c->hidden[i]);
    TAKE(m->w_kld, Z);
    TAKE(m->w_zk, Z);
    TAKE(m->d_zk, Z);
#undef TAKE
    /* the sparse first layer: without room for it, the dense path (it is only faster) */
    m->sp_for = NULL;
    if (nh && vaec_spx_alloc(&m->spx, rows, D)) {
        vaec_spx_free(&m->spx);
        vaec_clear_error();
    }
    m->w_rs = p;
    p += 2 * rows;
    m->w_rec = (double *)p;
    m->w_kl = m->w_rec + rows;
    m->w_lp = m->w_kl + rows;
    m->w_lpq = m->w_lp + rows;
    m->w_lse = m->w_lpq + rows;   /* max, then sum: 2 * rows */
    m->w_ld = m->w_lse + 2 * rows;
    m->w_dld = m->w_ld + rows;
    return VAEC_OK;
}

/* ----------------------------------------------------------------- pieces */
typedef struct {
    vaec_vae *m;
    const vaec_input *x;
    int64_t r0, R;
    uint64_t seed, stream;
} input_job;

static void input_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    input_job *j = ctx;
    int64_t D = j->x->dim;
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    for (int64_t r = a; r < b; r++) {
        float *dst = j->m->w_x + r * align16(D);
        int64_t row = j->r0 + r;
        if (j->x->dtype == VAEC_U8) {
            const uint8_t *s = (const uint8_t *)j->x->data + row * D;
            for (int64_t d = 0; d < D; d++) dst[d] = (float)s[d] * (1.0f / 255.0f);
        } else {
            const float *s = (const float *)j->x->data + row * D;
            memcpy(dst, s, (size_t)D * sizeof(float));
        }
        if (j->x->binarize) {
            /* Bernoulli(p) per pixel: uniform u in [0,1) < p; uniforms indexed by pixel */
            float u[256];
            for (int64_t d0 = 0; d0 < D; d0 += 256) {
                int64_t cnt = D - d0 < 256 ? D - d0 : 256;
                vaec_rng_uniform(u, cnt, j->seed, j->stream, (uint64_t)(row * D + d0));
                for (int64_t d = 0; d < cnt; d++) dst[d0 + d] = u[d] < dst[d0 + d] ? 1.0f : 0.0f;
            }
        }
    }
}

/* x rows [r0, r0+R) as float rows with stride *ld: in place when possible. */
static const float *prepare_input(vaec_vae *m, const vaec_input *x, int64_t r0, int64_t R,
                                  uint64_t seed, uint64_t counter, int64_t *ld) {
    if (x->dtype == VAEC_F32 && !x->binarize) {
        *ld = x->dim;
        return (const float *)x->data + r0 * x->dim;
    }
    input_job j = {m, x, r0, R, seed, stream_id(counter, STREAM_BINARIZE)};
    vaec_pool_run(m->pool, input_task, &j, vaec_ntasks(R, ROW_GRAIN));
    *ld = align16(x->dim);
    return m->w_x;
}

/* The model's layers on its padded workspace rows. Forward: out = act(in W^T + b), the
 * bias and activation fused into the GEMM. Backward: `act` is the activation whose output
 * is `in` (the layer below's), so din leaves already multiplied by act'. */
static void layer_forward(vaec_vae *m, const vaec_layer *L, vaec_act act, float *out, int64_t ldo,
                          const float *in, int64_t ldi, int64_t R) {
    vaec_dense_forward_act_strided(m->pool, out, ldo, in, ldi, m->arena.params + L->W, L->wt, m->arena.params + L->b,
                                   act, R, L->in, L->out);
}

/* The dense layers in arena order (the flow's tensors, if any, lie between the encoder's
 * heads and the decoder) and each one's bit in grad_fresh. */
static int dense_layers(vaec_vae *m, vaec_layer **out) {
    int k = 0;
    for (int i = 0; i < m->cfg.n_hidden; i++) out[k++] = &m->enc[i];
    out[k++] = &m->enc_heads;
    for (int i = 0; i < m->cfg.n_hidden; i++) out[k++] = &m->dec[i];
    out[k++] = &m->dec_out;
    return k;
}
static uint32_t layer_bit(const vaec_vae *m, const vaec_layer *L) {
    if (L == &m->enc_heads) return 1u << VAEC_MAX_HIDDEN;
    if (L == &m->dec_out) return 1u << (2 * VAEC_MAX_HIDDEN + 1);
    if (L >= m->enc && L < m->enc + VAEC_MAX_HIDDEN) return 1u << (L - m->enc);
    return 1u << (VAEC_MAX_HIDDEN + 1 + (L - m->dec));
}
static int64_t layer_end(const vaec_layer *L) { return align16(L->b + L->out); }

/* Start a call's gradients: every dense layer fresh, every other tensor (the flow's) and
 * the padding between them zeroed. */
static void grads_begin(vaec_vae *m) {
    vaec_layer *Ls[2 * VAEC_MAX_HIDDEN + 2];
    int n = dense_layers(m, Ls);
    float *g = m->arena.grads;
    int64_t at = 0;
    m->grad_fresh = 0;
    atomic_store(&m->grad_nonfinite, 0);
    for (int k = 0; k < n; k++) {
        if (Ls[k]->W > at) memset(g + at, 0, (size_t)(Ls[k]->W - at) * sizeof(float));
        at = layer_end(Ls[k]);
        m->grad_fresh |= layer_bit(m, Ls[k]);
    }
    if (m->arena.n > at) memset(g + at, 0, (size_t)(m->arena.n - at) * sizeof(float));
}

/* End them: a layer no backward reached (an empty batch, an error) gets zeros. */
static void grads_end(vaec_vae *m) {
    if (!m->grad_fresh) return;
    vaec_layer *Ls[2 * VAEC_MAX_HIDDEN + 2];
    int n = dense_layers(m, Ls);
    for (int k = 0; k < n; k++)
        if (m->grad_fresh & layer_bit(m, Ls[k]))
            memset(m->arena.grads + Ls[k]->W, 0, (size_t)(layer_end(Ls[k]) - Ls[k]->W) * sizeof(float));
    m->grad_fresh = 0;
}

static void layer_backward(vaec_vae *m, const vaec_layer *L, vaec_act act, float *din, int64_t ldin,
                           const float *dout, int64_t ldd, const float *in, int64_t ldi, int64_t R) {
    const uint32_t bit = layer_bit(m, L);
    const int accumulate = !(m->grad_fresh & bit);
    m->grad_fresh &= ~bit;
    vaec_dense_backward_act_strided_ex(m->pool, din, ldin, m->arena.grads + L->W, m->arena.grads + L->b, dout, ldd,
                                       in, ldi, m->arena.params + L->W, L->wt, act, R, L->in, L->out, accumulate,
                                       &m->grad_nonfinite);
}

/* KL per row (and per dimension, for free bits) and, with gradients, d_heads =
 * scale * dKL/d(mu, logvar) (zero when the objective has no analytic KL). */
typedef struct { vaec_vae *m; int64_t R; float scale; int grad, analytic; } kl_job;
static void kl_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    kl_job *j = ctx;
    vaec_vae *m = j->m;
    int64_t Z = m->cfg.latent_dim, ld = align16(2 * Z), lz = align16(Z);
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    if (m->cfg.deterministic) {
        /* an autoencoder: no KL, and the code's gradient comes only from the decoder */
        for (int64_t r = a; r < b; r++) {
            memset(m->w_kld + r * lz, 0, (size_t)Z * sizeof(float));
            m->w_kl[r] = m->w_rec[r] = 0.0;
            if (j->grad) memset(m->d_heads + r * ld, 0, (size_t)Z * sizeof(float));
        }
        return;
    }
    for (int64_t r = a; r < b; r++) {
        const float *mu = m->w_heads + r * ld, *lv = mu + Z;
        float *kld = m->w_kld + r * lz;
        double kl = 0.0;
        for (int64_t k = 0; k < Z; k++) {
            double e = exp((double)lv[k]);
            double v = 0.5 * ((double)mu[k] * mu[k] + e - 1.0 - lv[k]);
            kld[k] = (float)v;
            kl += v;
        }
        m->w_kl[r] = kl;
        m->w_rec[r] = 0.0;
        if (j->grad) {
            float *dmu = m->d_heads + r * ld, *dlv = dmu + Z;
            for (int64_t k = 0; k < Z; k++) {
                dmu[k] = j->analytic ? j->scale * mu[k] : 0.0f;
                dlv[k] = j->analytic ? j->scale * 0.5f * expm1f(lv[k]) : 0.0f;
            }
        }
    }
}

/* Free bits: zero the KL gradient of dimensions whose chunk-mean KL is below the floor. */
static void free_bits_mask(vaec_vae *m, int64_t R, float floor_nats, double *kl_floor_sum) {
    int64_t Z = m->cfg.latent_dim, ld = align16(2 * Z), lz = align16(Z);
    double total = 0.0;
    for (int64_t k = 0; k < Z; k++) {
        double mean = 0.0;
        for (int64_t r = 0; r < R; r++) mean += m->w_kld[r * lz + k];
        mean /= (double)R;
        total += mean > floor_nats ? mean : floor_nats;
        if (mean < floor_nats && m->d_heads)
            for (int64_t r = 0; r < R; r++) m->d_heads[r * ld + k] = m->d_heads[r * ld + Z + k] = 0.0f;
    }
    *kl_floor_sum = total;
}

/* The noise of a call: explicit eps, or the RNG key and counter to draw from. */
typedef struct { const float *eps; int L; uint64_t seed, counter; } noise_plan;

/* z = mu + exp(logvar/2) * eps, and per row log p(z) - log q(z|x) = 0.5 sum(eps^2 + logvar - z^2)
 * (the log 2 pi terms cancel) into w_lpq. */
typedef struct {
    vaec_vae *m;
    int64_t R;
    const float *rs;
    float w;
    int prior;
    int score;
    float baseline;
    int64_t src;   /* row r's mu and logvar are the heads' row r % src (samples stacked) */
    /* forward: the noise to fill w_eps from first (NULL: w_eps is ready): row r is sample
     * l + r / src of the call's row r0 + r % src of n */
    const noise_plan *np;
    int64_t n, r0;
    int l;
} reparam_job;
static void reparam_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reparam_job *j = ctx;
    vaec_vae *m = j->m;
    int64_t Z = m->cfg.latent_dim, ld = align16(2 * Z), lz = align16(Z);
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    if (m->cfg.deterministic) {   /* an autoencoder's code: z = mu */
        for (int64_t r = a; r < b; r++) {
            memcpy(m->w_z + r * lz, m->w_heads + (r % j->src) * ld, (size_t)Z * sizeof(float));
            m->w_lpq[r] = 0.0;
        }
        return;
    }
    for (int64_t r = a; r < b; r++) {
        const float *mu = m->w_heads + (r % j->src) * ld, *lv = mu + Z;
        float *eps = m->w_eps + r * lz;
        float *z = m->w_z + r * lz;
        if (j->np) {   /* eps index ((l + s) * n + r0 + row) * Z, whatever the stacking */
            const int64_t at = ((j->l + r / j->src) * j->n + j->r0 + r % j->src) * Z;
            if (j->np->eps) memcpy(eps, j->np->eps + at, (size_t)Z * sizeof(float));
            else vaec_rng_normal(eps, Z, j->np->seed, stream_id(j->np->counter, STREAM_EPS), (uint64_t)at);
        }
        double lpq = 0.0;
        for (int64_t k = 0; k < Z; k++) {
            z[k] = mu[k] + expf(0.5f * lv[k]) * eps[k];
            lpq += (double)eps[k] * eps[k] + lv[k] - (double)z[k] * z[k];
        }
        m->w_lpq[r] = 0.5 * lpq;
    }
}

/* With a flow: log p(z_K) - log q0(z_0|x) + log|det| = w_lpq + 0.5 sum(z_0^2 - z_K^2) + logdet. */
static void flow_lpq_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reparam_job *j = ctx;
    vaec_vae *m = j->m;
    int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    for (int64_t r = a; r < b; r++) {
        const float *z0 = m->w_z + r * lz, *zk = m->w_zk + r * lz;
        double d = 0.0;
        for (int64_t k = 0; k < Z; k++) d += (double)z0[k] * z0[k] - (double)zk[k] * zk[k];
        m->w_lpq[r] += 0.5 * d + m->w_ld[r];
    }
}

/* With a flow, the prior's gradient at z_K: d_zk += w_r * z_K (from -log p(z_K)), and the
 * log-det's loss weight -w_r per row for the flow's backward. */
static void flow_prior_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reparam_job *j = ctx;
    vaec_vae *m = j->m;
    int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    for (int64_t r = a; r < b; r++) {
        float w = j->rs ? j->rs[r] : j->w;
        const float *zk = m->w_zk + r * lz;
        float *d = m->d_zk + r * lz;
        for (int64_t k = 0; k < Z; k++) d[k] += w * zk[k];
        m->w_dld[r] = -(double)w;
    }
}

/* dz -> d(mu, logvar): dmu += dz, dlogvar += dz * eps * exp(logvar/2) / 2. With weights
 * w_r (rs, or the uniform w) on the Monte Carlo terms log p(z) - log q(z|x): dlogvar -=
 * w_r / 2 (from +log q = -0.5 sum(log 2 pi + logvar + eps^2) at fixed eps) and, when
 * `prior` (no flow: z_K = z), first dz += w_r * z (from -log p(z)).
 * With `score`, the score-function (REINFORCE) estimator of the encoder's gradient of
 * -E_q[log p(x|z)] instead: per row s = w * (log p(x|z) - baseline), w = 1/(nL), log p(x|z)
 * in w_lp, and d(mu, logvar) -= s * d log q(z|x)/d(mu, logvar) = s * (eps / sigma,
 * (eps^2 - 1) / 2); z is a sample there, not a function of (mu, logvar): dz is not used. */
static void reparam_back_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reparam_job *j = ctx;
    vaec_vae *m = j->m;
    int64_t Z = m->cfg.latent_dim, ld = align16(2 * Z), lz = align16(Z);
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    for (int64_t r = a; r < b; r++) {
        const float *lv = m->w_heads + r * ld + Z, *eps = m->w_eps + r * lz, *z = m->w_z + r * lz;
        float *dz = m->d_z + r * lz;
        float *dmu = m->d_heads + r * ld, *dlv = dmu + Z;
        if (m->cfg.deterministic) {
            for (int64_t k = 0; k < Z; k++) dmu[k] += dz[k];
            continue;
        }
        if (j->score) {
            float s = (float)((double)j->w * (m->w_lp[r] - (double)j->baseline));
            for (int64_t k = 0; k < Z; k++) {
                dmu[k] -= s * eps[k] * expf(-0.5f * lv[k]);
                dlv[k] -= s * 0.5f * (eps[k] * eps[k] - 1.0f);
            }
            continue;
        }
        float w = j->rs ? j->rs[r] : j->w;
        float wp = j->prior ? w : 0.0f;
        for (int64_t k = 0; k < Z; k++) {
            float g = dz[k] + wp * z[k];
            dmu[k] += g;
            dlv[k] += g * eps[k] * 0.5f * expf(0.5f * lv[k]) - 0.5f * w;
        }
    }
}

/* log p(x|z) per row into w_lp, and d_out = scale_r * d(-log p)/d(out) with scale_r the
 * row's weight (rs[r]) or the uniform `scale`; the vectorized kernels of elem.c, stable
 * forms (softplus, log-sigmoid), float64 row sums. */
typedef struct {
    vaec_vae *m;
    const float *x;
    int64_t ldx, R;
    float scale;
    const float *rs;
    int grad;
    int64_t xrows;   /* row r's data are x's row r % xrows (samples stacked) */
} lik_job;
static void lik_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    lik_job *j = ctx;
    vaec_vae *m = j->m;
    int64_t D = m->cfg.input_dim, ld = align16(m->dec_out.out);
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    int bern = m->cfg.likelihood == VAEC_LIK_BERNOULLI;
    for (int64_t r = a; r < b; r++) m->w_lp[r] = 0.0;
    /* with per-row weights one row per call; otherwise runs of rows whose data rows follow
     * each other (the whole slice, unless samples are stacked) */
    for (int64_t r = a, step; r < b; r += step) {
        const int64_t xr0 = r % j->xrows;
        step = j->rs ? 1 : b - r < j->xrows - xr0 ? b - r : j->xrows - xr0;
        const float *x = j->x + xr0 * j->ldx;
        float sc = j->rs ? j->rs[r] : j->scale;
        float *d = j->grad ? m->d_out + r * ld : NULL;
        if (!bern && m->cfg.deterministic) {
            /* an autoencoder's squared error: "log p" = -sum (x - o)^2, d = sc * 2 (o - x) */
            for (int64_t i = 0; i < step; i++) {
                const float *o = m->w_out + (r + i) * ld, *xr = x + i * j->ldx;
                double se = 0.0;
                for (int64_t k = 0; k < D; k++) {
                    float e = o[k] - xr[k];
                    se += (double)e * e;
                    if (d) d[i * ld + k] = sc * 2.0f * e;
                }
                m->w_lp[r + i] = -se;
            }
        } else if (bern)
            vaec_elem_bernoulli_rows(step, D, m->w_out + r * ld, ld, x, j->ldx, sc, d, ld, m->w_lp + r);
        else
            vaec_elem_gaussian_rows(step, D, m->w_out + r * ld, ld, x, j->ldx, sc, d, ld, m->w_lp + r);
    }
}

static vaec_status plan_noise(vaec_vae *m, const vaec_noise *noise, noise_plan *np) {
    int L = noise ? noise->samples : 1;
    if (L < 1) return vaec_fail(VAEC_ERR_ARG, "samples must be at least 1, got %d", L);
    np->L = L;
    np->eps = noise ? noise->eps : NULL;
    if (noise && noise->use_seed) {
        np->seed = noise->seed;
        np->counter = 0;
    } else {
        np->seed = m->rng_seed;
        np->counter = m->rng_counter++;
    }
    return VAEC_OK;
}

/* What a call computes. */
enum { RUN_ELBO = 0, RUN_IWAE = 1 };
typedef struct {
    int kind;          /* RUN_ELBO: analytic-KL ELBO; RUN_IWAE: importance-weighted bound */
    int grad;
    float beta, free_bits;
    int score;         /* the score-function estimator of the encoder's gradient */
    float baseline;
} run_plan;

/* The decoder on R latent rows g (stride ldg): hidden layers, then the output layer into
 * w_out; returns the last hidden layer (the output layer's input) and its stride. */
static const float *decoder_forward(vaec_vae *m, const float *g, int64_t ldg, int64_t R, int64_t *ldg_out) {
    for (int i = 0; i < m->cfg.n_hidden; i++) {
        layer_forward(m, &m->dec[i], m->cfg.activation, m->w_dec[i], align16(m->dec[i].out), g, ldg, R);
        g = m->w_dec[i];
        ldg = align16(m->dec[i].out);
    }
    layer_forward(m, &m->dec_out, VAEC_ACT_IDENTITY, m->w_out, align16(m->dec_out.out), g, ldg, R);
    *ldg_out = ldg;
    return g;
}

/* Samples l .. l+S-1 of the chunk's R rows, stacked: row s*R + r is sample l+s of row r.
 * Their eps rows (index ((l+s) * n + r0 + r) * Z of the call's noise, so the noise does
 * not depend on S), z (through the flow, when there is one, with its terms added to
 * w_lpq), and the decoder on the S*R rows. */
static vaec_status decode_samples(vaec_vae *m, const noise_plan *np, int64_t n, int64_t r0, int64_t R, int l, int S,
                                  const float **g_out, int64_t *ldg_out) {
    const int64_t lz = align16(m->cfg.latent_dim);
    /* the tasks draw (or copy) each row's eps, then z */
    reparam_job rj = {m, R * S, NULL, 0.0f, 0, 0, 0.0f, R, np, n, r0, l};
    R *= S;
    vaec_pool_run(m->pool, reparam_task, &rj, vaec_ntasks(R, ROW_GRAIN));
    const float *g = m->w_z;
    int64_t ldg = lz;
    if (m->has_flow) {
        vaec_status st = vaec_flow_forward(&m->flow, m->pool, &m->arena, m->w_z, lz, m->w_zk, lz, m->w_ld, R,
                                           m->w_fws, m->ws_rows);
        if (st) return st;
        vaec_pool_run(m->pool, flow_lpq_task, &rj, vaec_ntasks(R, ROW_GRAIN));
        g = m->w_zk;
    }
    *g_out = decoder_forward(m, g, ldg, R, ldg_out);
    return VAEC_OK;
}

/* Decoder backward from d_out down to the latent code, through the flow when there is
 * one, then into d_heads. Weights on the Monte Carlo terms log p(z_K) - log q0(z_0|x) +
 * log|det|: per row (rs, IWAE) or uniform (w: beta/(nL) for the ELBO with a flow; 0 with
 * the analytic KL, whose gradient kl_task already put in d_heads). */
static vaec_status backward_sample(vaec_vae *m, int64_t R, const float *g, int64_t ldg, const float *rs, float w,
                                   int score, float baseline) {
    const vaec_vae_config *c = &m->cfg;
    const int nh = c->n_hidden;
    const int64_t lz = align16(c->latent_dim);
    float *dlat = m->has_flow ? m->d_zk : m->d_z;
    const float *lat = m->has_flow ? m->w_zk : m->w_z;
    float *dprev = nh ? m->d_dec[nh - 1] : dlat;
    int64_t lprev = nh ? align16(m->dec[nh - 1].out) : lz;
    layer_backward(m, &m->dec_out, nh ? c->activation : VAEC_ACT_IDENTITY, dprev, lprev, m->d_out,
                   align16(m->dec_out.out), g, ldg, R);
    for (int i = nh - 1; i >= 0; i--) {
        int64_t ldi = align16(m->dec[i].out);
        const float *gin = i ? m->w_dec[i - 1] : lat;
        int64_t ldin = i ? align16(m->dec[i - 1].out) : lz;
        float *din = i ? m->d_dec[i - 1] : dlat;
        layer_backward(m, &m->dec[i], i ? c->activation : VAEC_ACT_IDENTITY, din, ldin, m->d_dec[i], ldi, gin, ldin, R);
    }
    /* with score, w is the per-sample weight 1/(nL) (no flow, analytic KL) */
    reparam_job rj = {m, R, rs, w, !m->has_flow, score, baseline, R, NULL, 0, 0, 0};
    if (m->has_flow) {
        vaec_pool_run(m->pool, flow_prior_task, &rj, vaec_ntasks(R, ROW_GRAIN));
        vaec_status st = vaec_flow_backward(&m->flow, m->pool, &m->arena, m->d_zk, lz, m->w_dld, 0.0, m->d_z, lz, R,
                                            m->w_fws, m->ws_rows);
        if (st) return st;
    }
    vaec_pool_run(m->pool, reparam_back_task, &rj, vaec_ntasks(R, ROW_GRAIN));
    return VAEC_OK;
}

/* enc[0] on the sparse copy of its input, when vaec_spx_build says so: returns 1 then. */
static int sparse_first_forward(vaec_vae *m, const float *xin, int64_t ldx, int64_t R) {
    m->sp_for = NULL;
    const vaec_layer *L = &m->enc[0];
    if (!m->cfg.n_hidden || !m->spx.cap_rows || !vaec_spx_build(m->pool, xin, ldx, R, L->in, &m->spx)) return 0;
    vaec_sparse_forward(m->pool, &m->spx, m->arena.params + L->W, L->out, m->arena.params + L->b, m->cfg.activation,
                        m->w_enc[0], align16(L->out), L->out);
    m->sp_for = xin;
    m->sp_rows = R;
    return 1;
}

/* enc[0]'s parameter gradients from d_enc[0] on the sparse copy the forward used. */
static void sparse_first_backward(vaec_vae *m, int64_t R) {
    const vaec_layer *L = &m->enc[0];
    const uint32_t bit = layer_bit(m, L);
    const int accumulate = !(m->grad_fresh & bit);
    const int64_t ldd = align16(L->out);
    m->grad_fresh &= ~bit;
    vaec_sparse_weight_grad(m->pool, &m->spx, m->d_enc[0], ldd, L->out, m->arena.grads + L->W, accumulate,
                            &m->grad_nonfinite);
    vaec_dense_bias_grad(m->pool, m->arena.grads + L->b, m->d_enc[0], ldd, R, L->out, accumulate,
                         &m->grad_nonfinite);
}

/* The encoder on R input rows (stride ldx): hidden layers, then the heads [mu | logvar]
 * into w_heads; returns the last hidden layer (the heads' input) and its stride. */
static const float *encoder_forward(vaec_vae *m, const float *xin, int64_t ldx, int64_t R, int64_t *ldh) {
    const float *h = xin;
    *ldh = ldx;
    for (int i = 0; i < m->cfg.n_hidden; i++) {
        if (i || !sparse_first_forward(m, xin, ldx, R))
            layer_forward(m, &m->enc[i], m->cfg.activation, m->w_enc[i], align16(m->enc[i].out), h, *ldh, R);
        h = m->w_enc[i];
        *ldh = align16(m->enc[i].out);
    }
    layer_forward(m, &m->enc_heads, VAEC_ACT_IDENTITY, m->w_heads, align16(2 * m->cfg.latent_dim), h, *ldh, R);
    return h;
}

/* The encoder's backward from d_heads: adds its parameters' gradients (no input gradient).
 * Each layer's input gradient comes out already multiplied by the activation's derivative
 * of the layer below (the fused epilogue), so d_enc[i] is the pre-activation gradient. */
static void encoder_backward(vaec_vae *m, const float *xin, int64_t ldx, const float *h, int64_t ldh, int64_t R) {
    const int nh = m->cfg.n_hidden;
    const vaec_act act = m->cfg.activation;
    float *dh = nh ? m->d_enc[nh - 1] : NULL;
    layer_backward(m, &m->enc_heads, nh ? act : VAEC_ACT_IDENTITY, dh, nh ? align16(m->enc[nh - 1].out) : 0,
                   m->d_heads, align16(2 * m->cfg.latent_dim), h, ldh, R);
    for (int i = nh - 1; i >= 0; i--) {
        int64_t ldi = align16(m->enc[i].out);
        const float *in = i ? m->w_enc[i - 1] : xin;
        int64_t ldin = i ? align16(m->enc[i - 1].out) : ldx;
        float *din = i ? m->d_enc[i - 1] : NULL;
        if (!i && m->sp_for == xin && m->sp_rows == R) sparse_first_backward(m, R);
        else layer_backward(m, &m->enc[i], i ? act : VAEC_ACT_IDENTITY, din, i ? ldin : 0, m->d_enc[i], ldi, in, ldin, R);
    }
}

/* How many samples of R rows go through the decoder at once: 1 with a backward pass per
 * sample (its activations must be the sample's alone), else as many as the workspace
 * holds (forward_all sizes it for min(VAE_CHUNK, chunk * L) rows). */
static int stack_samples(const vaec_vae *m, int64_t R, int L, int stackable) {
    if (!stackable || R <= 0) return 1;
    int64_t S = m->ws_rows / R;
    return S < 1 ? 1 : S > L ? L : (int)S;
}

/* One chunk of rows [r0, r0+R) of an n-row batch.
 * RUN_ELBO: per-row ELBO = (1/L) sum_l log p(x|z_l) - KL into out; the objective
 *   -(1/L) sum log p(x|z_l) + beta * KL (KL per dimension floored at free_bits, chunk-
 *   averaged) summed into *obj_sum; with grad, gradients of its batch mean added.
 * RUN_IWAE: per-row log (1/k) sum_l w_l, log w = log p(x|z) + log p(z) - log q(z|x),
 *   by a streaming log-sum-exp in float64 (k = L samples, never all held); with grad, a
 *   second pass recomputes each sample and back-propagates it with its normalized
 *   weight (Burda et al. 2016), so no per-sample activations are kept. */
static vaec_status run_chunk(vaec_vae *m, const vaec_input *x, int64_t r0, int64_t R, const noise_plan *np,
                      const run_plan *rp, double *out, double *obj_sum) {
    const int64_t n = x->n;
    const int grad = rp->grad, L = np->L;
    vaec_pool *pool = m->pool;
    int64_t ldx;
    const float *xin = prepare_input(m, x, r0, R, np->seed, np->counter, &ldx);

    int64_t ldh;
    const float *h = encoder_forward(m, xin, ldx, R, &ldh);
    const int analytic = rp->kind == RUN_ELBO && !m->has_flow;
    kl_job kj = {m, R, (float)(rp->beta / (double)n), grad, analytic};
    vaec_pool_run(pool, kl_task, &kj, vaec_ntasks(R, ROW_GRAIN));

    const float *g;
    int64_t ldg;
    double s = 0.0;
    vaec_status st;
    /* Without a backward pass per sample, S samples at a time go through the decoder as
     * S*R stacked rows (as many as the workspace holds): few rows (an example's likelihood
     * with many samples) then make large products. Each row's sums stay in sample order. */
    const int S = stack_samples(m, R, L, rp->kind == RUN_IWAE || !grad);
    if (rp->kind == RUN_ELBO && m->has_flow) {
        /* no analytic KL through a flow: the Monte Carlo estimate of
         * log q0(z_0|x) - log p(z_K) - log|det| per sample, weighted by beta */
        const float scale = (float)(1.0 / ((double)n * L));
        double *klmc = m->w_lse;
        for (int64_t r = 0; r < R; r++) klmc[r] = 0.0;
        for (int l = 0; l < L; l += S) {
            const int sn = L - l < S ? L - l : S;
            if ((st = decode_samples(m, np, n, r0, R, l, sn, &g, &ldg))) return st;
            lik_job lj = {m, xin, ldx, R * sn, scale, NULL, grad, R};
            vaec_pool_run(pool, lik_task, &lj, vaec_ntasks(R * sn, ROW_GRAIN));
            for (int64_t q = 0; q < R * sn; q++) {
                m->w_rec[q % R] += m->w_lp[q];
                klmc[q % R] -= m->w_lpq[q];
            }
            if (grad && (st = backward_sample(m, R, g, ldg, NULL, rp->beta * scale, 0, 0.0f))) return st;
        }
        for (int64_t r = 0; r < R; r++) {
            m->rec_sum += m->w_rec[r] / L;
            double e = (m->w_rec[r] - klmc[r]) / L;
            if (out) out[r0 + r] = e;
            s -= (m->w_rec[r] - rp->beta * klmc[r]) / L;
        }
    } else if (rp->kind == RUN_ELBO) {
        double kl_obj = 0.0;  /* the chunk's KL term of the objective, summed over rows */
        if (rp->free_bits > 0.0f) {
            double per_row;
            free_bits_mask(m, R, rp->free_bits, &per_row);
            kl_obj = per_row * (double)R;
        } else {
            for (int64_t r = 0; r < R; r++) kl_obj += m->w_kl[r];
        }
        const float scale = (float)(1.0 / ((double)n * L));
        for (int l = 0; l < L; l += S) {
            const int sn = L - l < S ? L - l : S;
            if ((st = decode_samples(m, np, n, r0, R, l, sn, &g, &ldg))) return st;
            lik_job lj = {m, xin, ldx, R * sn, scale, NULL, grad, R};
            vaec_pool_run(pool, lik_task, &lj, vaec_ntasks(R * sn, ROW_GRAIN));
            for (int64_t q = 0; q < R * sn; q++) m->w_rec[q % R] += m->w_lp[q];
            if (grad && (st = backward_sample(m, R, g, ldg, NULL, rp->score ? scale : 0.0f, rp->score, rp->baseline)))
                return st;
        }
        for (int64_t r = 0; r < R; r++) {
            m->rec_sum += m->w_rec[r] / L;
            double e = m->w_rec[r] / L - m->w_kl[r];
            if (out) out[r0 + r] = e;
            s -= m->w_rec[r] / L;
        }
        s += rp->beta * kl_obj;
    } else {
        /* pass 1: log weights, streamed through a per-row log-sum-exp */
        double *mx = m->w_lse, *sm = m->w_lse + m->ws_rows;
        for (int64_t r = 0; r < R; r++) { mx[r] = -INFINITY; sm[r] = 0.0; }
        for (int l = 0; l < L; l += S) {
            const int sn = L - l < S ? L - l : S;
            if ((st = decode_samples(m, np, n, r0, R, l, sn, &g, &ldg))) return st;
            lik_job lj = {m, xin, ldx, R * sn, 0.0f, NULL, 0, R};
            vaec_pool_run(pool, lik_task, &lj, vaec_ntasks(R * sn, ROW_GRAIN));
            for (int64_t q = 0; q < R * sn; q++) {
                const int64_t r = q % R;
                double lw = m->w_lp[q] + m->w_lpq[q];
                if (grad) m->w_lw[r * m->lw_cap + l + q / R] = lw;
                if (lw > mx[r]) { sm[r] = sm[r] * exp(mx[r] - lw) + 1.0; mx[r] = lw; }
                else sm[r] += exp(lw - mx[r]);
            }
        }
        for (int64_t r = 0; r < R; r++) {
            double bound = mx[r] + log(sm[r]) - log((double)L);
            if (out) out[r0 + r] = bound;
            s -= bound;
        }
        if (grad) {
            /* pass 2: each sample again, weighted by w_l / sum w (per row) / n */
            for (int l = 0; l < L; l++) {
                for (int64_t r = 0; r < R; r++)
                    m->w_rs[r] = (float)(exp(m->w_lw[r * m->lw_cap + l] - mx[r]) / sm[r] / (double)n);
                if ((st = decode_samples(m, np, n, r0, R, l, 1, &g, &ldg))) return st;
                lik_job lj = {m, xin, ldx, R, 0.0f, m->w_rs, 1, R};
                vaec_pool_run(pool, lik_task, &lj, vaec_ntasks(R, ROW_GRAIN));
                if ((st = backward_sample(m, R, g, ldg, m->w_rs, 0.0f, 0, 0.0f))) return st;
            }
        }
    }
    *obj_sum += s;
    if (grad) encoder_backward(m, xin, ldx, h, ldh, R);
    return VAEC_OK;
}

static vaec_status check_input(const vaec_vae *m, const vaec_input *x) {
    if (!x || (!x->data && x->n > 0)) return vaec_fail(VAEC_ERR_ARG, "x: no data");
    if (x->n < 0) return vaec_fail(VAEC_ERR_ARG, "x: negative number of rows");
    if (x->dim != m->cfg.input_dim)
        return vaec_fail(VAEC_ERR_ARG, "x: expected %lld columns (input_dim), got %lld",
                         (long long)m->cfg.input_dim, (long long)x->dim);
    if (x->dtype != VAEC_F32 && x->dtype != VAEC_U8) return vaec_fail(VAEC_ERR_ARG, "x: unknown dtype");
    return VAEC_OK;
}

static vaec_status forward_all(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, const run_plan *rp,
                               double *out, double *loss) {
    vaec_status st = check_input(m, x);
    if (st) return st;
    noise_plan np = {0};
    if ((st = plan_noise(m, noise, &np))) return st;
    int64_t chunk = x->n < VAE_CHUNK ? x->n : VAE_CHUNK;
    if (rp->kind == RUN_IWAE || !rp->grad) {   /* room to stack samples (stack_samples) */
        int64_t stacked = chunk * np.L;
        chunk = stacked > VAE_CHUNK ? VAE_CHUNK : stacked;
    }
    if (chunk > 0 && (st = ensure_workspace(m, chunk))) return st;
    if (m->has_flow && rp->free_bits > 0.0f)
        return vaec_fail(VAEC_ERR_ARG, "free_bits needs the analytic KL, which a flow posterior does not have");
    if (rp->score && (m->has_flow || m->cfg.deterministic))
        return vaec_fail(VAEC_ERR_ARG, "estimator: the score-function estimator needs a diagonal Gaussian posterior "
                         "(no flow, not an autoencoder)");
    if (m->cfg.deterministic && (rp->free_bits > 0.0f || rp->beta != 1.0f))
        return vaec_fail(VAEC_ERR_ARG, "an autoencoder has no KL term for beta or free_bits to act on");
    if (rp->kind == RUN_IWAE && m->cfg.deterministic)
        return vaec_fail(VAEC_ERR_ARG, "an autoencoder has no posterior: importance-weighted bounds do not apply");
    if (rp->kind == RUN_IWAE && rp->grad && np.L > m->lw_cap) {
        /* per-row log weights of every sample, for the weighted second pass */
        double *lw = vaec_alloc((size_t)m->ws_rows * (size_t)np.L, sizeof(double));
        if (!lw) return vaec_fail(VAEC_ERR_NOMEM, "out of memory for %d importance samples", np.L);
        vaec_free(m->w_lw);
        m->w_lw = lw;
        m->lw_cap = np.L;
    }
    if (rp->grad) grads_begin(m);
    double sum = 0.0;
    m->rec_sum = 0.0;
    for (int64_t r0 = 0; r0 < x->n && !st; r0 += VAE_CHUNK) {
        int64_t R = x->n - r0 < VAE_CHUNK ? x->n - r0 : VAE_CHUNK;
        st = run_chunk(m, x, r0, R, &np, rp, out, &sum);
    }
    if (rp->grad) grads_end(m);
    if (st) return st;
    if (loss) *loss = x->n > 0 ? sum / (double)x->n : 0.0;
    m->last_rec = x->n > 0 ? m->rec_sum / (double)x->n : 0.0;
    return VAEC_OK;
}

static vaec_status plan_objective(const vaec_objective *obj, int grad, run_plan *rp) {
    rp->kind = RUN_ELBO;
    rp->grad = grad;
    rp->beta = 1.0f;
    rp->free_bits = 0.0f;
    rp->score = 0;
    rp->baseline = 0.0f;
    if (!obj) return VAEC_OK;
    if (!(obj->beta >= 0.0f) || !isfinite(obj->beta)) return vaec_fail(VAEC_ERR_ARG, "beta must be a finite number >= 0, got %g", obj->beta);
    if (!(obj->free_bits >= 0.0f) || !isfinite(obj->free_bits))
        return vaec_fail(VAEC_ERR_ARG, "free_bits must be a finite number >= 0, got %g", obj->free_bits);
    if (obj->iw && (obj->beta != 1.0f || obj->free_bits != 0.0f))
        return vaec_fail(VAEC_ERR_ARG, "beta and free_bits apply to the ELBO, not to the IWAE objective");
    if (obj->estimator != VAEC_EST_REPARAM && obj->estimator != VAEC_EST_SCORE)
        return vaec_fail(VAEC_ERR_ARG, "estimator: unknown code %d", obj->estimator);
    if (obj->estimator == VAEC_EST_SCORE && obj->iw)
        return vaec_fail(VAEC_ERR_ARG, "estimator: the score-function estimator is for the ELBO, not the IWAE objective");
    if (!isfinite(obj->baseline)) return vaec_fail(VAEC_ERR_ARG, "baseline must be finite, got %g", obj->baseline);
    rp->kind = obj->iw ? RUN_IWAE : RUN_ELBO;
    rp->beta = obj->beta;
    rp->free_bits = obj->free_bits;
    rp->score = obj->estimator == VAEC_EST_SCORE;
    rp->baseline = obj->baseline;
    return VAEC_OK;
}

vaec_status vaec_vae_loss_grad(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                               const vaec_objective *obj, double *loss) {
    if (x && x->n == 0) return vaec_fail(VAEC_ERR_ARG, "x: empty batch; the loss needs at least one example");
    run_plan rp;
    vaec_status st = plan_objective(obj, 1, &rp);
    if (st || (st = forward_all(m, x, noise, &rp, NULL, loss))) return st;
    if (!isfinite(*loss))
        return vaec_fail(VAEC_ERR_NONFINITE, "the loss is %s (non-finite)", isnan(*loss) ? "NaN" : "Inf");
    return VAEC_OK;
}

vaec_status vaec_vae_elbo(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *out) {
    run_plan rp = {RUN_ELBO, 0, 1.0f, 0.0f, 0, 0.0f};
    return forward_all(m, x, noise, &rp, out, NULL);
}

vaec_status vaec_vae_iwae(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *out) {
    run_plan rp = {RUN_IWAE, 0, 1.0f, 0.0f, 0, 0.0f};
    return forward_all(m, x, noise, &rp, out, NULL);
}

vaec_status vaec_vae_train_step(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                                const vaec_objective *obj, float lr, double *loss) {
    if (!(lr >= 0.0f) || !isfinite(lr)) return vaec_fail(VAEC_ERR_ARG, "lr must be a finite number >= 0, got %g", lr);
    vaec_status st = vaec_vae_loss_grad(m, x, noise, obj, loss);
    if (st) return st;
    /* Without a flow every gradient is a dense layer's, checked for Inf and NaN as it was
     * written (the rest of the buffer is zeros): Adam need not read them all once more. */
    return vaec_arena_adam_step_ex(&m->arena, m->pool, lr, m->has_flow ? -1 : atomic_load(&m->grad_nonfinite));
}

/* ------------------------------------------------------------- wake-sleep */
/* Sleep-phase dreams: row r of the chunk gets z ~ N(0, I) (already in w_z) decoded into
 * w_out, then x ~ p(x|z) into w_x: Bernoulli pixels u < sigmoid(logit), or Gaussian
 * mean + exp(logvar/2) * e. Random numbers are indexed by the dream's number, so any
 * split of the work gives the same dreams. */
typedef struct { vaec_vae *m; int64_t r0, R; uint64_t seed, stream; } dream_job;
#define DREAM_X_OFFSET ((uint64_t)1 << 40)   /* the pixels' numbers, after the codes' */
static void dream_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    dream_job *j = ctx;
    vaec_vae *m = j->m;
    const int64_t D = m->cfg.input_dim, lx = align16(D), lo = align16(m->dec_out.out);
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    float buf[256];
    for (int64_t r = a; r < b; r++) {
        const float *o = m->w_out + r * lo;
        float *xr = m->w_x + r * lx;
        for (int64_t d0 = 0; d0 < D; d0 += 256) {
            int64_t cnt = D - d0 < 256 ? D - d0 : 256;
            uint64_t off = DREAM_X_OFFSET + (uint64_t)((j->r0 + r) * D + d0);
            if (m->cfg.likelihood == VAEC_LIK_BERNOULLI) {
                vaec_rng_uniform(buf, cnt, j->seed, j->stream, off);
                for (int64_t d = 0; d < cnt; d++) {
                    /* u < sigmoid(l) without overflow: u (1 + e^-l) < 1, e^-l computed on the
                     * side where it is at most 1 */
                    float l = o[d0 + d], u = buf[d];
                    xr[d0 + d] = (l >= 0.0f ? u * (1.0f + expf(-l)) < 1.0f : u * (expf(l) + 1.0f) < expf(l)) ? 1.0f : 0.0f;
                }
            } else {
                vaec_rng_normal(buf, cnt, j->seed, j->stream, off);
                for (int64_t d = 0; d < cnt; d++)
                    xr[d0 + d] = o[d0 + d] + expf(0.5f * o[D + d0 + d]) * buf[d];
            }
        }
    }
}

/* The sleep loss -log q(z|x) per row into w_rec, and d_heads = scale * its gradient. */
typedef struct { vaec_vae *m; int64_t R; float scale; } sleep_job;
static void sleep_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    sleep_job *j = ctx;
    vaec_vae *m = j->m;
    const int64_t Z = m->cfg.latent_dim, ld = align16(2 * Z), lz = align16(Z);
    const double log2pi = 1.8378770664093453;
    int64_t a = t * ROW_GRAIN, b = a + ROW_GRAIN < j->R ? a + ROW_GRAIN : j->R;
    for (int64_t r = a; r < b; r++) {
        const float *mu = m->w_heads + r * ld, *lv = mu + Z, *z = m->w_z + r * lz;
        float *dmu = m->d_heads + r * ld, *dlv = dmu + Z;
        double nll = 0.0;
        for (int64_t k = 0; k < Z; k++) {
            float e = z[k] - mu[k], ivar = expf(-lv[k]), q = e * e * ivar;
            nll += 0.5 * (log2pi + (double)lv[k] + (double)q);
            dmu[k] = -j->scale * e * ivar;
            dlv[k] = j->scale * 0.5f * (1.0f - q);
        }
        m->w_rec[r] = nll;
    }
}

vaec_status vaec_vae_wake_sleep_grad(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, int64_t dreams,
                                     double *wake_loss, double *sleep_loss) {
    if (m->has_flow || m->cfg.deterministic)
        return vaec_fail(VAEC_ERR_ARG, "wake-sleep trains a VAE with a diagonal Gaussian posterior (no flow, not an autoencoder)");
    if (dreams < 1) return vaec_fail(VAEC_ERR_ARG, "dreams must be at least 1, got %lld", (long long)dreams);
    if (x && x->n == 0) return vaec_fail(VAEC_ERR_ARG, "x: empty batch; the loss needs at least one example");
    /* wake: the ELBO's gradients, of which the decoder's are grad_theta -log p(x|z), z ~ q(z|x) */
    run_plan rp = {RUN_ELBO, 1, 1.0f, 0.0f, 0, 0.0f};
    double wl = 0.0;
    vaec_status st = forward_all(m, x, noise, &rp, NULL, &wl);
    if (st) return st;
    if (!isfinite(wl)) return vaec_fail(VAEC_ERR_NONFINITE, "the wake loss is %s (non-finite)", isnan(wl) ? "NaN" : "Inf");
    /* sleep: the encoder's gradients replaced by those of -log q(z|x) on dreams */
    uint64_t seed, counter;
    if (noise && noise->use_seed) { seed = noise->seed; counter = 0; }
    else { seed = m->rng_seed; counter = m->rng_counter++; }
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z), lx = align16(m->cfg.input_dim);
    int64_t enc_end = m->cfg.n_hidden ? m->dec[0].W : m->dec_out.W;   /* encoder tensors come first */
    memset(m->arena.grads, 0, (size_t)enc_end * sizeof(float));
    if ((st = ensure_workspace(m, dreams < VAE_CHUNK ? dreams : VAE_CHUNK))) return st;
    const uint64_t stream = stream_id(counter, STREAM_DREAM);
    double sl = 0.0;
    for (int64_t r0 = 0; r0 < dreams; r0 += VAE_CHUNK) {
        int64_t R = dreams - r0 < VAE_CHUNK ? dreams - r0 : VAE_CHUNK, ldg, ldh;
        for (int64_t r = 0; r < R; r++) vaec_rng_normal(m->w_z + r * lz, Z, seed, stream, (uint64_t)((r0 + r) * Z));
        decoder_forward(m, m->w_z, lz, R, &ldg);
        dream_job dj = {m, r0, R, seed, stream};
        vaec_pool_run(m->pool, dream_task, &dj, vaec_ntasks(R, ROW_GRAIN));
        const float *h = encoder_forward(m, m->w_x, lx, R, &ldh);
        sleep_job sj = {m, R, (float)(1.0 / (double)dreams)};
        vaec_pool_run(m->pool, sleep_task, &sj, vaec_ntasks(R, ROW_GRAIN));
        for (int64_t r = 0; r < R; r++) sl += m->w_rec[r];
        encoder_backward(m, m->w_x, lx, h, ldh, R);
    }
    sl /= (double)dreams;
    if (!isfinite(sl)) return vaec_fail(VAEC_ERR_NONFINITE, "the sleep loss is %s (non-finite)", isnan(sl) ? "NaN" : "Inf");
    if (wake_loss) *wake_loss = wl;
    if (sleep_loss) *sleep_loss = sl;
    return VAEC_OK;
}

vaec_status vaec_vae_encode(vaec_vae *m, const vaec_input *x, float *mu, float *logvar) {
    vaec_status st = check_input(m, x);
    if (st) return st;
    const int64_t Z = m->cfg.latent_dim, lh = align16(2 * Z);
    int64_t chunk = x->n < VAE_CHUNK ? x->n : VAE_CHUNK;
    if (chunk > 0 && (st = ensure_workspace(m, chunk))) return st;
    for (int64_t r0 = 0; r0 < x->n; r0 += VAE_CHUNK) {
        int64_t R = x->n - r0 < VAE_CHUNK ? x->n - r0 : VAE_CHUNK, ldx, ldh;
        const float *xin = prepare_input(m, x, r0, R, m->rng_seed, m->rng_counter, &ldx);
        encoder_forward(m, xin, ldx, R, &ldh);
        for (int64_t r = 0; r < R; r++) {
            if (mu) memcpy(mu + (r0 + r) * Z, m->w_heads + r * lh, (size_t)Z * sizeof(float));
            if (logvar && !m->cfg.deterministic) memcpy(logvar + (r0 + r) * Z, m->w_heads + r * lh + Z, (size_t)Z * sizeof(float));
        }
    }
    return VAEC_OK;
}

vaec_status vaec_vae_flow_forward(vaec_vae *m, const float *z, int64_t n, float *zk, double *logdet) {
    if (n < 0) return vaec_fail(VAEC_ERR_ARG, "z: negative number of rows");
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    vaec_status st;
    int64_t chunk = n < VAE_CHUNK ? n : VAE_CHUNK;
    if (chunk > 0 && (st = ensure_workspace(m, chunk))) return st;
    for (int64_t r0 = 0; r0 < n; r0 += VAE_CHUNK) {
        int64_t R = n - r0 < VAE_CHUNK ? n - r0 : VAE_CHUNK;
        for (int64_t r = 0; r < R; r++) memcpy(m->w_z + r * lz, z + (r0 + r) * Z, (size_t)Z * sizeof(float));
        if (m->has_flow) {
            if ((st = vaec_flow_forward(&m->flow, m->pool, &m->arena, m->w_z, lz, m->w_zk, lz, m->w_ld, R,
                                        m->w_fws, m->ws_rows)))
                return st;
        }
        for (int64_t r = 0; r < R; r++) {
            memcpy(zk + (r0 + r) * Z, (m->has_flow ? m->w_zk : m->w_z) + r * lz, (size_t)Z * sizeof(float));
            if (logdet) logdet[r0 + r] = m->has_flow ? m->w_ld[r] : 0.0;
        }
    }
    return VAEC_OK;
}

vaec_status vaec_vae_decode(vaec_vae *m, const float *z, int64_t n, float *out) {
    if (n < 0) return vaec_fail(VAEC_ERR_ARG, "z: negative number of rows");
    const int64_t D = m->cfg.input_dim, Z = m->cfg.latent_dim, lz = align16(Z), lo = align16(m->dec_out.out);
    vaec_status st;
    int64_t chunk = n < VAE_CHUNK ? n : VAE_CHUNK;
    if (chunk > 0 && (st = ensure_workspace(m, chunk))) return st;
    for (int64_t r0 = 0; r0 < n; r0 += VAE_CHUNK) {
        int64_t R = n - r0 < VAE_CHUNK ? n - r0 : VAE_CHUNK;
        for (int64_t r = 0; r < R; r++) memcpy(m->w_z + r * lz, z + (r0 + r) * Z, (size_t)Z * sizeof(float));
        int64_t ldg;
        decoder_forward(m, m->w_z, lz, R, &ldg);
        for (int64_t r = 0; r < R; r++) {
            float *dst = out + (r0 + r) * D;
            const float *o = m->w_out + r * lo;
            if (m->cfg.likelihood == VAEC_LIK_BERNOULLI)
                vaec_act_forward(VAEC_ACT_SIGMOID, dst, o, D);
            else
                memcpy(dst, o, (size_t)D * sizeof(float));
        }
    }
    return VAEC_OK;
}

/* ------------------------------------------------------------------ files */
/* The VAE's config record: i64 input_dim, i64 latent_dim, i32 n_hidden, i32 activation,
 * i32 likelihood, i32 deterministic (0 in files from before autoencoders), i64 hidden[8], u64 seed, char flow[48] (152 bytes, little-endian). */
#define VAE_CONFIG_BYTES 152

vaec_status vaec_vae_save(const vaec_vae *m, const char *path, const void *extra, uint32_t extra_len) {
    unsigned char rec[VAE_CONFIG_BYTES] = {0};
    const vaec_vae_config *c = &m->cfg;
    int64_t i64[2] = {c->input_dim, c->latent_dim};
    int32_t i32[4] = {c->n_hidden, (int32_t)c->activation, (int32_t)c->likelihood, c->deterministic};
    int64_t hid[VAEC_MAX_HIDDEN] = {0};
    for (int i = 0; i < c->n_hidden; i++) hid[i] = c->hidden[i];
    memcpy(rec, i64, 16);
    memcpy(rec + 16, i32, 16);
    memcpy(rec + 32, hid, 64);
    memcpy(rec + 96, &c->seed, 8);
    memcpy(rec + 104, c->flow, sizeof c->flow);
    return vaec_file_write_ex(path, c->deterministic ? VAEC_KIND_AE : VAEC_KIND_VAE, rec, VAE_CONFIG_BYTES, &m->arena, m->rng_seed, m->rng_counter,
                              extra, extra_len);
}

vaec_status vaec_vae_load(vaec_vae **out, const char *path, int threads, void **extra, uint32_t *extra_len) {
    *out = NULL;
    if (extra) { *extra = NULL; *extra_len = 0; }
    vaec_file f;
    vaec_status st = vaec_file_read(&f, path);
    if (st) return st;
    vaec_vae *m = NULL;
    if (f.kind != VAEC_KIND_VAE && f.kind != VAEC_KIND_AE) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds a model of kind %u, not a VAE or autoencoder", path, f.kind);
    } else if (f.config_len != VAE_CONFIG_BYTES) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: a VAE config record of %u bytes", path, f.config_len);
    } else {
        const unsigned char *rec = f.config;
        vaec_vae_config c = {0};
        int64_t i64[2], hid[VAEC_MAX_HIDDEN];
        int32_t i32[4];
        memcpy(i64, rec, 16);
        memcpy(i32, rec + 16, 16);
        memcpy(hid, rec + 32, 64);
        memcpy(&c.seed, rec + 96, 8);
        memcpy(c.flow, rec + 104, sizeof c.flow);
        c.input_dim = i64[0];
        c.latent_dim = i64[1];
        c.n_hidden = i32[0];
        c.activation = (vaec_act)i32[1];
        c.likelihood = (vaec_likelihood)i32[2];
        c.deterministic = i32[3];
        for (int i = 0; i < VAEC_MAX_HIDDEN; i++) c.hidden[i] = hid[i];
        c.threads = threads;
        if ((st = check_config(&c)))
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds an invalid model configuration (%s)", path, vaec_last_error());
        else if (c.deterministic != (f.kind == VAEC_KIND_AE))
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: file kind %u with deterministic = %d", path, f.kind,
                           c.deterministic);
        else if ((st = vaec_vae_create(&m, &c)) == VAEC_OK && (st = vaec_file_apply(&f, &m->arena)) == VAEC_OK) {
            m->rng_seed = f.rng_seed;
            m->rng_counter = f.rng_counter;
            if (extra && f.extra_len) {
                if (!(*extra = malloc(f.extra_len))) st = vaec_fail(VAEC_ERR_NOMEM, "out of memory");
                else { memcpy(*extra, f.extra, f.extra_len); *extra_len = f.extra_len; }
            }
        }
    }
    vaec_file_close(&f);
    if (st) {
        vaec_vae_destroy(m);
        return st;
    }
    *out = m;
    return VAEC_OK;
}
