// The avx2 build of the kernels: its vector API, then the FMA engine for every dtype and
// every pass (fma_build-inl.hpp).
#include "vec/avx2.hpp"
#include "fma_build-inl.hpp"
