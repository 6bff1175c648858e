#include "vec_neon.hpp"
#include "sdpa-inl.hpp"
