// The AMX engine: products on tile units (TDPBF16PS: C(16 × 16 float32) +=
// A(16 × 32 bf16) · B(32 × 16 bf16), 8192 multiply-adds per instruction),
// written once against a tile unit (amx_unit-inl.hpp: the hardware, or its
// software model). The engine interface is described in fma-inl.hpp; the
// softmax between the products stays on the vector unit.
//
// Operands in parts. A value of q, k, v (storage type S) is kept as kParts bf16
// parts, x = x₀ + x₁ + …, each part the bf16 rounding of what the parts before
// it left: bfloat16 is one part; float16 (11 significant bits) is exactly two;
// float32 (24) is three (to ~2^-24; a part that would be subnormal is flushed,
// as the tiles flush it). The weights P and dS (float32, from the softmax) are
// split likewise into kWeightParts. A product of two split operands is the sum
// of the products of their parts, of which the engine keeps those whose orders
// add up to less than kOrder (the rest are below the result's precision):
//   bf16   "highest", "high": 1 part, weights 2 (high + low, ~2^-17 each)  S 1, P·V 2 products
//          "medium":          1 part, weights 1 (bf16 once, 2^-9)           S 1, P·V 1
//   f16    "highest", "high": 2 parts, weights 2, kOrder 3                  S 4, P·V 4
//          "medium":          2 parts, weights 1                            S 4, P·V 2
//   f32    "high":            3 parts, weights 3, kOrder 3 (a + b ≤ 2)     S 6, P·V 6
//          "medium":          2 parts, weights 1, kOrder 2                  S 3, P·V 2
//   (f32 "highest" is the FMA engine's.)
//
//   score tiles   S = Q·Kᵀ, dP = dO·Vᵀ: A = 16 rows × 32 features of one part
//                 (features padded to a multiple of 32 with zeros), B = 16 keys
//                 × 16 pairs of features of one part ("VNNI": key groups of 16,
//                 [group][part][feature pair][key][2]). Products of bf16 parts
//                 are exact; each 32 features cost C one rounding.
//   weighted sums O += P·V (dV, dK, dQ): A = the weights' parts, B = 16 columns
//                 of values in pairs of terms ([column panel][part][term pair]
//                 [16][2]), C = C·alpha + block once per call (blocked sums).
// Tiles are used 2 × 2: two A tiles (rows 0-15, 16-31) and two B tiles feed four
// C tiles, so that every tile loaded serves two products (a load costs more
// than a product: 6.0 ns against 4.3 ns on the Xeon measured). The scale is
// applied to the float32 scores after the tiles (score_post) and to dK when it
// is written (value_post): q·scale rounded to bf16 would cost peaked rows an
// error. Tiles read 32 rows (and 32 terms) whatever a call uses: the rows past
// it are padding the passes allocate, their results unused or multiplied by
// zero weights.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../common/storage-inl.hpp"
#include "../common/transpose-inl.hpp"
#include "amx_unit-inl.hpp"
#include "fma-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

template <class Unit, class S, int kParts, int kWeightParts, int kOrder>
class AmxEngine : public FmaEngine<float> {  // the decode tiles (K/V read in place) are the FMA engine's
    using T = float;
    using Fma = FmaEngine<float>;
    using V = Vec<float>;
    using reg = typename V::reg;
    static constexpr int64_t W = V::width;
    static_assert(kParts >= 1 && kParts <= 3 && kWeightParts >= 1 && kWeightParts <= 3, "one to three parts");

public:
    using ScorePacked = uint16_t;
    using SumPacked = uint16_t;
    static constexpr int64_t kRows = 32;      // two tiles' rows: the engine's products are 2 × 2 tiles
    static constexpr int64_t kKeys = 64;      // keys per score call (two 2 × 2 passes of 32 keys)
    static constexpr int64_t kTermUnit = 32;  // the terms one instruction sums
    static constexpr int64_t kScoreUnit = 32; // keys per 2 × 2 pass of score_tile
    static constexpr int64_t kDirectRows = Fma::kDirectRows;

