/* vae_hmc.c -- Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011) on the posterior of
 * the VAE's decoder, and what Kingma & Welling (2014) built on it: Monte Carlo EM (their
 * section 5) and the marginal-likelihood estimator of their appendix D. One chain per
 * example; the chains of a chunk of rows move in lockstep, so the decoder runs on all of
 * them at once.
 *
 *   target      p(z|x) ~ p(z) p(x|z), p(z) = N(0, I), z the decoder's input
 *   potential   U(z) = -log p(z) - log p(x|z) = |z|^2 / 2 + (Z/2) log 2 pi - log p(x|z)
 *   gradient    grad U(z) = z + grad_z(-log p(x|z)): the decoder forward, the likelihood's
 *               gradient at its output (elem.h's rows, scale 1), the decoder backward to
 *               its input
 *   start       a draw from the prior, or the one of init_draws such draws chosen with
 *               probability proportional to p(x|z) (sampling-importance-resampling, one
 *               candidate at a time), the encoder's mean, or the caller's point
 *   transition  p ~ N(0, I); `leapfrog` steps of size h = eps (1 + JITTER (2u - 1)), u ~
 *               U[0, 1) per transition (a random step size keeps a fixed trajectory from
 *               resonating with the posterior's scale; Neal 2011, 5.4.2.2), each
 *                 p -= h/2 grad U(z);  z += h p;  p -= h/2 grad U(z)
 *               (one gradient a step: the one at its end starts the next); the end point is
 *               accepted with probability a = min(1, exp(H - H')), H = U(z) + |p|^2 / 2
 *               (a = 0 when H' is NaN or Inf), when u < a for u ~ U[0, 1); else the chain
 *               stays where it was
 *   step size   one per chain, adapted after each transition t of a burn-in,
 *                 log eps += max(ADAPT_GAIN, 1/sqrt(t + 1)) (a - target),
 *               so that the mean acceptance probability settles at the target (the gain
 *               large first, when eps may be far off); MCEM's persistent chains with gain
 *               ADAPT_GAIN at every transition
 *   estimator   (appendix D) after the burn-in, L states z_l fit q(z) = N(mu, Sigma), their
 *               mean and covariance (Welford's float64 sums; RIDGE times the mean variance on
 *               the diagonal), then L further states z'_l of the same chains give
 *                 log p(x) ~= -log (1/L) sum_l q(z'_l) / p(x, z'_l)
 *                          = log L - LSE_l [log q(z'_l) + U(z'_l)]
 *               (E_{p(z|x)}[q(z) / p(x, z)] = 1 / p(x)), a streamed float64 log-sum-exp
 *   MCEM        one transition of the caller's chains (the examples' persistent states),
 *               then `updates` optimizer steps on the decoder's parameters alone, each on the
 *               gradient of the batch mean of -log p(x|z) at the new states
 *
 * Gradients: the decoder's backward for grad_z also adds to its parameter gradients (a
 * backward outside a call of the gradient protocol adds, net.h). The inference calls copy
 * the decoder's gradients first and put them back at the end; MCEM's updates begin calls
 * of their own (vaec_nets_grads_begin), whose first backward writes.
 * Random numbers: the HMC streams of streams.h, numbered by (call, transition, row). Rows
 * are split over the pool's threads and a row's arithmetic is its own, so the chains do not
 * depend on the thread count. */
#include "vae_impl.h"
#include "elem.h"
#include <math.h>
#include <string.h>

#define ADAPT_GAIN 0.1f
enum { ADAPT_OFF = 0, ADAPT_BURN_IN = 1, ADAPT_ALWAYS = 2 };
#define JITTER 0.2f
#define RIDGE 1e-6
#define STAT_DOUBLES ((int64_t)1 << 22)   /* the estimator's fits of a chunk: at most 32 MiB */
#define MAX_LEAPFROG 100000

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* ------------------------------------------------------------ workspace */
/* Counts (mem NULL) or lays out the HMC workspace for `rows` chains, `stat_rows` of them
 * with room for the estimator's fit; bytes. */
static size_t hmc_plan(vaec_vae *m, char *mem, int64_t rows, int64_t stat_rows) {
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t lo, hi;
    vaec_net_param_range(&m->dec, &lo, &hi);
    size_t off = 0;
#define TAKE(ptr, type, count) do {                                                \
        if (mem) (ptr) = (type *)(mem + off);                                        \
        off += ((size_t)(count) * sizeof(type) + 63) & ~(size_t)63;                 \
    } while (0)
    TAKE(m->hmc.z0, float, rows * lz);
    TAKE(m->hmc.g0, float, rows * lz);
    TAKE(m->hmc.g, float, rows * lz);
    TAKE(m->hmc.p, float, rows * lz);
    TAKE(m->hmc.eps, float, rows);
    TAKE(m->hmc.h, float, rows);
    TAKE(m->hmc.U0, double, rows);
    TAKE(m->hmc.U, double, rows);
    TAKE(m->hmc.K0, double, rows);
    TAKE(m->hmc.acc, double, rows);
    TAKE(m->hmc.mean, double, stat_rows * Z);
    TAKE(m->hmc.fit, double, stat_rows * 2 * Z * Z);
    TAKE(m->hmc.ytmp, double, stat_rows * Z);
    TAKE(m->hmc.ldet, double, stat_rows);
    TAKE(m->hmc.mx, double, stat_rows);
    TAKE(m->hmc.sm, double, stat_rows);
    TAKE(m->hmc.dec_grads, float, hi - lo);
