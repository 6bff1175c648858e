// The AVX512-BF16 engines: bfloat16 inputs multiplied as they are stored, on
// VDPBF16PS (16 lanes × a pair of bf16 products: 32 multiply-adds per
// instruction). The engine interface is described in fma-inl.hpp; compiled only
// into the avx512_bf16 ISA (-mavx512bf16), for bfloat16 q, k, v.
//
// What VDPBF16PS computes (verified bit for bit on AMD Zen 4 and an Intel Xeon,
// shared/MATRIX-ENGINES.md): lane i of acc becomes
//     (acc + a[2i+1]·b[2i+1]) + a[2i]·b[2i]
// each add rounded to nearest even, the odd element first. A product of two
// bf16 values is exact in float32, so S = Q·Kᵀ and dP = dO·Vᵀ differ from the
// FMA engine's only in their summation order (pairs of features); subnormal
// inputs and results count as zero (below 2^-126 ≈ 1.2e-38: an absolute error
// no score can show at float32 precision).
//
// Two engines, one per precision:
//   Bf16ScoreEngine    ("highest", "high") the score products on VDPBF16PS;
//                      the weighted sums (P·V; the backward's dV, dK, dQ) on the
//                      FMA engine, their weights in float32 and their bf16 values
//                      widened exactly: float32 accuracy. On AMD Zen 4 VDPBF16PS
//                      issues at the FMA's rate (2× its multiply-adds), on the
//                      Intel Xeon measured here at 0.62× (1.24× its multiply-
//                      adds): splitting P into two bf16 parts for VDPBF16PS would
//                      match the FMA engine on Zen 4 and lose to it there.
//   Bf16RoundedEngine  ("medium") the weights P and dS rounded to bf16 once (as
//                      torch's bf16 kernels do: relative error 2^-9 per weight),
//                      so that every product runs on VDPBF16PS.
// The softmax scale is applied to the float32 score after the dot (score_post):
// q·scale rounded to bf16 would cost peaked rows an error naive attention does
// not have.
//
// Layouts (bf16 bits; depth and rows padded to even with zeros):
//   score rows (A)    row r at r·depth_pad: its features, a pair per 32-bit word,
//                     broadcast one word at a time
//   keys (B of S)     panels of kKeys = 64 keys: [panel][feature pair][key][2],
//                     so one 64-byte load is 16 keys' pair, a vector of lanes
//   values (medium)   column panels one tile wide (64 columns, then 16):
//                     [row pair][column][2] within a panel
//   weights (medium)  bf16 pairs along the summed axis, one 32-bit word each
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common/storage-inl.hpp"
#include "fma-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

using Bf16Word = uint32_t __attribute__((may_alias));  // a pair of bf16, read and written over uint16_t buffers

// Precision "highest": S and dP on VDPBF16PS; the weighted sums, the decode tiles (K/V read in
// place) and the rest are the FMA engine's.
class Bf16ScoreEngine : public FmaEngine<float> {
    using T = float;
    using Fma = FmaEngine<float>;
    using Packed = uint16_t;

public:
    using ScorePacked = uint16_t;
    static constexpr int64_t kRows = 6;
    static constexpr int64_t kKeys = 64;  // a score tile: 4 vectors of 16 keys
    static constexpr int64_t kScoreUnit = kKeys;
    static_assert(kRows == Fma::kRows, "the weighted sums' tiles are the FMA engine's");

    explicit Bf16ScoreEngine(const AttentionArgs& a) : Fma(a) {}

    static T score_post(T factor) { return factor; }  // q is not scaled while packed

