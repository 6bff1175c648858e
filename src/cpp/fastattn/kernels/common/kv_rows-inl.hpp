// Where the key and value rows of one (batch, K/V head) are: dense
// (batch, hkv, lk, ·) arrays, or the blocks of a paged cache read through a
// block table (api.hpp, PagedKv; fastattn.KVCache), int8 ones with a float32
// scale per row. for_each_run hands out the rows of a key range as runs of
// contiguous rows — one run for dense K/V, one per block of a paged cache —
// so that a pass that takes its rows run by run computes exactly what it
// computes over the dense, gathered K/V.
#pragma once

#include <algorithm>
#include <cstdint>

#include "storage-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

template <class K>
struct KvRows {
    using T = ComputeType<K>;
    const K* k;
    const K* v;                      // dense: row 0 of this (b, h_kv); paged: the pools at head h_kv
    const int32_t* table = nullptr;  // paged: this sequence's block ids
    const T* k_scale = nullptr;      // int8: the scales at head h_kv
    const T* v_scale = nullptr;

    static KvRows of(const AttentionArgs& a, int64_t b, int64_t h_kv) {
        const K* k = static_cast<const K*>(a.k) + h_kv * a.k_strides.head;
        const K* v = static_cast<const K*>(a.v) + h_kv * a.v_strides.head;
        const PagedKv& pages = a.paged;
        if (!pages.table) return {k + b * a.k_strides.batch, v + b * a.v_strides.batch};
        const int64_t scales_at = h_kv * pages.block_size;
        return {k, v, pages.table + b * pages.table_width,
                pages.k_scale ? reinterpret_cast<const T*>(pages.k_scale) + scales_at : nullptr,
                pages.v_scale ? reinterpret_cast<const T*>(pages.v_scale) + scales_at : nullptr};
    }

    // f(j, n, k_rows, v_rows, k_scales, v_scales) for each run of keys
    // [j, j + n) stored contiguously that together make up keys [j0, j1), in
    // order; the scales are null unless int8.
    template <class F>
    void for_each_run(const AttentionArgs& a, int64_t j0, int64_t j1, F&& f) const {
        const int64_t k_row = a.k_strides.row, v_row = a.v_strides.row;
        if (!table) {
            if (j0 < j1) f(j0, j1 - j0, k + j0 * k_row, v + j0 * v_row, nullptr, nullptr);
            return;
        }
        const int64_t size = a.paged.block_size, scale_block = a.hkv * size;
        for (int64_t j = j0; j < j1;) {
            const int64_t block = table[j / size], row = j % size, n = std::min(size - row, j1 - j);
            const int64_t scale_at = block * scale_block + row;
            f(j, n, k + block * a.k_strides.batch + row * k_row, v + block * a.v_strides.batch + row * v_row,
              k_scale ? k_scale + scale_at : nullptr, v_scale ? v_scale + scale_at : nullptr);
            j += n;
        }
    }
};

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
