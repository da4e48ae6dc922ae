/* cpu.c -- CPUID feature detection and the choice of kernel path (ISA).
 *
 * The library is compiled for the baseline target (no -march=native); the faster
 * kernels are compiled with per-function target attributes (gemm_avx2.c, gemm_avx512.c)
 * and chosen here at run time. VAEC_ISA in the environment can lower the choice. */
#define _GNU_SOURCE
#include "internal.h"
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sched.h>
#endif
#include <pthread.h>
#include <unistd.h>

#if defined(VAEC_X86)
#include <cpuid.h>
static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}
#endif

/* Detection runs once per process (pthread_once: threads that start at the same time all
 * wait for it, and none sees the feature string half written); the active path is atomic,
 * as vaec_cpu_set_isa may change it while other threads read it. */
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static vaec_isa best_isa = VAEC_ISA_SCALAR;
static _Atomic int active_isa = VAEC_ISA_SCALAR;
static char features[256] = "";

static void add_feature(const char *name) {
    size_t len = strlen(features);
    snprintf(features + len, sizeof features - len, "%s%s", len ? "," : "", name);
}

static vaec_isa isa_from_env(vaec_isa fallback) {
    const char *s = getenv("VAEC_ISA");
    if (!s || !*s) return fallback;
    for (int i = 0; i <= VAEC_ISA_AVX512; i++)
        if (strcmp(s, vaec_isa_name((vaec_isa)i)) == 0) return (vaec_isa)i;
    return fallback;  /* unknown names are reported by the Python layer */
}

/* The closest path to `isa` the CPU can run: never above the best one, and NEON and the
 * x86 paths are not ordered against each other, so only lower within a family. */
static vaec_isa clamp_isa(vaec_isa isa) {
    if (isa == VAEC_ISA_NEON && best_isa != VAEC_ISA_NEON) isa = VAEC_ISA_SCALAR;
    if ((isa == VAEC_ISA_AVX2 || isa == VAEC_ISA_AVX512) && best_isa == VAEC_ISA_NEON) isa = VAEC_ISA_NEON;
    return isa < best_isa ? isa : best_isa;
}

static void detect_now(void) {
    best_isa = VAEC_ISA_SCALAR;
#if defined(VAEC_X86)
    unsigned a, b, c, d;
    int avx = 0, avx2 = 0, fma = 0, avx512 = 0;
    add_feature("sse2");
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        int osxsave = (c >> 27) & 1;
        fma = (c >> 12) & 1;
        if (osxsave && ((c >> 28) & 1)) {
            uint64_t xcr0 = xgetbv0();
            avx = (xcr0 & 0x6) == 0x6;           /* XMM and YMM state enabled by the OS */
            if (avx && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
                avx2 = (b >> 5) & 1;
                int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
                avx512 = f && dq && bw && vl && ((xcr0 & 0xe6) == 0xe6);  /* + opmask, ZMM state */
            }
        }
    }
    if (avx) add_feature("avx");
    if (fma) add_feature("fma");
    if (avx2) add_feature("avx2");
    if (avx512) add_feature("avx512f,avx512dq,avx512bw,avx512vl");
    if (avx2 && fma) best_isa = VAEC_ISA_AVX2;
    if (avx512 && fma) best_isa = VAEC_ISA_AVX512;
#elif defined(VAEC_ARM64)
    add_feature("neon");
    best_isa = VAEC_ISA_NEON;
#endif
    atomic_store(&active_isa, (int)clamp_isa(isa_from_env(best_isa)));
}

static void detect(void) { pthread_once(&detect_once, detect_now); }

const char *vaec_isa_name(vaec_isa isa) {
    switch (isa) {
    case VAEC_ISA_NAIVE: return "naive";
    case VAEC_ISA_SCALAR: return "scalar";
    case VAEC_ISA_NEON: return "neon";
    case VAEC_ISA_AVX2: return "avx2";
    case VAEC_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

vaec_isa vaec_cpu_best_isa(void) { detect(); return best_isa; }
vaec_isa vaec_cpu_active_isa(void) {
    detect();
    return (vaec_isa)atomic_load_explicit(&active_isa, memory_order_relaxed);
}

vaec_isa vaec_cpu_set_isa(vaec_isa isa) {
    detect();
    vaec_isa now = clamp_isa(isa);
    atomic_store(&active_isa, (int)now);
    return now;
}

const char *vaec_cpu_features(void) { detect(); return features; }

int vaec_cpu_count(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
