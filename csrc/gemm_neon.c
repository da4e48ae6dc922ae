/* gemm_neon.c -- the GEMM block routine for aarch64 NEON: 6x8 register tile. */
#include "elem.h"   /* internal.h, math.h and string.h, before simd.h */
#if defined(VAEC_ARM64)
#define VAEC_SIMD_NEON
#include "simd.h"
#define VK_MR 6
#define VK_NREG 2
#include "gemm_kernel.inc"
#endif
