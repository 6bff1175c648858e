// The attention backward kernel (FlashAttention-2), written once against the
// vector API and compiled per ISA like sdpa-inl.hpp, which the including file
// has included first (Storage, clamp, vexp2, vtanh come from there).
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
// split count depends on the shape only, like the forward's kv_splits), each
// chunk leaves a partial dQ that a second pass sums in chunk order. Results
// are therefore bitwise independent of the thread count.
//
// Five products per block, each a register tile of kTileRows rows ×
// kTileVecs vectors:
//     S  = (scale·Q)·Kᵀ,  dP = dO·Vᵀ      dot_tile: K, V packed transposed
//     dV += Pᵀ·dO,  dK += dSᵀ·(scale·Q)   outer_tile over the block's rows
//     dQ += dS·K                           outer_tile over the block's keys
// outer_tile's B operands (dO, Q, K) are packed in column panels one tile
// wide, so each is walked contiguously.
//
// Rows that see no key (lse = -inf) get dQ = 0 and contribute nothing: their
// dO is packed as zeros. A key a row cannot see gets dS = 0 exactly (not
// 0·dP, which is NaN when its value row holds a NaN), and a K block with a
// non-finite value adds to dQ only the terms of nonzero dS.

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

constexpr int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }
// All work items' partial dQ buffers together (see BackwardKernel::chunks).
constexpr int64_t kPartialBudgetBytes = int64_t(64) << 20;

template <class S>
class BackwardKernel {
    using T = typename Storage<S>::T;
    using V = Vec<T>;
    using reg = typename V::reg;
    static constexpr int64_t W = V::width;
    // Register tiles as in the forward (see ForwardKernel): 6 × 2 vectors of
    // 16 registers, 6 × 4 of 32.
    static constexpr int64_t kTileVecs = V::registers >= 32 ? 4 : 2;
    static constexpr int64_t kTileRows = 6;
    static constexpr int64_t kTileKeys = kTileVecs * W;
    // Keys per block: whole transposed panels (kTileKeys) and whole row tiles
    // of dK/dV (kTileRows), at least 96.
    static constexpr int64_t kKeysUnit = kTileRows * kTileKeys / gcd(kTileRows, kTileKeys);
    static constexpr int64_t kKeys = (288 + kKeysUnit - 1) / kKeysUnit * kKeysUnit;
    static constexpr int64_t kRows = 60;  // query rows per block: whole row tiles
    static_assert(kRows % kTileRows == 0, "a query block must be whole tiles");

public:
    BackwardKernel(const SdpaArgs& a, const GradArgs& g)
        : a_(a),
          g_(g),
          d_pad_((a.d + W - 1) / W * W),
          dv_pad_((a.dv + W - 1) / W * W),
          group_(a.hq / a.hkv),
          key_blocks_((a.lk + kKeys - 1) / kKeys),
          window_right_(a.causal != Causal::none ? 0 : a.window_right),
          has_mask_(a.mask.kind != MaskKind::none),
          scale_(static_cast<T>(a.scale)),
          neg_inf_(-std::numeric_limits<T>::infinity()) {}

    int64_t num_tasks() const { return a_.batch * a_.hkv; }

    // Chunks of key blocks per (batch, K/V head): enough work items for
    // kSplitItems when there are few heads, each of at least kMinSplitBlocks
    // blocks, and all partial dQ buffers within kPartialBudgetBytes. Shape
    // only, never the thread count.
    int64_t chunks() const {
        const int64_t tasks = num_tasks();
        if (tasks >= kSplitItems) return 1;
        const int64_t by_items = (kSplitItems + tasks - 1) / tasks;
        const int64_t by_length = key_blocks_ / kMinSplitBlocks;
        const int64_t by_memory = kPartialBudgetBytes / (tasks * dq_size() * static_cast<int64_t>(sizeof(T)));
        return std::max<int64_t>(1, std::min({by_items, by_length, by_memory}));
    }

    // dQ of one (batch, K/V head): every row of its query heads, padded.
    int64_t dq_size() const { return group_ * a_.lq * d_pad_; }

