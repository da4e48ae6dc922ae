/* elem_neon.c -- the elementwise kernels (elem_kernel.inc, vmath.inc) for aarch64 NEON (4 lanes). */
#include "elem.h"
#if defined(VAEC_ARM64)
#define VAEC_SIMD_NEON
#include "simd.h"
#include "elem_kernel.inc"
#endif