    // ---- score products ---------------------------------------------------
    static int64_t depth_pad(int64_t depth) { return (depth + 1) / 2 * 2; }
    static int64_t rows_size(int64_t rows, int64_t depth) { return rows * depth_pad(depth); }
    static int64_t row_offset(int64_t r, int64_t depth) { return r * depth_pad(depth); }
    void pack_rows(const bf16* src, int64_t stride, int64_t rows, int64_t depth, T /*factor: post*/,
                   Packed* dst) const {
        const int64_t dp = depth_pad(depth);
        for (int64_t r = 0; r < rows; ++r) {
            std::memcpy(dst + r * dp, src + r * stride, depth * sizeof(Packed));
            if (dp > depth) dst[r * dp + depth] = 0;
        }
    }
    static void zero_row(Packed* rows, int64_t depth, int64_t r) {
        std::fill_n(rows + r * depth_pad(depth), depth_pad(depth), Packed(0));
    }
    static int64_t keys_size(int64_t keys, int64_t depth) { return keys * depth_pad(depth); }
    // Keys [0, keys) of src at positions [j0, j0 + keys), zeros up to j0 + keys_pad.
    void pack_keys(const bf16* src, int64_t stride, int64_t keys, int64_t keys_pad, int64_t depth, Packed* dst,
                   T* /*scratch*/, int64_t j0 = 0, const T* /*row_scale: int8 only*/ = nullptr) const {
        const int64_t dp = depth_pad(depth), pairs = dp / 2;
        for (int64_t j = 0; j < keys_pad; ++j) {
            const int64_t pos = j0 + j;
            Bf16Word* words = reinterpret_cast<Bf16Word*>(dst + pos / kKeys * dp * kKeys) + pos % kKeys;
            const Packed* row = reinterpret_cast<const Packed*>(src + j * stride);
            for (int64_t p = 0; p < pairs; ++p) {
                uint32_t w = 0;
                if (j < keys) {
                    const uint32_t lo = row[2 * p], hi = 2 * p + 1 < depth ? row[2 * p + 1] : 0;
                    w = lo | hi << 16;
                }
                words[p * kKeys] = w;
            }
        }
    }
    // D_r = Σ_c dout·out in dP's order (score_tile): pairs of features, odd before even,
    // each product fused into the sum (exact, as VDPBF16PS's are, where out is a bf16 value).
    template <class S, class O>
    static void delta_rows(const S* dout, const O* out, int64_t rows, int64_t dv, T* delta) {
        std::fill(delta, delta + rows, T(0));
        for (int64_t c = 0; c < dv; c += 2)
            for (int64_t r = 0; r < rows; ++r) {
                T d = delta[r];
                if (c + 1 < dv)
                    d = std::fma(Storage<S>::widen(dout[r * dv + c + 1]), Storage<O>::widen(out[r * dv + c + 1]), d);
                delta[r] = std::fma(Storage<S>::widen(dout[r * dv + c]), Storage<O>::widen(out[r * dv + c]), d);
            }
    }

    // out[r][j] = post·Σ_c a[r][c]·b[c][j] for keys [k_begin, k_end) (whole panels).
    template <int R>
    void score_tile(const Packed* a, int64_t depth, const Packed* bt, int64_t k_begin, int64_t k_end, T post, T* out,
                    int64_t out_stride) const {
        const int64_t dp = depth_pad(depth), pairs = dp / 2;
        const __m512 scale = _mm512_set1_ps(post);
        for (int64_t k0 = k_begin; k0 < k_end; k0 += kKeys) {
            __m512 acc[R][4];
            for (int r = 0; r < R; ++r)
                for (int n = 0; n < 4; ++n) acc[r][n] = _mm512_setzero_ps();
            const Packed* bp = bt + k0 / kKeys * dp * kKeys;
            for (int64_t p = 0; p < pairs; ++p, bp += 2 * kKeys) {
                __m512bh b[4];
                for (int n = 0; n < 4; ++n) b[n] = (__m512bh)_mm512_loadu_si512(bp + 32 * n);
                for (int r = 0; r < R; ++r) {
                    const __m512bh ar = (__m512bh)_mm512_set1_epi32(word(a + r * dp, p));
                    for (int n = 0; n < 4; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], ar, b[n]);
                }
            }
            for (int r = 0; r < R; ++r)
                for (int n = 0; n < 4; ++n)
                    _mm512_storeu_ps(out + r * out_stride + k0 + 16 * n, _mm512_mul_ps(acc[r][n], scale));
        }
    }

private:
    static uint32_t word(const Packed* row, int64_t p) { return *reinterpret_cast<const Bf16Word*>(row + 2 * p); }
};

// Precision "medium": the weights P and dS rounded to bf16 once, every product on VDPBF16PS.
class Bf16RoundedEngine : public Bf16ScoreEngine {
    using T = float;
    using Packed = uint16_t;
    using Word = Bf16Word;

public:
    using SumPacked = uint16_t;
    static constexpr int64_t kPanel = 64;  // a value panel's columns (then 16)
    static constexpr int64_t kTermUnit = 2;  // pairs

    explicit Bf16RoundedEngine(const AttentionArgs& a) : Bf16ScoreEngine(a) {}

    static int64_t cols_pad(int64_t cols) { return (cols + 15) / 16 * 16; }
    static T value_post(T factor) { return factor; }  // Q (dK's values) is not scaled while packed