    explicit AmxEngine(const AttentionArgs& a) : Fma(a) {}

    // Each thread configures its tile registers before its first tile and releases them after.
    struct ThreadScope {
        ThreadScope() { Unit::configure(full_tiles()); }
        ~ThreadScope() { Unit::release(); }
        ThreadScope(const ThreadScope&) = delete;
        ThreadScope& operator=(const ThreadScope&) = delete;
    };

    // The products are always kRows high: R is kRows, and the rows past a call's own are padding.
    template <class F>
    static void with_rows(int64_t, F&& f) {
        f(std::integral_constant<int, kRows>{});
    }
    static int64_t cols_pad(int64_t cols) { return (cols + 15) / 16 * 16; }
    static T score_post(T factor) { return factor; }
    static T value_post(T factor) { return factor; }

    // ---- score products ---------------------------------------------------
    static int64_t depth_pad(int64_t depth) { return round_up(depth, kTermUnit); }
    static int64_t rows_size(int64_t rows, int64_t depth) { return round_up(rows, kRows) * kParts * depth_pad(depth); }
    static int64_t row_offset(int64_t r, int64_t depth) { return r * kParts * depth_pad(depth); }
    // Row r: its parts one after another, each depth_pad features (zeros past depth).
    void pack_rows(const S* src, int64_t stride, int64_t rows, int64_t depth, T /*factor: post*/,
                   ScorePacked* dst) const {
        const int64_t dp = depth_pad(depth);
        for (int64_t r = 0; r < rows; ++r) split_row(src + r * stride, depth, dst + r * kParts * dp, dp);
    }
    static void zero_row(ScorePacked* rows, int64_t depth, int64_t r) {
        std::fill_n(rows + row_offset(r, depth), kParts * depth_pad(depth), uint16_t(0));
    }
    static int64_t keys_size(int64_t keys, int64_t depth) { return keys * kParts * depth_pad(depth); }
    // Keys [0, keys) of src at positions [j0, j0 + keys) of key groups of 16, zeros up to
    // j0 + keys_pad: [group][part][feature pair][key in group][2].
    void pack_keys(const S* src, int64_t stride, int64_t keys, int64_t keys_pad, int64_t depth, ScorePacked* dst,
                   T* /*scratch*/, int64_t j0 = 0, const T* /*row_scale: int8 only*/ = nullptr) const {
        const int64_t dp = depth_pad(depth);
        alignas(64) uint16_t parts[kParts * kMaxDepth];
        for (int64_t j = 0; j < keys_pad; ++j) {
            const int64_t pos = j0 + j;
            uint16_t* group = dst + pos / 16 * kParts * dp * 16 + pos % 16 * 2;
#if defined(__AVX512BF16__)
            if (W == 16 && pos % 16 == 0 && j + 16 <= keys_pad) {  // a whole group, transposed in registers
                pack_key_group(src + j * stride, stride, std::clamp<int64_t>(keys - j, 0, 16), depth, group);
                j += 15;
                continue;
            }
#endif
            for (int64_t c0 = 0; c0 < dp; c0 += kMaxDepth) {  // depth in pieces of kMaxDepth
                const int64_t n = std::min(kMaxDepth, dp - c0);
                if (j < keys)
                    split_row(src + j * stride + c0, std::max<int64_t>(0, std::min(n, depth - c0)), parts, n);
                else
                    std::fill_n(parts, kParts * n, uint16_t(0));
                for (int p = 0; p < kParts; ++p)
                    for (int64_t c = 0; c < n; ++c) group[(p * dp + c0 + c) / 2 * 32 + (c0 + c) % 2] = parts[p * n + c];
            }
        }
    }
    // out[r][j] = post·Σ_c a[r][c]·b[c][j] for the 32 rows of a and keys [k_begin, k_end) (whole
    // score calls); out has 32 rows.
    template <int R>
    void score_tile(const ScorePacked* a, int64_t depth, const ScorePacked* bt, int64_t k_begin, int64_t k_end, T post,
                    T* out, int64_t out_stride) const {
        const int64_t dp = depth_pad(depth), a_bytes = kParts * dp * 2, group = kParts * dp * 16;
        const int64_t o_bytes = out_stride * static_cast<int64_t>(sizeof(T));
        for (int64_t k0 = k_begin; k0 < k_end; k0 += 32) {
            zero_c();
            const ScorePacked* b = bt + k0 / 16 * group;  // its first key group
            for (int64_t c = 0; c < dp; c += kTermUnit)
                for (int pa = 0; pa < kParts; ++pa) {
                    Unit::template load<4>(a + pa * dp + c, a_bytes);
                    Unit::template load<7>(a + 16 * kParts * dp + pa * dp + c, a_bytes);
                    for (int pb = 0; pb < kParts && pa + pb < kOrder; ++pb) {
                        Unit::template load<5>(b + (pb * dp + c) * 16, 64);  // 16 feature pairs from c, keys k0..
                        Unit::template load<6>(b + group + (pb * dp + c) * 16, 64);  // ... keys k0 + 16..
                        products();
                    }
                }
            T* o = out + k0;
            Unit::template store<0>(o, o_bytes);
            Unit::template store<1>(o + 16, o_bytes);
            Unit::template store<2>(o + 16 * out_stride, o_bytes);
            Unit::template store<3>(o + 16 * out_stride + 16, o_bytes);
            if (post != T(1)) {
                const reg scale = V::set1(post);
                for (int r = 0; r < R; ++r)
                    for (int64_t j = 0; j < 32; j += W)
                        V::store(o + r * out_stride + j, V::mul(V::load(o + r * out_stride + j), scale));
            }
        }
    }

