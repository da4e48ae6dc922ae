/* gemm_one.c -- not a test: times one product, C = op(A) op(B) (beta 0), over and over on
 * one thread pool and prints the fastest and the median call. The per-product figures of
 * docs/PERFORMANCE.md's GEMM sections come from it, each build against the other in turn.
 *
 *   gcc -std=c11 -O3 -fno-math-errno -fno-strict-aliasing -Icsrc tests/c/gemm_one.c csrc/[a-z]*.c -lm -lpthread -o /tmp/gemm_one
 *   /tmp/gemm_one M N K TRANS_A TRANS_B THREADS CALLS      e.g. /tmp/gemm_one 400 20 1000 1 0 1 2000
 *
 * SEQ=1 in the environment also prints the first 60 call times in order; COFF=n puts C n
 * floats past a 64-byte boundary (NumPy's large arrays start 16 bytes past one: COFF=4). */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s M N K TRANS_A TRANS_B THREADS CALLS\n", argv[0]);
        return 2;
    }
    int M = atoi(argv[1]), N = atoi(argv[2]), K = atoi(argv[3]), ta = atoi(argv[4]), tb = atoi(argv[5]);
    int threads = atoi(argv[6]), calls = atoi(argv[7]);
    if (M <= 0 || N <= 0 || K <= 0 || threads <= 0 || calls <= 0) {
        fprintf(stderr, "M, N, K, THREADS and CALLS must be positive\n");
        return 2;
    }
    vaec_pool *pool = NULL;
    if (vaec_pool_create(&pool, threads)) return 1;
    float *A = vaec_alloc((size_t)M * K, sizeof(float)), *B = vaec_alloc((size_t)K * N, sizeof(float));
    const char *coff_s = getenv("COFF");
    int coff = coff_s ? atoi(coff_s) : 0;
    if (coff < 0 || coff > 1023) {
        fprintf(stderr, "COFF must be 0..1023\n");
        return 2;
    }
    float *C0 = vaec_alloc((size_t)M * N + 1024, sizeof(float)), *C = C0 ? C0 + coff : NULL;
    double *ts = malloc(sizeof(double) * (size_t)calls);
    if (!A || !B || !C || !ts) return 1;
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)K * N; i++) B[i] = (float)(i % 5) * 0.1f;
    int lda = ta ? M : K, ldb = tb ? K : N;
    for (int r = 0; r < calls; r++) {
        double t0 = now();
        vaec_sgemm(pool, ta, tb, M, N, K, A, lda, B, ldb, 0.0f, C, N);
        ts[r] = now() - t0;
    }
    if (getenv("SEQ")) {
        for (int i = 0; i < calls && i < 60; i++) printf("%.0f ", ts[i] * 1e6);
        printf("\n");
    }
    double mean = 0.0;
    for (int i = 0; i < calls; i++) mean += ts[i] / calls;
    qsort(ts, (size_t)calls, sizeof(double), cmpd);
    printf("%dx%dx%d ta%d tb%d, %d thread(s): min %.1f us, median %.1f us (%.0f GFLOP/s), mean %.1f us\n", M, N, K, ta,
           tb, threads, ts[0] * 1e6, ts[calls / 2] * 1e6, 2.0 * M * N * K / ts[calls / 2] / 1e9, mean * 1e6);
    free(ts);
    vaec_free(A);
    vaec_free(B);
    vaec_free(C0);
    vaec_pool_destroy(pool);
    return 0;
}