    struct Workspace {
        std::vector<T> k_t, k_pan, v_t;      // the key block: K, V transposed; K in column panels
        std::vector<T> dk_acc, dv_acc;       // (kKeys, d_pad), (kKeys, dv_pad)
        std::vector<T> q_rows, q_pan;        // scale·Q of a query block: rows (stride d); panels
        std::vector<T> do_rows, do_pan;      // dO of a query block: rows (stride dv); panels
        std::vector<T> lse, delta;           // per row of the query block
        std::vector<T> p, ds, cap_grad;      // (kRows, kKeys): P and dP, then dS
        std::vector<T> bias, key_index, row; // scratch
        std::vector<T> dq_acc;               // one head group's dQ when the item owns it
        Workspace(int64_t d_pad, int64_t dv_pad, int64_t d, int64_t dv, int64_t dq_size, bool softcap)
            : k_t(d * kKeys), k_pan(kKeys * d_pad), v_t(dv * kKeys),
              dk_acc(kKeys * d_pad), dv_acc(kKeys * dv_pad),
              q_rows(kRows * d), q_pan(kRows * d_pad), do_rows(kRows * dv), do_pan(kRows * dv_pad),
              lse(kRows), delta(kRows),
              p(kRows * kKeys), ds(kRows * kKeys), cap_grad(softcap ? kRows * kKeys : 0),
              bias(kKeys), key_index(kKeys), row(std::max(d_pad, dv_pad)),
              dq_acc(dq_size) {}
    };

    Workspace make_workspace(int64_t chunks) const {
        return Workspace(d_pad_, dv_pad_, a_.d, a_.dv, chunks == 1 ? dq_size() : 0, a_.softcap > 0);
    }