    // D_r = Σ_c dout·out in dP's order (score_tile's): per 32 features, per pair of parts (a of
    // dout, b of out, in the tiles' order), an even and an odd chain from +0, then D += even +
    // odd; products fused (exact where out's parts are V's, as on a nearly one-hot row).
    template <class So, class O>
    static void delta_rows(const So* dout, const O* out, int64_t rows, int64_t dv, T* delta) {
        for (int64_t r = 0; r < rows; ++r) {
            T d = 0;
            for (int64_t c0 = 0; c0 < dv; c0 += kTermUnit) {
                const int64_t n = std::min(kTermUnit, dv - c0);
                T x[kTermUnit][kParts], y[kTermUnit][kParts];
                for (int64_t c = 0; c < n; ++c) {
                    split_value(Storage<So>::widen(dout[r * dv + c0 + c]), x[c]);
                    split_value(Storage<O>::widen(out[r * dv + c0 + c]), y[c]);
                }
                for (int pa = 0; pa < kParts; ++pa)
                    for (int pb = 0; pb < kParts && pa + pb < kOrder; ++pb) {
                        T even = 0, odd = 0;
                        for (int64_t c = 0; c < n; c += 2) {
                            even = std::fma(x[c][pa], y[c][pb], even);
                            if (c + 1 < n) odd = std::fma(x[c + 1][pa], y[c + 1][pb], odd);
                        }
                        d = d + (even + odd);
                    }
            }
            delta[r] = d;
        }
    }

