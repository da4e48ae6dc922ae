/* sparse.c -- a dense layer whose input is mostly zeros (the first layer on MNIST-like
 * data: a binarized digit has about 13 % of its pixels on, a grey one about 19 % nonzero).
 *
 * A product with such an input only needs its nonzeros. vaec_spx_build copies the input
 * both ways (by rows, by columns) and says whether it is sparse enough to be worth it.
 * The layer keeps its weight as W^T (IN, OUT) in the arena (vaec_arena_add_linear_wt), so
 * the forward pass sums, per row, the rows of W^T at the row's nonzero columns, and the
 * weight gradient sums, per input column, the rows of dH at that column's nonzero rows
 * straight into the rows of dW^T: neither needs a transpose. The kernels are in
 * gemm_kernel.inc, one per ISA; the naive path has none and stays dense.
 *
 * The arithmetic differs from the dense GEMM only in the order of the sums (and in the
 * products with zero it leaves out); each element is summed in one fixed order whatever
 * the split, so results do not depend on the thread count. The mode (vaec.h) is AUTO,
 * OFF or ALWAYS; the tests run every path both ways. */
#include "internal.h"
#include <string.h>

/* ------------------------------------------------------------------ mode */
/* -1 until the environment is read (a benign race: every thread reads the same value) */
static _Atomic int sparse_mode = -1;

vaec_sparse vaec_sparse_mode(void) {
    int m = atomic_load_explicit(&sparse_mode, memory_order_relaxed);
    if (m < 0) {
        const char *e = getenv("VAEC_SPARSE_INPUT");
        m = !e ? VAEC_SPARSE_AUTO : strcmp(e, "off") == 0 ? VAEC_SPARSE_OFF
            : strcmp(e, "always") == 0 ? VAEC_SPARSE_ALWAYS : VAEC_SPARSE_AUTO;
        atomic_store_explicit(&sparse_mode, m, memory_order_relaxed);
    }
    return (vaec_sparse)m;
}

vaec_sparse vaec_sparse_mode_set(vaec_sparse mode) {
    vaec_sparse before = vaec_sparse_mode();
    if (mode >= VAEC_SPARSE_OFF && mode <= VAEC_SPARSE_ALWAYS)
        atomic_store_explicit(&sparse_mode, (int)mode, memory_order_relaxed);
    return before;
}

/* ------------------------------------------------------------- workspace */
/* rows per build task, columns per zero test, columns per task of the by-columns build,
 * the column grain of the products' split, rows the AUTO mode looks at before building */
enum { SP_ROW_GRAIN = 16, SP_STRIP = 16, SP_COL_GRAIN = 64, SP_J_GRAIN = 16, SP_SAMPLE_ROWS = 8 };
int64_t vaec_spx_layout(vaec_spx *s, float *buf, int64_t R, int64_t K) {
    /* every array of 4-byte elements, each on a 16-float boundary of buf */
    const int64_t ldr = K + 16;
    int64_t off = 0;
#define TAKE(ptr, type, n) do { \
        if (buf) (ptr) = (type *)(buf + off); \
        off += ((n) + 15) & ~(int64_t)15; } while (0)
    TAKE(s->rcnt, int32_t, R);
    TAKE(s->ccnt, int32_t, K);
    TAKE(s->ridx, int32_t, R * ldr);
    TAKE(s->rval, float, R * ldr);
    TAKE(s->cidx, int32_t, R * K);
    TAKE(s->cval, float, R * K);
    TAKE(s->rsplit, int32_t, R * (vaec_ntasks(K, SP_COL_GRAIN) + 1));
#undef TAKE
    if (buf) {
        s->cap_rows = R;
        s->K = K;
        s->ldr = ldr;
    }
    return off;
}

vaec_status vaec_spx_alloc(vaec_spx *s, int64_t R, int64_t K) {
    vaec_spx_free(s);
    float *buf = vaec_alloc((size_t)vaec_spx_layout(s, NULL, R, K), sizeof(float));
    if (!buf)
        return vaec_fail(VAEC_ERR_NOMEM, "out of memory for a sparse copy of %lld x %lld inputs", (long long)R,
                         (long long)K);
    vaec_spx_layout(s, buf, R, K);
    s->owned = buf;
    return VAEC_OK;
}

void vaec_spx_free(vaec_spx *s) {
    vaec_free(s->owned);
    memset(s, 0, sizeof *s);
}

/* ----------------------------------------------------------------- build */

/* The portable by-rows build (the ISA's kernel where it has one): strips of zeros skipped,
 * the rest through a strip buffer in which a zero's slot is taken by the next nonzero. */