    // Work item (task, chunk): the gradients of its keys, and its dQ (into
    // `partial` when chunks > 1, else written out).
    void run_item(int64_t task, int64_t chunk, int64_t chunks, Workspace& ws, T* partial) const {
        Block blk;
        blk.b = task / a_.hkv;
        blk.h_kv = task % a_.hkv;
        blk.q_len = a_.q_lengths ? a_.q_lengths[blk.b] : a_.lq;
        blk.kv_len = a_.kv_lengths ? a_.kv_lengths[blk.b] : a_.lk;
        blk.diag_off = a_.causal == Causal::lower_right ? blk.kv_len - blk.q_len : 0;
        T* dq_acc = chunks == 1 ? ws.dq_acc.data() : partial;
        std::fill(dq_acc, dq_acc + dq_size(), T(0));
        const int64_t kb_begin = key_blocks_ * chunk / chunks, kb_end = key_blocks_ * (chunk + 1) / chunks;
        for (int64_t kb = kb_begin; kb < kb_end; ++kb) key_block(kb * kKeys, blk, ws, dq_acc);
        if (chunks == 1) write_dq(blk.b, blk.h_kv, dq_acc);
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
    struct Block {
        int64_t b = 0, h_kv = 0;
        int64_t q_len = 0, kv_len = 0, diag_off = 0;
    };

    // Query row i sees keys [key_begin(i), key_end(i)), as in the forward.
    int64_t key_begin(int64_t i, const Block& blk) const {
        return a_.window_left < 0 ? 0 : clamp(i + blk.diag_off - a_.window_left, 0, blk.kv_len);
    }
    int64_t key_end(int64_t i, const Block& blk) const {
        return window_right_ < 0 ? blk.kv_len : clamp(i + blk.diag_off + window_right_ + 1, 0, blk.kv_len);
    }

    // One key block: its dK and dV rows from every query block that sees it,
    // and those blocks' dQ contributions.
    void key_block(int64_t key0, const Block& blk, Workspace& ws, T* dq_acc) const {
        const int64_t keys = std::min(kKeys, a_.lk - key0);
        const int64_t seen_end = std::min(keys, blk.kv_len - key0);  // keys past kv_len: invisible
        std::fill(ws.dk_acc.begin(), ws.dk_acc.end(), T(0));
        std::fill(ws.dv_acc.begin(), ws.dv_acc.end(), T(0));
        bool packed = false, k_finite = true;
        for (int64_t r0 = 0; r0 < blk.q_len && seen_end > 0; r0 += kRows) {
            const int64_t r1 = std::min(r0 + kRows, blk.q_len);
            // Both ends of a row's key interval grow with the row.
            if (key_begin(r0, blk) >= key0 + seen_end || key_end(r1 - 1, blk) <= key0) continue;
            if (!packed) {
                k_finite = pack_key_block(key0, keys, blk, ws);
                packed = true;
            }
            for (int64_t g = 0; g < group_; ++g)
                query_block(blk.h_kv * group_ + g, g, r0, r1, key0, seen_end, blk, k_finite, ws, dq_acc);
        }
        write_key_rows(blk, key0, keys, ws);
    }

    // Packs K and V of keys [key0, key0 + keys); returns whether K is finite.
    bool pack_key_block(int64_t key0, int64_t keys, const Block& blk, Workspace& ws) const {
        const S* k = static_cast<const S*>(a_.k) + blk.b * a_.k_strides.batch + blk.h_kv * a_.k_strides.head +
                     key0 * a_.k_strides.row;
        const S* v = static_cast<const S*>(a_.v) + blk.b * a_.v_strides.batch + blk.h_kv * a_.v_strides.head +
                     key0 * a_.v_strides.row;
        pack_transposed(k, a_.k_strides.row, keys, a_.d, ws.k_t.data(), ws.row.data());
        pack_transposed(v, a_.v_strides.row, keys, a_.dv, ws.v_t.data(), ws.row.data());
        pack_panels(k, a_.k_strides.row, keys, a_.d, d_pad_, kKeys, T(1), ws.k_pan.data(), nullptr, ws.row.data());
        return all_finite(ws.k_pan.data(), keys, kKeys, d_pad_);
    }

    // One query block [r0, r1) of query head h (group member g) against the
    // key block at key0, whose keys [0, seen_end) may be visible.
    void query_block(int64_t h, int64_t g, int64_t r0, int64_t r1, int64_t key0, int64_t seen_end, const Block& blk,
                     bool k_finite, Workspace& ws, T* dq_acc) const {
        const int64_t rows = r1 - r0;
        const int64_t row_first = (blk.b * a_.hq + h) * a_.lq + r0;  // in out, dO, lse
        const T* lse = static_cast<const T*>(g_.lse) + row_first;
        const S* dout = static_cast<const S*>(g_.dout) + row_first * a_.dv;
        const S* out = static_cast<const S*>(a_.out) + row_first * a_.dv;
        const S* q = static_cast<const S*>(a_.q) + blk.b * a_.q_strides.batch + h * a_.q_strides.head +
                     r0 * a_.q_strides.row;
        int64_t lo[kRows], hi[kRows];  // row r sees keys [lo[r], hi[r]) of the block
        for (int64_t r = 0; r < rows; ++r) {
            ws.lse[r] = lse[r];
            lo[r] = std::max<int64_t>(key_begin(r0 + r, blk) - key0, 0);
            hi[r] = std::min(key_end(r0 + r, blk) - key0, seen_end);
            if (lse[r] == neg_inf_) lo[r] = hi[r] = 0;  // sees no key at all: no gradient
        }
        pack_panels(q, a_.q_strides.row, rows, a_.d, d_pad_, kRows, scale_, ws.q_pan.data(), ws.q_rows.data(),
                    ws.row.data());
        pack_panels(dout, a_.dv, rows, a_.dv, dv_pad_, kRows, T(1), ws.do_pan.data(), ws.do_rows.data(),
                    ws.row.data());
        for (int64_t r = 0; r < rows; ++r) {
            T* do_row = ws.do_rows.data() + r * a_.dv;
            if (lo[r] >= hi[r]) {  // contributes nothing, even if its dO holds a NaN
                std::fill(do_row, do_row + a_.dv, T(0));
                for (int64_t c0 = 0; c0 < dv_pad_; c0 += panel_width(c0, dv_pad_)) {
                    const int64_t w = panel_width(c0, dv_pad_);
                    std::fill_n(ws.do_pan.data() + c0 * kRows + r * w, w, T(0));
                }
                ws.delta[r] = 0;
                continue;
            }
            ws.delta[r] = dot_widened(do_row, out + r * a_.dv);
        }

        int64_t key_hi = 0;
        for (int64_t r = 0; r < rows; ++r) key_hi = std::max(key_hi, hi[r]);
        if (key_hi == 0) return;
        const int64_t v_end = (key_hi + kTileKeys - 1) / kTileKeys * kTileVecs;  // key vectors computed
        dot_block(ws.q_rows.data(), rows, a_.d, ws.k_t.data(), v_end, ws.p.data());     // S, in p
        dot_block(ws.do_rows.data(), rows, a_.dv, ws.v_t.data(), v_end, ws.ds.data());  // dP, in ds
        for (int64_t r = 0; r < rows; ++r) softmax_grad_row(h, r0 + r, r, lo[r], hi[r], v_end * W, key0, blk, ws);

        // dV += Pᵀ·dO and dK += dSᵀ·(scale·Q): tiles of keys, summed over the block's rows.
        // A NaN or inf in a row of dO or Q must not reach the keys that row cannot see
        // via 0·x: such a block takes one key at a time, skipping zero weights.
        const bool do_finite = all_finite(ws.do_pan.data(), rows, kRows, dv_pad_);
        const bool q_finite = all_finite(ws.q_pan.data(), rows, kRows, d_pad_);
        for (int64_t j0 = 0; j0 < key_hi; j0 += kTileRows)
            with_rows(std::min(kTileRows, key_hi - j0), [&](auto n) {
                constexpr int R = decltype(n)::value;
                if (do_finite)
                    outer_rows<R, true>(ws.p.data() + j0, 0, rows, ws.do_pan.data(), kRows, dv_pad_,
                                        ws.dv_acc.data() + j0 * dv_pad_, dv_pad_);
                if (q_finite)
                    outer_rows<R, true>(ws.ds.data() + j0, 0, rows, ws.q_pan.data(), kRows, d_pad_,
                                        ws.dk_acc.data() + j0 * d_pad_, d_pad_);
            });
        for (int64_t j = 0; j < key_hi && !(do_finite && q_finite); ++j) {
            if (!do_finite)
                outer_rows<1, true, true>(ws.p.data() + j, 0, rows, ws.do_pan.data(), kRows, dv_pad_,
                                          ws.dv_acc.data() + j * dv_pad_, dv_pad_);
            if (!q_finite)
                outer_rows<1, true, true>(ws.ds.data() + j, 0, rows, ws.q_pan.data(), kRows, d_pad_,
                                          ws.dk_acc.data() + j * d_pad_, d_pad_);
        }
        // dQ += dS·K: tiles of rows, summed over the keys they see.
        T* dq = dq_acc + (g * a_.lq + r0) * d_pad_;
        for (int64_t t0 = 0; t0 < rows; t0 += kTileRows) {
            const int64_t n = std::min(kTileRows, rows - t0);
            int64_t first = kKeys, last = 0;
            for (int64_t r = t0; r < t0 + n; ++r)
                if (lo[r] < hi[r]) first = std::min(first, lo[r]), last = std::max(last, hi[r]);
            if (first >= last) continue;
            if (!k_finite) {  // a NaN or inf key that a row cannot see must not reach it via 0·K
                for (int64_t r = t0; r < t0 + n; ++r)
                    outer_rows<1, false, true>(ws.ds.data() + r * kKeys, lo[r], hi[r], ws.k_pan.data(), kKeys,
                                               d_pad_, dq + r * d_pad_, d_pad_);
                continue;
            }
            with_rows(n, [&](auto m) {
                constexpr int R = decltype(m)::value;
                outer_rows<R, false>(ws.ds.data() + t0 * kKeys, first, last, ws.k_pan.data(), kKeys, d_pad_,
                                     dq + t0 * d_pad_, d_pad_);
            });
        }
    }

    // Row r of the block (query position i of head h): turns its scores into
    // P = exp(s − lse) and its dP into dS = P ∘ (dP − D) (∘ the softcap's
    // derivative), over key vectors [0, n); zero outside [lo, hi).
    void softmax_grad_row(int64_t h, int64_t i, int64_t r, int64_t lo, int64_t hi, int64_t n, int64_t key0,
                          const Block& blk, Workspace& ws) const {
        T* p = ws.p.data() + r * kKeys;
        T* ds = ws.ds.data() + r * kKeys;
        if (lo >= hi) {
            std::fill(p, p + n, T(0));
            std::fill(ds, ds + n, T(0));
            return;
        }
        T* cap_grad = a_.softcap > 0 ? ws.cap_grad.data() + r * kKeys : nullptr;
        if (cap_grad) {  // s = c·tanh(s₀/c); ds/ds₀ = 1 − tanh²
            const reg cap = V::set1(static_cast<T>(a_.softcap)), inv_cap = V::set1(static_cast<T>(1 / a_.softcap));
            const reg one = V::set1(T(1));
            for (int64_t j = 0; j < n; j += W) {
                const reg t = vtanh<T>(V::mul(V::load(p + j), inv_cap));
                V::store(p + j, V::mul(cap, t));
                V::store(cap_grad + j, V::sub(one, V::mul(t, t)));
            }
        }
        if (a_.alibi_slopes) {  // s -= slope·|i + off − j|
            const reg pos = V::set1(static_cast<T>(i + blk.diag_off));
            const reg neg_slope = V::set1(-static_cast<T>(a_.alibi_slopes[blk.b * a_.hq + h]));
            for (int64_t j = 0; j < n; ++j) ws.key_index[j] = static_cast<T>(key0 + j);
            for (int64_t j = 0; j < n; j += W) {
                const reg dist = V::abs(V::sub(pos, V::load(ws.key_index.data() + j)));
                V::store(p + j, V::fma(neg_slope, dist, V::load(p + j)));
            }
        }
        if (has_mask_) {
            mask_bias(blk.b, h, i, key0, lo, hi, ws.bias.data());
            for (int64_t j = lo / W * W; j < n && j < hi; j += W)
                V::store(p + j, V::add_bias(V::load(p + j), V::load(ws.bias.data() + j)));
        }
        // Invisible keys are overwritten (not added to): P = 0 there whatever the score.
        std::fill(p, p + lo, neg_inf_);
        std::fill(p + hi, p + n, neg_inf_);
        if (ws.lse[r] != ws.lse[r]) {  // a NaN row (from its q or out): P, dS NaN only where it sees
            for (int64_t j = 0; j < n; ++j)
                p[j] = ds[j] = p[j] == neg_inf_ ? T(0) : std::numeric_limits<T>::quiet_NaN();
            return;
        }
        const reg shift = V::set1(ws.lse[r]), log2e = V::set1(static_cast<T>(kLog2e));
        const reg delta = V::set1(ws.delta[r]), tiny = V::set1(std::numeric_limits<T>::denorm_min());
        for (int64_t j = 0; j < n; j += W) {
            const reg pj = vexp2<T>(V::mul(V::sub(V::load(p + j), shift), log2e));
            reg dsj = V::mul(pj, V::sub(V::load(ds + j), delta));
            if (cap_grad) dsj = V::mul(dsj, V::load(cap_grad + j));
            V::store(p + j, pj);
            V::store(ds + j, V::zero_if_less(pj, tiny, dsj));  // exactly 0 where P is 0 (NaN P stays NaN)
        }
    }

    // The mask of row i of head h on keys [lo, hi) of the block: 0 or -inf
    // (boolean) or the value (additive); bias[j] for key key0 + j.
    void mask_bias(int64_t b, int64_t h, int64_t i, int64_t key0, int64_t lo, int64_t hi, T* bias) const {
        const MaskView& m = a_.mask;
        const int64_t at = m.batch_offsets[b] + h * m.head + i * m.row + key0 * m.col;
        std::fill(bias + lo / W * W, bias + lo, T(0));
        std::fill(bias + hi, bias + std::min(kKeys, (hi + W - 1) / W * W), T(0));
        if (m.kind == MaskKind::boolean) {
            const unsigned char* row = static_cast<const unsigned char*>(m.data) + at;
            for (int64_t j = lo; j < hi; ++j) bias[j] = row[j * m.col] ? T(0) : neg_inf_;
        } else {
            const T* row = static_cast<const T*>(m.data) + at;
            for (int64_t j = lo; j < hi; ++j) bias[j] = row[j * m.col];
        }
    }

    // Writes the key block's dK and dV rows (keys past kv_len get zeros).
    void write_key_rows(const Block& blk, int64_t key0, int64_t keys, Workspace& ws) const {
        const int64_t first = (blk.b * a_.hkv + blk.h_kv) * a_.lk + key0;
        S* dk = static_cast<S*>(g_.dk) + first * a_.d;
        S* dv = static_cast<S*>(g_.dv) + first * a_.dv;
        for (int64_t j = 0; j < keys; ++j) {
            narrow_row(ws.dk_acc.data() + j * d_pad_, a_.d, T(1), dk + j * a_.d);
            narrow_row(ws.dv_acc.data() + j * dv_pad_, a_.dv, T(1), dv + j * a_.dv);
        }
    }

    // dq = scale·acc for the rows of one (batch, K/V head).
    void write_dq(int64_t b, int64_t h_kv, const T* acc) const {
        S* dq = static_cast<S*>(g_.dq) + (b * a_.hq + h_kv * group_) * a_.lq * a_.d;
        for (int64_t row = 0; row < group_ * a_.lq; ++row)
            narrow_row(acc + row * d_pad_, a_.d, scale_, dq + row * a_.d);
    }

    static void narrow_row(const T* src, int64_t n, T factor, S* dst) {
        const reg f = V::set1(factor);
        int64_t c = 0;
        for (; c + W <= n; c += W) Storage<S>::store(dst + c, V::mul(V::load(src + c), f));
        for (; c < n; ++c) dst[c] = Storage<S>::narrow(src[c] * factor);
    }

    // Σ_c a[c]·b[c] over a row of Dv, b widened from storage.
    T dot_widened(const T* a, const S* b) const {
        reg acc = V::zero();
        int64_t c = 0;
        for (; c + W <= a_.dv; c += W) acc = V::fma(V::load(a + c), Storage<S>::load(b + c), acc);
        T sum = V::reduce_add(acc);
        for (; c < a_.dv; ++c) sum += a[c] * Storage<S>::widen(b[c]);
        return sum;
    }

    // False if a NaN or inf is among rows [0, rows) of panels of rows_cap rows
    // (x·0 is 0 only for finite x).
    bool all_finite(const T* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) const {
        reg acc = V::zero();
        const reg zero = V::zero();
        for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
            const T* p = panels + c0 * rows_cap;
            for (int64_t i = 0; i < rows * panel_width(c0, cols_pad); i += W) acc = V::add(acc, V::mul(V::load(p + i), zero));
        }
        return V::reduce_add(acc) == T(0);
    }

