// The entry points each per-ISA translation unit defines, and dispatch.cpp
// declares once per compiled ISA. One home for the signatures.
#pragma once

#include <cstdint>

#include "../sdpa.hpp"

#define FASTATTN_DECLARE_ISA_ENTRY(isa)                                      \
    namespace fastattn {                                                     \
    namespace isa {                                                          \
    void forward(const SdpaArgs& args);                                      \
    /* y = exp(x) elementwise with this ISA's vexp; for accuracy tests. */   \
    void exp_array(DType dtype, const void* x, void* y, int64_t n);          \
    }                                                                        \
    }
