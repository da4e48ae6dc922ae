/* params.c -- the parameter arena: planning named tensors, allocation with torch-style
 * initialization (or N(0, std^2) on request), and the optimizers, bias-corrected Adam or
 * Adagrad with optional L2 weight decay, as one flat loop over the buffers. */
#include "internal.h"
#include "elem.h"
#include <math.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>

#define ADAM_GRAIN 16384
#include "streams.h"
#define INIT_STREAM(t) vaec_stream_init(t)   /* RNG stream of tensor t's initial values (streams.h) */

static int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

static vaec_status add_info(vaec_arena *a, const char *name, int64_t offset, int ndim, const int64_t *shape,
                            float bound) {
    if (a->ntensors >= VAEC_MAX_TENSORS)
        return vaec_fail(VAEC_ERR_ARG, "too many parameter tensors (at most %d)", VAEC_MAX_TENSORS);
    size_t len = strlen(name);
    if (len >= VAEC_NAME_LEN) return vaec_fail(VAEC_ERR_ARG, "tensor name too long: %s", name);
    vaec_tensor_info *t = &a->tensors[a->ntensors++];
    memcpy(t->name, name, len + 1);
    t->offset = offset;
    t->ndim = ndim;
    for (int k = 0; k < 4; k++) t->shape[k] = k < ndim ? shape[k] : 0;
    t->init_bound = bound;
    t->transposed = 0;
    return VAEC_OK;
}

static int64_t tensor_size(const vaec_tensor_info *t) {
    int64_t n = 1;
    for (int k = 0; k < t->ndim; k++) n *= t->shape[k];
    return n;
}

vaec_status vaec_arena_add_linear(vaec_arena *a, vaec_linear *L, const char *const *names, int heads,
                                  int64_t in, int64_t out) {
    return vaec_arena_add_linear_ex(a, L, names, heads, in, out, 0);
}

vaec_status vaec_arena_add_linear_ex(vaec_arena *a, vaec_linear *L, const char *const *names, int heads,
                                     int64_t in, int64_t out, int64_t extra) {
    if (a->params) return vaec_fail(VAEC_ERR_ARG, "arena: tensors must be planned before allocation");
    L->in = in;
    L->out = out * heads + extra;
    L->wt = 0;
    L->W = a->n;
    L->b = L->W + L->out * in;
    a->n = align16(L->b + L->out);
    float bound = 1.0f / sqrtf((float)in);
    char buf[VAEC_NAME_LEN + 8];
    vaec_status st;
    for (int h = 0; h < heads; h++) {
        const int64_t wshape[2] = {out, in}, bshape[1] = {out};
        snprintf(buf, sizeof buf, "%s.weight", names[h]);
        if ((st = add_info(a, buf, L->W + h * out * in, 2, wshape, bound))) return st;
        snprintf(buf, sizeof buf, "%s.bias", names[h]);
        if ((st = add_info(a, buf, L->b + h * out, 1, bshape, bound))) return st;
    }
    if (extra > 0) {
        const int64_t wshape[2] = {extra, in}, bshape[1] = {extra};
        snprintf(buf, sizeof buf, "%s.weight", names[heads]);
        if ((st = add_info(a, buf, L->W + heads * out * in, 2, wshape, bound))) return st;
        snprintf(buf, sizeof buf, "%s.bias", names[heads]);
        if ((st = add_info(a, buf, L->b + heads * out, 1, bshape, bound))) return st;
    }
    return VAEC_OK;
}

vaec_status vaec_arena_add_linear_wt(vaec_arena *a, vaec_linear *L, const char *name, int64_t in, int64_t out) {
    vaec_status st = vaec_arena_add_linear(a, L, &name, 1, in, out);
    if (st) return st;
    L->wt = 1;
    a->tensors[a->ntensors - 2].transposed = 1;   /* the weight; its bias follows it */
    return VAEC_OK;
}

vaec_status vaec_arena_add_tensor_nd(vaec_arena *a, int64_t *offset, const char *name, int ndim,
                                     const int64_t *shape, float init_bound) {
    if (a->params) return vaec_fail(VAEC_ERR_ARG, "arena: tensors must be planned before allocation");
    if (ndim < 1 || ndim > 4) return vaec_fail(VAEC_ERR_ARG, "arena: a tensor has 1 to 4 dimensions, got %d", ndim);
    int64_t n = 1;
    for (int k = 0; k < ndim; k++) n *= shape[k];
    *offset = a->n;
    a->n = align16(a->n + n);
    return add_info(a, name, *offset, ndim, shape, init_bound);
}

