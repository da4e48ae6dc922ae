/* flows.h -- normalizing flows: planar, radial and Real NVP affine coupling.
 *
 * Internal API of the C core (not part of vaec.h): a model plans a stack of K flow
 * layers of ONE type into ITS parameter arena, sizes a workspace for R rows once, and
 * runs forward / backward (and, for Real NVP, inverse / inverse-backward) on R rows
 * with row strides. The stand-alone flow model (a flow on a standard-normal base,
 * csrc/flow_model.c) and the built-in 2-D potentials of Rezende & Mohamed (2015) are
 * declared at the end.
 *
 *   planar   f(z) = z + û tanh(wᵀz + b)                      (Rezende & Mohamed 2015)
 *            û = u + (m(wᵀu) − wᵀu) w/‖w‖²,  m(x) = −1 + softplus(x)   (their App. A)
 *            so wᵀû = m(wᵀu) > −1 and f is invertible for any u, w, b;
 *            log|det| = log(1 + (1 − h²) wᵀû) = log(h² + (1 − h²) softplus(wᵀu)),
 *            h = tanh(wᵀz + b).
 *            tensors: "{prefix}.{k}.u" (D), ".w" (D), ".b" (1)
 *   radial   f(z) = z + β/(α + r) (z − z0),  r = ‖z − z0‖
 *            α = softplus(α'), β = −α + softplus(β')  (α > 0, β > −α: invertible);
 *            log|det| = (D−1) log(1 + β/(α+r)) + log(1 + βα/(α+r)²)
 *            tensors: "{prefix}.{k}.z0" (D), ".alpha" (1, holds α'), ".beta" (1, holds β')
 *   realnvp  affine coupling (Dinh et al. 2017). The D dimensions are split in two
 *            contiguous halves A = [0, ⌊D/2⌋) and B = [⌊D/2⌋, D); even layers transform
 *            B given A, odd layers A given B, so two consecutive layers touch every
 *            dimension. With c the conditioning half and x the transformed one:
 *              hid = act(W0 c + b0)  (s and t nets' first layers, width H each)
 *              s = scale ⊙ tanh(W_s2 hid_s + b_s2),   t = W_t2 hid_t + b_t2
 *              y_x = x ⊙ exp(s) + t,  y_c = c,  log|det| = Σ s
 *            inverse: x = (y_x − t(y_c)) ⊙ exp(−s(y_c)), log|det ∂x/∂y| = −Σ s.
 *            tensors (torch.nn.Sequential(Linear, act, Linear) naming):
 *              "{prefix}.{k}.s.0.weight" (H, dc), ".s.0.bias" (H),
 *              "{prefix}.{k}.t.0.weight" (H, dc), ".t.0.bias" (H),
 *              "{prefix}.{k}.s.2.weight" (dt, H), ".s.2.bias" (dt),
 *              "{prefix}.{k}.t.2.weight" (dt, H), ".t.2.bias" (dt),
 *              "{prefix}.{k}.scale" (dt)   -- only when the scale is learned;
 *            dc/dt = sizes of the conditioning/transformed halves of layer k. The s and
 *            t first layers are stacked in the arena (one GEMM of 2H rows). The scale is
 *            initialized to 0 (each layer starts volume preserving; the official Real
 *            NVP code does the same), everything else like torch.nn.Linear.
 *
 * Specs (text): "planar:K", "radial:K", "realnvp:K[:WIDTH[:tanh|relu[:learned|SCALE]]]",
 * 1 <= K <= VAEC_FLOW_MAX_K, e.g. "planar:8", "realnvp:4:64", "realnvp:6:32:relu:2".
 * "planar:K:amortized": Rezende & Mohamed's own posterior, whose u, w, b are not
 * parameters of the flow but outputs of the encoder, one set per example (a VAE's third
 * encoder head, "encoder.flow"; see vaec_flow's cond). Such a flow has no tensors.
 *
 * Shapes: rows are examples; a row of z is `dim` floats; ld* arguments are row strides
 * in floats (>= dim). Per-row log-determinants are float64.
 * Determinism: work is split into tasks of a fixed number of rows, and parameter
 * gradients are summed per task and then over tasks in task order, so the results
 * are bitwise identical whatever the number of threads.
 * Errors: vaec_fail(...) messages; VAEC_ERR_NONFINITE names the layer, e.g.
 * "flow.3 (planar) produced a non-finite value".
 *
 * Using a flow in a model's posterior (the VAE: z0 ~ q0(z|x) = N(mu, σ²), zK = f(z0)):
 *   create     plan the encoder/decoder, then vaec_flow_plan(&m->flow, &m->arena, &spec,
 *              latent_dim, "flow"), then vaec_arena_alloc (nothing else to initialize).
 *              A planar/radial layer takes 3 arena tensors, a Real NVP layer 9
 *              (VAEC_MAX_TENSORS bounds K: plan fails with a message saying so).
 *   workspace  vaec_flow_ws_floats(&m->flow, CHUNK) floats, once, next to the model's own
 *              workspace, plus a zK buffer (rows x latent) and a float64 logdet per row.
 *   forward    z0 = mu + σ ε as without a flow;
 *              vaec_flow_forward(&m->flow, pool, &m->arena, z0, ldz, zK, ldz, logdet, R, fws, CHUNK);
 *              the decoder runs on zK; per row (no analytic KL any more):
 *                ELBO = log p(x|zK) + log N(zK; 0, I) − log q0(z0|x) + logdet,
 *                log q0(z0|x) = −½ Σ_j (log 2π + logvar_j + ε_j²).
 *   backward   with L = −(1/(nL)) Σ ELBO and s = 1/(nL):
 *                dL/dzK = (the decoder's dz) + s·zK            (−log N(zK; 0, I))
 *                vaec_flow_backward(&m->flow, pool, &m->arena, dzK, ldz, NULL, −s, dz0, ldz, R, fws, CHUNK);
 *                then the reparameterization backward with dz0 (dmu += dz0,
 *                dlogvar += dz0 ε σ/2) and the entropy term dlogvar += −s/2 (from
 *                −log q0 with ε fixed; it adds nothing to dmu).
 *              One forward, then its backward, per sample l (the workspace holds one pass).
 */
