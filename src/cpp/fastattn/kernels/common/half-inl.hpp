// Scalar float16 / bfloat16 <-> float32 conversions, bit-exact with round to
// nearest even. Included inside a per-ISA namespace (never at namespace
// fastattn level): these inline functions are compiled with each ISA's flags,
// and one ISA's copy must never be linked into another's code.
// Needs <cstdint> and <cstring> at global scope.
#pragma once

inline float bits_to_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa · 2^-24, exact in float32
        const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) return bits_to_f32(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
    return bits_to_f32(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Round to nearest even; overflow gives inf, NaN stays NaN (quiet).
// The method of F. Giesen's float_to_half_fast3_rtne (public domain).
inline uint16_t f32_to_f16(float value) {
    const uint32_t f32_infinity = 255u << 23;
    const uint32_t f16_overflow = (127u + 16u) << 23;                       // 65536.0f
    const uint32_t denormal_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;  // 0.5f
    uint32_t f = f32_to_bits(value);
    const uint32_t sign = f & 0x80000000u;
    f ^= sign;
    uint16_t h;
    if (f >= f16_overflow) {
        h = f > f32_infinity ? 0x7e00 : 0x7c00;
    } else if (f < (113u << 23)) {
        // Below float16's normal range: adding 0.5 makes the float adder round
        // the value to float16's subnormal spacing (2^-24), right-aligned.
        h = static_cast<uint16_t>(f32_to_bits(bits_to_f32(f) + bits_to_f32(denormal_magic)) - denormal_magic);
    } else {
        const uint32_t mantissa_odd = (f >> 13) & 1u;
        f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;  // rebias; round half up...
        f += mantissa_odd;                                      // ...or to even on a tie
        h = static_cast<uint16_t>(f >> 13);
    }
    return static_cast<uint16_t>(h | (sign >> 16));
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float value) {
    uint32_t f = f32_to_bits(value);
    if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);  // quiet NaN
    f += 0x7fffu + ((f >> 16) & 1u);  // round to nearest even (overflow carries into inf)
    return static_cast<uint16_t>(f >> 16);
}