    // ---- weighted sums ----------------------------------------------------
    static int64_t rows_pad(int64_t rows) { return round_up(rows, kTermUnit); }
    static int64_t values_size(int64_t rows, int64_t cols_pad) { return rows_pad(rows) * cols_pad * kParts; }
    // rows × cols of src at rows [r0, r0 + rows) of 16-column panels of rows_cap rows (a
    // multiple of 32): [panel][part][row pair][16][2]; columns past cols are zero.
    void pack_values(const S* src, int64_t stride, int64_t rows, int64_t cols, int64_t cols_pad, int64_t rows_cap,
                     T /*factor: post*/, SumPacked* dst, T* /*scratch*/, int64_t r0 = 0,
                     const T* /*row_scale: int8 only*/ = nullptr) const {
        alignas(64) uint16_t parts[kParts * kMaxDepth];
        for (int64_t i = 0; i < rows; ++i) {
            const int64_t r = r0 + i;
#if defined(__AVX512BF16__)
            if (W == 16 && r % 2 == 0 && i + 1 < rows) {  // a pair of rows, interleaved in registers
                pack_value_pair(src + i * stride, stride, cols, cols_pad, rows_cap, dst + r / 2 * 32);
                ++i;
                continue;
            }
#endif
            for (int64_t c0 = 0; c0 < cols_pad; c0 += kMaxDepth) {
                const int64_t n = std::min(kMaxDepth, cols_pad - c0);
                split_row(src + i * stride + c0, std::max<int64_t>(0, std::min(n, cols - c0)), parts, n);
                for (int64_t c = 0; c < n; ++c) {
                    const int64_t col = c0 + c;
                    uint16_t* d = dst + col / 16 * 16 * rows_cap * kParts + r / 2 * 32 + col % 16 * 2 + r % 2;
                    for (int p = 0; p < kParts; ++p) d[p * rows_cap * 16] = parts[p * n + c];
                }
            }
        }
    }
    // Rows [rows, rows rounded up to 32) read as zeros: an instruction sums 32 terms.
    static void pad_values(SumPacked* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
        for (int64_t r = rows; r < std::min(rows_cap, rows_pad(rows)); ++r) zero_value_row(panels, rows_cap, cols_pad, r);
    }
    static void zero_value_row(SumPacked* panels, int64_t rows_cap, int64_t cols_pad, int64_t r) {
        for (int64_t c0 = 0; c0 < cols_pad; c0 += 16)
            for (int p = 0; p < kParts; ++p) {
                uint16_t* d = panels + (c0 * kParts + p * 16) * rows_cap + r / 2 * 32 + r % 2;
                for (int64_t c = 0; c < 16; ++c) d[2 * c] = 0;
            }
    }
    // No NaN or inf among rows [0, rows): their first parts have no all-ones exponent (a NaN or
    // inf value has one there), four bf16 at a time (SWAR).
    static bool values_finite(const SumPacked* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
        constexpr uint64_t kExponents = 0x7f807f807f807f80ull, kLow = 0x0001000100010001ull, kHigh = 0x8000800080008000ull;
        const int64_t n = (rows + 1) / 2 * 32 / 4;  // the panel's first row pairs, in 64-bit words
        uint64_t non_finite = 0;
        for (int64_t c0 = 0; c0 < cols_pad; c0 += 16) {
            const SumPacked* p = panels + c0 * kParts * rows_cap;
            for (int64_t i = 0; i < n; ++i) {
                uint64_t x;
                std::memcpy(&x, p + 4 * i, 8);
                const uint64_t other = (x & kExponents) ^ kExponents;  // a zero lane: all ones there
                non_finite |= (other - kLow) & ~other & kHigh;
            }
        }
        return non_finite == 0;
    }

