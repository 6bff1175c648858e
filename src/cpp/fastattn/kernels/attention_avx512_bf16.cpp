// The avx512_bf16 build: AVX-512 vectors and, for bfloat16 inputs, the AVX512-BF16 engines
// (engines/bf16_dot-inl.hpp, VDPBF16PS): scores on it at precision "highest" and "high", every
// product at "medium". Its other dtypes run the avx512 build's FMA engine: dispatch.cpp's
// table routes only bfloat16 here.
#include "vec/avx512.hpp"
#include "engines/bf16_dot-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {
template <class S, Precision P>
struct EngineFor {
    using Bf16 = typename std::conditional<P == Precision::medium, Bf16RoundedEngine, Bf16ScoreEngine>::type;
    using type = typename std::conditional<std::is_same<S, bf16>::value, Bf16, void>::type;
};
}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "entry-inl.hpp"
