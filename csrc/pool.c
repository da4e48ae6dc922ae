/* pool.c -- a persistent thread pool with a parallel-for over tasks.
 *
 * A job is published through one atomic ticket: job number in the high 32 bits, next
 * task index in the low 32. Every thread (the caller included) claims indices with a
 * compare-and-swap that also checks the job number, so a thread that arrives late can
 * never take a task of a newer job with an older job's function. The caller counts
 * finished tasks and returns when all are done: it waits for tasks that were taken,
 * never for a worker that has not woken up yet (it then simply runs more tasks itself).
 * Idle workers spin on the ticket for a short while (VAEC_SPIN_US, default 100 us) so
 * the back-to-back jobs of a training step do not pay a sleep/wake-up each, then sleep
 * on a condition variable. The pool owns nothing but its threads: the GEMM keeps its
 * packing buffers per thread itself (gemm.c), and a worker asks for its buffer when it
 * starts, so that no later step makes one.
 *
 * Subnormal floats (|x| < 2^-126) are flushed to zero while vaec computes: every task runs
 * with FTZ and DAZ set (x86 MXCSR; FZ in aarch64's FPCR). A subnormal costs a microcode
 * assist of about a hundred cycles on x86, and training makes them: one step of an M2
 * trained for 24 epochs took 230-238 ms, and 75-96 ms with them flushed. Workers set the mode once;
 * the caller's thread has its own mode saved and restored around each job, so NumPy and
 * the rest of the program keep IEEE subnormals. VAEC_DENORMALS=keep (read once) turns the
 * flushing off. */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#define FP_FLUSH_BITS 0x8040u   /* MXCSR: FTZ (bit 15) | DAZ (bit 6) */
static inline uint64_t fp_mode_get(void) { return _mm_getcsr(); }
static inline void fp_mode_set(uint64_t m) { _mm_setcsr((unsigned)m); }
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#define FP_FLUSH_BITS ((uint64_t)1 << 24)   /* FPCR.FZ */
static inline uint64_t fp_mode_get(void) {
    uint64_t m;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(m));
    return m;
}
static inline void fp_mode_set(uint64_t m) { __asm__ __volatile__("msr fpcr, %0" : : "r"(m)); }
#else
#define CPU_RELAX() ((void)0)
#define FP_FLUSH_BITS 0u
static inline uint64_t fp_mode_get(void) { return 0; }
static inline void fp_mode_set(uint64_t m) { (void)m; }
#endif

/* 1 to flush subnormals, 0 for VAEC_DENORMALS=keep; -1 until read (a benign race: every
 * thread reads the same environment). */
static _Atomic int flush_subnormals = -1;
static int flushing(void) {
    int f = atomic_load_explicit(&flush_subnormals, memory_order_relaxed);
    if (f < 0) {
        const char *e = getenv("VAEC_DENORMALS");
        f = !(e && strcmp(e, "keep") == 0);
        atomic_store_explicit(&flush_subnormals, f, memory_order_relaxed);
    }
    return f;
}

/* Enter vaec's floating-point mode on this thread; returns the mode to restore. */
static uint64_t fp_enter(void) {
    uint64_t saved = fp_mode_get();
    if (FP_FLUSH_BITS && flushing() && (saved & FP_FLUSH_BITS) != FP_FLUSH_BITS) fp_mode_set(saved | FP_FLUSH_BITS);
    return saved;
}
static void fp_leave(uint64_t saved) {
    if (fp_mode_get() != saved) fp_mode_set(saved);
}

#define TICKET_CLOSED 0xffffffffu   /* task index of a finished job: no index is below it */
#define SPIN_US_DEFAULT 100

