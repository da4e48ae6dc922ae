/* internal.h -- helpers shared by the C core; not part of the public API. */
#ifndef VAEC_INTERNAL_H
#define VAEC_INTERNAL_H

#include "vaec.h"
#include <stdlib.h>

/* Record an error message for vaec_last_error() and return `status`. */
vaec_status vaec_fail(vaec_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void vaec_clear_error(void);

/* 64-byte aligned allocation (zeroed); free with vaec_free. NULL on overflow/failure. */
void *vaec_alloc(size_t count, size_t size);
void vaec_free(void *p);

/* GEMM blocking shared by every ISA: a task computes a GEMM_MB x GEMM_NB block of C,
 * looping over K in GEMM_KC slices. Only KC affects the arithmetic, so results do not
 * depend on how blocks are spread over threads. MB is a multiple of every MR (4, 6),
 * NB of every NR (4, 8, 16, 32). */
#define GEMM_MB 96
#define GEMM_NB 256
#define GEMM_KC 256
#define GEMM_SCRATCH_FLOATS ((size_t)GEMM_MB * GEMM_KC + (size_t)GEMM_KC * GEMM_NB)

/* Per-thread scratch of GEMM_SCRATCH_FLOATS floats, allocated with the pool. */
float *vaec_pool_scratch(vaec_pool *pool, int tid);

typedef struct {
    int transA, transB;
    int64_t M, N, K;
    const float *A; int64_t lda;
    const float *B; int64_t ldb;
    float beta;
    float *C; int64_t ldc;
} vaec_gemm_args;

/* One ISA's block routine: computes block (bi, bj) of C using `scratch`. */
typedef void (*vaec_gemm_block_fn)(const vaec_gemm_args *g, int64_t bi, int64_t bj, float *scratch);
void vaec_gemm_block_scalar(const vaec_gemm_args *g, int64_t bi, int64_t bj, float *scratch);
/* One ISA's routine for M <= GEMM_SMALL_M rows (op(A) not transposed): columns [j0, j1). */
typedef void (*vaec_gemm_small_fn)(const vaec_gemm_args *g, int64_t j0, int64_t j1);
#define GEMM_SMALL_M 4
void vaec_gemm_small_m_scalar(const vaec_gemm_args *g, int64_t j0, int64_t j1);
/* The peak-FMA probe of each ISA: 24 * VF_LEN * iters flops. */
float vaec_peak_fma_scalar(int64_t iters);
#if defined(__x86_64__) || defined(_M_X64)
#define VAEC_X86 1
void vaec_gemm_block_avx2(const vaec_gemm_args *g, int64_t bi, int64_t bj, float *scratch);
void vaec_gemm_block_avx512(const vaec_gemm_args *g, int64_t bi, int64_t bj, float *scratch);
void vaec_gemm_small_m_avx2(const vaec_gemm_args *g, int64_t j0, int64_t j1);
void vaec_gemm_small_m_avx512(const vaec_gemm_args *g, int64_t j0, int64_t j1);
float vaec_peak_fma_avx2(int64_t iters);
float vaec_peak_fma_avx512(int64_t iters);
#endif
#if defined(__aarch64__)
#define VAEC_ARM64 1
void vaec_gemm_block_neon(const vaec_gemm_args *g, int64_t bi, int64_t bj, float *scratch);
void vaec_gemm_small_m_neon(const vaec_gemm_args *g, int64_t j0, int64_t j1);
float vaec_peak_fma_neon(int64_t iters);
#endif

/* Dense layers on row-strided buffers (vaec_dense_* are the contiguous case). */
void vaec_dense_forward_strided(vaec_pool *pool, float *out, int64_t ldo, const float *in, int64_t ldi,
                                const float *W, const float *b, int64_t B, int64_t IN, int64_t OUT);
void vaec_dense_backward_strided(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                 const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                 const float *W, int64_t B, int64_t IN, int64_t OUT);

/* Split [0, n) rows into tasks of about `grain` rows for the pool. */
static inline int64_t vaec_ntasks(int64_t n, int64_t grain) {
    return n <= 0 ? 0 : (n + grain - 1) / grain;
}

#endif
