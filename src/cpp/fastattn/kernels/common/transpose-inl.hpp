// Square blocks of 32-bit values transposed in registers, x[r][c] -> x[c][r]:
// 16 × 16 on AVX-512, 8 × 8 on AVX2. The packers use them where a layout turns
// rows into columns (K panels, AMX key groups): W values per store instead of
// one. kTransposeWidth is the block's side on this build, 0 where there is none
// (scalar, NEON: their packers go element by element).
#pragma once

#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int64_t kTransposeWidth = 16;

inline void transpose_16x16(__m512i x[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(x[i], x[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(x[i], x[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        x[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        x[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        x[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        x[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // Now x[4q + k] holds, in its 128-bit lane L, row (4L + k)'s words of columns 4q..4q+3.
    for (int k = 0; k < 4; ++k) {
        const __m512i a = _mm512_shuffle_i32x4(x[k], x[4 + k], 0x88);  // lanes 0, 2 of each
        const __m512i b = _mm512_shuffle_i32x4(x[k], x[4 + k], 0xdd);  // lanes 1, 3 of each
        const __m512i c = _mm512_shuffle_i32x4(x[8 + k], x[12 + k], 0x88);
        const __m512i d = _mm512_shuffle_i32x4(x[8 + k], x[12 + k], 0xdd);
        t[k] = _mm512_shuffle_i32x4(a, c, 0x88);       // row k: lane 0 of x[k], x[4+k], x[8+k], x[12+k]
        t[8 + k] = _mm512_shuffle_i32x4(a, c, 0xdd);   // row 8 + k: lane 2
        t[4 + k] = _mm512_shuffle_i32x4(b, d, 0x88);   // row 4 + k: lane 1
        t[12 + k] = _mm512_shuffle_i32x4(b, d, 0xdd);  // row 12 + k: lane 3
    }
    for (int i = 0; i < 16; ++i) x[i] = t[i];
}

inline void transpose_block(__m512 x[16]) {
    __m512i words[16];
    for (int i = 0; i < 16; ++i) words[i] = _mm512_castps_si512(x[i]);
    transpose_16x16(words);
    for (int i = 0; i < 16; ++i) x[i] = _mm512_castsi512_ps(words[i]);
}
#elif defined(__AVX2__)
constexpr int64_t kTransposeWidth = 8;

inline void transpose_block(__m256 x[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 8; i += 2) {  // t[i]: r0 r1 pairs of columns 0,1 | 4,5; t[i + 1]: of 2,3 | 6,7
        t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // s[i + c]: rows i..i+3 of column c | c + 4
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int c = 0; c < 4; ++c) {  // column c: rows 0..3 | rows 4..7; column c + 4 from the high lanes
        x[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
        x[c + 4] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
    }
}
#else
constexpr int64_t kTransposeWidth = 0;
#endif

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
