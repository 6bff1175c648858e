// The neon build of the kernels: its vector API, then the FMA engine for every dtype and
// every pass (fma_build-inl.hpp).
#include "vec/neon.hpp"
#include "fma_build-inl.hpp"
