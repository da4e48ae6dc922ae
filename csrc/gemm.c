/* gemm.c -- GEMM dispatch: picks the block routine of the active ISA and spreads the
 * GEMM_MB x GEMM_NB blocks of C over the thread pool; and the peak-FMA probe. */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include <time.h>

typedef struct {
    vaec_gemm_args g;
    vaec_gemm_block_fn block;
    int64_t nbj;
    vaec_pool *pool;
    float *scratch;  /* used when pool == NULL */
} gemm_job;

static void gemm_task(void *ctx, int64_t t, int tid) {
    gemm_job *job = ctx;
    float *scratch = job->pool ? vaec_pool_scratch(job->pool, tid) : job->scratch;
    job->block(&job->g, t / job->nbj, t % job->nbj, scratch);
}

typedef struct { const vaec_gemm_args *g; } naive_job;
static void naive_task(void *ctx, int64_t row, int tid) {
    (void)tid;
    const vaec_gemm_args *g = ((naive_job *)ctx)->g;
    const float *A = g->transA ? g->A + row : g->A + row * g->lda;
    vaec_sgemm_naive(g->transA, g->transB, 1, g->N, g->K, A, g->lda, g->B, g->ldb, g->beta,
                     g->C + row * g->ldc, g->ldc);
}

static vaec_gemm_small_fn small_for(vaec_isa isa) {
    switch (isa) {
#if defined(VAEC_X86)
    case VAEC_ISA_AVX512: return vaec_gemm_small_m_avx512;
    case VAEC_ISA_AVX2: return vaec_gemm_small_m_avx2;
#endif
#if defined(VAEC_ARM64)
    case VAEC_ISA_NEON: return vaec_gemm_small_m_neon;
#endif
    case VAEC_ISA_NAIVE: return NULL;
    default: return vaec_gemm_small_m_scalar;
    }
}

enum { SMALL_GRAIN = 64 };  /* columns per task */
typedef struct { const vaec_gemm_args *g; vaec_gemm_small_fn fn; } small_job;
static void small_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    small_job *j = ctx;
    int64_t j0 = t * SMALL_GRAIN, j1 = j0 + SMALL_GRAIN < j->g->N ? j0 + SMALL_GRAIN : j->g->N;
    j->fn(j->g, j0, j1);
}

static vaec_gemm_block_fn block_for(vaec_isa isa) {
    switch (isa) {
#if defined(VAEC_X86)
    case VAEC_ISA_AVX512: return vaec_gemm_block_avx512;
    case VAEC_ISA_AVX2: return vaec_gemm_block_avx2;
#endif
#if defined(VAEC_ARM64)
    case VAEC_ISA_NEON: return vaec_gemm_block_neon;
#endif
    case VAEC_ISA_NAIVE: return NULL;
    default: return vaec_gemm_block_scalar;
    }
}

void vaec_sgemm(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    vaec_gemm_args g = {transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc};
    vaec_isa isa = vaec_cpu_active_isa();
    vaec_gemm_small_fn small = small_for(isa);
    if (small && M <= GEMM_SMALL_M && !transA) {
        /* a few rows: packing would cost as much as the product; split over columns */
        small_job sj = {&g, small};
        vaec_pool_run(pool, small_task, &sj, vaec_ntasks(N, SMALL_GRAIN));
        return;
    }
    vaec_gemm_block_fn block = block_for(isa);
    if (!block) {
        naive_job nj = {&g};
        vaec_pool_run(pool, naive_task, &nj, M);
        return;
    }
    gemm_job job = {g, block, (N + GEMM_NB - 1) / GEMM_NB, pool, NULL};
    int64_t nbi = (M + GEMM_MB - 1) / GEMM_MB;
    if (!pool) {
        job.scratch = vaec_alloc(GEMM_SCRATCH_FLOATS, sizeof(float));
        if (!job.scratch) {  /* cannot pack: fall back to the reference loop */
            vaec_sgemm_naive(transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc);
            return;
        }
    }
    vaec_pool_run(pool, gemm_task, &job, nbi * job.nbj);
    if (!pool) vaec_free(job.scratch);
}

/* ------------------------------------------------------------ peak probe */
typedef float (*peak_fn)(int64_t);
typedef struct { peak_fn fn; int64_t iters; float sink[256]; } peak_job;
static void peak_task(void *ctx, int64_t t, int tid) {
    peak_job *j = ctx;
    j->sink[t & 255] = j->fn(j->iters);
    (void)tid;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double vaec_cpu_peak_gflops(vaec_pool *pool, double seconds) {
    peak_fn fn = vaec_peak_fma_scalar;
    int lanes = 1;
    switch (vaec_cpu_active_isa()) {
#if defined(VAEC_X86)
    case VAEC_ISA_AVX512: fn = vaec_peak_fma_avx512; lanes = 16; break;
    case VAEC_ISA_AVX2: fn = vaec_peak_fma_avx2; lanes = 8; break;
#endif
#if defined(VAEC_ARM64)
    case VAEC_ISA_NEON: fn = vaec_peak_fma_neon; lanes = 4; break;
#endif
    default: break;
    }
    int threads = vaec_pool_size(pool);
    peak_job j = {fn, 1 << 16, {0}};
    double t = 0.0;
    /* grow the work until one run takes a tenth of the budget, then take the best of runs */
    for (;;) {
        double t0 = now_s();
        vaec_pool_run(pool, peak_task, &j, threads);
        t = now_s() - t0;
        if (t > seconds / 10 || j.iters > ((int64_t)1 << 40)) break;
        j.iters *= 2;
    }
    double best = t, end = now_s() + seconds;
    while (now_s() < end) {
        double t0 = now_s();
        vaec_pool_run(pool, peak_task, &j, threads);
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    return 24.0 * lanes * (double)j.iters * threads / best / 1e9;
}
