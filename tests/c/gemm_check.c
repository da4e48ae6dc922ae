/* gemm_check.c -- the packed and small-M GEMM of the active ISA (VAEC_ISA, or the best
 * the CPU has) against the naive one, the fused dense kernels against their unfused
 * references (same bits), plus a few VAE training steps; built without Python
 * so it also runs on other architectures (CI runs it under qemu-aarch64 for NEON).
 * Prints "gemm_check: N passed, M failed" and exits non-zero on failure. */
#include "vaec.h"
#include "internal.h"   /* the fused dense kernels */
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static float frand(unsigned *s) { *s = *s * 1664525u + 1013904223u; return (float)(*s >> 8) / 16777216.0f - 0.5f; }

int main(void) {
    static const int shapes[][3] = {{1, 1, 1}, {1, 7, 17}, {2, 300, 785}, {4, 33, 64}, {5, 1000, 3},
                                    {7, 1, 63}, {17, 63, 7}, {63, 17, 257}, {97, 257, 513}, {300, 33, 1}};
    int passed = 0, failed = 0;
    unsigned seed = 12345;
    vaec_pool *pool = NULL;
    vaec_pool_create(&pool, 2);
    printf("gemm_check: isa %s (best %s), features %s\n", vaec_isa_name(vaec_cpu_active_isa()),
           vaec_isa_name(vaec_cpu_best_isa()), vaec_cpu_features());
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int beta = 0; beta < 2; beta++) {
                    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
                    float *C = malloc(sizeof(float) * M * N), *R = malloc(sizeof(float) * M * N);
                    for (int i = 0; i < M * K; i++) A[i] = frand(&seed);
                    for (int i = 0; i < K * N; i++) B[i] = frand(&seed);
                    for (int i = 0; i < M * N; i++) C[i] = R[i] = frand(&seed);
                    int lda = ta ? M : K, ldb = tb ? K : N;
                    vaec_sgemm(pool, ta, tb, M, N, K, A, lda, B, ldb, (float)beta, C, N);
                    vaec_sgemm_naive(ta, tb, M, N, K, A, lda, B, ldb, (float)beta, R, N);
                    double worst = 0;
                    for (int i = 0; i < M * N; i++) {
                        double e = fabs((double)C[i] - R[i]) / (1e-6 * sqrt((double)K) * (K * 0.25 + 1));
                        if (!(e <= worst)) worst = e;
                    }
                    if (worst <= 4.0) passed++;
                    else { failed++; printf("FAIL M=%d N=%d K=%d ta=%d tb=%d beta=%d: %.2f\n", M, N, K, ta, tb, beta, worst); }
                    free(A); free(B); free(C); free(R);
                }
    }
    /* the epilogue's Inf/NaN flag: clear on finite results (the largest finite floats
     * included), set by one non-finite row or one non-finite element of C, on every path
     * (few rows, packed blocks and their edge tiles, naive) */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        for (int ta = 0; ta < 2; ta++)
            for (int beta = 0; beta < 2; beta++)
                for (int plant = 0; plant < 3; plant++) {   /* none, an Inf in A, a NaN in C */
                    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
                    float *C = malloc(sizeof(float) * M * N);
                    for (int i = 0; i < M * K; i++) A[i] = frand(&seed);
                    for (int i = 0; i < K * N; i++) B[i] = 0.25f + frand(&seed) * 0.25f;   /* no zeros */
                    for (int i = 0; i < M * N; i++) C[i] = frand(&seed);
                    if (beta) C[0] = 3.0e38f;   /* stays finite */
                    int lda = ta ? M : K, row = M - 1, k = K / 2;
                    if (plant == 1) A[ta ? k * lda + row : row * lda + k] = INFINITY;
                    if (plant == 2) { if (!beta) { free(A); free(B); free(C); continue; } C[M * N - 1] = NAN; }
                    atomic_int flag = 0;
                    vaec_gemm_epilogue e = {NULL, VAEC_ACT_IDENTITY, NULL, 0, &flag};
                    vaec_sgemm_fused(pool, ta, 0, M, N, K, A, lda, B, N, (float)beta, C, N, &e);
                    int want = plant != 0, any = 0;
                    for (int i = 0; i < M * N; i++) any |= !isfinite(C[i]);
                    if (atomic_load(&flag) == want && any == want) passed++;
                    else { failed++; printf("FAIL nonfinite flag M=%d N=%d K=%d ta=%d beta=%d plant=%d: flag %d, C %s\n",
                                            M, N, K, ta, beta, plant, atomic_load(&flag), any ? "non-finite" : "finite"); }
                    free(A); free(B); free(C);
                }
    }
    /* fused dense layers (bias + activation in the GEMM's epilogue; act' in din's) give the
     * bits of the unfused passes, on the pool and on the caller alone */
    static const int dshapes[][3] = {{1, 300, 70}, {3, 33, 17}, {5, 7, 3}, {17, 63, 40}, {100, 257, 130}, {270, 37, 33}};
    for (size_t s = 0; s < sizeof dshapes / sizeof dshapes[0]; s++) {
        int B = dshapes[s][0], IN = dshapes[s][1], OUT = dshapes[s][2];
        float *x = malloc(sizeof(float) * B * IN), *W = malloc(sizeof(float) * OUT * IN), *b = malloc(sizeof(float) * OUT);
        float *d = malloc(sizeof(float) * B * OUT), *o1 = malloc(sizeof(float) * B * OUT), *o2 = malloc(sizeof(float) * B * OUT);
        float *i1 = malloc(sizeof(float) * B * IN), *i2 = malloc(sizeof(float) * B * IN);
        float *w1 = calloc((size_t)OUT * IN, sizeof(float)), *w2 = calloc((size_t)OUT * IN, sizeof(float));
        float *b1 = calloc((size_t)OUT, sizeof(float)), *b2 = calloc((size_t)OUT, sizeof(float));
        for (int i = 0; i < B * IN; i++) x[i] = 2.0f * frand(&seed);
        for (int i = 0; i < OUT * IN; i++) W[i] = frand(&seed);
        for (int i = 0; i < OUT; i++) b[i] = frand(&seed);
        for (int i = 0; i < B * OUT; i++) d[i] = frand(&seed);
        for (int act = 0; act < VAEC_ACT_COUNT; act++)
            for (int use_pool = 0; use_pool < 2; use_pool++) {
                vaec_pool *p = use_pool ? pool : NULL;
                const float *bias = act % 2 ? b : NULL;
                vaec_dense_forward_act_strided(p, o1, OUT, x, IN, W, bias, (vaec_act)act, B, IN, OUT);
                vaec_dense_forward_act_strided_naive(p, o2, OUT, x, IN, W, bias, (vaec_act)act, B, IN, OUT);
                int ok = memcmp(o1, o2, sizeof(float) * B * OUT) == 0;
                /* backward: the layer's input is the activation's output */
                vaec_act_forward((vaec_act)act, i2, x, (int64_t)B * IN);
                vaec_dense_backward_act_strided(p, i1, IN, w1, b1, d, OUT, i2, IN, W, (vaec_act)act, B, IN, OUT);
                float *ref_in = malloc(sizeof(float) * B * IN);
                vaec_dense_backward_act_strided_naive(p, ref_in, IN, w2, b2, d, OUT, i2, IN, W, (vaec_act)act, B, IN, OUT);
                ok = ok && memcmp(i1, ref_in, sizeof(float) * B * IN) == 0 &&
                     memcmp(w1, w2, sizeof(float) * OUT * IN) == 0 && memcmp(b1, b2, sizeof(float) * OUT) == 0;
                free(ref_in);
                if (ok) passed++;
                else { failed++; printf("FAIL fused dense B=%d IN=%d OUT=%d act=%s pool=%d\n", B, IN, OUT,
                                        vaec_act_name((vaec_act)act), use_pool); }
            }
        free(x); free(W); free(b); free(d); free(o1); free(o2); free(i1); free(i2); free(w1); free(w2); free(b1); free(b2);
    }
    /* a VAE trains: the loss after 30 Adam steps is well below the first */
    vaec_vae_config c = {0};
    c.input_dim = 64; c.latent_dim = 4; c.n_hidden = 1; c.hidden[0] = 32;
    c.activation = VAEC_ACT_TANH; c.likelihood = VAEC_LIK_BERNOULLI; c.seed = 1; c.threads = 2;
    vaec_vae *m = NULL;
    float *x = malloc(sizeof(float) * 128 * 64);
    for (int i = 0; i < 128 * 64; i++) x[i] = (i % 64) < 32 ? 1.0f : 0.0f;
    vaec_input in = {x, VAEC_F32, 128, 64, 0};
    double first = 0, last = 0;
    if (vaec_vae_create(&m, &c) == VAEC_OK) {
        for (int step = 0; step < 30; step++) vaec_vae_train_step(m, &in, NULL, NULL, 1e-2f, step ? &last : &first);
        vaec_vae_destroy(m);
    }
    if (last < first - 10) passed++;
    else { failed++; printf("FAIL training: first %.3f last %.3f\n", first, last); }
    free(x);
    vaec_pool_destroy(pool);
    printf("gemm_check: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