    // Calls f(std::integral_constant<int, n>) for a tile of 1 <= n <= kTileRows rows.
    template <class F>
    static void with_rows(int64_t n, F&& f) {
        static_assert(kTileRows == 6, "one case per tile height");
        switch (n) {
            case 6: return f(std::integral_constant<int, 6>{});
            case 5: return f(std::integral_constant<int, 5>{});
            case 4: return f(std::integral_constant<int, 4>{});
            case 3: return f(std::integral_constant<int, 3>{});
            case 2: return f(std::integral_constant<int, 2>{});
            default: return f(std::integral_constant<int, 1>{});
        }
    }

    // The width of the column panel that starts at c0 (of cols_pad columns).
    static int64_t panel_width(int64_t c0, int64_t cols_pad) { return c0 + kTileKeys <= cols_pad ? kTileKeys : W; }

    // rows × cols of src (row stride `stride`), widened and times `factor`,
    // into column panels of rows_cap rows (panel c0 at dst + c0·rows_cap, row r
    // at + r·width; columns past cols zero), and, when rows_out is given, also
    // row by row at stride cols.
    static void pack_panels(const S* src, int64_t stride, int64_t rows, int64_t cols, int64_t cols_pad,
                            int64_t rows_cap, T factor, T* dst, T* rows_out, T* scratch) {
        std::fill(scratch + cols, scratch + cols_pad, T(0));
        for (int64_t r = 0; r < rows; ++r) {
            const S* s = src + r * stride;
            int64_t c = 0;
            const reg f = V::set1(factor);
            for (; c + W <= cols; c += W) V::store(scratch + c, V::mul(Storage<S>::load(s + c), f));
            for (; c < cols; ++c) scratch[c] = Storage<S>::widen(s[c]) * factor;
            if (rows_out) std::copy(scratch, scratch + cols, rows_out + r * cols);
            for (int64_t c0 = 0; c0 < cols_pad;) {
                const int64_t w = panel_width(c0, cols_pad);
                std::copy(scratch + c0, scratch + c0 + w, dst + c0 * rows_cap + r * w);
                c0 += w;
            }
        }
    }

