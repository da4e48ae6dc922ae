/* elem_avx2.c -- the elementwise kernels (elem_kernel.inc, vmath.inc) for AVX2+FMA (8 lanes). */
#include "elem.h"
#if defined(VAEC_X86)
#define VAEC_SIMD_AVX2
#include "simd.h"
#include "elem_kernel.inc"
VAEC_SIMD_END
#endif