    // ---- weighted sums ----------------------------------------------------
    static int64_t panel_width(int64_t c0, int64_t cols_pad) { return c0 + kPanel <= cols_pad ? kPanel : 16; }
    static int64_t values_size(int64_t rows, int64_t cols_pad) { return (rows + 1) / 2 * 2 * cols_pad; }
    // rows × cols of src at rows [r0, r0 + rows) of column panels of rows_cap rows (even);
    // columns past cols are zero.
    void pack_values(const bf16* src, int64_t stride, int64_t rows, int64_t cols, int64_t cols_pad, int64_t rows_cap,
                     T /*factor: post*/, Packed* dst, T* /*scratch*/, int64_t r0 = 0,
                     const T* /*row_scale: int8 only*/ = nullptr) const {
        for (int64_t i = 0; i < rows; ++i) {
            const Packed* row = reinterpret_cast<const Packed*>(src + i * stride);
            const int64_t r = r0 + i;
            for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
                const int64_t w = panel_width(c0, cols_pad);
                Packed* d = dst + c0 * rows_cap + r / 2 * 2 * w + r % 2;
                const int64_t n = std::min(w, std::max<int64_t>(0, cols - c0));
                for (int64_t c = 0; c < n; ++c) d[2 * c] = row[c0 + c];
                for (int64_t c = n; c < w; ++c) d[2 * c] = 0;
            }
        }
    }
    // An odd `rows` leaves the last pair half filled: its partner row is zero, so
    // that a pair's weight 0 never meets uninitialised memory.
    static void pad_values(Packed* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
        if (rows % 2) zero_value_row(panels, rows_cap, cols_pad, rows);
    }
    static void zero_value_row(Packed* panels, int64_t rows_cap, int64_t cols_pad, int64_t r) {
        for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
            const int64_t w = panel_width(c0, cols_pad);
            Packed* d = panels + c0 * rows_cap + r / 2 * 2 * w + r % 2;
            for (int64_t c = 0; c < w; ++c) d[2 * c] = 0;
        }
    }
    // No NaN or inf among rows [0, rows) (and their pad partner): an all-ones exponent.
    static bool values_finite(const Packed* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
        const __m512i exponent = _mm512_set1_epi16(0x7f80);
        __mmask32 bad = 0;
        const int64_t rows2 = (rows + 1) / 2 * 2;
        for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
            const Packed* p = panels + c0 * rows_cap;
            const int64_t n = rows2 * panel_width(c0, cols_pad);  // a multiple of 32
            for (int64_t i = 0; i < n; i += 32) {
                const __m512i x = _mm512_and_si512(_mm512_loadu_si512(p + i), exponent);
                bad |= _mm512_cmpeq_epi16_mask(x, exponent);
            }
        }
        return bad == 0;
    }

    // The weights of a weighted sum rounded to bf16, in pairs along the summed axis i:
    // word (r, p) holds w(r, 2p) and w(r, 2p + 1); zero outside [lo, hi).
    struct Weights {
        const Word* words;
        int64_t r_stride, p_stride, p0;  // word (r, p) at (r·r_stride + (p − p0)·p_stride)
        uint32_t word(int64_t r, int64_t p) const { return words[r * r_stride + (p - p0) * p_stride]; }
    };
    static int64_t weights_size(int64_t rows, int64_t terms) {
        return 2 * ((rows + 15) / 16 * 16) * (terms / 2 + 2);  // words of two bf16
    }
    // w(r, i) = a[r·kAr + i·kAi] for rows [0, rows), terms [lo, hi).
    template <int64_t kAr, int64_t kAi>
    Weights prepare_weights(const T* a, int64_t rows, int64_t lo, int64_t hi, Packed* scratch) const {
        const int64_t p0 = lo / 2, pairs = (hi + 1) / 2 - p0, rows16 = (rows + 15) / 16 * 16;
        Word* words = reinterpret_cast<Word*>(scratch);
        if constexpr (kAi == 1) {  // rows of weights: pairs are adjacent floats
            const int64_t np = pairs;
            for (int64_t r = 0; r < rows; ++r)
                round_run(a + r * kAr, 2 * p0, lo, hi, pairs, words + r * np);
            return {words, np, 1, p0};
        } else {  // transposed (kAr == 1): a pair is two rows of a, 16 r's at a time
            static_assert(kAr == 1, "weights are row-major or transposed");
            for (int64_t p = 0; p < pairs; ++p) {
                const int64_t i = 2 * (p0 + p);
                const bool has0 = i >= lo && i < hi, has1 = i + 1 >= lo && i + 1 < hi;
                for (int64_t r = 0; r < rows16; r += 16) {
                    const __m512 x0 = has0 ? _mm512_loadu_ps(a + r + i * kAi) : _mm512_setzero_ps();
                    const __m512 x1 = has1 ? _mm512_loadu_ps(a + r + (i + 1) * kAi) : _mm512_setzero_ps();
                    _mm512_storeu_si512(words + p * rows16 + r, join(to_bf16(x0), to_bf16(x1)));
                }
            }
            return {words, 1, rows16, p0};
        }
    }
    // c[r] = c[r]·alpha[r] + Σ_{lo <= i < hi} w(r0 + r, i)·B_i for R rows of c, the terms
    // summed from zero (blocked sums, fma_tiles-inl.hpp). kSkipZero (R = 1, a block with
    // NaN or inf values): term by term in float32, skipping weights of exactly 0.
    template <int R, bool kSkipZero = false>
    void weighted_sum(const Weights& w, int64_t r0, int64_t lo, int64_t hi, const T* alpha, const Packed* panels,
                      int64_t rows_cap, int64_t cols_pad, T* c, int64_t c_stride) const {
        if constexpr (kSkipZero) {
            static_assert(R == 1, "zero skipping is per row");
            return skip_zero_sum(w, r0, lo, hi, alpha ? alpha[0] : T(1), panels, rows_cap, cols_pad, c);
        } else {
            for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
                if (panel_width(c0, cols_pad) == kPanel)
                    sum_cols<R, 4>(w, r0, lo, hi, alpha, panels + c0 * rows_cap, c + c0, c_stride);
                else
                    sum_cols<R, 1>(w, r0, lo, hi, alpha, panels + c0 * rows_cap, c + c0, c_stride);
            }
        }
    }

