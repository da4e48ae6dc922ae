/* flow_model.c -- the stand-alone flow model: a stack of flow layers on a standard-
 * normal base, x = f(z0), z0 ~ N(0, I), composed from flows.c like a VAE composes its
 * layers: one arena (parameters, gradients, Adam moments), one workspace, a thread
 * pool and a counter-based RNG key.
 *
 *   transform / sample            forward pass (any flow type)
 *   inverse / log_prob / nll_step the closed-form inverse (Real NVP):
 *                                 log p(x) = log N(f⁻¹(x); 0, I) + log|det ∂f⁻¹/∂x|
 *   energy_forward / _backward    KL(q‖p) to p ∝ exp(−U), reparameterized:
 *                                 loss = mean [log N(z0) − log|det| + β U(f(z0))]
 *                                 in two calls so that U may be evaluated outside C
 *   energy_step                   the same in one call with a built-in potential
 * Calls without gradients and maximum-likelihood steps run in chunks of FLOW_CHUNK rows
 * (the gradients of the chunks are added), so any n fits in a bounded workspace; an
 * energy step keeps its whole batch in the workspace between its two calls. */
#include "flow_impl.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

#define FLOW_CHUNK 1024
#define LOG_2PI 1.8378770664093453
#include "streams.h"

struct vaec_flowmodel {
    vaec_flowmodel_config cfg;
    vaec_flow flow;
    vaec_arena arena;
    vaec_pool *pool;
    uint64_t rng_seed, rng_counter;
    int64_t rows;           /* capacity of the buffers below */
    float *ws;              /* the flow's workspace */
    float *z, *zk, *g;      /* rows x dim each */
    double *ld, *lq, *U, *dz, *dU;   /* rows; rows; rows; rows x dim; rows x dim */
    int64_t pending;        /* rows of an energy forward awaiting its backward (0: none) */
};

static vaec_status check_config(const vaec_flowmodel_config *c) {
    if (c->dim < 1 || c->dim > (1 << 20))
        return vaec_fail(VAEC_ERR_ARG, "dim must be between 1 and 2^20, got %lld", (long long)c->dim);
    if (c->threads > 256) return vaec_fail(VAEC_ERR_ARG, "threads must be at most 256, got %d", c->threads);
    if (c->flow.amortized)
        return vaec_fail(VAEC_ERR_ARG, "flow: 'planar:K:amortized' takes its parameters from a VAE's encoder; a "
                         "stand-alone flow has no encoder (use 'planar:K')");
    return vaec_flow_spec_check(&c->flow);
}

vaec_status vaec_flowmodel_create(vaec_flowmodel **out, const vaec_flowmodel_config *cfg) {
    *out = NULL;
    vaec_status st = check_config(cfg);
    if (st) return st;
    vaec_flowmodel *m = vaec_alloc(1, sizeof *m);
    if (!m) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    st = vaec_flow_plan(&m->flow, &m->arena, &cfg->flow, cfg->dim, "flow");
    if (!st) st = vaec_arena_alloc(&m->arena, cfg->seed);
    if (!st) st = vaec_pool_create(&m->pool, cfg->threads);
    if (st) { vaec_flowmodel_destroy(m); return st; }
    m->rng_seed = cfg->seed;
    *out = m;
    return VAEC_OK;
}

static void free_buffers(vaec_flowmodel *m) {
    vaec_free(m->ws);
    vaec_free(m->z);
    vaec_free(m->zk);
    vaec_free(m->g);
    vaec_free(m->ld);
    vaec_free(m->lq);
    vaec_free(m->U);
    vaec_free(m->dz);
    vaec_free(m->dU);
    m->ws = m->z = m->zk = m->g = NULL;
    m->ld = m->lq = m->U = m->dz = m->dU = NULL;
    m->rows = 0;
}

void vaec_flowmodel_destroy(vaec_flowmodel *m) {
    if (!m) return;
    vaec_pool_destroy(m->pool);
    vaec_arena_free(&m->arena);
    free_buffers(m);
    vaec_free(m);
}