static void spx_rows_portable(const float *X, int64_t ldx, int64_t i0, int64_t i1, vaec_spx *s) {
    const int64_t K = s->K;
    for (int64_t i = i0; i < i1; i++) {
        const float *x = X + i * ldx;
        int32_t *idx = s->ridx + i * s->ldr;
        float *val = s->rval + i * s->ldr;
        int64_t n = 0;
        for (int64_t k0 = 0; k0 < K; k0 += SP_STRIP) {
            int64_t w = K - k0 < SP_STRIP ? K - k0 : SP_STRIP, m = 0;
            if (vaec_all_zero(x + k0, w)) continue;
            int32_t bi[SP_STRIP];
            float bv[SP_STRIP];
            for (int64_t q = 0; q < w; q++) {
                bi[m] = (int32_t)(k0 + q);
                bv[m] = x[k0 + q];
                m += !(x[k0 + q] == 0.0f);  /* NaN counts as a nonzero, as in the kernel */
            }
            memcpy(idx + n, bi, (size_t)m * sizeof(int32_t));
            memcpy(val + n, bv, (size_t)m * sizeof(float));
            n += m;
        }
        s->rcnt[i] = (int32_t)n;
    }
}

typedef struct { const float *X; int64_t ldx; vaec_spx *s; vaec_spx_rows_fn rows; } build_job;

/* by rows, then where each row's entries of each column range begin (rsplit) */
static void rows_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    build_job *j = ctx;
    vaec_spx *s = j->s;
    const int64_t nr = vaec_ntasks(s->K, SP_COL_GRAIN);
    int64_t a = t * SP_ROW_GRAIN, b = a + SP_ROW_GRAIN < s->R ? a + SP_ROW_GRAIN : s->R;
    j->rows(j->X, j->ldx, a, b, s);
    for (int64_t i = a; i < b; i++) {
        const int32_t *idx = s->ridx + i * s->ldr;
        int32_t *split = s->rsplit + i * (nr + 1);
        memset(split, 0, (size_t)(nr + 1) * sizeof(int32_t));
        for (int64_t e = 0; e < s->rcnt[i]; e++) split[idx[e] / SP_COL_GRAIN + 1]++;
        for (int64_t r = 0; r < nr; r++) split[r + 1] += split[r];
    }
}

/* by columns: SP_COL_GRAIN columns per task (each task writes only its columns' lists),
 * rows in order, so each list is sorted by row */
static void cols_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    build_job *j = ctx;
    vaec_spx *s = j->s;
    const int64_t R = s->R, nr = vaec_ntasks(s->K, SP_COL_GRAIN), k0 = t * SP_COL_GRAIN;
    const int64_t k1 = k0 + SP_COL_GRAIN < s->K ? k0 + SP_COL_GRAIN : s->K;
    int32_t cnt[SP_COL_GRAIN] = {0};
    for (int64_t i = 0; i < R; i++) {
        const int32_t *idx = s->ridx + i * s->ldr, *split = s->rsplit + i * (nr + 1);
        const float *val = s->rval + i * s->ldr;
        for (int64_t e = split[t]; e < split[t + 1]; e++) {
            int64_t at = (int64_t)idx[e] * R + cnt[idx[e] - k0]++;
            s->cidx[at] = (int32_t)i;
            s->cval[at] = val[e];
        }
    }
    memcpy(s->ccnt + k0, cnt, (size_t)(k1 - k0) * sizeof(int32_t));
}

int vaec_spx_build(vaec_pool *pool, const float *X, int64_t ldx, int64_t R, int64_t K, vaec_spx *s) {
    const vaec_sparse mode = vaec_sparse_mode();
    const vaec_gemm_kernel *kern = vaec_gemm_active_kernel();
    if (mode == VAEC_SPARSE_OFF || !kern || R <= 0 || R > s->cap_rows || K != s->K) return 0;
    if (mode == VAEC_SPARSE_AUTO) {
        if (R < SPARSE_MIN_ROWS) return 0;
        /* a look at the first rows first, so dense data costs no build */
        int64_t nz = 0, rows = R < SP_SAMPLE_ROWS ? R : SP_SAMPLE_ROWS;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t k = 0; k < K; k++) nz += !(X[i * ldx + k] == 0.0f);
        if ((double)nz > 1.5 * SPARSE_MAX_DENSITY * (double)rows * (double)K) return 0;
    }
    s->R = R;
    build_job j = {X, ldx, s, kern->spx_rows ? kern->spx_rows : spx_rows_portable};
    vaec_pool_run(pool, rows_task, &j, vaec_ntasks(R, SP_ROW_GRAIN));
    s->nnz = 0;
    for (int64_t i = 0; i < R; i++) s->nnz += s->rcnt[i];
    if (mode == VAEC_SPARSE_AUTO && (double)s->nnz > SPARSE_MAX_DENSITY * (double)R * (double)K) return 0;
    vaec_pool_run(pool, cols_task, &j, vaec_ntasks(K, SP_COL_GRAIN));
    return 1;
}

