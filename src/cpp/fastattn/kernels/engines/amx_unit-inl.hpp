// The AMX tile unit, twice: AmxHardware issues the instructions (TILELOADD,
// TILESTORED, TILEZERO, TDPBF16PS, LDTILECFG, TILERELEASE), AmxModel carries
// each out in scalar C++ on a per-thread register file. The AMX engine
// (amx-inl.hpp) is written once against either; the amx ISA runs AmxSwitch
// (the hardware, or the model when a test asks: set_model_for_testing) and the
// amx_model ISA, compiled for AVX2, runs the model on every x86 machine.
//
// What the model computes is what the hardware was measured to compute, bit
// for bit (shared/MATRIX-ENGINES.md; tests/test_amx.py checks it again on
// random tiles and whole attention calls wherever AMX is present), which is
// not the SDM's pseudocode: for each element of C, two float32 chains from +0,
// one over the even elements of the 32 (16 pairs) it multiplies and one over
// the odd ones, then C += even + odd; every add rounded to nearest even; every
// subnormal input, product, chain value or result flushed to zero (DAZ, FTZ).
//
// Registers are numbered at compile time (the instructions encode them):
// load<t>(base, stride_bytes), store<t>, zero<t>, dpbf16<c, a, b>.
#pragma once

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// LDTILECFG's 64-byte operand (palette 1): each tile's rows and bytes per row.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Every tile register 16 rows × 64 bytes: the one shape the AMX engine uses (C: 16 × 16
// float32; A: 16 rows × 32 bf16; B: 16 pairs × 16 columns of bf16).
inline TileConfig full_tiles() {
    TileConfig config;
    for (int t = 0; t < 8; ++t) {
        config.colsb[t] = 64;
        config.rows[t] = 16;
    }
    return config;
}

struct AmxModel {
    static constexpr const char* kind = "model";
    struct Registers {
        uint8_t tile[8][16][64];
        TileConfig config;
    };
    static Registers& regs() {
        static thread_local Registers r;
        return r;
    }
    static void configure(const TileConfig& config) {
        regs().config = config;
        std::memset(regs().tile, 0, sizeof regs().tile);
    }
    static void release() { std::memset(regs().tile, 0, sizeof regs().tile); }
    template <int t>
    static void zero() {
        std::memset(regs().tile[t], 0, sizeof regs().tile[t]);
    }
    // Rows and bytes past the configured shape read as zero.
    template <int t>
    static void load(const void* base, int64_t stride) {
        const TileConfig& c = regs().config;
        zero<t>();
        for (int r = 0; r < c.rows[t]; ++r)
            std::memcpy(regs().tile[t][r], static_cast<const uint8_t*>(base) + r * stride, c.colsb[t]);
    }
    template <int t>
    static void store(void* base, int64_t stride) {
        const TileConfig& c = regs().config;
        for (int r = 0; r < c.rows[t]; ++r)
            std::memcpy(static_cast<uint8_t*>(base) + r * stride, regs().tile[t][r], c.colsb[t]);
    }
    // C (M × N float32) += A (M × K pairs of bf16) · B (K rows × N pairs of bf16), as measured;
    // a vector of columns at a time (the same roundings, lane by lane, as one at a time).
    template <int c, int a, int b>
    static void dpbf16() {
        using V = Vec<float>;
        constexpr int W = V::width;
        const TileConfig& cfg = regs().config;
        const int m_rows = cfg.rows[c], n_cols = cfg.colsb[c] / 4, k_pairs = cfg.colsb[a] / 4;
        alignas(64) float b_even[16][16], b_odd[16][16];  // B's elements 2n and 2n + 1 of row k, widened
        for (int k = 0; k < k_pairs; ++k)
            for (int n = 0; n < 16; ++n) {
                b_even[k][n] = n < n_cols ? bf16(b, k, 2 * n) : 0.0f;
                b_odd[k][n] = n < n_cols ? bf16(b, k, 2 * n + 1) : 0.0f;
            }
        for (int m = 0; m < m_rows; ++m)
            for (int n0 = 0; n0 < n_cols; n0 += W) {
                typename V::reg even = V::zero(), odd = V::zero();
                for (int k = 0; k < k_pairs; ++k) {
                    const typename V::reg a0 = V::set1(bf16(a, m, 2 * k)), a1 = V::set1(bf16(a, m, 2 * k + 1));
                    even = flush(V::add(even, flush(V::mul(a0, V::load(b_even[k] + n0)))));
                    odd = flush(V::add(odd, flush(V::mul(a1, V::load(b_odd[k] + n0)))));
                }
                alignas(64) float acc[16];
                std::memcpy(acc, regs().tile[c][m] + 4 * n0, 4 * W);
                const typename V::reg sum = flush(V::add(flush(V::load(acc)), flush(V::add(even, odd))));
                V::store(acc, sum);
                std::memcpy(regs().tile[c][m] + 4 * n0, acc, 4 * std::min(W, n_cols - n0));
            }
    }

private:
    static float flush(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }
    // Subnormal lanes to zeros of their sign (x·0 keeps the sign; NaN is not below the bound).
    static Vec<float>::reg flush(Vec<float>::reg x) {
        using V = Vec<float>;
        return V::select_lt(V::abs(x), V::set1(std::numeric_limits<float>::min()), V::mul(x, V::zero()), x);
    }
    // Element i (bf16) of row r of tile t, as float32 (DAZ).
    static float bf16(int t, int r, int i) {
        uint16_t bits;
        std::memcpy(&bits, regs().tile[t][r] + 2 * i, 2);
        const uint32_t wide = static_cast<uint32_t>(bits) << 16;
        float x;
        std::memcpy(&x, &wide, 4);
        return flush(x);
    }
};

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// The instructions encode their tile registers, and GCC's intrinsics take them as literal
// tokens: each register number below is a case of a switch on constants, folded away.
#define FASTATTN_TILE_CASES(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7)
#define FASTATTN_TDP_CASES(op) \
    op(0, 4, 5) op(1, 4, 5) op(2, 4, 5) op(3, 4, 5) op(0, 4, 6) op(1, 4, 6) op(2, 4, 6) op(3, 4, 6) \
    op(0, 7, 5) op(1, 7, 5) op(2, 7, 5) op(3, 7, 5) op(0, 7, 6) op(1, 7, 6) op(2, 7, 6) op(3, 7, 6)

