// Scalar "vectors" of width 1: the portable baseline, and the reference for
// what every vec/*.hpp provides. See vec/avx2.hpp for the contract of each op.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace fastattn {
namespace FASTATTN_ISA {  // scalar

#include "../common/half-inl.hpp"

template <class T>
struct Vec {
    using reg = T;
    static constexpr int width = 1;
    static constexpr int registers = 16;  // vector registers, for sizing register tiles

    static reg zero() { return T(0); }
    static reg set1(T x) { return x; }
    static reg load(const T* p) { return *p; }
    static void store(T* p, reg x) { *p = x; }
    static reg add(reg a, reg b) { return a + b; }
    static reg sub(reg a, reg b) { return a - b; }
    static reg mul(reg a, reg b) { return a * b; }
    static reg div(reg a, reg b) { return a / b; }
    // Plain multiply-add: the baseline target has no FMA unit, and std::fma
    // would fall back to a slow software routine.
    static reg fma(reg a, reg b, reg c) { return a * b + c; }
    static reg max(reg a, reg b) { return a > b ? a : b; }  // b if either is NaN
    static reg min(reg a, reg b) { return a < b ? a : b; }  // b if either is NaN
    static reg round(reg x) { return std::nearbyint(x); }
    static reg scale_pow2(reg p, reg n) {
        return n == n ? std::ldexp(p, static_cast<int>(n)) : n;  // int(NaN) is UB
    }
    static reg zero_if_less(reg x, reg bound, reg val) { return x < bound ? T(0) : val; }
    static reg abs(reg x) { return std::fabs(x); }
    static reg select_lt(reg a, reg b, reg t, reg f) { return a < b ? t : f; }
    static reg add_bias(reg s, reg b) { return b == -std::numeric_limits<T>::infinity() ? b : s + b; }
    static reg load_f16(const uint16_t* p) { return f16_to_f32(*p); }
    static reg load_bf16(const uint16_t* p) { return bf16_to_f32(*p); }
    static reg load_i8(const int8_t* p) { return static_cast<T>(*p); }
    static void store_f16(uint16_t* p, reg x) { *p = f32_to_f16(x); }
    static void store_bf16(uint16_t* p, reg x) { *p = f32_to_bf16(x); }
    static T reduce_add(reg x) { return x; }
    static T reduce_max(reg x) { return x; }
};

}  // namespace FASTATTN_ISA
}  // namespace fastattn
