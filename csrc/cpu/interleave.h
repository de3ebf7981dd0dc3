// shuffle(cat(a, b), 2) of pixel-major rows: a's channel j lands in channel 2j, b's in 2j + 1,
// and its inverse. Shared by the interleave ops (interleave_kernel.cpp), the fused V2 unit
// (shuffle_unit_v2_kernel.cpp, per chunk of branch outputs) and the 1x1 conv's interleaved
// output (conv1x1_shuffle_kernel.cpp, per GEMM tile: the conv's output
// tile and the passthrough a written together, one pass over the output's cache lines).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SHUFFLENET_OPS_HAVE_AVX512_INTERLEAVE 1
#endif

namespace shufflenet_ops::cpu {

// y[p, 2j] = a[p * a_pixel + j], y[p, 2j + 1] = b[p * b_pixel + j] for j < half, pixels p
// (y's pixels 2 * half apart).
template <typename T>
inline void interleave_pixels(int64_t pixels, int64_t half, const T* a, int64_t a_pixel, const T* b, int64_t b_pixel,
                       T* y) {
  for (int64_t p = 0; p < pixels; ++p) {
    const T* ap = a + p * a_pixel;
    const T* bp = b + p * b_pixel;
    T* yp = y + p * 2 * half;
    for (int64_t j = 0; j < half; ++j) {
      yp[2 * j] = ap[j];
      yp[2 * j + 1] = bp[j];
    }
  }
}

#ifdef SHUFFLENET_OPS_HAVE_AVX512_INTERLEAVE
// 16 channels of each source per step: two permutes make 32 interleaved outputs.
__attribute__((target("avx512f"))) inline void interleave_pixels_avx512(int64_t pixels, int64_t half, const float* a,
                                                                 int64_t a_pixel, const float* b, int64_t b_pixel,
                                                                 float* y) {
  const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* ap = a + p * a_pixel;
    const float* bp = b + p * b_pixel;
    float* yp = y + p * 2 * half;
    for (int64_t j = 0; j < half; j += 16) {
      const int64_t lanes = std::min<int64_t>(16, half - j);
      const __mmask16 in = lanes == 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << lanes) - 1u);
      const __m512 va = _mm512_maskz_loadu_ps(in, ap + j), vb = _mm512_maskz_loadu_ps(in, bp + j);
      const int64_t out = 2 * lanes;  // outputs of this step: the first `out` of the 32
      const __mmask16 first = out >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << out) - 1u);
      const __mmask16 second = out >= 32 ? __mmask16(0xFFFF)
                               : out > 16 ? static_cast<__mmask16>((1u << (out - 16)) - 1u)
                                          : __mmask16(0);
      _mm512_mask_storeu_ps(yp + 2 * j, first, _mm512_permutex2var_ps(va, low, vb));
      _mm512_mask_storeu_ps(yp + 2 * j + 16, second, _mm512_permutex2var_ps(va, high, vb));
    }
  }
}
#endif

// The inverse for one pixel row: even[j] = y[2j], odd[j] = y[2j + 1] for j < pairs.
template <typename T>
inline void deinterleave_row(int64_t pairs, const T* y, T* even, T* odd) {
  for (int64_t j = 0; j < pairs; ++j) {
    even[j] = y[2 * j];
    odd[j] = y[2 * j + 1];
  }
}

#ifdef SHUFFLENET_OPS_HAVE_AVX512_INTERLEAVE
// 16 pairs per step: two loads, two permutes.
__attribute__((target("avx512f"))) inline void deinterleave_row_avx512(int64_t pairs, const float* y, float* even,
                                                                       float* odd) {
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t j = 0; j < pairs; j += 16) {
    const int64_t lanes = std::min<int64_t>(16, pairs - j), in = 2 * lanes;
    const __mmask16 out = lanes == 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << lanes) - 1u);
    const __mmask16 first = in >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << in) - 1u);
    const __mmask16 second = in >= 32 ? __mmask16(0xFFFF)
                             : in > 16 ? static_cast<__mmask16>((1u << (in - 16)) - 1u)
                                       : __mmask16(0);
    const __m512 v0 = _mm512_maskz_loadu_ps(first, y + 2 * j), v1 = _mm512_maskz_loadu_ps(second, y + 2 * j + 16);
    _mm512_mask_storeu_ps(even + j, out, _mm512_permutex2var_ps(v0, evens, v1));
    _mm512_mask_storeu_ps(odd + j, out, _mm512_permutex2var_ps(v0, odds, v1));
  }
}
#endif

template <typename T>
inline void deinterleave(int64_t pairs, const T* y, T* even, T* odd, bool vector) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_INTERLEAVE
  if constexpr (std::is_same_v<T, float>) {
    if (vector) return deinterleave_row_avx512(pairs, y, even, odd);
  }
#endif
  deinterleave_row(pairs, y, even, odd);
}

template <typename T>
inline void interleave(int64_t pixels, int64_t half, const T* a, int64_t a_pixel, const T* b, int64_t b_pixel, T* y,
                bool vector) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_INTERLEAVE
  if constexpr (std::is_same_v<T, float>) {
    if (vector) return interleave_pixels_avx512(pixels, half, a, a_pixel, b, b_pixel, y);
  }
#endif
  interleave_pixels(pixels, half, a, a_pixel, b, b_pixel, y);
}

}  // namespace shufflenet_ops::cpu