#ifndef VAEC_FLOWS_H
#define VAEC_FLOWS_H

#include "internal.h"
#include "net.h"

#define VAEC_FLOW_MAX_K 128        /* layers in one stack */
#define VAEC_FLOW_MAX_WIDTH 65536  /* Real NVP hidden width */
#define VAEC_FLOW_PREFIX_LEN 24

typedef enum { VAEC_FLOW_PLANAR = 1, VAEC_FLOW_RADIAL = 2, VAEC_FLOW_REALNVP = 3 } vaec_flow_kind;

/* A parsed flow spec. */
typedef struct {
    vaec_flow_kind kind;
    int K;                 /* layers, 1..VAEC_FLOW_MAX_K */
    int64_t hidden;        /* realnvp: width H of each of the s and t nets (default 64) */
    vaec_act act;          /* realnvp: VAEC_ACT_TANH (default) or VAEC_ACT_RELU */
    float fixed_scale;     /* realnvp: 0 = learned per-dimension scale (default); > 0 fixed */
    int amortized;         /* planar: 1 = the parameters are per row, from the encoder ("planar:K:amortized") */
} vaec_flow_spec;

/* "planar", "radial", "realnvp" ("?" otherwise). */
const char *vaec_flow_kind_name(vaec_flow_kind kind);
/* Parse a spec; on error VAEC_ERR_ARG with a message that lists the accepted forms. */
vaec_status vaec_flow_spec_parse(vaec_flow_spec *out, const char *text);
/* Check a spec struct (ranges), same messages as the parser. */
vaec_status vaec_flow_spec_check(const vaec_flow_spec *s);
/* The canonical text of a spec ("realnvp:4:64:tanh:learned"); returns buf. */
char *vaec_flow_spec_format(const vaec_flow_spec *s, char *buf, size_t n);

/* One layer's place in the arena (offsets in floats from the arena start). */
typedef struct {
    int64_t u, w, b;                 /* planar */
    int64_t z0, alpha, beta;         /* radial (alpha, beta hold the raw α', β') */
    /* realnvp: the s and t networks (net.h): `first` is their first layers stacked into one
     * product, act([s.0; t.0] c + b): (R, 2H); then s.2 on its first H columns, t.2 on the
     * others */
    vaec_net first, s_net, t_net;
    vaec_layer nets_layers[3];
    int64_t scale;                   /* realnvp: learned scale (dt), or -1 when fixed */
    int64_t c0, dc, x0, dt;          /* realnvp: conditioning cols [c0, c0+dc), transformed [x0, x0+dt) */
} vaec_flow_layer;

