// The amx build: AVX-512 vectors (the softmax) and, for bfloat16, float16 and float32 ("high", "medium"), the AMX engine
// (engines/amx-inl.hpp) on the tile unit: the hardware, or its model when a test asks
// (set_amx_model_for_testing). Its other dtypes run the avx512 build's FMA engine:
// dispatch.cpp's table routes float64 and float32 "highest" elsewhere.
#include "vec/avx512.hpp"
#include "engines/amx-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {
template <class S, Precision P>
struct EngineFor : AmxEngineFor<AmxSwitch, S, P> {};
}  // namespace

// Tests: run this ISA's tiles on the software model (true) or the hardware (false); between calls.
void set_amx_model_for_testing(bool model) { amx_model_switch() = model; }

}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "entry-inl.hpp"
