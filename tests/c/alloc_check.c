/* alloc_check.c -- "no allocation inside a training step": the C library's allocators are
 * wrapped (link with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,
 * --wrap=aligned_alloc) and counted while a warm VAE (784-400-20, 2 threads) takes training
 * steps at batch 1, 20, 100 and 1000 and encodes one example, and while every other model
 * kind takes warm steps: the autoencoder, VAEs with planar and Real NVP posteriors, the IWAE
 * objective, wake-sleep, Monte Carlo EM and HMC sampling, a VAE given as layer lists, M2,
 * and the stand-alone flow (maximum likelihood and energy). The first step of a cold model must allocate (its workspace),
 * which shows the counter sees vaec's allocations.
 * Prints "alloc_check: N passed, M failed" and exits non-zero on failure. */
#include "vaec.h"
#include "m2.h"
#include "flows.h"
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static _Atomic long allocations;

void *__real_malloc(size_t n);
void *__real_calloc(size_t c, size_t n);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
void *__wrap_malloc(size_t n) { atomic_fetch_add(&allocations, 1); return __real_malloc(n); }
void *__wrap_calloc(size_t c, size_t n) { atomic_fetch_add(&allocations, 1); return __real_calloc(c, n); }
void *__wrap_realloc(void *p, size_t n) { atomic_fetch_add(&allocations, 1); return __real_realloc(p, n); }
int __wrap_posix_memalign(void **p, size_t a, size_t n) { atomic_fetch_add(&allocations, 1); return __real_posix_memalign(p, a, n); }
void *__wrap_aligned_alloc(size_t a, size_t n) { atomic_fetch_add(&allocations, 1); return __real_aligned_alloc(a, n); }

static int passed, failed;
static void check(int ok, const char *what, long count) {
    printf("  %-52s %s (%ld allocations)\n", what, ok ? "ok" : "FAILED", count);
    if (ok) passed++; else failed++;
}

/* warm steps of another model kind: `step` once cold, then 10 times counted */
typedef int (*step_fn)(void *ctx);
static void warm(const char *what, step_fn step, void *ctx) {
    int st = step(ctx);
    long before = atomic_load(&allocations);
    for (int i = 0; i < 10; i++) st |= step(ctx);
    check(st == 0 && atomic_load(&allocations) == before, what, atomic_load(&allocations) - before);
}

typedef struct { vaec_vae *m; vaec_input in; vaec_noise noise; vaec_objective obj; int ws; } vae_ctx;
static int vae_step(void *p) {
    vae_ctx *c = p;
    double loss, sleep;
    if (c->ws) return vaec_vae_wake_sleep_grad(c->m, &c->in, &c->noise, 50, &loss, &sleep);
    return vaec_vae_train_step(c->m, &c->in, &c->noise, &c->obj, 1e-3f, &loss);
}

static void vae_kind(const char *what, vaec_vae_config cfg, const float *x, int iw, int samples, int ws) {
    vae_ctx c = {0};
    if (vaec_vae_create(&c.m, &cfg)) { check(0, vaec_last_error(), 0); return; }
    c.in = (vaec_input){x, VAEC_F32, 200, cfg.input_dim, 1};
    c.noise = (vaec_noise){NULL, samples, 0, 0};
    c.obj = (vaec_objective){iw, 1.0f, 0.0f, VAEC_EST_REPARAM, 0.0f};
    c.ws = ws;
    warm(what, vae_step, &c);
    vaec_vae_destroy(c.m);
}

/* Monte Carlo EM on 200 examples' chains, and HMC sampling on the same (vae_hmc.c) */
typedef struct { vaec_vae *m; vaec_input in; vaec_hmc_config hmc; float z[200 * 8], step[200], out[2 * 200 * 8]; int sample; } mcem_ctx;
static int mcem_step(void *p) {
    mcem_ctx *c = p;
    double loss, accept;
    vaec_noise noise = {NULL, 2, 0, 0};
    if (c->sample) return vaec_vae_hmc_sample(c->m, &c->in, &noise, &c->hmc, NULL, c->out, NULL, NULL);
    return vaec_vae_mcem_step(c->m, &c->in, NULL, &c->hmc, c->z, c->step, 5, 1e-2f, &loss, &accept);
}