/* A planned stack of K layers of one type. Plain data that a model embeds and does not
 * copy (the networks of a Real NVP layer point into it). */
typedef struct {
    vaec_flow_spec spec;
    const struct vaec_flow_ops *ops;  /* the type's operations (flow_impl.h) */
    int64_t dim;
    char prefix[VAEC_FLOW_PREFIX_LEN];
    vaec_flow_layer layer[VAEC_FLOW_MAX_K];
    /* amortized: row r's parameters are the K blocks [u (dim) | w (dim) | b] of
     * cond + (r % period) * ldc (the encoder's output); the backward ADDS their gradients
     * at dcond (same layout) and needs period >= R. The caller sets these before a pass. */
    const float *cond;
    float *dcond;
    int64_t ldc, period;
} vaec_flow;

/* Columns of the per-row parameters an amortized flow takes (K (2 dim + 1)); 0 otherwise. */
int64_t vaec_flow_cond_width(const vaec_flow_spec *s, int64_t dim);

/* Plan the K layers' tensors into arena `a` (before vaec_arena_alloc), named
 * "{prefix}.{k}.{name}". Fails (VAEC_ERR_ARG, message lists what is accepted) when the
 * spec is invalid, the dimension cannot take the flow (Real NVP needs dim >= 2), or the
 * arena has too few tensor slots left. vaec_arena_alloc then initializes everything;
 * no further initialization call is needed. */
vaec_status vaec_flow_plan(vaec_flow *f, vaec_arena *a, const vaec_flow_spec *spec, int64_t dim,
                           const char *prefix);
/* Number of parameters (floats) of the stack, padding excluded. */
int64_t vaec_flow_num_params(const vaec_flow *f);
/* 1 when vaec_flow_inverse is available (Real NVP). */
int vaec_flow_has_inverse(const vaec_flow *f);

/* Workspace for up to `rows` rows, in floats (any float buffer of that size; it is
 * aligned inside). It holds every layer's input (K+1 states of rows x dim), the
 * Real NVP hidden activations and scales, per-task partial sums of the parameter
 * gradients, and gradient scratch. One workspace serves one pass at a time. */
int64_t vaec_flow_ws_floats(vaec_flow *f, int64_t rows);

/* Forward: zK = f_K ∘ … ∘ f_1(z0) for R rows (R <= ws_rows).
 *   z0 (R, dim) stride ldz0, read; zK (R, dim) stride ldzK, WRITTEN (zK may equal z0
 *   with the same stride); logdet (R,) float64, WRITTEN: Σ_k log|det ∂f_k/∂z_{k-1}|
 *   (may be NULL).
 * The workspace then holds what vaec_flow_backward needs for these R rows: keep it
 * untouched (no other flow call on it) until the backward. Parameters are read from
 * a->params. VAEC_ERR_NONFINITE names the first layer that produced a NaN/Inf. */
vaec_status vaec_flow_forward(vaec_flow *f, vaec_pool *pool, vaec_arena *a,
                              const float *z0, int64_t ldz0, float *zK, int64_t ldzK, double *logdet,
                              int64_t R, float *ws, int64_t ws_rows);

/* Backward of the last vaec_flow_forward on this workspace (same f, a->params, R).
 * For a loss L with dL/dzK = dzK (R, dim; stride lddzK) and dL/dlogdet_r = dlogdet[r]
 * (R,) or, when dlogdet is NULL, the same weight dlogdet_all for every row:
 *   ADDS dL/dθ into a->grads for every parameter of the stack;
 *   WRITES dz0 = dL/dz0 (R, dim; stride lddz0) when dz0 != NULL (dz0 may equal dzK).
 * E.g. a VAE whose loss is −(1/(nL)) Σ [log p(x|zK) + log p(zK) − log q0(z0) + logdet]
 * passes dzK = dL/dzK from the decoder and prior, and dlogdet_all = −1/(nL).
 * VAEC_ERR_NONFINITE names the layer whose gradient became NaN/Inf (grads may then
 * hold partial sums). */
vaec_status vaec_flow_backward(vaec_flow *f, vaec_pool *pool, vaec_arena *a,
                               const float *dzK, int64_t lddzK, const double *dlogdet, double dlogdet_all,
                               float *dz0, int64_t lddz0, int64_t R, float *ws, int64_t ws_rows);