struct AmxHardware {
    static constexpr const char* kind = "hardware";
    static void configure(const TileConfig& config) { _tile_loadconfig(&config); }
    static void release() { _tile_release(); }
    template <int t>
    static void zero() {
        switch (t) {
#define FASTATTN_ZERO(n) \
    case n: _tile_zero(n); return;
            FASTATTN_TILE_CASES(FASTATTN_ZERO)
#undef FASTATTN_ZERO
        }
    }
    template <int t>
    static void load(const void* base, int64_t stride) {
        switch (t) {
#define FASTATTN_LOAD(n) \
    case n: _tile_loadd(n, base, stride); return;
            FASTATTN_TILE_CASES(FASTATTN_LOAD)
#undef FASTATTN_LOAD
        }
    }
    template <int t>
    static void store(void* base, int64_t stride) {
        switch (t) {
#define FASTATTN_STORE(n) \
    case n: _tile_stored(n, base, stride); return;
            FASTATTN_TILE_CASES(FASTATTN_STORE)
#undef FASTATTN_STORE
        }
    }
    template <int c, int a, int b>
    static void dpbf16() {
        static_assert(c < 4 && (a == 4 || a == 7) && (b == 5 || b == 6), "add the registers to FASTATTN_TDP_CASES");
        switch (c * 64 + a * 8 + b) {
#define FASTATTN_TDP(c_, a_, b_) \
    case c_ * 64 + a_ * 8 + b_: _tile_dpbf16ps(c_, a_, b_); return;
            FASTATTN_TDP_CASES(FASTATTN_TDP)
#undef FASTATTN_TDP
        }
    }
};

// The hardware, or (tests only: the switch is set between calls, never during one) the model.
inline bool& amx_model_switch() {
    static bool model = false;
    return model;
}
struct AmxSwitch {
    static constexpr const char* kind = "switch";
    static bool model() { return amx_model_switch(); }
    static void configure(const TileConfig& c) { model() ? AmxModel::configure(c) : AmxHardware::configure(c); }
    static void release() { model() ? AmxModel::release() : AmxHardware::release(); }
    template <int t>
    static void zero() {
        model() ? AmxModel::zero<t>() : AmxHardware::zero<t>();
    }
    template <int t>
    static void load(const void* base, int64_t stride) {
        model() ? AmxModel::load<t>(base, stride) : AmxHardware::load<t>(base, stride);
    }
    template <int t>
    static void store(void* base, int64_t stride) {
        model() ? AmxModel::store<t>(base, stride) : AmxHardware::store<t>(base, stride);
    }
    template <int c, int a, int b>
    static void dpbf16() {
        model() ? AmxModel::dpbf16<c, a, b>() : AmxHardware::dpbf16<c, a, b>();
    }
};
#endif

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
