#include "vec_neon.hpp"
#include "sdpa-inl.hpp"
#include "backward-inl.hpp"