    // keys × depth of src, transposed into panels of kTileKeys keys:
    // dst[g][c][w] = src[g·kTileKeys + w][c]; keys past `keys` up to kKeys are 0.
    static void pack_transposed(const S* src, int64_t stride, int64_t keys, int64_t depth, T* dst, T* scratch) {
        for (int64_t j = 0; j < kKeys; ++j) {
            T* d = dst + j / kTileKeys * depth * kTileKeys + j % kTileKeys;
            if (j >= keys) {
                for (int64_t c = 0; c < depth; ++c) d[c * kTileKeys] = T(0);
                continue;
            }
            const S* s = src + j * stride;
            for (int64_t c = 0; c < depth; ++c) scratch[c] = Storage<S>::widen(s[c]);
            for (int64_t c = 0; c < depth; ++c) d[c * kTileKeys] = scratch[c];
        }
    }

    // out[r][j] = Σ_c a[r][c]·bt[c][j] for rows [0, rows) of a (stride depth)
    // and key vectors [0, v_end), bt in transposed panels; out has stride
    // kKeys. A panel at a time against every row tile, so that the panel
    // stays in L1 (row tiles outside would walk the whole block per tile).
    static void dot_block(const T* a, int64_t rows, int64_t depth, const T* bt, int64_t v_end, T* out) {
        for (int64_t v0 = 0; v0 < v_end; v0 += kTileVecs)
            for (int64_t t0 = 0; t0 < rows; t0 += kTileRows)
                with_rows(std::min(kTileRows, rows - t0), [&](auto n) {
                    dot_tile<decltype(n)::value>(a + t0 * depth, depth, bt, v0, out + t0 * kKeys);
                });
    }

