// The neon build of the kernels: its vector API, then every pass (entry-inl.hpp).
#include "vec/neon.hpp"
#include "entry-inl.hpp"