#undef TAKE
    return off;
}

/* Room for `rows` chains (and the fit for them when `stats`), and the VAE's workspace for
 * as many rows. Grows only: a warm call does not allocate. */
static vaec_status hmc_ensure(vaec_vae *m, int64_t rows, int stats) {
    vaec_status st = vae_ensure_workspace(m, rows);
    if (st) return st;
    int64_t stat_rows = stats ? rows : 0;
    if (rows <= m->hmc_rows && stat_rows <= m->hmc_stat_rows) return VAEC_OK;
    if (m->hmc_rows > rows) rows = m->hmc_rows;
    if (m->hmc_stat_rows > stat_rows) stat_rows = m->hmc_stat_rows;
    char *mem = vaec_alloc(hmc_plan(m, NULL, rows, stat_rows), 1);
    if (!mem) return vaec_fail(VAEC_ERR_NOMEM, "out of memory for the HMC workspace of %lld chains", (long long)rows);
    vaec_free(m->hmc_mem);
    m->hmc_mem = mem;
    m->hmc_rows = rows;
    m->hmc_stat_rows = stat_rows;
    hmc_plan(m, mem, rows, stat_rows);
    return VAEC_OK;
}

/* Chains per chunk: VAE_CHUNK, fewer when the estimator's fits (2 Z^2 + 2 Z + 3 doubles a chain)
 * would pass STAT_DOUBLES; a multiple of ROW_GRAIN. */
static int64_t hmc_chunk(const vaec_vae *m, int stats) {
    const int64_t Z = m->cfg.latent_dim;
    int64_t c = VAE_CHUNK;
    if (stats) {
        int64_t fit = STAT_DOUBLES / (2 * Z * Z + 2 * Z + 3);
        if (fit < c) c = fit;
    }
    c = c / ROW_GRAIN * ROW_GRAIN;
    return c < ROW_GRAIN ? ROW_GRAIN : c;
}

/* --------------------------------------------------------------- a run */
/* What the tasks of one call share. */
typedef struct {
    vaec_vae *m;
    uint64_t seed, counter;
    int64_t n, r0, R;           /* the call's rows; this chunk's first row and rows */
    const float *x;             /* the chunk's input rows (stride ldx) */
    int64_t ldx;
    const vaec_hmc_config *cfg;
    int adapt;                  /* adapt the step sizes after each transition: ADAPT_* */
    float gain;                 /* this transition's adaptation gain */
    int64_t t;                  /* the transition's number within the call */
    float scale;                /* the likelihood's gradient scale (1: grad U; MCEM's update: 1/n) */
    double *dU;                 /* where a gradient evaluation puts U (U0 or U) */
    float *dg;                  /* and grad U (g0 or g) */
    const float *z0in;          /* VAEC_HMC_INIT_GIVEN: the caller's points (n, Z) */
} hmc_run;

/* log p(x|z) per row into w_lp and d_out = scale d(-log p)/d(out). */
static void lik_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t D = m->cfg.input_dim, ld = m->ld_out;
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    for (int64_t i = a; i < b; i++) m->w_lp[i] = 0.0;
    if (m->cfg.likelihood == VAEC_LIK_BERNOULLI)
        vaec_elem_bernoulli_rows(b - a, D, m->w_out + a * ld, ld, r->x + a * r->ldx, r->ldx, r->scale, m->d_out + a * ld,
                                 ld, m->w_lp + a);
    else
        vaec_elem_gaussian_rows(b - a, D, m->w_out + a * ld, ld, r->x + a * r->ldx, r->ldx, r->scale, m->d_out + a * ld,
                                ld, m->w_lp + a);
}

/* grad U = z + d_z and U = |z|^2/2 + (Z/2) log 2 pi - log p(x|z), z in w_z. */
static void assemble_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    for (int64_t i = a; i < b; i++) {
        const float *z = m->w_z + i * lz, *dz = m->d_z + i * lz;
        float *g = r->dg + i * lz;
        double sq = 0.0;
        for (int64_t k = 0; k < Z; k++) {
            g[k] = z[k] + dz[k];
            sq += (double)z[k] * z[k];
        }
        r->dU[i] = 0.5 * sq + 0.5 * (double)Z * VAEC_LOG_2PI - m->w_lp[i];
    }
}

/* U and grad U at the positions in w_z, into r->dU and r->dg. */
static void evaluate(hmc_run *r) {
    vaec_vae *m = r->m;
    const int64_t lz = align16(m->cfg.latent_dim);
    int64_t lo;
    vaec_net_forward(&m->dec, m->w_z, lz, r->R, &lo);
    vaec_pool_run(m->pool, lik_task, r, vaec_ntasks(r->R, ROW_GRAIN));
    vaec_net_backward(&m->dec, m->w_z, lz, r->R, m->d_z, lz);
    vaec_pool_run(m->pool, assemble_task, r, vaec_ntasks(r->R, ROW_GRAIN));
}

