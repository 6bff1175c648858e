// NEON (AArch64 Advanced SIMD) vectors: 4 floats or 2 doubles. Same contract
// as vec/avx2.hpp. vmaxq propagates NaN from either operand, which keeps the
// contract's one promise that matters: max(bound, NaN) is NaN.
#pragma once

#include <arm_neon.h>

#include <cstdint>

namespace fastattn {
namespace FASTATTN_ISA {  // neon

template <class T>
struct Vec;

template <>
struct Vec<float> {
    using reg = float32x4_t;
    static constexpr int width = 4;
    static constexpr int registers = 32;  // vector registers, for sizing register tiles

    static reg zero() { return vdupq_n_f32(0.0f); }
    static reg set1(float x) { return vdupq_n_f32(x); }
    static reg load(const float* p) { return vld1q_f32(p); }
    static void store(float* p, reg x) { vst1q_f32(p, x); }
    static reg add(reg a, reg b) { return vaddq_f32(a, b); }
    static reg sub(reg a, reg b) { return vsubq_f32(a, b); }
    static reg mul(reg a, reg b) { return vmulq_f32(a, b); }
    static reg div(reg a, reg b) { return vdivq_f32(a, b); }
    static reg fma(reg a, reg b, reg c) { return vfmaq_f32(c, a, b); }
    static reg max(reg a, reg b) { return vmaxq_f32(a, b); }
    static reg min(reg a, reg b) { return vminq_f32(a, b); }
    static reg round(reg x) { return vrndnq_f32(x); }
    static reg scale_pow2(reg p, reg n) {
        int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
        return vmulq_f32(p, vreinterpretq_f32_s32(e));
    }
    static reg zero_if_less(reg x, reg bound, reg val) {
        uint32x4_t keep = vmvnq_u32(vcltq_f32(x, bound));
        return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(val), keep));
    }
    static reg abs(reg x) { return vabsq_f32(x); }
    static reg select_lt(reg a, reg b, reg t, reg f) { return vbslq_f32(vcltq_f32(a, b), t, f); }
    static reg add_bias(reg s, reg b) {
        return vbslq_f32(vceqq_f32(b, vdupq_n_f32(-__builtin_inff())), b, vaddq_f32(s, b));
    }
    static reg load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
    static reg load_i8(const int8_t* p) {
        int8_t lanes[8] = {p[0], p[1], p[2], p[3], 0, 0, 0, 0};  // 4 values: never read past them
        return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vld1_s8(lanes)))));
    }
    static reg load_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
    static void store_f16(uint16_t* p, reg x) { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(x))); }
    static void store_bf16(uint16_t* p, reg x) {  // as in vec/avx2.hpp
        const uint32x4_t bits = vreinterpretq_u32_f32(x);
        const uint32x4_t odd = vandq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(1));
        const uint32x4_t rounded = vaddq_u32(bits, vaddq_u32(vdupq_n_u32(0x7fff), odd));
        const uint32x4_t quiet = vorrq_u32(bits, vdupq_n_u32(0x00400000));
        const uint32x4_t is_num = vceqq_f32(x, x);
        vst1_u16(p, vshrn_n_u32(vbslq_u32(is_num, rounded, quiet), 16));
    }
    static float reduce_add(reg x) {
        float32x2_t s = vadd_f32(vget_low_f32(x), vget_high_f32(x));
        return vget_lane_f32(vpadd_f32(s, s), 0);
    }
    static float reduce_max(reg x) { return vmaxvq_f32(x); }
};

template <>
struct Vec<double> {
    using reg = float64x2_t;
    static constexpr int width = 2;
    static constexpr int registers = 32;  // vector registers, for sizing register tiles

    static reg zero() { return vdupq_n_f64(0.0); }
    static reg set1(double x) { return vdupq_n_f64(x); }
    static reg load(const double* p) { return vld1q_f64(p); }
    static void store(double* p, reg x) { vst1q_f64(p, x); }
    static reg add(reg a, reg b) { return vaddq_f64(a, b); }
    static reg sub(reg a, reg b) { return vsubq_f64(a, b); }
    static reg mul(reg a, reg b) { return vmulq_f64(a, b); }
    static reg div(reg a, reg b) { return vdivq_f64(a, b); }
    static reg fma(reg a, reg b, reg c) { return vfmaq_f64(c, a, b); }
    static reg max(reg a, reg b) { return vmaxq_f64(a, b); }
    static reg min(reg a, reg b) { return vminq_f64(a, b); }
    static reg round(reg x) { return vrndnq_f64(x); }
    static reg scale_pow2(reg p, reg n) {
        int64x2_t e = vshlq_n_s64(vaddq_s64(vcvtnq_s64_f64(n), vdupq_n_s64(1023)), 52);
        return vmulq_f64(p, vreinterpretq_f64_s64(e));
    }
    static reg zero_if_less(reg x, reg bound, reg val) {
        uint64x2_t less = vcltq_f64(x, bound);
        return vreinterpretq_f64_u64(vbicq_u64(vreinterpretq_u64_f64(val), less));
    }
    static reg abs(reg x) { return vabsq_f64(x); }
    static reg select_lt(reg a, reg b, reg t, reg f) { return vbslq_f64(vcltq_f64(a, b), t, f); }
    static reg add_bias(reg s, reg b) {
        return vbslq_f64(vceqq_f64(b, vdupq_n_f64(-__builtin_inf())), b, vaddq_f64(s, b));
    }
    static double reduce_add(reg x) { return vgetq_lane_f64(x, 0) + vgetq_lane_f64(x, 1); }
    static double reduce_max(reg x) { return vmaxvq_f64(x); }
};

}  // namespace FASTATTN_ISA
}  // namespace fastattn
