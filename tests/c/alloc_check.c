/* alloc_check.c -- "no allocation inside a training step": the C library's allocators are
 * wrapped (link with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,
 * --wrap=aligned_alloc) and counted while a warm VAE (784-400-20, 2 threads) takes training
 * steps at batch 1, 20, 100 and 1000 and encodes one example. The first step of a cold model
 * must allocate (its workspace), which shows the counter sees vaec's allocations.
 * Prints "alloc_check: N passed, M failed" and exits non-zero on failure. */
#include "vaec.h"
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
    free(x);
    printf("alloc_check: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