struct vaec_pool {
    int n;                          /* threads including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_start;
    _Atomic uint64_t ticket;        /* job << 32 | next task index */
    _Atomic int64_t done;           /* tasks of the current job finished */
    _Atomic int sleepers;           /* workers blocked (or about to block) on cv_start */
    _Atomic int started;            /* workers that have made their per-thread state */
    _Atomic int stop;
    /* the current job; written only while no task of the previous job is outstanding */
    _Atomic(vaec_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t ntasks;
    int64_t spin_ns;
};

typedef struct { vaec_pool *pool; int tid; } worker_arg;

static uint32_t job_of(uint64_t t) { return (uint32_t)(t >> 32); }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Run tasks of job `job` until none is left (or a newer job was published). The job's
 * fields are read (acquire) before any claim; if one was already rewritten for a newer
 * job (release), the ticket was closed before that, so the claim's compare-and-swap sees
 * the closed ticket and fails. */
static void drain(vaec_pool *p, uint32_t job, int tid) {
    vaec_task_fn fn = atomic_load_explicit(&p->fn, memory_order_acquire);
    void *ctx = atomic_load_explicit(&p->ctx, memory_order_acquire);
    uint64_t ntasks = (uint64_t)atomic_load_explicit(&p->ntasks, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    for (;;) {
        if (job_of(t) != job || (t & 0xffffffffu) >= ntasks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        fn(ctx, (int64_t)(t & 0xffffffffu), tid);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    vaec_free(arg);
    vaec_pool *p = wa.pool;
    (void)fp_enter();  /* a worker only ever runs vaec's tasks */
    vaec_gemm_thread_init();   /* its GEMM packing buffer (gemm.c's), made now: not in a warm step */
    atomic_fetch_add(&p->started, 1);
    uint32_t seen = job_of(atomic_load(&p->ticket));
    for (;;) {
        /* spin for a while on the ticket, then sleep until a new job or stop */
        int64_t deadline = p->spin_ns > 0 ? now_ns() + p->spin_ns : 0;
        uint32_t job = seen;
        for (int i = 0; p->spin_ns > 0; i++) {
            job = job_of(atomic_load_explicit(&p->ticket, memory_order_acquire));
            if (job != seen || atomic_load_explicit(&p->stop, memory_order_relaxed)) break;
            if (i < 64) {
                CPU_RELAX();
            } else {
                sched_yield();  /* on a busy machine, let other threads run */
                if ((i & 15) == 15 && now_ns() > deadline) break;
            }
        }
        if (job == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (!atomic_load(&p->stop) && (job = job_of(atomic_load(&p->ticket))) == seen)
                pthread_cond_wait(&p->cv_start, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = job;
        drain(p, job, wa.tid);
    }
    return NULL;
}

vaec_status vaec_pool_create(vaec_pool **out, int nthreads) {
    *out = NULL;
    if (nthreads <= 0) nthreads = vaec_cpu_count();
    if (nthreads > 256) return vaec_fail(VAEC_ERR_ARG, "threads must be between 1 and 256, got %d", nthreads);
    vaec_pool *p = vaec_alloc(1, sizeof *p);
    if (!p) return vaec_fail(VAEC_ERR_NOMEM, "out of memory creating the thread pool");
    p->n = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_start, NULL);
    atomic_init(&p->ticket, TICKET_CLOSED);
    atomic_init(&p->done, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->started, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->fn, NULL);
    atomic_init(&p->ctx, NULL);
    atomic_init(&p->ntasks, 0);
    const char *spin = getenv("VAEC_SPIN_US");
    long us = spin && *spin ? strtol(spin, NULL, 10) : SPIN_US_DEFAULT;
    p->spin_ns = us > 0 ? (int64_t)(us < 1000000 ? us : 1000000) * 1000 : 0;
    p->threads = vaec_alloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->threads) goto nomem;
    for (int i = 1; i < nthreads; i++) {
        worker_arg *wa = vaec_alloc(1, sizeof *wa);
        if (wa) {
            wa->pool = p;
            wa->tid = i;
        }
        if (!wa || pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            vaec_free(wa);
            p->n = i;  /* run with the threads we got */
            break;
        }
    }
    /* ready when every worker is: what they allocate for themselves is done before any step */
    while (atomic_load(&p->started) < p->n - 1) sched_yield();
    *out = p;
    return VAEC_OK;
nomem:
    /* no worker has been started when we get here */
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_start);
    vaec_free(p);
    return vaec_fail(VAEC_ERR_NOMEM, "out of memory creating the thread pool");
}

void vaec_pool_destroy(vaec_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_start);
    vaec_free(p->threads);
    vaec_free(p);
}

int vaec_pool_size(const vaec_pool *p) { return p ? p->n : 1; }

static void pool_run_job(vaec_pool *p, vaec_task_fn fn, void *ctx, int64_t ntasks);

void vaec_pool_run(vaec_pool *p, vaec_task_fn fn, void *ctx, int64_t ntasks) {
    if (ntasks <= 0) return;
    uint64_t mode = fp_enter();
    if (!p || p->n == 1 || ntasks == 1 || ntasks >= (int64_t)TICKET_CLOSED)
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t, 0);
    else
        pool_run_job(p, fn, ctx, ntasks);
    fp_leave(mode);
}

static void pool_run_job(vaec_pool *p, vaec_task_fn fn, void *ctx, int64_t ntasks) {
    /* The previous job is finished (every task done), so its ticket can be closed and
     * the fields rewritten: a late worker holding old fields finds the ticket closed. */
    uint32_t job = job_of(atomic_load_explicit(&p->ticket, memory_order_relaxed)) + 1;
    atomic_store_explicit(&p->ticket, ((uint64_t)(job - 1) << 32) | TICKET_CLOSED, memory_order_seq_cst);
    atomic_store_explicit(&p->fn, fn, memory_order_release);
    atomic_store_explicit(&p->ctx, ctx, memory_order_release);
    atomic_store_explicit(&p->ntasks, ntasks, memory_order_release);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->ticket, (uint64_t)job << 32, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_start);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, job, 0);
    /* only tasks already taken by other threads can be outstanding here */
    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < ntasks; i++) {
        if (i < 4096) CPU_RELAX();
        else sched_yield();
    }
}

