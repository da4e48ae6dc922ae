/* vae_objectives.c -- the VAE's objectives, each one function over its networks, forward
 * then backward, on one chunk of rows:
 *
 *   elbo_chunk       the ELBO with the analytic KL (Kingma & Welling 2014),
 *                      ELBO = (1/L) sum_l log p(x|z_l) - KL(q(z|x) || N(0, I)),
 *                    with beta on the KL and free bits; the encoder's gradient by the
 *                    reparameterization trick or by the score function (REINFORCE);
 *   flow_elbo_chunk  the ELBO through a flow, z_K = f(z_0), z_0 ~ q0(z|x): no analytic KL,
 *                      ELBO = (1/L) sum_l [log p(x|z_K) + log p(z_K) - log q0(z_0|x) + log|det|];
 *   iwae_chunk       Burda et al.'s k-sample bound log (1/k) sum_l p(x, z_l) / q(z_l|x), by a
 *                    streaming float64 log-sum-exp, and its gradient: each sample again,
 *                    weighted by its normalized importance weight.
 *
 * run_objective runs one over a batch, chunk by chunk, under the gradient protocol of
 * net.h (the first backward of a call writes a layer's gradients, later ones add). Samples
 * without a backward pass are stacked: S samples of R rows go through the decoder as S*R
 * rows, each row's sums still in sample order, so the results do not depend on S. */
#include "vae_impl.h"
#include "elem.h"
#include <math.h>
#include <string.h>

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* The noise of a call: explicit eps, or the RNG key and counter to draw from; and the
 * batch the call's rows belong to: row row0 + r of a batch of n rows (n = the call's own
 * rows, row0 = 0, unless the call is a share of a larger batch: vaec_noise's row_offset
 * and n_total). n also divides the loss and the gradients. */
typedef struct { const float *eps; int L; uint64_t seed, counter; int64_t row0, n; } noise_plan;

static vaec_status plan_noise(vaec_vae *m, const vaec_noise *noise, int64_t rows, noise_plan *np) {
    int L = noise ? noise->samples : 1;
    if (L < 1) return vaec_fail(VAEC_ERR_ARG, "samples must be at least 1, got %d", L);
    const int64_t off = noise ? noise->row_offset : 0, total = noise ? noise->n_total : 0;
    if (total < 0 || off < 0 || (total == 0 && off != 0) || (total > 0 && off > total - rows))
        return vaec_fail(VAEC_ERR_ARG, "row_offset, n_total: rows [%lld, %lld) are not a share of a batch of %lld rows",
                         (long long)off, (long long)(off + rows), (long long)total);
    if (total > 0 && noise->eps)
        return vaec_fail(VAEC_ERR_ARG, "eps: explicit noise is indexed by the call's own rows; a share of a batch "
                         "(n_total) draws its noise from the RNG");
    np->row0 = off;
    np->n = total > 0 ? total : rows;
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
    int kind;          /* RUN_ELBO: the ELBO (analytic KL, or through the flow); RUN_IWAE */
    int grad;
    float beta, free_bits;
    int score;         /* the score-function estimator of the encoder's gradient */
    float baseline;
} run_plan;

/* ------------------------------------------------------------------ pieces */
/* KL per row (and per dimension, for free bits) and, with gradients, d_heads =
 * scale * dKL/d(mu, logvar) (zero when the objective has no analytic KL). */
typedef struct { vaec_vae *m; int64_t R; float scale; int grad, analytic; } kl_job;
static void kl_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    kl_job *j = ctx;
    vaec_vae *m = j->m;
    const int64_t Z = m->cfg.latent_dim, ld = m->ld_heads, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
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
            if (m->amor_cols) memset(dlv + Z, 0, (size_t)m->amor_cols * sizeof(float));   /* the flow adds into it */
        }
    }
}

/* Free bits: zero the KL gradient of dimensions whose chunk-mean KL is below the floor;
 * the KL term of the objective per row is then the sum of the floored means. */
