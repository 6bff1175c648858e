// The entry points of one ISA's translation unit (attention_<isa>.cpp
// includes its vector header, its engines, then this): the dtype switch into
// the typed forward and backward passes, and the math functions for accuracy
// tests. dispatch.cpp declares the same signatures (isa_entry.hpp), and its
// table says which ISA's entry runs each dtype.
//
// The TU names its engine per storage type and precision before including this file:
//     template <class S, Precision P> struct EngineFor { using type = <engine, or void>; };
// void: the TU has no engine for S and dispatch.cpp never routes S to it. A precision
// whose engine is the highest's shares its compiled passes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "backward-inl.hpp"
#include "common/storage-inl.hpp"
#include "engine_products-inl.hpp"
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

namespace {

template <class E>
struct EngineTag {
    using type = E;
};

// run(EngineTag<E>{}) with the engine of storage type S at args' precision.
template <class S, class Run>
void with_engine(const AttentionArgs& args, Run&& run) {
    using Highest = typename EngineFor<S, Precision::highest>::type;
    using High = typename EngineFor<S, Precision::high>::type;
    using Medium = typename EngineFor<S, Precision::medium>::type;
    if constexpr (std::is_void<Highest>::value) {
        throw std::logic_error("fastattn: this ISA's entry has no engine for the dtype (dispatch table)");
    } else {
        if constexpr (!std::is_same<Medium, Highest>::value)
            if (args.precision == Precision::medium) return run(EngineTag<Medium>{});
        if constexpr (!std::is_same<High, Highest>::value)
            if (args.precision == Precision::high) return run(EngineTag<High>{});
        run(EngineTag<Highest>{});
    }
}

}  // namespace

void forward(const AttentionArgs& args) {
    with_storage_type(args.dtype, [&](auto storage) {
        using S = decltype(storage);
        with_engine<S>(args, [&](auto engine) {
            using E = typename decltype(engine)::type;
            if constexpr (std::is_same<S, float>::value)
                if (args.paged.int8) return forward_typed<float, int8_t, E>(args);  // check_args: q is float32
            forward_typed<S, S, E>(args);
        });
    });
}

void backward(const AttentionArgs& args, const GradArgs& grad) {
    with_storage_type(args.dtype, [&](auto storage) {
        using S = decltype(storage);
        with_engine<S>(args, [&](auto engine) { backward_typed<S, typename decltype(engine)::type>(args, grad); });
    });
}

void products(const ProductArgs& args) {
    with_storage_type(args.dtype, [&](auto storage) {
        using S = decltype(storage);
        with_engine<S>(AttentionArgs{product_call(args)}, [&](auto engine) {
            using E = typename decltype(engine)::type;
            if (args.sums)
                engine_sums<S, E>(args);
            else
                engine_scores<S, E>(args);
        });
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