/* ------------------------------------------------------- the round-trip probe */
/* Two tasks of one job: the first thread to arrive pings, the second pongs. The pinger
 * writes 2i+1 into one cache line and waits for 2i+2, the ponger waits for 2i+1 and writes
 * 2i+2: each exchange moves the line there and back. The first `rounds` exchanges warm up,
 * the next `rounds` are timed. If the caller ends up with both tasks (no worker woke up in
 * time), the pinger gives up after PARTNER_NS and the second task finds nobody to answer.
 * The whole exchange stops at PROBE_NS (two threads time-sharing one CPU swap the line
 * once per time slice): the mean is then over the timed exchanges done, if any. */
#define PARTNER_NS 50000000
#define PROBE_NS 1000000000
typedef struct {
    _Alignas(64) _Atomic int64_t line;   /* the exchanged cache line */
    _Alignas(64) _Atomic int arrived;    /* tasks started */
    _Atomic int gone;                    /* the pinger gave up or finished */
    int64_t rounds;
    double ns;                           /* the pinger's result, -1 if it timed nothing */
} roundtrip_job;

static void roundtrip_ping(roundtrip_job *j) {
    int64_t start = now_ns(), t0 = 0, i = 0;
    while (atomic_load(&j->arrived) < 2)
        if (now_ns() > start + PARTNER_NS) return;
    int64_t end = now_ns() + PROBE_NS;
    for (; i < 2 * j->rounds; i++) {   /* i: the exchanges done */
        if (i == j->rounds) t0 = now_ns();
        atomic_store_explicit(&j->line, 2 * i + 1, memory_order_release);
        for (int k = 0; atomic_load_explicit(&j->line, memory_order_acquire) != 2 * i + 2; k++)
            if ((k & 1023) == 1023 && now_ns() > end) goto out;
    }
out:
    if (i > j->rounds) j->ns = (double)(now_ns() - t0) / (double)(i - j->rounds);
}

static void roundtrip_task(void *ctx, int64_t t, int tid) {
    (void)t;
    (void)tid;
    roundtrip_job *j = ctx;
    if (atomic_fetch_add(&j->arrived, 1) == 0) {
        roundtrip_ping(j);
        atomic_store(&j->gone, 1);
        return;
    }
    /* the ponger: answers until the pinger is gone */
    for (int64_t i = 0; i < 2 * j->rounds; i++) {
        while (atomic_load_explicit(&j->line, memory_order_acquire) != 2 * i + 1)
            if (atomic_load_explicit(&j->gone, memory_order_acquire)) return;
        atomic_store_explicit(&j->line, 2 * i + 2, memory_order_release);
    }
}

double vaec_pool_roundtrip_ns(vaec_pool *p, int64_t rounds) {
    if (!p || p->n < 2 || rounds < 1) return -1.0;
    roundtrip_job j;
    atomic_init(&j.line, 0);
    atomic_init(&j.arrived, 0);
    atomic_init(&j.gone, 0);
    j.rounds = rounds;
    j.ns = -1.0;
    pool_run_job(p, roundtrip_task, &j, 2);
    return j.ns;
}
