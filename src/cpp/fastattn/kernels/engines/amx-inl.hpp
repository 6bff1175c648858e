// The AMX engine: bfloat16 products on tile units (TDPBF16PS: C(16 × 16
// float32) += A(16 × 32 bf16) · B(32 × 16 bf16), 8192 multiply-adds per
// instruction), written once against a tile unit (amx_unit-inl.hpp: the
// hardware, or its software model). The engine interface is described in
// fma-inl.hpp; the softmax between the products stays on the vector unit.
//
//   score tiles   S = Q·Kᵀ, dP = dO·Vᵀ: A = 16 query rows × 32 features (the
//                 rows as packed, features padded to a multiple of 32 with
//                 zeros), B = 16 keys in pairs of features ("VNNI": key
//                 groups of 16, [group][feature pair][key][2]); four C tiles
//                 make a 16 × 64 score tile. Products of bf16 values are exact;
//                 each 32 features cost C one rounding (amx_unit-inl.hpp).
//   weighted sums O += P·V (dV, dK, dQ): A = the weights in bf16 pairs along
//                 the summed axis, 16 rows × 32 terms; B = 16 columns of values
//                 in pairs of terms ([column panel][term pair][16][2]); up to
//                 four C tiles, stored and added as C = C·alpha + block.
//                 kSplit (precision "highest"): each float32 weight is split
//                 into two bf16 parts, high + low (w − high, exact), both
//                 multiplied: ~16 significant bits, relative error ≤ 2^-17 per
//                 weight. Otherwise ("medium") the weights are rounded to bf16
//                 once (2^-9), as torch's bf16 kernels round P.
// The scale is applied to the float32 scores after the tiles (score_post), and
// to dK when it is written (value_post): q·scale rounded to bf16 would cost
// peaked rows an error. Tiles read 16 rows (and 32 terms) whatever a call
// uses: the rows past it are padding the passes allocate, their results unused
// or multiplied by zero weights.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/storage-inl.hpp"
#include "amx_unit-inl.hpp"
#include "fma-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

template <class Unit, bool kSplit>
class AmxEngine : public FmaEngine<float> {  // the decode tiles (K/V read in place) are the FMA engine's
    using T = float;
    using Fma = FmaEngine<float>;
    using V = Vec<float>;
    static constexpr int64_t W = V::width;

public:
    using ScorePacked = uint16_t;
    using SumPacked = uint16_t;
    static constexpr int64_t kRows = 16;      // a tile's rows
    static constexpr int64_t kKeys = 64;      // a score tile: four C tiles of 16 keys
    static constexpr int64_t kTermUnit = 32;  // the terms one instruction sums
    static constexpr int64_t kDirectRows = Fma::kDirectRows;

    explicit AmxEngine(const AttentionArgs& a) : Fma(a) {}

    // Each thread configures its tile registers before its first tile and releases them after.
    struct ThreadScope {
        ThreadScope() { Unit::configure(full_tiles()); }
        ~ThreadScope() { Unit::release(); }
        ThreadScope(const ThreadScope&) = delete;
        ThreadScope& operator=(const ThreadScope&) = delete;
    };

    // Every tile is 16 rows: R is always kRows, and the rows past a call's own are padding.
    template <class F>
    static void with_rows(int64_t, F&& f) {
        f(std::integral_constant<int, kRows>{});
    }
    static int64_t cols_pad(int64_t cols) { return (cols + 15) / 16 * 16; }
    static T score_post(T factor) { return factor; }
    static T value_post(T factor) { return factor; }

