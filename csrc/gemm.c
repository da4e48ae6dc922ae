/* gemm.c -- GEMM dispatch: picks the kernels of the active ISA, splits C into blocks
 * sized for the shape and the thread count and spreads them over the thread pool, each
 * thread packing into a buffer of its own; and the peak-FMA probe. */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include <pthread.h>
#include <string.h>
#include <time.h>

static const vaec_gemm_kernel *kernel_for(vaec_isa isa) {
    switch (isa) {
#if defined(VAEC_X86)
    case VAEC_ISA_AVX512: return &vaec_gemm_kernel_avx512;
    case VAEC_ISA_AVX2: return &vaec_gemm_kernel_avx2;
#endif
#if defined(VAEC_ARM64)
    case VAEC_ISA_NEON: return &vaec_gemm_kernel_neon;
#endif
    case VAEC_ISA_NAIVE: return NULL;
    default: return &vaec_gemm_kernel_scalar;
    }
}

const vaec_gemm_kernel *vaec_gemm_active_kernel(void) { return kernel_for(vaec_cpu_active_isa()); }

/* Below this many multiply-adds a product runs on the caller alone: waking the pool
 * would cost more than the work. The split is the same, so are the results. */
#define GEMM_SERIAL_MACS ((int64_t)1 << 16)

/* ----------------------------------------------------------- the split of C */
/* Blocks of mb rows (a multiple of MR, at most mb_cap(K): GEMM_MB, more for K < GEMM_KC)
 * by nb columns (a multiple of the kernel's nq, one vector): nbi x nbj tasks. */
typedef struct { int64_t mb, nb, nbi, nbj; } gemm_plan;

static int64_t round_up(int64_t n, int64_t k) { return (n + k - 1) / k * k; }
static int64_t cdiv(int64_t n, int64_t k) { return (n + k - 1) / k; }

/* Pick the split that minimizes an estimate of the time on `threads` threads: rounds of
 * tasks times the largest task, whose cost is its padded multiply-adds plus its packing
 * (op(A) rows once per column block, op(B) columns once per row block; a packed float
 * costs about as much as PACK_MACS multiply-adds) plus a fixed TASK_MACS. Only the
 * speed depends on it: every split gives the same bits. */
#define PACK_MACS 8
#define TASK_MACS 4096
/* The most rows a block may have: its packed op(A), mb x min(K, GEMM_KC) floats, fills at
 * most the GEMM_MB x GEMM_KC of the scratch, so a short K allows taller blocks (a batch-100
 * weight gradient, 784 x 400 x 100, is two blocks on two threads, not four of 198 rows). */
static int64_t mb_cap(int64_t K, int mr) {
    if (K >= GEMM_KC) return GEMM_MB;
    int64_t cap = (int64_t)GEMM_MB * GEMM_KC / K / mr * mr;
    return cap > GEMM_MB ? cap : GEMM_MB;
}
static double plan_cost(int64_t M, int64_t N, int64_t K, int threads, int mr, int nq, int64_t cap, int64_t bi,
                        int64_t bj, gemm_plan *p) {
    p->mb = round_up(cdiv(M, bi), mr);
    if (p->mb > cap) p->mb = cap;
    p->nb = round_up(cdiv(N, bj), nq);
    p->nbi = cdiv(M, p->mb);
    p->nbj = cdiv(N, p->nb);
    double task = (double)p->mb * (double)p->nb * (double)K + PACK_MACS * (double)(p->mb + p->nb) * (double)K + TASK_MACS;
    return (double)cdiv(p->nbi * p->nbj, threads) * task;
}

static gemm_plan plan_split(int64_t M, int64_t N, int64_t K, int threads, int mr, int nq) {
    int64_t Kc = K > 0 ? K : 1, cap = mb_cap(Kc, mr), bi0 = cdiv(M, cap), bi_max = cdiv(M, mr), bj_max = cdiv(N, nq);
    gemm_plan best, p;
    double best_cost = plan_cost(M, N, Kc, threads, mr, nq, cap, bi0, 1, &best);
    if (threads <= 1) return best;
    /* column blocks bj, and for each the row blocks that make 1 to 4 rounds of tasks */
    int64_t lim = 4 * (int64_t)threads < 64 ? 4 * (int64_t)threads : 64;
    for (int64_t bj = 1; bj <= lim && bj <= bj_max; bj++)
        for (int64_t r = 0; r <= 4; r++) {
            int64_t bi = r ? cdiv(r * threads, bj) : bi0;
            if (bi < bi0) bi = bi0;
            if (bi > bi_max) bi = bi_max;
            double c = plan_cost(M, N, Kc, threads, mr, nq, cap, bi, bj, &p);
            if (c < best_cost * 0.98) {
                best = p;
                best_cost = c;
            }
        }
    return best;
}