/* ------------------------------------------------------------ leapfrog */
/* The first half of a step: p -= eps/2 g; z += eps p (z in w_z, g the proposal's). */
static void kick_drift_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    for (int64_t i = a; i < b; i++) {
        const float e = m->hmc.h[i], h = 0.5f * e;
        float *z = m->w_z + i * lz, *p = m->hmc.p + i * lz;
        const float *g = m->hmc.g + i * lz;
        for (int64_t k = 0; k < Z; k++) {
            p[k] -= h * g[k];
            z[k] += e * p[k];
        }
    }
}

/* The second half: p -= eps/2 g at the new position. */
static void kick_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    for (int64_t i = a; i < b; i++) {
        const float h = 0.5f * m->hmc.h[i];
        float *p = m->hmc.p + i * lz;
        const float *g = m->hmc.g + i * lz;
        for (int64_t k = 0; k < Z; k++) p[k] -= h * g[k];
    }
}

/* `steps` leapfrog steps of the proposal (w_z, p, g, U), g and U those at w_z, with step
 * sizes hmc.h. */
static void leapfrog(hmc_run *r, int steps) {
    vaec_vae *m = r->m;
    r->dU = m->hmc.U;
    r->dg = m->hmc.g;
    const int64_t tasks = vaec_ntasks(r->R, ROW_GRAIN);
    for (int s = 0; s < steps; s++) {
        vaec_pool_run(m->pool, kick_drift_task, r, tasks);
        evaluate(r);
        vaec_pool_run(m->pool, kick_task, r, tasks);
    }
}

/* ---------------------------------------------------------- transitions */
/* The chains' starting points into w_z: prior draw number r->t (as the draws of a
 * resampling are numbered), or the caller's points (the encoder's mean is put there by
 * start()). */
static void init_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    for (int64_t i = a; i < b; i++) {
        const int64_t row = r->r0 + i;
        float *z = m->w_z + i * lz;
        if (r->cfg->init == VAEC_HMC_INIT_GIVEN)
            memcpy(z, r->z0in + row * Z, (size_t)Z * sizeof(float));
        else
            vaec_rng_normal(z, Z, r->seed, vaec_stream_hmc(r->counter, HMC_STREAM_INIT),
                            (uint64_t)((r->t * r->n + row) * Z));
    }
}

/* Sampling-importance-resampling of the start, one candidate at a time (r->t, in w_z with
 * log p(x|z) in w_lp): it replaces the chain's start (in hmc.z0) with probability
 * w / (sum of the weights so far), w = p(x|z), the running log-sum in hmc.U0; so the start
 * ends up being candidate k with probability w_k / sum_j w_j. */
static void resample_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    const uint64_t stream = vaec_stream_hmc(r->counter, HMC_STREAM_INIT);
    for (int64_t i = a; i < b; i++) {
        const double lw = m->w_lp[i] > -INFINITY ? m->w_lp[i] : -INFINITY;   /* NaN: weight 0 */
        double s1 = lw, prob = 1.0;   /* the new log-sum of the weights; the candidate's probability */
        if (r->t > 0) {
            const double s0 = m->hmc.U0[i];
            if (!(lw > -INFINITY)) s1 = s0;
            else if (s0 > -INFINITY) s1 = s0 > lw ? s0 + log1p(exp(lw - s0)) : lw + log1p(exp(s0 - lw));
            prob = s1 > -INFINITY ? exp(lw - s1) : 0.0;
        }
        float u;
        vaec_rng_uniform(&u, 1, r->seed, stream, HMC_RESAMPLE_OFFSET + (uint64_t)(r->t * r->n + r->r0 + i));
        if ((double)u < prob) memcpy(m->hmc.z0 + i * lz, m->w_z + i * lz, (size_t)Z * sizeof(float));
        m->hmc.U0[i] = s1;
    }
}

/* The chains' states from w_z (copied) with their U and grad U. */
static void settle(hmc_run *r) {
    vaec_vae *m = r->m;
    const int64_t lz = align16(m->cfg.latent_dim);
    r->dU = m->hmc.U0;
    r->dg = m->hmc.g0;
    evaluate(r);
    memcpy(m->hmc.z0, m->w_z, (size_t)(r->R * lz) * sizeof(float));
}

