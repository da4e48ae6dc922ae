/*
 * m2.h -- the semi-supervised M2 model of Kingma, Rezende, Mohamed & Welling (2014),
 * "Semi-supervised learning with deep generative models".
 *
 * These declarations belong in vaec.h (a section "M2" after the VAE); they live here
 * until the lead moves them. Everything below uses only vaec.h's types.
 *
 *   classifier  q(y|x)   = softmax(MLP(x))                    (log-softmax, stable form)
 *   encoder     q(z|x,y) = N(mu, diag exp(logvar)),  MLP([x, onehot(y)])
 *   decoder     p(x|y,z) : Bernoulli logits or Gaussian [mean | logvar], MLP([z, onehot(y)])
 *   priors      p(y) uniform over C classes, p(z) = N(0, I)
 *
 *   L(x,y) = log p(x|y,z) + log p(y) - KL(q(z|x,y) || p(z))      (one reparameterized z)
 *   U(x)   = sum_y q(y|x) L(x,y) + H(q(y|x))
 *
 * The concatenations [x, onehot(y)] and [z, onehot(y)] are never built: a first layer's
 * weight (out, in + C) splits into its x (or z) columns, used by the GEMM with the
 * weight's row stride, and its C label columns, of which each row adds the one its
 * label picks (and whose gradient is a scatter-add by label). For an unlabelled batch
 * every row is replicated once per class, C*R rows through encoder and decoder, but the
 * x part of the encoder's first layer is computed once per row and shared by its C
 * copies (its gradient is the copies' summed gradient, one GEMM).
 *
 * As with the VAE: one parameter arena (vaec_arena), tasks split by rows or output tiles
 * and sums in a fixed order so results are bitwise identical for any thread count,
 * counter-based noise indexed by (seed, stream, offset), files through vaec_file_*
 * with kind VAEC_KIND_M2.
 */
#ifndef VAEC_M2_H
#define VAEC_M2_H

#include "vaec.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VAEC_M2_MAX_CLASSES 1024

typedef struct {
    int64_t input_dim;
    int64_t latent_dim;
    int64_t n_classes;                     /* C >= 2 */
    int n_hidden;
    int64_t hidden[VAEC_MAX_HIDDEN];       /* encoder widths; the decoder mirrors them */
    int n_cls_hidden;
    int64_t cls_hidden[VAEC_MAX_HIDDEN];   /* classifier widths */
    vaec_act activation;
    vaec_likelihood likelihood;
    double alpha;                          /* the client's classification weight factor (kept in files) */
    uint64_t seed;                         /* initialization and default noise */
    int threads;                           /* <= 0: vaec_cpu_count() */
} vaec_m2_config;

typedef struct vaec_m2 vaec_m2;

vaec_status vaec_m2_create(vaec_m2 **out, const vaec_m2_config *cfg);
void vaec_m2_destroy(vaec_m2 *m);
const vaec_m2_config *vaec_m2_config_get(const vaec_m2 *m);
int vaec_m2_threads(const vaec_m2 *m);
vaec_arena *vaec_m2_arena(vaec_m2 *m);
vaec_status vaec_m2_adam_step(vaec_m2 *m, float lr);
uint64_t vaec_m2_rng_seed(const vaec_m2 *m);
uint64_t vaec_m2_rng_counter(const vaec_m2 *m);
void vaec_m2_rng_set(vaec_m2 *m, uint64_t seed, uint64_t counter);

/* One training batch: a labelled part (xl, yl) and an unlabelled part xu (either may be
 * empty: NULL or n = 0). The loss is
 *     wl * sum_l [ -L(x,y) - alpha * log q(y|x) ]  +  wu * sum_u [ -U(x) ]
 * (wl = wu = 1/(n_l + n_u) and alpha = 0.1 N give the paper's J^alpha / N on the batch).
 * Noise: eps_l (n_l, Z) and eps_u (n_u, C, Z) when given (both needed for a part that is
 * present), else the RNG under `seed` (use_seed) or the model's key and call counter.
 * A share of a batch (data-parallel training): with n_total > 0 (the rows of both parts
 * of the whole batch) the call's parts are rows [row_offset_l, row_offset_l + n_l) and
 * [row_offset_u, row_offset_u + n_u) of the whole batch's parts, whose noise and
 * binarization they draw (streams.h); wl and wu are the whole batch's weights, so the
 * shares' losses and gradients add up to its. An empty share (both parts empty) is then
 * allowed: zero loss and gradients, and the call counter still advances. RNG noise only.
 * These fields come last (a zeroed struct: the call is the whole batch). */
typedef struct {
    const vaec_input *xl;
    const int32_t *yl;
    const vaec_input *xu;
    double alpha, wl, wu;
    const float *eps_l, *eps_u;
    int use_seed;
    uint64_t seed;
    int64_t row_offset_l, row_offset_u;   /* the parts' first rows in the whole batch's parts */
    int64_t n_total;                      /* rows of the whole batch (both parts); 0: this call */
} vaec_m2_batch;

/* The loss; its gradients are written (not added) to the arena's grads. parts (may be
 * NULL) gets the sums sum_l -L(x,y), sum_l -log q(y|x), sum_u -U(x). */
vaec_status vaec_m2_loss_grad(vaec_m2 *m, const vaec_m2_batch *b, double *loss, double parts[3]);
/* loss_grad, then one Adam step with learning rate lr. */
vaec_status vaec_m2_train_step(vaec_m2 *m, const vaec_m2_batch *b, float lr, double *loss, double parts[3]);
/* log q(y|x), out (n, C) float32. */
vaec_status vaec_m2_classify(vaec_m2 *m, const vaec_input *x, float *logq);
/* Per example: L(x,y) when y != NULL, else U(x); out (n,) float64. eps: (n, Z) with
 * labels, (n, C, Z) without, or NULL to draw (use_seed / the model's stream). */
vaec_status vaec_m2_elbo(vaec_m2 *m, const vaec_input *x, const int32_t *y, const float *eps, int use_seed,
                         uint64_t seed, double *out);
/* mu, logvar (n, Z) of q(z|x,y). */
vaec_status vaec_m2_encode(vaec_m2 *m, const vaec_input *x, const int32_t *y, float *mu, float *logvar);
/* The decoder's mean for labels y (n,) and codes z (n, Z): out (n, input_dim). */
vaec_status vaec_m2_decode(vaec_m2 *m, const int32_t *y, const float *z, int64_t n, float *out);

/* Files: vaec_file_* with kind VAEC_KIND_M2 and its config record (m2.c: version 1 of 0.1.0, version 2 with the layer lists). */
/* As the VAE's: an optional extra record (e.g. a trainer's state) is stored after the
 * arena; load gives a malloc'ed copy of it when extra != NULL (free with free()). */
vaec_status vaec_m2_save(const vaec_m2 *m, const char *path, const void *extra, uint32_t extra_len);
vaec_status vaec_m2_load(vaec_m2 **out, const char *path, int threads, void **extra, uint32_t *extra_len);

#ifdef __cplusplus
}
#endif
#endif /* VAEC_M2_H */
