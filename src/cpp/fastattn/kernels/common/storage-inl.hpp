// Storage and compute types, used by both passes. q, k, v, out and the
// gradients are stored as float, double, float16 or bfloat16; float16 and
// bfloat16 are widened to float32 as they are read (block by block, never a
// full-size copy) and narrowed once per element when written, with round to
// nearest even. Also brings the vectorised exp/exp2/tanh (math-inl.hpp).
//
// Included inside nothing: it opens namespace fastattn::FASTATTN_ISA itself,
// after the ISA's vector header (vec/<isa>.hpp) has been included.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../../api.hpp"

#ifndef FASTATTN_ISA
#error "FASTATTN_ISA must name the target ISA (set by CMakeLists.txt)"
#endif

// "<isa>_<kind>": an engine's name as show_config() reports it (e.g. "avx512_fma").
#define FASTATTN_STRINGIFY_(x) #x
#define FASTATTN_STRINGIFY(x) FASTATTN_STRINGIFY_(x)
#define FASTATTN_ENGINE_NAME(kind) FASTATTN_STRINGIFY(FASTATTN_ISA) "_" kind

namespace fastattn {
namespace FASTATTN_ISA {

// Inline helpers compiled with this ISA's flags: inside the ISA's namespace, so
// that one ISA's copy is never linked into another's code (ODR).
#include "half-inl.hpp"
#include "math-inl.hpp"

namespace {

// 16-bit storage formats, computed in float32.
struct f16 {
    uint16_t bits;
};
struct bf16 {
    uint16_t bits;
};

// Storage type S -> compute type T, element by element and a vector at a time.
template <class S>
struct Storage {  // float, double: stored as computed
    using T = S;
    static T widen(S x) { return x; }
    static S narrow(T x) { return x; }
    static typename Vec<T>::reg load(const S* p) { return Vec<T>::load(p); }
    static void store(S* p, typename Vec<T>::reg x) { Vec<T>::store(p, x); }
};
template <>
struct Storage<f16> {
    using T = float;
    static T widen(f16 x) { return f16_to_f32(x.bits); }
    static f16 narrow(T x) { return f16{f32_to_f16(x)}; }
    static Vec<float>::reg load(const f16* p) { return Vec<float>::load_f16(reinterpret_cast<const uint16_t*>(p)); }
    static void store(f16* p, Vec<float>::reg x) { Vec<float>::store_f16(reinterpret_cast<uint16_t*>(p), x); }
};
template <>
struct Storage<bf16> {
    using T = float;
    static T widen(bf16 x) { return bf16_to_f32(x.bits); }
    static bf16 narrow(T x) { return bf16{f32_to_bf16(x)}; }
    static Vec<float>::reg load(const bf16* p) { return Vec<float>::load_bf16(reinterpret_cast<const uint16_t*>(p)); }
    static void store(bf16* p, Vec<float>::reg x) { Vec<float>::store_bf16(reinterpret_cast<uint16_t*>(p), x); }
};

// int8 (a KVCache's quantised keys and values; read, never written): each row
// is dequantised as int8 values times that row's float32 scale, which the
// callers pass as widen_row's factor.
template <>
struct Storage<int8_t> {
    using T = float;
    static T widen(int8_t x) { return static_cast<T>(x); }
    static Vec<float>::reg load(const int8_t* p) { return Vec<float>::load_i8(p); }
};

template <class S>
using ComputeType = typename Storage<S>::T;

// Calls f(S{}) with the storage type of `dtype`: the one switch from the
// API's dtype code to a typed kernel.
template <class F>
void with_storage_type(DType dtype, F&& f) {
    switch (dtype) {
        case DType::f64: return f(double{});
        case DType::f16: return f(f16{});
        case DType::bf16: return f(bf16{});
        case DType::f32: break;
    }
    f(float{});
}

// dst[c] = widen(src[c])·factor for c < n. factor = 1 is a plain widening
// (a copy for float and double); otherwise one rounding per element.
template <class S>
void widen_row(const S* src, int64_t n, ComputeType<S> factor, ComputeType<S>* dst) {
    using T = ComputeType<S>;
    using V = Vec<T>;
    constexpr int64_t W = V::width;
    int64_t c = 0;
    if (factor == T(1)) {
        if (std::is_same<S, T>::value) {
            std::memcpy(dst, src, n * sizeof(T));
            return;
        }
        for (; c + W <= n; c += W) V::store(dst + c, Storage<S>::load(src + c));
        for (; c < n; ++c) dst[c] = Storage<S>::widen(src[c]);
        return;
    }
    const typename V::reg f = V::set1(factor);
    for (; c + W <= n; c += W) V::store(dst + c, V::mul(Storage<S>::load(src + c), f));
    for (; c < n; ++c) dst[c] = Storage<S>::widen(src[c]) * factor;
}

// dst[c] = narrow(src[c]·factor) for c < n.
template <class S>
void narrow_row(const ComputeType<S>* src, int64_t n, ComputeType<S> factor, S* dst) {
    using V = Vec<ComputeType<S>>;
    constexpr int64_t W = V::width;
    const typename V::reg f = V::set1(factor);
    int64_t c = 0;
    for (; c + W <= n; c += W) Storage<S>::store(dst + c, V::mul(V::load(src + c), f));
    for (; c < n; ++c) dst[c] = Storage<S>::narrow(src[c] * factor);
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
