/* vae.c -- the variational autoencoder (and the plain autoencoder on the same networks):
 * two networks and a posterior, composed from net.c and flows.c.
 *
 *   encoder  x -> [mu | logvar]   a network (its layers, then the heads encoder.mu and
 *                                 encoder.logvar, stacked into one product)
 *   z        = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)   [then z_K = f_K o ... o f_1(z)]
 *   decoder  z -> logits (Bernoulli) or [mean | logvar] (Gaussian): a network
 *   ELBO     = (1/L) sum_l log p(x | z_l) - KL(N(mu, exp(logvar)) || N(0, I))
 *
 * This file holds the model: its networks, its workspace plan, the input's preparation,
 * encode / decode, and the model file. The objectives are in vae_objectives.c, wake-sleep
 * in vae_wake_sleep.c, HMC and Monte Carlo EM in vae_hmc.c. Batches are processed in
 * chunks of at most VAE_CHUNK rows; tasks are split by rows or output tiles, never by
 * reduction order, so the results are bitwise identical for every thread count. */
#include "vae_impl.h"
#include <math.h>
#include <string.h>

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* ------------------------------------------------------------------ config */
/* The encoder and decoder layer lists of an MLP config: encoder.i = Linear(hidden[i]) with
 * the activation, decoder.i = Linear(hidden[nh-1-i]) with it (the heads are added apart). */
static void mlp_layers(vaec_vae_config *c) {
    memset(c->enc, 0, sizeof c->enc);
    memset(c->dec, 0, sizeof c->dec);
    c->n_enc = c->n_dec = c->n_hidden;
    for (int i = 0; i < c->n_hidden; i++) {
        c->enc[i].kind = c->dec[i].kind = VAEC_LAYER_LINEAR;
        c->enc[i].act = c->dec[i].act = (int32_t)c->activation;
        c->enc[i].out = c->hidden[i];
        c->dec[i].out = c->hidden[c->n_hidden - 1 - i];
    }
    c->input_shape[0] = c->input_dim;
    c->input_shape[1] = c->input_shape[2] = 1;
}

/* the data: flat rows, or images channels first (one channel: channels last as well) */
static vaec_dims input_dims(const vaec_vae_config *c) {
    const int flat = c->input_shape[1] == 1 && c->input_shape[2] == 1;
    vaec_dims d = {flat, c->input_shape[0], c->input_shape[1], c->input_shape[2], !flat && c->input_shape[0] == 1};
    return d;
}

