// Internal to the C++ library (not part of api.hpp): the thread count a
// kernel call runs with, for dispatch.cpp.
#pragma once

namespace fastattn {

// The threads a call with `requested` threads (0: the default) and
// `multiply_adds` of work runs with: >= 1, at most the processors available,
// and only as many as have enough work each. Results never depend on it.
int threads_for(int requested, double multiply_adds);

// The size of the last thread team a kernel call opened from the calling
// thread (1 for a call run on it alone): what tests check thread counts by.
void record_team_size(int n);

// How long a team a kernel call opened took from its opening until its last
// thread began (run_threads measures it): threads_for's evidence of whether
// teams start fast in this process now (threads.cpp).
void record_team_start(double seconds);

}  // namespace fastattn