    // One register tile of dot_block: R rows × the panel of key vectors
    // [v0, v0 + kTileVecs). Each sum runs over c in order, whatever R is.
    template <int R>
    static void dot_tile(const T* a, int64_t depth, const T* bt, int64_t v0, T* out) {
        {
            reg dot[R][kTileVecs];
            for (int r = 0; r < R; ++r)
                for (int64_t n = 0; n < kTileVecs; ++n) dot[r][n] = V::zero();
            const T* bp = bt + v0 / kTileVecs * depth * kTileKeys;
            for (int64_t c = 0; c < depth; ++c, bp += kTileKeys) {
                reg b[kTileVecs];
                for (int64_t n = 0; n < kTileVecs; ++n) b[n] = V::load(bp + n * W);
                for (int r = 0; r < R; ++r) {
                    const reg ac = V::set1(a[r * depth + c]);
                    for (int64_t n = 0; n < kTileVecs; ++n) dot[r][n] = V::fma(ac, b[n], dot[r][n]);
                }
            }
            for (int r = 0; r < R; ++r)
                for (int64_t n = 0; n < kTileVecs; ++n) V::store(out + r * kKeys + (v0 + n) * W, dot[r][n]);
        }
    }

    // c[r][:] += Σ_{lo <= i < hi} a[r·kAr + i·kAi]·b[i][:] for R rows of c
    // (stride c_stride), b in column panels of rows_cap rows; with kSkipZero
    // (R = 1) terms whose a is exactly 0 are skipped. a is a (kRows, kKeys)
    // block: kTransposed reads it as aᵀ (c's rows are its columns, keys).
    template <int R, bool kTransposed, bool kSkipZero = false>
    void outer_rows(const T* a, int64_t lo, int64_t hi, const T* panels, int64_t rows_cap, int64_t cols_pad, T* c,
                    int64_t c_stride) const {
        constexpr int64_t kAr = kTransposed ? 1 : kKeys, kAi = kTransposed ? kKeys : 1;
        for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
            const T* b = panels + c0 * rows_cap;
            if (panel_width(c0, cols_pad) == kTileKeys)
                outer_tile<R, kTileVecs, kAr, kAi, kSkipZero>(a, lo, hi, b, c + c0, c_stride);
            else
                outer_tile<R, 1, kAr, kAi, kSkipZero>(a, lo, hi, b, c + c0, c_stride);
        }
    }

    template <int R, int N, int64_t kAr, int64_t kAi, bool kSkipZero>
    static void outer_tile(const T* a, int64_t lo, int64_t hi, const T* b, T* c, int64_t c_stride) {
        static_assert(!kSkipZero || R == 1, "zero skipping is per row");
        reg acc[R][N];
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < N; ++n) acc[r][n] = V::load(c + r * c_stride + n * W);
        for (int64_t i = lo; i < hi; ++i) {
            if (kSkipZero && a[i * kAi] == T(0)) continue;
            reg vals[N];
            for (int n = 0; n < N; ++n) vals[n] = V::load(b + i * N * W + n * W);
            for (int r = 0; r < R; ++r) {
                const reg ar = V::set1(a[r * kAr + i * kAi]);
                for (int n = 0; n < N; ++n) acc[r][n] = V::fma(ar, vals[n], acc[r][n]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < N; ++n) V::store(c + r * c_stride + n * W, acc[r][n]);
    }

    const SdpaArgs& a_;
    const GradArgs& g_;
    const int64_t d_pad_, dv_pad_, group_, key_blocks_, window_right_;
    const bool has_mask_;
    const T scale_;
    const T neg_inf_;
};