const vaec_flowmodel_config *vaec_flowmodel_config_get(const vaec_flowmodel *m) { return &m->cfg; }
const vaec_flow *vaec_flowmodel_flow(const vaec_flowmodel *m) { return &m->flow; }
vaec_arena *vaec_flowmodel_arena(vaec_flowmodel *m) { return &m->arena; }
int vaec_flowmodel_threads(const vaec_flowmodel *m) { return vaec_pool_size(m->pool); }
vaec_status vaec_flowmodel_adam_step(vaec_flowmodel *m, float lr) {
    m->pending = 0;
    return vaec_arena_adam_step(&m->arena, m->pool, lr);
}
uint64_t vaec_flowmodel_rng_seed(const vaec_flowmodel *m) { return m->rng_seed; }
uint64_t vaec_flowmodel_rng_counter(const vaec_flowmodel *m) { return m->rng_counter; }
void vaec_flowmodel_rng_set(vaec_flowmodel *m, uint64_t seed, uint64_t counter) {
    m->rng_seed = seed;
    m->rng_counter = counter;
}

/* buffers for `rows` rows (grown, never shrunk) */
static vaec_status ensure(vaec_flowmodel *m, int64_t rows) {
    if (rows <= m->rows) return VAEC_OK;
    if (rows > ((int64_t)1 << 40) / (m->cfg.dim + 1))
        return vaec_fail(VAEC_ERR_NOMEM, "%lld rows are too many for one call", (long long)rows);
    free_buffers(m);
    const size_t D = (size_t)m->cfg.dim, R = (size_t)rows;
    m->ws = vaec_alloc((size_t)vaec_flow_ws_floats(&m->flow, rows), sizeof(float));
    m->z = vaec_alloc(R * D, sizeof(float));
    m->zk = vaec_alloc(R * D, sizeof(float));
    m->g = vaec_alloc(R * D, sizeof(float));
    m->ld = vaec_alloc(R, sizeof(double));
    m->lq = vaec_alloc(R, sizeof(double));
    m->U = vaec_alloc(R, sizeof(double));
    m->dz = vaec_alloc(R * D, sizeof(double));
    m->dU = vaec_alloc(R * D, sizeof(double));
    if (!m->ws || !m->z || !m->zk || !m->g || !m->ld || !m->lq || !m->U || !m->dz || !m->dU) {
        free_buffers(m);
        return vaec_fail(VAEC_ERR_NOMEM, "out of memory for a flow workspace of %lld rows", (long long)rows);
    }
    m->rows = rows;
    return VAEC_OK;
}

static double log_normal(const float *z, int64_t D) {
    double s = 0.0;
    for (int64_t i = 0; i < D; i++) s += (double)z[i] * z[i];
    return -0.5 * (s + (double)D * LOG_2PI);
}

static vaec_status check_rows(int64_t n, const void *p, const char *what) {
    if (n < 0) return vaec_fail(VAEC_ERR_ARG, "%s: negative number of rows", what);
    if (n > 0 && !p) return vaec_fail(VAEC_ERR_ARG, "%s: no data", what);
    return VAEC_OK;
}

static vaec_status need_inverse(const vaec_flowmodel *m, const char *what) {
    if (vaec_flow_has_inverse(&m->flow)) return VAEC_OK;
    char buf[96];
    return vaec_fail(VAEC_ERR_ARG, "%s needs a closed-form inverse, which flow '%s' does not have (Real NVP flows "
                     "do: 'realnvp:K')", what, vaec_flow_spec_format(&m->flow.spec, buf, sizeof buf));
}

/* ------------------------------------------------------------- no gradient */
vaec_status vaec_flowmodel_transform(vaec_flowmodel *m, const float *z, int64_t n, float *x, double *logdet) {
    vaec_status st = check_rows(n, z, "z");
    if (st) return st;
    m->pending = 0;
    const int64_t D = m->cfg.dim;
    if (n > 0 && (st = ensure(m, n < FLOW_CHUNK ? n : FLOW_CHUNK))) return st;
    for (int64_t r0 = 0; r0 < n && !st; r0 += FLOW_CHUNK) {
        int64_t R = n - r0 < FLOW_CHUNK ? n - r0 : FLOW_CHUNK;
        st = vaec_flow_forward(&m->flow, m->pool, &m->arena, z + r0 * D, D, x ? x + r0 * D : m->zk, D,
                               logdet ? logdet + r0 : NULL, R, m->ws, m->rows);
    }
    return st;
}

