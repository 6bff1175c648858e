// The attention forward kernel, written once against the vector API of
// vec_*.hpp and compiled once per ISA inside namespace fastattn::FASTATTN_ISA
// (see sdpa_<isa>.cpp). The including file has already included its vec header.
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
// q is multiplied by the scale once, when it is packed, so the score tile
// needs no multiply; and p = exp(x), x = s − m <= 0, is computed as
// 2^(x·log2(e)) by vexp2, without exp's two-part ln2 reduction. Rounding
// x·log2(e) costs p a relative |x|·eps/2, largest where p = e^x is smallest,
// so each term's error stays below ~0.2 eps of the row's largest term.
// (Scores themselves stay in natural units: in log2 units a score of
// magnitude 100 would be rounded at 144, an extra rounding naive attention
// does not have.)
//
// How the work is cut (all in ForwardKernel below):
//   task       up to kQueryBlock query rows of one batch entry: one head's
//              block of rows, or, when a head has fewer rows (decoding), the
//              rows of several query heads that share one K/V head (GQA).
//   key block  kKeyBlock keys. K is packed transposed and V in column panels,
//              each panel one register tile wide and walked contiguously
//              (packed_block); a thread keeps the packed blocks of a whole
//              (batch, K/V head) while later tasks on that head reuse them.
//              Decoding tasks (<= kDirectMaxRows rows, their K/V head read by
//              no other task) skip packing and read K/V in place (direct_).
//   tile       kTileRows rows × kTileVecs vectors of FMA accumulators: each
//              loaded vector of K or V feeds every row of the tile
//              (score_tile, pv_tile); softmax_tile is in between, its rows
//              interleaved so that their dependency chains overlap.
//   split      when a call has few tasks, each task's key blocks are shared
//              out as several work items whose partial states are merged
//              (flash-decoding: kv_splits, merge_splits).
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
// (or, in direct mode, as it is read) and computed in float32; the output is
// rounded back once per element.
//
// Each row's arithmetic depends only on the key blocks and the shape (the
// split count included), never on which thread runs it or which rows share
// its task or tile (extra terms a tile adds to a row are exact zeros), so
// results are bitwise independent of the thread count.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../sdpa.hpp"
#include "isa_entry.hpp"

#ifndef FASTATTN_ISA
#error "FASTATTN_ISA must name the target ISA (set by CMakeLists.txt)"
#endif

namespace fastattn {
namespace FASTATTN_ISA {

#include "half-inl.hpp"
#include "math-inl.hpp"

namespace {

constexpr int64_t kQueryBlock = 60;  // query rows per task: a multiple of the register tile's 6 rows
constexpr int64_t kKeyBlock = 256;   // keys per streamed K/V block
constexpr double kLog2e = 1.4426950408889634074;
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

// 16-bit storage formats, computed in float32.
struct f16 {
    uint16_t bits;
};
struct bf16 {
    uint16_t bits;
};

// Storage type S -> compute type T, element by element and a vector at a time.
template <class S>
struct Storage {  // float, double: stored as computed
    using T = S;
    static T widen(S x) { return x; }
    static S narrow(T x) { return x; }
    static typename Vec<T>::reg load(const S* p) { return Vec<T>::load(p); }
    static void store(S* p, typename Vec<T>::reg x) { Vec<T>::store(p, x); }
};
template <>
struct Storage<f16> {
    using T = float;
    static T widen(f16 x) { return f16_to_f32(x.bits); }
    static f16 narrow(T x) { return f16{f32_to_f16(x)}; }
    static Vec<float>::reg load(const f16* p) { return Vec<float>::load_f16(reinterpret_cast<const uint16_t*>(p)); }
    static void store(f16* p, Vec<float>::reg x) { Vec<float>::store_f16(reinterpret_cast<uint16_t*>(p), x); }
};
template <>
struct Storage<bf16> {
    using T = float;
    static T widen(bf16 x) { return bf16_to_f32(x.bits); }
    static bf16 narrow(T x) { return bf16{f32_to_bf16(x)}; }
    static Vec<float>::reg load(const bf16* p) { return Vec<float>::load_bf16(reinterpret_cast<const uint16_t*>(p)); }
    static void store(bf16* p, Vec<float>::reg x) { Vec<float>::store_bf16(reinterpret_cast<uint16_t*>(p), x); }
};

int64_t clamp(int64_t x, int64_t lo, int64_t hi) { return std::max(lo, std::min(x, hi)); }

template <class S>
class ForwardKernel {
    using T = typename Storage<S>::T;
    using V = Vec<T>;
    using reg = typename V::reg;
    static constexpr int64_t W = V::width;
    static_assert(kKeyBlock % W == 0, "a key block must be whole vectors");
    static constexpr int64_t kKeyVecs = kKeyBlock / W;
    // Register tiles of the two products: kTileRows query rows × kTileVecs
    // vectors (of keys in q·kᵀ, of value columns in p·v). Each vector of K or
    // V loaded feeds kTileRows rows' FMAs; the accumulators, the loaded
    // vectors and a broadcast fit the ISA's register file: 6·2 + 2 + 1 = 15 of
    // 16, or 6·4 + 4 + 1 = 29 of 32. (AVX2, against 4 × 2: +3% at D = 64,
    // +11% at D = 128.) kQueryBlock is a multiple of kTileRows.
    static constexpr int64_t kTileVecs = V::registers >= 32 ? 4 : 2;
    static constexpr int64_t kTileRows = 6;
    static_assert(kQueryBlock % kTileRows == 0, "a task must be whole tiles");
    static_assert(kKeyVecs % kTileVecs == 0, "a key block must be whole tiles");

public:
    explicit ForwardKernel(const SdpaArgs& a)
        : a_(a),
          dv_pad_((a.dv + W - 1) / W * W),
          group_(a.hq / a.hkv),
          rows_per_head_(std::min(a.lq, kQueryBlock)),
          heads_per_task_(heads_per_task(group_, rows_per_head_)),
          task_rows_(rows_per_head_ * heads_per_task_),
          q_blocks_((a.lq + rows_per_head_ - 1) / rows_per_head_),
          // Causal is the window's right edge at the diagonal.
          window_right_(a.causal != Causal::none ? 0 : a.window_right),
          has_mask_(a.mask.kind != MaskKind::none),
          q_scale_(static_cast<T>(a.scale)),
          direct_(q_blocks_ == 1 && group_ == heads_per_task_ && task_rows_ <= kDirectMaxRows),
          neg_inf_(-std::numeric_limits<T>::infinity()) {}

