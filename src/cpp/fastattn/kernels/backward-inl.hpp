// The attention backward pass (FlashAttention-2), written once against the
// vector API and compiled per ISA like forward-inl.hpp, on the same common/
// layer: positional rules and score shaping, tiles, packing, threads.
//
// With P = softmax(S) recomputed from the forward's log-sum-exp, exactly,
// block by block (P_ij = exp(s_ij − lse_i)), the gradients of out = P·V are
//     dV = Pᵀ·dO                 dP = dO·Vᵀ
//     dS = P ∘ (dP − D),         D_i = Σ_j P_ij·dP_ij = Σ_c dO_ic·out_ic
//     dQ = scale·dS·K            dK = scale·dSᵀ·Q
// (the softmax Jacobian applied row by row: D_i is the row's dot product of P
// and dP, which equals dO_i·out_i because out_i = Σ_j P_ij·v_j). Under a
// softcap s = c·tanh(s₀/c), dS is multiplied by ds/ds₀ = 1 − tanh²(s₀/c).
// Nothing of size Lq×Lk exists: S, P, dP and dS live for one block of
// kRows query rows × kKeys keys at a time.
//
// How the work is cut: a work item is one (batch, K/V head) and a contiguous
// share (chunk) of its key blocks. It owns the dK and dV rows of its keys,
// summing over every query head of the GQA group in a fixed order, so no two
// threads ever write the same gradient row: no atomics. For each key block it
// streams all query blocks that can see it (causal and windows skip the
// rest), accumulating dK and dV of the block in registers-and-L1-sized
// buffers and dQ of every row of the group in a buffer of its own. With one
// chunk per head the item writes dQ itself; with several (few heads: the
// split count depends on the shape only: count_splits), each
// chunk leaves a partial dQ that a second pass sums in chunk order. Results
// are therefore bitwise independent of the thread count.
//
// Five products per block, each on the engine's tiles (engines/):
//     S  = scale·Q·Kᵀ,  dP = dO·Vᵀ        score_tile: K, V packed by pack_keys
//     dV += Pᵀ·dO,  dK += scale·dSᵀ·Q     weighted_sum over the block's rows
//     dQ += dS·K                           weighted_sum over the block's keys
// weighted_sum's B operands (dO, Q, K) are packed by pack_values, its weights
// (P, dS, as float blocks) by prepare_weights. K and V are read through the
// K/V rows policy (common/kv_rows-inl.hpp) as the forward reads them.
//
// Precision on peaked rows (docs/how-it-works.md, 7.1): where a row is nearly
// one-hot, dS = P ∘ (dP − D) is a difference of nearly equal numbers, so the
// kernel forms S in the forward's summation order (scores: the largest then
// cancels against lse exactly), reads lse as hi + lo (GradArgs::lse_lo), sums
// D in dP's order (task_deltas) and, for 16-bit inputs, from the unrounded
// float32 output when it is given (out_wide).
//
// Attention sinks need nothing here: the forward's lse includes the sink's
// term, so exp(s − lse) are already the keys' weights, and the sink's own
// gradient, −Σ_i exp(sink − lse_i)·D_i, is formed from lse, out and dO in
// Python (fastattn._api.attention_backward).
//
// Rows that see no key (lse = -inf) get dQ = 0 and contribute nothing: their
// dO is packed as zeros. A key a row cannot see gets dS = 0 exactly (not
// 0·dP, which is NaN when its value row holds a NaN), and a K block with a
// non-finite value adds to dQ only the terms of nonzero dS.

#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/kv_rows-inl.hpp"
#include "common/parallel-inl.hpp"
#include "common/rules-inl.hpp"
#include "common/storage-inl.hpp"
#include "forward-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

constexpr int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }
// All work items' partial dQ buffers together (see BackwardKernel::chunks).
constexpr int64_t kPartialBudgetBytes = int64_t(64) << 20;

