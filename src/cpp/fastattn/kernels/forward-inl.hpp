// The attention forward pass: its schedule. Written once against the vector
// API of vec/<isa>.hpp and an engine (engines/: what multiplies the matrices),
// compiled per ISA inside namespace fastattn::FASTATTN_ISA (attention_<isa>.cpp
// includes its vec header, then entry-inl.hpp, which includes this). The online
// softmax is forward_softmax-inl.hpp, the decode mode forward_direct-inl.hpp;
// the positional rules, K/V rows and threads are the common/ layer it shares
// with the backward pass.
//
// Flash-style streaming with an online softmax. Each task owns one block of
// query rows of one (batch, head) and streams K/V in blocks of kKeyBlock keys.
// Per query row it keeps the running maximum m, the running sum
// l = Σ exp(s_j − m) and the unnormalised output acc = Σ exp(s_j − m)·v_j.
// When a new block raises the maximum to m', the old terms are rescaled by
// exp(m − m'), because exp(s − m') = exp(s − m)·exp(m − m'):
//     l'   = l·exp(m − m')   + Σ_block exp(s_j − m')
//     acc' = acc·exp(m − m') + Σ_block exp(s_j − m')·v_j
// At the end out = acc / l and lse = m + log(l). Every exponent is <= 0, so
// nothing overflows however large the logits are.
//
// How the work is cut (all in ForwardKernel below):
//   task       up to kQueryBlock query rows of one batch entry: one head's
//              block of rows, or, when a head has fewer rows (decoding), the
//              rows of several query heads that share one K/V head (GQA).
//   key block  kKeyBlock keys, packed by the engine (K for the score tiles, V
//              for the weighted sums: packed_block); a thread keeps the packed
//              blocks of a whole (batch, K/V head) while later tasks on that
//              head reuse them. Decoding tasks (<= kDirectMaxRows rows, their
//              K/V head read by no other task) skip packing and read K/V in
//              place (direct_, the engine's unpacked_* tiles).
//   tile       the engine's kRows rows: S = Q·Kᵀ (score_tile), the softmax
//              (softmax_tile, its rows interleaved so that their dependency
//              chains overlap), O += P·V (weighted_sum).
//   split      when a call has few tasks, each task's key blocks are shared
//              out as several work items whose partial states are merged
//              (flash-decoding: count_splits, merge_splits).
//
// Positional rules (causal, window, lengths) give each query row one interval
// of visible keys [key_begin(i), key_end(i)); both ends grow with i, so a task
// streams only the key blocks its rows can see: causal skips the blocks above
// the diagonal, a window costs O(L·window). Masks and ALiBi are read inside the
// block loop; nothing of size Lq×Lk is ever built. Extra memory per thread is
// O(kQueryBlock·(D + Dv) + kKeyBlock·(D + Dv)), plus the K/V panels within
// kPanelBudgetBytes for all threads together, never O(Lq·Lk).
//
// float16 and bfloat16 inputs are widened to float32 while a block is packed
// (or, in direct mode, as it is read) — or kept as they are by an engine that
// multiplies them natively — and the softmax runs in float32; the output is
// rounded back once per element.
//
// Each row's arithmetic depends only on the key blocks and the shape (the
// split count included), never on which thread runs it or which rows share
// its task or tile (extra terms a tile adds to a row are exact zeros), so
// results are bitwise independent of the thread count.

#pragma once

#ifndef FASTATTN_NOINLINE
#if defined(__GNUC__)
#define FASTATTN_NOINLINE __attribute__((noinline))
#else
#define FASTATTN_NOINLINE
#endif
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/kv_rows-inl.hpp"
#include "common/parallel-inl.hpp"
#include "common/rules-inl.hpp"
#include "common/storage-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

constexpr int64_t kKeyBlock = 256;  // keys per streamed K/V block
// Direct mode (decoding: K/V read in place, not packed) for tasks of at most
// this many rows whose K/V head no other task reads. Measured at D = 128,
// Lk = 8192, AVX2: direct is 10-15% faster up to 8 rows, 10-20% slower at 12.
constexpr int64_t kDirectMaxRows = 8;
// Packed K/V of a whole (batch, kv head) are kept per thread and reused by the
// next tasks on that head (its other query blocks, its GQA query heads), so a
// key block is packed (and widened from 16 bits) once per thread instead of
// once per query block. All threads' panels together stay within this budget;
// a head whose panel does not fit is packed block by block as it streams.
constexpr int64_t kPanelBudgetBytes = 8 << 20;

