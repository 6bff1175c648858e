// AVX2 + FMA vectors: 8 floats or 4 doubles in a 256-bit register.
//
// The contract every vec/*.hpp keeps (kernels rely on it):
//   load/store     unaligned
//   fma(a, b, c)   a*b + c with one rounding where the ISA has FMA
//   max, min       return b when either operand is NaN (the x86 MAXPS rule), so
//                  max(bound, x) keeps a NaN x: exp() relies on this to clamp
//   round(x)       to nearest, ties to even
//   scale_pow2     p * 2^n for integral-valued n in the normal exponent range
//   zero_if_less   val where !(x < bound), else 0 (a NaN x keeps val)
//   reduce_*       a fixed reduction order, so results are reproducible
//   abs(x)         |x|
//   select_lt      (a < b) ? t : f, lane by lane (false for NaN)
//   add_bias(s, b) s + b, except -inf where b is -inf: a masked key's score is
//                  -inf even when s is NaN, so NaN cannot leak past a mask
//   load_f16/bf16  (float only) 16-bit floats widened to float32, exactly
//   load_i8        (float only) int8 values (a KVCache's) converted to float32, exactly
//   store_f16/bf16 (float only) narrowed with round to nearest even, NaN kept
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace fastattn {
namespace FASTATTN_ISA {  // avx2, or an ISA built on it (amx_model)

template <class T>
struct Vec;

template <>
struct Vec<float> {
    using reg = __m256;
    static constexpr int width = 8;
    static constexpr int registers = 16;  // vector registers, for sizing register tiles

    static reg zero() { return _mm256_setzero_ps(); }
    static reg set1(float x) { return _mm256_set1_ps(x); }
    static reg load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, reg x) { _mm256_storeu_ps(p, x); }
    static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
    static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
    static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
    static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
    static reg round(reg x) {
        return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static reg scale_pow2(reg p, reg n) {
        // Build 2^n directly in the exponent field: (n + 127) << 23.
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    }
    static reg zero_if_less(reg x, reg bound, reg val) {
        return _mm256_and_ps(val, _mm256_cmp_ps(x, bound, _CMP_NLT_UQ));
    }
    static reg abs(reg x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
    static reg select_lt(reg a, reg b, reg t, reg f) { return _mm256_blendv_ps(f, t, _mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
    static reg add_bias(reg s, reg b) {
        const reg masked = _mm256_cmp_ps(b, _mm256_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
        return _mm256_blendv_ps(_mm256_add_ps(s, b), b, masked);
    }
    static reg load_f16(const uint16_t* p) {  // F16C
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static reg load_i8(const int8_t* p) {  // 8 int8 values, exactly
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    }
    static reg load_bf16(const uint16_t* p) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
    static void store_f16(uint16_t* p, reg x) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
    static void store_bf16(uint16_t* p, reg x) {
        // bits + 0x7fff + (bit 16) rounds to nearest even in the top half; a
        // NaN instead gets its quiet bit set so that truncation keeps it NaN.
        const __m256i bits = _mm256_castps_si256(x);
        const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
        const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
        const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        const __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x00400000));
        const __m256i top = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, nan), 16);
        const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(top), _mm256_extracti128_si256(top, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
    }
    static float reduce_add(reg x) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static float reduce_max(reg x) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
};

template <>
struct Vec<double> {
    using reg = __m256d;
    static constexpr int width = 4;
    static constexpr int registers = 16;  // vector registers, for sizing register tiles

    static reg zero() { return _mm256_setzero_pd(); }
    static reg set1(double x) { return _mm256_set1_pd(x); }
    static reg load(const double* p) { return _mm256_loadu_pd(p); }
    static void store(double* p, reg x) { _mm256_storeu_pd(p, x); }
    static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
    static reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
    static reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
    static reg div(reg a, reg b) { return _mm256_div_pd(a, b); }
    static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
    static reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
    static reg min(reg a, reg b) { return _mm256_min_pd(a, b); }
    static reg round(reg x) {
        return _mm256_round_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static reg scale_pow2(reg p, reg n) {
        // AVX2 has no double -> int64 conversion. Adding 1.5·2^52 puts the
        // integer n in the low mantissa bits; subtracting that constant's bit
        // pattern recovers n as int64, then (n + 1023) << 52 is 2^n.
        const __m256d magic = _mm256_set1_pd(6755399441055744.0);  // 1.5 * 2^52
        __m256i ni = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(n, magic)),
                                      _mm256_castpd_si256(magic));
        __m256i e = _mm256_slli_epi64(_mm256_add_epi64(ni, _mm256_set1_epi64x(1023)), 52);
        return _mm256_mul_pd(p, _mm256_castsi256_pd(e));
    }
    static reg zero_if_less(reg x, reg bound, reg val) {
        return _mm256_and_pd(val, _mm256_cmp_pd(x, bound, _CMP_NLT_UQ));
    }
    static reg abs(reg x) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), x); }
    static reg select_lt(reg a, reg b, reg t, reg f) { return _mm256_blendv_pd(f, t, _mm256_cmp_pd(a, b, _CMP_LT_OQ)); }
    static reg add_bias(reg s, reg b) {
        const reg masked = _mm256_cmp_pd(b, _mm256_set1_pd(-__builtin_inf()), _CMP_EQ_OQ);
        return _mm256_blendv_pd(_mm256_add_pd(s, b), b, masked);
    }
    static double reduce_add(reg x) {
        __m128d s = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
        return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
    }
    static double reduce_max(reg x) {
        __m128d s = _mm_max_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
        return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
    }
};

}  // namespace FASTATTN_ISA
}  // namespace fastattn
