/* dense.c -- the dense (fully connected) layer: forward and backward on the GEMM. */
#include "internal.h"

/* out(B,OUT) = in(B,IN) . W(OUT,IN)^T + b(OUT) */
void vaec_dense_forward(vaec_pool *pool, float *out, const float *in, const float *W,
                        const float *b, int64_t B, int64_t IN, int64_t OUT) {
    for (int64_t i = 0; i < B; i++)
        for (int64_t o = 0; o < OUT; o++) out[i * OUT + o] = b ? b[o] : 0.0f;
    vaec_sgemm(pool, 0, 1, B, OUT, IN, in, IN, W, IN, 1.0f, out, OUT);
}

typedef struct { float *db; const float *dout; int64_t B, OUT; } colsum_job;
enum { COLSUM_GRAIN = 256 };

static void colsum_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    colsum_job *j = ctx;
    int64_t o0 = t * COLSUM_GRAIN, o1 = o0 + COLSUM_GRAIN < j->OUT ? o0 + COLSUM_GRAIN : j->OUT;
    double acc[COLSUM_GRAIN] = {0};
    for (int64_t i = 0; i < j->B; i++) {
        const float *row = j->dout + i * j->OUT;
        for (int64_t o = o0; o < o1; o++) acc[o - o0] += row[o];
    }
    for (int64_t o = o0; o < o1; o++) j->db[o] += (float)acc[o - o0];
}

/* dW(OUT,IN) += dout(B,OUT)^T . in(B,IN); db(OUT) += sum over B of dout (float64);
 * din(B,IN) = dout . W when din != NULL. */
void vaec_dense_backward(vaec_pool *pool, float *din, float *dW, float *db, const float *dout,
                         const float *in, const float *W, int64_t B, int64_t IN, int64_t OUT) {
    if (B <= 0) return;
    if (dW) vaec_sgemm(pool, 1, 0, OUT, IN, B, dout, OUT, in, IN, 1.0f, dW, IN);
    if (db) {
        colsum_job j = {db, dout, B, OUT};
        vaec_pool_run(pool, colsum_task, &j, vaec_ntasks(OUT, COLSUM_GRAIN));
    }
    if (din) vaec_sgemm(pool, 0, 0, B, IN, OUT, dout, OUT, W, IN, 0.0f, din, IN);
}