static void hmc_kinds(vaec_vae_config cfg, const float *x) {
    static mcem_ctx c;
    if (vaec_vae_create(&c.m, &cfg)) { check(0, vaec_last_error(), 0); return; }
    vaec_arena_optimizer_set(vaec_vae_arena(c.m), VAEC_OPT_ADAGRAD, 1e-3f);
    c.in = (vaec_input){x, VAEC_F32, 200, cfg.input_dim, 1};
    c.hmc = (vaec_hmc_config){10, 0.9f, 0.1f, 3, VAEC_HMC_INIT_PRIOR, 20};
    for (int i = 0; i < 200; i++) c.step[i] = 0.1f;
    for (int i = 0; i < 200 * 8; i++) c.z[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    warm("10 warm steps: MCEM (Adagrad, weight decay)", mcem_step, &c);
    c.sample = 1;
    warm("10 warm calls: HMC samples", mcem_step, &c);
    vaec_vae_destroy(c.m);
}

typedef struct { vaec_m2 *m; vaec_m2_batch b; } m2_ctx;
static int m2_step(void *p) {
    m2_ctx *c = p;
    double loss, parts[3];
    return vaec_m2_train_step(c->m, &c->b, 1e-3f, &loss, parts);
}

typedef struct { vaec_flowmodel *m; const float *x; int energy; } flow_ctx;
static int flow_step(void *p) {
    flow_ctx *c = p;
    double loss;
    if (c->energy) return vaec_flowmodel_energy_step(c->m, VAEC_POTENTIAL_U1, 0.0, 128, NULL, 1.0, 1e-3f, &loss);
    return vaec_flowmodel_nll_step(c->m, c->x, 256, 1e-3f, &loss);
}

static void other_kinds(const float *x) {
    vaec_vae_config cfg = {0};
    cfg.input_dim = 784; cfg.latent_dim = 8; cfg.n_hidden = 1; cfg.hidden[0] = 64;
    cfg.activation = VAEC_ACT_TANH; cfg.likelihood = VAEC_LIK_BERNOULLI; cfg.threads = 2;
    vaec_vae_config ae = cfg;
    ae.deterministic = 1;
    vae_kind("10 warm steps: autoencoder", ae, x, 0, 1, 0);
    vaec_vae_config planar = cfg;
    snprintf(planar.flow, sizeof planar.flow, "planar:4");
    vae_kind("10 warm steps: VAE with planar:4, 2 samples", planar, x, 0, 2, 0);
    vaec_vae_config nvp = cfg;
    snprintf(nvp.flow, sizeof nvp.flow, "realnvp:2");
    vae_kind("10 warm steps: VAE with realnvp:2", nvp, x, 0, 1, 0);
    vae_kind("10 warm steps: IWAE, k = 5", cfg, x, 1, 5, 0);
    vae_kind("10 warm steps: wake-sleep", cfg, x, 0, 1, 1);
    hmc_kinds(cfg, x);
    vaec_vae_config list = cfg;
    list.layers = 1;
    list.input_shape[0] = 784; list.input_shape[1] = list.input_shape[2] = 1;
    list.n_enc = 3;
    list.enc[0].kind = VAEC_LAYER_ACT; list.enc[0].act = VAEC_ACT_SIGMOID;   /* runs alone */
    list.enc[1].kind = VAEC_LAYER_LINEAR; list.enc[1].out = 64;
    list.enc[2].kind = VAEC_LAYER_ACT; list.enc[2].act = VAEC_ACT_RELU;      /* fused */
    list.n_dec = 2;
    list.dec[0].kind = VAEC_LAYER_LINEAR; list.dec[0].out = 64; list.dec[0].act = VAEC_ACT_ELU;
    list.dec[1].kind = VAEC_LAYER_LINEAR; list.dec[1].out = 784;
    vae_kind("10 warm steps: VAE given as layer lists", list, x, 0, 1, 0);
    /* a conv VAE on 1x28x28: Conv2d, MaxPool, a channels-last Flatten, ConvTranspose2d,
     * Upsample, the conv layers' groups, lanes and scratch slots */
    vaec_vae_config conv = cfg;
    conv.layers = 1;
    conv.input_shape[0] = 1; conv.input_shape[1] = conv.input_shape[2] = 28;
    memset(conv.enc, 0, sizeof conv.enc);
    memset(conv.dec, 0, sizeof conv.dec);
    conv.n_enc = 5;
    conv.enc[0] = (vaec_layer_spec){.kind = VAEC_LAYER_CONV2D, .out = 8, .act = VAEC_ACT_RELU, .kernel = {3, 3},
                                    .stride = {1, 1}, .padding = {1, 1}};
    conv.enc[1] = (vaec_layer_spec){.kind = VAEC_LAYER_MAXPOOL2D, .kernel = {2, 2}, .stride = {2, 2}};
    conv.enc[2] = (vaec_layer_spec){.kind = VAEC_LAYER_CONV2D, .out = 16, .act = VAEC_ACT_RELU, .kernel = {4, 4},
                                    .stride = {2, 2}, .padding = {1, 1}};
    conv.enc[3] = (vaec_layer_spec){.kind = VAEC_LAYER_FLATTEN};
    conv.enc[4] = (vaec_layer_spec){.kind = VAEC_LAYER_LINEAR, .out = 32, .act = VAEC_ACT_RELU};
    conv.n_dec = 4;
    conv.dec[0] = (vaec_layer_spec){.kind = VAEC_LAYER_LINEAR, .out = 16 * 7 * 7, .act = VAEC_ACT_RELU};
    conv.dec[1] = (vaec_layer_spec){.kind = VAEC_LAYER_UNFLATTEN, .shape = {16, 7, 7}};
    conv.dec[2] = (vaec_layer_spec){.kind = VAEC_LAYER_CONVT2D, .out = 8, .act = VAEC_ACT_RELU, .kernel = {4, 4},
                                    .stride = {2, 2}, .padding = {1, 1}};
    conv.dec[3] = (vaec_layer_spec){.kind = VAEC_LAYER_CONVT2D, .out = 1, .kernel = {4, 4}, .stride = {2, 2},
                                    .padding = {1, 1}};
    vae_kind("10 warm steps: conv VAE (Conv2d, MaxPool2d, ConvTranspose2d)", conv, x, 0, 1, 0);

    m2_ctx mc = {0};
    vaec_m2_config m2 = {0};
    m2.input_dim = 784; m2.latent_dim = 8; m2.n_classes = 10; m2.n_hidden = 1; m2.hidden[0] = 64;
    m2.n_cls_hidden = 1; m2.cls_hidden[0] = 32; m2.activation = VAEC_ACT_SOFTPLUS;
    m2.likelihood = VAEC_LIK_BERNOULLI; m2.threads = 2;
    static int32_t y[100];
    for (int i = 0; i < 100; i++) y[i] = i % 10;
    vaec_input xl = {x, VAEC_F32, 100, 784, 1}, xu = {x + 100 * 784, VAEC_F32, 100, 784, 1};
    mc.b = (vaec_m2_batch){&xl, y, &xu, 1.0, 0.005, 0.005, NULL, NULL, 0, 0};
    if (vaec_m2_create(&mc.m, &m2)) check(0, vaec_last_error(), 0);
    else { warm("10 warm steps: M2, 100 labelled + 100 unlabelled", m2_step, &mc); vaec_m2_destroy(mc.m); }

    flow_ctx fc = {0};
    vaec_flowmodel_config fcfg = {0};
    fcfg.dim = 2; fcfg.threads = 2;
    vaec_flow_spec_parse(&fcfg.flow, "realnvp:4:32");
    float *pts = malloc(sizeof(float) * 512);
    for (int i = 0; i < 512; i++) pts[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    fc.x = pts;
    if (vaec_flowmodel_create(&fc.m, &fcfg)) check(0, vaec_last_error(), 0);
    else { warm("10 warm steps: Real NVP flow, maximum likelihood", flow_step, &fc); vaec_flowmodel_destroy(fc.m); }
    vaec_flow_spec_parse(&fcfg.flow, "planar:8");
    fc.energy = 1;
    if (vaec_flowmodel_create(&fc.m, &fcfg)) check(0, vaec_last_error(), 0);
    else { warm("10 warm steps: planar flow, energy (U1)", flow_step, &fc); vaec_flowmodel_destroy(fc.m); }
    free(pts);
}

int main(void) {
    enum { D = 784, Z = 20, NMAX = 1000 };
    float *x = malloc(sizeof(float) * D * NMAX), mu[Z], lv[Z];
    unsigned s = 1;
    for (int i = 0; i < D * NMAX; i++) { s = s * 1664525u + 1013904223u; x[i] = (float)(s >> 8) / 16777216.0f; }
    vaec_vae_config cfg = {0};
    cfg.input_dim = D;
    cfg.latent_dim = Z;
    cfg.n_hidden = 1;
    cfg.hidden[0] = 400;
    cfg.activation = VAEC_ACT_TANH;
    cfg.likelihood = VAEC_LIK_BERNOULLI;
    cfg.threads = 2;
    vaec_vae *m = NULL;
    if (vaec_vae_create(&m, &cfg)) { printf("create: %s\n", vaec_last_error()); return 1; }
    vaec_noise noise = {NULL, 1, 0, 0};
    double loss;
    vaec_input in = {x, VAEC_F32, 1, D, 1};
    long before = atomic_load(&allocations);
    vaec_vae_train_step(m, &in, &noise, NULL, 1e-3f, &loss);
    check(atomic_load(&allocations) > before, "a cold model's first step allocates (control)", atomic_load(&allocations) - before);
    static const int batches[] = {1000, 100, 20, 1};
    in.n = NMAX;   /* warm: the largest chunk sizes the workspace */
    vaec_vae_train_step(m, &in, &noise, NULL, 1e-3f, &loss);
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
        in.n = batches[b];
        before = atomic_load(&allocations);
        int st = 0;
        for (int step = 0; step < 20; step++) st |= vaec_vae_train_step(m, &in, &noise, NULL, 1e-3f, &loss);
        char what[80];
        snprintf(what, sizeof what, "20 warm training steps at batch %d", batches[b]);
        check(st == 0 && atomic_load(&allocations) == before, what, atomic_load(&allocations) - before);
    }
    in.n = 1;
    in.binarize = 0;
    before = atomic_load(&allocations);
    int st = vaec_vae_encode(m, &in, mu, lv);
    check(st == 0 && atomic_load(&allocations) == before, "encode one example", atomic_load(&allocations) - before);
    vaec_vae_destroy(m);
    other_kinds(x);
    free(x);
    printf("alloc_check: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
