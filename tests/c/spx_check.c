/* spx_check.c -- the sparse copy of an input (vaec_spx_build, sparse.c and the ISA's
 * by-rows kernel) counts every row's and column's nonzeros exactly, on every x86 path
 * this CPU has, after the stack has been filled with ones.
 *
 * Why the stack: GCC 12.2 at -O1/-O2 with -fsanitize=thread compiled the AVX-512 kernel's
 * `__builtin_popcount((unsigned)nz)` (nz a 16-bit mask) as a 16-bit spill of the mask and
 * a popcount of a 32-bit load of its slot, so two bytes of whatever the stack held were
 * counted too: a row now and then got a wrong count, and the sparse-or-dense choice of
 * the first layer (and with it the last bits of a model's results) changed from process
 * to process. Filling the stack first makes such a read fail every time. .ci/run builds
 * this file with -O1 -fsanitize=thread (the build that showed it) and with -O2.
 *
 *   gcc -std=c11 -O1 -g -fsanitize=thread -Icsrc tests/c/spx_check.c csrc/[a-z]*.c -lm -lpthread -o /tmp/spx_check
 *
 * Prints "spx_check: N passed, M failed" and exits non-zero on failure. */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;
static void check(int ok, const char *what) {
    if (!ok) printf("  %-70s FAILED\n", what);
    if (ok) passed++; else failed++;
}

/* a few pages of the stack below the caller's frame set to all ones, then left */
__attribute__((noinline)) static void poison_stack(void) {
    volatile unsigned char buf[1 << 16];
    memset((void *)buf, 0xff, sizeof buf);
    __asm__ volatile("" : : "r"(buf) : "memory");
}

__attribute__((noinline)) static int one_case(int64_t R, int64_t K, int64_t ldx, double density, unsigned seed,
                                              const char *isa) {
    float *X = malloc(sizeof(float) * (size_t)(R * ldx));
    if (!X) return 0;
    unsigned s = seed;
    for (int64_t i = 0; i < R * ldx; i++) {
        s = s * 1664525u + 1013904223u;
        double u = (s >> 8) / 16777216.0;
        X[i] = u < density ? (float)(1.0 + u) : 0.0f;
    }
    vaec_spx sp;
    memset(&sp, 0, sizeof sp);
    int ok = vaec_spx_alloc(&sp, R, K) == VAEC_OK;
    if (ok) {
        poison_stack();
        ok = vaec_spx_build(NULL, X, ldx, R, K, &sp) == 1;
    }
    int64_t nnz = 0, bad_rows = 0, bad_cols = 0, bad_vals = 0;
    for (int64_t k = 0; ok && k < K; k++) {
        int64_t c = 0;
        for (int64_t i = 0; i < R; i++) c += X[i * ldx + k] != 0.0f;
        bad_cols += c != sp.ccnt[k];
    }
    for (int64_t i = 0; ok && i < R; i++) {
        int64_t c = 0;
        for (int64_t k = 0; k < K; k++)
            if (X[i * ldx + k] != 0.0f) {
                bad_vals += c < sp.rcnt[i] && (sp.ridx[i * sp.ldr + c] != k || sp.rval[i * sp.ldr + c] != X[i * ldx + k]);
                c++;
            }
        nnz += c;
        bad_rows += c != sp.rcnt[i];
    }
    char what[160];
    snprintf(what, sizeof what, "%s: %lld x %lld (ld %lld), density %.2f: rows %lld, cols %lld, entries %lld wrong", isa,
             (long long)R, (long long)K, (long long)ldx, density, (long long)bad_rows, (long long)bad_cols,
             (long long)bad_vals);
    check(ok && !bad_rows && !bad_cols && !bad_vals && sp.nnz == nnz, what);
    vaec_spx_free(&sp);
    free(X);
    return ok;
}

int main(void) {
    vaec_sparse_mode_set(VAEC_SPARSE_ALWAYS);
    const vaec_isa isas[] = {VAEC_ISA_SCALAR, VAEC_ISA_AVX2, VAEC_ISA_AVX512, VAEC_ISA_NEON};
    const int64_t shapes[][3] = {{200, 64, 64}, {33, 784, 784}, {100, 20, 24}, {64, 17, 17}, {40, 15, 16}, {1, 5, 5}};
    const double dens[] = {0.0, 0.13, 0.3, 0.7, 1.0};
    for (size_t a = 0; a < sizeof isas / sizeof isas[0]; a++) {
        if (vaec_cpu_set_isa(isas[a]) != isas[a]) continue;   /* not on this CPU */
        for (size_t h = 0; h < sizeof shapes / sizeof shapes[0]; h++)
            for (size_t d = 0; d < sizeof dens / sizeof dens[0]; d++)
                for (unsigned seed = 1; seed <= 3; seed++)
                    one_case(shapes[h][0], shapes[h][1], shapes[h][2], dens[d], seed, vaec_isa_name(isas[a]));
    }
    printf("spx_check: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
