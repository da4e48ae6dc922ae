/* simd.h -- one small SIMD mapping, so each kernel is written once.
 *
 * Before including, a kernel file defines exactly one of VAEC_SIMD_AVX512,
 * VAEC_SIMD_AVX2, VAEC_SIMD_NEON or VAEC_SIMD_SCALAR. It gets:
 *   vf            the vector type, VF_LEN floats
 *   VF_ZERO()     VF_SET1(x)   VF_LOAD(p)   VF_STORE(p, v)   (unaligned)
 *   VF_FMA(a,b,c) a*b + c      VF_ADD(a,b)  VF_MUL(a,b)
 *   VAEC_SUFFIX   the name suffix of the kernels compiled in this file
 * and, for the elementwise math (vmath.inc):
 *   VF_SUB VF_DIV VF_SQRT (correctly rounded on every ISA)
 *   VF_FNMA(a,b,c) c - a*b   (scalar: not fused, like VF_FMA)
 *   VF_MIN(a,b) VF_MAX(a,b)   a < b ? a : b, a > b ? a : b. NaN: if b is NaN the result is
 *                 NaN on every ISA (x86 returns b, NEON propagates), so put the constant
 *                 first and the variable second when NaN must pass through.
 *   VF_AND VF_OR VF_XOR VF_ANDNOT(a,b) (~a & b)   bitwise on the float bits
 *   VF_ABS VF_NEG VF_SIGNBIT(a) (only the sign bit of a kept)
 *   vm            a lane mask; VF_LT VF_LE VF_GT VF_GE VF_EQ (ordered: false on NaN),
 *                 VF_ISNAN, VM_AND VM_OR, VF_SELECT(m, a, b) m ? a : b per lane
 *   vi            int32 lanes; VI_SET1 VI_ADD VI_SUB VI_AND VI_SLLI(a,k) VI_SRAI(a,k)
 *                 (arithmetic), VF_AS_VI / VI_AS_VF reinterpret the bits, VI_TO_VF
 *                 converts the value. Scalar integer arithmetic wraps (no UB).
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
typedef __mmask16 vm;
typedef __m512i vi;
#  define VF_SUB(a, b) _mm512_sub_ps((a), (b))
#  define VF_DIV(a, b) _mm512_div_ps((a), (b))
#  define VF_SQRT(a) _mm512_sqrt_ps(a)
#  define VF_FNMA(a, b, c) _mm512_fnmadd_ps((a), (b), (c))
#  define VF_MIN(a, b) _mm512_min_ps((a), (b))
#  define VF_MAX(a, b) _mm512_max_ps((a), (b))
#  define VF_AND(a, b) _mm512_and_ps((a), (b))
#  define VF_OR(a, b) _mm512_or_ps((a), (b))
#  define VF_XOR(a, b) _mm512_xor_ps((a), (b))
#  define VF_ANDNOT(a, b) _mm512_andnot_ps((a), (b))
#  define VF_LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#  define VF_LE(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LE_OQ)
#  define VF_GT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ)
#  define VF_GE(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GE_OQ)
#  define VF_EQ(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_EQ_OQ)
#  define VF_ISNAN(a) _mm512_cmp_ps_mask((a), (a), _CMP_UNORD_Q)
#  define VM_AND(a, b) ((vm)((a) & (b)))
#  define VM_OR(a, b) ((vm)((a) | (b)))
#  define VF_SELECT(m, a, b) _mm512_mask_blend_ps((m), (b), (a))
#  define VI_SET1(i) _mm512_set1_epi32(i)
#  define VI_ADD(a, b) _mm512_add_epi32((a), (b))
#  define VI_SUB(a, b) _mm512_sub_epi32((a), (b))
#  define VI_AND(a, b) _mm512_and_si512((a), (b))
#  define VI_SLLI(a, k) _mm512_slli_epi32((a), (k))
#  define VI_SRAI(a, k) _mm512_srai_epi32((a), (k))
#  define VF_AS_VI(a) _mm512_castps_si512(a)
#  define VI_AS_VF(a) _mm512_castsi512_ps(a)
#  define VI_TO_VF(a) _mm512_cvtepi32_ps(a)
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
typedef __m256 vm;
typedef __m256i vi;
#  define VF_SUB(a, b) _mm256_sub_ps((a), (b))
#  define VF_DIV(a, b) _mm256_div_ps((a), (b))
#  define VF_SQRT(a) _mm256_sqrt_ps(a)
#  define VF_FNMA(a, b, c) _mm256_fnmadd_ps((a), (b), (c))
#  define VF_MIN(a, b) _mm256_min_ps((a), (b))
#  define VF_MAX(a, b) _mm256_max_ps((a), (b))
#  define VF_AND(a, b) _mm256_and_ps((a), (b))
#  define VF_OR(a, b) _mm256_or_ps((a), (b))
#  define VF_XOR(a, b) _mm256_xor_ps((a), (b))
#  define VF_ANDNOT(a, b) _mm256_andnot_ps((a), (b))
#  define VF_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#  define VF_LE(a, b) _mm256_cmp_ps((a), (b), _CMP_LE_OQ)
#  define VF_GT(a, b) _mm256_cmp_ps((a), (b), _CMP_GT_OQ)
#  define VF_GE(a, b) _mm256_cmp_ps((a), (b), _CMP_GE_OQ)
#  define VF_EQ(a, b) _mm256_cmp_ps((a), (b), _CMP_EQ_OQ)
#  define VF_ISNAN(a) _mm256_cmp_ps((a), (a), _CMP_UNORD_Q)
#  define VM_AND(a, b) _mm256_and_ps((a), (b))
#  define VM_OR(a, b) _mm256_or_ps((a), (b))
#  define VF_SELECT(m, a, b) _mm256_blendv_ps((b), (a), (m))
#  define VI_SET1(i) _mm256_set1_epi32(i)
#  define VI_ADD(a, b) _mm256_add_epi32((a), (b))
#  define VI_SUB(a, b) _mm256_sub_epi32((a), (b))
#  define VI_AND(a, b) _mm256_and_si256((a), (b))
#  define VI_SLLI(a, k) _mm256_slli_epi32((a), (k))
#  define VI_SRAI(a, k) _mm256_srai_epi32((a), (k))
#  define VF_AS_VI(a) _mm256_castps_si256(a)
#  define VI_AS_VF(a) _mm256_castsi256_ps(a)
#  define VI_TO_VF(a) _mm256_cvtepi32_ps(a)
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
typedef uint32x4_t vm;
typedef int32x4_t vi;
#  define VF_SUB(a, b) vsubq_f32((a), (b))
#  define VF_DIV(a, b) vdivq_f32((a), (b))
#  define VF_SQRT(a) vsqrtq_f32(a)
#  define VF_FNMA(a, b, c) vfmsq_f32((c), (a), (b))
#  define VF_MIN(a, b) vminq_f32((a), (b))
#  define VF_MAX(a, b) vmaxq_f32((a), (b))
#  define VF_AND(a, b) vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(b)))
#  define VF_OR(a, b) vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(b)))
#  define VF_XOR(a, b) vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(b)))
#  define VF_ANDNOT(a, b) vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(b), vreinterpretq_u32_f32(a)))
#  define VF_LT(a, b) vcltq_f32((a), (b))
#  define VF_LE(a, b) vcleq_f32((a), (b))
#  define VF_GT(a, b) vcgtq_f32((a), (b))
#  define VF_GE(a, b) vcgeq_f32((a), (b))
#  define VF_EQ(a, b) vceqq_f32((a), (b))
#  define VF_ISNAN(a) vmvnq_u32(vceqq_f32((a), (a)))
#  define VM_AND(a, b) vandq_u32((a), (b))
#  define VM_OR(a, b) vorrq_u32((a), (b))
#  define VF_SELECT(m, a, b) vbslq_f32((m), (a), (b))
#  define VI_SET1(i) vdupq_n_s32(i)
#  define VI_ADD(a, b) vaddq_s32((a), (b))
#  define VI_SUB(a, b) vsubq_s32((a), (b))
#  define VI_AND(a, b) vandq_s32((a), (b))
#  define VI_SLLI(a, k) vshlq_n_s32((a), (k))
#  define VI_SRAI(a, k) vshrq_n_s32((a), (k))
#  define VF_AS_VI(a) vreinterpretq_s32_f32(a)
#  define VI_AS_VF(a) vreinterpretq_f32_s32(a)
#  define VI_TO_VF(a) vcvtq_f32_s32(a)
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
#  include <stdint.h>
typedef int vm;
typedef int32_t vi;
/* Bits of a float as int32 and back (union punning is defined in C11). */
static inline int32_t vaec_f2i_(float f) { union { float f; int32_t i; } u; u.f = f; return u.i; }
static inline float vaec_i2f_(int32_t i) { union { float f; int32_t i; } u; u.i = i; return u.f; }
/* Wrapping int32 arithmetic without signed overflow (GCC/clang convert modulo 2^32). */
static inline int32_t vaec_wrap_(uint32_t u) { return (int32_t)u; }
static inline int32_t vaec_srai_(int32_t a, int k) { return a < 0 ? ~(~a >> k) : a >> k; }
/* m ? a : b through the bits, so compilers emit no data-dependent branch (m is 0 or 1). */
static inline float vaec_sel_(int m, float a, float b) {
    int32_t mask = -(int32_t)m;
    return vaec_i2f_((vaec_f2i_(a) & mask) | (vaec_f2i_(b) & ~mask));
}
#  define VF_SUB(a, b) ((a) - (b))
#  define VF_DIV(a, b) ((a) / (b))
#  define VF_SQRT(a) sqrtf(a)
#  define VF_FNMA(a, b, c) ((c) - (a) * (b))
#  define VF_MIN(a, b) vaec_sel_((a) < (b), (a), (b))
#  define VF_MAX(a, b) vaec_sel_((a) > (b), (a), (b))
#  define VF_AND(a, b) vaec_i2f_(vaec_f2i_(a) & vaec_f2i_(b))
#  define VF_OR(a, b) vaec_i2f_(vaec_f2i_(a) | vaec_f2i_(b))
#  define VF_XOR(a, b) vaec_i2f_(vaec_f2i_(a) ^ vaec_f2i_(b))
#  define VF_ANDNOT(a, b) vaec_i2f_(~vaec_f2i_(a) & vaec_f2i_(b))
#  define VF_LT(a, b) ((a) < (b))
#  define VF_LE(a, b) ((a) <= (b))
#  define VF_GT(a, b) ((a) > (b))
#  define VF_GE(a, b) ((a) >= (b))
#  define VF_EQ(a, b) ((a) == (b))
#  define VF_ISNAN(a) ((a) != (a))
#  define VM_AND(a, b) ((a) & (b))
#  define VM_OR(a, b) ((a) | (b))
#  define VF_SELECT(m, a, b) vaec_sel_((m), (a), (b))
#  define VI_SET1(i) ((int32_t)(i))
#  define VI_ADD(a, b) vaec_wrap_((uint32_t)(a) + (uint32_t)(b))
#  define VI_SUB(a, b) vaec_wrap_((uint32_t)(a) - (uint32_t)(b))
#  define VI_AND(a, b) ((a) & (b))
#  define VI_SLLI(a, k) vaec_wrap_((uint32_t)(a) << (k))
#  define VI_SRAI(a, k) vaec_srai_((a), (k))
#  define VF_AS_VI(a) vaec_f2i_(a)
#  define VI_AS_VF(a) vaec_i2f_(a)
#  define VI_TO_VF(a) ((float)(a))
#else
#  error "define one of VAEC_SIMD_AVX512, VAEC_SIMD_AVX2, VAEC_SIMD_NEON, VAEC_SIMD_SCALAR"
#endif

/* Derived, the same on every ISA. */
#define VF_SIGNMASK() VF_SET1(-0.0f)
#define VF_ABS(a) VF_ANDNOT(VF_SIGNMASK(), (a))
#define VF_NEG(a) VF_XOR((a), VF_SIGNMASK())
#define VF_SIGNBIT(a) VF_AND((a), VF_SIGNMASK())

/* Close the clang attribute region opened above; call at the end of the kernel file. */
#if defined(__clang__) && (defined(VAEC_SIMD_AVX512) || defined(VAEC_SIMD_AVX2))
#  define VAEC_SIMD_END _Pragma("clang attribute pop")
#else
#  define VAEC_SIMD_END
#endif

#endif
