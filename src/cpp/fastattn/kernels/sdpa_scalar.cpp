#include "vec_scalar.hpp"
#include "sdpa-inl.hpp"
#include "backward-inl.hpp"
