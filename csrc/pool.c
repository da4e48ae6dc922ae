/* pool.c -- a persistent thread pool with a parallel-for over tasks.
 *
 * nthreads-1 workers sleep on a condition variable; vaec_pool_run publishes a job,
 * every thread (the caller included) takes task indices from an atomic counter, and
 * the caller waits until all have finished. Each thread owns a GEMM scratch buffer. */
#include "internal.h"
#include <pthread.h>
#include <stdatomic.h>

struct vaec_pool {
    int n;                      /* threads including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_start, cv_done;
    uint64_t generation;        /* bumped per job */
    int stop;
    int running;                /* workers still busy on the current job */
    vaec_task_fn fn;
    void *ctx;
    int64_t ntasks;
    _Atomic int64_t next;
    float **scratch;            /* n buffers of GEMM_SCRATCH_FLOATS */
};

typedef struct { vaec_pool *pool; int tid; } worker_arg;

static void drain(vaec_pool *p, int tid) {
    for (;;) {
        int64_t t = atomic_fetch_add(&p->next, 1);
        if (t >= p->ntasks) break;
        p->fn(p->ctx, t, tid);
    }
}

static void *worker_main(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    vaec_free(arg);
    vaec_pool *p = wa.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->cv_start, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        drain(p, wa.tid);
        pthread_mutex_lock(&p->mu);
        if (--p->running == 0) pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
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
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->next, 0);
    p->scratch = vaec_alloc((size_t)nthreads, sizeof(float *));
    p->threads = vaec_alloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->scratch || !p->threads) goto nomem;
    for (int i = 0; i < nthreads; i++)
        if (!(p->scratch[i] = vaec_alloc(GEMM_SCRATCH_FLOATS, sizeof(float)))) goto nomem;
    for (int i = 1; i < nthreads; i++) {
        worker_arg *wa = vaec_alloc(1, sizeof *wa);
        if (!wa) goto nomem;
        wa->pool = p;
        wa->tid = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            vaec_free(wa);
            p->n = i;  /* run with the threads we got */
            break;
        }
    }
    *out = p;
    return VAEC_OK;
nomem:
    /* no worker has been started when we get here */
    if (p->scratch)
        for (int i = 0; i < nthreads; i++) vaec_free(p->scratch[i]);
    vaec_free(p->scratch);
    vaec_free(p->threads);
    vaec_free(p);
    return vaec_fail(VAEC_ERR_NOMEM, "out of memory creating the thread pool");
}

void vaec_pool_destroy(vaec_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    for (int i = 0; i < p->n; i++) vaec_free(p->scratch[i]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_start);
    pthread_cond_destroy(&p->cv_done);
    vaec_free(p->scratch);
    vaec_free(p->threads);
    vaec_free(p);
}

int vaec_pool_size(const vaec_pool *p) { return p ? p->n : 1; }

float *vaec_pool_scratch(vaec_pool *p, int tid) { return p ? p->scratch[tid] : NULL; }

void vaec_pool_run(vaec_pool *p, vaec_task_fn fn, void *ctx, int64_t ntasks) {
    if (ntasks <= 0) return;
    if (!p || p->n == 1 || ntasks == 1) {
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    atomic_store(&p->next, 0);
    p->running = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    drain(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->running > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