vaec_status vaec_flowmodel_inverse(vaec_flowmodel *m, const float *x, int64_t n, float *z0, double *logdet_inv) {
    vaec_status st = check_rows(n, x, "x");
    if (st || (st = need_inverse(m, "inverse"))) return st;
    m->pending = 0;
    const int64_t D = m->cfg.dim;
    if (n > 0 && (st = ensure(m, n < FLOW_CHUNK ? n : FLOW_CHUNK))) return st;
    for (int64_t r0 = 0; r0 < n && !st; r0 += FLOW_CHUNK) {
        int64_t R = n - r0 < FLOW_CHUNK ? n - r0 : FLOW_CHUNK;
        st = vaec_flow_inverse(&m->flow, m->pool, &m->arena, x + r0 * D, D, z0 ? z0 + r0 * D : m->z, D,
                               logdet_inv ? logdet_inv + r0 : NULL, R, m->ws, m->rows);
    }
    return st;
}

vaec_status vaec_flowmodel_log_prob(vaec_flowmodel *m, const float *x, int64_t n, double *out) {
    vaec_status st = check_rows(n, x, "x");
    if (st || (st = need_inverse(m, "log_prob"))) return st;
    m->pending = 0;
    const int64_t D = m->cfg.dim;
    if (n > 0 && (st = ensure(m, n < FLOW_CHUNK ? n : FLOW_CHUNK))) return st;
    for (int64_t r0 = 0; r0 < n && !st; r0 += FLOW_CHUNK) {
        int64_t R = n - r0 < FLOW_CHUNK ? n - r0 : FLOW_CHUNK;
        st = vaec_flow_inverse(&m->flow, m->pool, &m->arena, x + r0 * D, D, m->z, D, m->ld, R, m->ws, m->rows);
        for (int64_t r = 0; r < R && !st; r++) out[r0 + r] = log_normal(m->z + r * D, D) + m->ld[r];
    }
    return st;
}

/* noise rows [r0, r0+R) of a call into dst: explicit eps, or the RNG (row-indexed) */
typedef struct { const float *eps; uint64_t seed, counter; } noise_plan;

static noise_plan plan_noise(vaec_flowmodel *m, const vaec_noise *noise) {
    noise_plan p = {noise ? noise->eps : NULL, 0, 0};
    if (noise && noise->use_seed) {
        p.seed = noise->seed;
    } else {
        p.seed = m->rng_seed;
        p.counter = m->rng_counter++;
    }
    return p;
}

static void draw(const vaec_flowmodel *m, const noise_plan *p, int64_t r0, int64_t R, float *dst) {
    const int64_t D = m->cfg.dim;
    if (p->eps) memcpy(dst, p->eps + r0 * D, (size_t)(R * D) * sizeof(float));
    else vaec_rng_normal(dst, R * D, p->seed, vaec_stream_flow(p->counter), (uint64_t)(r0 * D));
}

vaec_status vaec_flowmodel_sample(vaec_flowmodel *m, int64_t n, const vaec_noise *noise, float *x, double *log_prob) {
    vaec_status st = check_rows(n, x, "sample");
    if (st) return st;
    m->pending = 0;
    const int64_t D = m->cfg.dim;
    noise_plan p = plan_noise(m, noise);
    if (n > 0 && (st = ensure(m, n < FLOW_CHUNK ? n : FLOW_CHUNK))) return st;
    for (int64_t r0 = 0; r0 < n && !st; r0 += FLOW_CHUNK) {
        int64_t R = n - r0 < FLOW_CHUNK ? n - r0 : FLOW_CHUNK;
        draw(m, &p, r0, R, m->z);
        st = vaec_flow_forward(&m->flow, m->pool, &m->arena, m->z, D, x + r0 * D, D, m->ld, R, m->ws, m->rows);
        if (log_prob)
            for (int64_t r = 0; r < R && !st; r++) log_prob[r0 + r] = log_normal(m->z + r * D, D) - m->ld[r];
    }
    return st;
}

