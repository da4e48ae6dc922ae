/* dense.c -- the dense (fully connected) layer: forward and backward on the GEMM.
 * The _strided forms take row strides (ld*) so callers can keep padded buffers; the
 * plain forms of vaec.h are the contiguous case. The _act forms fuse the bias and the
 * activation (forward) or its derivative (backward) into the GEMM's epilogue; their
 * _naive twins are the separate passes, kept as the reference (same bits). */
#include "internal.h"
#include <string.h>

/* out(B,OUT) = act(in(B,IN) . W(OUT,IN)^T + b(OUT)): bias and activation in the GEMM's
 * epilogue, tile by tile. wt: W is given as W^T (IN, OUT). */
void vaec_dense_forward_act_strided(vaec_pool *pool, float *out, int64_t ldo, const float *in, int64_t ldi,
                                    const float *W, int wt, const float *b, vaec_act act, int64_t B, int64_t IN,
                                    int64_t OUT) {
    vaec_gemm_epilogue e = {b, act, NULL, 0, NULL};
    vaec_sgemm_fused(pool, 0, !wt, B, OUT, IN, in, ldi, W, wt ? OUT : IN, 0.0f, out, ldo,
                     b || act != VAEC_ACT_IDENTITY ? &e : NULL);
}

/* The unfused reference: out = b row by row, the GEMM adds in . W^T, then act row by row. */
void vaec_dense_forward_act_strided_naive(vaec_pool *pool, float *out, int64_t ldo, const float *in,
                                          int64_t ldi, const float *W, int wt, const float *b, vaec_act act,
                                          int64_t B, int64_t IN, int64_t OUT) {
    for (int64_t i = 0; i < B; i++) {
        if (b) memcpy(out + i * ldo, b, (size_t)OUT * sizeof(float));
        else memset(out + i * ldo, 0, (size_t)OUT * sizeof(float));
    }
    vaec_sgemm(pool, 0, !wt, B, OUT, IN, in, ldi, W, wt ? OUT : IN, 1.0f, out, ldo);
    for (int64_t i = 0; i < B; i++) vaec_act_forward(act, out + i * ldo, out + i * ldo, OUT);
}

/* out(B,OUT) = in(B,IN) . W(OUT,IN)^T + b(OUT) */
void vaec_dense_forward_strided(vaec_pool *pool, float *out, int64_t ldo, const float *in, int64_t ldi,
                                const float *W, const float *b, int64_t B, int64_t IN, int64_t OUT) {
    vaec_dense_forward_act_strided(pool, out, ldo, in, ldi, W, 0, b, VAEC_ACT_IDENTITY, B, IN, OUT);
}

typedef struct { float *db; const float *dout; int64_t ldd, B, OUT; int accumulate; atomic_int *nonfinite; } colsum_job;
enum { COLSUM_GRAIN = 256, COLSUM_SERIAL = 16384 /* elements below which the caller sums alone */ };

/* db[o] (+)= sum over rows of dout[., o], in float64, rows in order (thread-count free) */
static void colsum_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    colsum_job *j = ctx;
    int64_t o0 = t * COLSUM_GRAIN, o1 = o0 + COLSUM_GRAIN < j->OUT ? o0 + COLSUM_GRAIN : j->OUT;
    double acc[COLSUM_GRAIN] = {0};
    for (int64_t i = 0; i < j->B; i++) {
        const float *row = j->dout + i * j->ldd;
        for (int64_t o = o0; o < o1; o++) acc[o - o0] += row[o];
    }
    if (j->accumulate)
        for (int64_t o = o0; o < o1; o++) j->db[o] += (float)acc[o - o0];
    else
        for (int64_t o = o0; o < o1; o++) j->db[o] = (float)acc[o - o0];
    if (j->nonfinite && vaec_check_range(j->db + o0, o1 - o0, 0.0f, 0.0f, 0) >= 0)
        atomic_store_explicit(j->nonfinite, 1, memory_order_relaxed);
}

void vaec_dense_bias_grad(vaec_pool *pool, float *db, const float *dout, int64_t ldd, int64_t B, int64_t OUT,
                          int accumulate, atomic_int *nonfinite) {
    colsum_job j = {db, dout, ldd, B, OUT, accumulate, nonfinite};
    vaec_pool_run(B * OUT < COLSUM_SERIAL ? NULL : pool, colsum_task, &j, vaec_ntasks(OUT, COLSUM_GRAIN));
}

/* dW(OUT,IN) (+)= dout^T . in and db(OUT) (+)= colsum(dout), added when `accumulate`,
 * else written (no clearing pass before a layer's first gradient); writes din = dout . W
 * when din != NULL, then din *= act'(in) in the GEMM's epilogue (in = act's output).
 * nonfinite != NULL: set to 1 if dW or db holds an Inf or NaN afterwards, checked as they
 * are written (no pass over them later). wt: W and dW are W^T and dW^T (IN, OUT). */