// S: the storage type of q and out; K: of k and v (S, or int8 for a
// quantised KVCache, computed in float32); E: the engine.
template <class S, class K, class E>
class ForwardKernel {
    using T = ComputeType<S>;
    static_assert(std::is_same<ComputeType<K>, T>::value, "K/V are computed in q's compute type");
    using KvSource = KvRows<K>;
    using V = Vec<T>;
    using reg = typename V::reg;
    using ScorePacked = typename E::ScorePacked;  // q and K, as the score tiles read them
    using SumPacked = typename E::SumPacked;      // V and the weights, as the weighted sums read them
    static constexpr int64_t W = V::width;
    static constexpr int64_t kTileRows = E::kRows, kTileKeys = E::kKeys;
    static_assert(kKeyBlock % kTileKeys == 0 && kTileKeys % W == 0, "a key block must be whole tiles of vectors");

public:
    // Query rows per task: the fewest whole tiles of at least 60 rows.
    static constexpr int64_t kQueryBlock = (60 + kTileRows - 1) / kTileRows * kTileRows;

    explicit ForwardKernel(const AttentionArgs& a)
        : a_(a),
          engine_(a),
          rules_(a),
          dv_pad_(E::cols_pad(a.dv)),
          group_(a.hq / a.hkv),
          rows_per_head_(std::min(a.lq, kQueryBlock)),
          heads_per_task_(heads_per_task(group_, rows_per_head_)),
          task_rows_(rows_per_head_ * heads_per_task_),
          q_blocks_((a.lq + rows_per_head_ - 1) / rows_per_head_),
          direct_(reads_kv_in_place(a)),
          neg_inf_(-std::numeric_limits<T>::infinity()),
          score_post_(engine_.score_post(static_cast<T>(a.scale))),
          fold_post_(score_post_ != T(1) && score_post_ > T(0) && a.softcap == 0 && !a.alibi_slopes &&
                     a.mask.kind != MaskKind::additive) {}

    int64_t num_tasks() const { return a_.batch * (a_.hq / heads_per_task_) * q_blocks_; }

    // Direct mode (direct_): one task per (batch, K/V head), of at most
    // kDirectMaxRows rows. Shape only; the backward asks too, to form its
    // scores the way this pass did (BackwardKernel::scores).
    static bool reads_kv_in_place(const AttentionArgs& a) {
        const int64_t group = a.hq / a.hkv, rows_per_head = std::min(a.lq, kQueryBlock);
        const int64_t heads = heads_per_task(group, rows_per_head);
        return a.lq <= rows_per_head && group == heads && rows_per_head * heads <= kDirectMaxRows;
    }

    // When a head has too few query rows to fill a task (decoding: Lq = 1),
    // a task takes several query heads that share one K/V head, so that their
    // rows fill the tiles and the K/V panel is packed once for them.
    static int64_t heads_per_task(int64_t group, int64_t rows_per_head) {
        int64_t heads = 1;
        for (int64_t g = 1; g <= group; ++g)
            if (group % g == 0 && g * rows_per_head <= kQueryBlock) heads = g;
        return heads;
    }

