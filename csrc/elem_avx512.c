/* elem_avx512.c -- the elementwise kernels (elem_kernel.inc, vmath.inc) for AVX-512F/DQ (16 lanes). */
#include "elem.h"
#if defined(VAEC_X86)
#define VAEC_SIMD_AVX512
#include "simd.h"
#include "elem_kernel.inc"
VAEC_SIMD_END
#endif
