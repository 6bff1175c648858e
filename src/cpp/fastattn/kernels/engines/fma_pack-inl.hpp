// Packing of the FMA engine's operands (fma_tiles-inl.hpp), used by both
// passes through FmaEngine (fma-inl.hpp): rows of the storage arrays (any row stride, last axis contiguous,
// 16-bit formats widened) copied once per block into the layouts the tiles
// walk front to back.
//   pack_plain_rows  plain rows, zero-padded (an A operand)
//   pack_transposed  keys × depth transposed into panels of Tiles::kKeys keys:
//                    dst[g][c][w] = src[g·kKeys + w][c] (score_tile's B). A plain
//                    [c][j] layout would stride by the block's width, and at
//                    D = 128 its lines would fight over a few L1 sets.
//   pack_panels      rows × cols in column panels one tile wide, panel c0 at
//                    dst + c0·rows_cap, row r at + r·width (weighted_sum's B)
// and all_finite, which tells whether a packed operand may meet a weight of 0
// in a tile (0·NaN = NaN would leak into rows that cannot see it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../common/storage-inl.hpp"
#include "../common/transpose-inl.hpp"
#include "fma_tiles-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// dst[r][c] = src[r·stride + c]·factor for c < cols, zero up to cols_pad.
template <class S>
void pack_plain_rows(const S* src, int64_t stride, int64_t rows, int64_t cols, int64_t cols_pad,
                     ComputeType<S> factor, ComputeType<S>* dst) {
    using T = ComputeType<S>;
    for (int64_t r = 0; r < rows; ++r) {
        T* d = dst + r * cols_pad;
        widen_row(src + r * stride, cols, factor, d);
        std::fill(d + cols, d + cols_pad, T(0));
    }
}

// pack_transposed's keys W at a time when the first starts a vector (W divides
// kKeys: a group never straddles two panels): W features of W keys transposed in
// registers (common/transpose-inl.hpp) and stored a vector at a time. A last
// group of fewer keys stores zeros in the lanes past them, where the block's
// zero tail belongs (a caller packing a later run of keys there writes it
// afterwards). Each value is widened and times its row's scale as widen_row
// does: the same bits as key by key. Returns the keys it packed (0 or all).
template <class S>
int64_t pack_key_groups(const S* src, int64_t stride, int64_t keys, int64_t depth, ComputeType<S>* dst, int64_t j0,
                        const ComputeType<S>* row_scale) {
    using T = ComputeType<S>;
    using V = Vec<T>;
    constexpr int64_t W = V::width, kKeys = Tiles<T>::kKeys;
    if (j0 % W != 0) return 0;  // a run that starts inside a vector (a paged cache's later run): key by key
    for (int64_t j = 0; j < keys; j += W) {
        const int64_t n = std::min(W, keys - j);
        T* d = dst + (j0 + j) / kKeys * depth * kKeys + (j0 + j) % kKeys;
        int64_t c = 0;
        for (; c + W <= depth; c += W) {
            typename V::reg x[W];
            for (int64_t i = 0; i < W; ++i) {
                x[i] = i < n ? Storage<S>::load(src + (j + i) * stride + c) : V::zero();
                if (row_scale && i < n) x[i] = V::mul(x[i], V::set1(row_scale[j + i]));
            }
            transpose_block(x);
            for (int64_t i = 0; i < W; ++i) V::store(d + (c + i) * kKeys, x[i]);
        }
        for (; c < depth; ++c)  // the features past the last whole vector
            for (int64_t i = 0; i < n; ++i) {
                const T x = Storage<S>::widen(src[(j + i) * stride + c]);
                d[c * kKeys + i] = row_scale ? x * row_scale[j + i] : x;
            }
    }
    return keys;
}

