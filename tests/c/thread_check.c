/* thread_check.c -- the C core under concurrent use, built with -fsanitize=thread by .ci/run:
 *   - 8 threads start at once and each first touches the lazy global state (the CPU/ISA
 *     detection, the CRC table of the model file) and reads the ISA and features back;
 *   - 8 threads each train a model of their own (2 pool threads each), save it, load it back
 *     and evaluate it; every result equals the same work done serially, bit for bit;
 *   - 8 threads save to one path at once: the file is always one of their models, whole.
 * ThreadSanitizer reports any data race (the process then exits with its status 66).
 * Prints "thread_check: N passed, M failed" and exits non-zero on failure. */
#define _POSIX_C_SOURCE 200809L
#include "vaec.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { T = 8, D = 48, Z = 3, N = 64, STEPS = 12 };
static int passed, failed;
static void check(int ok, const char *what) {
    printf("  %-64s %s\n", what, ok ? "ok" : "FAILED");
    if (ok) passed++; else failed++;
}

static pthread_barrier_t start;
static char dir[256];
static float data[N * D];

typedef struct {
    int id;
    char features[256];
    vaec_isa isa;
    uint32_t kind;
    double loss, elbo[N];
    float params[4096];
    int64_t n;
    int ok;
} job;

static vaec_vae_config config(int id) {
    vaec_vae_config c = {0};
    c.input_dim = D; c.latent_dim = Z; c.n_hidden = 1; c.hidden[0] = 16 + id;
    c.activation = VAEC_ACT_TANH; c.likelihood = VAEC_LIK_BERNOULLI; c.seed = 100 + (uint64_t)id; c.threads = 2;
    return c;
}

/* first use of the lazy state, all threads released at once */
static void *first_use(void *arg) {
    job *j = arg;
    char path[300];
    snprintf(path, sizeof path, "%s/first-%d.vaec", dir, j->id);
    vaec_vae_config c = config(j->id);
    c.threads = 1;
    vaec_vae *m = NULL;
    pthread_barrier_wait(&start);
    j->isa = vaec_cpu_active_isa();
    snprintf(j->features, sizeof j->features, "%s", vaec_cpu_features());
    j->ok = vaec_vae_create(&m, &c) == VAEC_OK && vaec_vae_save(m, path, NULL, 0) == VAEC_OK &&
            vaec_file_kind(path, &j->kind) == VAEC_OK;
    vaec_vae *back = NULL;
    j->ok = j->ok && vaec_vae_load(&back, path, 1, NULL, NULL) == VAEC_OK;
    vaec_vae_destroy(back);
    vaec_vae_destroy(m);
    return NULL;
}

/* train, save, load, evaluate one model */
static void *work(void *arg) {
    job *j = arg;
    char path[300];
    snprintf(path, sizeof path, "%s/model-%d.vaec", dir, j->id);
    vaec_vae_config c = config(j->id);
    vaec_vae *m = NULL, *back = NULL;
    vaec_input in = {data, VAEC_F32, N, D, 0};
    vaec_noise noise = {NULL, 2, 1, 9};
    j->ok = vaec_vae_create(&m, &c) == VAEC_OK;
    for (int s = 0; j->ok && s < STEPS; s++) j->ok = vaec_vae_train_step(m, &in, NULL, NULL, 1e-2f, &j->loss) == VAEC_OK;
    j->ok = j->ok && vaec_vae_save(m, path, NULL, 0) == VAEC_OK && vaec_vae_load(&back, path, 2, NULL, NULL) == VAEC_OK &&
            vaec_vae_elbo(back, &in, &noise, j->elbo) == VAEC_OK;
    if (j->ok) {
        vaec_arena *a = vaec_vae_arena(back);
        j->n = a->n < 4096 ? a->n : 4096;
        memcpy(j->params, a->params, (size_t)j->n * sizeof(float));
    }
    vaec_vae_destroy(back);
    vaec_vae_destroy(m);
    return NULL;
}

static vaec_vae *shared_models[T];
static void *save_shared(void *arg) {
    job *j = arg;
    char path[300];
    snprintf(path, sizeof path, "%s/shared.vaec", dir);
    j->ok = 1;
    pthread_barrier_wait(&start);
    for (int r = 0; r < 10 && j->ok; r++) {
        vaec_vae *back = NULL;
        j->ok = vaec_vae_save(shared_models[j->id], path, NULL, 0) == VAEC_OK &&
                vaec_vae_load(&back, path, 1, NULL, NULL) == VAEC_OK;
        if (j->ok) {   /* whole: the parameters of one of the models */
            int any = 0;
            for (int k = 0; k < T && !any; k++) {
                vaec_arena *a = vaec_vae_arena(back), *b = vaec_vae_arena(shared_models[k]);
                any = a->n == b->n && memcmp(a->params, b->params, (size_t)a->n * 4) == 0;
            }
            j->ok = any;
        }
        vaec_vae_destroy(back);
    }
    return NULL;
}

static int run(void *(*fn)(void *), job *jobs, int parallel) {
    pthread_t th[T];
    if (parallel) {
        pthread_barrier_init(&start, NULL, T);
        for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, fn, &jobs[i]);
        for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
        pthread_barrier_destroy(&start);
    } else {
        pthread_barrier_init(&start, NULL, 1);
        for (int i = 0; i < T; i++) fn(&jobs[i]);
        pthread_barrier_destroy(&start);
    }
    int ok = 1;
    for (int i = 0; i < T; i++) ok &= jobs[i].ok;
    return ok;
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/vaec-thread-check-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 2;
    unsigned s = 3;
    for (int i = 0; i < N * D; i++) { s = s * 1664525u + 1013904223u; data[i] = (s >> 24) < 60 ? 1.0f : 0.0f; }

    static job a[T], b[T];
    for (int i = 0; i < T; i++) a[i].id = b[i].id = i;
    check(run(first_use, a, 1), "8 threads touch the lazy global state at once");
    int same = 1;
    for (int i = 1; i < T; i++)
        same &= a[i].isa == a[0].isa && strcmp(a[i].features, a[0].features) == 0 && a[i].kind == VAEC_KIND_VAE;
    check(same && strcmp(a[0].features, vaec_cpu_features()) == 0, "every thread sees the same ISA and features");

    memset(a, 0, sizeof a);
    for (int i = 0; i < T; i++) a[i].id = b[i].id = i;
    int ok = run(work, a, 1) & run(work, b, 0);
    for (int i = 0; i < T && ok; i++)
        ok = a[i].loss == b[i].loss && memcmp(a[i].elbo, b[i].elbo, sizeof a[i].elbo) == 0 && a[i].n == b[i].n &&
             memcmp(a[i].params, b[i].params, (size_t)a[i].n * 4) == 0;
    check(ok, "8 models trained, saved, loaded in parallel = serially, bitwise");

    for (int i = 0; i < T; i++) {
        vaec_vae_config c = config(0);
        c.seed = 500 + (uint64_t)i;
        c.threads = 1;
        if (vaec_vae_create(&shared_models[i], &c)) return 2;
    }
    check(run(save_shared, a, 1), "8 threads saving to one path: always one whole model");
    for (int i = 0; i < T; i++) vaec_vae_destroy(shared_models[i]);

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 2;
    printf("thread_check: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