    // ---- score products ---------------------------------------------------
    static int64_t depth_pad(int64_t depth) { return (depth + kTermUnit - 1) / kTermUnit * kTermUnit; }
    static int64_t rows_size(int64_t rows, int64_t depth) {  // whole tiles: a tile loads 16 rows
        return (rows + kRows - 1) / kRows * kRows * depth_pad(depth);
    }
    static int64_t row_offset(int64_t r, int64_t depth) { return r * depth_pad(depth); }
    void pack_rows(const bf16* src, int64_t stride, int64_t rows, int64_t depth, T /*factor: post*/,
                   ScorePacked* dst) const {
        const int64_t dp = depth_pad(depth);
        for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(dst + r * dp, src + r * stride, depth * sizeof(uint16_t));
            std::fill(dst + r * dp + depth, dst + (r + 1) * dp, uint16_t(0));
        }
    }
    static void zero_row(ScorePacked* rows, int64_t depth, int64_t r) {
        std::fill_n(rows + r * depth_pad(depth), depth_pad(depth), uint16_t(0));
    }
    static int64_t keys_size(int64_t keys, int64_t depth) { return keys * depth_pad(depth); }
    // Keys [0, keys) of src at positions [j0, j0 + keys) of key groups of 16, zeros up to
    // j0 + keys_pad: [group][feature pair][key in group][2].
    void pack_keys(const bf16* src, int64_t stride, int64_t keys, int64_t keys_pad, int64_t depth,
                   ScorePacked* dst, T* /*scratch*/, int64_t j0 = 0, const T* /*row_scale*/ = nullptr) const {
        const int64_t dp = depth_pad(depth);
        for (int64_t j = 0; j < keys_pad; ++j) {
            const int64_t pos = j0 + j;
            uint16_t* group = dst + pos / 16 * dp * 16 + pos % 16 * 2;
            const uint16_t* row = reinterpret_cast<const uint16_t*>(src + j * stride);
            for (int64_t c = 0; c < dp; c += 2) {
                group[c * 16] = j < keys && c < depth ? row[c] : 0;
                group[c * 16 + 1] = j < keys && c + 1 < depth ? row[c + 1] : 0;
            }
        }
    }
    // out[r][j] = post·Σ_c a[r][c]·b[c][j] for 16 rows and keys [k_begin, k_end) (whole
    // score tiles); out has 16 rows.
    template <int R>
    void score_tile(const ScorePacked* a, int64_t depth, const ScorePacked* bt, int64_t k_begin, int64_t k_end, T post,
                    T* out, int64_t out_stride) const {
        const int64_t dp = depth_pad(depth), a_stride = dp * 2;
        for (int64_t k0 = k_begin; k0 < k_end; k0 += kKeys) {
            Unit::template zero<0>();
            Unit::template zero<1>();
            Unit::template zero<2>();
            Unit::template zero<3>();
            const ScorePacked* b = bt + k0 / 16 * dp * 16;  // its first key group
            for (int64_t c = 0; c < dp; c += kTermUnit) {
                Unit::template load<4>(a + c, a_stride);
                const ScorePacked* bc = b + c * 16;  // the 16 feature pairs from c, of each group
                Unit::template load<5>(bc, 64);
                Unit::template dpbf16<0, 4, 5>();
                Unit::template load<6>(bc + dp * 16, 64);
                Unit::template dpbf16<1, 4, 6>();
                Unit::template load<5>(bc + 2 * dp * 16, 64);
                Unit::template dpbf16<2, 4, 5>();
                Unit::template load<6>(bc + 3 * dp * 16, 64);
                Unit::template dpbf16<3, 4, 6>();
            }
            T* o = out + k0;
            const int64_t o_bytes = out_stride * static_cast<int64_t>(sizeof(T));
            Unit::template store<0>(o, o_bytes);
            Unit::template store<1>(o + 16, o_bytes);
            Unit::template store<2>(o + 32, o_bytes);
            Unit::template store<3>(o + 48, o_bytes);
            if (post != T(1)) {
                const typename V::reg scale = V::set1(post);
                for (int r = 0; r < R; ++r)
                    for (int64_t j = 0; j < kKeys; j += W) V::store(o + r * out_stride + j, V::mul(V::load(o + r * out_stride + j), scale));
            }
        }
    }

    // ---- weighted sums ----------------------------------------------------
    static int64_t rows_pad(int64_t rows) { return (rows + kTermUnit - 1) / kTermUnit * kTermUnit; }
    static int64_t values_size(int64_t rows, int64_t cols_pad) { return rows_pad(rows) * cols_pad; }
    // rows × cols of src at rows [r0, r0 + rows) of 16-column panels of rows_cap rows (a
    // multiple of 32): [panel][row pair][16][2]; columns past cols are zero.
    void pack_values(const bf16* src, int64_t stride, int64_t rows, int64_t cols, int64_t cols_pad, int64_t rows_cap,
                     T /*factor: post*/, SumPacked* dst, T* /*scratch*/, int64_t r0 = 0,
                     const T* /*row_scale*/ = nullptr) const {
        for (int64_t i = 0; i < rows; ++i) {
            const uint16_t* row = reinterpret_cast<const uint16_t*>(src + i * stride);
            const int64_t r = r0 + i;
            for (int64_t c0 = 0; c0 < cols_pad; c0 += 16) {
                uint16_t* d = dst + c0 * rows_cap + r / 2 * 32 + r % 2;
                for (int64_t c = 0; c < 16; ++c) d[2 * c] = c0 + c < cols ? row[c0 + c] : 0;
            }
        }
    }
    // Rows [rows, rows rounded up to 32) read as zeros: an instruction sums 32 terms.
    static void pad_values(SumPacked* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
        for (int64_t r = rows; r < std::min(rows_cap, rows_pad(rows)); ++r) zero_value_row(panels, rows_cap, cols_pad, r);
    }
    static void zero_value_row(SumPacked* panels, int64_t rows_cap, int64_t cols_pad, int64_t r) {
        for (int64_t c0 = 0; c0 < cols_pad; c0 += 16) {
            uint16_t* d = panels + c0 * rows_cap + r / 2 * 32 + r % 2;
            for (int64_t c = 0; c < 16; ++c) d[2 * c] = 0;
        }
    }
    static bool values_finite(const SumPacked* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
        const int64_t n = (rows + 1) / 2 * 32;  // the panel's first row pairs
        for (int64_t c0 = 0; c0 < cols_pad; c0 += 16)
            for (int64_t i = 0; i < n; ++i)
                if ((panels[c0 * rows_cap + i] & 0x7f80) == 0x7f80) return false;
        return true;
    }

    // The weights as A tiles: rows of bf16 pairs along the summed axis i, from term t0 (lo
    // rounded down to 32) in whole instructions; high parts, and with kSplit low parts.
    struct Weights {
        const uint16_t* high;
        const uint16_t* low;
        int64_t stride, t0;  // elements per row; the first term
    };
    static int64_t weights_size(int64_t rows, int64_t terms) {
        return (kSplit ? 2 : 1) * ((rows + kRows - 1) / kRows * kRows) * (rows_pad(terms) + kTermUnit);
    }
    // w(r, i) = a[r·kAr + i·kAi] for rows [0, rows), terms [lo, hi); zero elsewhere.
    template <int64_t kAr, int64_t kAi>
    Weights prepare_weights(const T* a, int64_t rows, int64_t lo, int64_t hi, SumPacked* scratch) const {
        const int64_t t0 = lo / kTermUnit * kTermUnit, n = rows_pad(hi) - t0, rows16 = (rows + kRows - 1) / kRows * kRows;
        uint16_t* high = scratch;
        uint16_t* low = kSplit ? scratch + rows16 * n : nullptr;
        for (int64_t r = 0; r < rows16; ++r)
            for (int64_t i = t0; i < t0 + n; ++i) {
                const T w = r < rows && i >= lo && i < hi ? a[r * kAr + i * kAi] : T(0);
                const uint16_t h = f32_to_bf16(w);
                high[r * n + i - t0] = h;
                if (kSplit) low[r * n + i - t0] = f32_to_bf16(w - bf16_to_f32(h));
            }
        return {high, low, n, t0};
    }
    // c[r] = c[r]·alpha[r] + Σ_{lo <= i < hi} w(r0 + r, i)·B_i for the 16 rows from r0 (blocked:
    // this call's terms summed from zero, then added once). kSkipZero (R = 1, a block with a NaN
    // or inf value): term by term, skipping weights of exactly 0.
    template <int R, bool kSkipZero = false>
    void weighted_sum(const Weights& w, int64_t r0, int64_t lo, int64_t hi, const T* alpha, const SumPacked* panels,
                      int64_t rows_cap, int64_t cols_pad, T* c, int64_t c_stride) const {
        if constexpr (kSkipZero) {
            return skip_zero_sum(w, r0, lo, hi, alpha ? alpha[0] : T(1), panels, rows_cap, cols_pad, c);
        } else {
            alignas(64) T block[kRows * 64];
            const int64_t t_end = rows_pad(hi), a_bytes = w.stride * 2;
            for (int64_t c0 = 0; c0 < cols_pad; c0 += 64) {
                const int64_t groups = std::min<int64_t>(4, (cols_pad - c0) / 16);
                Unit::template zero<0>();
                Unit::template zero<1>();
                Unit::template zero<2>();
                Unit::template zero<3>();
                for (int64_t t = std::max(w.t0, lo / kTermUnit * kTermUnit); t < t_end; t += kTermUnit) {
                    Unit::template load<4>(w.high + r0 * w.stride + (t - w.t0), a_bytes);
                    if (kSplit) Unit::template load<7>(w.low + r0 * w.stride + (t - w.t0), a_bytes);
                    const SumPacked* b = panels + c0 * rows_cap + t * 16;  // term pairs from t
                    sum_group<0>(groups, b, rows_cap);
                    sum_group<1>(groups, b, rows_cap);
                    sum_group<2>(groups, b, rows_cap);
                    sum_group<3>(groups, b, rows_cap);
                }
                Unit::template store<0>(block, 256);
                if (groups > 1) Unit::template store<1>(block + 16, 256);
                if (groups > 2) Unit::template store<2>(block + 32, 256);
                if (groups > 3) Unit::template store<3>(block + 48, 256);
                for (int r = 0; r < R; ++r) {
                    const typename V::reg scale = V::set1(alpha ? alpha[r] : T(1));
                    T* dst = c + r * c_stride + c0;
                    for (int64_t j = 0; j < 16 * groups; j += W)
                        V::store(dst + j, V::fma(V::load(dst + j), scale, V::load(block + r * 64 + j)));
                }
            }
        }
    }

    // D_r = Σ_c dout·out in dP's order (score_tile's): per 32 features, an even and an odd chain
    // from +0, then D += even + odd; products fused (exact, as the tiles', where out is bf16).
    template <class S, class O>
    static void delta_rows(const S* dout, const O* out, int64_t rows, int64_t dv, T* delta) {
        for (int64_t r = 0; r < rows; ++r) {
            T d = 0;
            for (int64_t c0 = 0; c0 < dv; c0 += kTermUnit) {
                T even = 0, odd = 0;
                for (int64_t c = c0; c < std::min(dv, c0 + kTermUnit); c += 2) {
                    even = std::fma(Storage<S>::widen(dout[r * dv + c]), Storage<O>::widen(out[r * dv + c]), even);
                    if (c + 1 < dv)
                        odd = std::fma(Storage<S>::widen(dout[r * dv + c + 1]), Storage<O>::widen(out[r * dv + c + 1]),
                                       odd);
                }
                d = d + (even + odd);
            }
            delta[r] = d;
        }
    }

