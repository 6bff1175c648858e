// The scalar build of the kernels: its vector API, the FMA engine for every dtype, then
// every pass (entry-inl.hpp).
#include "vec/scalar.hpp"
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
