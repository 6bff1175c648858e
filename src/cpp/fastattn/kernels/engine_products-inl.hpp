// One engine's products on given operands, through its own packing (api.hpp,
// ProductArgs): the hook tests/test_engines.py uses to compare every engine
// with a float64 reference on random tiles, tails, strides and odd sizes,
// apart from the passes. Included by entry-inl.hpp; not on any fast path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "common/storage-inl.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// The layouts the passes give weights: row-major with a key block's stride (the forward's
// P), transposed with a block's stride (the backward's Pᵀ, dSᵀ).
constexpr int64_t kProductTerms = 256;

inline AttentionArgs product_call(const ProductArgs& p) {
    AttentionArgs a;
    a.dtype = p.dtype;
    a.precision = p.precision;
    a.scale = p.scale;
    return a;
}

template <class S, class E>
void engine_scores(const ProductArgs& p) {
    using T = ComputeType<S>;
    const E engine(product_call(p));
    [[maybe_unused]] const typename E::ThreadScope scope;  // e.g. the tile configuration
    const int64_t keys_pad = (p.cols + E::kKeys - 1) / E::kKeys * E::kKeys;
    const int64_t rows_pad = (p.rows + E::kRows - 1) / E::kRows * E::kRows;  // whole tiles
    std::vector<typename E::ScorePacked> a(E::rows_size(rows_pad, p.depth)), b(E::keys_size(keys_pad, p.depth));
    std::vector<T> scratch(p.depth + 64), out(std::max<int64_t>(1, rows_pad) * keys_pad);
    const T scale = static_cast<T>(p.scale);
    engine.pack_rows(static_cast<const S*>(p.a), p.a_stride, p.rows, p.depth, scale, a.data());
    engine.pack_keys(static_cast<const S*>(p.b), p.b_stride, p.cols, keys_pad, p.depth, b.data(), scratch.data());
    for (int64_t r0 = 0; r0 < p.rows; r0 += E::kRows)
        E::with_rows(std::min(E::kRows, p.rows - r0), [&](auto rows) {
            engine.template score_tile<decltype(rows)::value>(a.data() + E::row_offset(r0, p.depth), p.depth,
                                                              b.data(), 0, keys_pad, engine.score_post(scale),
                                                              out.data() + r0 * keys_pad, keys_pad);
        });
    for (int64_t r = 0; r < p.rows; ++r)
        for (int64_t j = 0; j < p.cols; ++j) p.out[r * p.cols + j] = static_cast<float>(out[r * keys_pad + j]);
}

template <class S, class E>
void engine_sums(const ProductArgs& p) {
    using T = ComputeType<S>;
    if (p.depth > kProductTerms || p.rows > kProductTerms) throw std::invalid_argument("products: too many terms");
    const E engine(product_call(p));
    [[maybe_unused]] const typename E::ThreadScope scope;  // e.g. the tile configuration
    const int64_t cols_pad = E::cols_pad(p.cols), rows_cap = (p.depth + 31) / 32 * 32;
    const int64_t rows_pad = (p.rows + E::kRows - 1) / E::kRows * E::kRows;  // whole tiles
    std::vector<typename E::SumPacked> b(E::values_size(rows_cap, cols_pad) + 1);
    std::vector<T> scratch(cols_pad + 64), c(std::max<int64_t>(1, rows_pad) * cols_pad);
    engine.pack_values(static_cast<const S*>(p.b), p.b_stride, p.depth, p.cols, cols_pad, rows_cap, T(1), b.data(),
                       scratch.data());
    E::pad_values(b.data(), p.depth, rows_cap, cols_pad);
    std::vector<T> w(kProductTerms * kProductTerms), alpha(rows_pad, T(1));
    const float* a = static_cast<const float*>(p.a);
    for (int64_t r = 0; r < p.rows; ++r) {
        alpha[r] = static_cast<T>(p.alpha[r]);
        for (int64_t col = 0; col < p.cols; ++col) c[r * cols_pad + col] = static_cast<T>(p.out[r * p.cols + col]);
        for (int64_t i = 0; i < p.depth; ++i) {
            const T x = static_cast<T>(p.transposed ? a[i * p.a_stride + r] : a[r * p.a_stride + i]);
            (p.transposed ? w[i * kProductTerms + r] : w[r * kProductTerms + i]) = x;
        }
    }
    std::vector<typename E::SumPacked> prepared(E::weights_size(kProductTerms, kProductTerms) + 1);
    auto run = [&](const auto& weights) {
        if (p.skip_zero) {
            for (int64_t r = 0; r < p.rows; ++r)
                engine.template weighted_sum<1, true>(weights, r, p.lo, p.hi, alpha.data() + r, b.data(), rows_cap,
                                                      cols_pad, c.data() + r * cols_pad, cols_pad);
            return;
        }
        for (int64_t r0 = 0; r0 < p.rows; r0 += E::kRows)
            E::with_rows(std::min(E::kRows, p.rows - r0), [&](auto rows) {
                engine.template weighted_sum<decltype(rows)::value>(weights, r0, p.lo, p.hi, alpha.data() + r0,
                                                                    b.data(), rows_cap, cols_pad,
                                                                    c.data() + r0 * cols_pad, cols_pad);
            });
    };
    if (p.transposed)
        run(engine.template prepare_weights<1, kProductTerms>(w.data(), p.rows, p.lo, p.hi, prepared.data()));
    else
        run(engine.template prepare_weights<kProductTerms, 1>(w.data(), p.rows, p.lo, p.hi, prepared.data()));
    for (int64_t r = 0; r < p.rows; ++r)
        for (int64_t col = 0; col < p.cols; ++col) p.out[r * p.cols + col] = static_cast<float>(c[r * cols_pad + col]);
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