static vaec_status check_config(const vaec_vae_config *c) {
    if (c->input_dim < 1 || c->input_dim > (1 << 26))
        return vaec_fail(VAEC_ERR_ARG, "input_dim must be between 1 and 2^26, got %lld", (long long)c->input_dim);
    if (c->latent_dim < 1 || c->latent_dim > (1 << 20))
        return vaec_fail(VAEC_ERR_ARG, "latent_dim must be between 1 and 2^20, got %lld", (long long)c->latent_dim);
    if (c->layers != 0 && c->layers != 1) return vaec_fail(VAEC_ERR_ARG, "layers must be 0 or 1, got %d", c->layers);
    if (!c->layers) {
        if (c->n_hidden < 0 || c->n_hidden > VAEC_MAX_HIDDEN)
            return vaec_fail(VAEC_ERR_ARG, "hidden must have at most %d layers, got %d", VAEC_MAX_HIDDEN, c->n_hidden);
        for (int i = 0; i < c->n_hidden; i++)
            if (c->hidden[i] < 1 || c->hidden[i] > (1 << 20))
                return vaec_fail(VAEC_ERR_ARG, "hidden[%d] must be between 1 and 2^20, got %lld", i,
                                 (long long)c->hidden[i]);
        if ((unsigned)c->activation >= VAEC_ACT_COUNT || c->activation == VAEC_ACT_IDENTITY)
            return vaec_fail(VAEC_ERR_ARG, "activation: unknown code %d", (int)c->activation);
    } else {
        if (c->n_enc < 0 || c->n_enc > VAEC_MAX_LAYERS || c->n_dec < 1 || c->n_dec > VAEC_MAX_LAYERS)
            return vaec_fail(VAEC_ERR_ARG, "encoder and decoder: at most %d layers each (the decoder at least one), "
                             "got %d and %d", VAEC_MAX_LAYERS, c->n_enc, c->n_dec);
        for (int k = 0; k < 3; k++)
            if (c->input_shape[k] < 1 || c->input_shape[k] > (1 << 26))
                return vaec_fail(VAEC_ERR_ARG, "input_shape[%d] must be between 1 and 2^26, got %lld", k,
                                 (long long)c->input_shape[k]);
        if (c->input_shape[0] * c->input_shape[1] * c->input_shape[2] != c->input_dim)
            return vaec_fail(VAEC_ERR_ARG, "input_shape (%lld, %lld, %lld) does not hold input_dim = %lld values",
                             (long long)c->input_shape[0], (long long)c->input_shape[1], (long long)c->input_shape[2],
                             (long long)c->input_dim);
    }
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

/* The networks and the flow, planned into the arena in its order: the encoder's layers and
 * heads, the flow, the decoder's layers (and, for an MLP, its output heads). */
static vaec_status plan_model(vaec_vae *m) {
    const vaec_vae_config *c = &m->cfg;
    const int64_t D = c->input_dim, Z = c->latent_dim;
    vaec_arena *A = &m->arena;
    vaec_status st = VAEC_OK;
    vaec_net_init(&m->enc, "encoder", input_dims(c), m->enc_layers, VAEC_MAX_LAYERS + 1);
    for (int i = 0; i < c->n_enc && !st; i++) {
        /* a first Linear reads the data: it keeps W^T and may skip the zeros (sparse.c) */
        int flags = i == 0 && c->enc[i].kind == VAEC_LAYER_LINEAR ? VAEC_NET_SPARSE_INPUT : 0;
        st = vaec_net_add(&m->enc, A, &c->enc[i], i, NULL, 1, flags);
    }
    /* the heads [mu | logvar], and with an amortized flow a third one: its u, w, b per row */
    const char *mu_lv[3] = {"encoder.mu", "encoder.logvar", "encoder.flow"}, *code[1] = {"encoder.code"};
    vaec_flow_spec spec = {0};
    if (!st && c->flow[0]) st = vaec_flow_spec_parse(&spec, c->flow);
    m->amor_cols = st ? 0 : vaec_flow_cond_width(&spec, Z);
    vaec_layer_spec head = {0};
    head.kind = VAEC_LAYER_LINEAR;
    head.out = Z;
    if (!st)
        st = vaec_net_add_heads(&m->enc, A, &head, c->n_enc, c->deterministic ? code : mu_lv, c->deterministic ? 1 : 2,
                                m->amor_cols, 0);
    if (!st && m->amor_cols) {
        /* the flow head starts with zero weights and the biases a planar layer's parameters
         * get (U(+-1/sqrt(latent))): every example starts with the same flow, the one
         * "planar:K" would start from, and the head learns how examples differ. Torch's
         * U(+-1/sqrt(400)) weights gave each example u and w about 4 times larger, and a
         * model 2.5 nats of ELBO behind the diagonal posterior after 190 epochs. */
        A->tensors[A->ntensors - 2].init_bound = 0.0f;                           /* encoder.flow.weight */
        A->tensors[A->ntensors - 1].init_bound = 1.0f / sqrtf((float)Z);        /* encoder.flow.bias */
    }
    if (!st && c->flow[0]) {
        st = vaec_flow_plan(&m->flow, A, &spec, Z, "flow");
        m->has_flow = !st;
    }
    vaec_net_init(&m->dec, "decoder", vaec_dims_flat(Z), m->dec_layers, VAEC_MAX_LAYERS + 2);
    for (int i = 0; i < c->n_dec && !st; i++) st = vaec_net_add(&m->dec, A, &c->dec[i], i, NULL, 1, 0);
    if (!st) st = vaec_net_finish(&m->dec, A);   /* the likelihood reads channels first */
    const int gauss = c->likelihood == VAEC_LIK_GAUSSIAN && !c->deterministic;
    if (!st && !c->layers) {
        const char *out[2] = {"decoder.out", "decoder.logvar"};
        head.out = D;
        st = vaec_net_add(&m->dec, A, &head, c->n_dec, out, gauss ? 2 : 1, 0);
    }
    if (!st && vaec_dims_size(m->dec.out) != D * (gauss ? 2 : 1)) {
        char a[64];
        st = vaec_fail(VAEC_ERR_ARG, "decoder: its output %s has %lld values; the %s likelihood needs %lld (%s)",
                       vaec_dims_format(m->dec.out, a, sizeof a), (long long)vaec_dims_size(m->dec.out),
                       gauss ? "Gaussian" : "Bernoulli", (long long)(D * (gauss ? 2 : 1)),
                       gauss ? "the means, then the log-variances" : "one logit per input value");
    }
    return st;
}

vaec_status vaec_vae_create(vaec_vae **out, const vaec_vae_config *cfg) {
    *out = NULL;
    vaec_status st = check_config(cfg);
    if (st) return st;
    vaec_vae *m = vaec_alloc(1, sizeof *m);
    if (!m) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    if (!m->cfg.layers) mlp_layers(&m->cfg);
    st = plan_model(m);
    if (!st) st = vaec_arena_alloc(&m->arena, cfg->seed);
    if (!st) st = vaec_pool_create(&m->pool, cfg->threads);
    if (st) { vaec_vae_destroy(m); return st; }
    vaec_net_bind(&m->enc, m->pool, &m->arena);
    vaec_net_bind(&m->dec, m->pool, &m->arena);
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
    vaec_free(m->hmc_mem);
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
/* Counts (buf NULL) or lays out the workspace of `rows` rows: the input, both networks'
 * plans, the latent buffers, per-row sums, and the flow's workspace. */
static int64_t vae_plan(vaec_vae *m, float *buf, int64_t rows) {
    const int64_t D = m->cfg.input_dim, lz = align16(m->cfg.latent_dim);
    int64_t off = 0;
    float *p;
#define TAKE(ptr, type, nfloats) do { \
        p = buf ? buf + off : NULL; (ptr) = (type *)p; off += align16(nfloats); } while (0)
    TAKE(m->w_x, float, rows * align16(D));
    float *enc_ws, *dec_ws;
    TAKE(enc_ws, float, vaec_net_plan(&m->enc, NULL, rows));
    TAKE(dec_ws, float, vaec_net_plan(&m->dec, NULL, rows));
    TAKE(m->w_eps, float, rows * lz);
    TAKE(m->w_z, float, rows * lz);
    TAKE(m->d_z, float, rows * lz);
    TAKE(m->w_zk, float, rows * lz);
    TAKE(m->d_zk, float, rows * lz);
    TAKE(m->w_kld, float, rows * lz);
    TAKE(m->w_rs, float, rows);
    TAKE(m->w_rec, double, 2 * rows);   /* float64 per row: rec, kl, lp, lpq, lse max and sum, logdet, its weight */
    TAKE(m->w_kl, double, 2 * rows);
    TAKE(m->w_lp, double, 2 * rows);
    TAKE(m->w_lpq, double, 2 * rows);
    TAKE(m->w_lse, double, 4 * rows);
    TAKE(m->w_ld, double, 2 * rows);
    TAKE(m->w_dld, double, 2 * rows);
    TAKE(m->w_fws, float, m->has_flow ? vaec_flow_ws_floats(&m->flow, rows) : 0);
#undef TAKE
    if (buf) {
        vaec_net_plan(&m->enc, enc_ws, rows);
        vaec_net_plan(&m->dec, dec_ws, rows);
        m->w_heads = (float *)vaec_net_out(&m->enc, &m->ld_heads);
        m->d_heads = vaec_net_dout(&m->enc, &m->ld_heads);
        m->w_out = (float *)vaec_net_out(&m->dec, &m->ld_out);
        m->d_out = vaec_net_dout(&m->dec, &m->ld_out);
    }
    return off;
}

vaec_status vae_ensure_workspace(vaec_vae *m, int64_t rows) {
    rows = (rows + ROW_GRAIN - 1) / ROW_GRAIN * ROW_GRAIN;
    if (rows <= m->ws_rows) return VAEC_OK;
    float *ws = vaec_alloc((size_t)vae_plan(m, NULL, rows), sizeof(float));
    if (!ws) return vaec_fail(VAEC_ERR_NOMEM, "out of memory for a workspace of %lld rows", (long long)rows);
    vaec_free(m->ws);
    vaec_free(m->w_lw);
    m->w_lw = NULL;
    m->lw_cap = 0;
    m->ws = ws;
    m->ws_rows = rows;
    vae_plan(m, ws, rows);
    return VAEC_OK;
}

/* ------------------------------------------------------------------ input */
typedef struct {
    vaec_vae *m;
    const vaec_input *x;
    int64_t r0, R;
    uint64_t seed, stream;
    int64_t row0;   /* the call's first row in the whole batch: pixels are numbered there */
} input_job;

static void input_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    input_job *j = ctx;
    int64_t D = j->x->dim;
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
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
                vaec_rng_uniform(u, cnt, j->seed, j->stream, (uint64_t)((j->row0 + row) * D + d0));
                for (int64_t d = 0; d < cnt; d++) dst[d0 + d] = u[d] < dst[d0 + d] ? 1.0f : 0.0f;
            }
        }
    }
}