/* Start the chunk's chains where cfg->init says; then their U and grad U. */
static vaec_status start(hmc_run *r) {
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    if (r->cfg->init == VAEC_HMC_INIT_ENCODER) {
        int64_t ldh;
        const float *h = vaec_net_forward(&m->enc, r->x, r->ldx, r->R, &ldh);
        for (int64_t i = 0; i < r->R; i++) memcpy(m->w_z + i * lz, h + i * ldh, (size_t)Z * sizeof(float));
        if (m->has_flow) {
            vae_flow_rows(m, h, ldh, r->R);
            vaec_status st = vaec_flow_forward(&m->flow, m->pool, &m->arena, m->w_z, lz, m->w_zk, lz, m->w_ld, r->R,
                                               m->w_fws, m->ws_rows);
            if (st) return st;
            memcpy(m->w_z, m->w_zk, (size_t)(r->R * lz) * sizeof(float));
        }
    } else if (r->cfg->init == VAEC_HMC_INIT_PRIOR && r->cfg->init_draws > 1) {
        /* the start resampled from init_draws prior draws (numbered by r->t here) */
        const int64_t tasks = vaec_ntasks(r->R, ROW_GRAIN);
        int64_t lo;
        for (r->t = 0; r->t < r->cfg->init_draws; r->t++) {
            vaec_status st = vaec_interrupt_check();   /* a decoder pass per draw: checked before each */
            if (st) {
                r->t = 0;
                return st;
            }
            vaec_pool_run(m->pool, init_task, r, tasks);
            vaec_net_forward(&m->dec, m->w_z, lz, r->R, &lo);
            vaec_pool_run(m->pool, lik_task, r, tasks);
            vaec_pool_run(m->pool, resample_task, r, tasks);
        }
        r->t = 0;
        memcpy(m->w_z, m->hmc.z0, (size_t)(r->R * lz) * sizeof(float));
    } else {
        vaec_pool_run(m->pool, init_task, r, vaec_ntasks(r->R, ROW_GRAIN));
    }
    settle(r);
    return VAEC_OK;
}

/* A transition's start: p ~ N(0, I), K0 = |p|^2/2, the step size jittered, h = eps (1 +
 * JITTER (2 u - 1)) for u ~ U[0, 1); the proposal (w_z, g, U) = the state. */
static void momentum_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    const uint64_t stream = vaec_stream_hmc(r->counter, HMC_STREAM_MOMENTUM),
                   jitter = vaec_stream_hmc(r->counter, HMC_STREAM_JITTER);
    for (int64_t i = a; i < b; i++) {
        float *p = m->hmc.p + i * lz, u;
        vaec_rng_normal(p, Z, r->seed, stream, (uint64_t)((r->t * r->n + r->r0 + i) * Z));
        vaec_rng_uniform(&u, 1, r->seed, jitter, (uint64_t)(r->t * r->n + r->r0 + i));
        m->hmc.h[i] = m->hmc.eps[i] * (1.0f + JITTER * (2.0f * u - 1.0f));
        double k0 = 0.0;
        for (int64_t k = 0; k < Z; k++) k0 += (double)p[k] * p[k];
        m->hmc.K0[i] = 0.5 * k0;
        memcpy(m->w_z + i * lz, m->hmc.z0 + i * lz, (size_t)Z * sizeof(float));
        memcpy(m->hmc.g + i * lz, m->hmc.g0 + i * lz, (size_t)Z * sizeof(float));
    }
}

/* The Metropolis rule: a = min(1, exp(H0 - H1)); the state moves to the proposal when
 * u < a; the step size adapts; a is summed into acc. */
static void accept_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    hmc_run *r = ctx;
    vaec_vae *m = r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, r->R, &a, &b);
    const uint64_t stream = vaec_stream_hmc(r->counter, HMC_STREAM_UNIFORM);
    for (int64_t i = a; i < b; i++) {
        const float *p = m->hmc.p + i * lz;
        double k1 = 0.0;
        for (int64_t k = 0; k < Z; k++) k1 += (double)p[k] * p[k];
        const double dH = (m->hmc.U0[i] + m->hmc.K0[i]) - (m->hmc.U[i] + 0.5 * k1);
        const double acc = dH >= 0.0 ? 1.0 : dH < 0.0 ? exp(dH) : 0.0;   /* NaN: 0 */
        float u;
        vaec_rng_uniform(&u, 1, r->seed, stream, (uint64_t)(r->t * r->n + r->r0 + i));
        if ((double)u < acc) {
            memcpy(m->hmc.z0 + i * lz, m->w_z + i * lz, (size_t)Z * sizeof(float));
            memcpy(m->hmc.g0 + i * lz, m->hmc.g + i * lz, (size_t)Z * sizeof(float));
            m->hmc.U0[i] = m->hmc.U[i];
        }
        if (r->adapt) m->hmc.eps[i] *= expf(r->gain * ((float)acc - r->cfg->target_accept));
        m->hmc.acc[i] += acc;
    }
}

/* One transition of the chunk's chains (number r->t of the call). */
static void transition(hmc_run *r) {
    vaec_vae *m = r->m;
    const int64_t tasks = vaec_ntasks(r->R, ROW_GRAIN);
    /* the adaptation's gain: 1/sqrt(t + 1) down to ADAPT_GAIN in a burn-in (large steps
     * first, when the step size may be far off), ADAPT_GAIN for persistent chains */
    const float decay = 1.0f / sqrtf((float)(r->t + 1));
    r->gain = r->adapt == ADAPT_BURN_IN && decay > ADAPT_GAIN ? decay : ADAPT_GAIN;
    vaec_pool_run(m->pool, momentum_task, r, tasks);
    leapfrog(r, r->cfg->leapfrog);
    vaec_pool_run(m->pool, accept_task, r, tasks);
    r->t++;
}

/* ------------------------------------------------------- the estimator */
/* Welford's update of each chain's mean and co-moment with its state, the count-th:
 * C += (count-1)/count d d^T, d = z - mean (the mean before it); mean += d / count. Only
 * the lower triangle of C is kept. */