vaec_status vaec_arena_add_tensor(vaec_arena *a, int64_t *offset, const char *name, int ndim, int64_t d0,
                                  int64_t d1, float init_bound) {
    const int64_t shape[2] = {d0, d1};
    return vaec_arena_add_tensor_nd(a, offset, name, ndim, shape, init_bound);
}

/* The parameter count a model file holds, while a loader on this thread builds the model
 * its config describes (-1: none): vaec_arena_alloc refuses any other count before it
 * allocates, so that a small file whose config declares a huge model is refused without
 * trying to allocate that model (and its workspace, planned after the arena). */
static _Thread_local int64_t expected_n = -1;
static _Thread_local const char *expected_file;
void vaec_arena_expect(int64_t n, const char *path) {
    expected_n = n;
    expected_file = path;
}

vaec_status vaec_arena_alloc(vaec_arena *a, uint64_t seed) {
    if (expected_n >= 0 && a->n != expected_n)
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: %lld parameters stored, its configuration has %lld",
                         expected_file ? expected_file : "the model file", (long long)expected_n, (long long)a->n);
    size_t n = (size_t)(a->n > 0 ? a->n : 1);
    if (n > vaec_memory_size() / (4 * sizeof(float)))   /* params, grads, two Adam moments */
        return vaec_fail(VAEC_ERR_NOMEM, "out of memory: a model of %lld parameters needs %.3g GB, this machine has %.3g GB",
                         (long long)a->n, 16.0 * (double)a->n / 1e9, (double)vaec_memory_size() / 1e9);
    a->params = vaec_alloc(n, sizeof(float));
    a->grads = vaec_alloc(n, sizeof(float));
    a->adam_m = vaec_alloc(n, sizeof(float));
    a->adam_v = vaec_alloc(n, sizeof(float));
    if (!a->params || !a->grads || !a->adam_m || !a->adam_v) {
        vaec_arena_free(a);
        return vaec_fail(VAEC_ERR_NOMEM, "out of memory allocating %lld parameters", (long long)a->n);
    }
    a->adam = (vaec_adam_config){0.9f, 0.999f, 1e-8f};
    a->step = 0;
    a->optimizer = VAEC_OPT_ADAM;
    a->weight_decay = 0.0f;
    for (int t = 0; t < a->ntensors; t++) {
        const vaec_tensor_info *ti = &a->tensors[t];
        int64_t count = tensor_size(ti);
        /* drawn in the tensor's row-major order (a transposed one into the gradient
         * buffer, then moved), so the values do not depend on the layout */
        float *p = (ti->transposed ? a->grads : a->params) + ti->offset;
        if (ti->init_bound == 0.0f) continue;  /* zeros */
        vaec_rng_uniform(p, count, seed, INIT_STREAM(t), 0);
        for (int64_t i = 0; i < count; i++) p[i] = (2.0f * p[i] - 1.0f) * ti->init_bound;
    }
    vaec_arena_from_rowmajor(a, a->grads, a->params);
    memset(a->grads, 0, (size_t)a->n * sizeof(float));   /* no gradient yet */
    return VAEC_OK;
}

vaec_status vaec_arena_init_normal(vaec_arena *a, uint64_t seed, float std) {
    if (!(std > 0.0f) || !isfinite(std)) return vaec_fail(VAEC_ERR_ARG, "init_std must be a finite number > 0, got %g", std);
    /* drawn row-major into the gradient buffer, then placed (a transposed tensor through
     * its row-major copy there) */
    vaec_arena_to_rowmajor(a, a->params, a->grads);
    for (int t = 0; t < a->ntensors; t++) {
        const vaec_tensor_info *ti = &a->tensors[t];
        if (ti->init_bound == 0.0f) continue;  /* zeros stay zeros */
        float *p = a->grads + ti->offset;
        int64_t count = tensor_size(ti);
        vaec_rng_normal(p, count, seed, INIT_STREAM(t), 0);
        for (int64_t i = 0; i < count; i++) p[i] *= std;
        if (!ti->transposed) memcpy(a->params + ti->offset, p, (size_t)count * sizeof(float));
    }
    vaec_arena_from_rowmajor(a, a->grads, a->params);   /* the transposed ones */
    memset(a->grads, 0, (size_t)a->n * sizeof(float));   /* no gradient yet */
    return VAEC_OK;
}