template <class S, class E>
class BackwardKernel {
    using T = ComputeType<S>;
    using V = Vec<T>;  // registers are `auto` below: V::reg
    using ScorePacked = typename E::ScorePacked;
    using SumPacked = typename E::SumPacked;
    static constexpr int64_t W = V::width;
    static constexpr int64_t kTileRows = E::kRows, kTileKeys = E::kKeys;
    static constexpr int64_t lcm(int64_t a, int64_t b) { return a / gcd(a, b) * b; }
    // Keys per block: whole transposed panels (kTileKeys), whole row tiles of dK/dV
    // (kTileRows) and whole term units of the weighted sums (kTermUnit: pairs for bf16
    // engines, 32 for AMX), at least 288.
    static constexpr int64_t kKeysUnit = lcm(lcm(kTileRows, kTileKeys), lcm(E::kTermUnit, 2));
    static constexpr int64_t kKeys = (288 + kKeysUnit - 1) / kKeysUnit * kKeysUnit;
    // Query rows per block: whole row tiles, even, at least 60.
    static constexpr int64_t kRowsUnit = lcm(kTileRows, lcm(E::kTermUnit, 2));
    static constexpr int64_t kRows = (60 + kRowsUnit - 1) / kRowsUnit * kRowsUnit;

public:
    BackwardKernel(const AttentionArgs& a, const GradArgs& g)
        : a_(a),
          g_(g),
          rules_(a),
          engine_(a),
          d_pad_(E::cols_pad(a.d)),
          dv_pad_(E::cols_pad(a.dv)),
          group_(a.hq / a.hkv),
          key_blocks_((a.lk + kKeys - 1) / kKeys),
          scale_(static_cast<T>(a.scale)),
          score_post_(engine_.score_post(scale_)),
          value_post_(engine_.value_post(scale_)),
          kv_in_place_(ForwardKernel<S, S, E>::reads_kv_in_place(a)),
          neg_inf_(-std::numeric_limits<T>::infinity()) {}

    int64_t num_tasks() const { return a_.batch * a_.hkv; }

    // Chunks of key blocks per (batch, K/V head), by count_splits, with all
    // partial dQ buffers within kPartialBudgetBytes. Shape only, never the
    // thread count.
    int64_t chunks() const {
        const int64_t tasks = num_tasks();
        return count_splits(tasks, key_blocks_, kPartialBudgetBytes / (tasks * dq_size() * static_cast<int64_t>(sizeof(T))));
    }

    // dQ of one (batch, K/V head): every row of its query heads, padded (and a tile's rows
    // more: an engine whose tiles are always kTileRows high adds zeros past the last row).
    int64_t dq_size() const { return (group_ * a_.lq + kTileRows) * d_pad_; }

    struct Workspace {
        // Packed by the engine: the key block's K and V and a query block's Q and dO for
        // the score tiles; K, Q and dO as the weighted sums' panels.
        std::vector<ScorePacked> k_t, v_t, q_rows, do_rows;
        std::vector<SumPacked> k_pan, q_pan, do_pan;
        std::vector<SumPacked> p_w, ds_w, ds_wt;  // P and dS as weights: transposed (dV, dK), row-major (dQ)
        std::vector<T> q_direct;             // scale·Q as the forward's in-place decode tiles read it
        std::vector<T> dk_acc, dv_acc;       // (kKeys, d_pad), (kKeys, dv_pad)
        std::vector<T> lse, lse_lo, delta;   // per row of the query block (lse = lse + lse_lo)
        std::vector<T> p, ds, cap_grad;      // (kRows, kKeys): P and dP, then dS
        std::vector<T> bias, key_index, row; // scratch
        std::vector<T> dq_acc;               // one head group's dQ when the item owns it
        std::vector<T> deltas;               // D of every row of the head group (task_deltas)
        typename E::ThreadScope engine_scope;
        Workspace(int64_t d_pad, int64_t dv_pad, int64_t d, int64_t dv, int64_t dq_size, int64_t rows, bool softcap,
                  bool direct)
            : k_t(E::keys_size(kKeys, d)), v_t(E::keys_size(kKeys, dv)), q_rows(E::rows_size(kRows, d)),
              do_rows(E::rows_size(kRows, dv)), k_pan(E::values_size(kKeys, d_pad)),
              q_pan(E::values_size(kRows, d_pad)), do_pan(E::values_size(kRows, dv_pad)),
              p_w(E::weights_size(kKeys, kRows)), ds_w(E::weights_size(kRows, kKeys)),
              ds_wt(E::weights_size(kKeys, kRows)), q_direct(direct ? kRows * d : 0),
              dk_acc(kKeys * d_pad), dv_acc(kKeys * dv_pad),
              lse(kRows), lse_lo(kRows), delta(kRows),
              p(kRows * kKeys), ds(kRows * kKeys), cap_grad(softcap ? kRows * kKeys : 0),
              bias(kKeys), key_index(kKeys), row(std::max(d_pad, dv_pad)),
              dq_acc(dq_size), deltas(rows) {}
    };