    int64_t num_tasks() const { return a_.batch * (a_.hq / heads_per_task_) * q_blocks_; }

    // When a head has too few query rows to fill a task (decoding: Lq = 1),
    // a task takes several query heads that share one K/V head, so that their
    // rows fill the register tiles and the K/V panel is packed once for them.
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
        std::unique_ptr<T[]> k_pack, v_pack;
        std::vector<char> slot_ready, v_finite;  // per slot: packed; its V rows all finite
        int64_t panel_owner = -1;                // b·hkv + h_kv whose panel the slots hold
        std::vector<T> q_pack, row, scores, bias, key_index, acc, row_max, row_sum;
        // Per task row: its query position, its head's ALiBi slope and mask.
        std::vector<int64_t> row_pos;
        std::vector<T> row_slope;
        std::vector<const char*> row_mask;
        // rows: the most query rows a task has (<= kQueryBlock; a tiny call has fewer).
        Workspace(int64_t d, int64_t dv_pad, int64_t slots, int64_t rows)
            : k_pack(new T[slots * d * kKeyBlock]),
              v_pack(new T[slots * kKeyBlock * dv_pad]),
              slot_ready(slots),
              v_finite(slots),
              q_pack(rows * d),
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
        const int64_t panel_bytes = key_blocks * kKeyBlock * (a_.d + dv_pad_) * static_cast<int64_t>(sizeof(T));
        const bool reused = q_blocks_ > 1 || group_ / heads_per_task_ > 1;
        const int64_t slots = direct_ ? 0 : reused && panel_bytes * threads <= kPanelBudgetBytes ? key_blocks : 1;
        return Workspace(a_.d, dv_pad_, slots, task_rows_);
    }