static double free_bits_mask(vaec_vae *m, int64_t R, float floor_nats, int grad) {
    const int64_t Z = m->cfg.latent_dim, ld = m->ld_heads, lz = align16(Z);
    double total = 0.0;
    for (int64_t k = 0; k < Z; k++) {
        double mean = 0.0;
        for (int64_t r = 0; r < R; r++) mean += m->w_kld[r * lz + k];
        mean /= (double)R;
        total += mean > floor_nats ? mean : floor_nats;
        if (mean < floor_nats && grad)
            for (int64_t r = 0; r < R; r++) m->d_heads[r * ld + k] = m->d_heads[r * ld + Z + k] = 0.0f;
    }
    return total;
}

/* z = mu + exp(logvar/2) * eps, and per row log p(z) - log q(z|x) = 0.5 sum(eps^2 + logvar - z^2)
 * (the log 2 pi terms cancel) into w_lpq. */
typedef struct {
    vaec_vae *m;
    int64_t R;
    const float *rs;
    float w;
    int prior;
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
    const int64_t Z = m->cfg.latent_dim, ld = m->ld_heads, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
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
        if (j->np) {   /* eps index ((l + s) * n + r0 + row) * Z, whatever the stacking (r0 counted in
                          the whole batch when the call is a share of one) */
            const int64_t at = ((j->l + r / j->src) * j->n + j->np->row0 + j->r0 + r % j->src) * Z;
            if (j->np->eps) memcpy(eps, j->np->eps + at, (size_t)Z * sizeof(float));
            else vaec_rng_normal(eps, Z, j->np->seed, vaec_stream_vae(j->np->counter, VAE_STREAM_EPS), (uint64_t)at);
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
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
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
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
    for (int64_t r = a; r < b; r++) {
        float w = j->rs ? j->rs[r] : j->w;
        const float *zk = m->w_zk + r * lz;
        float *d = m->d_zk + r * lz;
        for (int64_t k = 0; k < Z; k++) d[k] += w * zk[k];
        m->w_dld[r] = -(double)w;
    }
}

/* The reparameterization's backward, dz -> d(mu, logvar): dmu += dz, dlogvar += dz * eps *
 * exp(logvar/2) / 2. With weights w_r (rs, or the uniform w) on the Monte Carlo terms
 * log p(z) - log q(z|x): dlogvar -= w_r / 2 (from +log q = -0.5 sum(log 2 pi + logvar +
 * eps^2) at fixed eps) and, when `prior` (no flow: z_K = z), first dz += w_r * z (from
 * -log p(z)). An autoencoder's code is mu: dmu += dz. */
static void reparam_back_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reparam_job *j = ctx;
    vaec_vae *m = j->m;
    const int64_t Z = m->cfg.latent_dim, ld = m->ld_heads, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
    for (int64_t r = a; r < b; r++) {
        const float *lv = m->w_heads + r * ld + Z, *eps = m->w_eps + r * lz, *z = m->w_z + r * lz;
        float *dz = m->d_z + r * lz;
        float *dmu = m->d_heads + r * ld, *dlv = dmu + Z;
        if (m->cfg.deterministic) {
            for (int64_t k = 0; k < Z; k++) dmu[k] += dz[k];
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

/* The score-function (REINFORCE) estimator of the encoder's gradient of -E_q[log p(x|z)]:
 * per row s = w * (log p(x|z) - baseline), w = 1/(nL), log p(x|z) in w_lp, and
 * d(mu, logvar) -= s * d log q(z|x)/d(mu, logvar) = s * (eps / sigma, (eps^2 - 1) / 2);
 * z is a sample here, not a function of (mu, logvar): the decoder's dz is not used. */
static void score_back_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    reparam_job *j = ctx;
    vaec_vae *m = j->m;
    const int64_t Z = m->cfg.latent_dim, ld = m->ld_heads, lz = align16(Z);
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
    for (int64_t r = a; r < b; r++) {
        const float *lv = m->w_heads + r * ld + Z, *eps = m->w_eps + r * lz;
        float *dmu = m->d_heads + r * ld, *dlv = dmu + Z;
        float s = (float)((double)j->w * (m->w_lp[r] - (double)j->baseline));
        for (int64_t k = 0; k < Z; k++) {
            dmu[k] -= s * eps[k] * expf(-0.5f * lv[k]);
            dlv[k] -= s * 0.5f * (eps[k] * eps[k] - 1.0f);
        }
    }
}

/* log p(x|z) per row into w_lp, and d_out = scale_r * d(-log p)/d(out) with scale_r the
 * row's weight (rs[r]) or the uniform `scale`; the vectorized kernels of elem.c, stable
 * forms (softplus, log-sigmoid), float64 row sums. An autoencoder's Gaussian loss is the
 * squared error: "log p" = -sum (x - o)^2. */
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
    const int64_t D = m->cfg.input_dim, ld = m->ld_out;
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
    const int bern = m->cfg.likelihood == VAEC_LIK_BERNOULLI;
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

/* Samples l .. l+S-1 of the chunk's R rows, stacked: row s*R + r is sample l+s of row r.
 * Their eps rows (index ((l+s) * n + r0 + r) * Z of the call's noise, so the noise does
 * not depend on S), z (through the flow, when there is one, with its terms added to
 * w_lpq), the decoder on the S*R rows, and log p(x|z) (w_lp) with, when `grad`, its
 * gradient scaled by `scale` or by rs per row into the decoder's output gradient. */
static vaec_status decode_samples(vaec_vae *m, const noise_plan *np, const float *xin, int64_t ldx, int64_t n,
                                  int64_t r0, int64_t R, int l, int S, int grad, float scale, const float *rs) {
    const vaec_status stop = vaec_interrupt_check();   /* every sample loop */
    if (stop) return stop;
    const int64_t lz = align16(m->cfg.latent_dim);
    reparam_job rj = {m, R * S, NULL, 0.0f, 0, 0.0f, R, np, n, r0, l};
    const int64_t rows = R * S;
    vaec_pool_run(m->pool, reparam_task, &rj, vaec_ntasks(rows, ROW_GRAIN));
    const float *zin = m->w_z;
    if (m->has_flow) {
        vae_flow_rows(m, m->w_heads, m->ld_heads, R);   /* an amortized flow: row q takes row q % R's */
        vaec_status st = vaec_flow_forward(&m->flow, m->pool, &m->arena, m->w_z, lz, m->w_zk, lz, m->w_ld, rows,
                                           m->w_fws, m->ws_rows);
        if (st) return st;
        vaec_pool_run(m->pool, flow_lpq_task, &rj, vaec_ntasks(rows, ROW_GRAIN));
        zin = m->w_zk;
    }
    int64_t lo;
    vaec_net_forward(&m->dec, zin, lz, rows, &lo);
    lik_job lj = {m, xin, ldx, rows, scale, rs, grad, R};
    vaec_pool_run(m->pool, lik_task, &lj, vaec_ntasks(rows, ROW_GRAIN));
    return VAEC_OK;
}

/* One sample's backward from the decoder's output gradient: the decoder down to its
 * input, through the flow when there is one, then the reparameterization into d_heads.
 * Weights on the Monte Carlo terms log p(z_K) - log q0(z_0|x) + log|det|: per row (rs,
 * IWAE) or uniform (w: beta/(nL) for the ELBO with a flow; 0 with the analytic KL, whose
 * gradient kl_task already put in d_heads). */
static vaec_status reparam_backward(vaec_vae *m, int64_t R, const float *rs, float w) {
    const int64_t lz = align16(m->cfg.latent_dim);
    vaec_net_backward(&m->dec, m->has_flow ? m->w_zk : m->w_z, lz, R, m->has_flow ? m->d_zk : m->d_z, lz);
    reparam_job rj = {m, R, rs, w, !m->has_flow, 0.0f, R, NULL, 0, 0, 0};
    if (m->has_flow) {
        vaec_pool_run(m->pool, flow_prior_task, &rj, vaec_ntasks(R, ROW_GRAIN));
        vae_flow_rows(m, m->w_heads, m->ld_heads, R);
        vaec_status st = vaec_flow_backward(&m->flow, m->pool, &m->arena, m->d_zk, lz, m->w_dld, 0.0, m->d_z, lz, R,
                                            m->w_fws, m->ws_rows);
        if (st) return st;
    }
    vaec_pool_run(m->pool, reparam_back_task, &rj, vaec_ntasks(R, ROW_GRAIN));
    return VAEC_OK;
}

/* One sample's backward with the score-function estimator: the decoder's parameter
 * gradients (its input gradient is not used), then the encoder's by score_back_task. */
static void score_backward(vaec_vae *m, int64_t R, float w, float baseline) {
    vaec_net_backward(&m->dec, m->w_z, align16(m->cfg.latent_dim), R, m->d_z, align16(m->cfg.latent_dim));
    reparam_job rj = {m, R, NULL, w, 0, baseline, R, NULL, 0, 0, 0};
    vaec_pool_run(m->pool, score_back_task, &rj, vaec_ntasks(R, ROW_GRAIN));
}

/* How many samples of R rows go through the decoder at once: 1 with a backward pass per
 * sample (its activations must be the sample's alone), else as many as the workspace
 * holds (run_objective sizes it for min(VAE_CHUNK, chunk * L) rows). */
static int stack_samples(const vaec_vae *m, int64_t R, int L, int stackable) {
    if (!stackable || R <= 0) return 1;
    int64_t S = m->ws_rows / R;
    return S < 1 ? 1 : S > L ? L : (int)S;
}

/* The encoder on the chunk: [mu | logvar] into w_heads, their KL per row (w_kl) and per
 * dimension, and, with gradients, the KL's gradient (scaled by beta/n) into d_heads when
 * `analytic`. */
static void encode_chunk(vaec_vae *m, const float *xin, int64_t ldx, int64_t R, const run_plan *rp, int64_t n,
                         int analytic) {
    int64_t ldh;
    vaec_net_forward(&m->enc, xin, ldx, R, &ldh);
    kl_job kj = {m, R, (float)(rp->beta / (double)n), rp->grad, analytic};
    vaec_pool_run(m->pool, kl_task, &kj, vaec_ntasks(R, ROW_GRAIN));
}

/* ------------------------------------------------------------ objectives */
/* ELBO, analytic KL: per-row ELBO = (1/L) sum_l log p(x|z_l) - KL into out; the objective
 * -(1/L) sum log p(x|z_l) + beta * KL (KL per dimension floored at free_bits, chunk-
 * averaged) summed into *obj; with grad, gradients of its batch mean (the encoder's by
 * the reparameterization trick, or by the score function). */
static vaec_status elbo_chunk(vaec_vae *m, const float *xin, int64_t ldx, int64_t n, int64_t r0, int64_t R,
                              const noise_plan *np, const run_plan *rp, double *out, double *obj) {
    const int L = np->L, grad = rp->grad;
    vaec_status st;
    encode_chunk(m, xin, ldx, R, rp, n, 1);
    const double kl_obj = rp->free_bits > 0.0f ? free_bits_mask(m, R, rp->free_bits, grad) * (double)R : -1.0;
    double kl_sum = 0.0;
    if (kl_obj < 0.0)
        for (int64_t r = 0; r < R; r++) kl_sum += m->w_kl[r];
    const float scale = (float)(1.0 / ((double)n * L));
    const int S = stack_samples(m, R, L, !grad);
    for (int l = 0; l < L; l += S) {
        const int sn = L - l < S ? L - l : S;
        if ((st = decode_samples(m, np, xin, ldx, n, r0, R, l, sn, grad, scale, NULL))) return st;
        for (int64_t q = 0; q < R * sn; q++) m->w_rec[q % R] += m->w_lp[q];
        if (!grad) continue;
        if (rp->score) score_backward(m, R, scale, rp->baseline);
        else if ((st = reparam_backward(m, R, NULL, 0.0f))) return st;
    }
    double s = 0.0;
    for (int64_t r = 0; r < R; r++) {
        m->rec_sum += m->w_rec[r] / L;
        double e = m->w_rec[r] / L - m->w_kl[r];
        if (out) out[r0 + r] = e;
        s -= m->w_rec[r] / L;
    }
    *obj += s + rp->beta * (kl_obj < 0.0 ? kl_sum : kl_obj);
    if (grad) vaec_net_backward(&m->enc, xin, ldx, R, NULL, 0);
    return VAEC_OK;
}

/* ELBO through the flow: no analytic KL; its Monte Carlo estimate
 * log q0(z_0|x) - log p(z_K) - log|det| per sample, weighted by beta. */
static vaec_status flow_elbo_chunk(vaec_vae *m, const float *xin, int64_t ldx, int64_t n, int64_t r0, int64_t R,
                                   const noise_plan *np, const run_plan *rp, double *out, double *obj) {
    const int L = np->L, grad = rp->grad;
    vaec_status st;
    encode_chunk(m, xin, ldx, R, rp, n, 0);
    const float scale = (float)(1.0 / ((double)n * L));
    double *klmc = m->w_lse;
    for (int64_t r = 0; r < R; r++) klmc[r] = 0.0;
    const int S = stack_samples(m, R, L, !grad);
    for (int l = 0; l < L; l += S) {
        const int sn = L - l < S ? L - l : S;
        if ((st = decode_samples(m, np, xin, ldx, n, r0, R, l, sn, grad, scale, NULL))) return st;
        for (int64_t q = 0; q < R * sn; q++) {
            m->w_rec[q % R] += m->w_lp[q];
            klmc[q % R] -= m->w_lpq[q];
        }
        if (grad && (st = reparam_backward(m, R, NULL, rp->beta * scale))) return st;
    }
    double s = 0.0;
    for (int64_t r = 0; r < R; r++) {
        m->rec_sum += m->w_rec[r] / L;
        double e = (m->w_rec[r] - klmc[r]) / L;
        if (out) out[r0 + r] = e;
        s -= (m->w_rec[r] - rp->beta * klmc[r]) / L;
    }
    *obj += s;
    if (grad) vaec_net_backward(&m->enc, xin, ldx, R, NULL, 0);
    return VAEC_OK;
}

/* IWAE: per-row log (1/k) sum_l w_l, log w = log p(x|z) + log p(z) - log q(z|x), by a
 * streaming log-sum-exp in float64 (k = L samples, never all held); with grad, a second
 * pass recomputes each sample and back-propagates it with its normalized weight (Burda et
 * al. 2016), so no per-sample activations are kept. */
static vaec_status iwae_chunk(vaec_vae *m, const float *xin, int64_t ldx, int64_t n, int64_t r0, int64_t R,
                              const noise_plan *np, const run_plan *rp, double *out, double *obj) {
    const int L = np->L, grad = rp->grad;
    vaec_status st;
    encode_chunk(m, xin, ldx, R, rp, n, 0);
    /* pass 1: log weights, streamed through a per-row log-sum-exp */
    double *mx = m->w_lse, *sm = m->w_lse + m->ws_rows;
    for (int64_t r = 0; r < R; r++) { mx[r] = -INFINITY; sm[r] = 0.0; }
    const int S = stack_samples(m, R, L, 1);
    for (int l = 0; l < L; l += S) {
        const int sn = L - l < S ? L - l : S;
        if ((st = decode_samples(m, np, xin, ldx, n, r0, R, l, sn, 0, 0.0f, NULL))) return st;
        for (int64_t q = 0; q < R * sn; q++) {
            const int64_t r = q % R;
            double lw = m->w_lp[q] + m->w_lpq[q];
            if (grad) m->w_lw[r * m->lw_cap + l + q / R] = lw;
            if (lw > mx[r]) { sm[r] = sm[r] * exp(mx[r] - lw) + 1.0; mx[r] = lw; }
            else sm[r] += exp(lw - mx[r]);
        }
    }
    double s = 0.0;
    for (int64_t r = 0; r < R; r++) {
        double bound = mx[r] + log(sm[r]) - log((double)L);
        if (out) out[r0 + r] = bound;
        s -= bound;
    }
    *obj += s;
    if (!grad) return VAEC_OK;
    /* pass 2: each sample again, weighted by w_l / sum w (per row) / n */
    for (int l = 0; l < L; l++) {
        for (int64_t r = 0; r < R; r++)
            m->w_rs[r] = (float)(exp(m->w_lw[r * m->lw_cap + l] - mx[r]) / sm[r] / (double)n);
        if ((st = decode_samples(m, np, xin, ldx, n, r0, R, l, 1, 1, 0.0f, m->w_rs))) return st;
        if ((st = reparam_backward(m, R, m->w_rs, 0.0f))) return st;
    }
    vaec_net_backward(&m->enc, xin, ldx, R, NULL, 0);
    return VAEC_OK;
}

/* ----------------------------------------------------------------- a call */
static vaec_status run_objective(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, const run_plan *rp,
                                 double *out, double *loss) {
    vaec_status st = vae_check_input(m, x);
    if (st) return st;
    noise_plan np = {0};
    if ((st = plan_noise(m, noise, x->n, &np))) return st;
    int64_t chunk = x->n < VAE_CHUNK ? x->n : VAE_CHUNK;
    if (rp->kind == RUN_IWAE || !rp->grad) {   /* room to stack samples (stack_samples) */
        int64_t stacked = chunk * np.L;
        chunk = stacked > VAE_CHUNK ? VAE_CHUNK : stacked;
    }
    if (chunk > 0 && (st = vae_ensure_workspace(m, chunk))) return st;
    if (rp->free_bits > 0.0f && np.n != x->n)
        return vaec_fail(VAEC_ERR_ARG, "free_bits: each chunk's mean KL decides the floor, which a share of a batch "
                         "(n_total) cannot see whole; train without free bits or in one process");
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
    vaec_net *nets[2];
    const int nn = vae_nets(m, nets);
    if (rp->grad) vaec_nets_grads_begin(&m->arena, nets, nn);
    double sum = 0.0;
    m->rec_sum = 0.0;
    for (int64_t r0 = 0; r0 < x->n && !st; r0 += VAE_CHUNK) {
        int64_t R = x->n - r0 < VAE_CHUNK ? x->n - r0 : VAE_CHUNK, ldx;
        const float *xin = vae_prepare_input(m, x, r0, R, np.seed, np.counter, np.row0, &ldx);
        if (rp->kind == RUN_IWAE) st = iwae_chunk(m, xin, ldx, np.n, r0, R, &np, rp, out, &sum);
        else if (m->has_flow) st = flow_elbo_chunk(m, xin, ldx, np.n, r0, R, &np, rp, out, &sum);
        else st = elbo_chunk(m, xin, ldx, np.n, r0, R, &np, rp, out, &sum);
    }
    if (rp->grad) vaec_nets_grads_end(nets, nn);
    vae_call_end(m, st, noise, np.counter);
    if (st) return st;
    if (loss) *loss = np.n > 0 ? sum / (double)np.n : 0.0;
    m->last_rec = np.n > 0 ? m->rec_sum / (double)np.n : 0.0;
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

/* -------------------------------------------------------------- the API */
vaec_status vaec_vae_loss_grad(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                               const vaec_objective *obj, double *loss) {
    if (x && x->n == 0 && !(noise && noise->n_total > 0))   /* an empty share of a batch is fine */
        return vaec_fail(VAEC_ERR_ARG, "x: empty batch; the loss needs at least one example");
    run_plan rp;
    vaec_status st = plan_objective(obj, 1, &rp);
    if (st || (st = run_objective(m, x, noise, &rp, NULL, loss))) return st;
    if (!isfinite(*loss))
        return vaec_fail(VAEC_ERR_NONFINITE, "the loss is %s (non-finite)", isnan(*loss) ? "NaN" : "Inf");
    return VAEC_OK;
}

vaec_status vaec_vae_elbo(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *out) {
    run_plan rp = {RUN_ELBO, 0, 1.0f, 0.0f, 0, 0.0f};
    return run_objective(m, x, noise, &rp, out, NULL);
}

vaec_status vaec_vae_iwae(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *out) {
    run_plan rp = {RUN_IWAE, 0, 1.0f, 0.0f, 0, 0.0f};
    return run_objective(m, x, noise, &rp, out, NULL);
}

vaec_status vaec_vae_train_step(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                                const vaec_objective *obj, float lr, double *loss) {
    if (!(lr >= 0.0f) || !isfinite(lr)) return vaec_fail(VAEC_ERR_ARG, "lr must be a finite number >= 0, got %g", lr);
    vaec_status st = vaec_vae_loss_grad(m, x, noise, obj, loss);
    if (st) return st;
    /* Without a flow every gradient is a layer's, checked for Inf and NaN as it was written
     * (the rest of the buffer is zeros): Adam need not read them all once more. */
    int bad = atomic_load(&m->enc.nonfinite) | atomic_load(&m->dec.nonfinite);
    return vaec_arena_adam_step_ex(&m->arena, m->pool, lr, m->has_flow ? -1 : bad);
}

vaec_status vae_elbo_grad(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *loss) {
    run_plan rp = {RUN_ELBO, 1, 1.0f, 0.0f, 0, 0.0f};
    return run_objective(m, x, noise, &rp, NULL, loss);
}