    Workspace make_workspace(int64_t chunks) const {
        return Workspace(d_pad_, dv_pad_, a_.d, a_.dv, chunks == 1 ? dq_size() : 0, group_ * a_.lq, a_.softcap > 0,
                         kv_in_place_);
    }

    // Work item (task, chunk): the gradients of its keys, and its dQ (into
    // `partial` when chunks > 1, else written out).
    void run_item(int64_t task, int64_t chunk, int64_t chunks, Workspace& ws, T* partial) const {
        const Sequence seq = rules_.sequence(task / a_.hkv);
        const int64_t h_kv = task % a_.hkv;
        T* dq_acc = chunks == 1 ? ws.dq_acc.data() : partial;
        std::fill(dq_acc, dq_acc + dq_size(), T(0));
        if (a_.out_wide)
            task_deltas(seq.b, h_kv, static_cast<const T*>(a_.out), ws);
        else
            task_deltas(seq.b, h_kv, static_cast<const S*>(a_.out), ws);
        const int64_t kb_begin = key_blocks_ * chunk / chunks, kb_end = key_blocks_ * (chunk + 1) / chunks;
        for (int64_t kb = kb_begin; kb < kb_end; ++kb) key_block(kb * kKeys, seq, h_kv, ws, dq_acc);
        if (chunks == 1) write_dq(seq.b, h_kv, dq_acc);
    }

    // Sums the chunks' partial dQ of `task` in chunk order and writes it.
    void merge_chunks(int64_t task, int64_t chunks, T* partial) const {
        const int64_t n = dq_size();
        for (int64_t ch = 1; ch < chunks; ++ch) {
            const T* part = partial + ch * n;
            for (int64_t i = 0; i < n; i += W) V::store(partial + i, V::add(V::load(partial + i), V::load(part + i)));
        }
        write_dq(task / a_.hkv, task % a_.hkv, partial);
    }

private:
    // One key block: its dK and dV rows from every query block that sees it,
    // and those blocks' dQ contributions.
    void key_block(int64_t key0, const Sequence& seq, int64_t h_kv, Workspace& ws, T* dq_acc) const {
        const int64_t keys = std::min(kKeys, a_.lk - key0);
        const int64_t seen_end = std::min(keys, seq.kv_len - key0);  // keys past kv_len: invisible
        std::fill(ws.dk_acc.begin(), ws.dk_acc.end(), T(0));
        std::fill(ws.dv_acc.begin(), ws.dv_acc.end(), T(0));
        bool packed = false, k_finite = true;
        for (int64_t r0 = 0; r0 < seq.q_len && seen_end > 0; r0 += kRows) {
            const int64_t r1 = std::min(r0 + kRows, seq.q_len);
            // Both ends of a row's key interval grow with the row.
            if (rules_.key_begin(r0, seq) >= key0 + seen_end || rules_.key_end(r1 - 1, seq) <= key0) continue;
            if (!packed) {
                k_finite = pack_key_block(key0, keys, seq, h_kv, ws);
                packed = true;
            }
            for (int64_t g = 0; g < group_; ++g)
                query_block(h_kv * group_ + g, g, r0, r1, key0, seen_end, seq, k_finite, ws, dq_acc);
        }
        write_key_rows(seq.b, h_kv, key0, keys, ws);
    }

    // Packs K and V of keys [key0, key0 + keys), run by run as the forward reads
    // them; returns whether K is finite.
    bool pack_key_block(int64_t key0, int64_t keys, const Sequence& seq, int64_t h_kv, Workspace& ws) const {
        const KvRows<S> src = KvRows<S>::of(a_, seq.b, h_kv);
        src.for_each_run(a_, key0, key0 + keys, [&](int64_t j, int64_t n, const S* k, const S* v, const T*, const T*) {
            engine_.pack_keys(k, a_.k_strides.row, n, n, a_.d, ws.k_t.data(), ws.row.data(), j - key0);
            engine_.pack_keys(v, a_.v_strides.row, n, n, a_.dv, ws.v_t.data(), ws.row.data(), j - key0);
            engine_.pack_values(k, a_.k_strides.row, n, a_.d, d_pad_, kKeys, T(1), ws.k_pan.data(), ws.row.data(),
                                j - key0);
        });
        engine_.pack_keys(src.k, 0, 0, kKeys - keys, a_.d, ws.k_t.data(), ws.row.data(), keys);  // zero tails
        engine_.pack_keys(src.v, 0, 0, kKeys - keys, a_.dv, ws.v_t.data(), ws.row.data(), keys);
        E::pad_values(ws.k_pan.data(), keys, kKeys, d_pad_);
        return E::values_finite(ws.k_pan.data(), keys, kKeys, d_pad_);
    }

