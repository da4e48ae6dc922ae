/* vae_wake_sleep.c -- wake-sleep (Hinton et al. 1995) on the VAE's networks, the baseline
 * of Kingma & Welling's Fig. 2:
 *   wake   the decoder follows grad_theta log p(x|z), z ~ q(z|x), on the data: the ELBO's
 *          decoder gradients (vae_objectives.c);
 *   sleep  the encoder follows grad_phi log q(z|x) on dreams z ~ N(0, I), x ~ p(x|z) drawn
 *          from the model: its gradients replace the ELBO's encoder gradients.
 * Dreams are numbered within the call (streams.h), so any split of the work gives the
 * same dreams. */
#include "vae_impl.h"
#include <math.h>
#include <string.h>

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* Row r of the chunk: z ~ N(0, I) (already in w_z) decoded into the decoder's output,
 * then x ~ p(x|z) into w_x: Bernoulli pixels u < sigmoid(logit), or Gaussian mean +
 * exp(logvar/2) * e. */
typedef struct { vaec_vae *m; int64_t r0, R; uint64_t seed, stream; } dream_job;
static void dream_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    dream_job *j = ctx;
    vaec_vae *m = j->m;
    const int64_t D = m->cfg.input_dim, lx = align16(D), lo = m->ld_out;
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
    float buf[256];
    for (int64_t r = a; r < b; r++) {
        const float *o = m->w_out + r * lo;
        float *xr = m->w_x + r * lx;
        for (int64_t d0 = 0; d0 < D; d0 += 256) {
            int64_t cnt = D - d0 < 256 ? D - d0 : 256;
            uint64_t off = VAE_DREAM_X_OFFSET + (uint64_t)((j->r0 + r) * D + d0);
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
    const int64_t Z = m->cfg.latent_dim, ld = m->ld_heads, lz = align16(Z);
    const double log2pi = 1.8378770664093453;
    int64_t a, b;
    vaec_task_rows(t, j->R, &a, &b);
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
    if (noise && (noise->n_total || noise->row_offset))
        return vaec_fail(VAEC_ERR_ARG, "wake-sleep: a share of a batch (row_offset, n_total) is not supported: its "
                         "dreams are numbered within the call");
    if (x && x->n == 0) return vaec_fail(VAEC_ERR_ARG, "x: empty batch; the loss needs at least one example");
    /* wake: the ELBO's gradients, of which the decoder's are grad_theta -log p(x|z), z ~ q(z|x) */
    double wl = 0.0;
    vaec_status st = vae_elbo_grad(m, x, noise, &wl);
    if (st) return st;
    if (!isfinite(wl)) return vaec_fail(VAEC_ERR_NONFINITE, "the wake loss is %s (non-finite)", isnan(wl) ? "NaN" : "Inf");
    /* sleep: the encoder's gradients replaced by those of -log q(z|x) on dreams; the
     * encoder's tensors come first in the arena, the decoder's after them */
    uint64_t seed, counter;
    if (noise && noise->use_seed) { seed = noise->seed; counter = 0; }
    else { seed = m->rng_seed; counter = m->rng_counter++; }
    const int64_t Z = m->cfg.latent_dim, lz = align16(Z), lx = align16(m->cfg.input_dim);
    int64_t dec_lo, dec_hi;
    vaec_net_param_range(&m->dec, &dec_lo, &dec_hi);
    memset(m->arena.grads, 0, (size_t)dec_lo * sizeof(float));
    if ((st = vae_ensure_workspace(m, dreams < VAE_CHUNK ? dreams : VAE_CHUNK))) return st;
    const uint64_t stream = vaec_stream_vae(counter, VAE_STREAM_DREAM);
    double sl = 0.0;
    for (int64_t r0 = 0; r0 < dreams; r0 += VAE_CHUNK) {
        int64_t R = dreams - r0 < VAE_CHUNK ? dreams - r0 : VAE_CHUNK, ldo, ldh;
        for (int64_t r = 0; r < R; r++) vaec_rng_normal(m->w_z + r * lz, Z, seed, stream, (uint64_t)((r0 + r) * Z));
        vaec_net_forward(&m->dec, m->w_z, lz, R, &ldo);
        dream_job dj = {m, r0, R, seed, stream};
        vaec_pool_run(m->pool, dream_task, &dj, vaec_ntasks(R, ROW_GRAIN));
        vaec_net_forward(&m->enc, m->w_x, lx, R, &ldh);
        sleep_job sj = {m, R, (float)(1.0 / (double)dreams)};
        vaec_pool_run(m->pool, sleep_task, &sj, vaec_ntasks(R, ROW_GRAIN));
        for (int64_t r = 0; r < R; r++) sl += m->w_rec[r];
        vaec_net_backward(&m->enc, m->w_x, lx, R, NULL, 0);
    }
    sl /= (double)dreams;
    if (!isfinite(sl)) return vaec_fail(VAEC_ERR_NONFINITE, "the sleep loss is %s (non-finite)", isnan(sl) ? "NaN" : "Inf");
    if (wake_loss) *wake_loss = wl;
    if (sleep_loss) *sleep_loss = sl;
    return VAEC_OK;
}