/* Every transposed tensor of `a` from src to dst (same layout otherwise): to row-major
 * (the tensor's (shape[0], shape[1]) order) or from it. Other tensors are not touched. */
static void move_transposed(const vaec_arena *a, const float *src, float *dst, int to_rowmajor) {
    for (int t = 0; t < a->ntensors; t++) {
        const vaec_tensor_info *ti = &a->tensors[t];
        if (!ti->transposed) continue;
        const int64_t R = ti->shape[0], C = ti->shape[1];
        const float *s = src + ti->offset;
        float *d = dst + ti->offset;
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++) {
                if (to_rowmajor) d[i * C + j] = s[j * R + i];
                else d[j * R + i] = s[i * C + j];
            }
    }
}
void vaec_arena_to_rowmajor(const vaec_arena *a, const float *src, float *dst) { move_transposed(a, src, dst, 1); }
void vaec_arena_from_rowmajor(const vaec_arena *a, const float *src, float *dst) { move_transposed(a, src, dst, 0); }

int vaec_arena_has_transposed(const vaec_arena *a) {
    for (int t = 0; t < a->ntensors; t++)
        if (a->tensors[t].transposed) return 1;
    return 0;
}

void vaec_arena_free(vaec_arena *a) {
    vaec_free(a->params);
    vaec_free(a->grads);
    vaec_free(a->adam_m);
    vaec_free(a->adam_v);
    a->params = a->grads = a->adam_m = a->adam_v = NULL;
}

void vaec_arena_zero_grads(vaec_arena *a) { memset(a->grads, 0, (size_t)a->n * sizeof(float)); }

int vaec_arena_find(const vaec_arena *a, const char *name) {
    for (int t = 0; t < a->ntensors; t++)
        if (strcmp(a->tensors[t].name, name) == 0) return t;
    return -1;
}

vaec_status vaec_arena_adam_set(vaec_arena *a, vaec_adam_config c) {
    if (!(c.beta1 >= 0.0f && c.beta1 < 1.0f)) return vaec_fail(VAEC_ERR_ARG, "beta1 must be in [0, 1), got %g", c.beta1);
    if (!(c.beta2 >= 0.0f && c.beta2 < 1.0f)) return vaec_fail(VAEC_ERR_ARG, "beta2 must be in [0, 1), got %g", c.beta2);
    /* Adam adds eps * sqrt(1 - beta2^t) (>= eps * 2.4e-4 for a float beta2 < 1), which must
     * stay a normal float: the pool's jobs flush subnormals to zero, and a zero there makes
     * 0/0 for a parameter whose gradients have all been zero. */
    if (!(c.eps >= 1e-30f) || !isfinite(c.eps))
        return vaec_fail(VAEC_ERR_ARG, "eps must be a finite number >= 1e-30, got %g", c.eps);
    a->adam = c;
    return VAEC_OK;
}

void vaec_arena_adam_reset(vaec_arena *a) {
    memset(a->adam_m, 0, (size_t)a->n * sizeof(float));
    memset(a->adam_v, 0, (size_t)a->n * sizeof(float));
    a->step = 0;
}

vaec_status vaec_arena_optimizer_set(vaec_arena *a, vaec_optimizer optimizer, float weight_decay) {
    if (optimizer != VAEC_OPT_ADAM && optimizer != VAEC_OPT_ADAGRAD)
        return vaec_fail(VAEC_ERR_ARG, "optimizer: unknown code %d", (int)optimizer);
    if (!(weight_decay >= 0.0f) || !isfinite(weight_decay))
        return vaec_fail(VAEC_ERR_ARG, "weight_decay must be a finite number >= 0, got %g", weight_decay);
    a->optimizer = optimizer;
    a->weight_decay = weight_decay;
    return VAEC_OK;
}

/* A step over the floats [lo, hi), in tasks of ADAM_GRAIN floats from lo. */
typedef struct {
    vaec_arena *a;
    int64_t lo, hi;
    vaec_elem_adam_args adam;
    vaec_elem_adagrad_args adagrad;
    _Atomic int bad;
} step_job;

static void task_range(const step_job *j, int64_t t, int64_t *a0, int64_t *a1) {
    *a0 = j->lo + t * ADAM_GRAIN;
    *a1 = *a0 + ADAM_GRAIN < j->hi ? *a0 + ADAM_GRAIN : j->hi;
}