typedef struct { hmc_run *r; int64_t count; } stat_job;
static void stat_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    stat_job *j = ctx;
    vaec_vae *m = j->r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    const double f = (double)(j->count - 1) / (double)j->count;
    int64_t a, b;
    vaec_task_rows(t, j->r->R, &a, &b);
    for (int64_t i = a; i < b; i++) {
        const float *z = m->hmc.z0 + i * lz;
        double *mu = m->hmc.mean + i * Z, *co = m->hmc.fit + i * 2 * Z * Z;
        for (int64_t k = 0; k < Z; k++) {
            const double dk = f * ((double)z[k] - mu[k]);
            for (int64_t l = 0; l <= k; l++) co[k * Z + l] += dk * ((double)z[l] - mu[l]);
        }
        for (int64_t k = 0; k < Z; k++) mu[k] += ((double)z[k] - mu[k]) / (double)j->count;
    }
}

/* Each chain's q(z) = N(mean, Sigma), Sigma = C / (L - 1) + ridge I with ridge = RIDGE times
 * the mean variance: its Cholesky factor (after Sigma in the chain's fit block) and log det
 * Sigma. Should rounding leave Sigma not positive definite, the ridge grows tenfold until
 * it is (log det NaN after 30 tries: the estimate is NaN). Also the log-sum-exp state for
 * the second half. */
static void fit_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    stat_job *j = ctx;
    vaec_vae *m = j->r->m;
    const int64_t Z = m->cfg.latent_dim;
    int64_t a, b;
    vaec_task_rows(t, j->r->R, &a, &b);
    for (int64_t i = a; i < b; i++) {
        double *S = m->hmc.fit + i * 2 * Z * Z, *C = S + Z * Z;
        double tr = 0.0;
        for (int64_t k = 0; k < Z; k++) {
            for (int64_t l = 0; l <= k; l++) S[k * Z + l] /= (double)(j->count - 1);
            tr += S[k * Z + k];
        }
        double ridge = RIDGE * (tr > 0.0 ? tr / (double)Z : 1.0), ld = NAN;
        for (int tries = 0; tries < 30; tries++, ridge *= 10.0) {
            int ok = 1;
            ld = 0.0;
            for (int64_t k = 0; k < Z && ok; k++)
                for (int64_t l = 0; l <= k; l++) {
                    double s = S[k * Z + l] + (l == k ? ridge : 0.0);
                    for (int64_t q = 0; q < l; q++) s -= C[k * Z + q] * C[l * Z + q];
                    if (l < k) {
                        C[k * Z + l] = s / C[l * Z + l];
                    } else if (s > 0.0) {
                        C[k * Z + k] = sqrt(s);
                        ld += 2.0 * log(C[k * Z + k]);
                    } else {
                        ok = 0;
                        break;
                    }
                }
            if (ok) break;
            ld = NAN;
        }
        m->hmc.ldet[i] = ld;
        m->hmc.mx[i] = -INFINITY;
        m->hmc.sm[i] = 0.0;
    }
}

/* The second half: log r = log q(z) + U(z) of each chain's state, into its log-sum-exp;
 * log q(z) = -|C^-1 (z - mean)|^2 / 2 - log det Sigma / 2 - (Z/2) log 2 pi. */
static void lse_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    stat_job *j = ctx;
    vaec_vae *m = j->r->m;
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, j->r->R, &a, &b);
    for (int64_t i = a; i < b; i++) {
        const float *z = m->hmc.z0 + i * lz;
        const double *mu = m->hmc.mean + i * Z, *C = m->hmc.fit + i * 2 * Z * Z + Z * Z;
        double *y = m->hmc.ytmp + i * Z;   /* y = C^-1 (z - mean), forward substitution */
        double quad = 0.0;
        for (int64_t k = 0; k < Z; k++) {
            double s = (double)z[k] - mu[k];
            for (int64_t q = 0; q < k; q++) s -= C[k * Z + q] * y[q];
            y[k] = s / C[k * Z + k];
            quad += y[k] * y[k];
        }
        const double lr = -0.5 * quad - 0.5 * m->hmc.ldet[i] - 0.5 * (double)Z * VAEC_LOG_2PI + m->hmc.U0[i];
        double *mx = m->hmc.mx + i, *sm = m->hmc.sm + i;
        if (lr > *mx) {
            *sm = *sm * exp(*mx - lr) + 1.0;
            *mx = lr;
        } else {
            *sm += exp(lr - *mx);
        }
    }
}

/* --------------------------------------------------------------- calls */
static vaec_status check_cfg(const vaec_hmc_config *cfg) {
    if (!cfg) return vaec_fail(VAEC_ERR_ARG, "HMC: no configuration");
    if (cfg->leapfrog < 1 || cfg->leapfrog > MAX_LEAPFROG)
        return vaec_fail(VAEC_ERR_ARG, "leapfrog must be between 1 and %d, got %d", MAX_LEAPFROG, cfg->leapfrog);
    if (!(cfg->target_accept > 0.0f && cfg->target_accept < 1.0f))
        return vaec_fail(VAEC_ERR_ARG, "target_accept must be in (0, 1), got %g", cfg->target_accept);
    if (!(cfg->step_size > 0.0f) || !isfinite(cfg->step_size))
        return vaec_fail(VAEC_ERR_ARG, "step_size must be a finite number > 0, got %g", cfg->step_size);
    if (cfg->burn_in < 0) return vaec_fail(VAEC_ERR_ARG, "burn_in must be >= 0, got %lld", (long long)cfg->burn_in);
    if (cfg->init < VAEC_HMC_INIT_PRIOR || cfg->init > VAEC_HMC_INIT_GIVEN)
        return vaec_fail(VAEC_ERR_ARG, "init: unknown code %d", cfg->init);
    if (cfg->init_draws > 10000000)
        return vaec_fail(VAEC_ERR_ARG, "init_draws must be at most 10^7, got %d", cfg->init_draws);
    return VAEC_OK;
}