template <class S>
void backward_typed(const SdpaArgs& args, const GradArgs& grad) {
    using T = typename Storage<S>::T;
    using Workspace = typename BackwardKernel<S>::Workspace;
    const BackwardKernel<S> kernel(args, grad);
    const int64_t tasks = kernel.num_tasks(), chunks = kernel.chunks(), items = tasks * chunks;
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(args.num_threads, items));
    std::vector<T> partial(chunks > 1 ? items * kernel.dq_size() : 0);
    T* partial_data = partial.data();
    // As forward_typed: the work items, then (after the barrier) the merges.
    run_threads<Workspace>(threads, [&] { return kernel.make_workspace(chunks); }, [&](Workspace* ws) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t item = 0; item < items; ++item)
            if (ws) kernel.run_item(item / chunks, item % chunks, chunks, *ws, partial_data + item * kernel.dq_size());
        if (chunks > 1) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t task = 0; task < tasks; ++task)
                if (ws) kernel.merge_chunks(task, chunks, partial_data + task * chunks * kernel.dq_size());
        }
    });
}

}  // namespace

void backward(const SdpaArgs& args, const GradArgs& grad) {
    switch (args.dtype) {
        case DType::f64: return backward_typed<double>(args, grad);
        case DType::f16: return backward_typed<f16>(args, grad);
        case DType::bf16: return backward_typed<bf16>(args, grad);
        case DType::f32: break;
    }
    backward_typed<float>(args, grad);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