/* Inverse (Real NVP only; VAEC_ERR_ARG for planar/radial): z0 = f⁻¹(x) for R rows.
 *   x (R, dim) stride ldx, read; z0 WRITTEN (may equal x); logdet_inv (R,) WRITTEN:
 *   log|det ∂z0/∂x| = −Σ_k Σ s_k (may be NULL). So log p(x) = log N(z0; 0, I) + logdet_inv.
 * The workspace then holds what vaec_flow_inverse_backward needs. */
vaec_status vaec_flow_inverse(vaec_flow *f, vaec_pool *pool, vaec_arena *a,
                              const float *x, int64_t ldx, float *z0, int64_t ldz0, double *logdet_inv,
                              int64_t R, float *ws, int64_t ws_rows);

/* Backward of the last vaec_flow_inverse: dL/dz0 = dz0 and dL/dlogdet_inv (per row or
 * one weight for all) -> ADDS parameter gradients, WRITES dx = dL/dx when dx != NULL. */
vaec_status vaec_flow_inverse_backward(vaec_flow *f, vaec_pool *pool, vaec_arena *a,
                                       const float *dz0, int64_t lddz0, const double *dlogdet_inv,
                                       double dlogdet_inv_all, float *dx, int64_t lddx, int64_t R,
                                       float *ws, int64_t ws_rows);

/* ------------------------------------------------------------- potentials */
/* The unnormalized 2-D densities exp(−U(z)) of Rezende & Mohamed (2015), Table 1:
 *   w1 = sin(2π z1 / 4), w2 = 3 exp(−½((z1 − 1)/0.6)²), w3 = 3 σ((z1 − 1)/0.3)
 *   U1 = ½((‖z‖ − 2)/0.4)² − ln(exp(−½((z1 − 2)/0.6)²) + exp(−½((z1 + 2)/0.6)²))
 *   U2 = ½((z2 − w1)/0.4)²
 *   U3 = −ln(exp(−½((z2 − w1)/0.35)²) + exp(−½((z2 − w1 + w2)/0.35)²))
 *   U4 = −ln(exp(−½((z2 − w1)/0.4)²) + exp(−½((z2 − w1 + w3)/0.35)²))  */
typedef enum { VAEC_POTENTIAL_U1 = 1, VAEC_POTENTIAL_U2, VAEC_POTENTIAL_U3, VAEC_POTENTIAL_U4 } vaec_potential;
/* z (n, 2) float64 -> U (n,) and, when dU != NULL, ∇U (n, 2), float64.
 * exp(−U2..U4) are not normalizable (each slice z1 = c has the same mass): with box > 0
 * a wall Σ_i ½((|z_i| − box)₊/0.25)² is added outside [−box, box]² (nothing inside),
 * which makes the target proper; box = 0 gives Table 1 exactly. */
vaec_status vaec_potential_eval(vaec_potential p, double box, const double *z, int64_t n, double *U, double *dU);

/* --------------------------------------------------- the stand-alone flow model */
/* A flow on a standard-normal base of dimension dim: x = f(z0), z0 ~ N(0, I). */
typedef struct {
    int64_t dim;
    vaec_flow_spec flow;
    uint64_t seed;          /* initialization and default noise */
    int threads;            /* <= 0: vaec_cpu_count() */
} vaec_flowmodel_config;

typedef struct vaec_flowmodel vaec_flowmodel;

vaec_status vaec_flowmodel_create(vaec_flowmodel **out, const vaec_flowmodel_config *cfg);
void vaec_flowmodel_destroy(vaec_flowmodel *m);
const vaec_flowmodel_config *vaec_flowmodel_config_get(const vaec_flowmodel *m);
const vaec_flow *vaec_flowmodel_flow(const vaec_flowmodel *m);
vaec_arena *vaec_flowmodel_arena(vaec_flowmodel *m);
int vaec_flowmodel_threads(const vaec_flowmodel *m);
vaec_status vaec_flowmodel_adam_step(vaec_flowmodel *m, float lr);
uint64_t vaec_flowmodel_rng_seed(const vaec_flowmodel *m);
uint64_t vaec_flowmodel_rng_counter(const vaec_flowmodel *m);
void vaec_flowmodel_rng_set(vaec_flowmodel *m, uint64_t seed, uint64_t counter);