/* a task's slice: check finiteness first (an exponent of all ones is Inf or NaN); an
 * integer OR-reduction, so the compiler vectorizes it */
static void finite_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    step_job *j = ctx;
    int64_t a0, a1;
    task_range(j, t, &a0, &a1);
    const float *g = j->a->grads;
    /* An all-ones exponent (Inf or NaN) is the only one that carries into bit 31 when
     * 2^23 is added to it: a branch-free OR reduction the compiler vectorizes. */
    uint32_t acc = 0;
    for (int64_t i = a0; i < a1; i++) {
        uint32_t u;
        memcpy(&u, g + i, sizeof u);
        acc |= (u & 0x7f800000u) + 0x00800000u;
    }
    if (acc >> 31) atomic_store(&j->bad, 1);
}

static void adam_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    step_job *j = ctx;
    vaec_arena *a = j->a;
    int64_t a0, a1;
    task_range(j, t, &a0, &a1);
    vaec_elem_adam(a1 - a0, a->params + a0, a->grads + a0, a->adam_m + a0, a->adam_v + a0, &j->adam);
}

static void adagrad_task(void *ctx, int64_t t, int tid) {
    (void)tid;
    step_job *j = ctx;
    vaec_arena *a = j->a;
    int64_t a0, a1;
    task_range(j, t, &a0, &a1);
    vaec_elem_adagrad(a1 - a0, a->params + a0, a->grads + a0, a->adam_v + a0, &j->adagrad);
}

/* The step on [lo, hi); nonfinite 0 or 1 from a caller that checked the gradients as they
 * were written, -1 to check them here. */
static vaec_status arena_step(vaec_arena *a, vaec_pool *pool, float lr, int64_t lo, int64_t hi, int nonfinite) {
    if (!(lr >= 0.0f) || !isfinite(lr)) return vaec_fail(VAEC_ERR_ARG, "lr must be a finite number >= 0, got %g", lr);
    if (lo < 0 || hi > a->n || lo > hi)
        return vaec_fail(VAEC_ERR_ARG, "step: the range [%lld, %lld) is not within the arena's %lld floats",
                         (long long)lo, (long long)hi, (long long)a->n);
    step_job j = {a, lo, hi, {a->adam.beta1, a->adam.beta2, 0.0f, 0.0f, a->weight_decay},
                  {lr, a->adam.eps, a->weight_decay}, 0};
    int64_t tasks = vaec_ntasks(hi - lo, ADAM_GRAIN);
    if (nonfinite < 0) vaec_pool_run(pool, finite_task, &j, tasks);
    else atomic_store(&j.bad, nonfinite);
    if (atomic_load(&j.bad)) return vaec_fail(VAEC_ERR_NONFINITE, "a gradient is NaN or Inf; the step was not taken");
    a->step++;
    if (a->optimizer == VAEC_OPT_ADAGRAD) {
        vaec_pool_run(pool, adagrad_task, &j, tasks);
        return VAEC_OK;
    }
    double sqrt_bc2 = sqrt(1.0 - pow(a->adam.beta2, (double)a->step));
    j.adam.step = (float)(lr * sqrt_bc2 / (1.0 - pow(a->adam.beta1, (double)a->step)));
    j.adam.eps_bc2 = (float)(a->adam.eps * sqrt_bc2);
    vaec_pool_run(pool, adam_task, &j, tasks);
    return VAEC_OK;
}

vaec_status vaec_arena_step(vaec_arena *a, vaec_pool *pool, float lr) { return arena_step(a, pool, lr, 0, a->n, -1); }

vaec_status vaec_arena_step_range(vaec_arena *a, vaec_pool *pool, float lr, int64_t lo, int64_t hi) {
    return arena_step(a, pool, lr, lo, hi, -1);
}

vaec_status vaec_arena_step_range_ex(vaec_arena *a, vaec_pool *pool, float lr, int64_t lo, int64_t hi, int nonfinite) {
    return arena_step(a, pool, lr, lo, hi, nonfinite);
}

vaec_status vaec_arena_adam_step(vaec_arena *a, vaec_pool *pool, float lr) { return arena_step(a, pool, lr, 0, a->n, -1); }

vaec_status vaec_arena_adam_step_ex(vaec_arena *a, vaec_pool *pool, float lr, int nonfinite) {
    return arena_step(a, pool, lr, 0, a->n, nonfinite);
}
