/* internal.h -- helpers shared by the C core; not part of the public API. */
#ifndef VAEC_INTERNAL_H
#define VAEC_INTERNAL_H

#include "vaec.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Record an error message for vaec_last_error() and return `status`. */
vaec_status vaec_fail(vaec_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void vaec_clear_error(void);
/* The errno of a file error, for vaec_last_errno: set right before vaec_fail(VAEC_ERR_IO or
 * VAEC_ERR_NOTFOUND, ...) (any other status clears it). */
void vaec_set_errno(int err);

/* 64-byte aligned allocation (zeroed); free with vaec_free. NULL on overflow/failure. */
void *vaec_alloc(size_t count, size_t size);
/* The machine's physical memory in bytes (SIZE_MAX when unknown): vaec_alloc refuses any
 * larger block, and a model whose parameter arena alone would exceed it is refused before
 * anything is allocated. */
size_t vaec_memory_size(void);
void vaec_free(void *p);

/* GEMM blocking shared by every ISA. vaec_sgemm splits C into blocks of at most GEMM_MB
 * rows (more when K < GEMM_KC: mb * K <= GEMM_MB * GEMM_KC; any number of columns), sized
 * from the shape and the thread count; a task computes one block, looping over K in
 * GEMM_KC slices: it packs op(A)'s rows of the slice once, and op(B) GEMM_NG columns at a
 * time right before the micro-kernels use them. Only KC affects the arithmetic, so results
 * do not depend on the split (nor on the thread count). GEMM_MB is a multiple of every MR
 * (4, 6). */
#define GEMM_MB 264
#define GEMM_KC 256
#define GEMM_NG 64    /* op(B) is packed GEMM_NG columns at a time (a multiple of every NR) */
#define GEMM_PAD 16   /* floats after each packed area: the AVX2 packs store 8 lanes at a time */
#define GEMM_SCRATCH_FLOATS ((size_t)GEMM_MB * GEMM_KC + (size_t)GEMM_KC * GEMM_NG + 2 * GEMM_PAD)


/* The time spent in convolution layers (Conv2d, ConvTranspose2d: forward and backward, all
 * of their work) and their multiply-adds, summed while on: returns the sums since the last
 * call, zeroes them and turns the account on or off (layer_conv.c; for the benchmark). */
void vaec_conv_timing(int on, double *seconds, double *macs);

/* Makes the calling thread's GEMM packing buffer now (gemm.c keeps one per thread, freed
 * when the thread ends); a pool's worker calls it when it starts. */
void vaec_gemm_thread_init(void);

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

/* The time the calling threads spent in GEMMs (vaec_sgemm_fused, wall clock) and their
 * flops (2 M N K each), summed while on: returns the sums since the last call (either
 * pointer may be NULL), zeroes them and turns the account on or off. For the benchmark's
 * dense-layer figure; off costs one relaxed load per GEMM. */
void vaec_gemm_timing(int on, double *seconds, double *flops);

/* C(M,N) = beta*C + op(A) op(B), then the epilogue (NULL: none); see vaec_sgemm. */
void vaec_sgemm_fused(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                      const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc, const vaec_gemm_epilogue *epi);

/* One ISA's block routine: rows [i0, i0+mb) (mb * min(K, GEMM_KC) <= GEMM_MB * GEMM_KC)
 * and columns [j0, j0+nb) of C, using `scratch` (GEMM_SCRATCH_FLOATS). */
typedef void (*vaec_gemm_block_fn)(const vaec_gemm_args *g, int64_t i0, int64_t mb, int64_t j0, int64_t nb,
                                   float *scratch);
/* One ISA's routine for M <= GEMM_SMALL_M rows (op(A) not transposed): columns [j0, j1). */
typedef void (*vaec_gemm_small_fn)(const vaec_gemm_args *g, int64_t j0, int64_t j1);
#define GEMM_SMALL_M 4
/* A sparse copy of the R x K float matrix X, both ways (sparse.c builds it):
 * by rows, row i's nonzeros are (ridx, rval)[i*ldr, i*ldr + rcnt[i]), columns increasing
 * (ldr = K + 16: a vector store may run 15 slots past a row's last nonzero);
 * by columns, column k's are (cidx, cval)[k*R, k*R + ccnt[k]), rows increasing. */
typedef struct {
    int64_t R, K, ldr, nnz, cap_rows;
    int32_t *rcnt, *ccnt, *rsplit;  /* R; K; per row, where its entries of each 64 columns begin */
    int32_t *ridx, *cidx;           /* cap_rows * ldr; K * cap_rows */
    float *rval, *cval;
    float *owned;                   /* the memory of a copy made by vaec_spx_alloc (else the caller's) */
} vaec_spx;
/* One ISA's sparse-times-dense kernels (the first layer on sparse inputs; sparse.c).
 * rows: C[i, j0:j1) = act(bias[j] + sum_e rval[e] * Bt[ridx[e], j]) for rows [i0, i1)
 *   of X (Bt (K, >= j1), row stride ldb; e = the epilogue, bias and act only).
 * cols: C[k, j] (+)= sum_e cval[e] * D[cidx[e], j] for columns k in [k0, k1) of X and
 *   j in [j0, j1) (D (R, >= j1), row stride ldd; C (K, >= j1), row stride ldc: the
 *   layout of a transposed weight's gradient; added when accumulate); with nonfinite,
 *   set to 1 if a C element it wrote is Inf or NaN.
 * Every element is summed in the same order whatever the split, so results do not
 * depend on the thread count. */
typedef void (*vaec_spmm_rows_fn)(const vaec_spx *x, const float *Bt, int64_t ldb, const vaec_gemm_epilogue *e,
                                  float *C, int64_t ldc, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
typedef void (*vaec_spmm_cols_fn)(const vaec_spx *x, const float *D, int64_t ldd, float *C, int64_t ldc,
                                  int64_t k0, int64_t k1, int64_t j0, int64_t j1, int accumulate,
                                  atomic_int *nonfinite);
/* rows [i0, i1) of X (R, K), row stride ldx, into x's by-rows form (rcnt and the entries);
 * NULL in the table of an ISA without a kernel of its own (sparse.c has a portable one) */
typedef void (*vaec_spx_rows_fn)(const float *X, int64_t ldx, int64_t i0, int64_t i1, vaec_spx *x);
/* One ISA's kernels and register tile. */
typedef struct {
    vaec_gemm_block_fn block;
    vaec_gemm_small_fn small;
    int mr, nr;
    int nq;   /* column blocks are multiples of it: the narrowest tile as fast per column (one vector) */
    vaec_spmm_rows_fn spmm_rows;
    vaec_spmm_cols_fn spmm_cols;
    vaec_spx_rows_fn spx_rows;
} vaec_gemm_kernel;
/* The kernels of the active ISA; NULL on the naive path. */
const vaec_gemm_kernel *vaec_gemm_active_kernel(void);

/* The sparse first layer (sparse.c; the mode is vaec.h's vaec_sparse_mode). AUTO takes
 * the sparse path for at least SPARSE_MIN_ROWS rows with at most SPARSE_MAX_DENSITY of
 * them nonzero (vaec.h states these numbers). */
#define SPARSE_MIN_ROWS 32
#define SPARSE_MAX_DENSITY 0.3
/* Room for R rows of K columns: counted (buf NULL) or laid out in buf (floats; 64-byte
 * aligned); or allocated, which vaec_spx_free releases (and zeroes *s). */
int64_t vaec_spx_layout(vaec_spx *s, float *buf, int64_t R, int64_t K);
vaec_status vaec_spx_alloc(vaec_spx *s, int64_t R, int64_t K);
void vaec_spx_free(vaec_spx *s);
/* Builds the sparse copy of X (R, K) (R <= the rows allocated) and returns 1 when the
 * mode, the ISA, R and the density call for the sparse path; else 0 (s not built). */
int vaec_spx_build(vaec_pool *pool, const float *X, int64_t ldx, int64_t R, int64_t K, vaec_spx *s);
/* H(R, N) = act(X Wt + b) with Wt = W^T (K, N), row stride ldw. */
void vaec_sparse_forward(vaec_pool *pool, const vaec_spx *x, const float *Wt, int64_t ldw, const float *b,
                         vaec_act act, float *H, int64_t ldh, int64_t N);
/* dWt(K, N) (+)= X^T dH (dH (R, N), row stride ldd; dWt contiguous): written, or added
 * when accumulate; with nonfinite, set to 1 if dWt then holds an Inf or a NaN. */
void vaec_sparse_weight_grad(vaec_pool *pool, const vaec_spx *x, const float *dH, int64_t ldd, int64_t N,
                             float *dWt, int accumulate, atomic_int *nonfinite);
/* The references: plain loops with float64 sums, on all of x. */
void vaec_spmm_rows_naive(const vaec_spx *x, const float *Bt, int64_t ldb, const float *bias, float *C, int64_t ldc,
                          int64_t N);
void vaec_spmm_cols_naive(const vaec_spx *x, const float *D, int64_t ldd, float *C, int64_t ldc, int64_t N,
                          int accumulate);  /* C (K, N) as the kernel's */
/* db(OUT) (+)= the column sums of dout (B, OUT) in float64 (dense.c); nonfinite as above. */
void vaec_dense_bias_grad(vaec_pool *pool, float *db, const float *dout, int64_t ldd, int64_t B, int64_t OUT,
                          int accumulate, atomic_int *nonfinite);
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
 * same bits. Where they take `wt`, W (and dW) may be given transposed: (IN, OUT). */
void vaec_dense_forward_act_strided(vaec_pool *pool, float *out, int64_t ldo, const float *in, int64_t ldi,
                                    const float *W, int wt, const float *b, vaec_act act, int64_t B, int64_t IN,
                                    int64_t OUT);
void vaec_dense_forward_act_strided_naive(vaec_pool *pool, float *out, int64_t ldo, const float *in,
                                          int64_t ldi, const float *W, int wt, const float *b, vaec_act act,
                                          int64_t B, int64_t IN, int64_t OUT);
void vaec_dense_backward_act_strided(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                     const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                     const float *W, vaec_act act, int64_t B, int64_t IN, int64_t OUT);
/* The same, with the parameter gradients written instead of added when !accumulate, and
 * checked for Inf and NaN as they are written when nonfinite != NULL (set to 1 then). */
void vaec_dense_backward_act_strided_ex(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                        const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                        const float *W, int wt, vaec_act act, int64_t B, int64_t IN, int64_t OUT,
                                        int accumulate, atomic_int *nonfinite);
void vaec_dense_backward_act_strided_naive(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                           const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                           const float *W, int wt, vaec_act act, int64_t B, int64_t IN,
                                           int64_t OUT);

/* A long call's check (interrupt.c): VAEC_ERR_INTERRUPTED, with its message, once this armed
 * thread was asked to stop; VAEC_OK otherwise. */
vaec_status vaec_interrupt_check(void);
/* While a loader builds the model of the file `path`, holding n parameters (n >= 0; -1 ends
 * it), vaec_arena_alloc on this thread refuses any other count (VAEC_ERR_FORMAT, naming the
 * file) before allocating anything of the model's size: a small file whose config declares
 * a huge model is refused without trying to allocate it. */
void vaec_arena_expect(int64_t n, const char *path);
/* vaec_arena_step, told whether a gradient is non-finite by a caller that checked
 * every one as it was written (nonfinite 0 or 1); -1: check them here (a pass over the
 * gradients, as vaec_arena_step does). */
vaec_status vaec_arena_adam_step_ex(vaec_arena *a, vaec_pool *pool, float lr, int nonfinite);
/* The same for vaec_arena_step_range. */
vaec_status vaec_arena_step_range_ex(vaec_arena *a, vaec_pool *pool, float lr, int64_t lo, int64_t hi, int nonfinite);

/* ------------------------------------------------------- convolutions (conv.c) */
/* An example's input (C, H, W) under a kernel (kh, kw) at stride (sh, sw) with zero padding
 * (ph, pw), and the output size (Ho, Wo) that gives. */
typedef struct {
    int64_t C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
    int nhwc;   /* the input is channels last, (H, W, C), and a patch is in (i, j, c) order
                   (else channels first and (c, i, j), torch's weight order) */
} vaec_conv_geom;
/* (in + 2p - k) / s + 1 */
int64_t vaec_conv_out_size(int64_t in, int k, int s, int p);
/* col (G Ho Wo, C kh kw): one row per output pixel of examples x[0..G) (row stride ldx),
 * the patch in (c, i, j) order (channels-first input) or (i, j, c) (g->nhwc), zeros off the
 * image; and its adjoint, dx (written) = the sum of every patch entry over the pixel it
 * came from. */
void vaec_conv_im2col(vaec_pool *pool, const vaec_conv_geom *g, const float *x, int64_t ldx, int64_t G, float *col);
void vaec_conv_col2im(vaec_pool *pool, const vaec_conv_geom *g, const float *col, int64_t G, float *dx, int64_t lddx);
/* G examples between (P, Cn) channels last (row stride lds) and (Cn, P) channels first. */
void vaec_conv_nhwc_to_nchw(vaec_pool *pool, const float *src, int64_t lds, float *dst, int64_t ldd, int64_t G,
                            int64_t P, int64_t Cn);
void vaec_conv_nchw_to_nhwc(vaec_pool *pool, const float *src, int64_t lds, float *dst, int64_t ldd, int64_t G,
                            int64_t P, int64_t Cn);
/* W (O, C, kh, kw) -> Wp (O, kh, kw, C), the weight in (i, j, c) patch order; and back,
 * Wp's values written to (or, with add, added to) W's places. */
void vaec_conv_weight_to_ijc(const float *W, float *Wp, int64_t O, int64_t C, int64_t kh, int64_t kw);
void vaec_conv_weight_from_ijc(const float *Wp, float *W, int64_t O, int64_t C, int64_t kh, int64_t kw, int add);
/* The reference: a direct convolution, float64 sums, W (Cout, C kh kw) as torch's Conv2d
 * weight; its backward writes dx (may be NULL), dW and db over all R examples. */
void vaec_conv2d_forward_naive(const vaec_conv_geom *g, int64_t Cout, float *y, int64_t ldy, const float *x,
                               int64_t ldx, const float *W, const float *b, int64_t R);
void vaec_conv2d_backward_naive(const vaec_conv_geom *g, int64_t Cout, float *dx, int64_t lddx, float *dW, float *db,
                                const float *dy, int64_t lddy, const float *x, int64_t ldx, const float *W,
                                int64_t R);

/* 1 when p[0..n) are all +0 or -0 (the bits with the sign shifted out): the zero test of
 * the sparse copies and of the few-row GEMM's skipped vectors; the compiler vectorizes it. */
static inline int vaec_all_zero(const float *p, int64_t n) {
    uint32_t acc = 0;
    for (int64_t q = 0; q < n; q++) {
        uint32_t u;
        memcpy(&u, p + q, sizeof u);
        acc |= u << 1;
    }
    return acc == 0;
}

/* Split [0, n) rows into tasks of about `grain` rows for the pool. */
static inline int64_t vaec_ntasks(int64_t n, int64_t grain) {
    return n <= 0 ? 0 : (n + grain - 1) / grain;
}

#endif
