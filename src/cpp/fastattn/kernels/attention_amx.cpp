// The amx build: AVX-512 vectors (the softmax) and, for bfloat16, float16 and float32 ("high", "medium"), the AMX engine
// (engines/amx-inl.hpp) on the tile unit: the hardware, or its model when a test asks
// (set_amx_model_for_testing). Its other dtypes run the avx512 build's FMA engine:
// dispatch.cpp's table routes float64 and float32 "highest" elsewhere.
#include "vec/avx512.hpp"
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
        std::is_same<S, bf16>::value, AmxEngine<AmxSwitch, bf16, 1, kMedium ? 1 : 2, 2>,
        typename std::conditional<
            std::is_same<S, f16>::value, AmxEngine<AmxSwitch, f16, 2, kMedium ? 1 : 2, 3>,
            typename std::conditional<std::is_same<S, float>::value && P != Precision::highest,
                                      AmxEngine<AmxSwitch, float, kMedium ? 2 : 3, kMedium ? 1 : 3, kMedium ? 2 : 3>,
                                      void>::type>::type>::type;
};
}  // namespace

// Tests: run this ISA's tiles on the software model (true) or the hardware (false); between calls.
void set_amx_model_for_testing(bool model) { amx_model_switch() = model; }

}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "entry-inl.hpp"
