// The amx-model build: AVX2 vectors and, for bfloat16, float16 and float32 ("high", "medium"), the AMX engine on the software
// model of the tile unit (engines/amx_unit-inl.hpp), so that the engine's packing, tiling, tails
// and per-thread configuration run and are tested on every x86 machine. Slow: for tests.
// dispatch.cpp's table routes bfloat16, float16 and float32 ("high", "medium") here; "auto" never picks it.
#include "vec/avx2.hpp"
#include "engines/amx-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {
template <class S, Precision P>
struct EngineFor : AmxEngineFor<AmxModel, S, P> {};
}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "entry-inl.hpp"
