/* vae_impl.h -- the layout of a vaec_vae, shared by the files of the VAE (not public):
 *   vae.c             the model: its networks, workspace plan, input, encode/decode, files
 *   vae_objectives.c  the training objectives and bounds: ELBO (reparameterized or score
 *                     function), ELBO through a flow, IWAE
 *   vae_wake_sleep.c  wake-sleep (Hinton et al. 1995) */
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
};

/* vae.c */
vaec_status vae_ensure_workspace(vaec_vae *m, int64_t rows);
vaec_status vae_check_input(const vaec_vae *m, const vaec_input *x);
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
