#include "vec_avx2.hpp"
#include "sdpa-inl.hpp"
#include "backward-inl.hpp"