/* --------------------------------------------------------------- products */
/* Column ranges for the pool: about N / parts columns each, a multiple of SP_J_GRAIN (the
 * widest vector), so a range boundary never moves a column between the vector tiles and
 * the scalar tail; returns how many. */
static int64_t col_ranges(int64_t N, int64_t parts, int64_t *grain) {
    *grain = ((N + parts - 1) / parts + SP_J_GRAIN - 1) / SP_J_GRAIN * SP_J_GRAIN;
    return (N + *grain - 1) / *grain;
}

typedef struct {
    const vaec_gemm_kernel *kern;
    const vaec_spx *x;
    const float *B;
    int64_t ldb;
    vaec_gemm_epilogue e;
    float *C;
    int64_t ldc, N, jgrain, njs;
    int accumulate;
    atomic_int *nonfinite;
} sp_job;

/* One range of output columns for every row: the task reads only its columns of W^T,
 * which stay in its core's cache. */
static void forward_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    sp_job *j = ctx;
    int64_t j0 = t * j->jgrain, j1 = j0 + j->jgrain < j->N ? j0 + j->jgrain : j->N;
    j->kern->spmm_rows(j->x, j->B, j->ldb, &j->e, j->C, j->ldc, 0, j->x->R, j0, j1);
}

/* SP_STRIP input columns: whole rows of dW^T (splitting them by columns as well was
 * 2 % slower) */
static void wgrad_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    sp_job *j = ctx;
    int64_t k0 = t * SP_STRIP, k1 = k0 + SP_STRIP < j->x->K ? k0 + SP_STRIP : j->x->K;
    j->kern->spmm_cols(j->x, j->B, j->ldb, j->C, j->ldc, k0, k1, 0, j->N, j->accumulate, j->nonfinite);
}

void vaec_sparse_forward(vaec_pool *pool, const vaec_spx *x, const float *Wt, int64_t ldw, const float *b,
                         vaec_act act, float *H, int64_t ldh, int64_t N) {
    sp_job j = {vaec_gemm_active_kernel(), x, Wt, ldw, {b, act, NULL, 0, NULL}, H, ldh, N, 0, 0, 0, NULL};
    j.njs = col_ranges(N, 2 * vaec_pool_size(pool), &j.jgrain);
    vaec_pool_run(pool, forward_task, &j, j.njs);
}

void vaec_sparse_weight_grad(vaec_pool *pool, const vaec_spx *x, const float *dH, int64_t ldd, int64_t N,
                             float *dWt, int accumulate, atomic_int *nonfinite) {
    sp_job j = {vaec_gemm_active_kernel(), x, dH, ldd, {NULL, VAEC_ACT_IDENTITY, NULL, 0, NULL}, dWt, N, N, 0, 0,
                accumulate, nonfinite};
    vaec_pool_run(pool, wgrad_task, &j, vaec_ntasks(x->K, SP_STRIP));
}

/* ------------------------------------------------------------- references */
/* The plain loops the kernels are tested against (tests/c/gemm_check.c): float64 sums. */
void vaec_spmm_rows_naive(const vaec_spx *x, const float *Bt, int64_t ldb, const float *bias, float *C, int64_t ldc,
                          int64_t N) {
    for (int64_t i = 0; i < x->R; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = bias ? bias[j] : 0.0;
            for (int64_t e = i * x->ldr; e < i * x->ldr + x->rcnt[i]; e++)
                s += (double)x->rval[e] * Bt[x->ridx[e] * ldb + j];
            C[i * ldc + j] = (float)s;
        }
}

void vaec_spmm_cols_naive(const vaec_spx *x, const float *D, int64_t ldd, float *C, int64_t ldc, int64_t N,
                          int accumulate) {
    for (int64_t k = 0; k < x->K; k++)
        for (int64_t j = 0; j < N; j++) {
            double s = accumulate ? C[k * ldc + j] : 0.0;
            for (int64_t e = 0; e < x->ccnt[k]; e++)
                s += (double)x->cval[k * x->R + e] * D[x->cidx[k * x->R + e] * ldd + j];
            C[k * ldc + j] = (float)s;
        }
}
