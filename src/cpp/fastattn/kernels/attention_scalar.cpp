// The scalar build of the kernels: its vector API, then every pass (entry-inl.hpp).
#include "vec/scalar.hpp"
#include "entry-inl.hpp"