/* The packing buffers: one of GEMM_SCRATCH_FLOATS per thread that computes blocks, made when
 * a pool's worker starts (vaec_gemm_thread_init) or on a thread's first product, and freed
 * when the thread ends (a thread-specific key's destructor), so neither the pool nor a
 * model owns them and a warm step allocates nothing. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;
static void scratch_free(void *p) { vaec_free(p); }
static void scratch_key_make(void) { scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0; }
static float *thread_scratch(void) {
    pthread_once(&scratch_once, scratch_key_make);
    if (!scratch_key_ok) return NULL;
    float *s = pthread_getspecific(scratch_key);
    if (!s && (s = vaec_alloc(GEMM_SCRATCH_FLOATS, sizeof(float))) && pthread_setspecific(scratch_key, s) != 0) {
        vaec_free(s);
        s = NULL;
    }
    return s;
}

void vaec_gemm_thread_init(void) { (void)thread_scratch(); }

typedef struct {
    vaec_gemm_args g;
    const vaec_gemm_kernel *kern;
    gemm_plan plan;
} gemm_job;

static void naive_rows(const vaec_gemm_args *g, int64_t i0, int64_t i1);

static void gemm_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    gemm_job *job = ctx;
    int64_t bi = t / job->plan.nbj, bj = t % job->plan.nbj;
    int64_t i0 = bi * job->plan.mb, j0 = bj * job->plan.nb;
    int64_t mb = job->g.M - i0 < job->plan.mb ? job->g.M - i0 : job->plan.mb;
    int64_t nb = job->g.N - j0 < job->plan.nb ? job->g.N - j0 : job->plan.nb;
    float *scratch = thread_scratch();
    if (scratch) {
        job->kern->block(&job->g, i0, mb, j0, nb, scratch);
        return;
    }
    /* no memory to pack in: the block by the reference loop (the caller checked its own
     * buffer first, so this is a worker out of memory) */
    vaec_gemm_args b = job->g;
    b.N = nb;
    b.B = b.transB ? b.B + j0 * b.ldb : b.B + j0;
    b.C = b.C + j0;
    vaec_gemm_epilogue e;
    if (b.epi) {
        e = *b.epi;
        if (e.bias) e.bias += j0;
        if (e.y) e.y += j0;
        b.epi = &e;
    }
    naive_rows(&b, i0, i0 + mb);
}

/* Column ranges of the small-M path: one per thread, so every thread streams the same
 * share of op(B): a single-example product is bound by reading the weights, and equal
 * tasks beat many small ones (7 tasks of 64 columns left one of two threads a third more
 * to read). A range is a multiple of SMALL_GRAIN columns, the widest vector (AVX-512's 16
 * floats), so a boundary never moves a column from the vector loop into the scalar tail,
 * whose separate multiply and add round differently from the FMA: a column's arithmetic
 * does not depend on the split, hence not on the thread count. */
#define SMALL_GRAIN 16
typedef struct { const vaec_gemm_args *g; vaec_gemm_small_fn fn; int64_t grain; } small_job;
static void small_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    small_job *j = ctx;
    int64_t j0 = t * j->grain, j1 = j0 + j->grain < j->g->N ? j0 + j->grain : j->g->N;
    j->fn(j->g, j0, j1);
}

/* The naive path, one row of C per task: the triple loop, then the epilogue by the
 * elementwise kernels (bias first, as C = bias with beta = 1). */
