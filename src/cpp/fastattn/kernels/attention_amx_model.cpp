// The amx-model build: AVX2 vectors and, for bfloat16, float16 and float32 ("high", "medium"), the AMX engine on the software
// model of the tile unit (engines/amx_unit-inl.hpp), so that the engine's packing, tiling, tails
// and per-thread configuration run and are tested on every x86 machine. Slow: for tests.
// dispatch.cpp's table routes only bfloat16 here; "auto" never picks it.
#include "vec/avx2.hpp"
#include "engines/amx-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {
// bfloat16: 1 part, P and dS in 2 ("highest", "high") or 1 ("medium"); float16: 2 exact parts;
// float32: 3 parts ("high"), 2 with P in 1 ("medium"), "highest" none (the FMA engine's, in avx512).
template <class S, Precision P>
struct EngineFor {
    static constexpr bool kMedium = P == Precision::medium;
    using type = typename std::conditional<
        std::is_same<S, bf16>::value, AmxEngine<AmxModel, bf16, 1, kMedium ? 1 : 2, 2>,
        typename std::conditional<
            std::is_same<S, f16>::value, AmxEngine<AmxModel, f16, 2, kMedium ? 1 : 2, 3>,
            typename std::conditional<std::is_same<S, float>::value && P != Precision::highest,
                                      AmxEngine<AmxModel, float, kMedium ? 2 : 3, kMedium ? 1 : 3, kMedium ? 2 : 3>,
                                      void>::type>::type>::type;
};
}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "entry-inl.hpp"
