/* gemm_check.c -- the packed and small-M GEMM of the active ISA (VAEC_ISA, or the best
 * the CPU has) against the naive one, the fused dense kernels against their unfused
 * references (same bits), and the sparse kernels; built from the kernel sources alone (no
 * model code, no Python), so it also runs on other architectures (CI runs it under
 * qemu-aarch64 for NEON).
 * Prints "gemm_check: N passed, M failed" and exits non-zero on failure. */
#include "vaec.h"
#include "internal.h"   /* the fused dense kernels */
#include <string.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static float frand(unsigned *s) { *s = *s * 1664525u + 1013904223u; return (float)(*s >> 8) / 16777216.0f - 0.5f; }

/* The largest error of got (rows x cols, row stride ldg) against want (float64 sums, row
 * stride ldw), in units of the float32 rounding bound of a K-term sum; a NaN anywhere
 * makes it infinite (and stays so). A result passes at 4 units or less. */
static double sum_err(const float *got, int64_t ldg, const float *want, int64_t ldw, int64_t rows, int64_t cols,
                      int64_t K) {
    const double unit = 1e-6 * sqrt((double)(K > 0 ? K : 1)) * (K * 0.25 + 1);   /* K = 0: exact */
    double worst = 0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            double e = fabs((double)got[i * ldg + j] - want[i * ldw + j]) / unit;
            if (!(e <= worst)) worst = e == e ? e : INFINITY;
        }
    return worst;
}

