/* vae_impl.h -- the layout of a vaec_vae, shared by the files of the VAE (not public):
 *   vae.c             the model: its networks, workspace plan, input, encode/decode, files
 *   vae_objectives.c  the training objectives and bounds: ELBO (reparameterized or score
 *                     function), ELBO through a flow, IWAE
 *   vae_wake_sleep.c  wake-sleep (Hinton et al. 1995)
 *   vae_hmc.c         HMC on the decoder's posterior, Monte Carlo EM and the marginal-
 *                     likelihood estimator of Kingma & Welling's appendix D */
#ifndef VAEC_VAE_IMPL_H
#define VAEC_VAE_IMPL_H
#include "internal.h"
#include "flows.h"
#include "net.h"
#include "streams.h"
#include <stdio.h>

#define VAE_CHUNK 512                   /* rows processed at once (512: with the sparse first
                                           layer, 3 % faster at batch 1000 than 256) */
#define ROW_GRAIN VAEC_ROW_GRAIN

struct vaec_vae {
    vaec_vae_config cfg;
    vaec_pool *pool;
    vaec_arena arena;     /* parameters, gradients, Adam state; tensors in this order: the
                             encoder's layers and its heads, the flow's, the decoder's */
    vaec_net enc;         /* x -> [mu | logvar] (an autoencoder: -> code) */
    vaec_net dec;         /* z -> logits, or [mean | logvar] */
    vaec_layer enc_layers[VAEC_MAX_LAYERS + 1], dec_layers[VAEC_MAX_LAYERS + 2];   /* + heads; + ToNCHW */
    int has_flow;                   /* a normalizing flow on the posterior */
    int64_t amor_cols;              /* an amortized flow's parameters per row: encoder columns [2Z, 2Z + amor_cols) */
    vaec_flow flow;
    uint64_t rng_seed, rng_counter;
    /* the workspace (vae_plan): ws_rows rows of each buffer */
    int64_t ws_rows;
    float *ws;
    float *w_x;                     /* the chunk's input as floats (uint8 scaled, binarized) */
    float *w_heads, *d_heads;       /* the encoder's output [mu | logvar] and its gradient (stride ld_heads) */
    float *w_out, *d_out;           /* the decoder's output and its gradient (stride ld_out) */
    int64_t ld_heads, ld_out;
    float *w_eps, *w_z, *d_z;       /* noise, z = mu + sigma eps, dL/dz */
    float *w_zk, *d_zk;             /* with a flow: z_K and dL/dz_K */
    float *w_kld, *w_rs;            /* per-dimension KL; per-row IWAE weights */
    double *w_rec, *w_kl, *w_lp, *w_lpq, *w_lse;
    double *w_ld, *w_dld;           /* per-row log-determinants, and their loss weights */
    float *w_fws;                   /* the flow's workspace */
    double *w_lw;                   /* (rows, lw_cap) log weights for IWAE training */
    int64_t lw_cap;
    double rec_sum, last_rec;       /* sum / batch mean of (1/L) sum_l log p(x|z_l) of a call */
    /* HMC's own workspace (vae_hmc.c lays it out; hmc_mem owns it): hmc_rows chains */
    struct {
        float *z0, *g0, *g, *p;     /* rows x lz: the chain's state and its grad U; the
                                       proposal's grad U and momentum (its position: w_z) */
        float *eps, *h;             /* rows: step sizes; this transition's (eps jittered) */
        double *U0, *U, *K0, *acc;  /* rows: U of the state and of the proposal, |p|^2/2 at
                                       the start, the summed acceptance probabilities */
        double *mean, *fit, *ldet;  /* the estimator's fit per row: mean (Z), the co-moment,
                                       then Sigma, and its Cholesky factor (2 Z x Z), log det */
        double *ytmp;               /* rows x Z: a triangular solve's result */
        double *mx, *sm;            /* rows: the estimator's streamed log-sum-exp */
        float *dec_grads;           /* the decoder's gradients, kept over an inference call */
    } hmc;
    void *hmc_mem;
    int64_t hmc_rows, hmc_stat_rows;  /* chains laid out; of them with room for the fit */
};

/* vae.c */
vaec_status vae_ensure_workspace(vaec_vae *m, int64_t rows);

/* An amortized flow's parameters for the next pass: flow row q takes those of the
 * encoder's row q % period (its output h, row stride ldh, columns from 2Z on), and its
 * backward adds their gradients into d_heads at the same place. Nothing otherwise. */
static inline void vae_flow_rows(vaec_vae *m, const float *h, int64_t ldh, int64_t period) {
    if (!m->amor_cols) return;
    const int64_t Z = m->cfg.latent_dim;
    m->flow.cond = h + 2 * Z;
    m->flow.dcond = m->d_heads + 2 * Z;
    m->flow.ldc = ldh;
    m->flow.period = period;
}
vaec_status vae_check_input(const vaec_vae *m, const vaec_input *x);
/* The end of a call that took `counter` from the model's stream (m->rng_counter++, unless
 * the noise gave its own seed): an interrupted call gives it back, so the model is as it
 * was before the call. */
static inline void vae_call_end(vaec_vae *m, vaec_status st, const vaec_noise *noise, uint64_t counter) {
    if (st == VAEC_ERR_INTERRUPTED && !(noise && noise->use_seed)) m->rng_counter = counter;
}
/* x rows [r0, r0+R) as float rows with stride *ld: in place when possible, else scaled
 * (uint8) and binarized (under `seed`, stream 4 counter + 1, pixel (row0 + row) * D + d:
 * row0 is the call's first row in the whole batch, 0 unless the call is a share) into w_x. */
const float *vae_prepare_input(vaec_vae *m, const vaec_input *x, int64_t r0, int64_t R, uint64_t seed,
                               uint64_t counter, int64_t row0, int64_t *ld);
/* vae_objectives.c: the plain ELBO's batch-mean loss and its gradients (wake-sleep's wake
 * phase), without the loss's finiteness check. */
vaec_status vae_elbo_grad(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *loss);
/* The networks of the model (for the gradient protocol). */
static inline int vae_nets(vaec_vae *m, vaec_net **nets) {
    nets[0] = &m->enc;
    nets[1] = &m->dec;
    return 2;
}

#endif