typedef struct { const vaec_gemm_args *g; } naive_job;
static void naive_row(const vaec_gemm_args *g, int64_t row) {
    const float *A = g->transA ? g->A + row : g->A + row * g->lda;
    float *c = g->C + row * g->ldc;
    const vaec_gemm_epilogue *e = g->epi;
    float beta = g->beta;
    if (e && e->bias && beta == 0.0f) {
        memcpy(c, e->bias, (size_t)g->N * sizeof(float));
        beta = 1.0f;
    }
    vaec_sgemm_naive(g->transA, g->transB, 1, g->N, g->K, A, g->lda, g->B, g->ldb, beta, c, g->ldc);
    if (e && e->act != VAEC_ACT_IDENTITY) {
        if (e->y) vaec_act_backward(e->act, c, e->y + row * e->ldy, g->N);
        else vaec_act_forward(e->act, c, c, g->N);
    }
    if (e && e->nonfinite && vaec_check_range(c, g->N, 0.0f, 0.0f, 0) >= 0)
        atomic_store_explicit(e->nonfinite, 1, memory_order_relaxed);
}
static void naive_task(void *ctx, int64_t row, int tid) {
    (void)tid;
    naive_row(((naive_job *)ctx)->g, row);
}
static void naive_rows(const vaec_gemm_args *g, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) naive_row(g, i);
}

static void run_tasks(vaec_pool *pool, vaec_task_fn fn, void *ctx, int64_t ntasks, int64_t macs) {
    if (macs < GEMM_SERIAL_MACS) pool = NULL;
    vaec_pool_run(pool, fn, ctx, ntasks);
}

/* The optional account of the time spent in GEMMs and their flops (vaec_gemm_timing). */
static _Atomic int timing_on;
static _Atomic int64_t timing_ns, timing_flops;
static double now_s(void);

static void sgemm_fused(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                        const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc, const vaec_gemm_epilogue *epi);

void vaec_sgemm_fused(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                      const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc, const vaec_gemm_epilogue *epi) {
    if (!atomic_load_explicit(&timing_on, memory_order_relaxed)) {
        sgemm_fused(pool, transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc, epi);
        return;
    }
    double t0 = now_s();
    sgemm_fused(pool, transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc, epi);
    atomic_fetch_add_explicit(&timing_ns, (int64_t)((now_s() - t0) * 1e9), memory_order_relaxed);
    if (M > 0 && N > 0 && K > 0) atomic_fetch_add_explicit(&timing_flops, 2 * M * N * K, memory_order_relaxed);
}

void vaec_gemm_timing(int on, double *seconds, double *flops) {
    if (seconds) *seconds = (double)atomic_exchange(&timing_ns, 0) * 1e-9;
    else atomic_store(&timing_ns, 0);
    if (flops) *flops = (double)atomic_exchange(&timing_flops, 0);
    else atomic_store(&timing_flops, 0);
    atomic_store(&timing_on, on != 0);
}

static void sgemm_fused(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                        const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc, const vaec_gemm_epilogue *epi) {
    if (M <= 0 || N <= 0) return;
    vaec_gemm_args g = {transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc, epi};
    const vaec_gemm_kernel *kern = vaec_gemm_active_kernel();
    int64_t macs = M * N * (K > 0 ? K : 1);
    if (!kern) {
        naive_job nj = {&g};
        run_tasks(pool, naive_task, &nj, M, macs);
        return;
    }
    if (M <= GEMM_SMALL_M && !transA) {
        /* a few rows: packing would cost as much as the product; split over columns */
        int threads = macs < GEMM_SERIAL_MACS ? 1 : vaec_pool_size(pool);
        small_job sj = {&g, kern->small, round_up(cdiv(N, threads), SMALL_GRAIN)};
        run_tasks(pool, small_task, &sj, cdiv(N, sj.grain), macs);
        return;
    }
    if (!thread_scratch()) {  /* no memory to pack in: the reference loop */
        naive_job nj = {&g};
        vaec_pool_run(NULL, naive_task, &nj, M);
        return;
    }
    int threads = macs < GEMM_SERIAL_MACS ? 1 : vaec_pool_size(pool);
    gemm_job job = {g, kern, plan_split(M, N, K, threads, kern->mr, kern->nq)};
    vaec_pool_run(threads == 1 ? NULL : pool, gemm_task, &job, job.plan.nbi * job.plan.nbj);
}

void vaec_sgemm(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc) {
    vaec_sgemm_fused(pool, transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc, NULL);
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