int main(void) {
    /* M x N x K: few rows, the unpacked path (K or N at most 64, or M at most 48, with a
     * small B) and the packed one, with edge tiles and panels on each */
    static const int shapes[][3] = {{1, 1, 1}, {1, 7, 17}, {2, 300, 785}, {4, 33, 64}, {5, 1000, 3},
                                    {7, 1, 63}, {17, 63, 7}, {63, 17, 257}, {97, 257, 513}, {300, 33, 1},
                                    {600, 100, 20}, {256, 40, 400}, {130, 97, 300}, {270, 200, 129},
                                    {49, 65, 65}};
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
                    double worst = sum_err(C, N, R, N, M, N, K);
                    if (worst <= 4.0) passed++;
                    else { failed++; printf("FAIL M=%d N=%d K=%d ta=%d tb=%d beta=%d: %.2f\n", M, N, K, ta, tb, beta, worst); }
                    free(A); free(B); free(C); free(R);
                }
    }
    /* few rows of op(A) with runs of zeros (+0 and -0), which the small-M kernel skips (a
     * vector at a time against op(B) = B^T: short rows listed, long ones every vector;
     * an element at a time against B, SM_NZ = 1024 at a time), against the naive */
    static const int zshapes[][3] = {{1, 400, 784}, {3, 37, 100}, {4, 20, 8200}, {2, 50, 513}, {1, 5, 16},
                                     {3, 20, 0}, {1, 300, 1025}};
    for (size_t s = 0; s < sizeof zshapes / sizeof zshapes[0]; s++)
        for (int tb = 0; tb < 2; tb++)
        for (int beta = 0; beta < 2; beta++) {
            int M = zshapes[s][0], N = zshapes[s][1], K = zshapes[s][2];
            float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
            float *C = malloc(sizeof(float) * M * N), *R = malloc(sizeof(float) * M * N);
            for (int i = 0; i < M * K; i++) {
                int run = (i % K) / 13;   /* runs of 13: vectors of every kind (zero, mixed, full) */
                A[i] = run % 3 == 0 ? frand(&seed) : run % 3 == 1 ? 0.0f : ((i & 1) ? -0.0f : 0.0f);
            }
            for (int i = 0; i < K * N; i++) B[i] = frand(&seed);
            for (int i = 0; i < M * N; i++) C[i] = R[i] = frand(&seed);
            vaec_sgemm(pool, 0, tb, M, N, K, A, K, B, tb ? K : N, (float)beta, C, N);
            vaec_sgemm_naive(0, tb, M, N, K, A, K, B, tb ? K : N, (float)beta, R, N);
            double worst = sum_err(C, N, R, N, M, N, K);
            if (worst <= 4.0) passed++;
            else { failed++; printf("FAIL zero runs M=%d N=%d K=%d tb=%d beta=%d: %.2f\n", M, N, K, tb, beta, worst); }
            free(A); free(B); free(C); free(R);
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
                vaec_dense_forward_act_strided(p, o1, OUT, x, IN, W, 0, bias, (vaec_act)act, B, IN, OUT);
                vaec_dense_forward_act_strided_naive(p, o2, OUT, x, IN, W, 0, bias, (vaec_act)act, B, IN, OUT);
                int ok = memcmp(o1, o2, sizeof(float) * B * OUT) == 0;
                /* backward: the layer's input is the activation's output */
                vaec_act_forward((vaec_act)act, i2, x, (int64_t)B * IN);
                vaec_dense_backward_act_strided(p, i1, IN, w1, b1, d, OUT, i2, IN, W, (vaec_act)act, B, IN, OUT);
                float *ref_in = malloc(sizeof(float) * B * IN);
                vaec_dense_backward_act_strided_naive(p, ref_in, IN, w2, b2, d, OUT, i2, IN, W, 0, (vaec_act)act, B, IN, OUT);
                ok = ok && memcmp(i1, ref_in, sizeof(float) * B * IN) == 0 &&
                     memcmp(w1, w2, sizeof(float) * OUT * IN) == 0 && memcmp(b1, b2, sizeof(float) * OUT) == 0;
                free(ref_in);
                if (ok) passed++;
                else { failed++; printf("FAIL fused dense B=%d IN=%d OUT=%d act=%s pool=%d\n", B, IN, OUT,
                                        vaec_act_name((vaec_act)act), use_pool); }
                /* W kept transposed (wt): the bits of the unfused passes on the same layout,
                 * and the values of the row-major layer (o2, ref_in, w1 and b1 above) */
                float *Wt = malloc(sizeof(float) * OUT * IN), *o3 = malloc(sizeof(float) * B * OUT);
                float *o4 = malloc(sizeof(float) * B * OUT), *i3 = malloc(sizeof(float) * B * IN);
                float *i4 = malloc(sizeof(float) * B * IN), *w3 = calloc((size_t)OUT * IN, sizeof(float));
                float *w4 = calloc((size_t)OUT * IN, sizeof(float)), *b3 = calloc((size_t)OUT, sizeof(float));
                float *b4 = calloc((size_t)OUT, sizeof(float)), *w5 = calloc((size_t)OUT * IN, sizeof(float));
                float *b5 = calloc((size_t)OUT, sizeof(float));
                for (int o = 0; o < OUT; o++) for (int k = 0; k < IN; k++) Wt[k * OUT + o] = W[o * IN + k];
                vaec_dense_backward_act_strided(p, i1, IN, w5, b5, d, OUT, i2, IN, W, (vaec_act)act, B, IN, OUT);
                vaec_dense_forward_act_strided(p, o3, OUT, x, IN, Wt, 1, bias, (vaec_act)act, B, IN, OUT);
                vaec_dense_forward_act_strided_naive(p, o4, OUT, x, IN, Wt, 1, bias, (vaec_act)act, B, IN, OUT);
                vaec_dense_backward_act_strided_ex(p, i3, IN, w3, b3, d, OUT, i2, IN, Wt, 1, (vaec_act)act, B, IN,
                                                   OUT, 0, NULL);
                vaec_dense_backward_act_strided_naive(p, i4, IN, w4, b4, d, OUT, i2, IN, Wt, 1, (vaec_act)act, B, IN,
                                                      OUT);
                ok = memcmp(o3, o4, sizeof(float) * B * OUT) == 0 && memcmp(i3, i4, sizeof(float) * B * IN) == 0 &&
                     memcmp(w3, w4, sizeof(float) * OUT * IN) == 0 && memcmp(b3, b4, sizeof(float) * OUT) == 0;
                double worst = sum_err(o3, OUT, o2, OUT, B, OUT, IN);
                double wi = sum_err(i3, IN, i1, IN, B, IN, OUT), wb = sum_err(b3, OUT, b5, OUT, 1, OUT, B);
                for (int o = 0; o < OUT; o++)   /* dW^T against dW */
                    for (int k = 0; k < IN; k++) {
                        double e = fabs((double)w3[k * OUT + o] - w5[o * IN + k]) / (1e-6 * sqrt((double)B) * (B * 0.25 + 1));
                        if (!(e <= wb)) wb = e == e ? e : INFINITY;
                    }
                if (wi > worst) worst = wi;
                if (wb > worst) worst = wb;
                if (ok && worst <= 4.0) passed++;
                else { failed++; printf("FAIL dense with W^T B=%d IN=%d OUT=%d act=%s pool=%d: bits %d, %.2f\n", B, IN,
                                        OUT, vaec_act_name((vaec_act)act), use_pool, ok, worst); }
                free(Wt); free(o3); free(o4); free(i3); free(i4); free(w3); free(w4); free(b3); free(b4); free(w5); free(b5);
            }
        free(x); free(W); free(b); free(d); free(o1); free(o2); free(i1); free(i2); free(w1); free(w2); free(b1); free(b2);
    }
    /* the sparse first layer (sparse.c): the copy holds every nonzero once, in order; the
     * forward (on W^T, unpadded rows as the VAE keeps it) and the weight gradient (dW^T)
     * match the float64 loops; the pool changes no bit; an Inf in dH sets the flag. The
     * naive path has no kernels. */
    static const int sshapes[][3] = {{1, 1, 1}, {3, 17, 5}, {33, 784, 400}, {40, 31, 130}, {257, 100, 17}, {64, 513, 48}};
    static const float dens[] = {0.0f, 0.13f, 0.5f, 1.0f};
    vaec_sparse before = vaec_sparse_mode_set(VAEC_SPARSE_ALWAYS);
    for (size_t s = 0; s < sizeof sshapes / sizeof sshapes[0]; s++)
        for (size_t dd = 0; dd < sizeof dens / sizeof dens[0]; dd++) {
            int R = sshapes[s][0], K = sshapes[s][1], N = sshapes[s][2], ldw = (N + 15) / 16 * 16;
            float *X = malloc(sizeof(float) * R * K), *W = malloc(sizeof(float) * N * K), *b = malloc(sizeof(float) * N);
            float *Wt = malloc(sizeof(float) * K * N), *H = malloc(sizeof(float) * R * ldw);
            float *H1 = malloc(sizeof(float) * R * ldw), *Hr = malloc(sizeof(float) * R * N);
            float *dH = malloc(sizeof(float) * R * ldw), *G = malloc(sizeof(float) * N * K), *G1 = malloc(sizeof(float) * N * K);
            float *Gr = malloc(sizeof(float) * N * K);
            for (int i = 0; i < R * K; i++) {
                float u = frand(&seed) + 0.5f;
                X[i] = u < dens[dd] ? 2.0f * frand(&seed) + (i % 3 ? 1.0f : 0.0f) : (i % 2 ? -0.0f : 0.0f);
            }
            for (int i = 0; i < N * K; i++) W[i] = frand(&seed);
            for (int i = 0; i < N; i++) b[i] = frand(&seed);
            for (int i = 0; i < R * ldw; i++) dH[i] = frand(&seed);
            vaec_spx sp = {0};
            int ok = vaec_spx_alloc(&sp, R, K) == VAEC_OK;
            int built = ok && vaec_spx_build(pool, X, K, R, K, &sp);
            if (!vaec_gemm_active_kernel()) {
                if (ok && !built) passed++;
                else { failed++; printf("FAIL sparse: built on the naive path\n"); }
                vaec_spx_free(&sp);
                free(X); free(W); free(b); free(Wt); free(H); free(H1); free(Hr); free(dH); free(G); free(G1); free(Gr);
                continue;
            }
            ok = ok && built;
            /* the copy, both ways */
            int64_t nnz = 0;
            for (int i = 0; ok && i < R; i++) {
                int e = 0;
                for (int k = 0; k < K; k++)
                    if (X[i * K + k] != 0.0f) {
                        ok = ok && e < sp.rcnt[i] && sp.ridx[i * sp.ldr + e] == k && sp.rval[i * sp.ldr + e] == X[i * K + k];
                        e++;
                    }
                ok = ok && e == sp.rcnt[i];
                nnz += e;
            }
            for (int k = 0; ok && k < K; k++) {
                int e = 0;
                for (int i = 0; i < R; i++)
                    if (X[i * K + k] != 0.0f) {
                        ok = ok && e < sp.ccnt[k] && sp.cidx[k * R + e] == i && sp.cval[k * R + e] == X[i * K + k];
                        e++;
                    }
                ok = ok && e == sp.ccnt[k];
            }
            ok = ok && nnz == sp.nnz;
            if (!ok) { failed++; printf("FAIL sparse copy R=%d K=%d density %.2f\n", R, K, dens[dd]); }
            else passed++;
            /* forward: tanh epilogue; on the pool and alone */
            for (int k = 0; k < K; k++) for (int j = 0; j < N; j++) Wt[k * N + j] = W[j * K + k];
            vaec_spmm_rows_naive(&sp, Wt, N, b, Hr, N, N);
            vaec_act_forward(VAEC_ACT_TANH, Hr, Hr, (int64_t)R * N);
            vaec_sparse_forward(pool, &sp, Wt, N, b, VAEC_ACT_TANH, H, ldw, N);
            vaec_sparse_forward(NULL, &sp, Wt, N, b, VAEC_ACT_TANH, H1, ldw, N);
            double worst = sum_err(H, ldw, Hr, N, R, N, K);
            for (int i = 0; i < R; i++)   /* the pool changes no bit */
                if (memcmp(H + i * ldw, H1 + i * ldw, sizeof(float) * N) != 0) worst = INFINITY;
            if (worst <= 4.0) passed++;
            else { failed++; printf("FAIL sparse forward R=%d K=%d N=%d density %.2f: %.2f\n", R, K, N, dens[dd], worst); }
            /* weight gradient, written then added, and its Inf/NaN flag */
            for (int acc = 0; acc < 2; acc++) {
                for (int i = 0; i < N * K; i++) G[i] = G1[i] = Gr[i] = frand(&seed);
                atomic_int flag = 0, flag1 = 0;
                vaec_sparse_weight_grad(pool, &sp, dH, ldw, N, G, acc, &flag);
                vaec_sparse_weight_grad(NULL, &sp, dH, ldw, N, G1, acc, &flag1);
                vaec_spmm_cols_naive(&sp, dH, ldw, Gr, N, N, acc);
                worst = sum_err(G, N, Gr, N, K, N, R);
                ok = worst <= 4.0 && memcmp(G, G1, sizeof(float) * N * K) == 0 && !flag && !flag1;
                /* an Inf in a row of dH that has a nonzero input reaches dW */
                int row = -1;
                for (int i = 0; i < R && row < 0; i++) if (sp.rcnt[i]) row = i;
                if (row >= 0) {
                    float keep = dH[row * ldw + N - 1];
                    dH[row * ldw + N - 1] = INFINITY;
                    vaec_sparse_weight_grad(pool, &sp, dH, ldw, N, G, acc, &flag);
                    dH[row * ldw + N - 1] = keep;
                    ok = ok && flag;
                }
                if (ok) passed++;
                else { failed++; printf("FAIL sparse weight grad R=%d K=%d N=%d density %.2f acc %d: %.2f, flag %d\n",
                                        R, K, N, dens[dd], acc, worst, atomic_load(&flag)); }
            }
            vaec_spx_free(&sp);
            free(X); free(W); free(b); free(Wt); free(H); free(H1); free(Hr); free(dH); free(G); free(G1); free(Gr);
        }
    vaec_sparse_mode_set(before);
    vaec_pool_destroy(pool);
    printf("gemm_check: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
