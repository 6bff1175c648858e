// The forward pass's tasks (forward-inl.hpp has the schedule and the workspace):
// run_task, which packs a task's queries and streams the key blocks its rows
// see; packed_block, a key block of K and V as the engine's tiles read it
// (packed once per thread and reused from its panel); and write_rows_as, the
// rows' outputs and lse. Included at the end of forward-inl.hpp: these are
// ForwardKernel's members.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// Computes the rows of task_rows(task): packs their queries, streams the
// key blocks they can see, and writes out and lse.
//
// With splits > 1 (flash-decoding, see forward_typed) the task streams only
// its share `split` of its key blocks and leaves its rows' partial
// (max, sum, acc) in `partial` for merge_splits; else it writes its rows.
template <class S, class K, class E>
void ForwardKernel<S, K, E>::run_task(int64_t task, Workspace& ws, int64_t split, int64_t splits, T* partial) const {
    const TaskRows t = task_rows(task);
    const Sequence& seq = t.seq;
    const int64_t h0 = t.h0, row0 = t.row0, rows_live = t.rows_live;
    const int64_t h_kv = h0 / group_;
    int64_t live = 0;
    for (int64_t h = h0; h < h0 + heads_per_task_ && rows_live > 0; ++h) {
        const S* q = static_cast<const S*>(a_.q) + seq.b * a_.q_strides.batch + h * a_.q_strides.head +
                     row0 * a_.q_strides.row;
        const T scale = static_cast<T>(a_.scale);
        if (direct_)
            E::pack_direct_rows(q, a_.q_strides.row, rows_live, a_.d, scale, ws.q_direct.data() + live * a_.d);
        else
            engine_.pack_rows(q, a_.q_strides.row, rows_live, a_.d, scale, ws.q_pack.data() + E::row_offset(live, a_.d));
        const T slope = rules_.alibi_slope(seq.b, h);
        for (int64_t i = row0; i < row0 + rows_live; ++i, ++live) {
            ws.row_pos[live] = i;
            ws.row_slope[live] = slope;
            ws.row_mask[live] = rules_.has_mask() ? rules_.mask_row(seq.b, h, i) : nullptr;
        }
    }
    // Keys any live row sees: every head has the same rows, and both ends grow with i.
    int64_t first = rows_live > 0 ? rules_.key_begin(row0, seq) : 0;
    int64_t last = rows_live > 0 ? rules_.key_end(row0 + rows_live - 1, seq) : 0;
    if (splits > 1 && first < last) {  // this split's contiguous share of the key blocks
        const int64_t block0 = first / kKeyBlock, blocks = (last + kKeyBlock - 1) / kKeyBlock - block0;
        first = std::max(first, (block0 + blocks * split / splits) * kKeyBlock);
        last = std::min(last, (block0 + blocks * (split + 1) / splits) * kKeyBlock);
    }
    std::fill(ws.row_max.begin(), ws.row_max.begin() + live, neg_inf_);
    std::fill(ws.row_sum.begin(), ws.row_sum.begin() + live, T(0));
    std::fill(ws.acc.begin(), ws.acc.begin() + live * dv_pad_, T(0));

    const KvSource src = KvSource::of(a_, seq.b, h_kv);
    const int64_t owner = seq.b * a_.hkv + h_kv;
    // A mask shared by all the task's rows (key padding) is read once per
    // block; it also narrows the block to its unmasked keys, and a block it
    // masks whole is skipped.
    const bool shared_mask = rules_.mask_shared_by_rows(heads_per_task_);
    const int64_t tile_rows = direct_ ? E::kDirectRows : kTileRows;
    for (int64_t key0 = first / kKeyBlock * kKeyBlock; live > 0 && key0 < last; key0 += kKeyBlock) {
        const int64_t keys = std::min(kKeyBlock, seq.kv_len - key0);
        int64_t span_lo = 0, span_hi = keys;
        if (shared_mask) {
            rules_.mask_bias(ws.row_mask[0], key0, 0, keys, ws.bias.data());
            while (span_lo < keys && ws.bias[span_lo] == neg_inf_) ++span_lo;
            while (span_hi > span_lo && ws.bias[span_hi - 1] == neg_inf_) --span_hi;
            if (span_lo == span_hi) continue;
        }
        const KvBlock kv = direct_ ? KvBlock{nullptr, nullptr, false, &src, key0}
                                   : packed_block(src, owner, key0, keys, ws);
        if (rules_.has_alibi()) Rules<T>::fill_key_index(key0, kKeyBlock, ws.key_index.data());
        for (int64_t r0 = 0; r0 < live; r0 += tile_rows) {
            const int64_t n = std::min(tile_rows, live - r0);
            // Row r0 + r sees keys [lo[r], hi[r]); a tile taller than the rows left (an
            // engine whose tiles are always kRows high) has dead rows that see nothing.
            // alignas: GCC zeroes them with aligned 64-byte stores, and under ASan's
            // use-after-return check (a heap frame) only a declared alignment is kept.
            alignas(64) int64_t lo[kMaxTileRows] = {};
            alignas(64) int64_t hi[kMaxTileRows] = {};
            for (int64_t r = 0; r < n; ++r) {
                const int64_t i = ws.row_pos[r0 + r];
                lo[r] = std::max(rules_.key_begin(i, seq) - key0, span_lo);
                hi[r] = std::min(rules_.key_end(i, seq) - key0, span_hi);
            }
            auto rows_of = [&](auto rows) {
                update_rows<decltype(rows)::value>(r0, lo, hi, key0, seq, shared_mask, kv, ws);
            };
            if (direct_)
                E::with_direct_rows(n, rows_of);
            else
                E::with_rows(n, rows_of);
        }
    }

    if (splits == 1) {
        write_rows(t, ws.row_max.data(), ws.row_sum.data(), ws.acc.data());
        return;
    }
    T* part = partial + split * partial_size();
    std::copy(ws.row_max.begin(), ws.row_max.begin() + live, part);
    std::copy(ws.row_sum.begin(), ws.row_sum.begin() + live, part + task_rows_);
    std::copy(ws.acc.begin(), ws.acc.begin() + live * dv_pad_, part + 2 * task_rows_);
}

