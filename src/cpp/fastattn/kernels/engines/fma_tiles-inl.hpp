// The FMA engine's register tiles (FmaEngine, fma-inl.hpp, is their interface
// to the passes), and the decoding tiles every engine uses to read K/V in place.
//
// A register tile is kRows rows × kVecs vectors of accumulators. Each vector
// of the B operand loaded feeds kRows rows' FMAs; the accumulators, the loaded
// vectors and a broadcast fit the ISA's register file: 6·2 + 2 + 1 = 15 of 16,
// or 6·4 + 4 + 1 = 29 of 32. (AVX2, against 4 × 2: +3% at D = 64, +11% at
// D = 128.)
//
// B operands are packed (fma_pack-inl.hpp) so that a tile walks them front to back:
//   score_tile     out = A·Bᵀ over a depth, B transposed in panels of kKeys
//                  keys (S = Q·Kᵀ, and the backward's dP = dO·Vᵀ)
//   weighted_sum   C = C·alpha + Σ_i a_i·B_i, B in column panels one tile wide
//                  (O += P·V, and the backward's dV, dK, dQ)
// Every sum runs over its terms in order whatever the tile's height, so a
// row's results do not depend on which rows share its tile.
//
// Blocked sums. A call sums its own terms (one key block of at most kKeyBlock
// keys, or one block of rows in the backward) from zero, and only then adds
// them to the running C: C = C·alpha + block, one rounding. Summing term by
// term into C would lose every term below half an ulp of C: with 2^31 keys of
// p = 1 and v = 1, a float32 C stops at 2^24 while the row's sum l (already
// formed per block) reaches 2^31: the output came out far below 1.
// Blocked, the error bound is ~(block + n/block)·eps instead of ~n·eps.
//
// Decoding reads K and V in place instead (unpacked_scores, unpacked_sum).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../common/storage-inl.hpp"

// The tiles are inlined into their callers, as when each pass had its own
// copy. Left to GCC 12, the forward's 6-row score_tile and weighted_sum stayed
// out of line once shared, and the forward ran 1-4% slower on AVX-512 (AMD
// EPYC, bench/ab_compare.py against the per-pass code); inlined, it matches.
#ifndef FASTATTN_TILE
#if defined(__GNUC__)
#define FASTATTN_TILE __attribute__((always_inline))
#else
#define FASTATTN_TILE
#endif
#endif

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

template <class T>
struct Tiles {
    using V = Vec<T>;
    using reg = typename V::reg;
    static constexpr int64_t W = V::width;
    static constexpr int64_t kVecs = V::registers >= 32 ? 4 : 2;  // vectors per tile row
    static constexpr int64_t kRows = 6;                             // rows per tile
    static constexpr int64_t kKeys = kVecs * W;  // elements per tile row: a K panel's keys, a column panel's width

    // Calls f(std::integral_constant<int, n>) for a tile of 1 <= n <= kRows
    // rows known only at run time (a decode task of 4 query heads is one
    // 4-row tile, not 4 single rows).
    template <class F>
    static void with_rows(int64_t n, F&& f) {
        static_assert(kRows == 6, "one case per tile height");
        switch (n) {
            case 6: return f(std::integral_constant<int, 6>{});
            case 5: return f(std::integral_constant<int, 5>{});
            case 4: return f(std::integral_constant<int, 4>{});
            case 3: return f(std::integral_constant<int, 3>{});
            case 2: return f(std::integral_constant<int, 2>{});
            default: return f(std::integral_constant<int, 1>{});
        }
    }

    // The width of the column panel that starts at column c0 of cols_pad:
    // whole tiles, then single vectors.
    static int64_t panel_width(int64_t c0, int64_t cols_pad) { return c0 + kKeys <= cols_pad ? kKeys : W; }

    // One lane of score_tile's V::fma, on scalars: fused exactly where V::fma is
    // (every ISA but the scalar baseline, which multiplies and adds).
    static T lane_fma(T a, T b, T c) {
#if defined(__FMA__) || defined(__aarch64__)
        return std::fma(a, b, c);
#else
        return a * b + c;
#endif
    }

