// The FMA engine: every product of both passes on vector FMA registers, operands
// widened to the compute type T (fma_tiles-inl.hpp, fma_pack-inl.hpp). It is the
// first engine and the reference the others are tested against.
//
// An engine is a policy class both passes take (ForwardKernel<S, K, Engine>,
// BackwardKernel<S, Engine>): the passes keep the schedule and the softmax; the
// engine owns its tile shape, its packed operand layouts and the products. Its
// interface, which every engine implements (docs/architecture.md, "Engines"):
//
//   ScorePacked, SumPacked    element types of its packed operands: of the score
//                             products' (q, dO rows; K, V keys), of the weighted
//                             sums' (value panels, weights)
//   kRows, kKeys, kTermUnit   rows per tile (query rows; keys in the backward's
//                             dK/dV tiles), keys per packed K panel (a score
//                             tile's width), the unit of a weighted sum's terms
//                             (its value panels' rows come in multiples of it).
//                             The passes size their blocks from these, never
//                             assume them. An engine whose tiles are always
//                             kRows high (with_rows gives kRows) gets padding
//                             rows that see no key.
//   Engine(args)              per call (precision, dtype)
//   name()                    what show_config() reports
//   with_rows(n, f)           f(integral_constant<n>) for 1 <= n <= kRows
//   cols_pad(n)               columns of an accumulator row / value panel
//   score_post(f), value_post(f)  the part of a packing factor f left to apply
//                             after the score products / the weighted sums (below)
//   Score products: out = post·A·Bᵀ (S = scale·Q·Kᵀ, dP = dO·Vᵀ)
//     rows_size(rows, depth)  pack_rows(...): A, rows of depth values (row r at
//                             row_offset(r, depth); the size of `rows` rows)
//     keys_size(keys, depth)  pack_keys(...): B, keys transposed in panels
//     score_tile<R>(a, depth, b, k_begin, k_end, post, out, out_stride): keys
//                             [k_begin, k_end), k_begin at a panel of kKeys, k_end
//                             a multiple of kScoreUnit (what one product computes)
//   Weighted sums: C = C·alpha + Σ_i w(r, i)·B_i (O += P·V, dV, dK, dQ), each call's
//   terms summed from zero and added to C once ("Blocked sums", fma_tiles-inl.hpp)
//     values_size(rows, cols) pack_values(...): B in column panels; pad_values
//     values_finite(...)      no NaN/inf in a packed B (0·NaN would leak)
//     weights_size(rows, terms)  prepare_weights<kAr, kAi>(...) -> Weights: the
//                             float weights (P, dS) as the engine reads them
//     weighted_sum<R, kSkipZero>(w, r0, lo, hi, alpha, b, rows_cap, cols_pad, c, c_stride)
//   delta_rows(...)           the backward's D = Σ dO·out in dP's summation order
//   Decoding (K/V read in place, no packing): unpacked_scores, unpacked_sum,
//   unpacked_sum_rows, Run, pack_direct_rows, kDirectRows, with_direct_rows — the
//   FMA engine's for every engine, so that a decode call and its backward form
//   scores one way.
//   ThreadScope               constructed on each thread before its work, destroyed
//                             after (a tile configuration; nothing here)
//
// `post` factors: an engine may apply a factor (the softmax scale) while packing
// (FMA: q is packed times the scale, no multiply in the tile) or after the dot
// (bf16 engines, which must not round q·scale to 16 bits); score_post(factor) and
// value_post(factor) are what it leaves to apply: 1 here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../common/storage-inl.hpp"
#include "fma_pack-inl.hpp"
#include "fma_tiles-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

template <class T>
struct FmaEngine {
    using Tile = Tiles<T>;
    using ScorePacked = T;
    using SumPacked = T;
    using V = Vec<T>;
    static constexpr int64_t W = V::width;
    static constexpr int64_t kRows = Tile::kRows;
    static constexpr int64_t kKeys = Tile::kKeys;
    static constexpr int64_t kScoreUnit = W;  // a panel's vectors one by one
    static constexpr int64_t kDirectRows = Tile::kRows;
    static constexpr int64_t kTermUnit = 1;  // weighted sums take any number of terms

