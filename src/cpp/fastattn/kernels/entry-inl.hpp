// The entry points of one ISA's translation unit (attention_<isa>.cpp
// includes its vector header, its engines, then this): the dtype switch into
// the typed forward and backward passes, and the math functions for accuracy
// tests. dispatch.cpp declares the same signatures (isa_entry.hpp), and its
// table says which ISA's entry runs each dtype.
//
// The TU names its engine per storage type and precision before including this file:
//     template <class S, Precision P> struct EngineFor { using type = <engine, or void>; };
// void: the TU has no engine for S at that precision, and dispatch.cpp never routes it there.
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

template <class E, class Run>
void run_engine(Run& run) {
    if constexpr (std::is_void<E>::value)
        throw std::logic_error("fastattn: this ISA's entry has no engine for the dtype and precision (dispatch table)");
    else
        run(EngineTag<E>{});
}

// run(EngineTag<E>{}) with the engine of storage type S at args' precision (one compiled
// pass for the precisions that share an engine: the same E, the same instantiation).
template <class S, class Run>
void with_engine(const AttentionArgs& args, Run&& run) {
    switch (args.precision) {
        case Precision::medium: return run_engine<typename EngineFor<S, Precision::medium>::type>(run);
        case Precision::high: return run_engine<typename EngineFor<S, Precision::high>::type>(run);
        case Precision::highest: break;
    }
    run_engine<typename EngineFor<S, Precision::highest>::type>(run);
}

}  // namespace

void forward(const AttentionArgs& args) {
    with_storage_type(args.dtype, [&](auto storage) {
        using S = decltype(storage);
        with_engine<S>(args, [&](auto engine) {
            using E = typename decltype(engine)::type;
            // int8 K/V (a KVCache's; q is float32) are the FMA engine's: dispatch routes them there.
            if constexpr (std::is_same<E, FmaEngine<float>>::value)
                if (args.paged.int8) return forward_typed<float, int8_t, E>(args);
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
