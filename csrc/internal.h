/* internal.h -- helpers shared by the C core; not part of the public API. */
#ifndef VAEC_INTERNAL_H
#define VAEC_INTERNAL_H

#include "vaec.h"
#include <stdatomic.h>
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

/* GEMM blocking shared by every ISA. vaec_sgemm splits C into blocks of at most GEMM_MB
 * rows (any number of columns), sized from the shape and the thread count; a task
 * computes one block, looping over K in GEMM_KC slices: it packs op(A)'s rows of the
 * slice once, and op(B) GEMM_NG columns at a time right before the micro-kernels use
 * them. Only KC affects the arithmetic, so results do not depend on the split (nor on the
 * thread count). GEMM_MB is a multiple of every MR (4, 6). */
#define GEMM_MB 264
#define GEMM_KC 256
#define GEMM_NG 64    /* op(B) is packed GEMM_NG columns at a time (a multiple of every NR) */
#define GEMM_PAD 16   /* floats after each packed area: the AVX2 packs store 8 lanes at a time */
#define GEMM_SCRATCH_FLOATS ((size_t)GEMM_MB * GEMM_KC + (size_t)GEMM_KC * GEMM_NG + 2 * GEMM_PAD)

/* Per-thread scratch of GEMM_SCRATCH_FLOATS floats, allocated with the pool. */
float *vaec_pool_scratch(vaec_pool *pool, int tid);

/* What happens to C once the product is complete: the fused epilogue of the dense layers.
 *   bias != NULL: C = op(A) op(B) + bias[j] (beta must be 0); the same bits as C = bias
 *                 followed by the product with beta = 1.
 *   act, y == NULL: C = act(C) (forward);  act, y != NULL: C *= act'(.) from the
 *                 activation's output y (M, N), row stride ldy (backward).
 * Each element gets the same bits as the separate elementwise pass (vaec_act_*).
 *   nonfinite:     after the rest, C's rows and columns are checked for Inf and NaN. */
typedef struct {
    const float *bias;
    vaec_act act;
    const float *y;
    int64_t ldy;
    atomic_int *nonfinite;  /* != NULL: set to 1 when an element of the finished C is Inf or NaN
                               (checked on each tile while it is in L1) */
} vaec_gemm_epilogue;

typedef struct {
    int transA, transB;
    int64_t M, N, K;
    const float *A; int64_t lda;
    const float *B; int64_t ldb;
    float beta;
    float *C; int64_t ldc;
    const vaec_gemm_epilogue *epi;  /* NULL: none */
} vaec_gemm_args;

/* C(M,N) = beta*C + op(A) op(B), then the epilogue (NULL: none); see vaec_sgemm. */
void vaec_sgemm_fused(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                      const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc, const vaec_gemm_epilogue *epi);

/* One ISA's block routine: rows [i0, i0+mb) (mb <= GEMM_MB) and columns [j0, j0+nb) of C,
 * using `scratch` (GEMM_SCRATCH_FLOATS). */
typedef void (*vaec_gemm_block_fn)(const vaec_gemm_args *g, int64_t i0, int64_t mb, int64_t j0, int64_t nb,
                                   float *scratch);
/* One ISA's routine for M <= GEMM_SMALL_M rows (op(A) not transposed): columns [j0, j1). */
typedef void (*vaec_gemm_small_fn)(const vaec_gemm_args *g, int64_t j0, int64_t j1);
#define GEMM_SMALL_M 4
/* One ISA's kernels and register tile. */
typedef struct {
    vaec_gemm_block_fn block;
    vaec_gemm_small_fn small;
    int mr, nr;
} vaec_gemm_kernel;
extern const vaec_gemm_kernel vaec_gemm_kernel_scalar;
/* The peak-FMA probe of each ISA: 24 * VF_LEN * iters flops. */
float vaec_peak_fma_scalar(int64_t iters);
#if defined(__x86_64__) || defined(_M_X64)
#define VAEC_X86 1
extern const vaec_gemm_kernel vaec_gemm_kernel_avx2, vaec_gemm_kernel_avx512;
float vaec_peak_fma_avx2(int64_t iters);
float vaec_peak_fma_avx512(int64_t iters);
#endif
#if defined(__aarch64__)
#define VAEC_ARM64 1
extern const vaec_gemm_kernel vaec_gemm_kernel_neon;
float vaec_peak_fma_neon(int64_t iters);
#endif

/* Dense layers on row-strided buffers (vaec_dense_* are the contiguous case). */
void vaec_dense_forward_strided(vaec_pool *pool, float *out, int64_t ldo, const float *in, int64_t ldi,
                                const float *W, const float *b, int64_t B, int64_t IN, int64_t OUT);
void vaec_dense_backward_strided(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                 const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                 const float *W, int64_t B, int64_t IN, int64_t OUT);
/* The fused forms. Forward: out(B,OUT) = act(in . W^T + b), bias and activation applied to
 * each output tile in the GEMM's epilogue. Backward: as vaec_dense_backward_strided, and
 * then din *= act'(in) (in is the output of the activation `act` of the layer below), in
 * din's epilogue. The _naive forms are the unfused passes (the reference); both give the
 * same bits. */
void vaec_dense_forward_act_strided(vaec_pool *pool, float *out, int64_t ldo, const float *in, int64_t ldi,
                                    const float *W, const float *b, vaec_act act, int64_t B, int64_t IN,
                                    int64_t OUT);
void vaec_dense_forward_act_strided_naive(vaec_pool *pool, float *out, int64_t ldo, const float *in,
                                          int64_t ldi, const float *W, const float *b, vaec_act act, int64_t B,
                                          int64_t IN, int64_t OUT);
void vaec_dense_backward_act_strided(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                     const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                     const float *W, vaec_act act, int64_t B, int64_t IN, int64_t OUT);
/* The same, with the parameter gradients written instead of added when !accumulate, and
 * checked for Inf and NaN as they are written when nonfinite != NULL (set to 1 then). */
void vaec_dense_backward_act_strided_ex(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                        const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                        const float *W, vaec_act act, int64_t B, int64_t IN, int64_t OUT,
                                        int accumulate, atomic_int *nonfinite);
void vaec_dense_backward_act_strided_naive(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                           const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                           const float *W, vaec_act act, int64_t B, int64_t IN, int64_t OUT);

/* vaec_arena_adam_step, told whether a gradient is non-finite by a caller that checked
 * every one as it was written (nonfinite 0 or 1); -1: check them here (a pass over the
 * gradients, as vaec_arena_adam_step does). */
vaec_status vaec_arena_adam_step_ex(vaec_arena *a, vaec_pool *pool, float lr, int nonfinite);

/* Split [0, n) rows into tasks of about `grain` rows for the pool. */
static inline int64_t vaec_ntasks(int64_t n, int64_t grain) {
    return n <= 0 ? 0 : (n + grain - 1) / grain;
}

#endif
