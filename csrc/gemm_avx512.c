/* gemm_avx512.c -- the GEMM block routine for AVX-512F: 6x32 register tile. */
#include "elem.h"   /* internal.h, math.h and string.h, before simd.h */
#if defined(VAEC_X86)
#define VAEC_SIMD_AVX512
#include "simd.h"
#define VK_MR 6
#define VK_NREG 2
#include "gemm_kernel.inc"
VAEC_SIMD_END
#endif