    // One query block [r0, r1) of query head h (group member g) against the
    // key block at key0, whose keys [0, seen_end) may be visible.
    void query_block(int64_t h, int64_t g, int64_t r0, int64_t r1, int64_t key0, int64_t seen_end, const Sequence& seq,
                     bool k_finite, Workspace& ws, T* dq_acc) const {
        const int64_t rows = r1 - r0;
        const int64_t row_first = (seq.b * a_.hq + h) * a_.lq + r0;  // in out, dO, lse
        const S* dout = static_cast<const S*>(g_.dout) + row_first * a_.dv;
        const S* q = static_cast<const S*>(a_.q) + seq.b * a_.q_strides.batch + h * a_.q_strides.head +
                     r0 * a_.q_strides.row;
        int64_t lo[kRows], hi[kRows];  // row r sees keys [lo[r], hi[r]) of the block
        for (int64_t r = 0; r < rows; ++r) {
            read_lse(row_first + r, ws.lse[r], ws.lse_lo[r]);
            lo[r] = std::max<int64_t>(rules_.key_begin(r0 + r, seq) - key0, 0);
            hi[r] = std::min(rules_.key_end(r0 + r, seq) - key0, seen_end);
            if (ws.lse[r] == neg_inf_) lo[r] = hi[r] = 0;  // sees no key at all: no gradient
        }
        // scale·Q for the score tiles (in place of the forward's decode tiles when it read K in place)
        // and for dK's weighted sums; dO for dP and dV.
        if (kv_in_place_)
            E::pack_direct_rows(q, a_.q_strides.row, rows, a_.d, scale_, ws.q_direct.data());
        else
            engine_.pack_rows(q, a_.q_strides.row, rows, a_.d, scale_, ws.q_rows.data());
        engine_.pack_values(q, a_.q_strides.row, rows, a_.d, d_pad_, kRows, scale_, ws.q_pan.data(), ws.row.data());
        engine_.pack_rows(dout, a_.dv, rows, a_.dv, T(1), ws.do_rows.data());
        engine_.pack_values(dout, a_.dv, rows, a_.dv, dv_pad_, kRows, T(1), ws.do_pan.data(), ws.row.data());
        E::pad_values(ws.q_pan.data(), rows, kRows, d_pad_);
        E::pad_values(ws.do_pan.data(), rows, kRows, dv_pad_);
        for (int64_t r = 0; r < rows; ++r) {
            ws.delta[r] = ws.deltas[g * a_.lq + r0 + r];
            if (lo[r] < hi[r]) continue;
            // Contributes nothing, even if its dO holds a NaN.
            E::zero_row(ws.do_rows.data(), a_.dv, r);
            E::zero_value_row(ws.do_pan.data(), kRows, dv_pad_, r);
            ws.delta[r] = 0;
        }

        int64_t key_hi = 0;
        for (int64_t r = 0; r < rows; ++r) key_hi = std::max(key_hi, hi[r]);
        if (key_hi == 0) return;
        const int64_t k_end = (key_hi + E::kScoreUnit - 1) / E::kScoreUnit * E::kScoreUnit;  // keys computed
        scores(h, key0, seen_end, seq, rows, k_end, ws);                                          // S, in p
        score_block(ws.do_rows.data(), rows, a_.dv, ws.v_t.data(), k_end, T(1), ws.ds.data());  // dP, in ds
        if (rules_.has_alibi()) Rules<T>::fill_key_index(key0, k_end, ws.key_index.data());
        for (int64_t r = 0; r < rows; ++r) softmax_grad_row(h, r0 + r, r, lo[r], hi[r], k_end, key0, seq, ws);
        for (int64_t r = rows; r < (rows + kTileRows - 1) / kTileRows * kTileRows; ++r) {  // a tile's dead rows
            std::fill_n(ws.p.data() + r * kKeys, k_end, T(0));
            std::fill_n(ws.ds.data() + r * kKeys, k_end, T(0));
        }
        weighted_sums(rows, key_hi, lo, hi, k_finite, ws, dq_acc + (g * a_.lq + r0) * d_pad_);
    }

