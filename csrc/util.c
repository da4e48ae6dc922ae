/* util.c -- error messages and aligned allocation. */
#define _POSIX_C_SOURCE 200112L
#include "internal.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>

static _Thread_local char err_buf[512];

const char *vaec_last_error(void) { return err_buf; }

void vaec_clear_error(void) { err_buf[0] = '\0'; }

vaec_status vaec_fail(vaec_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return status;
}

void *vaec_alloc(size_t count, size_t size) {
    if (size != 0 && count > (SIZE_MAX - 64) / size) return NULL;
    size_t bytes = count * size;
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