const float *vae_prepare_input(vaec_vae *m, const vaec_input *x, int64_t r0, int64_t R, uint64_t seed,
                               uint64_t counter, int64_t row0, int64_t *ld) {
    if (x->dtype == VAEC_F32 && !x->binarize) {
        *ld = x->dim;
        return (const float *)x->data + r0 * x->dim;
    }
    input_job j = {m, x, r0, R, seed, vaec_stream_vae(counter, VAE_STREAM_BINARIZE), row0};
    vaec_pool_run(m->pool, input_task, &j, vaec_ntasks(R, ROW_GRAIN));
    *ld = align16(x->dim);
    return m->w_x;
}

vaec_status vae_check_input(const vaec_vae *m, const vaec_input *x) {
    if (!x || (!x->data && x->n > 0)) return vaec_fail(VAEC_ERR_ARG, "x: no data");
    if (x->n < 0) return vaec_fail(VAEC_ERR_ARG, "x: negative number of rows");
    if (x->dim != m->cfg.input_dim)
        return vaec_fail(VAEC_ERR_ARG, "x: expected %lld columns (input_dim), got %lld",
                         (long long)m->cfg.input_dim, (long long)x->dim);
    if (x->dtype != VAEC_F32 && x->dtype != VAEC_U8) return vaec_fail(VAEC_ERR_ARG, "x: unknown dtype");
    return VAEC_OK;
}

