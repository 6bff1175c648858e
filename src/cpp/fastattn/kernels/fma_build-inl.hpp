// The FMA engine for every dtype and precision, then every pass (entry-inl.hpp): the whole of
// a build that has no matrix engine (attention_scalar.cpp, _avx2, _avx512, _neon), after its
// vector header.
#pragma once

#include "engines/fma-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {
template <class S, Precision>
struct EngineFor {
    using type = FmaEngine<ComputeType<S>>;
};
}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "entry-inl.hpp"