/* The input, the model and the noise of a call; its key (seed, counter): the noise's seed
 * with counter 0, or the model's key and its next counter. */
static vaec_status begin_call(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, uint64_t *seed,
                              uint64_t *counter) {
    vaec_status st = vae_check_input(m, x);
    if (st) return st;
    if (m->cfg.deterministic) return vaec_fail(VAEC_ERR_ARG, "HMC: an autoencoder has no prior p(z) and no posterior");
    if (noise && noise->eps) return vaec_fail(VAEC_ERR_ARG, "HMC draws its own noise: eps must be NULL");
    if (noise && noise->use_seed) {
        *seed = noise->seed;
        *counter = 0;
    } else {
        *seed = m->rng_seed;
        *counter = m->rng_counter++;
    }
    return VAEC_OK;
}

/* The decoder's gradients (and its non-finite flag), copied aside or put back. */
static void keep_grads(vaec_vae *m, int restore, int *flag) {
    int64_t lo, hi;
    vaec_net_param_range(&m->dec, &lo, &hi);
    float *g = m->arena.grads + lo;
    if (restore) {
        memcpy(g, m->hmc.dec_grads, (size_t)(hi - lo) * sizeof(float));
        atomic_store(&m->dec.nonfinite, *flag);
    } else {
        memcpy(m->hmc.dec_grads, g, (size_t)(hi - lo) * sizeof(float));
        *flag = atomic_load(&m->dec.nonfinite);
    }
}

/* A chunk's run: rows [r0, r0 + R) of the call's n, its input prepared. */
static hmc_run chunk_run(vaec_vae *m, const vaec_input *x, uint64_t seed, uint64_t counter, int64_t r0, int64_t R,
                         const vaec_hmc_config *cfg, const float *z0in) {
    hmc_run r = {0};
    r.m = m;
    r.seed = seed;
    r.counter = counter;
    r.n = x->n;
    r.r0 = r0;
    r.R = R;
    r.x = vae_prepare_input(m, x, r0, R, seed, counter, 0, &r.ldx);
    r.cfg = cfg;
    r.adapt = ADAPT_BURN_IN;
    r.z0in = z0in;
    r.scale = 1.0f;
    for (int64_t i = 0; i < R; i++) {
        m->hmc.eps[i] = cfg->step_size;
        m->hmc.acc[i] = 0.0;
    }
    return r;
}

vaec_status vaec_vae_hmc_sample(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, const vaec_hmc_config *cfg,
                                const float *z0, float *out, float *accept, float *step) {
    uint64_t seed = 0, counter = 0;
    vaec_status st = check_cfg(cfg);
    if (st || (st = begin_call(m, x, noise, &seed, &counter))) return st;
    const int64_t L = noise ? noise->samples : 1, Z = m->cfg.latent_dim, lz = align16(Z), n = x->n;
    if (L < 1) return vaec_fail(VAEC_ERR_ARG, "samples must be at least 1, got %lld", (long long)L);
    if (cfg->init == VAEC_HMC_INIT_GIVEN && !z0 && n > 0)
        return vaec_fail(VAEC_ERR_ARG, "z0: the chains' starting points are missing");
    const int64_t chunk = hmc_chunk(m, 0);
    if (n > 0 && (st = hmc_ensure(m, n < chunk ? n : chunk, 0))) return st;
    int flag = 0;
    if (n > 0) keep_grads(m, 0, &flag);
    for (int64_t r0 = 0; r0 < n && !st; r0 += chunk) {
        const int64_t R = n - r0 < chunk ? n - r0 : chunk;
        hmc_run r = chunk_run(m, x, seed, counter, r0, R, cfg, z0);
        if ((st = start(&r))) break;
        for (int64_t b = 0; b < cfg->burn_in && !(st = vaec_interrupt_check()); b++) transition(&r);
        r.adapt = ADAPT_OFF;
        for (int64_t i = 0; i < R; i++) m->hmc.acc[i] = 0.0;
        for (int64_t l = 0; l < L && !st && !(st = vaec_interrupt_check()); l++) {
            transition(&r);
            for (int64_t i = 0; i < R; i++)
                memcpy(out + (l * n + r0 + i) * Z, m->hmc.z0 + i * lz, (size_t)Z * sizeof(float));
        }
        if (st) break;
        for (int64_t i = 0; i < R; i++) {
            if (accept) accept[r0 + i] = (float)(m->hmc.acc[i] / (double)L);
            if (step) step[r0 + i] = m->hmc.eps[i];
        }
    }
    if (n > 0) keep_grads(m, 1, &flag);
    vae_call_end(m, st, noise, counter);
    return st;
}

