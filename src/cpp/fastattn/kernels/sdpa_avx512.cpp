#include "vec_avx512.hpp"
#include "sdpa-inl.hpp"
#include "backward-inl.hpp"
