// The entry points each per-ISA translation unit defines (entry-inl.hpp), and
// dispatch.cpp declares once per compiled ISA. One home for the signatures.
#pragma once

#include <cstdint>

#include "../api.hpp"

#define FASTATTN_DECLARE_ISA_ENTRY(isa)                                         \
    namespace fastattn {                                                        \
    namespace isa {                                                             \
    void forward(const AttentionArgs& args);                                    \
    void backward(const AttentionArgs& args, const GradArgs& grad);             \
    /* y = fn(x) elementwise with this ISA's vexp/vtanh; for accuracy tests. */ \
    void math_array(MathFn fn, DType dtype, const void* x, void* y, int64_t n); \
    /* The engine's products on given operands (api.hpp); for tile tests. */    \
    void products(const ProductArgs& args);                                     \
    }                                                                           \
    }
