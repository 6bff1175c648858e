// The avx2 build of the kernels: its vector API, then every pass (entry-inl.hpp).
#include "vec/avx2.hpp"
#include "entry-inl.hpp"