vaec_status vaec_flowmodel_vjp(vaec_flowmodel *m, int inverse, const float *in, int64_t n, const float *g_out,
                               const double *c, float *g_in) {
    vaec_status st = check_rows(n, in, "z");
    if (st || (inverse && (st = need_inverse(m, "inverse")))) return st;
    m->pending = 0;
    const int64_t D = m->cfg.dim;
    if (n > 0 && (st = ensure(m, n < FLOW_CHUNK ? n : FLOW_CHUNK))) return st;
    vaec_arena_zero_grads(&m->arena);
    for (int64_t r0 = 0; r0 < n && !st; r0 += FLOW_CHUNK) {
        int64_t R = n - r0 < FLOW_CHUNK ? n - r0 : FLOW_CHUNK;
        const float *x = in + r0 * D, *g = g_out + r0 * D;
        float *gi = g_in + r0 * D;
        if (inverse) {
            st = vaec_flow_inverse(&m->flow, m->pool, &m->arena, x, D, m->z, D, NULL, R, m->ws, m->rows);
            if (!st) st = vaec_flow_inverse_backward(&m->flow, m->pool, &m->arena, g, D, c + r0, 0.0, gi, D, R, m->ws,
                                                     m->rows);
        } else {
            st = vaec_flow_forward(&m->flow, m->pool, &m->arena, x, D, m->zk, D, NULL, R, m->ws, m->rows);
            if (!st) st = vaec_flow_backward(&m->flow, m->pool, &m->arena, g, D, c + r0, 0.0, gi, D, R, m->ws, m->rows);
        }
    }
    return st;
}

/* ------------------------------------------------------ maximum likelihood */
vaec_status vaec_flowmodel_nll_step(vaec_flowmodel *m, const float *x, int64_t n, float lr, double *loss) {
    return vaec_flowmodel_nll_step_ex(m, x, n, 0, lr, loss);
}

vaec_status vaec_flowmodel_nll_step_ex(vaec_flowmodel *m, const float *x, int64_t n, int64_t n_total, float lr,
                                       double *loss) {
    vaec_status st = check_rows(n, x, "x");
    if (st || (st = need_inverse(m, "fitting by maximum likelihood"))) return st;
    if (n_total < 0 || (n_total > 0 && n > n_total))
        return vaec_fail(VAEC_ERR_ARG, "n_total: a share of %lld rows of a batch of %lld rows", (long long)n,
                         (long long)n_total);
    if (n == 0 && n_total == 0) return vaec_fail(VAEC_ERR_ARG, "x: empty batch; the loss needs at least one example");
    m->pending = 0;
    const int64_t D = m->cfg.dim;
    if (n > 0 && (st = ensure(m, n < FLOW_CHUNK ? n : FLOW_CHUNK))) return st;
    vaec_arena_zero_grads(&m->arena);
    const double inv_n = 1.0 / (double)(n_total > 0 ? n_total : n);
    double total = 0.0;
    /* loss = −(1/n) Σ [log N(z0) + logdet_inv],  dL/dz0 = z0/n,  dL/dlogdet_inv = −1/n */
    for (int64_t r0 = 0; r0 < n; r0 += FLOW_CHUNK) {
        int64_t R = n - r0 < FLOW_CHUNK ? n - r0 : FLOW_CHUNK;
        st = vaec_flow_inverse(&m->flow, m->pool, &m->arena, x + r0 * D, D, m->z, D, m->ld, R, m->ws, m->rows);
        if (st) return st;
        for (int64_t r = 0; r < R; r++) total -= log_normal(m->z + r * D, D) + m->ld[r];
        for (int64_t i = 0; i < R * D; i++) m->g[i] = (float)(m->z[i] * inv_n);
        st = vaec_flow_inverse_backward(&m->flow, m->pool, &m->arena, m->g, D, NULL, -inv_n, NULL, D, R, m->ws,
                                        m->rows);
        if (st) return st;
    }
    *loss = total * inv_n;
    if (!isfinite(*loss)) return vaec_fail(VAEC_ERR_NONFINITE, "the loss is %s (non-finite)", isnan(*loss) ? "NaN" : "Inf");
    if (lr >= 0.0f) return vaec_arena_adam_step(&m->arena, m->pool, lr);
    return VAEC_OK;
}

