/* gemm_scalar.c -- the portable GEMM block routine (any CPU): 4x4 register tile. */
#include "elem.h"   /* internal.h, math.h and string.h, before simd.h */
#define VAEC_SIMD_SCALAR
#include "simd.h"
#define VK_MR 4
#define VK_NREG 4
#include "gemm_kernel.inc"