    // The weights as A tiles: rows of bf16 pairs along the summed axis i, from term t0 (lo
    // rounded down to 32) in whole instructions, kWeightParts parts one after another.
    struct Weights {
        const uint16_t* parts;
        int64_t stride, part_stride, t0;  // elements per row, per part; the first term
    };
    static int64_t weights_size(int64_t rows, int64_t terms) {
        return kWeightParts * round_up(rows, kRows) * (rows_pad(terms) + kTermUnit);
    }
    // w(r, i) = a[r·kAr + i·kAi] for rows [0, rows), terms [lo, hi); zero elsewhere (and in
    // the rows past `rows`, up to a whole tile).
    template <int64_t kAr, int64_t kAi>
    Weights prepare_weights(const T* a, int64_t rows, int64_t lo, int64_t hi, SumPacked* scratch) const {
        const int64_t t0 = lo / kTermUnit * kTermUnit, n = rows_pad(hi) - t0, rows_tiled = round_up(rows, kRows);
        if constexpr (kAi == 1) {  // row-major: a vector of terms at a time
            for (int64_t r = 0; r < rows_tiled; ++r)
                for (int64_t i = t0; i < t0 + n; i += W)
                    split_weights(r < rows ? a + r * kAr : nullptr, i, lo, hi, scratch + r * n + (i - t0), rows_tiled * n);
        } else {  // transposed (kAr == 1): rows of a are the terms
            static_assert(kAr == 1, "weights are row-major or transposed");
            transpose_weights(a, kAi, rows, rows_tiled, lo, hi, t0, n, scratch);
        }
        return {scratch, n, rows_tiled * n, t0};
    }
    // c[r] = c[r]·alpha[r] + Σ_{lo <= i < hi} w(r0 + r, i)·B_i for the 32 rows from r0 (blocked:
    // this call's terms summed from zero, then added once): per 32 terms, each part of the
    // values (two 16-column panels) against the weights' parts that it multiplies. kSkipZero
    // (R = 1, a block with a NaN or inf value): term by term, skipping weights of exactly 0.
    template <int R, bool kSkipZero = false>
    void weighted_sum(const Weights& w, int64_t r0, int64_t lo, int64_t hi, const T* alpha, const SumPacked* panels,
                      int64_t rows_cap, int64_t cols_pad, T* c, int64_t c_stride) const {
        if constexpr (kSkipZero) {
            return skip_zero_sum(w, r0, lo, hi, alpha ? alpha[0] : T(1), panels, rows_cap, cols_pad, c);
        } else {
            alignas(64) T block[kRows * 32];
            const int64_t t_end = rows_pad(hi), a_bytes = w.stride * 2, part = rows_cap * 16;
            const uint16_t* weights = w.parts + r0 * w.stride - w.t0;
            for (int64_t c0 = 0; c0 < cols_pad; c0 += 32) {
                const bool pair = c0 + 32 <= cols_pad;  // else one 16-column panel
                zero_c();
                for (int64_t t = std::max(w.t0, lo / kTermUnit * kTermUnit); t < t_end; t += kTermUnit)
                    for (int pv = 0; pv < kParts; ++pv) {
                        const SumPacked* b = panels + c0 * kParts * rows_cap + pv * part + t * 16;  // term pairs from t
                        Unit::template load<5>(b, 64);
                        Unit::template load<6>(pair ? b + 16 * kParts * rows_cap : b, 64);
                        for (int pw = 0; pw < kWeightParts && pw + pv < kOrder; ++pw) {
                            Unit::template load<4>(weights + pw * w.part_stride + t, a_bytes);
                            Unit::template load<7>(weights + pw * w.part_stride + 16 * w.stride + t, a_bytes);
                            products();
                        }
                    }
                Unit::template store<0>(block, 128);
                Unit::template store<1>(block + 16, 128);
                Unit::template store<2>(block + 16 * 32, 128);
                Unit::template store<3>(block + 16 * 32 + 16, 128);
                const int64_t cols = pair ? 32 : 16;
                for (int r = 0; r < R; ++r) {
                    const reg scale = V::set1(alpha ? alpha[r] : T(1));
                    T* dst = c + r * c_stride + c0;
                    for (int64_t j = 0; j < cols; j += W)
                        V::store(dst + j, V::fma(V::load(dst + j), scale, V::load(block + r * 32 + j)));
                }
            }
        }
    }

private:
    static constexpr int64_t kMaxDepth = 256;  // a row is split in pieces of this many values
    static constexpr int64_t round_up(int64_t n, int64_t unit) { return (n + unit - 1) / unit * unit; }

    static void zero_c() {
        Unit::template zero<0>();
        Unit::template zero<1>();
        Unit::template zero<2>();
        Unit::template zero<3>();
    }
    // C (2 × 2 tiles) += A (tiles 4, 7: rows 0-15, 16-31) · B (tiles 5, 6: two groups of 16).
    static void products() {
        Unit::template dpbf16<0, 4, 5>();
        Unit::template dpbf16<1, 4, 6>();
        Unit::template dpbf16<2, 7, 5>();
        Unit::template dpbf16<3, 7, 6>();
    }