/* ------------------------------------------------------- encode / decode */
/* The encoder on x, chunk by chunk: mu and logvar (each may be NULL) and, when zk is given,
 * mu carried through the posterior's flow (an amortized one with each row's own
 * parameters). */
static vaec_status encode_rows(vaec_vae *m, const vaec_input *x, float *mu, float *logvar, float *zk) {
    vaec_status st = vae_check_input(m, x);
    if (st) return st;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t chunk = x->n < VAE_CHUNK ? x->n : VAE_CHUNK;
    if (chunk > 0 && (st = vae_ensure_workspace(m, chunk))) return st;
    for (int64_t r0 = 0; r0 < x->n; r0 += VAE_CHUNK) {
        int64_t R = x->n - r0 < VAE_CHUNK ? x->n - r0 : VAE_CHUNK, ldx, ldh;
        const float *xin = vae_prepare_input(m, x, r0, R, m->rng_seed, m->rng_counter, 0, &ldx);
        const float *h = vaec_net_forward(&m->enc, xin, ldx, R, &ldh);
        for (int64_t r = 0; r < R; r++) {
            if (mu) memcpy(mu + (r0 + r) * Z, h + r * ldh, (size_t)Z * sizeof(float));
            if (logvar && !m->cfg.deterministic) memcpy(logvar + (r0 + r) * Z, h + r * ldh + Z, (size_t)Z * sizeof(float));
        }
        if (!zk) continue;
        for (int64_t r = 0; r < R; r++) memcpy(m->w_z + r * lz, h + r * ldh, (size_t)Z * sizeof(float));
        const float *out = m->w_z;
        if (m->has_flow) {
            vae_flow_rows(m, h, ldh, R);
            if ((st = vaec_flow_forward(&m->flow, m->pool, &m->arena, m->w_z, lz, m->w_zk, lz, m->w_ld, R, m->w_fws,
                                        m->ws_rows)))
                return st;
            out = m->w_zk;
        }
        for (int64_t r = 0; r < R; r++) memcpy(zk + (r0 + r) * Z, out + r * lz, (size_t)Z * sizeof(float));
    }
    return VAEC_OK;
}