    explicit FmaEngine(const AttentionArgs&) {}
    static const char* name() { return kName; }

    struct ThreadScope {};

    template <class F>
    static void with_rows(int64_t n, F&& f) {
        Tile::with_rows(n, static_cast<F&&>(f));
    }
    template <class F>
    static void with_direct_rows(int64_t n, F&& f) {
        Tile::with_rows(n, static_cast<F&&>(f));
    }
    static T score_post(T) { return T(1); }  // every factor is applied while packing
    static T value_post(T) { return T(1); }
    static int64_t cols_pad(int64_t cols) { return (cols + W - 1) / W * W; }

    // ---- score products ---------------------------------------------------
    static int64_t rows_size(int64_t rows, int64_t depth) { return rows * depth; }
    static int64_t row_offset(int64_t r, int64_t depth) { return r * depth; }
    // rows × depth of src (row stride `stride`) times factor, at dst (row stride depth).
    template <class S>
    void pack_rows(const S* src, int64_t stride, int64_t rows, int64_t depth, T factor, ScorePacked* dst) const {
        pack_plain_rows(src, stride, rows, depth, depth, factor, dst);
    }
    static void zero_row(ScorePacked* rows, int64_t depth, int64_t r) { std::fill_n(rows + r * depth, depth, T(0)); }
    static int64_t keys_size(int64_t keys, int64_t depth) { return keys * depth; }
    // Keys [0, keys) of src transposed into panels at positions [j0, j0 + keys), positions up
    // to j0 + keys_pad zero; row_scale: int8 keys' scales, or null.
    template <class S>
    void pack_keys(const S* src, int64_t stride, int64_t keys, int64_t keys_pad, int64_t depth, ScorePacked* dst,
                   T* scratch, int64_t j0 = 0, const T* row_scale = nullptr) const {
        pack_transposed(src, stride, keys, keys_pad, depth, dst, scratch, j0, row_scale);
    }
    // out[r][j] for keys [k_begin, k_end) (whole panels).
    template <int R>
    FASTATTN_TILE void score_tile(const ScorePacked* a, int64_t depth, const ScorePacked* bt, int64_t k_begin, int64_t k_end,
                                  T /* post: always 1 here */, T* out, int64_t out_stride) const {
        Tile::template score_tile<R>(a, depth, bt, k_begin / W, k_end / W, out, out_stride);
    }

    // ---- weighted sums ----------------------------------------------------
    static int64_t values_size(int64_t rows, int64_t cols_pad) { return rows * cols_pad; }
    // rows × cols of src (widened, times factor or row_scale[r]) into column panels of
    // rows_cap rows at rows [r0, r0 + rows); scratch holds cols_pad values.
    template <class S>
    void pack_values(const S* src, int64_t stride, int64_t rows, int64_t cols, int64_t cols_pad, int64_t rows_cap,
                     T factor, SumPacked* dst, T* scratch, int64_t r0 = 0, const T* row_scale = nullptr) const {
        pack_panels(src, stride, rows, cols, cols_pad, rows_cap, factor, dst, nullptr, scratch, r0, row_scale);
    }
    // Rows past `rows` that the tiles may read: none (they read below each row's end only).
    static void pad_values(SumPacked*, int64_t /*rows*/, int64_t /*rows_cap*/, int64_t /*cols_pad*/) {}
    static void zero_value_row(SumPacked* panels, int64_t rows_cap, int64_t cols_pad, int64_t r) {
        for (int64_t c0 = 0; c0 < cols_pad; c0 += Tile::panel_width(c0, cols_pad)) {
            const int64_t w = Tile::panel_width(c0, cols_pad);
            std::fill_n(panels + c0 * rows_cap + r * w, w, T(0));
        }
    }
    static bool values_finite(const SumPacked* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
        return all_finite(panels, rows, rows_cap, cols_pad);
    }

