// The positional rules of a call and the shaping of scores, used by both
// passes (api.hpp states them; this is their one implementation):
//   - a Sequence: one batch entry's query and key lengths and its diagonal
//     offset (0 aligned upper-left, kv_len − q_len lower-right: Align);
//   - the interval of keys query row i may see, [key_begin(i), key_end(i)),
//     from causal, window and lengths; both ends grow with i, so a block of
//     rows sees a contiguous range and whole key blocks can be skipped;
//   - mask rows and their bias (0 or -inf for a boolean mask, the value for an
//     additive one), read in place through the broadcast view;
//   - shape_row: a row of raw scores s = scale·q·k becomes softcap(s) − ALiBi
//     + mask bias on its visible keys and -inf on every other key.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "storage-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

inline int64_t clamp(int64_t x, int64_t lo, int64_t hi) { return std::max(lo, std::min(x, hi)); }

// What the rules need to know about one batch entry.
struct Sequence {
    int64_t b = 0;
    int64_t q_len = 0, kv_len = 0, diag_off = 0;  // its lengths and diagonal offset
};

template <class T>
class Rules {
    using V = Vec<T>;
    using reg = typename V::reg;
    static constexpr int64_t W = V::width;

public:
    explicit Rules(const AttentionArgs& a)
        : a_(a),
          window_right_(a.causal != Causal::none ? 0 : a.window_right),  // causal: the right edge at the diagonal
          has_mask_(a.mask.kind != MaskKind::none),
          neg_inf_(-std::numeric_limits<T>::infinity()) {}

    Sequence sequence(int64_t b) const {
        Sequence seq;
        seq.b = b;
        seq.q_len = a_.q_lengths ? a_.q_lengths[b] : a_.lq;
        seq.kv_len = a_.kv_lengths ? a_.kv_lengths[b] : a_.lk;
        seq.diag_off = a_.align == Align::lower_right ? seq.kv_len - seq.q_len : 0;
        return seq;
    }

    // Query row i sees keys [key_begin(i), key_end(i)), clamped to [0, kv_len].
    int64_t key_begin(int64_t i, const Sequence& seq) const {
        return a_.window_left < 0 ? 0 : clamp(i + seq.diag_off - a_.window_left, 0, seq.kv_len);
    }
    int64_t key_end(int64_t i, const Sequence& seq) const {
        return window_right_ < 0 ? seq.kv_len : clamp(i + seq.diag_off + window_right_ + 1, 0, seq.kv_len);
    }

    bool has_mask() const { return has_mask_; }
    // The mask varies neither along the query axis nor, when `heads` > 1 rows
    // of different heads share a tile, across heads: key padding.
    bool mask_shared_by_rows(int64_t heads) const {
        return has_mask_ && a_.mask.row == 0 && (a_.mask.head == 0 || heads == 1);
    }

    // The start of the mask row of query i of head h in batch entry b.
    const char* mask_row(int64_t b, int64_t h, int64_t i) const {
        const MaskView& m = a_.mask;
        return static_cast<const char*>(m.data) + (m.batch_offsets[b] + h * m.head + i * m.row) * mask_item_size();
    }

    // bias[j] for keys key0 + j, j in [lo, hi), of a mask row: 0 or -inf
    // (boolean), or the value (additive).
    void mask_bias(const char* row, int64_t key0, int64_t lo, int64_t hi, T* bias) const {
        const int64_t col = a_.mask.col;
        if (a_.mask.kind == MaskKind::boolean) {
            const unsigned char* m = reinterpret_cast<const unsigned char*>(row) + key0 * col;
            for (int64_t j = lo; j < hi; ++j) bias[j] = m[j * col] ? T(0) : neg_inf_;
        } else {
            const T* m = reinterpret_cast<const T*>(row) + key0 * col;
            for (int64_t j = lo; j < hi; ++j) bias[j] = m[j * col];
        }
    }

    bool has_alibi() const { return a_.alibi_slopes != nullptr; }
    T alibi_slope(int64_t b, int64_t h) const {
        return a_.alibi_slopes ? static_cast<T>(a_.alibi_slopes[b * a_.hq + h]) : T(0);
    }
    // key_index[j] = key0 + j, the key positions ALiBi measures against.
    static void fill_key_index(int64_t key0, int64_t n, T* key_index) {
        for (int64_t j = 0; j < n; ++j) key_index[j] = static_cast<T>(key0 + j);
    }

    // One row's scores s[j], j in [j_begin, j_end) (whole vectors), in the
    // order of api.hpp: softcap (and, when cap_grad is given, its derivative
    // 1 − tanh² there, for the backward), − slope·|pos − key_index[j]| with
    // pos = i + diag_off, + bias[j] (when a mask is given). Then every key
    // outside the row's visible [lo, hi) is overwritten with -inf, never added
    // to, so that a NaN in a key the row cannot see never reaches it.
    void shape_row(T* s, int64_t j_begin, int64_t j_end, int64_t lo, int64_t hi, T pos, T slope,
                   const T* key_index, const T* bias, T* cap_grad) const {
        if (a_.softcap > 0) {  // s = c·tanh(s₀/c)
            const reg cap = V::set1(static_cast<T>(a_.softcap)), inv_cap = V::set1(static_cast<T>(1 / a_.softcap));
            const reg one = V::set1(T(1));
            for (int64_t j = j_begin; j < j_end; j += W) {
                const reg t = vtanh<T>(V::mul(V::load(s + j), inv_cap));
                V::store(s + j, V::mul(cap, t));
                if (cap_grad) V::store(cap_grad + j, V::sub(one, V::mul(t, t)));
            }
        }
        if (a_.alibi_slopes) {
            const reg at = V::set1(pos), neg_slope = V::set1(-slope);
            for (int64_t j = j_begin; j < j_end; j += W) {
                const reg dist = V::abs(V::sub(at, V::load(key_index + j)));
                V::store(s + j, V::fma(neg_slope, dist, V::load(s + j)));
            }
        }
        if (bias)
            for (int64_t j = j_begin; j < j_end; j += W)
                V::store(s + j, V::add_bias(V::load(s + j), V::load(bias + j)));
        std::fill(s + j_begin, s + clamp(lo, j_begin, j_end), neg_inf_);
        std::fill(s + clamp(hi, j_begin, j_end), s + j_end, neg_inf_);
    }

private:
    // Signed, like the strides: a reversed mask view has negative offsets.
    int64_t mask_item_size() const {
        return a_.mask.kind == MaskKind::boolean ? 1 : static_cast<int64_t>(sizeof(T));
    }

    const AttentionArgs& a_;
    const int64_t window_right_;
    const bool has_mask_;
    const T neg_inf_;
};

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