void vaec_dense_backward_act_strided_ex(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                        const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                        const float *W, int wt, vaec_act act, int64_t B, int64_t IN, int64_t OUT,
                                        int accumulate, atomic_int *nonfinite) {
    if (B <= 0) {
        if (!accumulate) {
            if (dW) memset(dW, 0, (size_t)(OUT * IN) * sizeof(float));
            if (db) memset(db, 0, (size_t)OUT * sizeof(float));
        } else if (nonfinite && ((dW && vaec_check_range(dW, OUT * IN, 0.0f, 0.0f, 0) >= 0) ||
                                 (db && vaec_check_range(db, OUT, 0.0f, 0.0f, 0) >= 0))) {
            atomic_store_explicit(nonfinite, 1, memory_order_relaxed);  /* nothing added: as they are */
        }
        return;
    }
    if (dW) {
        vaec_gemm_epilogue chk = {NULL, VAEC_ACT_IDENTITY, NULL, 0, nonfinite};
        if (wt)
            vaec_sgemm_fused(pool, 1, 0, IN, OUT, B, in, ldi, dout, ldd, accumulate ? 1.0f : 0.0f, dW, OUT,
                             nonfinite ? &chk : NULL);
        else
            vaec_sgemm_fused(pool, 1, 0, OUT, IN, B, dout, ldd, in, ldi, accumulate ? 1.0f : 0.0f, dW, IN,
                             nonfinite ? &chk : NULL);
    }
    if (db) vaec_dense_bias_grad(pool, db, dout, ldd, B, OUT, accumulate, nonfinite);
    if (din) {
        vaec_gemm_epilogue e = {NULL, act, in, ldi, NULL};
        vaec_sgemm_fused(pool, 0, wt, B, IN, OUT, dout, ldd, W, wt ? OUT : IN, 0.0f, din, ldin,
                         act != VAEC_ACT_IDENTITY ? &e : NULL);
    }
}

/* Adds dW(OUT,IN) += dout^T . in and db(OUT) += colsum(dout); writes din = dout . W when
 * din != NULL, then din *= act'(in) in the GEMM's epilogue (in = act's output). */
void vaec_dense_backward_act_strided(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                     const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                     const float *W, vaec_act act, int64_t B, int64_t IN, int64_t OUT) {
    vaec_dense_backward_act_strided_ex(pool, din, ldin, dW, db, dout, ldd, in, ldi, W, 0, act, B, IN, OUT, 1, NULL);
}

/* The unfused reference: the backward pass, then din *= act'(in) row by row. */
void vaec_dense_backward_act_strided_naive(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                           const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                           const float *W, int wt, vaec_act act, int64_t B, int64_t IN,
                                           int64_t OUT) {
    if (B <= 0) return;
    if (dW && wt) vaec_sgemm(pool, 1, 0, IN, OUT, B, in, ldi, dout, ldd, 1.0f, dW, OUT);
    else if (dW) vaec_sgemm(pool, 1, 0, OUT, IN, B, dout, ldd, in, ldi, 1.0f, dW, IN);
    if (db) vaec_dense_bias_grad(pool, db, dout, ldd, B, OUT, 1, NULL);
    if (din) {
        vaec_sgemm(pool, 0, wt, B, IN, OUT, dout, ldd, W, wt ? OUT : IN, 0.0f, din, ldin);
        for (int64_t i = 0; i < B; i++) vaec_act_backward(act, din + i * ldin, in + i * ldi, IN);
    }
}

/* Adds dW(OUT,IN) += dout^T . in and db(OUT) += colsum(dout); writes din = dout . W when
 * din != NULL. */
void vaec_dense_backward_strided(vaec_pool *pool, float *din, int64_t ldin, float *dW, float *db,
                                 const float *dout, int64_t ldd, const float *in, int64_t ldi,
                                 const float *W, int64_t B, int64_t IN, int64_t OUT) {
    vaec_dense_backward_act_strided(pool, din, ldin, dW, db, dout, ldd, in, ldi, W, VAEC_ACT_IDENTITY, B, IN, OUT);
}

void vaec_dense_forward(vaec_pool *pool, float *out, const float *in, const float *W,
                        const float *b, int64_t B, int64_t IN, int64_t OUT) {
    vaec_dense_forward_strided(pool, out, OUT, in, IN, W, b, B, IN, OUT);
}

void vaec_dense_backward(vaec_pool *pool, float *din, float *dW, float *db, const float *dout,
                         const float *in, const float *W, int64_t B, int64_t IN, int64_t OUT) {
    vaec_dense_backward_strided(pool, din, IN, dW, db, dout, OUT, in, IN, W, B, IN, OUT);
}