    // The weights w(r, i) = a[r·kAr + i·kAi] as weighted_sum reads them: in place.
    template <int64_t kAr, int64_t kAi>
    struct Weights {
        const T* a;
    };
    static int64_t weights_size(int64_t, int64_t) { return 0; }
    template <int64_t kAr, int64_t kAi>
    Weights<kAr, kAi> prepare_weights(const T* a, int64_t /*rows*/, int64_t /*lo*/, int64_t /*hi*/,
                                      SumPacked* /*scratch*/) const {
        return {a};
    }
    // c[r] = c[r]·alpha[r] + Σ_{lo <= i < hi} w(r0 + r, i)·B_i for R rows of c; kSkipZero
    // (R = 1): terms of weight exactly 0 are skipped, so that 0·NaN never reaches c.
    template <int R, bool kSkipZero = false, int64_t kAr, int64_t kAi>
    FASTATTN_TILE void weighted_sum(const Weights<kAr, kAi>& w, int64_t r0, int64_t lo, int64_t hi, const T* alpha,
                                    const SumPacked* panels, int64_t rows_cap, int64_t cols_pad, T* c,
                                    int64_t c_stride) const {
        Tile::template weighted_sum<R, kAr, kAi, kSkipZero>(w.a + r0 * kAr, lo, hi, alpha, panels, rows_cap, cols_pad,
                                                            c, c_stride);
    }

    // D_r = Σ_c dout[r][c]·out[r][c] for `rows` rows (stride dv), each summed as score_tile sums
    // dP = dO·Vᵀ: one FMA chain over the columns from 0 (docs/how-it-works.md, 7.1); the rows'
    // chains interleaved.
    template <class S, class O>
    static void delta_rows(const S* dout, const O* out, int64_t rows, int64_t dv, T* delta) {
        std::fill(delta, delta + rows, T(0));
        for (int64_t c = 0; c < dv; ++c)
            for (int64_t r = 0; r < rows; ++r)
                delta[r] = Tile::lane_fma(Storage<S>::widen(dout[r * dv + c]), Storage<O>::widen(out[r * dv + c]),
                                          delta[r]);
    }

    // ---- decoding: K/V read in place -------------------------------------
    template <class S>
    using Run = typename Tile::template Run<S>;
    // rows × depth of src times factor, as unpacked_scores reads them (row stride depth).
    template <class S>
    static void pack_direct_rows(const S* src, int64_t stride, int64_t rows, int64_t depth, T factor, T* dst) {
        pack_plain_rows(src, stride, rows, depth, depth, factor, dst);
    }
    template <int R, class S>
    static void unpacked_scores(const T* a, int64_t depth, const S* k, int64_t stride, int64_t first, int64_t last,
                                T* out, int64_t out_stride, const T* row_scale = nullptr) {
        Tile::template unpacked_scores<R>(a, depth, k, stride, first, last, out, out_stride, row_scale);
    }
    template <class S>
    static void unpacked_sum(const T* p, int64_t lo, int64_t hi, T alpha, const Run<S>* runs, int64_t num_runs,
                             int64_t stride, int64_t dv, bool skip_zero, T* acc) {
        Tile::unpacked_sum(p, lo, hi, alpha, runs, num_runs, stride, dv, skip_zero, acc);
    }
    template <int R, class S>
    static void unpacked_sum_rows(const T* p, int64_t p_stride, int64_t lo, int64_t hi, const T* alpha,
                                  const Run<S>* runs, int64_t num_runs, int64_t stride, int64_t dv, T* acc,
                                  int64_t acc_stride) {
        Tile::template unpacked_sum_rows<R>(p, p_stride, lo, hi, alpha, runs, num_runs, stride, dv, acc, acc_stride);
    }

private:
    static constexpr const char* kName = FASTATTN_ENGINE_NAME("fma");
};

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