    // out[r][j] = Σ_c a[r·depth + c]·bt[c][j] for R rows of a and the key
    // vectors [v_begin, v_end) (v_begin at a panel's start; a last panel may be
    // cut short: a 16-key block computes 16 scores, not a whole panel's 64); bt
    // is transposed in panels of kKeys keys (pack_transposed), out has row
    // stride out_stride. Each score is the same chain of FMAs however many
    // vectors its panel call has.
    template <int R>
    FASTATTN_TILE static void score_tile(const T* a, int64_t depth, const T* bt, int64_t v_begin, int64_t v_end, T* out,
                           int64_t out_stride) {
        for (int64_t v0 = v_begin; v0 < v_end; v0 += kVecs) {
            const T* bp = bt + v0 / kVecs * depth * kKeys;  // its panel
            T* o = out + v0 * W;
            const int64_t n = std::min<int64_t>(kVecs, v_end - v0);
            if (n == kVecs)
                score_panel<R, kVecs>(a, depth, bp, o, out_stride);
            else if (n == 1)
                score_panel<R, 1>(a, depth, bp, o, out_stride);
            else if (n == 2)
                score_panel<R, std::min<int64_t>(2, kVecs)>(a, depth, bp, o, out_stride);
            else
                score_panel<R, std::min<int64_t>(3, kVecs)>(a, depth, bp, o, out_stride);
        }
    }
    // score_tile's first kN vectors of one panel.
    template <int R, int64_t kN>
    FASTATTN_TILE static void score_panel(const T* a, int64_t depth, const T* bp, T* out, int64_t out_stride) {
        reg dot[R][kN];
        for (int r = 0; r < R; ++r)
            for (int64_t n = 0; n < kN; ++n) dot[r][n] = V::zero();
        for (int64_t c = 0; c < depth; ++c, bp += kKeys) {
            reg b[kN];
            for (int64_t n = 0; n < kN; ++n) b[n] = V::load(bp + n * W);
            for (int r = 0; r < R; ++r) {
                const reg ac = V::set1(a[r * depth + c]);
                for (int64_t n = 0; n < kN; ++n) dot[r][n] = V::fma(ac, b[n], dot[r][n]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int64_t n = 0; n < kN; ++n) V::store(out + r * out_stride + n * W, dot[r][n]);
    }

    // c[r][:] = c[r][:]·alpha[r] + Σ_{lo <= i < hi} a[r·kAr + i·kAi]·b[i][:]
    // for R rows of c (row stride c_stride, cols_pad columns; alpha null: no
    // rescaling), b in column panels of rows_cap rows (pack_panels). a is a
    // block of weights read row-major (kAr = its row stride, kAi = 1) or
    // transposed (kAr = 1, kAi = its row stride). With kSkipZero (R = 1),
    // terms whose weight is exactly 0 are skipped: 0·NaN must not reach c.
    template <int R, int64_t kAr, int64_t kAi, bool kSkipZero = false>
    FASTATTN_TILE static void weighted_sum(const T* a, int64_t lo, int64_t hi, const T* alpha, const T* panels, int64_t rows_cap,
                             int64_t cols_pad, T* c, int64_t c_stride) {
        for (int64_t c0 = 0; c0 < cols_pad; c0 += panel_width(c0, cols_pad)) {
            const T* b = panels + c0 * rows_cap;
            if (panel_width(c0, cols_pad) == kKeys)
                weighted_sum_cols<R, kVecs, kAr, kAi, kSkipZero>(a, lo, hi, alpha, b, c + c0, c_stride);
            else
                weighted_sum_cols<R, 1, kAr, kAi, kSkipZero>(a, lo, hi, alpha, b, c + c0, c_stride);
        }
    }

    // Decoding, K and V read in place (no packing: each key is read once).
    // out[r][j] = Σ_c a[r·depth + c]·widen(k[j·stride + c]) for keys
    // [first, last), kJ keys at a time so that R·kJ independent FMA chains
    // hide the FMA latency; each score sums its features in order, then
    // reduce_add, whatever R and kJ are. row_scale (int8 keys): the score of
    // key j is that sum times row_scale[j].
    template <int R, class S>
    static void unpacked_scores(const T* a, int64_t depth, const S* k, int64_t stride, int64_t first, int64_t last,
                                T* out, int64_t out_stride, const T* row_scale = nullptr) {
        constexpr int kJ = R <= 2 ? 4 : 2;
        int64_t j = first;
        for (; j + kJ <= last; j += kJ) unpacked_dots<R, kJ>(a, depth, k, stride, j, out, out_stride, row_scale);
        for (; j < last; ++j) unpacked_dots<R, 1>(a, depth, k, stride, j, out, out_stride, row_scale);
    }

    // Rows of V read in place: keys [j0, j0 + n) at v (row stride of the call),
    // int8 ones times scale[j − j0] (null otherwise). Dense V is one run, a
    // paged cache's one per block.
    template <class S>
    struct Run {
        int64_t j0, n;
        const S* v;
        const T* scale;
    };

    // acc[c] = acc[c]·alpha + Σ_{lo <= j < hi} p[j]·widen(v_j[c]) for one row,
    // V in place in `runs` (ascending keys), a few columns at a time, every
    // run inside the column loop so that acc stays in registers; with
    // skip_zero, keys of weight exactly 0 are skipped. Keys are summed in
    // order, however V is cut into runs.
    template <class S>
    static void unpacked_sum(const T* p, int64_t lo, int64_t hi, T alpha, const Run<S>* runs, int64_t num_runs,
                             int64_t stride, int64_t dv, bool skip_zero, T* acc) {
        constexpr int kCols = 4;  // vectors of columns per pass
        int64_t c = 0;
        for (; c + kCols * W <= dv; c += kCols * W)
            unpacked_sum_cols<kCols>(p, lo, hi, alpha, runs, num_runs, stride, c, skip_zero, acc + c);
        for (; c + W <= dv; c += W) unpacked_sum_cols<1>(p, lo, hi, alpha, runs, num_runs, stride, c, skip_zero, acc + c);
        for (; c < dv; ++c) {
            T sum = T(0);
            for (int64_t i = 0; i < num_runs; ++i) {
                const Run<S>& run = runs[i];
                for (int64_t j = std::max(lo, run.j0); j < std::min(hi, run.j0 + run.n); ++j) {
                    if (skip_zero && p[j] == T(0)) continue;
                    const T pj = run.scale ? p[j] * run.scale[j - run.j0] : p[j];
                    sum += pj * Storage<S>::widen(run.v[(j - run.j0) * stride + c]);
                }
            }
            acc[c] = acc[c] * alpha + sum;
        }
    }

    // unpacked_sum for R rows that see the same keys [lo, hi) (decoding: the
    // query heads of a GQA group), without zero skipping: each value vector
    // is loaded (and widened) once for all R rows. Row r's weights are
    // p[r·p_stride + j], its accumulator acc + r·acc_stride; each row's sum is
    // the one unpacked_sum forms, term by term.
    template <int R, class S>
    static void unpacked_sum_rows(const T* p, int64_t p_stride, int64_t lo, int64_t hi, const T* alpha,
                                  const Run<S>* runs, int64_t num_runs, int64_t stride, int64_t dv, T* acc,
                                  int64_t acc_stride) {
        constexpr int kCols = V::registers >= 32 ? 4 : 2;  // R·kCols + kCols + 1 registers, R <= 6
        int64_t c = 0;
        for (; c + kCols * W <= dv; c += kCols * W)
            sum_rows_cols<R, kCols>(p, p_stride, lo, hi, alpha, runs, num_runs, stride, c, acc + c, acc_stride);
        for (; c + W <= dv; c += W)
            sum_rows_cols<R, 1>(p, p_stride, lo, hi, alpha, runs, num_runs, stride, c, acc + c, acc_stride);
        for (int r = 0; c < dv && r < R; ++r)  // the last columns, row by row as unpacked_sum does
            for (int64_t cc = c; cc < dv; ++cc) {
                T sum = T(0);
                for (const Run<S>* run = runs; run < runs + num_runs; ++run)
                    for (int64_t j = std::max(lo, run->j0); j < std::min(hi, run->j0 + run->n); ++j) {
                        const T pj = run->scale ? p[r * p_stride + j] * run->scale[j - run->j0] : p[r * p_stride + j];
                        sum += pj * Storage<S>::widen(run->v[(j - run->j0) * stride + cc]);
                    }
                acc[r * acc_stride + cc] = acc[r * acc_stride + cc] * alpha[r] + sum;
            }
    }

private:
    template <int R, int N, int64_t kAr, int64_t kAi, bool kSkipZero>
    FASTATTN_TILE static void weighted_sum_cols(const T* a, int64_t lo, int64_t hi, const T* alpha, const T* b, T* c,
                                  int64_t c_stride) {
        static_assert(!kSkipZero || R == 1, "zero skipping is per row");
        reg acc[R][N];  // this call's terms alone (see "Blocked sums" above)
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < N; ++n) acc[r][n] = V::zero();
        for (int64_t i = lo; i < hi; ++i) {
            if (kSkipZero && a[i * kAi] == T(0)) continue;
            reg vals[N];
            for (int n = 0; n < N; ++n) vals[n] = V::load(b + i * N * W + n * W);  // panel rows are N vectors
            for (int r = 0; r < R; ++r) {
                const reg ar = V::set1(a[r * kAr + i * kAi]);
                for (int n = 0; n < N; ++n) acc[r][n] = V::fma(ar, vals[n], acc[r][n]);
            }
        }
        for (int r = 0; r < R; ++r) {
            const reg scale = V::set1(alpha ? alpha[r] : T(1));
            for (int n = 0; n < N; ++n)
                V::store(c + r * c_stride + n * W, V::fma(V::load(c + r * c_stride + n * W), scale, acc[r][n]));
        }
    }

    template <int R, int N, class S>
    static void sum_rows_cols(const T* p, int64_t p_stride, int64_t lo, int64_t hi, const T* alpha,
                              const Run<S>* runs, int64_t num_runs, int64_t stride, int64_t c, T* acc,
                              int64_t acc_stride) {
        reg out[R][N];  // this block's terms alone
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < N; ++n) out[r][n] = V::zero();
        for (const Run<S>* run = runs; run < runs + num_runs; ++run) {
            const int64_t first = std::max(lo, run->j0) - run->j0, last = std::min(hi, run->j0 + run->n) - run->j0;
            const T* pr = p + run->j0;
            const S* v = run->v + c;
            for (int64_t i = first; i < last; ++i) {
                reg vals[N];
                for (int n = 0; n < N; ++n) vals[n] = Storage<S>::load(v + i * stride + n * W);
                for (int r = 0; r < R; ++r) {
                    const T w = run->scale ? pr[r * p_stride + i] * run->scale[i] : pr[r * p_stride + i];
                    const reg pj = V::set1(w);
                    for (int n = 0; n < N; ++n) out[r][n] = V::fma(pj, vals[n], out[r][n]);
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            const reg scale = V::set1(alpha[r]);
            for (int n = 0; n < N; ++n)
                V::store(acc + r * acc_stride + n * W, V::fma(V::load(acc + r * acc_stride + n * W), scale, out[r][n]));
        }
    }

    template <int R, int J, class S>
    static void unpacked_dots(const T* a, int64_t depth, const S* k, int64_t stride, int64_t j0, T* out,
                              int64_t out_stride, const T* row_scale) {
        reg dot[R][J];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < J; ++j) dot[r][j] = V::zero();
        int64_t c = 0;
        for (; c + W <= depth; c += W) {
            reg keys[J];
            for (int j = 0; j < J; ++j) keys[j] = Storage<S>::load(k + (j0 + j) * stride + c);
            for (int r = 0; r < R; ++r) {
                const reg ac = V::load(a + r * depth + c);
                for (int j = 0; j < J; ++j) dot[r][j] = V::fma(ac, keys[j], dot[r][j]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < J; ++j) {
                T sum = V::reduce_add(dot[r][j]);
                for (int64_t t = c; t < depth; ++t) sum += a[r * depth + t] * Storage<S>::widen(k[(j0 + j) * stride + t]);
                out[r * out_stride + j0 + j] = row_scale ? sum * row_scale[j0 + j] : sum;
            }
    }

    template <int N, class S>
    static void unpacked_sum_cols(const T* p, int64_t lo, int64_t hi, T alpha, const Run<S>* runs, int64_t num_runs,
                                  int64_t stride, int64_t c, bool skip_zero, T* acc) {
        reg out[N];  // this block's terms alone
        for (int n = 0; n < N; ++n) out[n] = V::zero();
        for (const Run<S>* run_ptr = runs; run_ptr < runs + num_runs; ++run_ptr) {
            const Run<S>& run = *run_ptr;
            // Keys j = run.j0 + i of the run, i in [first, last): its rows from run.v.
            const int64_t first = std::max(lo, run.j0) - run.j0, last = std::min(hi, run.j0 + run.n) - run.j0;
            const T* pr = p + run.j0;
            const S* v = run.v + c;
            if (run.scale) {
                for (int64_t i = first; i < last; ++i) {
                    if (skip_zero && pr[i] == T(0)) continue;
                    const reg pj = V::set1(pr[i] * run.scale[i]);
                    for (int n = 0; n < N; ++n) out[n] = V::fma(pj, Storage<S>::load(v + i * stride + n * W), out[n]);
                }
                continue;
            }
            for (int64_t i = first; i < last; ++i) {
                if (skip_zero && pr[i] == T(0)) continue;
                const reg pj = V::set1(pr[i]);
                for (int n = 0; n < N; ++n) out[n] = V::fma(pj, Storage<S>::load(v + i * stride + n * W), out[n]);
            }
        }
        const reg scale = V::set1(alpha);
        for (int n = 0; n < N; ++n) V::store(acc + n * W, V::fma(V::load(acc + n * W), scale, out[n]));
    }
};

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