// Keys [0, keys) of src (row stride `stride`, `depth` features) transposed
// into panels at key positions [j0, j0 + keys); positions [j0 + keys, j0 +
// keys_pad) are zero, so that their scores are finite (and then masked), never
// NaN from uninitialised memory (j0 + keys_pad is a whole number of vectors:
// the forward pads to what its score products read, E::kScoreUnit; the
// backward and the tests to whole panels). row_scale (int8 keys): key j's
// values are widened times row_scale[j].
template <class S>
void pack_transposed(const S* src, int64_t stride, int64_t keys, int64_t keys_pad, int64_t depth,
                     ComputeType<S>* dst, ComputeType<S>* scratch, int64_t j0 = 0,
                     const ComputeType<S>* row_scale = nullptr) {
    using T = ComputeType<S>;
    constexpr int64_t kKeys = Tiles<T>::kKeys;
    // The zero tail a panel's feature row at a time, a vector at a time (key by key, each
    // zero is a store to another line: 48 keys × 32 features of scalar stores made a
    // 16-token call 2x slower on AVX-512). It runs to j0 + keys_pad, not to its panel's
    // end (zeroing 48 unread keys × 32 features was a fifth of a 16-token call); the keys
    // before it in its first vector (this call's, or an earlier call's: j0 > 0) are kept.
    if (keys < keys_pad) {
        using V = Vec<T>;
        constexpr int64_t W = V::width;
        alignas(64) T lane[W];
        for (int64_t i = 0; i < W; ++i) lane[i] = static_cast<T>(i);
        const int64_t pos = j0 + keys, at = pos % kKeys, v0 = at / W * W;
        const typename V::reg keep = V::set1(static_cast<T>(at - v0)), index = V::load(lane);
        const int64_t end = j0 + keys_pad;
        for (int64_t p = pos / kKeys; p * kKeys < end; ++p) {
            const int64_t from = p == pos / kKeys ? v0 : 0;  // later panels: from their start
            const int64_t to = std::min(kKeys, end - p * kKeys);
            T* d = dst + p * depth * kKeys;
            for (int64_t c = 0; c < depth; ++c, d += kKeys) {
                int64_t j = from;
                if (p == pos / kKeys && at > v0) {  // lanes below `at` keep their keys
                    V::store(d + j, V::select_lt(index, keep, V::load(d + j), V::zero()));
                    j += W;
                }
                for (; j < to; j += W) V::store(d + j, V::zero());
            }
        }
    }
    int64_t j = 0;
    if constexpr (std::is_same<T, float>::value && kTransposeWidth == Vec<T>::width && kKeys % Vec<T>::width == 0)
        j = pack_key_groups(src, stride, keys, depth, dst, j0, row_scale);
    for (; j < keys; ++j) {
        T* d = dst + (j0 + j) / kKeys * depth * kKeys + (j0 + j) % kKeys;
        const S* s = src + j * stride;
        const T* row = reinterpret_cast<const T*>(s);
        if (!std::is_same<S, T>::value || row_scale) {
            widen_row(s, depth, row_scale ? row_scale[j] : T(1), scratch);
            row = scratch;
        }
        for (int64_t c = 0; c < depth; ++c) d[c * kKeys] = row[c];
    }
}

// rows × cols of src (row stride `stride`), widened and times `factor` (or,
// for int8 rows, times row_scale[r]), into column panels of rows_cap rows at
// rows [r0, r0 + rows) (columns past cols are zero); when rows_out is given,
// also row by row at stride cols. scratch holds cols_pad values.
template <class S>
void pack_panels(const S* src, int64_t stride, int64_t rows, int64_t cols, int64_t cols_pad, int64_t rows_cap,
                 ComputeType<S> factor, ComputeType<S>* dst, ComputeType<S>* rows_out, ComputeType<S>* scratch,
                 int64_t r0 = 0, const ComputeType<S>* row_scale = nullptr) {
    using T = ComputeType<S>;
    std::fill(scratch + cols, scratch + cols_pad, T(0));
    for (int64_t r = 0; r < rows; ++r) {
        widen_row(src + r * stride, cols, row_scale ? row_scale[r] : factor, scratch);
        if (rows_out) std::copy(scratch, scratch + cols, rows_out + (r0 + r) * cols);
        for (int64_t c0 = 0; c0 < cols_pad;) {
            const int64_t w = Tiles<T>::panel_width(c0, cols_pad);
            std::copy(scratch + c0, scratch + c0 + w, dst + c0 * rows_cap + (r0 + r) * w);
            c0 += w;
        }
    }
}

// False if a NaN or inf is among rows [0, rows) of column panels of rows_cap
// rows (x·0 is 0 for finite x and NaN otherwise: one pass, no branches).
template <class T>
bool all_finite(const T* panels, int64_t rows, int64_t rows_cap, int64_t cols_pad) {
    using V = Vec<T>;
    typename V::reg acc = V::zero();
    const typename V::reg zero = V::zero();
    for (int64_t c0 = 0; c0 < cols_pad; c0 += Tiles<T>::panel_width(c0, cols_pad)) {
        const T* p = panels + c0 * rows_cap;
        for (int64_t i = 0; i < rows * Tiles<T>::panel_width(c0, cols_pad); i += V::width)
            acc = V::add(acc, V::mul(V::load(p + i), zero));
    }
    return V::reduce_add(acc) == T(0);
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