vaec_status vaec_vae_hmc_log_likelihood(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                                        const vaec_hmc_config *cfg, double *out, float *accept) {
    uint64_t seed = 0, counter = 0;
    vaec_status st = check_cfg(cfg);
    if (st || (st = begin_call(m, x, noise, &seed, &counter))) return st;
    const int64_t L = noise ? noise->samples : 1, Z = m->cfg.latent_dim, n = x->n;
    if (L < 2)
        return vaec_fail(VAEC_ERR_ARG, "samples must be at least 2 (the estimator fits a covariance to them), got %lld",
                         (long long)L);
    if (cfg->init == VAEC_HMC_INIT_GIVEN)
        return vaec_fail(VAEC_ERR_ARG, "init: the estimator's chains start at the prior or the encoder's mean");
    const int64_t chunk = hmc_chunk(m, 1);
    if (n > 0 && (st = hmc_ensure(m, n < chunk ? n : chunk, 1))) return st;
    int flag = 0;
    if (n > 0) keep_grads(m, 0, &flag);
    for (int64_t r0 = 0; r0 < n && !st; r0 += chunk) {
        const int64_t R = n - r0 < chunk ? n - r0 : chunk, tasks = vaec_ntasks(R, ROW_GRAIN);
        hmc_run r = chunk_run(m, x, seed, counter, r0, R, cfg, NULL);
        if ((st = start(&r))) break;
        for (int64_t b = 0; b < cfg->burn_in && !(st = vaec_interrupt_check()); b++) transition(&r);
        r.adapt = ADAPT_OFF;
        for (int64_t i = 0; i < R; i++) m->hmc.acc[i] = 0.0;
        memset(m->hmc.mean, 0, (size_t)(R * Z) * sizeof(double));
        memset(m->hmc.fit, 0, (size_t)(R * 2 * Z * Z) * sizeof(double));
        stat_job sj = {&r, 0};
        for (int64_t l = 0; l < L && !st && !(st = vaec_interrupt_check()); l++) {   /* the states q(z) is fitted to */
            transition(&r);
            sj.count = l + 1;
            vaec_pool_run(m->pool, stat_task, &sj, tasks);
        }
        if (st) break;
        vaec_pool_run(m->pool, fit_task, &sj, tasks);
        for (int64_t l = 0; l < L && !(st = vaec_interrupt_check()); l++) {   /* the states of the estimate */
            transition(&r);
            vaec_pool_run(m->pool, lse_task, &sj, tasks);
        }
        if (st) break;
        for (int64_t i = 0; i < R; i++) {
            out[r0 + i] = log((double)L) - (m->hmc.mx[i] + log(m->hmc.sm[i]));
            if (accept) accept[r0 + i] = (float)(m->hmc.acc[i] / (double)(2 * L));
        }
    }
    if (n > 0) keep_grads(m, 1, &flag);
    vae_call_end(m, st, noise, counter);
    return st;
}

vaec_status vaec_vae_mcem_step(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, const vaec_hmc_config *cfg,
                               float *z, float *step, int updates, float lr, double *loss, double *accept) {
    uint64_t seed = 0, counter = 0;
    vaec_status st = check_cfg(cfg);
    if (st) return st;
    if (x && x->n == 0) return vaec_fail(VAEC_ERR_ARG, "x: empty batch; MCEM needs at least one example");
    if (updates < 1) return vaec_fail(VAEC_ERR_ARG, "updates must be at least 1, got %d", updates);
    if (!(lr >= 0.0f) || !isfinite(lr)) return vaec_fail(VAEC_ERR_ARG, "lr must be a finite number >= 0, got %g", lr);
    if (!z || !step) return vaec_fail(VAEC_ERR_ARG, "z, step: the chains' states and step sizes are missing");
    const int64_t n = x ? x->n : 0, Z = m->cfg.latent_dim, lz = align16(Z);
    for (int64_t i = 0; i < n; i++)
        if (!(step[i] > 0.0f) || !isfinite(step[i]))
            return vaec_fail(VAEC_ERR_ARG, "step[%lld] must be a finite number > 0, got %g", (long long)i, step[i]);
    if ((st = begin_call(m, x, noise, &seed, &counter))) return st;
    vaec_hmc_config given = *cfg;
    given.init = VAEC_HMC_INIT_GIVEN;
    const int64_t chunk = hmc_chunk(m, 0);
    if ((st = hmc_ensure(m, n < chunk ? n : chunk, 0))) return st;
    /* E step: one transition of each chain, from the example's last state */
    double usum = 0.0, asum = 0.0;
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
        const int64_t R = n - r0 < chunk ? n - r0 : chunk;
        hmc_run r = chunk_run(m, x, seed, counter, r0, R, &given, z);
        for (int64_t i = 0; i < R; i++) m->hmc.eps[i] = step[r0 + i];
        if ((st = start(&r))) return st;
        r.adapt = ADAPT_ALWAYS;
        transition(&r);
        for (int64_t i = 0; i < R; i++) {
            memcpy(z + (r0 + i) * Z, m->hmc.z0 + i * lz, (size_t)Z * sizeof(float));
            step[r0 + i] = m->hmc.eps[i];
            usum += m->hmc.U0[i];
            asum += m->hmc.acc[i];
        }
    }
    /* M step: the decoder's parameters follow -log p(x|z) at those states */
    vaec_net *dec = &m->dec;
    int64_t lo, hi;
    vaec_net_param_range(dec, &lo, &hi);
    for (int u = 0; u < updates && !st; u++) {
        vaec_nets_grads_begin(&m->arena, &dec, 1);
        for (int64_t r0 = 0; r0 < n; r0 += chunk) {
            const int64_t R = n - r0 < chunk ? n - r0 : chunk;
            hmc_run r = chunk_run(m, x, seed, counter, r0, R, &given, NULL);
            r.scale = (float)(1.0 / (double)n);
            for (int64_t i = 0; i < R; i++) memcpy(m->w_z + i * lz, z + (r0 + i) * Z, (size_t)Z * sizeof(float));
            int64_t ldo;
            vaec_net_forward(dec, m->w_z, lz, R, &ldo);
            vaec_pool_run(m->pool, lik_task, &r, vaec_ntasks(R, ROW_GRAIN));
            vaec_net_backward(dec, m->w_z, lz, R, NULL, 0);
        }
        int bad = vaec_nets_grads_end(&dec, 1);
        st = vaec_arena_step_range_ex(&m->arena, m->pool, lr, lo, hi, bad);
    }
    if (loss) *loss = usum / (double)n;
    if (accept) *accept = asum / (double)n;
    return st;
}

