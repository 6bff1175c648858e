// AVX-512 (F, BW, VL, DQ) vectors: 16 floats or 8 doubles. Same contract as
// vec/avx2.hpp.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace fastattn {
namespace FASTATTN_ISA {  // avx512, or an ISA built on it (avx512_bf16, amx)

template <class T>
struct Vec;

template <>
struct Vec<float> {
    using reg = __m512;
    static constexpr int width = 16;
    static constexpr int registers = 32;  // vector registers, for sizing register tiles

    static reg zero() { return _mm512_setzero_ps(); }
    static reg set1(float x) { return _mm512_set1_ps(x); }
    static reg load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, reg x) { _mm512_storeu_ps(p, x); }
    static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
    static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
    static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
    static reg round(reg x) {
        return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static reg scale_pow2(reg p, reg n) { return _mm512_scalef_ps(p, n); }
    static reg zero_if_less(reg x, reg bound, reg val) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, bound, _CMP_NLT_UQ), val);
    }
    static reg abs(reg x) { return _mm512_abs_ps(x); }
    static reg select_lt(reg a, reg b, reg t, reg f) {
        return _mm512_mask_mov_ps(f, _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), t);
    }
    static reg add_bias(reg s, reg b) {
        const __mmask16 masked = _mm512_cmp_ps_mask(b, _mm512_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
        return _mm512_mask_mov_ps(_mm512_add_ps(s, b), masked, b);
    }
    static reg load_f16(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static reg load_i8(const int8_t* p) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
    static reg load_bf16(const uint16_t* p) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    static void store_f16(uint16_t* p, reg x) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
    static void store_bf16(uint16_t* p, reg x) {  // as in vec/avx2.hpp
        const __m512i bits = _mm512_castps_si512(x);
        const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
        const __m512i quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x00400000));
        const __m512i kept = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), quiet);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(kept, 16)));
    }
    static float reduce_add(reg x) {
        __m256 s = _mm256_add_ps(_mm512_castps512_ps256(x),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        t = _mm_add_ss(t, _mm_movehdup_ps(t));
        return _mm_cvtss_f32(t);
    }
    static float reduce_max(reg x) {
        __m256 s = _mm256_max_ps(_mm512_castps512_ps256(x),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        __m128 t = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        t = _mm_max_ps(t, _mm_movehl_ps(t, t));
        t = _mm_max_ss(t, _mm_movehdup_ps(t));
        return _mm_cvtss_f32(t);
    }
};

template <>
struct Vec<double> {
    using reg = __m512d;
    static constexpr int width = 8;
    static constexpr int registers = 32;  // vector registers, for sizing register tiles

    static reg zero() { return _mm512_setzero_pd(); }
    static reg set1(double x) { return _mm512_set1_pd(x); }
    static reg load(const double* p) { return _mm512_loadu_pd(p); }
    static void store(double* p, reg x) { _mm512_storeu_pd(p, x); }
    static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
    static reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
    static reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
    static reg div(reg a, reg b) { return _mm512_div_pd(a, b); }
    static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
    static reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
    static reg min(reg a, reg b) { return _mm512_min_pd(a, b); }
    static reg round(reg x) {
        return _mm512_roundscale_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static reg scale_pow2(reg p, reg n) { return _mm512_scalef_pd(p, n); }
    static reg zero_if_less(reg x, reg bound, reg val) {
        return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, bound, _CMP_NLT_UQ), val);
    }
    static reg abs(reg x) { return _mm512_abs_pd(x); }
    static reg select_lt(reg a, reg b, reg t, reg f) {
        return _mm512_mask_mov_pd(f, _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ), t);
    }
    static reg add_bias(reg s, reg b) {
        const __mmask8 masked = _mm512_cmp_pd_mask(b, _mm512_set1_pd(-__builtin_inf()), _CMP_EQ_OQ);
        return _mm512_mask_mov_pd(_mm512_add_pd(s, b), masked, b);
    }
    static double reduce_add(reg x) {
        __m256d s = _mm256_add_pd(_mm512_castpd512_pd256(x), _mm512_extractf64x4_pd(x, 1));
        __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
        return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
    }
    static double reduce_max(reg x) {
        __m256d s = _mm256_max_pd(_mm512_castpd512_pd256(x), _mm512_extractf64x4_pd(x, 1));
        __m128d t = _mm_max_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
        return _mm_cvtsd_f64(_mm_max_sd(t, _mm_unpackhi_pd(t, t)));
    }
};

}  // namespace FASTATTN_ISA
}  // namespace fastattn
