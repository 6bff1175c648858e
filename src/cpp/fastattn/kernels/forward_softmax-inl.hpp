// The forward pass's online softmax (forward-inl.hpp has the schedule): one
// key block's step for a tile of rows (softmax_tile), the merge of a split
// task's partial states (merge_splits), and a finished row's output and lse
// (finish_row). Included at the end of forward-inl.hpp: these are
// ForwardKernel's members. Every engine's scores arrive here in float32.
//
// p = exp(x), x = s − m <= 0, is computed as 2^(x·log2(e)) by vexp2, without
// exp's two-part ln2 reduction. Rounding x·log2(e) costs p a relative
// |x|·eps/2, largest where p = e^x is smallest, so each term's error stays
// below ~0.2 eps of the row's largest term. (Scores themselves stay in natural
// units: in log2 units a score of magnitude 100 would be rounded at 144, an
// extra rounding naive attention does not have.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// The online-softmax step of task rows [r0, r0 + R) for one key block:
// shapes and masks each row's scores, turns them into p = exp(s − m') in
// place, updates m and l, and sets alpha[r] = exp(m − m') for the old acc.
// A row that sees nothing here gets p = 0 and alpha = 1. The rows are
// independent; each pass runs over all of them so their chains overlap.
template <class S, class K, class E>
template <int R>
void ForwardKernel<S, K, E>::softmax_tile(int64_t r0, const int64_t* lo, const int64_t* hi, int64_t key0,
                                          const Sequence& seq, bool shared_mask, int64_t v_begin, int64_t v_end,
                                          T* scores, T* alpha, Workspace& ws, T post) const {
    bool live[R];
    for (int r = 0; r < R; ++r) {
        T* s = scores + r * kKeyBlock;
        live[r] = lo[r] < hi[r];
        if (!live[r]) {
            std::fill(s + v_begin * W, s + v_end * W, T(0));
            continue;
        }
        T* bias = nullptr;
        if (rules_.has_mask()) {
            bias = ws.bias.data();
            if (!shared_mask) rules_.mask_bias(ws.row_mask[r0 + r], key0, lo[r], hi[r], bias);
        }
        rules_.shape_row(s, v_begin * W, v_end * W, lo[r], hi[r], static_cast<T>(ws.row_pos[r0 + r] + seq.diag_off),
                         ws.row_slope[r0 + r], ws.key_index.data(), bias, nullptr);
    }

    reg block_max[R];
    for (int r = 0; r < R; ++r) block_max[r] = V::set1(neg_inf_);
    if (post != T(1)) {  // the scale the score tiles left (post > 0, nothing shaped but -inf: see update_rows)
        const reg factor = V::set1(post);
        for (int64_t u = v_begin; u < v_end; ++u)
            for (int r = 0; r < R; ++r) {
                const reg x = V::mul(V::load(scores + r * kKeyBlock + u * W), factor);
                V::store(scores + r * kKeyBlock + u * W, x);
                block_max[r] = V::max(block_max[r], x);
            }
    } else {
        for (int64_t u = v_begin; u < v_end; ++u)
            for (int r = 0; r < R; ++r) block_max[r] = V::max(block_max[r], V::load(scores + r * kKeyBlock + u * W));
    }

    T shift[R], decay[R];  // the new maximum, and old − new maximum
    for (int r = 0; r < R; ++r) {
        alpha[r] = T(1);
        decay[r] = shift[r] = T(0);
        if (!live[r]) continue;
        T* s = scores + r * kKeyBlock;
        const T old_max = ws.row_max[r0 + r];
        const T block = V::reduce_max(block_max[r]);
        T new_max = std::max(old_max, block);
        // Vector max may drop or keep a NaN depending on its lane, and
        // std::max(-inf, NaN) is -inf: decide NaN explicitly, so that a NaN
        // score always makes the row NaN instead of hiding the block.
        if (block != block || (new_max == neg_inf_ && std::any_of(s + lo[r], s + hi[r], [](T e) { return e != e; }))) {
            new_max = std::numeric_limits<T>::quiet_NaN();
        } else if (new_max == neg_inf_) {  // every visible score is -inf: nothing seen yet
            std::fill(s + v_begin * W, s + v_end * W, T(0));
            live[r] = false;
            continue;
        }
        shift[r] = new_max;
        decay[r] = old_max - new_max;  // -inf on the first visible block: alpha = 0
        ws.row_max[r0 + r] = new_max;
    }
    const reg log2e = V::set1(ExpConstants<T>::log2e);
    for (int r = 0; r < R; r += W) {  // alpha = exp(decay), a vector at a time
        T lanes[W] = {};
        std::copy(decay + r, decay + std::min<int>(R, r + W), lanes);
        V::store(lanes, vexp2<T>(V::mul(V::load(lanes), log2e)));
        std::copy(lanes, lanes + std::min<int>(R - r, W), alpha + r);
    }

    // p_j = exp(s_j − m') = 2^((s_j − m')·log2(e)); a NaN score makes p_j NaN, and the row NaN.
    for (int r = 0; r < R; ++r) {
        if (!live[r]) continue;
        T* s = scores + r * kKeyBlock;
        const reg m = V::set1(shift[r]);
        reg sum = V::zero();
        for (int64_t u = v_begin; u < v_end; ++u) {
            const reg p = vexp2<T>(V::mul(V::sub(V::load(s + u * W), m), log2e));
            V::store(s + u * W, p);
            sum = V::add(sum, p);
        }
        ws.row_sum[r0 + r] = ws.row_sum[r0 + r] * alpha[r] + V::reduce_add(sum);
    }
}