    // x rounded to bf16 (nearest even) at dst: one instruction where AVX512-BF16 is (the amx
    // ISA; it reads subnormal inputs as zero, as the tiles do), else the vector API's rounding.
    // A finite float32 beyond bf16's largest is rounded towards zero there instead of to inf, so
    // that the parts of a finite value stay finite.
    static void round_bf16(uint16_t* dst, reg x) {
        if constexpr (std::is_same<S, float>::value) {  // big < |x| < inf: ±big
            const reg big = V::set1(3.38953139e38f), ax = V::abs(x);
            const reg clamped = V::select_lt(big, ax, V::select_lt(x, V::zero(), V::set1(-3.38953139e38f), big), x);
            x = V::select_lt(ax, V::set1(std::numeric_limits<T>::infinity()), clamped, x);
        }
#if defined(__AVX512BF16__)
        if constexpr (W == 16) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(x));
            return;
        }
#endif
        V::store_bf16(dst, x);
    }
    // The parts of W values x at dst, dst + part_stride, ...: each the rounding of what is left.
    template <int kN>
    static void split(reg x, uint16_t* dst, int64_t part_stride) {
        for (int p = 0; p < kN; ++p) {
            round_bf16(dst + p * part_stride, x);
            if (p + 1 < kN) x = V::sub(x, V::load_bf16(dst + p * part_stride));  // exact
        }
    }
    // The parts of one scalar for delta_rows: those split makes but the last, which is the exact
    // remainder, so that they add up to x (a float32 out has more bits than a split V; where
    // out is V's value, the parts are V's).
    static void split_value(T x, T* parts) {
        alignas(64) T lanes[W] = {x};
        alignas(64) uint16_t bits[kParts * W];
        split<kParts>(V::load(lanes), bits, W);
        for (int p = 0; p + 1 < kParts; ++p) {
            parts[p] = bf16_to_f32(bits[p * W]);
            x -= parts[p];
        }
        parts[kParts - 1] = x;
    }
    // n values of src split into parts at dst (part p at dst + p·pad), zeros from n to pad.
    static void split_row(const S* src, int64_t n, uint16_t* dst, int64_t pad) {
        if constexpr (std::is_same<S, bf16>::value && kParts == 1) {  // stored as it is multiplied
            std::memcpy(dst, src, n * sizeof(uint16_t));
            std::fill(dst + n, dst + pad, uint16_t(0));
        } else {
            int64_t c = 0;
            for (; c + W <= n; c += W) split<kParts>(Storage<S>::load(src + c), dst + c, pad);
            if (c < pad) {  // the tail, and zeros to pad, a vector at a time
                alignas(64) T x[W];
                for (; c < pad; c += W) {
                    for (int64_t j = 0; j < W; ++j) x[j] = c + j < n ? Storage<S>::widen(src[c + j]) : T(0);
                    alignas(64) uint16_t bits[kParts * W];
                    split<kParts>(V::load(x), bits, W);
                    for (int p = 0; p < kParts; ++p)
                        for (int64_t j = 0; j < W && c + j < pad; ++j) dst[p * pad + c + j] = bits[p * W + j];
                }
            }
        }
    }
    // The W terms [i, i + W) of a row (null: a padding row) as weight parts, zero outside [lo, hi).
    static void split_weights(const T* row, int64_t i, int64_t lo, int64_t hi, uint16_t* dst, int64_t part_stride) {
        if (row && i >= lo && i + W <= hi) return split<kWeightParts>(V::load(row + i), dst, part_stride);
        alignas(64) T x[W];
        for (int64_t j = 0; j < W; ++j) x[j] = row && i + j >= lo && i + j < hi ? row[i + j] : T(0);
        split<kWeightParts>(V::load(x), dst, part_stride);
    }

    // Transposed weights w(r, i) = a[r + i·stride] into rows of terms (an A tile's layout).
    // With AVX-512: 16 rows × 32 terms at a time, split a term (16 rows) at a time, paired into
    // 32-bit words (two terms of one row) and transposed 16 × 16 in registers.
    static void transpose_weights(const T* a, int64_t stride, int64_t rows, int64_t rows_tiled, int64_t lo, int64_t hi,
                                  int64_t t0, int64_t n, uint16_t* dst) {
        const int64_t part_stride = rows_tiled * n;
#if defined(__AVX512BF16__)
        if constexpr (W == 16) {
            for (int64_t r0 = 0; r0 < rows_tiled; r0 += 16) {
                const __mmask16 live = static_cast<__mmask16>(r0 + 16 <= rows ? 0xffff : r0 >= rows ? 0 : (1u << (rows - r0)) - 1);
                for (int64_t i0 = t0; i0 < t0 + n; i0 += 32) {
                    __m512i words[kWeightParts][16];
                    for (int p = 0; p < 16; ++p) {
                        const int64_t i = i0 + 2 * p;
                        __m512 x0 = i >= lo && i < hi ? _mm512_maskz_loadu_ps(live, a + r0 + i * stride) : _mm512_setzero_ps();
                        __m512 x1 = i + 1 >= lo && i + 1 < hi ? _mm512_maskz_loadu_ps(live, a + r0 + (i + 1) * stride)
                                                              : _mm512_setzero_ps();
                        for (int part = 0; part < kWeightParts; ++part) {
                            const __m256i h0 = (__m256i)_mm512_cvtneps_pbh(x0), h1 = (__m256i)_mm512_cvtneps_pbh(x1);
                            words[part][p] = pair_words(h0, h1);
                            x0 = _mm512_sub_ps(x0, widen_bf16(h0));
                            x1 = _mm512_sub_ps(x1, widen_bf16(h1));
                        }
                    }
                    for (int part = 0; part < kWeightParts; ++part) {
                        transpose_16x16(words[part]);
                        for (int r = 0; r < 16; ++r)
                            _mm512_storeu_si512(dst + part * part_stride + (r0 + r) * n + (i0 - t0), words[part][r]);
                    }
                }
            }
            return;
        }
#endif
        alignas(64) uint16_t bits[kWeightParts * W];
        for (int64_t r0 = 0; r0 < rows_tiled; r0 += W)
            for (int64_t i = t0; i < t0 + n; ++i) {
                const bool seen = i >= lo && i < hi;
                split<kWeightParts>(seen ? V::load(a + r0 + i * stride) : V::zero(), bits, W);
                for (int64_t j = 0; j < W; ++j)
                    for (int p = 0; p < kWeightParts; ++p)
                        dst[p * part_stride + (r0 + j) * n + (i - t0)] = r0 + j < rows ? bits[p * W + j] : 0;
            }
    }