vaec_status vaec_vae_hmc_potential(vaec_vae *m, const vaec_input *x, const float *z, double *U, float *grad) {
    vaec_status st = vae_check_input(m, x);
    if (st) return st;
    if (m->cfg.deterministic) return vaec_fail(VAEC_ERR_ARG, "HMC: an autoencoder has no prior p(z) and no posterior");
    const int64_t n = x->n, Z = m->cfg.latent_dim, lz = align16(Z), chunk = hmc_chunk(m, 0);
    if (n == 0) return VAEC_OK;
    if ((st = hmc_ensure(m, n < chunk ? n : chunk, 0))) return st;
    vaec_hmc_config cfg = {1, 0.5f, 1.0f, 0, VAEC_HMC_INIT_GIVEN, 0};
    int flag;
    keep_grads(m, 0, &flag);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
        const int64_t R = n - r0 < chunk ? n - r0 : chunk;
        hmc_run r = chunk_run(m, x, m->rng_seed, m->rng_counter, r0, R, &cfg, z);
        vaec_pool_run(m->pool, init_task, &r, vaec_ntasks(R, ROW_GRAIN));
        settle(&r);
        for (int64_t i = 0; i < R; i++) {
            U[r0 + i] = m->hmc.U0[i];
            memcpy(grad + (r0 + i) * Z, m->hmc.g0 + i * lz, (size_t)Z * sizeof(float));
        }
    }
    keep_grads(m, 1, &flag);
    return VAEC_OK;
}

vaec_status vaec_vae_hmc_leapfrog(vaec_vae *m, const vaec_input *x, float *z, float *p, const float *step, int steps) {
    vaec_status st = vae_check_input(m, x);
    if (st) return st;
    if (m->cfg.deterministic) return vaec_fail(VAEC_ERR_ARG, "HMC: an autoencoder has no prior p(z) and no posterior");
    if (steps < 1 || steps > MAX_LEAPFROG)
        return vaec_fail(VAEC_ERR_ARG, "steps must be between 1 and %d, got %d", MAX_LEAPFROG, steps);
    const int64_t n = x->n, Z = m->cfg.latent_dim, lz = align16(Z), chunk = hmc_chunk(m, 0);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(step[i])) return vaec_fail(VAEC_ERR_ARG, "step[%lld] must be finite, got %g", (long long)i, step[i]);
    if (n == 0) return VAEC_OK;
    if ((st = hmc_ensure(m, n < chunk ? n : chunk, 0))) return st;
    vaec_hmc_config cfg = {steps, 0.5f, 1.0f, 0, VAEC_HMC_INIT_GIVEN, 0};
    int flag;
    keep_grads(m, 0, &flag);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
        const int64_t R = n - r0 < chunk ? n - r0 : chunk;
        hmc_run r = chunk_run(m, x, m->rng_seed, m->rng_counter, r0, R, &cfg, z);
        for (int64_t i = 0; i < R; i++) {
            m->hmc.h[i] = step[r0 + i];
            memcpy(m->hmc.p + i * lz, p + (r0 + i) * Z, (size_t)Z * sizeof(float));
        }
        vaec_pool_run(m->pool, init_task, &r, vaec_ntasks(R, ROW_GRAIN));
        r.dU = m->hmc.U;
        r.dg = m->hmc.g;
        evaluate(&r);
        leapfrog(&r, steps);
        for (int64_t i = 0; i < R; i++) {
            memcpy(z + (r0 + i) * Z, m->w_z + i * lz, (size_t)Z * sizeof(float));
            memcpy(p + (r0 + i) * Z, m->hmc.p + i * lz, (size_t)Z * sizeof(float));
        }
    }
    keep_grads(m, 1, &flag);
    return VAEC_OK;
}
