/* simd.h -- one small SIMD mapping, so each kernel is written once.
 *
 * Before including, a kernel file defines exactly one of VAEC_SIMD_AVX512,
 * VAEC_SIMD_AVX2, VAEC_SIMD_NEON or VAEC_SIMD_SCALAR. It gets:
 *   vf            the vector type, VF_LEN floats
 *   VF_ZERO()     VF_SET1(x)   VF_LOAD(p)   VF_STORE(p, v)   (unaligned)
 *   VF_FMA(a,b,c) a*b + c      VF_ADD(a,b)  VF_MUL(a,b)
 *   VAEC_SUFFIX   the name suffix of the kernels compiled in this file
 * The x86 files are compiled with target attributes (pragmas below), never with
 * -march flags, so one binary carries every path and cpu.c picks one at run time. */
#ifndef VAEC_SIMD_H
#define VAEC_SIMD_H

#define VAEC_CAT_(a, b) a##b
#define VAEC_CAT(a, b) VAEC_CAT_(a, b)
#define KFN(name) VAEC_CAT(name, VAEC_SUFFIX)

#if defined(VAEC_SIMD_AVX512)
#  if defined(__clang__)
#    pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))), apply_to = function)
#  elif defined(__GNUC__)
#    pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#  endif
#  include <immintrin.h>
typedef __m512 vf;
#  define VF_LEN 16
#  define VF_ZERO() _mm512_setzero_ps()
#  define VF_SET1(x) _mm512_set1_ps(x)
#  define VF_LOAD(p) _mm512_loadu_ps(p)
#  define VF_STORE(p, v) _mm512_storeu_ps((p), (v))
#  define VF_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#  define VF_ADD(a, b) _mm512_add_ps((a), (b))
#  define VF_MUL(a, b) _mm512_mul_ps((a), (b))
#  define VAEC_SUFFIX _avx512
#elif defined(VAEC_SIMD_AVX2)
#  if defined(__clang__)
#    pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#  elif defined(__GNUC__)
#    pragma GCC target("avx2,fma")
#  endif
#  include <immintrin.h>
typedef __m256 vf;
#  define VF_LEN 8
#  define VF_ZERO() _mm256_setzero_ps()
#  define VF_SET1(x) _mm256_set1_ps(x)
#  define VF_LOAD(p) _mm256_loadu_ps(p)
#  define VF_STORE(p, v) _mm256_storeu_ps((p), (v))
#  define VF_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#  define VF_ADD(a, b) _mm256_add_ps((a), (b))
#  define VF_MUL(a, b) _mm256_mul_ps((a), (b))
#  define VAEC_SUFFIX _avx2
#elif defined(VAEC_SIMD_NEON)
#  include <arm_neon.h>
typedef float32x4_t vf;
#  define VF_LEN 4
#  define VF_ZERO() vdupq_n_f32(0.0f)
#  define VF_SET1(x) vdupq_n_f32(x)
#  define VF_LOAD(p) vld1q_f32(p)
#  define VF_STORE(p, v) vst1q_f32((p), (v))
#  define VF_FMA(a, b, c) vfmaq_f32((c), (a), (b))
#  define VF_ADD(a, b) vaddq_f32((a), (b))
#  define VF_MUL(a, b) vmulq_f32((a), (b))
#  define VAEC_SUFFIX _neon
#elif defined(VAEC_SIMD_SCALAR)
typedef float vf;
#  define VF_LEN 1
#  define VF_ZERO() 0.0f
#  define VF_SET1(x) (x)
#  define VF_LOAD(p) (*(p))
#  define VF_STORE(p, v) (*(p) = (v))
#  define VF_FMA(a, b, c) ((a) * (b) + (c))
#  define VF_ADD(a, b) ((a) + (b))
#  define VF_MUL(a, b) ((a) * (b))
#  define VAEC_SUFFIX _scalar
#else
#  error "define one of VAEC_SIMD_AVX512, VAEC_SIMD_AVX2, VAEC_SIMD_NEON, VAEC_SIMD_SCALAR"
#endif

/* Close the clang attribute region opened above; call at the end of the kernel file. */
#if defined(__clang__) && (defined(VAEC_SIMD_AVX512) || defined(VAEC_SIMD_AVX2))
#  define VAEC_SIMD_END _Pragma("clang attribute pop")
#else
#  define VAEC_SIMD_END
#endif

#endif