    // Per-thread scratch: everything one task needs, allocated once per thread.
    struct Workspace {
        // Packed key blocks: `slots` of them, one (slots = 1) or a whole panel.
        // Left uninitialised: only the slots a task packs are ever touched.
        std::unique_ptr<ScorePacked[]> k_pack;
        std::unique_ptr<SumPacked[]> v_pack;
        std::vector<char> slot_ready, v_finite;  // per slot: packed; its V rows all finite
        int64_t panel_owner = -1;                // b·hkv + h_kv whose panel the slots hold
        std::vector<ScorePacked> q_pack;         // the task's queries
        std::vector<SumPacked> weights;          // a tile's weights P, as the engine reads them
        std::vector<T> q_direct, row, scores, bias, key_index, acc, row_max, row_sum;
        // Per task row: its query position, its head's ALiBi slope, its mask row.
        std::vector<int64_t> row_pos;
        std::vector<T> row_slope;
        std::vector<const char*> row_mask;
        typename E::ThreadScope engine_scope;    // e.g. a tile configuration, for this thread
        // rows: the most query rows a task has (<= kQueryBlock; a tiny call has fewer), in whole tiles.
        Workspace(int64_t d, int64_t dv_pad, int64_t slots, int64_t rows, bool direct)
            : k_pack(new ScorePacked[slots * E::keys_size(kKeyBlock, d)]),
              v_pack(new SumPacked[slots * E::values_size(kKeyBlock, dv_pad)]),
              slot_ready(slots),
              v_finite(slots),
              q_pack(direct ? 0 : E::rows_size(rows, d)),
              weights(E::weights_size(kTileRows, kKeyBlock)),
              q_direct(direct ? rows * d : 0),
              row(std::max(d, dv_pad)),
              scores(kTileRows * kKeyBlock),
              bias(kKeyBlock),
              key_index(kKeyBlock),
              acc(rows * dv_pad),
              row_max(rows),
              row_sum(rows),
              row_pos(rows),
              row_slope(rows),
              row_mask(rows) {}
    };

    // A panel of every key block per thread when all threads' panels fit the
    // budget and a K/V head serves more than one task; else one block, which
    // stays in L2 instead of writing a copy of K/V; none in direct mode.
    Workspace make_workspace(int64_t threads) const {
        const int64_t key_blocks = (a_.lk + kKeyBlock - 1) / kKeyBlock;
        const int64_t panel_bytes =
            key_blocks * (E::keys_size(kKeyBlock, a_.d) * static_cast<int64_t>(sizeof(ScorePacked)) +
                          E::values_size(kKeyBlock, dv_pad_) * static_cast<int64_t>(sizeof(SumPacked)));
        const bool reused = q_blocks_ > 1 || group_ / heads_per_task_ > 1;
        const int64_t slots = direct_ ? 0 : reused && panel_bytes * threads <= kPanelBudgetBytes ? key_blocks : 1;
        return Workspace(a_.d, dv_pad_, slots, (task_rows_ + kTileRows - 1) / kTileRows * kTileRows, direct_);
    }

    // Computes the rows of task_rows(task), or with splits > 1 its share
    // `split` of their key blocks (forward_task-inl.hpp).
    void run_task(int64_t task, Workspace& ws, int64_t split = 0, int64_t splits = 1, T* partial = nullptr) const;

    // The scratch one split of one task leaves: max and sum of up to
    // task_rows_ rows, then their accumulators.
    int64_t partial_size() const { return task_rows_ * (2 + dv_pad_); }

    // Combines the `splits` partial states of `task` (forward_softmax-inl.hpp).
    void merge_splits(int64_t task, int64_t splits, const T* partial, Workspace& ws) const;

private:
    static constexpr int64_t kMaxTileRows = std::max<int64_t>(kTileRows, E::kDirectRows);

    // Which rows a task owns: rows [row0, row0 + rows) of query heads
    // [h0, h0 + heads_per_task_) of batch entry seq.b; rows at or past
    // q_lengths[b] are padding (rows_live <= rows) and finish as zeros with
    // lse = -inf. Tasks are numbered so that the most expensive query blocks
    // (the last ones, under causal masking) are handed out first.
    struct TaskRows {
        Sequence seq;
        int64_t h0 = 0, row0 = 0, rows = 0, rows_live = 0;
    };
    TaskRows task_rows(int64_t task) const {
        const int64_t head_groups = a_.hq / heads_per_task_;
        const int64_t bg = task / q_blocks_;
        const int64_t q_block = q_blocks_ - 1 - task % q_blocks_;
        TaskRows t;
        t.seq = rules_.sequence(bg / head_groups);
        t.h0 = bg % head_groups * heads_per_task_;
        t.row0 = q_block * rows_per_head_;
        t.rows = std::min(rows_per_head_, a_.lq - t.row0);
        t.rows_live = clamp(t.seq.q_len - t.row0, 0, t.rows);
        return t;
    }

