/* ab_encode.c -- not a test: the A/B driver for the encode latency figures of
 * docs/PERFORMANCE.md, ab_step.c's twin. It loads two or more builds of the C core (shared
 * libraries, each from its own copy of csrc/), creates the benchmark's VAE (784-400-20,
 * tanh, 2 threads or AB_THREADS) in each, and times vaec_vae_encode of one example in
 * rounds of 200 calls, the builds interleaved round by round; it prints each build's
 * median, 10th and 90th percentile over 200 rounds (microseconds per call).
 *
 *   gcc -std=c11 -O3 -fno-math-errno -fno-strict-aliasing -fPIC -shared -Icsrc csrc/[a-z]*.c -lm -lpthread -o /tmp/a.so
 *   gcc -std=c11 -O2 -Icsrc tests/c/ab_encode.c -ldl -o /tmp/ab_encode
 *   AB_X=/tmp/x0.bin /tmp/ab_encode /tmp/a.so /tmp/b.so [...]
 *
 * The example is a random binary image (13 % ones), or AB_X=file: 784 float32 (e.g. the
 * bench's first digit, vaec.bench._data(4000)[0].tofile(file)). */
#define _POSIX_C_SOURCE 200809L
#include "vaec.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
typedef vaec_status (*create_fn)(vaec_vae **, const vaec_vae_config *);
typedef vaec_status (*encode_fn)(vaec_vae *, const vaec_input *, float *, float *);
static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    enum { D = 784, Z = 20, ROUNDS = 200, CALLS = 200 };
    int nv = argc - 1;
    if (nv < 1 || nv > 8) {
        fprintf(stderr, "usage: %s LIB.so [LIB.so ...] (at most 8)\n", argv[0]);
        return 2;
    }
    float x[D], mu[Z], lv[Z];
    unsigned s = 7;
    for (int i = 0; i < D; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (s >> 8) / 16777216.0f < 0.13f ? 1.f : 0.f;
    }
    const char *xf = getenv("AB_X");
    if (xf) {
        FILE *f = fopen(xf, "rb");
        if (!f || fread(x, sizeof(float), D, f) != D) { fprintf(stderr, "AB_X: cannot read %d floats from %s\n", D, xf); return 2; }
        fclose(f);
    }
    const char *th = getenv("AB_THREADS");
    vaec_vae *m[8];
    encode_fn enc[8];
    for (int v = 0; v < nv; v++) {
        void *h = dlopen(argv[1 + v], RTLD_NOW | RTLD_LOCAL);
        if (!h) { printf("%s\n", dlerror()); return 1; }
        create_fn cr = (create_fn)dlsym(h, "vaec_vae_create");
        enc[v] = (encode_fn)dlsym(h, "vaec_vae_encode");
        vaec_vae_config c = {0};
        c.input_dim = D; c.latent_dim = Z; c.n_hidden = 1; c.hidden[0] = 400;
        c.activation = VAEC_ACT_TANH; c.likelihood = VAEC_LIK_BERNOULLI; c.seed = 1; c.threads = th ? atoi(th) : 2;
        if (!cr || !enc[v] || cr(&m[v], &c) != VAEC_OK) { printf("%s: cannot create the model\n", argv[1 + v]); return 1; }
    }
    vaec_input in = {x, VAEC_F32, 1, D, 0};
    static double t[8][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < nv; v++) {
            double t0 = now();
            for (int i = 0; i < CALLS; i++) enc[v](m[v], &in, mu, lv);
            t[v][r] = (now() - t0) / CALLS * 1e6;
        }
    for (int v = 0; v < nv; v++) {
        qsort(t[v], ROUNDS, sizeof(double), cmpd);
        printf("%-24s encode: median %6.2f us, p10 %6.2f, p90 %6.2f\n", argv[1 + v], t[v][ROUNDS / 2],
               t[v][ROUNDS / 10], t[v][ROUNDS * 9 / 10]);
    }
    return 0;
}
