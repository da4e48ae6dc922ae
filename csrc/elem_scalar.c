/* elem_scalar.c -- the elementwise kernels (elem_kernel.inc, vmath.inc) for any CPU (the scalar mapping, 1 lane). */
#include "elem.h"
#define VAEC_SIMD_SCALAR
#include "simd.h"
#include "elem_kernel.inc"
