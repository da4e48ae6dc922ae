/* util.c -- error messages, aligned allocation and the range check of float arrays. */
#define _POSIX_C_SOURCE 200112L
#include "internal.h"
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>

static _Thread_local char err_buf[512];
static _Thread_local int err_errno;

int vaec_last_errno(void) { return err_errno; }
void vaec_set_errno(int err) { err_errno = err; }

const char *vaec_last_error(void) { return err_buf; }

void vaec_clear_error(void) { err_buf[0] = '\0'; }

vaec_status vaec_fail(vaec_status status, const char *fmt, ...) {
    if (status != VAEC_ERR_IO && status != VAEC_ERR_NOTFOUND) err_errno = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return status;
}

/* The machine's physical memory in bytes (SIZE_MAX when unknown), read once: a benign
 * race, every thread computes the same value and stores it atomically. */
static _Atomic size_t phys_bytes;
size_t vaec_memory_size(void) {
    size_t b = atomic_load_explicit(&phys_bytes, memory_order_relaxed);
    if (!b) {
        b = SIZE_MAX;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0 && (unsigned long)pages <= SIZE_MAX / (unsigned long)page)
            b = (size_t)pages * (size_t)page;
#endif
        atomic_store_explicit(&phys_bytes, b, memory_order_relaxed);
    }
    return b;
}

void *vaec_alloc(size_t count, size_t size) {
    if (size != 0 && count > (SIZE_MAX - 64) / size) return NULL;
    size_t bytes = count * size;
    /* more than the machine's memory cannot be used: refused before trying (with Linux's
     * overcommit such a request may succeed, and the memset below would then be killed) */
    if (bytes > vaec_memory_size()) return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    if (bytes == 0) bytes = 64;
    void *p = NULL;
#if defined(_WIN32)
    p = _aligned_malloc(bytes, 64);
#else
    if (posix_memalign(&p, 64, bytes) != 0) p = NULL;
#endif
    if (p) memset(p, 0, bytes);
    return p;
}

void vaec_free(void *p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

/* Blocks of CHECK_BLOCK values are tested by a branch-free OR reduction, which the
 * baseline build vectorizes (a loop that exits at the first bad value does not); only a
 * block that holds a bad value is scanned again for its first one. NaN fails every
 * comparison, so it fails both `v >= lo` and `v <= hi` (lo, hi = -+FLT_MAX without a range:
 * the test for Inf too); `|` rather than `&&` keeps the loop free of branches. */
#define CHECK_BLOCK 1024
static int64_t check_first_bad(const float *x, int64_t n, float lo, float hi, int check_range) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (!isfinite(v)) return i;
        if (check_range && (v < lo || v > hi)) return i;
    }
    return -1;
}

int64_t vaec_check_range(const float *x, int64_t n, float lo, float hi, int check_range) {
    if (!check_range) {
        lo = -FLT_MAX;
        hi = FLT_MAX;
    }
    for (int64_t i0 = 0; i0 < n; i0 += CHECK_BLOCK) {
        int64_t m = n - i0 < CHECK_BLOCK ? n - i0 : CHECK_BLOCK;
        const float *b = x + i0;
        int bad = 0;
        for (int64_t i = 0; i < m; i++) bad |= !(b[i] >= lo) | !(b[i] <= hi);
        if (bad) return i0 + check_first_bad(b, m, lo, hi, check_range);
    }
    return -1;
}