    // The block's three weighted sums, from P and dS of its `rows` rows × `key_hi` keys
    // (backward_rows-inl.hpp).
    void weighted_sums(int64_t rows, int64_t key_hi, const int64_t* lo, const int64_t* hi, bool k_finite,
                       Workspace& ws, T* dq) const;

    // Row r of the block: P = exp(s − lse) and dS = P ∘ (dP − D) (backward_rows-inl.hpp).
    void softmax_grad_row(int64_t h, int64_t i, int64_t r, int64_t lo, int64_t hi, int64_t n, int64_t key0,
                          const Sequence& seq, Workspace& ws) const;

    // Writes the key block's dK and dV rows (keys past kv_len get zeros); dK times
    // the part of the scale the engine did not apply to Q when it packed it (value_post_).
    void write_key_rows(int64_t b, int64_t h_kv, int64_t key0, int64_t keys, Workspace& ws) const {
        const int64_t first = (b * a_.hkv + h_kv) * a_.lk + key0;
        S* dk = static_cast<S*>(g_.dk) + first * a_.d;
        S* dv = static_cast<S*>(g_.dv) + first * a_.dv;
        for (int64_t j = 0; j < keys; ++j) {
            narrow_row(ws.dk_acc.data() + j * d_pad_, a_.d, value_post_, dk + j * a_.d);
            narrow_row(ws.dv_acc.data() + j * dv_pad_, a_.dv, T(1), dv + j * a_.dv);
        }
    }

    // dq = scale·acc for the rows of one (batch, K/V head).
    void write_dq(int64_t b, int64_t h_kv, const T* acc) const {
        S* dq = static_cast<S*>(g_.dq) + (b * a_.hq + h_kv * group_) * a_.lq * a_.d;
        for (int64_t row = 0; row < group_ * a_.lq; ++row) narrow_row(acc + row * d_pad_, a_.d, scale_, dq + row * a_.d);
    }

    // The lse of a row as hi + lo: lo (GradArgs::lse_lo) holds what rounding
    // m + log(l) to hi lost (up to half an ulp of hi: 3.8e-6 at |lse| = 100 in
    // float32, a relative error of every P of the row); 0 without it.
    void read_lse(int64_t row, T& hi, T& lo) const {
        hi = static_cast<const T*>(g_.lse)[row];
        lo = g_.lse_lo && hi - hi == 0 ? static_cast<const T*>(g_.lse_lo)[row] : T(0);  // ±inf, NaN: all in hi
    }

    // D_i = Σ_c dO_ic·out_ic for every row of the task's query heads (b, and
    // the group of K/V head h_kv), into ws.deltas (group × Lq); out of storage
    // type O: S, or float32 for a 16-bit call's unrounded out (out_wide). Each
    // is summed as score_tile sums dP_ij = Σ_c dO_ic·V_jc: one FMA chain over
    // the features from 0. On a nearly one-hot row out_i ≈ V_j, and dP_ij − D_i
    // then cancels the two sums' rounding too, not only their values (summed in
    // vector lanes instead, D cost AVX2 gradients 1.8x torch's error at D = 8).
    // Once per work item, kRows rows at a time, column by column, so that the
    // rows' independent chains overlap.
    template <class O>
    void task_deltas(int64_t b, int64_t h_kv, const O* out, Workspace& ws) const {
        for (int64_t g = 0; g < group_; ++g) {
            const int64_t row_first = (b * a_.hq + h_kv * group_ + g) * a_.lq;
            const S* dout = static_cast<const S*>(g_.dout) + row_first * a_.dv;
            const O* o = out + row_first * a_.dv;
            T* delta = ws.deltas.data() + g * a_.lq;
            for (int64_t r0 = 0; r0 < a_.lq; r0 += kRows)
                E::delta_rows(dout + r0 * a_.dv, o + r0 * a_.dv, std::min(kRows, a_.lq - r0), a_.dv, delta + r0);
        }
    }