// out = acc / l and lse = m + log(l); a row that saw no key gives zeros
// and lse = -inf (never 0/0 = NaN), or lse = sink with a sink.
// A sink (> -inf) is one more term exp(sink) of the denominator, with no
// value. With m' = max(m, sink), so that no exponent is positive:
//     l' = l·exp(m − m') + exp(sink − m'),  out = acc·exp(m − m') / l',
//     lse = m' + log(l').
template <class S, class K, class E>
template <class O>
void ForwardKernel<S, K, E>::finish_row(T m, T l, T sink, const T* acc, O* out, T* lse, T* lse_lo) const {
    if (lse_lo) *lse_lo = T(0);
    if (m == neg_inf_) {
        std::fill(out, out + a_.dv, Storage<O>::narrow(T(0)));
        if (lse) *lse = sink;
        return;
    }
    T decay = T(1);  // exp(m − m'): 1 without a sink (and for a NaN row)
    if (sink != neg_inf_ && m == m) {
        const T m_new = std::max(m, sink);
        decay = std::exp(m - m_new);
        l = l * decay + std::exp(sink - m_new);
        m = m_new;
    }
    const reg denom = V::set1(l);
    int64_t c = 0;
    if (decay == T(1)) {
        for (; c + W <= a_.dv; c += W) Storage<O>::store(out + c, V::div(V::load(acc + c), denom));
        for (; c < a_.dv; ++c) out[c] = Storage<O>::narrow(acc[c] / l);
    } else {
        const reg scale = V::set1(decay);
        for (; c + W <= a_.dv; c += W)
            Storage<O>::store(out + c, V::div(V::mul(V::load(acc + c), scale), denom));
        for (; c < a_.dv; ++c) out[c] = Storage<O>::narrow(acc[c] * decay / l);
    }
    if (!lse) return;
    const T log_l = std::log(l);
    *lse = m + log_l;
    // TwoSum: the exact error of that rounding (no FMA to fuse: adds only).
    const T b = *lse - m;
    if (lse_lo && *lse - *lse == 0) *lse_lo = (m - (*lse - b)) + (log_l - b);
}

// Combines the `splits` partial states of `task` (each over a disjoint key
// range) by the same rescaling identity as the block loop:
//     m = max_s m_s,  l = Σ_s l_s·exp(m_s − m),  acc = Σ_s acc_s·exp(m_s − m),
// splits in order, so the result depends only on the shape. A NaN
// maximum in any split makes the row NaN, as in one pass.
template <class S, class K, class E>
void ForwardKernel<S, K, E>::merge_splits(int64_t task, int64_t splits, const T* partial, Workspace& ws) const {
    const TaskRows t = task_rows(task);
    const int64_t live = t.rows_live * heads_per_task_;
    for (int64_t r = 0; r < live; ++r) {
        T m = neg_inf_;
        bool nan = false;
        for (int64_t sp = 0; sp < splits; ++sp) {
            const T m_s = partial[sp * partial_size() + r];
            nan |= m_s != m_s;
            m = std::max(m, m_s);
        }
        if (nan) m = std::numeric_limits<T>::quiet_NaN();
        T l = 0;
        T* acc = ws.acc.data() + r * dv_pad_;
        std::fill(acc, acc + dv_pad_, T(0));
        if (m != neg_inf_) {  // else no split saw a key: the row stays empty
            for (int64_t sp = 0; sp < splits; ++sp) {
                const T* part = partial + sp * partial_size();
                const T w = std::exp(part[r] - m);  // 0 for a split that saw nothing
                l += part[task_rows_ + r] * w;
                const T* acc_s = part + 2 * task_rows_ + r * dv_pad_;
                const reg wv = V::set1(w);
                for (int64_t c = 0; c < dv_pad_; c += W)
                    V::store(acc + c, V::fma(V::load(acc_s + c), wv, V::load(acc + c)));
            }
        }
        ws.row_max[r] = m;
        ws.row_sum[r] = l;
    }
    write_rows(t, ws.row_max.data(), ws.row_sum.data(), ws.acc.data());
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