/* z (n, dim) -> x = f(z) (n, dim) and logdet (n,) float64 (either output may be NULL). */
vaec_status vaec_flowmodel_transform(vaec_flowmodel *m, const float *z, int64_t n, float *x, double *logdet);
/* Real NVP: x -> z0 = f⁻¹(x), logdet_inv = log|det ∂z0/∂x| (outputs may be NULL). */
vaec_status vaec_flowmodel_inverse(vaec_flowmodel *m, const float *x, int64_t n, float *z0, double *logdet_inv);
/* Real NVP: log p(x) (n,) float64. */
vaec_status vaec_flowmodel_log_prob(vaec_flowmodel *m, const float *x, int64_t n, double *out);
/* n draws x = f(z0), z0 ~ N(0, I) from the noise source (eps (n, dim) given, or the
 * counter-based RNG: noise->use_seed, else the model's key and call counter); log_prob
 * (n,) = log N(z0) − logdet when not NULL. Any flow type (only the forward is needed). */
vaec_status vaec_flowmodel_sample(vaec_flowmodel *m, int64_t n, const vaec_noise *noise, float *x,
                                  double *log_prob);
/* The flow's vector-Jacobian product (for checks and for callers that need it):
 * forward (inverse = 0) or inverse (1) pass on `in` (n, dim), then the backward with
 * dL/d(output) = g_out (n, dim) and dL/dlogdet = c (n,): WRITES g_in = dL/d(in) (n, dim)
 * and the parameter gradients (zeroed first). */
vaec_status vaec_flowmodel_vjp(vaec_flowmodel *m, int inverse, const float *in, int64_t n, const float *g_out,
                               const double *c, float *g_in);
/* Maximum likelihood (Real NVP): mean over the batch of −log p(x); its gradients are
 * WRITTEN (zeroed first) into the arena's grads; with lr >= 0, one Adam step follows. */
vaec_status vaec_flowmodel_nll_step(vaec_flowmodel *m, const float *x, int64_t n, float lr, double *loss);
/* The same for a share of a batch (data-parallel training): x's n rows are some of a batch
 * of n_total rows (n_total 0: x is the whole batch); the loss and the gradients are sums
 * over x divided by n_total, so the shares' add up to the whole batch's. n may be 0 then
 * (zero loss and gradients). */
vaec_status vaec_flowmodel_nll_step_ex(vaec_flowmodel *m, const float *x, int64_t n, int64_t n_total, float lr,
                                       double *loss);

/* Energy fit, KL(q‖p) to p ∝ exp(−U):  loss = mean_r [log N(z0_r) − logdet_r + β U(zK_r)].
 * Two calls around the evaluation of U (e.g. a Python callable):
 *   energy_forward draws n rows z0 ~ N(0, I) (noise as in sample), runs the flow keeping
 *   the workspace, and writes zK (n, dim) and logq (n,) = log q_K(zK) = log N(z0) − logdet;
 *   energy_backward takes U (n,) and ∇U (n, dim) at zK (n must be the forward's), writes the loss, WRITES the
 *   gradients (zeroed first) and, with lr >= 0, takes an Adam step. Any other call on the
 *   model in between discards the pending forward (energy_backward then fails). */
vaec_status vaec_flowmodel_energy_forward(vaec_flowmodel *m, int64_t n, const vaec_noise *noise, float *zK,
                                          double *logq);
vaec_status vaec_flowmodel_energy_backward(vaec_flowmodel *m, int64_t n, const double *U, const double *dU,
                                           double beta, float lr, double *loss);
/* Both in one call with a built-in potential (dim must be 2; box as in vaec_potential_eval). */
vaec_status vaec_flowmodel_energy_step(vaec_flowmodel *m, vaec_potential p, double box, int64_t n,
                                       const vaec_noise *noise, double beta, float lr, double *loss);

/* Model file (kind VAEC_KIND_FLOW): config record, arena, Adam state, RNG state. */
/* An optional extra record as the VAE's (load: a malloc'ed copy when extra != NULL). */
vaec_status vaec_flowmodel_save(const vaec_flowmodel *m, const char *path, const void *extra, uint32_t extra_len);
vaec_status vaec_flowmodel_load(vaec_flowmodel **out, const char *path, int threads, void **extra,
                                uint32_t *extra_len);

#endif
