/* gemm_naive.c -- the reference GEMM: a plain triple loop with float64 accumulation.
 * Kept beside the packed kernels as the thing they are tested against (and the
 * VAEC_ISA=naive fallback). */
#include "internal.h"

void vaec_sgemm_naive(int transA, int transB, int64_t M, int64_t N, int64_t K,
                      const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = beta != 0.0f ? (double)C[i * ldc + j] : 0.0;
            for (int64_t k = 0; k < K; k++) {
                float a = transA ? A[k * lda + i] : A[i * lda + k];
                float b = transB ? B[j * ldb + k] : B[k * ldb + j];
                s += (double)a * (double)b;
            }
            C[i * ldc + j] = (float)s;
        }
}