    // Computes the rows of task_rows(task): packs their queries, streams the
    // key blocks they can see, and writes out and lse.
    //
    // With splits > 1 (flash-decoding, see forward_typed) the task streams only
    // its share `split` of its key blocks and leaves its rows' partial
    // (max, sum, acc) in `partial` for merge_splits; else it writes its rows.
    void run_task(int64_t task, Workspace& ws, int64_t split = 0, int64_t splits = 1, T* partial = nullptr) const {
        const TaskRows t = task_rows(task);
        const Block& blk = t.blk;
        const int64_t h0 = t.h0, row0 = t.row0, rows_live = t.rows_live;
        const int64_t h_kv = h0 / group_;
        int64_t live = 0;
        for (int64_t h = h0; h < h0 + heads_per_task_ && rows_live > 0; ++h) {
            const S* q = static_cast<const S*>(a_.q) + blk.b * a_.q_strides.batch + h * a_.q_strides.head +
                         row0 * a_.q_strides.row;
            T* q_rows = ws.q_pack.data() + live * a_.d;
            pack_rows(q, a_.q_strides.row, rows_live, a_.d, a_.d, q_rows);
            scale_in_place(q_rows, rows_live * a_.d, q_scale_);
            const T slope = a_.alibi_slopes ? static_cast<T>(a_.alibi_slopes[blk.b * a_.hq + h]) : T(0);
            const char* mask = has_mask_ ? static_cast<const char*>(a_.mask.data) +
                                               (a_.mask.batch_offsets[blk.b] + h * a_.mask.head) * mask_item_size()
                                         : nullptr;
            for (int64_t i = row0; i < row0 + rows_live; ++i, ++live) {
                ws.row_pos[live] = i;
                ws.row_slope[live] = slope;
                ws.row_mask[live] = mask;
            }
        }
        // Keys any live row sees: every head has the same rows, and both ends grow with i.
        int64_t first = rows_live > 0 ? key_begin(row0, blk) : 0;
        int64_t last = rows_live > 0 ? key_end(row0 + rows_live - 1, blk) : 0;
        if (splits > 1 && first < last) {  // this split's contiguous share of the key blocks
            const int64_t block0 = first / kKeyBlock, blocks = (last + kKeyBlock - 1) / kKeyBlock - block0;
            first = std::max(first, (block0 + blocks * split / splits) * kKeyBlock);
            last = std::min(last, (block0 + blocks * (split + 1) / splits) * kKeyBlock);
        }
        std::fill(ws.row_max.begin(), ws.row_max.begin() + live, neg_inf_);
        std::fill(ws.row_sum.begin(), ws.row_sum.begin() + live, T(0));
        std::fill(ws.acc.begin(), ws.acc.begin() + live * dv_pad_, T(0));

        const S* k = static_cast<const S*>(a_.k) + blk.b * a_.k_strides.batch + h_kv * a_.k_strides.head;
        const S* v = static_cast<const S*>(a_.v) + blk.b * a_.v_strides.batch + h_kv * a_.v_strides.head;
        const int64_t owner = blk.b * a_.hkv + h_kv;
        // A mask that varies neither along the query axis nor across this
        // task's heads (key padding) is read once per block; it also narrows
        // the block to its unmasked keys, and a block it masks whole is skipped.
        const bool shared_mask = has_mask_ && a_.mask.row == 0 && (a_.mask.head == 0 || heads_per_task_ == 1);
        for (int64_t key0 = first / kKeyBlock * kKeyBlock; live > 0 && key0 < last; key0 += kKeyBlock) {
            const int64_t keys = std::min(kKeyBlock, blk.kv_len - key0);
            int64_t span_lo = 0, span_hi = keys;
            if (shared_mask) {
                mask_bias(ws.row_mask[0], key0, 0, keys, ws.bias.data());
                while (span_lo < keys && ws.bias[span_lo] == neg_inf_) ++span_lo;
                while (span_hi > span_lo && ws.bias[span_hi - 1] == neg_inf_) --span_hi;
                if (span_lo == span_hi) continue;
            }
            const PackedBlock kv = direct_ ? PackedBlock{nullptr, nullptr, false, k + key0 * a_.k_strides.row,
                                                         v + key0 * a_.v_strides.row}
                                           : packed_block(k, v, owner, key0, keys, ws);
            if (a_.alibi_slopes)
                for (int64_t j = 0; j < kKeyBlock; ++j) ws.key_index[j] = static_cast<T>(key0 + j);
            for (int64_t r0 = 0; r0 < live; r0 += kTileRows) {
                const int64_t n = std::min(kTileRows, live - r0);
                int64_t lo[kTileRows], hi[kTileRows];  // row r0 + r sees keys [lo[r], hi[r])
                for (int64_t r = 0; r < n; ++r) {
                    const int64_t i = ws.row_pos[r0 + r];
                    lo[r] = std::max(key_begin(i, blk) - key0, span_lo);
                    hi[r] = std::min(key_end(i, blk) - key0, span_hi);
                }
                update_tile(n, r0, lo, hi, key0, blk, shared_mask, kv, ws);
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

    // The scratch one split of one task leaves: max and sum of up to
    // task_rows_ rows, then their accumulators.
    int64_t partial_size() const { return task_rows_ * (2 + dv_pad_); }

    // Combines the `splits` partial states of `task` (each over a disjoint key
    // range) by the same rescaling identity as the block loop:
    //     m = max_s m_s,  l = Σ_s l_s·exp(m_s − m),  acc = Σ_s acc_s·exp(m_s − m),
    // splits in order, so the result depends only on the shape. A NaN
    // maximum in any split makes the row NaN, as in one pass.
    void merge_splits(int64_t task, int64_t splits, const T* partial, Workspace& ws) const {
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

private:
    // What one task knows about its sequence.
    struct Block {
        int64_t b = 0;
        int64_t q_len = 0, kv_len = 0, diag_off = 0;  // this sequence's lengths and diagonal
    };

    // Which rows a task owns: rows [row0, row0 + rows) of query heads
    // [h0, h0 + heads_per_task_) of batch entry blk.b; rows at or past
    // q_lengths[b] are padding (rows_live <= rows) and finish as zeros with
    // lse = -inf. Tasks are numbered so that the most expensive query blocks
    // (the last ones, under causal masking) are handed out first.
    struct TaskRows {
        Block blk;
        int64_t h0 = 0, row0 = 0, rows = 0, rows_live = 0;
    };
    TaskRows task_rows(int64_t task) const {
        const int64_t head_groups = a_.hq / heads_per_task_;
        const int64_t bg = task / q_blocks_;
        const int64_t q_block = q_blocks_ - 1 - task % q_blocks_;
        TaskRows t;
        t.blk.b = bg / head_groups;
        t.h0 = bg % head_groups * heads_per_task_;
        t.row0 = q_block * rows_per_head_;
        t.rows = std::min(rows_per_head_, a_.lq - t.row0);
        t.blk.q_len = a_.q_lengths ? a_.q_lengths[t.blk.b] : a_.lq;
        t.blk.kv_len = a_.kv_lengths ? a_.kv_lengths[t.blk.b] : a_.lk;
        t.blk.diag_off = a_.causal == Causal::lower_right ? t.blk.kv_len - t.blk.q_len : 0;
        t.rows_live = clamp(t.blk.q_len - t.row0, 0, t.rows);
        return t;
    }

    // Writes the task's rows from their final (max, sum, acc), live rows
    // numbered head by head as run_task packs them.
    void write_rows(const TaskRows& t, const T* row_max, const T* row_sum, const T* acc) const {
        for (int64_t h = t.h0, r = 0; h < t.h0 + heads_per_task_; ++h) {
            const int64_t first_row = (t.blk.b * a_.hq + h) * a_.lq + t.row0;
            S* out = static_cast<S*>(a_.out) + first_row * a_.dv;
            T* lse = a_.lse ? static_cast<T*>(a_.lse) + first_row : nullptr;  // compute dtype
            for (int64_t i = 0; i < t.rows; ++i) {
                const bool is_live = i < t.rows_live;
                if (is_live)
                    finish_row(row_max[r], row_sum[r], acc + r * dv_pad_, out + i * a_.dv, lse ? lse + i : nullptr);
                else
                    finish_row(neg_inf_, T(0), acc, out + i * a_.dv, lse ? lse + i : nullptr);
                r += is_live;
            }
        }
    }

    // Query row i sees keys [key_begin(i), key_end(i)), clamped to [0, kv_len].
    int64_t key_begin(int64_t i, const Block& blk) const {
        return a_.window_left < 0 ? 0 : clamp(i + blk.diag_off - a_.window_left, 0, blk.kv_len);
    }
    int64_t key_end(int64_t i, const Block& blk) const {
        return window_right_ < 0 ? blk.kv_len : clamp(i + blk.diag_off + window_right_ + 1, 0, blk.kv_len);
    }

    // Signed, like the strides: a reversed mask view has negative offsets.
    int64_t mask_item_size() const {
        return a_.mask.kind == MaskKind::boolean ? 1 : static_cast<int64_t>(sizeof(T));
    }

    // Bias of keys [lo, hi) of this block for the mask row at `mask_row`:
    // 0 or -inf for a boolean mask, the value for an additive one.
    void mask_bias(const char* mask_row, int64_t key0, int64_t lo, int64_t hi, T* bias) const {
        const int64_t col = a_.mask.col;
        if (a_.mask.kind == MaskKind::boolean) {
            const unsigned char* m = reinterpret_cast<const unsigned char*>(mask_row) + key0 * col;
            for (int64_t j = lo; j < hi; ++j) bias[j] = m[j * col] ? T(0) : neg_inf_;
        } else {
            const T* m = reinterpret_cast<const T*>(mask_row) + key0 * col;
            for (int64_t j = lo; j < hi; ++j) bias[j] = m[j * col];
        }
    }

    // The mask row of task row r.
    const char* mask_row(int64_t r, const Workspace& ws) const {
        return ws.row_mask[r] + ws.row_pos[r] * a_.mask.row * mask_item_size();
    }

    struct PackedBlock {
        const T* k;      // k transposed, in panels: pack_keys_transposed
        const T* v;      // column panels of (kKeyBlock, dv_pad): pack_values
        bool v_finite;   // no NaN or inf among its values
        // In direct mode (direct_) nothing is packed: the block's keys are
        // read where they are, from these first rows.
        const S* k_src = nullptr;
        const S* v_src = nullptr;
    };

    // Key block key0 of the (batch, kv head) `owner`, packed: from this
    // thread's panel when it already holds it, else packed now (into the panel
    // slot, or into the single slot when there is no panel).
    PackedBlock packed_block(const S* k, const S* v, int64_t owner, int64_t key0, int64_t keys,
                             Workspace& ws) const {
        const bool panel = ws.slot_ready.size() > 1;
        const int64_t slot = panel ? key0 / kKeyBlock : 0;
        T* k_pack = ws.k_pack.get() + slot * a_.d * kKeyBlock;
        T* v_pack = ws.v_pack.get() + slot * kKeyBlock * dv_pad_;
        if (panel && ws.panel_owner != owner) {
            std::fill(ws.slot_ready.begin(), ws.slot_ready.end(), 0);
            ws.panel_owner = owner;
        }
        if (!panel || !ws.slot_ready[slot]) {
            pack_keys_transposed(k + key0 * a_.k_strides.row, keys, k_pack, ws.row.data());
            pack_values(v + key0 * a_.v_strides.row, keys, v_pack, ws.row.data());
            bool finite = true;  // over the packed keys of each panel
            for (int64_t c0 = 0; c0 < dv_pad_; c0 += panel_width(c0))
                finite = finite && all_finite(v_pack + c0 * kKeyBlock, keys * panel_width(c0));
            ws.v_finite[slot] = finite;
            ws.slot_ready[slot] = 1;
        }
        return {k_pack, v_pack, ws.v_finite[slot] != 0};
    }

    static bool has_nan(const T* x, int64_t n) {
        return std::any_of(x, x + n, [](T e) { return e != e; });
    }

    static bool all_finite(const T* x, int64_t n) {
        // x·0 is 0 for finite x and NaN for NaN or inf: one pass, no branches.
        reg acc = V::zero();
        const reg zero = V::zero();
        for (int64_t i = 0; i < n; i += W) acc = V::add(acc, V::mul(V::load(x + i), zero));
        return V::reduce_add(acc) == T(0);
    }

    // dst[c] = src[c] in the compute type.
    static void widen_row(const S* src, int64_t n, T* dst) {
        if (std::is_same<S, T>::value) {
            std::memcpy(dst, src, n * sizeof(T));
            return;
        }
        int64_t c = 0;
        for (; c + W <= n; c += W) V::store(dst + c, Storage<S>::load(src + c));
        for (; c < n; ++c) dst[c] = Storage<S>::widen(src[c]);
    }

    static void scale_in_place(T* x, int64_t n, T factor) {
        for (int64_t i = 0; i < n; ++i) x[i] *= factor;
    }

    // dst[r][c] = src[r·row_stride + c] for c < cols, zero up to padded_cols.
    static void pack_rows(const S* src, int64_t row_stride, int64_t rows, int64_t cols, int64_t padded_cols,
                          T* dst) {
        for (int64_t r = 0; r < rows; ++r) {
            T* d = dst + r * padded_cols;
            widen_row(src + r * row_stride, cols, d);
            std::fill(d + cols, d + padded_cols, T(0));
        }
    }

    // K transposed, in panels of one register tile's keys (kTileKeys):
    // k_pack[g][c][w] = k[g·kTileKeys + w][c]. The score kernel broadcasts
    // q[c] against the whole vectors of keys at k_pack[g][c], and walks a panel
    // front to back, contiguously (a plain [c][j] layout would stride by the
    // block's width, and at D = 128 its lines would fight over a few L1 sets).
    // Missing keys (j >= keys) up to the end of the last panel are zero: their
    // scores are finite and then masked, never NaN from uninitialised memory;
    // panels past that are never read.
    static constexpr int64_t kTileKeys = kTileVecs * W;
    void pack_keys_transposed(const S* k, int64_t keys, T* k_pack, T* scratch_row) const {
        for (int64_t j = 0; j < (keys + kTileKeys - 1) / kTileKeys * kTileKeys; ++j) {
            T* dst = k_pack + j / kTileKeys * a_.d * kTileKeys + j % kTileKeys;
            if (j >= keys) {
                for (int64_t c = 0; c < a_.d; ++c) dst[c * kTileKeys] = T(0);
                continue;
            }
            const S* kj = k + j * a_.k_strides.row;
            const T* row = reinterpret_cast<const T*>(kj);
            if (!std::is_same<S, T>::value) {
                widen_row(kj, a_.d, scratch_row);
                row = scratch_row;
            }
            for (int64_t c = 0; c < a_.d; ++c) dst[c * kTileKeys] = row[c];
        }
    }

    // V in column panels, the p·v kernel's tiles (kTileKeys columns, then
    // single vectors): the panel of columns [c0, c0 + width) starts at
    // v_pack + c0·kKeyBlock and holds those columns of every key, key after
    // key, so the kernel walks it contiguously. Columns past Dv are zero; keys
    // past `keys` are left out (p·v reads keys below a row's end only).
    void pack_values(const S* v, int64_t keys, T* v_pack, T* scratch_row) const {
        std::fill(scratch_row + a_.dv, scratch_row + dv_pad_, T(0));
        for (int64_t j = 0; j < keys; ++j) {
            widen_row(v + j * a_.v_strides.row, a_.dv, scratch_row);
            for (int64_t c0 = 0; c0 < dv_pad_;) {
                const int64_t width = panel_width(c0);
                std::copy(scratch_row + c0, scratch_row + c0 + width, v_pack + c0 * kKeyBlock + j * width);
                c0 += width;
            }
        }
    }

    // The width of the V panel (and p·v tile) that starts at column c0.
    int64_t panel_width(int64_t c0) const { return c0 + kTileKeys <= dv_pad_ ? kTileKeys : W; }

    // scores[r][j] = q_r · k_j for R rows (packed times the scale) and key vectors [v_begin, v_end).
    // Each score's dot product runs over the features in order whatever R is,
    // so a row's scores do not depend on the tile it was computed in.
    template <int R>
    void score_tile(const T* q_rows, const T* k_pack, int64_t v_begin, int64_t v_end, T* scores) const {
        for (int64_t v0 = v_begin; v0 < v_end; v0 += kTileVecs) {
            reg dot[R][kTileVecs];
            for (int r = 0; r < R; ++r)
                for (int64_t n = 0; n < kTileVecs; ++n) dot[r][n] = V::zero();
            const T* kp = k_pack + v0 / kTileVecs * a_.d * kTileKeys;  // its panel
            for (int64_t c = 0; c < a_.d; ++c, kp += kTileKeys) {
                reg keys[kTileVecs];
                for (int64_t n = 0; n < kTileVecs; ++n) keys[n] = V::load(kp + n * W);
                for (int r = 0; r < R; ++r) {
                    const reg qc = V::set1(q_rows[r * a_.d + c]);
                    for (int64_t n = 0; n < kTileVecs; ++n) dot[r][n] = V::fma(qc, keys[n], dot[r][n]);
                }
            }
            for (int r = 0; r < R; ++r)
                for (int64_t n = 0; n < kTileVecs; ++n)
                    V::store(scores + r * kKeyBlock + (v0 + n) * W, dot[r][n]);
        }
    }

    // Softcap, ALiBi and the mask, in the order of sdpa.hpp, on vectors [v_begin, v_end).
    void shape_scores(int64_t r, int64_t lo, int64_t hi, int64_t key0, const Block& blk, bool shared_mask,
                      int64_t v_begin, int64_t v_end, T* s, Workspace& ws) const {
        if (a_.softcap > 0) {
            const reg cap = V::set1(static_cast<T>(a_.softcap)), inv_cap = V::set1(static_cast<T>(1 / a_.softcap));
            for (int64_t u = v_begin; u < v_end; ++u)
                V::store(s + u * W, V::mul(cap, vtanh<T>(V::mul(V::load(s + u * W), inv_cap))));
        }
        if (a_.alibi_slopes) {  // s -= slope·|i + off − j|
            const reg pos = V::set1(static_cast<T>(ws.row_pos[r] + blk.diag_off));
            const reg neg_slope = V::set1(-ws.row_slope[r]);
            for (int64_t u = v_begin; u < v_end; ++u) {
                const reg dist = V::abs(V::sub(pos, V::load(ws.key_index.data() + u * W)));
                V::store(s + u * W, V::fma(neg_slope, dist, V::load(s + u * W)));
            }
        }
        if (has_mask_) {
            T* bias = ws.bias.data();
            if (!shared_mask) mask_bias(mask_row(r, ws), key0, lo, hi, bias);
            for (int64_t u = v_begin; u < v_end; ++u)
                V::store(s + u * W, V::add_bias(V::load(s + u * W), V::load(bias + u * W)));
        }
    }

    // update_rows<n>, for a tile of n <= kTileRows rows known only at run time:
    // a decode task of 4 query heads is one 4-row tile, not 4 single rows.
    void update_tile(int64_t n, int64_t r0, const int64_t* lo, const int64_t* hi, int64_t key0, const Block& blk,
                     bool shared_mask, const PackedBlock& kv, Workspace& ws) const {
        static_assert(kTileRows == 6, "one case per tile height");
        switch (n) {
            case 6: return update_rows<6>(r0, lo, hi, key0, blk, shared_mask, kv, ws);
            case 5: return update_rows<5>(r0, lo, hi, key0, blk, shared_mask, kv, ws);
            case 4: return update_rows<4>(r0, lo, hi, key0, blk, shared_mask, kv, ws);
            case 3: return update_rows<3>(r0, lo, hi, key0, blk, shared_mask, kv, ws);
            case 2: return update_rows<2>(r0, lo, hi, key0, blk, shared_mask, kv, ws);
            default: return update_rows<1>(r0, lo, hi, key0, blk, shared_mask, kv, ws);
        }
    }

    // One key block's contribution to rows [r0, r0 + R) of the task; row
    // r0 + r sees keys [lo[r], hi[r]) of the block (none when lo >= hi).
    template <int R>
    void update_rows(int64_t r0, const int64_t* lo, const int64_t* hi, int64_t key0, const Block& blk,
                     bool shared_mask, const PackedBlock& kv, Workspace& ws) const {
        int64_t first = kKeyBlock, last = 0;  // keys any row of the tile sees
        for (int r = 0; r < R; ++r)
            if (lo[r] < hi[r]) first = std::min(first, lo[r]), last = std::max(last, hi[r]);
        if (first >= last) return;
        const int64_t v_begin = first / W / kTileVecs * kTileVecs;
        const int64_t v_end = std::min(kKeyVecs, ((last + W - 1) / W + kTileVecs - 1) / kTileVecs * kTileVecs);
        T* scores = ws.scores.data();
        if (direct_)
            direct_scores<R>(ws.q_pack.data() + r0 * a_.d, kv, first, last, v_begin, v_end, scores);
        else
            score_tile<R>(ws.q_pack.data() + r0 * a_.d, kv.k, v_begin, v_end, scores);
        T alpha[R];
        softmax_tile<R>(r0, lo, hi, key0, blk, shared_mask, v_begin, v_end, scores, alpha, ws);
        T* acc = ws.acc.data() + r0 * dv_pad_;
        if (direct_) {  // row by row, as below for non-finite values (direct mode never looks at V first)
            for (int r = 0; r < R; ++r)
                if (lo[r] < hi[r]) pv_direct(scores + r * kKeyBlock, lo[r], hi[r], alpha[r], kv.v_src, acc + r * dv_pad_);
            return;
        }
        if (kv.v_finite) {
            // Keys outside a row's own [lo, hi) have p = 0 exactly and finite
            // values: they add exact zeros to that row.
            pv_tile<R, false>(scores, first, last, alpha, kv.v, acc);
            return;
        }
        // A NaN or inf value would leak into rows that cannot see its key
        // through 0·NaN: one row at a time over the row's own keys, and under
        // a mask (which leaves keys of weight 0 inside [lo, hi)) skipping zeros.
        for (int r = 0; r < R; ++r) {
            if (lo[r] >= hi[r]) continue;
            T* p = scores + r * kKeyBlock;
            if (has_mask_)
                pv_tile<1, true>(p, lo[r], hi[r], alpha + r, kv.v, acc + r * dv_pad_);
            else
                pv_tile<1, false>(p, lo[r], hi[r], alpha + r, kv.v, acc + r * dv_pad_);
        }
    }

    // The online-softmax step of task rows [r0, r0 + R) for one key block:
    // shapes and masks each row's scores, turns them into p = exp(s − m') in
    // place, updates m and l, and sets alpha[r] = exp(m − m') for the old acc.
    // A row that sees nothing here gets p = 0 and alpha = 1. The rows are
    // independent; each pass runs over all of them so their chains overlap.
    template <int R>
    void softmax_tile(int64_t r0, const int64_t* lo, const int64_t* hi, int64_t key0, const Block& blk,
                      bool shared_mask, int64_t v_begin, int64_t v_end, T* scores, T* alpha, Workspace& ws) const {
        bool live[R];
        for (int r = 0; r < R; ++r) {
            T* s = scores + r * kKeyBlock;
            live[r] = lo[r] < hi[r];
            if (!live[r]) {
                std::fill(s + v_begin * W, s + v_end * W, T(0));
                continue;
            }
            shape_scores(r0 + r, lo[r], hi[r], key0, blk, shared_mask, v_begin, v_end, s, ws);
            // Invisible keys are overwritten, not added to, so a NaN in a key
            // that this row cannot see never reaches it.
            std::fill(s + v_begin * W, s + lo[r], neg_inf_);
            std::fill(s + hi[r], s + v_end * W, neg_inf_);
        }

        reg block_max[R];
        for (int r = 0; r < R; ++r) block_max[r] = V::set1(neg_inf_);
        for (int64_t u = v_begin; u < v_end; ++u)
            for (int r = 0; r < R; ++r) block_max[r] = V::max(block_max[r], V::load(scores + r * kKeyBlock + u * W));

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
            if (block != block || (new_max == neg_inf_ && has_nan(s + lo[r], hi[r] - lo[r]))) {
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
        const reg log2e = V::set1(static_cast<T>(kLog2e));
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

    // acc_r = acc_r·alpha_r + Σ_{lo <= j < hi} p_rj·v_j for R rows, a tile of
    // value columns at a time; with kSkipZero (R = 1), keys of weight exactly
    // 0 are skipped.
    template <int R, bool kSkipZero>
    void pv_tile(const T* p, int64_t lo, int64_t hi, const T* alpha, const T* v_pack, T* acc) const {
        for (int64_t c = 0; c < dv_pad_; c += panel_width(c)) {
            if (panel_width(c) == kTileKeys)
                pv_cols<R, kTileVecs, kSkipZero>(p, lo, hi, alpha, v_pack + c * kKeyBlock, acc + c);
            else
                pv_cols<R, 1, kSkipZero>(p, lo, hi, alpha, v_pack + c * kKeyBlock, acc + c);
        }
    }

    template <int R, int N, bool kSkipZero>
    void pv_cols(const T* p, int64_t lo, int64_t hi, const T* alpha, const T* v_pack, T* acc) const {
        static_assert(!kSkipZero || R == 1, "zero skipping is per row");
        reg out[R][N];
        for (int r = 0; r < R; ++r) {
            const reg scale = V::set1(alpha[r]);
            for (int n = 0; n < N; ++n) out[r][n] = V::mul(V::load(acc + r * dv_pad_ + n * W), scale);
        }
        for (int64_t j = lo; j < hi; ++j) {
            if (kSkipZero && p[j] == T(0)) continue;
            reg vals[N];
            for (int n = 0; n < N; ++n) vals[n] = V::load(v_pack + j * N * W + n * W);  // panel rows are N vectors
            for (int r = 0; r < R; ++r) {
                const reg pj = V::set1(p[r * kKeyBlock + j]);
                for (int n = 0; n < N; ++n) out[r][n] = V::fma(pj, vals[n], out[r][n]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < N; ++n) V::store(acc + r * dv_pad_ + n * W, out[r][n]);
    }

    // Direct mode: decoding, where a task has at most kDirectMaxRows rows and
    // no other task reads its K/V head, so packing would copy each key once to
    // read it once (and K's transposition costs more than the products).
    // Scores are dot products along the features, kJ keys at a time so that
    // R·kJ independent FMA chains hide the FMA latency; each score still
    // sums its features in order, then reduce_add, whatever R and kJ are.
    template <int R>
    void direct_scores(const T* q_rows, const PackedBlock& kv, int64_t first, int64_t last, int64_t v_begin,
                       int64_t v_end, T* scores) const {
        constexpr int kJ = R <= 2 ? 4 : 2;
        for (int r = 0; r < R; ++r) {  // keys of the vector range outside [first, last): masked later
            std::fill(scores + r * kKeyBlock + v_begin * W, scores + r * kKeyBlock + first, T(0));
            std::fill(scores + r * kKeyBlock + last, scores + r * kKeyBlock + v_end * W, T(0));
        }
        int64_t j = first;
        for (; j + kJ <= last; j += kJ) direct_dots<R, kJ>(q_rows, kv.k_src, j, scores);
        for (; j < last; ++j) direct_dots<R, 1>(q_rows, kv.k_src, j, scores);
    }

    template <int R, int J>
    void direct_dots(const T* q_rows, const S* k, int64_t j0, T* scores) const {
        const int64_t d = a_.d, stride = a_.k_strides.row;
        reg dot[R][J];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < J; ++j) dot[r][j] = V::zero();
        int64_t c = 0;
        for (; c + W <= d; c += W) {
            reg keys[J];
            for (int j = 0; j < J; ++j) keys[j] = Storage<S>::load(k + (j0 + j) * stride + c);
            for (int r = 0; r < R; ++r) {
                const reg qc = V::load(q_rows + r * d + c);
                for (int j = 0; j < J; ++j) dot[r][j] = V::fma(qc, keys[j], dot[r][j]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < J; ++j) {
                T sum = V::reduce_add(dot[r][j]);
                for (int64_t t = c; t < d; ++t) sum += q_rows[r * d + t] * Storage<S>::widen(k[(j0 + j) * stride + t]);
                scores[r * kKeyBlock + j0 + j] = sum;
            }
    }

    // acc = acc·alpha + Σ_{lo <= j < hi} p_j·v_j for one row, reading V in
    // place, a few columns at a time; under a mask keys of weight exactly 0
    // are skipped (a NaN value of a masked key must not leak through 0·NaN).
    void pv_direct(const T* p, int64_t lo, int64_t hi, T alpha, const S* v, T* acc) const {
        constexpr int kCols = 4;  // vectors of columns per pass
        const int64_t dv = a_.dv, stride = a_.v_strides.row;
        int64_t c = 0;
        for (; c + kCols * W <= dv; c += kCols * W) pv_direct_cols<kCols>(p, lo, hi, alpha, v + c, stride, acc + c);
        for (; c + W <= dv; c += W) pv_direct_cols<1>(p, lo, hi, alpha, v + c, stride, acc + c);
        for (; c < dv; ++c) {
            T sum = acc[c] * alpha;
            for (int64_t j = lo; j < hi; ++j)
                if (!(has_mask_ && p[j] == T(0))) sum += p[j] * Storage<S>::widen(v[j * stride + c]);
            acc[c] = sum;
        }
    }

    template <int N>
    void pv_direct_cols(const T* p, int64_t lo, int64_t hi, T alpha, const S* v, int64_t stride, T* acc) const {
        reg out[N];
        const reg scale = V::set1(alpha);
        for (int n = 0; n < N; ++n) out[n] = V::mul(V::load(acc + n * W), scale);
        for (int64_t j = lo; j < hi; ++j) {
            if (has_mask_ && p[j] == T(0)) continue;
            const reg pj = V::set1(p[j]);
            for (int n = 0; n < N; ++n) out[n] = V::fma(pj, Storage<S>::load(v + j * stride + n * W), out[n]);
        }
        for (int n = 0; n < N; ++n) V::store(acc + n * W, out[n]);
    }

    // out = acc / l and lse = m + log(l); a row that saw no key gives zeros
    // and lse = -inf (never 0/0 = NaN).
    void finish_row(T m, T l, const T* acc, S* out, T* lse) const {
        if (m == neg_inf_) {
            std::fill(out, out + a_.dv, Storage<S>::narrow(T(0)));
            if (lse) *lse = neg_inf_;
            return;
        }
        const reg denom = V::set1(l);
        int64_t c = 0;
        for (; c + W <= a_.dv; c += W) Storage<S>::store(out + c, V::div(V::load(acc + c), denom));
        for (; c < a_.dv; ++c) out[c] = Storage<S>::narrow(acc[c] / l);
        if (lse) *lse = m + std::log(l);
    }

    const SdpaArgs& a_;
    const int64_t dv_pad_, group_, rows_per_head_, heads_per_task_;
    const int64_t task_rows_;  // the most query rows a task has: rows_per_head_·heads_per_task_
    const int64_t q_blocks_, window_right_;
    const bool has_mask_;
    const T q_scale_;  // q is packed times the scale
    const bool direct_;  // decoding: few rows per task, nothing to share: K/V read in place
    const T neg_inf_;
};

// Flash-decoding: when a call has few tasks (decoding a few sequences,
// Lq = 1), each task's key range is cut into `splits` contiguous shares run
// as separate work items, so that every thread has work, and their partial
// states are merged afterwards. The split count depends on the shape only,
// never on the thread count, so results stay bitwise independent of it:
// enough shares for kSplitItems work items, each of at least kMinSplitBlocks
// key blocks so that the merge stays small next to the streaming.
constexpr int64_t kSplitItems = 32;
constexpr int64_t kMinSplitBlocks = 2;

int64_t kv_splits(int64_t tasks, int64_t lk) {
    if (tasks <= 0 || tasks >= kSplitItems) return 1;
    const int64_t by_items = (kSplitItems + tasks - 1) / tasks;
    const int64_t by_length = (lk + kKeyBlock - 1) / kKeyBlock / kMinSplitBlocks;
    return std::max<int64_t>(1, std::min(by_items, by_length));
}

// Runs each thread's share of a call: with one thread on the calling thread
// (no OpenMP team: a tiny call's fixed cost matters), else in a team, where
// work(ws) may hold `omp for` loops. Each thread gets its own workspace;
// no exception may leave an OpenMP region, so a failed allocation gives a
// null ws (work skips its items but still reaches every barrier) and
// std::bad_alloc afterwards.
template <class Workspace, class Make, class Work>
void run_threads(int64_t threads, const Make& make_workspace, const Work& work) {
    std::atomic<bool> out_of_memory{false};
    auto body = [&] {
        Workspace* ws = nullptr;
        try {
            ws = new Workspace(make_workspace());
        } catch (const std::bad_alloc&) {
            out_of_memory = true;
        }
        work(ws);
        delete ws;
    };
    if (threads == 1) {
        body();
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(threads))
#endif
        body();
    }
    if (out_of_memory) throw std::bad_alloc();
}

template <class S>
void forward_typed(const SdpaArgs& args) {
    using T = typename Storage<S>::T;
    using Workspace = typename ForwardKernel<S>::Workspace;
    const ForwardKernel<S> kernel(args);
    const int64_t tasks = kernel.num_tasks();
    // sdpa_forward has resolved num_threads (>= 1, at most the processors).
    const int64_t splits = kv_splits(tasks, args.lk);
    const int64_t items = tasks * splits;
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(args.num_threads, items));
    std::vector<T> partial(splits > 1 ? items * kernel.partial_size() : 0);
    T* partial_data = partial.data();
    // One thread's share of the work items, then (after the loop's barrier:
    // every split is done) of the merges.
    run_threads<Workspace>(threads, [&] { return kernel.make_workspace(threads); }, [&](Workspace* ws) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t item = 0; item < items; ++item)
            if (ws) kernel.run_task(item / splits, *ws, item % splits, splits,
                                    partial_data + item / splits * splits * kernel.partial_size());
        if (splits > 1) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t task = 0; task < tasks; ++task)
                if (ws) kernel.merge_splits(task, splits, partial_data + task * splits * kernel.partial_size(), *ws);
        }
    });
}

template <class T>
void math_typed(MathFn fn, const T* x, T* y, int64_t n) {
    using V = Vec<T>;
    constexpr int64_t W = V::width;
    auto f = [fn](typename V::reg r) {
        return fn == MathFn::tanh ? vtanh<T>(r) : fn == MathFn::exp2 ? vexp2<T>(r) : vexp<T>(r);
    };
    int64_t i = 0;
    for (; i + W <= n; i += W) V::store(y + i, f(V::load(x + i)));
    if (i < n) {
        T tail[W] = {};
        std::copy(x + i, x + n, tail);
        V::store(tail, f(V::load(tail)));
        std::copy(tail, tail + (n - i), y + i);
    }
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

// Declares this file's entry points with the signatures dispatch.cpp expects.
FASTATTN_DECLARE_ISA_ENTRY(FASTATTN_ISA)

namespace fastattn {
namespace FASTATTN_ISA {

void forward(const SdpaArgs& args) {
    switch (args.dtype) {
        case DType::f64: return forward_typed<double>(args);
        case DType::f16: return forward_typed<f16>(args);
        case DType::bf16: return forward_typed<bf16>(args);
        case DType::f32: break;
    }
    forward_typed<float>(args);
}

void math_array(MathFn fn, DType dtype, const void* x, void* y, int64_t n) {
    if (dtype == DType::f64)
        math_typed(fn, static_cast<const double*>(x), static_cast<double*>(y), n);
    else
        math_typed(fn, static_cast<const float*>(x), static_cast<float*>(y), n);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
