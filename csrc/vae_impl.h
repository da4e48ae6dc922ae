/* vae_impl.h -- the layout of a vaec_vae, shared by vae.c and io.c (not public). */
#ifndef VAEC_VAE_IMPL_H
#define VAEC_VAE_IMPL_H
#include "internal.h"
#include "flows.h"
#include <stdio.h>

#define VAE_CHUNK 512                   /* rows processed at once (512: with the sparse first
                                           layer, 3 % faster at batch 1000 than 256) */
typedef vaec_linear vaec_layer;

struct vaec_vae {
    vaec_vae_config cfg;
    vaec_pool *pool;
    vaec_arena arena;     /* parameters, gradients, Adam state */
    vaec_layer enc[VAEC_MAX_HIDDEN], enc_heads, dec[VAEC_MAX_HIDDEN], dec_out;
    int has_flow;                   /* a normalizing flow on the posterior */
    vaec_flow flow;
    float *w_fws;                   /* the flow's workspace (vaec_flow_ws_floats) */
    float *w_zk, *d_zk;             /* z_K and the gradient w.r.t. it (rows x latent) */
    double *w_ld, *w_dld;           /* per-row log-determinants, and their loss weights */
    uint64_t rng_seed, rng_counter;
    /* workspace: activations and their gradients for ws_rows rows */
    int64_t ws_rows;
    float *ws;
    float *w_x, *w_enc[VAEC_MAX_HIDDEN], *w_heads, *w_eps, *w_z, *w_dec[VAEC_MAX_HIDDEN], *w_out;
    float *d_out, *d_dec[VAEC_MAX_HIDDEN], *d_z, *d_heads, *d_enc[VAEC_MAX_HIDDEN];
    float *w_kld, *w_rs;            /* per-dimension KL; per-row IWAE weights */
    double *w_rec, *w_kl, *w_lp, *w_lpq, *w_lse;
    double *w_lw;                   /* (rows, lw_cap) log weights for IWAE training */
    int64_t lw_cap;
    double rec_sum, last_rec;       /* sum / batch mean of (1/L) sum_l log p(x|z_l) of a call */
    uint32_t grad_fresh;            /* dense layers (bits: vae.c layer_bit) whose gradient this
                                       call has not written yet: their first backward writes it,
                                       later ones add, so no pass clears them beforehand */
    atomic_int grad_nonfinite;      /* a dense layer's gradient of this call holds Inf or NaN
                                       (checked as it is written, for Adam) */
    /* the first encoder layer on sparse inputs (sparse.c; not with n_hidden = 0) */
    vaec_spx spx;                   /* the sparse copy of the current chunk's input (enc[0]
                                       keeps W^T in the arena for it: vaec_arena_add_linear_wt) */
    const float *sp_for;            /* the input rows spx holds and the forward used (NULL: dense) */
    int64_t sp_rows;
};

#endif
