// The backward pass's work on one query block against one key block
// (backward-inl.hpp has the schedule): softmax_grad_row, a row's P and dS
// from its scores and dP, and weighted_sums, the block's dV, dK and dQ
// products. Included at the end of backward-inl.hpp: BackwardKernel's members.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// Row r of the block (query position i of head h): turns its scores into
// P = exp(s − lse) and its dP into dS = P ∘ (dP − D) (∘ the softcap's
// derivative), over key vectors [0, n); zero outside [lo, hi).
template <class S, class E>
void BackwardKernel<S, E>::softmax_grad_row(int64_t h, int64_t i, int64_t r, int64_t lo, int64_t hi, int64_t n,
                                            int64_t key0, const Sequence& seq, Workspace& ws) const {
    T* p = ws.p.data() + r * kKeys;
    T* ds = ws.ds.data() + r * kKeys;
    if (lo >= hi) {
        std::fill(p, p + n, T(0));
        std::fill(ds, ds + n, T(0));
        return;
    }
    T* cap_grad = a_.softcap > 0 ? ws.cap_grad.data() + r * kKeys : nullptr;
    T* bias = nullptr;
    if (rules_.has_mask()) {
        bias = ws.bias.data();
        rules_.mask_bias(rules_.mask_row(seq.b, h, i), key0, lo, hi, bias);
    }
    rules_.shape_row(p, 0, n, lo, hi, static_cast<T>(i + seq.diag_off), rules_.alibi_slope(seq.b, h),
                     ws.key_index.data(), bias, cap_grad);
    if (ws.lse[r] != ws.lse[r]) {  // a NaN row (from its q or out): P, dS NaN only where it sees
        for (int64_t j = 0; j < n; ++j)
            p[j] = ds[j] = p[j] == neg_inf_ ? T(0) : std::numeric_limits<T>::quiet_NaN();
        return;
    }
    // (s − lse)·log2(e) as (s − lse_hi)·log2(e) − lse_lo·log2(e), one FMA: the
    // difference is exact where P is not negligible (s within a factor 2 of
    // lse_hi: Sterbenz), and lse_lo (0 for a compute-dtype lse) costs no op.
    const auto shift = V::set1(ws.lse[r]), shift_lo = V::set1(-ws.lse_lo[r] * ExpConstants<T>::log2e);
    const auto log2e = V::set1(ExpConstants<T>::log2e);
    // P below the smallest normal number is 0 here: the kernels flush subnormal results, and a
    // subnormal bound would itself read as 0 (common/fp_env.hpp).
    const auto delta = V::set1(ws.delta[r]), tiny = V::set1(std::numeric_limits<T>::min());
    for (int64_t j = 0; j < n; j += W) {
        const auto pj = vexp2<T>(V::fma(V::sub(V::load(p + j), shift), log2e, shift_lo));
        auto dsj = V::mul(pj, V::sub(V::load(ds + j), delta));
        if (cap_grad) dsj = V::mul(dsj, V::load(cap_grad + j));
        V::store(p + j, pj);
        V::store(ds + j, V::zero_if_less(pj, tiny, dsj));  // exactly 0 where P is 0 (NaN P stays NaN)
    }
}

// The block's three weighted sums, from P and dS of its `rows` rows × `key_hi` keys.
template <class S, class E>
void BackwardKernel<S, E>::weighted_sums(int64_t rows, int64_t key_hi, const int64_t* lo, const int64_t* hi,
                                         bool k_finite, Workspace& ws, T* dq) const {
    // dV += Pᵀ·dO and dK += dSᵀ·(scale·Q): tiles of keys, summed over the block's rows.
    // A NaN or inf in a row of dO or Q must not reach the keys that row cannot see
    // via 0·x: such a block takes one key at a time, skipping zero weights.
    const bool do_finite = E::values_finite(ws.do_pan.data(), rows, kRows, dv_pad_);
    const bool q_finite = E::values_finite(ws.q_pan.data(), rows, kRows, d_pad_);
    const auto p_t = engine_.template prepare_weights<1, kKeys>(ws.p.data(), key_hi, 0, rows, ws.p_w.data());
    const auto ds_t = engine_.template prepare_weights<1, kKeys>(ws.ds.data(), key_hi, 0, rows, ws.ds_wt.data());
    for (int64_t j0 = 0; j0 < key_hi; j0 += kTileRows)
        E::with_rows(std::min(kTileRows, key_hi - j0), [&](auto n) {
            constexpr int R = decltype(n)::value;
            if (do_finite)
                engine_.template weighted_sum<R>(p_t, j0, 0, rows, nullptr, ws.do_pan.data(), kRows, dv_pad_,
                                                 ws.dv_acc.data() + j0 * dv_pad_, dv_pad_);
            if (q_finite)
                engine_.template weighted_sum<R>(ds_t, j0, 0, rows, nullptr, ws.q_pan.data(), kRows, d_pad_,
                                                 ws.dk_acc.data() + j0 * d_pad_, d_pad_);
        });
    for (int64_t j = 0; j < key_hi && !(do_finite && q_finite); ++j) {
        if (!do_finite)
            engine_.template weighted_sum<1, true>(p_t, j, 0, rows, nullptr, ws.do_pan.data(), kRows, dv_pad_,
                                                   ws.dv_acc.data() + j * dv_pad_, dv_pad_);
        if (!q_finite)
            engine_.template weighted_sum<1, true>(ds_t, j, 0, rows, nullptr, ws.q_pan.data(), kRows, d_pad_,
                                                   ws.dk_acc.data() + j * d_pad_, d_pad_);
    }
    // dQ += dS·K: tiles of rows, summed over the keys they see.
    const auto ds_w = engine_.template prepare_weights<kKeys, 1>(ws.ds.data(), rows, 0, key_hi, ws.ds_w.data());
    for (int64_t t0 = 0; t0 < rows; t0 += kTileRows) {
        const int64_t n = std::min(kTileRows, rows - t0);
        int64_t first = kKeys, last = 0;
        for (int64_t r = t0; r < t0 + n; ++r)
            if (lo[r] < hi[r]) first = std::min(first, lo[r]), last = std::max(last, hi[r]);
        if (first >= last) continue;
        if (!k_finite) {  // a NaN or inf key that a row cannot see must not reach it via 0·K
            for (int64_t r = t0; r < t0 + n; ++r)
                engine_.template weighted_sum<1, true>(ds_w, r, lo[r], hi[r], nullptr, ws.k_pan.data(), kKeys,
                                                       d_pad_, dq + r * d_pad_, d_pad_);
            continue;
        }
        E::with_rows(n, [&](auto m) {
            engine_.template weighted_sum<decltype(m)::value>(ds_w, t0, first, last, nullptr, ws.k_pan.data(),
                                                              kKeys, d_pad_, dq + t0 * d_pad_, d_pad_);
        });
    }
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