// Key block key0 of the (batch, kv head) `owner`, packed: from this
// thread's panel when it already holds it, else packed now (into the panel
// slot, or into the single slot when there is no panel).
template <class S, class K, class E>
typename ForwardKernel<S, K, E>::KvBlock ForwardKernel<S, K, E>::packed_block(const KvSource& src, int64_t owner,
                                                                             int64_t key0, int64_t keys,
                                                                             Workspace& ws) const {
    const bool panel = ws.slot_ready.size() > 1;
    const int64_t slot = panel ? key0 / kKeyBlock : 0;
    ScorePacked* k_pack = ws.k_pack.get() + slot * E::keys_size(kKeyBlock, a_.d);
    SumPacked* v_pack = ws.v_pack.get() + slot * E::values_size(kKeyBlock, dv_pad_);
    if (panel && ws.panel_owner != owner) {
        std::fill(ws.slot_ready.begin(), ws.slot_ready.end(), 0);
        ws.panel_owner = owner;
    }
    if (!panel || !ws.slot_ready[slot]) {
        // Keys past `keys` up to what the score products read (update_rows: a
        // row's end rounded up to E::kScoreUnit) are zero, and so are V's rows up
        // to the engine's own padding (weighted sums read keys below a row's end,
        // and whatever an engine reads beyond it is zero).
        const int64_t keys_pad = (keys + E::kScoreUnit - 1) / E::kScoreUnit * E::kScoreUnit;
        src.for_each_run(a_, key0, key0 + keys, [&](int64_t j, int64_t n, const K* k_rows, const K* v_rows,
                                                 const T* k_scale, const T* v_scale) {
            engine_.pack_keys(k_rows, a_.k_strides.row, n, n, a_.d, k_pack, ws.row.data(), j - key0, k_scale);
            engine_.pack_values(v_rows, a_.v_strides.row, n, a_.dv, dv_pad_, kKeyBlock, T(1), v_pack,
                                ws.row.data(), j - key0, v_scale);
        });
        engine_.pack_keys(src.k, 0, 0, keys_pad - keys, a_.d, k_pack, ws.row.data(), keys);  // the zero tail
        E::pad_values(v_pack, keys, kKeyBlock, dv_pad_);
        ws.v_finite[slot] = E::values_finite(v_pack, keys, kKeyBlock, dv_pad_);
        ws.slot_ready[slot] = 1;
    }
    return {k_pack, v_pack, ws.v_finite[slot] != 0};
}

// write_rows into an out of storage type O.
template <class S, class K, class E>
template <class O>
void ForwardKernel<S, K, E>::write_rows_as(const TaskRows& t, const T* row_max, const T* row_sum,
                                           const T* acc) const {
    for (int64_t h = t.h0, r = 0; h < t.h0 + heads_per_task_; ++h) {
        const int64_t first_row = (t.seq.b * a_.hq + h) * a_.lq + t.row0;
        const Strides3& os = a_.out_strides;
        O* out = static_cast<O*>(a_.out) + t.seq.b * os.batch + h * os.head + t.row0 * os.row;
        T* lse = a_.lse ? static_cast<T*>(a_.lse) + first_row : nullptr;  // compute dtype
        T* lse_lo = a_.lse_lo ? static_cast<T*>(a_.lse_lo) + first_row : nullptr;
        const T sink = a_.sinks ? static_cast<T>(a_.sinks[t.seq.b * a_.hq + h]) : neg_inf_;
        for (int64_t i = 0; i < t.rows; ++i) {
            const bool is_live = i < t.rows_live;
            if (is_live)
                finish_row(row_max[r], row_sum[r], sink, acc + r * dv_pad_, out + i * os.row,
                           lse ? lse + i : nullptr, lse_lo ? lse_lo + i : nullptr);
            else  // padding past q_lengths: no query, no sink
                finish_row(neg_inf_, T(0), neg_inf_, acc, out + i * os.row, lse ? lse + i : nullptr,
                           lse_lo ? lse_lo + i : nullptr);
            r += is_live;
        }
    }
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