private:
    static __m256i to_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }  // round to nearest even
    // 16 words: the pairs (first[i], second[i]).
    static __m512i join(__m256i first, __m256i second) {
        return _mm512_or_si512(_mm512_cvtepu16_epi32(first), _mm512_slli_epi32(_mm512_cvtepu16_epi32(second), 16));
    }

    // Words of `pairs` pairs of the floats x[i0 ..] rounded to bf16 (terms outside [lo, hi) as
    // zeros), 16 words (32 floats) at a time.
    static void round_run(const T* x, int64_t i0, int64_t lo, int64_t hi, int64_t pairs, Word* words) {
        for (int64_t p = 0; p < pairs; p += 16) {
            const int64_t i = i0 + 2 * p;
            const __m512 first = masked_load(x, i, lo, hi), second = masked_load(x, i + 16, lo, hi);
            const __m512i w = (__m512i)_mm512_cvtne2ps_pbh(second, first);  // element order: first, then second
            const __mmask16 keep = static_cast<__mmask16>((1u << std::min<int64_t>(16, pairs - p)) - 1);
            _mm512_mask_storeu_epi32(words + p, keep, w);
        }
    }
    // x[i .. i + 16), with the lanes outside [lo, hi) zero (and never read).
    static __m512 masked_load(const T* x, int64_t i, int64_t lo, int64_t hi) {
        const int64_t from = std::clamp<int64_t>(lo - i, 0, 16), to = std::clamp<int64_t>(hi - i, 0, 16);
        if (from >= to) return _mm512_setzero_ps();
        const __mmask16 m = static_cast<__mmask16>(((1u << to) - 1) & ~((1u << from) - 1));
        return _mm512_maskz_loadu_ps(m, x + i);
    }

    template <int R, int N>
    void sum_cols(const Weights& w, int64_t r0, int64_t lo, int64_t hi, const T* alpha, const Packed* panel, T* c,
                  int64_t c_stride) const {
        __m512 acc[R][N];  // this call's terms alone
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < N; ++n) acc[r][n] = _mm512_setzero_ps();
        const int64_t width = 16 * N;
        for (int64_t p = lo / 2; p < (hi + 1) / 2; ++p) {
            __m512bh b[N];
            for (int n = 0; n < N; ++n) b[n] = (__m512bh)_mm512_loadu_si512(panel + p * 2 * width + 32 * n);
            for (int r = 0; r < R; ++r) {
                const __m512bh pair = (__m512bh)_mm512_set1_epi32(w.word(r0 + r, p));
                for (int n = 0; n < N; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], pair, b[n]);
            }
        }
        for (int r = 0; r < R; ++r) {
            const __m512 scale = _mm512_set1_ps(alpha ? alpha[r] : T(1));
            for (int n = 0; n < N; ++n) {
                T* dst = c + r * c_stride + 16 * n;
                _mm512_storeu_ps(dst, _mm512_fmadd_ps(_mm512_loadu_ps(dst), scale, acc[r][n]));
            }
        }
    }

    // Term by term, skipping weights of exactly 0, so that 0·NaN never reaches c: blocks with
    // a NaN or inf value, which are rare.
    void skip_zero_sum(const Weights& w, int64_t r, int64_t lo, int64_t hi, T alpha, const Packed* panels,
                       int64_t rows_cap, int64_t cols_pad, T* c) const {
        for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
            const int64_t width = panel_width(c0, cols_pad);
            for (int64_t col = 0; col < width; ++col) {
                T sum = 0;
                for (int64_t i = lo; i < hi; ++i) {
                    const T weight = bf16_to_f32(static_cast<uint16_t>(w.word(r, i / 2) >> 16 * (i % 2)));
                    if (weight == T(0)) continue;
                    const Packed v = panels[c0 * rows_cap + i / 2 * 2 * width + 2 * col + i % 2];
                    sum = std::fma(weight, bf16_to_f32(v), sum);
                }
                c[c0 + col] = c[c0 + col] * alpha + sum;
            }
        }
    }
};

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