/* ----------------------------------------------------------- energy (KL(q‖p)) */
vaec_status vaec_flowmodel_energy_forward(vaec_flowmodel *m, int64_t n, const vaec_noise *noise, float *zK,
                                          double *logq) {
    m->pending = 0;
    if (n < 1) return vaec_fail(VAEC_ERR_ARG, "batch_size must be at least 1, got %lld", (long long)n);
    vaec_status st = ensure(m, n);
    if (st) return st;
    const int64_t D = m->cfg.dim;
    noise_plan p = plan_noise(m, noise);
    draw(m, &p, 0, n, m->z);
    st = vaec_flow_forward(&m->flow, m->pool, &m->arena, m->z, D, m->zk, D, m->ld, n, m->ws, m->rows);
    if (st) return st;
    for (int64_t r = 0; r < n; r++) m->lq[r] = log_normal(m->z + r * D, D) - m->ld[r];
    if (zK) memcpy(zK, m->zk, (size_t)(n * D) * sizeof(float));
    if (logq) memcpy(logq, m->lq, (size_t)n * sizeof(double));
    m->pending = n;
    return VAEC_OK;
}

vaec_status vaec_flowmodel_energy_backward(vaec_flowmodel *m, int64_t n, const double *U, const double *dU, double beta,
                                           float lr, double *loss) {
    const int64_t D = m->cfg.dim, pending = m->pending;
    m->pending = 0;
    if (pending == 0)
        return vaec_fail(VAEC_ERR_ARG, "energy_backward: no energy_forward is pending (another call on the model "
                         "has used its workspace since, or it was already consumed)");
    if (n != pending)
        return vaec_fail(VAEC_ERR_ARG, "U: expected %lld values (one per row of the pending batch), got %lld",
                         (long long)pending, (long long)n);
    if (!(isfinite(beta) && beta >= 0.0)) return vaec_fail(VAEC_ERR_ARG, "beta must be a finite number >= 0, got %g", beta);
    const double inv_n = 1.0 / (double)n;
    double total = 0.0;
    for (int64_t r = 0; r < n; r++) {
        if (!isfinite(U[r]))
            return vaec_fail(VAEC_ERR_NONFINITE, "the potential U is non-finite at row %lld (z = (%g, ...))", (long long)r,
                             (double)m->zk[r * D]);
        total += m->lq[r] + beta * U[r];
        for (int64_t i = 0; i < D; i++) {
            double v = dU[r * D + i];
            if (!isfinite(v))
                return vaec_fail(VAEC_ERR_NONFINITE, "the gradient of the potential U is non-finite at row %lld",
                                 (long long)r);
            m->g[r * D + i] = (float)(beta * v * inv_n);
        }
    }
    *loss = total * inv_n;
    if (!isfinite(*loss)) return vaec_fail(VAEC_ERR_NONFINITE, "the loss is %s (non-finite)", isnan(*loss) ? "NaN" : "Inf");
    vaec_arena_zero_grads(&m->arena);
    /* loss = (1/n) Σ [log N(z0) − logdet + β U(zK)]: dL/dzK = β ∇U/n, dL/dlogdet = −1/n */
    vaec_status st = vaec_flow_backward(&m->flow, m->pool, &m->arena, m->g, D, NULL, -inv_n, NULL, D, n, m->ws, m->rows);
    if (st) return st;
    if (lr >= 0.0f) return vaec_arena_adam_step(&m->arena, m->pool, lr);
    return VAEC_OK;
}