vaec_status vaec_vae_encode(vaec_vae *m, const vaec_input *x, float *mu, float *logvar) {
    return encode_rows(m, x, mu, logvar, NULL);
}

vaec_status vaec_vae_code(vaec_vae *m, const vaec_input *x, float *zk) { return encode_rows(m, x, NULL, NULL, zk); }

vaec_status vaec_vae_flow_forward(vaec_vae *m, const float *z, int64_t n, float *zk, double *logdet) {
    if (n < 0) return vaec_fail(VAEC_ERR_ARG, "z: negative number of rows");
    if (m->amor_cols)
        return vaec_fail(VAEC_ERR_ARG, "flow '%s' is amortized: its parameters come from the encoder's output for each "
                         "x, so it cannot map codes z alone", m->cfg.flow);
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    vaec_status st;
    int64_t chunk = n < VAE_CHUNK ? n : VAE_CHUNK;
    if (chunk > 0 && (st = vae_ensure_workspace(m, chunk))) return st;
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
    const int64_t D = m->cfg.input_dim, Z = m->cfg.latent_dim, lz = align16(Z);
    vaec_status st;
    int64_t chunk = n < VAE_CHUNK ? n : VAE_CHUNK;
    if (chunk > 0 && (st = vae_ensure_workspace(m, chunk))) return st;
    for (int64_t r0 = 0; r0 < n; r0 += VAE_CHUNK) {
        int64_t R = n - r0 < VAE_CHUNK ? n - r0 : VAE_CHUNK, lo;
        for (int64_t r = 0; r < R; r++) memcpy(m->w_z + r * lz, z + (r0 + r) * Z, (size_t)Z * sizeof(float));
        const float *o = vaec_net_forward(&m->dec, m->w_z, lz, R, &lo);
        for (int64_t r = 0; r < R; r++) {
            float *dst = out + (r0 + r) * D;
            if (m->cfg.likelihood == VAEC_LIK_BERNOULLI)
                vaec_act_forward(VAEC_ACT_SIGMOID, dst, o + r * lo, D);
            else
                memcpy(dst, o + r * lo, (size_t)D * sizeof(float));
        }
    }
    return VAEC_OK;
}