    // S of the query block (ws.q_rows, scale·Q) against the key block at key0,
    // keys [0, k_end), into ws.p: summed over the features in the
    // order the forward pass summed them, so that each score is bitwise the
    // one whose maximum went into lse. For a row's largest score P = exp(s −
    // lse) then cancels exactly to 1/l; a score formed in another order
    // differs by about an ulp of s (7.6e-6 at |s| = 100), an error P would
    // carry whole and the cancellation dS = P ∘ (dP − D) would amplify.
    void scores(int64_t h, int64_t key0, int64_t seen_end, const Sequence& seq, int64_t rows, int64_t k_end,
                Workspace& ws) const {
        if (!kv_in_place_) return score_block(ws.q_rows.data(), rows, a_.d, ws.k_t.data(), k_end, score_post_, ws.p.data());
        // The forward read K in place (decoding shapes): its decode tiles, as it did.
        const S* k = static_cast<const S*>(a_.k) + seq.b * a_.k_strides.batch + (h / group_) * a_.k_strides.head +
                     key0 * a_.k_strides.row;
        const int64_t n = std::min(seen_end, k_end);
        for (int64_t t0 = 0; t0 < rows; t0 += E::kDirectRows)
            E::with_direct_rows(std::min(E::kDirectRows, rows - t0), [&](auto m) {
                E::template unpacked_scores<decltype(m)::value>(ws.q_direct.data() + t0 * a_.d, a_.d, k,
                                                                a_.k_strides.row, 0, n, ws.p.data() + t0 * kKeys, kKeys);
            });
        for (int64_t r = 0; r < rows; ++r) std::fill(ws.p.data() + r * kKeys + n, ws.p.data() + r * kKeys + k_end, T(0));
    }

    // out[r][j] = post·Σ_c a[r][c]·bt[c][j] for rows [0, rows) of a and keys [0, k_end);
    // out has stride kKeys. A panel at a time against every row tile, so that the panel
    // stays in L1 (row tiles outside would walk the whole block per tile).
    void score_block(const ScorePacked* a, int64_t rows, int64_t depth, const ScorePacked* bt, int64_t k_end, T post,
                     T* out) const {
        for (int64_t k0 = 0; k0 < k_end; k0 += kTileKeys)
            for (int64_t t0 = 0; t0 < rows; t0 += kTileRows)
                E::with_rows(std::min(kTileRows, rows - t0), [&](auto n) {
                    engine_.template score_tile<decltype(n)::value>(a + E::row_offset(t0, depth), depth, bt, k0,
                                                                    std::min(k0 + kTileKeys, k_end), post,
                                                                    out + t0 * kKeys, kKeys);
                });
    }

    const AttentionArgs& a_;
    const GradArgs& g_;
    const Rules<T> rules_;
    const E engine_;
    const int64_t d_pad_, dv_pad_, group_, key_blocks_;
    const T scale_;
    // The part of the scale the engine applies after its products rather than when it
    // packs q: to S (score tiles), and to dK (weighted sums over scale·Q).
    const T score_post_, value_post_;
    const bool kv_in_place_;  // the forward read K in place: scores in its order
    const T neg_inf_;
};

template <class S, class E>
void backward_typed(const AttentionArgs& args, const GradArgs& grad) {
    using T = ComputeType<S>;
    using Kernel = BackwardKernel<S, E>;
    const Kernel kernel(args, grad);
    const int64_t tasks = kernel.num_tasks(), chunks = kernel.chunks();
    std::vector<T> partial(chunks > 1 ? tasks * chunks * kernel.dq_size() : 0);
    T* const partial_data = partial.data();
    const int64_t task_partial = chunks * kernel.dq_size();
    run_work_items<typename Kernel::Workspace>(
        args.num_threads, tasks, chunks, [&](int64_t) { return kernel.make_workspace(chunks); },
        [&](int64_t task, int64_t chunk, typename Kernel::Workspace& ws) {
            kernel.run_item(task, chunk, chunks, ws, partial_data + task * task_partial + chunk * kernel.dq_size());
        },
        [&](int64_t task, typename Kernel::Workspace&) {
            kernel.merge_chunks(task, chunks, partial_data + task * task_partial);
        });
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

#include "backward_rows-inl.hpp"
