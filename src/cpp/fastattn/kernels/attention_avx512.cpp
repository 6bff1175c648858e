// The avx512 build of the kernels: its vector API, then every pass (entry-inl.hpp).
#include "vec/avx512.hpp"
#include "entry-inl.hpp"