/* ------------------------------------------------------------------ files */
/* The VAE's config record, little-endian. Version 1 (0.1.0, 152 bytes): i64 input_dim,
 * i64 latent_dim, i32 n_hidden, i32 activation, i32 likelihood, i32 deterministic (0 in
 * files from before autoencoders), i64 hidden[8], u64 seed, char flow[48].
 * Version 2: "VAE\0", u32 2, then version 1's 152 bytes, i32 layers, i32 n_enc, i32 n_dec,
 * i32 0, i64 input_shape[3], then the n_enc encoder and n_dec decoder layers (the lists an
 * MLP config derives from hidden/activation too), VAEC_LAYER_RECORD bytes each (net.c). */
#define VAE_CONFIG_V1 152
static const char VAE_TAG[4] = {'V', 'A', 'E', 0};

static void put_v1(unsigned char *rec, const vaec_vae_config *c) {
    int64_t i64[2] = {c->input_dim, c->latent_dim};
    int32_t i32[4] = {c->n_hidden, (int32_t)c->activation, (int32_t)c->likelihood, c->deterministic};
    int64_t hid[VAEC_MAX_HIDDEN] = {0};
    for (int i = 0; i < c->n_hidden && i < VAEC_MAX_HIDDEN; i++) hid[i] = c->hidden[i];
    memcpy(rec, i64, 16);
    memcpy(rec + 16, i32, 16);
    memcpy(rec + 32, hid, 64);
    memcpy(rec + 96, &c->seed, 8);
    memcpy(rec + 104, c->flow, sizeof c->flow);
}

static void get_v1(const unsigned char *rec, vaec_vae_config *c) {
    int64_t i64[2], hid[VAEC_MAX_HIDDEN];
    int32_t i32[4];
    memcpy(i64, rec, 16);
    memcpy(i32, rec + 16, 16);
    memcpy(hid, rec + 32, 64);
    memcpy(&c->seed, rec + 96, 8);
    memcpy(c->flow, rec + 104, sizeof c->flow);
    c->input_dim = i64[0];
    c->latent_dim = i64[1];
    c->n_hidden = i32[0];
    c->activation = (vaec_act)i32[1];
    c->likelihood = (vaec_likelihood)i32[2];
    c->deterministic = i32[3];
    for (int i = 0; i < VAEC_MAX_HIDDEN; i++) c->hidden[i] = hid[i];
}

vaec_status vaec_vae_save(const vaec_vae *m, const char *path, const void *extra, uint32_t extra_len) {
    const vaec_vae_config *c = &m->cfg;
    const size_t len = 8 + VAE_CONFIG_V1 + 16 + 24 + (size_t)(c->n_enc + c->n_dec) * VAEC_LAYER_RECORD;
    unsigned char *rec = vaec_alloc(len, 1);
    if (!rec) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    uint32_t version = 2;
    int32_t i32[4] = {c->layers, c->n_enc, c->n_dec, 0};
    memcpy(rec, VAE_TAG, 4);
    memcpy(rec + 4, &version, 4);
    put_v1(rec + 8, c);
    unsigned char *p = rec + 8 + VAE_CONFIG_V1;
    memcpy(p, i32, 16);
    memcpy(p + 16, c->input_shape, 24);
    p += 40;
    for (int i = 0; i < c->n_enc; i++, p += VAEC_LAYER_RECORD) vaec_layer_record_put(p, &c->enc[i]);
    for (int i = 0; i < c->n_dec; i++, p += VAEC_LAYER_RECORD) vaec_layer_record_put(p, &c->dec[i]);
    vaec_status st = vaec_file_write_ex(path, c->deterministic ? VAEC_KIND_AE : VAEC_KIND_VAE, rec, (uint32_t)len,
                                        &m->arena, m->rng_seed, m->rng_counter, extra, extra_len);
    vaec_free(rec);
    return st;
}