    // Writes the task's rows from their final (max, sum, acc), live rows
    // numbered head by head as run_task packs them.
    void write_rows(const TaskRows& t, const T* row_max, const T* row_sum, const T* acc) const {
        if (a_.out_wide) return write_rows_as<T>(t, row_max, row_sum, acc);  // 16-bit inputs, float32 out
        write_rows_as<S>(t, row_max, row_sum, acc);
    }

    // write_rows into an out of storage type O.
    template <class O>
    void write_rows_as(const TaskRows& t, const T* row_max, const T* row_sum, const T* acc) const;

    // One key block of K and V as the tiles read it.
    struct KvBlock {
        const ScorePacked* k;  // K for the score tiles (the engine's pack_keys)
        const SumPacked* v;    // V for the weighted sums (the engine's pack_values)
        bool v_finite;    // no NaN or inf among its values
        // In direct mode (direct_) nothing is packed: the block's keys
        // [key0, key0 + kKeyBlock) are read where they are.
        const KvSource* src = nullptr;
        int64_t key0 = 0;
    };

    // Key block key0 of the (batch, kv head) `owner`, packed (forward_task-inl.hpp).
    KvBlock packed_block(const KvSource& src, int64_t owner, int64_t key0, int64_t keys, Workspace& ws) const;

    // One key block's contribution to rows [r0, r0 + R) of the task; row
    // r0 + r sees keys [lo[r], hi[r]) of the block (none when lo >= hi).
    template <int R>
    void update_rows(int64_t r0, const int64_t* lo, const int64_t* hi, int64_t key0, const Sequence& seq,
                     bool shared_mask, const KvBlock& kv, Workspace& ws) const {
        int64_t first = kKeyBlock, last = 0;  // keys any row of the tile sees
        for (int r = 0; r < R; ++r)
            if (lo[r] < hi[r]) first = std::min(first, lo[r]), last = std::max(last, hi[r]);
        if (first >= last) return;
        // The keys the tile computes: from the panel of `first` to `last` rounded up to
        // what one score product computes (E::kScoreUnit: a vector for FMA).
        const int64_t k_begin = first / kTileKeys * kTileKeys;
        const int64_t k_end = std::min(kKeyBlock, (last + E::kScoreUnit - 1) / E::kScoreUnit * E::kScoreUnit);
        T* scores = ws.scores.data();
        if constexpr (R <= E::kDirectRows) {
            if (direct_) {
                direct_scores<R>(ws.q_direct.data() + r0 * a_.d, kv, first, last, k_begin, k_end, scores);
                T alpha[R];
                softmax_tile<R>(r0, lo, hi, key0, seq, shared_mask, k_begin / W, k_end / W, scores, alpha, ws);
                // (direct mode never looks at V first: no v_finite)
                direct_sums<R>(lo, hi, alpha, kv, first, last, scores, ws.acc.data() + r0 * dv_pad_);
                return;
            }
        }
        if constexpr (R <= kTileRows) {
            engine_.template score_tile<R>(ws.q_pack.data() + E::row_offset(r0, a_.d), a_.d, kv.k, k_begin, k_end,
                                           fold_post_ ? T(1) : score_post_, scores, kKeyBlock);
            T alpha[R];
            softmax_tile<R>(r0, lo, hi, key0, seq, shared_mask, k_begin / W, k_end / W, scores, alpha, ws,
                            fold_post_ ? score_post_ : T(1));
            T* acc = ws.acc.data() + r0 * dv_pad_;
            if (kv.v_finite) {
                // Keys outside a row's own [lo, hi) have p = 0 exactly and finite
                // values: they add exact zeros to that row.
                const auto w = engine_.template prepare_weights<kKeyBlock, 1>(scores, R, first, last, ws.weights.data());
                engine_.template weighted_sum<R>(w, 0, first, last, alpha, kv.v, kKeyBlock, dv_pad_, acc, dv_pad_);
                return;
            }
            // A NaN or inf value would leak into rows that cannot see its key
            // through 0·NaN: one row at a time over the row's own keys, and under
            // a mask (which leaves keys of weight 0 inside [lo, hi)) skipping zeros.
            for (int r = 0; r < R; ++r) {
                if (lo[r] >= hi[r]) continue;
                const auto w = engine_.template prepare_weights<kKeyBlock, 1>(scores + r * kKeyBlock, 1, lo[r], hi[r],
                                                                              ws.weights.data());
                if (rules_.has_mask())
                    engine_.template weighted_sum<1, true>(w, 0, lo[r], hi[r], alpha + r, kv.v, kKeyBlock, dv_pad_,
                                                           acc + r * dv_pad_, dv_pad_);
                else
                    engine_.template weighted_sum<1>(w, 0, lo[r], hi[r], alpha + r, kv.v, kKeyBlock, dv_pad_,
                                                     acc + r * dv_pad_, dv_pad_);
            }
        }
    }

