// The entry points of one ISA's translation unit (attention_<isa>.cpp
// includes its vector header, then this): the dtype switch into the typed
// forward and backward passes, and the math functions for accuracy tests.
// dispatch.cpp declares the same signatures (isa_entry.hpp) and picks an ISA.
#pragma once

#include <algorithm>
#include <cstdint>

#include "backward-inl.hpp"
#include "common/storage-inl.hpp"
#include "engines/fma-inl.hpp"
#include "forward-inl.hpp"
#include "isa_entry.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

template <class T>
void math_typed(MathFn fn, const T* x, T* y, int64_t n) {
    using V = Vec<T>;
    constexpr int64_t W = V::width;
    auto f = [fn](typename V::reg r) {
        return fn == MathFn::tanh ? vtanh<T>(r) : fn == MathFn::exp2 ? vexp2<T>(r) : vexp<T>(r);
    };
    int64_t i = 0;
    for (; i + W <= n; i += W) V::store(y + i, f(V::load(x + i)));
    if (i < n) {
        T tail[W] = {};
        std::copy(x + i, x + n, tail);
        V::store(tail, f(V::load(tail)));
        std::copy(tail, tail + (n - i), y + i);
    }
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

// Declares this file's entry points with the signatures dispatch.cpp expects.
FASTATTN_DECLARE_ISA_ENTRY(FASTATTN_ISA)

namespace fastattn {
namespace FASTATTN_ISA {

void forward(const AttentionArgs& args) {
    if (args.paged.int8) return forward_typed<float, int8_t, FmaEngine<float>>(args);  // check_args: q is float32
    with_storage_type(args.dtype, [&](auto storage) {
        using S = decltype(storage);
        forward_typed<S, S, FmaEngine<ComputeType<S>>>(args);
    });
}

void backward(const AttentionArgs& args, const GradArgs& grad) {
    with_storage_type(args.dtype, [&](auto storage) {
        using S = decltype(storage);
        backward_typed<S, FmaEngine<ComputeType<S>>>(args, grad);
    });
}

void math_array(MathFn fn, DType dtype, const void* x, void* y, int64_t n) {
    if (dtype == DType::f64)
        math_typed(fn, static_cast<const double*>(x), static_cast<double*>(y), n);
    else
        math_typed(fn, static_cast<const float*>(x), static_cast<float*>(y), n);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
