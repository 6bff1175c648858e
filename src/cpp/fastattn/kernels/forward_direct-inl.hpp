// The forward pass's direct mode (decoding): tasks of at most kDirectMaxRows
// rows whose K/V head no other task reads skip packing and read K and V where
// they are, dense or paged, run by run (common/kv_rows-inl.hpp). Included at
// the end of forward-inl.hpp: these are ForwardKernel's member templates.
#pragma once

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// The scores of keys [first, last) of the block, run by run.
template <class S, class K, class E>
template <int R>
void ForwardKernel<S, K, E>::direct_scores(const T* q_rows, const KvBlock& kv, int64_t first, int64_t last,
                                           int64_t k_begin, int64_t k_end, T* scores) const {
    for (int r = 0; r < R; ++r) {  // keys of the tiles' range outside [first, last): masked later
        std::fill(scores + r * kKeyBlock + k_begin, scores + r * kKeyBlock + first, T(0));
        std::fill(scores + r * kKeyBlock + last, scores + r * kKeyBlock + k_end, T(0));
    }
    kv.src->for_each_run(a_, kv.key0 + first, kv.key0 + last,
                         [&](int64_t j, int64_t n, const K* k_rows, const K*, const T* k_scale, const T*) {
                             E::template unpacked_scores<R>(q_rows, a_.d, k_rows, a_.k_strides.row, 0, n,
                                                               scores + (j - kv.key0), kKeyBlock, k_scale);
                         });
}

// acc = acc·alpha + p·V over each row's keys, V read in place, run by run.
template <class S, class K, class E>
template <int R>
void ForwardKernel<S, K, E>::direct_sums(const int64_t* lo, const int64_t* hi, const T* alpha, const KvBlock& kv,
                                      int64_t first, int64_t last, const T* scores, T* acc) const {
    // The block's value rows, run by run (one run for dense V).
    using Run = typename E::template Run<K>;
    Run runs[kKeyBlock];
    int64_t num_runs = 0;
    kv.src->for_each_run(a_, kv.key0 + first, kv.key0 + last,
                         [&](int64_t j, int64_t n, const K*, const K* v_rows, const T*, const T* v_scale) {
                             runs[num_runs++] = Run{j - kv.key0, n, v_rows, v_scale};
                         });
    // Rows that see the same keys, with no mask to skip zeros for (decoding a GQA
    // group): one pass over V for all of them; else row by row.
    bool shared = !rules_.has_mask() && lo[0] < hi[0];
    for (int r = 1; r < R; ++r) shared = shared && lo[r] == lo[0] && hi[r] == hi[0];
    if (shared) {
        E::template unpacked_sum_rows<R>(scores, kKeyBlock, lo[0], hi[0], alpha, runs, num_runs,
                                            a_.v_strides.row, a_.dv, acc, dv_pad_);
        return;
    }
    for (int r = 0; r < R; ++r)
        if (lo[r] < hi[r])
            E::unpacked_sum(scores + r * kKeyBlock, lo[r], hi[r], alpha[r], runs, num_runs,
                               a_.v_strides.row, a_.dv, rules_.has_mask(), acc + r * dv_pad_);
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