vaec_status vaec_flowmodel_energy_step(vaec_flowmodel *m, vaec_potential p, double box, int64_t n,
                                       const vaec_noise *noise, double beta, float lr, double *loss) {
    if (m->cfg.dim != 2)
        return vaec_fail(VAEC_ERR_ARG, "the built-in potentials U1..U4 are 2-D; this flow has dim %lld",
                         (long long)m->cfg.dim);
    if (p < VAEC_POTENTIAL_U1 || p > VAEC_POTENTIAL_U4)
        return vaec_fail(VAEC_ERR_ARG, "potential: unknown code %d (expected 1..4 for U1..U4)", (int)p);
    if (!(box >= 0.0) || !isfinite(box)) return vaec_fail(VAEC_ERR_ARG, "box must be a finite number >= 0 (0: none), got %g", box);
    vaec_status st = vaec_flowmodel_energy_forward(m, n, noise, NULL, NULL);
    if (st) return st;
    for (int64_t i = 0; i < 2 * n; i++) m->dz[i] = m->zk[i];
    vaec_potential_eval(p, box, m->dz, n, m->U, m->dU);
    return vaec_flowmodel_energy_backward(m, n, m->U, m->dU, beta, lr, loss);
}

/* ------------------------------------------------------------------- files */
/* The config record: i64 dim, i32 kind, i32 K, i64 hidden, i32 act, f32 fixed_scale,
 * u64 seed, i64 0 (48 bytes, little-endian). */
#define FLOW_CONFIG_BYTES 48

vaec_status vaec_flowmodel_save(const vaec_flowmodel *m, const char *path, const void *extra, uint32_t extra_len) {
    unsigned char rec[FLOW_CONFIG_BYTES] = {0};
    const vaec_flowmodel_config *c = &m->cfg;
    int32_t kind = (int32_t)c->flow.kind, K = c->flow.K, act = (int32_t)c->flow.act;
    memcpy(rec, &c->dim, 8);
    memcpy(rec + 8, &kind, 4);
    memcpy(rec + 12, &K, 4);
    memcpy(rec + 16, &c->flow.hidden, 8);
    memcpy(rec + 24, &act, 4);
    memcpy(rec + 28, &c->flow.fixed_scale, 4);
    memcpy(rec + 32, &c->seed, 8);
    return vaec_file_write_ex(path, VAEC_KIND_FLOW, rec, FLOW_CONFIG_BYTES, &m->arena, m->rng_seed, m->rng_counter,
                              extra, extra_len);
}

vaec_status vaec_flowmodel_load(vaec_flowmodel **out, const char *path, int threads, void **extra,
                                uint32_t *extra_len) {
    *out = NULL;
    if (extra) { *extra = NULL; *extra_len = 0; }
    vaec_file f;
    vaec_status st = vaec_file_read(&f, path);
    if (st) return st;
    vaec_flowmodel *m = NULL;
    if (f.kind != VAEC_KIND_FLOW) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds a model of kind %u, not a flow", path, f.kind);
    } else if (f.config_len != FLOW_CONFIG_BYTES) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: a flow config record of %u bytes", path, f.config_len);
    } else {
        const unsigned char *rec = f.config;
        vaec_flowmodel_config c = {0};
        int32_t kind, K, act;
        memcpy(&c.dim, rec, 8);
        memcpy(&kind, rec + 8, 4);
        memcpy(&K, rec + 12, 4);
        memcpy(&c.flow.hidden, rec + 16, 8);
        memcpy(&act, rec + 24, 4);
        memcpy(&c.flow.fixed_scale, rec + 28, 4);
        memcpy(&c.seed, rec + 32, 8);
        c.flow.kind = (vaec_flow_kind)kind;
        c.flow.K = K;
        c.flow.act = (vaec_act)act;
        c.threads = threads;
        if ((st = check_config(&c)))
            st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds an invalid flow configuration (%s)", path, vaec_last_error());
        else if ((vaec_arena_expect(f.nparams, path), st = vaec_flowmodel_create(&m, &c), vaec_arena_expect(-1, NULL), st) == VAEC_OK &&
                 (st = vaec_file_apply(&f, &m->arena)) == VAEC_OK) {
            m->rng_seed = f.rng_seed;
            m->rng_counter = f.rng_counter;
            st = vaec_file_extra_copy(&f, extra, extra_len);
        }
    }
    vaec_file_close(&f);
    if (st) {
        vaec_flowmodel_destroy(m);
        return st;
    }
    *out = m;
    return VAEC_OK;
}