private:
    // One column group's products of a term chunk: C_g += A·B_g (and A_low·B_g).
    template <int g>
    void sum_group(int64_t groups, const SumPacked* b, int64_t rows_cap) const {
        if (g >= groups) return;
        Unit::template load<5>(b + g * 16 * rows_cap, 64);
        Unit::template dpbf16<g, 4, 5>();
        if (kSplit) Unit::template dpbf16<g, 7, 5>();
    }

    void skip_zero_sum(const Weights& w, int64_t r, int64_t lo, int64_t hi, T alpha, const SumPacked* panels,
                       int64_t rows_cap, int64_t cols_pad, T* c) const {
        for (int64_t col = 0; col < cols_pad; ++col) {
            const int64_t c0 = col / 16 * 16;
            T sum = 0;
            for (int64_t i = lo; i < hi; ++i) {
                T weight = bf16_to_f32(w.high[r * w.stride + i - w.t0]);
                if (kSplit) weight += bf16_to_f32(w.low[r * w.stride + i - w.t0]);
                if (weight == T(0)) continue;
                sum = std::fma(weight, bf16_to_f32(panels[c0 * rows_cap + i / 2 * 32 + (col - c0) * 2 + i % 2]), sum);
            }
            c[col] = c[col] * alpha + sum;
        }
    }
};

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