#if defined(__AVX512BF16__)
    // Keys [0, keys) of src (keys <= 16; zeros for the rest of the group) as one key group
    // ([part][feature pair][16 keys][2], at group): each key's row split into parts, then per
    // part 32 features × 16 keys as a 16 × 16 matrix of feature pairs, transposed.
    void pack_key_group(const S* src, int64_t stride, int64_t keys, int64_t depth, uint16_t* group) const {
        const int64_t dp = depth_pad(depth);
        alignas(64) uint16_t rows[16][kParts * kMaxDepth];
        for (int64_t c0 = 0; c0 < dp; c0 += kMaxDepth) {  // depth in pieces of kMaxDepth
            const int64_t n = std::min(kMaxDepth, dp - c0), live = std::max<int64_t>(0, std::min(n, depth - c0));
            for (int64_t k = 0; k < 16; ++k) {
                if (k < keys)
                    split_row(src + k * stride + c0, live, rows[k], n);
                else
                    std::fill_n(rows[k], kParts * n, uint16_t(0));
            }
            for (int p = 0; p < kParts; ++p)
                for (int64_t c = 0; c < n; c += 32) {
                    __m512i words[16];
                    for (int k = 0; k < 16; ++k) words[k] = _mm512_load_si512(rows[k] + p * n + c);
                    transpose_16x16(words);  // [key][pair] -> [pair][key]
                    uint16_t* out = group + (p * dp + c0 + c) / 2 * 32;
                    for (int pair = 0; pair < 16; ++pair) _mm512_storeu_si512(out + pair * 32, words[pair]);
                }
        }
    }
    // Rows r, r + 1 (r even; at src, src + stride) into their row pair of every panel and part
    // (dst: the first panel's pair): the 16 columns of a panel interleaved, row r's first.
    void pack_value_pair(const S* src, int64_t stride, int64_t cols, int64_t cols_pad, int64_t rows_cap,
                         uint16_t* dst) const {
        alignas(64) uint16_t first[kParts * kMaxDepth], second[kParts * kMaxDepth];
        for (int64_t c0 = 0; c0 < cols_pad; c0 += kMaxDepth) {
            const int64_t n = std::min(kMaxDepth, cols_pad - c0), live = std::max<int64_t>(0, std::min(n, cols - c0));
            split_row(src + c0, live, first, n);
            split_row(src + stride + c0, live, second, n);
            for (int p = 0; p < kParts; ++p)
                for (int64_t c = 0; c < n; c += 16) {
                    const __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(first + p * n + c));
                    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i*>(second + p * n + c));
                    _mm512_storeu_si512(dst + (c0 + c) / 16 * 16 * rows_cap * kParts + p * rows_cap * 16,
                                        pair_words(a, b));
                }
        }
    }
    // 16 words (first[j], second[j]) of two rows of 16 bf16.
    static __m512i pair_words(__m256i first, __m256i second) {
        return _mm512_or_si512(_mm512_cvtepu16_epi32(first), _mm512_slli_epi32(_mm512_cvtepu16_epi32(second), 16));
    }
    static __m512 widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
