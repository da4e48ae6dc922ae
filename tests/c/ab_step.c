/* ab_step.c -- not a test: the A/B driver behind the "What changed" figures of
 * docs/PERFORMANCE.md. It loads two or more builds of the C core (shared libraries, each
 * built from its own copy of csrc/), creates the benchmark's VAE (784-400-20, tanh,
 * Bernoulli) in each, and interleaves their training steps in short bursts, so a slow
 * spell of the machine lands on both sides of a pair; it prints each build's median rate
 * and the median (quartiles) of its burst-by-burst ratio to the first build.
 *
 *   gcc -std=c11 -O3 -fno-math-errno -fno-strict-aliasing -fPIC -shared -Icsrc csrc/[a-z]*.c -lm -lpthread -o /tmp/a.so
 *   (the same from a changed copy of csrc/ into /tmp/b.so)
 *   gcc -std=c11 -O2 -Icsrc tests/c/ab_step.c -ldl -o /tmp/ab_step
 *   /tmp/ab_step BATCH THREADS SECONDS /tmp/a.so /tmp/b.so [...]
 *
 * The data are random binary images (15 % ones), or AB_DATA=file: 4000 x 784 float32
 * (e.g. the bench's binarized digits, vaec.bench._data(4000).tofile(file)). The rates are
 * for comparing builds, not for quoting against PyTorch (python -m vaec bench does that).
 * AB_DUMP=1 also writes each round's burst rates to stderr, one line per round, so the
 * bursts can be split by the machine's state afterwards (docs/PERFORMANCE.md, session 13). */
#define _POSIX_C_SOURCE 200809L
#include "vaec.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
typedef vaec_status (*create_fn)(vaec_vae **, const vaec_vae_config *);
typedef vaec_status (*step_fn)(vaec_vae *, const vaec_input *, const vaec_noise *, const vaec_objective *, float, double *);
static int cmpd(const void *a, const void *b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc, char **argv) {
    if (argc < 5 || argc > 12) {
        fprintf(stderr, "usage: %s BATCH THREADS SECONDS LIB.so [LIB.so ...] (at most 8)\n", argv[0]);
        return 2;
    }
    int B = atoi(argv[1]), T = atoi(argv[2]); double secs = atof(argv[3]); int nv = argc - 4;
    if (B < 1 || B > 4000 || T < 1 || !(secs > 0)) { fprintf(stderr, "BATCH 1..4000, THREADS >= 1, SECONDS > 0\n"); return 2; }
    enum { D = 784, Z = 20, NX = 4000, MAXR = 2000 };
    float *x = malloc(sizeof(float) * D * NX);
    unsigned s = 1;
    for (int i = 0; i < D * NX; i++) { s = s * 1664525u + 1013904223u; x[i] = (s >> 8) / 16777216.0f < 0.15f ? 1.f : 0.f; }
    const char *data = getenv("AB_DATA");   /* or 4000 x 784 float32 from a file */
    if (data) {
        FILE *f = fopen(data, "rb");
        if (!f || fread(x, sizeof(float), (size_t)D * NX, f) != (size_t)D * NX) { fprintf(stderr, "AB_DATA: cannot read %d floats from %s\n", D * NX, data); return 2; }
        fclose(f);
    }
    vaec_vae *m[8]; step_fn st[8];
    for (int v = 0; v < nv; v++) {
        void *h = dlopen(argv[4 + v], RTLD_NOW | RTLD_LOCAL); if (!h) { printf("%s\n", dlerror()); return 1; }
        create_fn cr = (create_fn)dlsym(h, "vaec_vae_create"); st[v] = (step_fn)dlsym(h, "vaec_vae_train_step");
        if (!cr || !st[v]) { printf("%s: no vaec_vae_create / vaec_vae_train_step\n", argv[4 + v]); return 1; }
        vaec_vae_config cfg = {0};
        cfg.input_dim = D; cfg.latent_dim = Z; cfg.n_hidden = 1; cfg.hidden[0] = 400;
        cfg.activation = VAEC_ACT_TANH; cfg.likelihood = VAEC_LIK_BERNOULLI; cfg.threads = T;
        if (cr(&m[v], &cfg)) { printf("create failed\n"); return 1; }
    }
    vaec_noise noise = {NULL, 1, 0, 0};
    double loss[8]; int nb = NX / B; int it[8] = {0};
    static double rate[8][MAXR]; int nr = 0;
    double burst = B >= 1000 ? 0.15 : 0.05, t_end = now() + secs;
    for (int v = 0; v < nv; v++) for (int i = 0; i < 5; i++) { vaec_input in = {x + (size_t)(it[v]++ % nb) * B * D, VAEC_F32, B, D, 0}; st[v](m[v], &in, &noise, NULL, 1e-3f, &loss[v]); }
    while (now() < t_end && nr < MAXR) {
        for (int v = 0; v < nv; v++) {
            double t0 = now(); int n = 0;
            while (now() - t0 < burst) { vaec_input in = {x + (size_t)(it[v]++ % nb) * B * D, VAEC_F32, B, D, 0}; st[v](m[v], &in, &noise, NULL, 1e-3f, &loss[v]); n++; }
            rate[v][nr] = n * B / (now() - t0);
        }
        if (getenv("AB_DUMP")) {
            for (int v = 0; v < nv; v++) fprintf(stderr, "%.0f ", rate[v][nr]);
            fprintf(stderr, "\n");
        }
        nr++;
    }
    for (int v = 0; v < nv; v++) {
        double r[MAXR], q[MAXR];
        for (int i = 0; i < nr; i++) { r[i] = rate[v][i]; q[i] = rate[v][i] / rate[0][i]; }
        qsort(r, nr, sizeof(double), cmpd); qsort(q, nr, sizeof(double), cmpd);
        printf("B=%-5d %-22s med %7.0f ex/s  max %7.0f  vs first: med %.3f [q25 %.3f, q75 %.3f] (%d bursts, loss %.3f)\n", B, argv[4+v], r[nr/2], r[nr-1], q[nr/2], q[nr/4], q[3*nr/4], nr, loss[v]);
    }
}