    // Direct mode (decoding: K/V read in place; forward_direct-inl.hpp), out of
    // line so that the packed path of update_rows keeps its code layout.
    template <int R>
    FASTATTN_NOINLINE void direct_scores(const T* q_rows, const KvBlock& kv, int64_t first, int64_t last,
                                         int64_t k_begin, int64_t k_end, T* scores) const;
    template <int R>
    FASTATTN_NOINLINE void direct_sums(const int64_t* lo, const int64_t* hi, const T* alpha, const KvBlock& kv,
                                       int64_t first, int64_t last, const T* scores, T* acc) const;

    // The online softmax (forward_softmax-inl.hpp): one key block's step for R
    // rows, and a finished row's output and lse.
    // post: a factor the scores still need (the scale an engine applies after its products,
    // folded into the maximum's pass when nothing else shapes them: fold_post_).
    template <int R>
    void softmax_tile(int64_t r0, const int64_t* lo, const int64_t* hi, int64_t key0, const Sequence& seq,
                      bool shared_mask, int64_t v_begin, int64_t v_end, T* scores, T* alpha, Workspace& ws,
                      T post = T(1)) const;
    template <class O>
    void finish_row(T m, T l, T sink, const T* acc, O* out, T* lse, T* lse_lo) const;

    const AttentionArgs& a_;
    const E engine_;
    const Rules<T> rules_;
    const int64_t dv_pad_, group_, rows_per_head_, heads_per_task_;
    const int64_t task_rows_;  // the most query rows a task has: rows_per_head_·heads_per_task_
    const int64_t q_blocks_;
    const bool direct_;  // decoding: few rows per task, nothing to share: K/V read in place
    const T neg_inf_;
    // The part of the scale the engine applies after the score products rather than to
    // q when it packs it (bf16 engines must not round q·scale to 16 bits).
    const T score_post_;
    // Whether the softmax applies it, in its pass over the scores (a pass less): where nothing
    // shapes the scores but -inf (no softcap, ALiBi or additive mask) and post > 0 keeps -inf;
    // the same products, the same roundings: bitwise the same scores.
    const bool fold_post_;
};

// Flash-decoding: when a call has few tasks (decoding a few sequences,
// Lq = 1), each task's key range is cut into splits (count_splits) whose
// partial states merge_splits combines.
template <class S, class K, class E>
void forward_typed(const AttentionArgs& args) {
    using T = ComputeType<S>;
    using Kernel = ForwardKernel<S, K, E>;
    const Kernel kernel(args);
    const int64_t tasks = kernel.num_tasks();
    const int64_t splits = count_splits(tasks, (args.lk + kKeyBlock - 1) / kKeyBlock);
    std::vector<T> partial(splits > 1 ? tasks * splits * kernel.partial_size() : 0);
    T* const partial_data = partial.data();
    const int64_t task_partial = splits * kernel.partial_size();
    // attention_forward has resolved num_threads (>= 1, at most the processors).
    run_work_items<typename Kernel::Workspace>(
        args.num_threads, tasks, splits, [&](int64_t threads) { return kernel.make_workspace(threads); },
        [&](int64_t task, int64_t split, typename Kernel::Workspace& ws) {
            kernel.run_task(task, ws, split, splits, partial_data + task * task_partial);
        },
        [&](int64_t task, typename Kernel::Workspace& ws) {
            kernel.merge_splits(task, splits, partial_data + task * task_partial, ws);
        });
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "forward_direct-inl.hpp"
#include "forward_softmax-inl.hpp"
#include "forward_task-inl.hpp"