#endif

    // Term by term, skipping weights of exactly 0, so that 0·NaN never reaches c: blocks with a
    // NaN or inf value, which are rare. A value is the sum of its parts.
    void skip_zero_sum(const Weights& w, int64_t r, int64_t lo, int64_t hi, T alpha, const SumPacked* panels,
                       int64_t rows_cap, int64_t cols_pad, T* c) const {
        for (int64_t col = 0; col < cols_pad; ++col) {
            const SumPacked* panel = panels + col / 16 * 16 * kParts * rows_cap + col % 16 * 2;
            T sum = 0;
            for (int64_t i = lo; i < hi; ++i) {
                T weight = 0;
                for (int p = 0; p < kWeightParts; ++p) weight += bf16_to_f32(w.parts[p * w.part_stride + r * w.stride + i - w.t0]);
                if (weight == T(0)) continue;
                T value = 0;
                for (int p = 0; p < kParts; ++p) value += bf16_to_f32(panel[p * rows_cap * 16 + i / 2 * 32 + i % 2]);
                sum = std::fma(weight, value, sum);
            }
            c[col] = c[col] * alpha + sum;
        }
    }
};

// The AMX engine a build names for each dtype and precision, on the tile unit `Unit` (AmxSwitch:
// the hardware, or its model when a test asks; AmxModel: the model): bfloat16 in 1 part, P and dS
// in 2 ("highest", "high") or 1 ("medium"); float16 in 2 exact parts; float32 in 3 parts ("high"),
// 2 with P in 1 ("medium"), "highest" none (void: the FMA engine's, in the avx512 build).
template <class Unit, class S, Precision P>
struct AmxEngineFor {
    static constexpr bool kMedium = P == Precision::medium;
    using type = typename std::conditional<
        std::is_same<S, bf16>::value, AmxEngine<Unit, bf16, 1, kMedium ? 1 : 2, 2>,
        typename std::conditional<
            std::is_same<S, f16>::value, AmxEngine<Unit, f16, 2, kMedium ? 1 : 2, 3>,
            typename std::conditional<std::is_same<S, float>::value && P != Precision::highest,
                                      AmxEngine<Unit, float, kMedium ? 2 : 3, kMedium ? 1 : 3, kMedium ? 2 : 3>,
                                      void>::type>::type>::type;
};

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