/* The config of a record of either version; VAEC_ERR_FORMAT naming the file otherwise. */
static vaec_status read_config(const vaec_file *f, const char *path, vaec_vae_config *c) {
    const unsigned char *rec = f->config;
    memset(c, 0, sizeof *c);
    if (f->config_len == VAE_CONFIG_V1) {
        get_v1(rec, c);
        return VAEC_OK;
    }
    uint32_t version = 0;
    if (f->config_len >= 8) memcpy(&version, rec + 4, 4);
    if (f->config_len < 8 + VAE_CONFIG_V1 + 40 || memcmp(rec, VAE_TAG, 4) != 0 || version != 2)
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: a VAE config record of %u bytes (version %u)", path,
                         f->config_len, version);
    get_v1(rec + 8, c);
    const unsigned char *p = rec + 8 + VAE_CONFIG_V1;
    int32_t i32[4];
    memcpy(i32, p, 16);
    memcpy(c->input_shape, p + 16, 24);
    p += 40;
    c->layers = i32[0];
    c->n_enc = i32[1];
    c->n_dec = i32[2];
    if (c->n_enc < 0 || c->n_enc > VAEC_MAX_LAYERS || c->n_dec < 0 || c->n_dec > VAEC_MAX_LAYERS ||
        f->config_len != 8 + VAE_CONFIG_V1 + 40 + (uint32_t)(c->n_enc + c->n_dec) * VAEC_LAYER_RECORD)
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: its layer lists do not fit its config record", path);
    for (int i = 0; i < c->n_enc; i++, p += VAEC_LAYER_RECORD) vaec_layer_record_get(p, &c->enc[i]);
    for (int i = 0; i < c->n_dec; i++, p += VAEC_LAYER_RECORD) vaec_layer_record_get(p, &c->dec[i]);
    if (!c->layers) {
        /* an MLP: its lists follow from hidden/activation, and must be those (its hidden
         * layer count checked first: mlp_layers indexes hidden[] and the lists by it) */
        if (c->n_hidden < 0 || c->n_hidden > VAEC_MAX_HIDDEN)
            return vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: %d hidden layers (at most %d)", path, c->n_hidden,
                             VAEC_MAX_HIDDEN);
        vaec_vae_config d = *c;
        mlp_layers(&d);
        if (d.n_enc != c->n_enc || d.n_dec != c->n_dec || memcmp(d.enc, c->enc, sizeof d.enc) != 0 ||
            memcmp(d.dec, c->dec, sizeof d.dec) != 0 || memcmp(d.input_shape, c->input_shape, sizeof d.input_shape))
            return vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: its layer lists are not those of its hidden "
                             "layers", path);
    }
    return VAEC_OK;
}

vaec_status vaec_vae_load(vaec_vae **out, const char *path, int threads, void **extra, uint32_t *extra_len) {
    *out = NULL;
    if (extra) { *extra = NULL; *extra_len = 0; }
    vaec_file f;
    vaec_status st = vaec_file_read(&f, path);
    if (st) return st;
    vaec_vae *m = NULL;
    vaec_vae_config c;
    if (f.kind != VAEC_KIND_VAE && f.kind != VAEC_KIND_AE) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds a model of kind %u, not a VAE or autoencoder", path, f.kind);
    } else if (!(st = read_config(&f, path, &c))) {
        c.threads = threads;
        if ((st = check_config(&c)))
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds an invalid model configuration (%s)", path, vaec_last_error());
        else if (c.deterministic != (f.kind == VAEC_KIND_AE))
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: file kind %u with deterministic = %d", path, f.kind,
                           c.deterministic);
        else if ((vaec_arena_expect(f.nparams, path), st = vaec_vae_create(&m, &c), vaec_arena_expect(-1, NULL), st) == VAEC_OK &&
                 (st = vaec_file_apply(&f, &m->arena)) == VAEC_OK) {
            m->rng_seed = f.rng_seed;
            m->rng_counter = f.rng_counter;
            st = vaec_file_extra_copy(&f, extra, extra_len);
        } else if (st == VAEC_ERR_ARG) {
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds an invalid model configuration (%s)", path, vaec_last_error());
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
