// A 3x3 depthwise conv (padding 1, stride 1 or 2) + bias over rows of pixel-major buffers: the
// middle layer of the fused ShuffleNet unit (shuffle_unit_kernel.cpp), run on its bottleneck
// activations while they are in cache. Vectorised over channels (a pixel's channels are
// contiguous), so stride 2 costs no gathers and the 7x7 stage no masked lanes.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "small_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SHUFFLENET_OPS_HAVE_AVX512_DEPTHWISE 1
#endif

namespace shufflenet_ops::cpu {

// The conv's operands. Input pixel (ih, iw) of an image h x w, present for rows
// [in_row0, in_row0 + rows held) only: channel k at in[((ih - in_row0) * w + iw) * channels + k].
// taps: the weight as (9, channels), tap t = 3 * dy + dx; bias: (channels).
// Output pixel (r, q) of rows [r0, r1): channel k at out[((r - r0) * ow + q) * channels + k].
template <typename T>
struct Depthwise3x3 {
  const T* in;
  int64_t in_row0, h, w, channels;
  const T* taps;
  const T* bias;
  int64_t stride, ow;
};

#ifdef SHUFFLENET_OPS_HAVE_AVX512_DEPTHWISE
// One 16-channel slice at a time, its 9 taps and bias held in registers across every output
// pixel of the rows. Padding taps are skipped, as aten's conv does.
__attribute__((target("avx512f"))) inline void depthwise3x3_rows_avx512(const Depthwise3x3<float>& d, int64_t r0,
                                                                        int64_t r1, float* out) {
  const int64_t c = d.channels;
  for (int64_t k0 = 0; k0 < c; k0 += 16) {
    const __mmask16 lanes = c - k0 >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (c - k0)) - 1u);
    __m512 tap[9];
    for (int t = 0; t < 9; ++t) tap[t] = _mm512_maskz_loadu_ps(lanes, d.taps + t * c + k0);
    const __m512 bias = _mm512_maskz_loadu_ps(lanes, d.bias + k0);
    for (int64_t r = r0; r < r1; ++r) {
      float* out_row = out + (r - r0) * d.ow * c + k0;
      for (int64_t q = 0; q < d.ow; ++q) {
        __m512 acc = bias;
        for (int dy = 0; dy < 3; ++dy) {
          const int64_t ih = r * d.stride - 1 + dy;
          if (ih < 0 || ih >= d.h) continue;
          const float* in_row = d.in + (ih - d.in_row0) * d.w * c + k0;
          for (int dx = 0; dx < 3; ++dx) {
            const int64_t iw = q * d.stride - 1 + dx;
            if (iw < 0 || iw >= d.w) continue;
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, in_row + iw * c), tap[3 * dy + dx], acc);
          }
        }
        _mm512_mask_storeu_ps(out_row + q * c, lanes, acc);
      }
    }
  }
}
#endif

// A (channels, 1, 3, 3) depthwise weight (contiguous) as the (9, channels) taps the kernels
// load, 16 channels of a tap at once. A plain loop: an aten transpose + copy costs more host
// time than the copy itself (at most a few thousand elements).
template <typename T>
std::vector<T> tap_major(const T* per_channel, int64_t channels) {
  std::vector<T> taps(9 * channels);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t t = 0; t < 9; ++t) taps[t * channels + c] = per_channel[c * 9 + t];
  return taps;
}

// Output rows [r0, r1) into `out` (see Depthwise3x3). `vector`: use the AVX-512 kernel
// (float32 on a CPU that has it); otherwise portable loops.
template <typename T>
void depthwise3x3_rows(const Depthwise3x3<T>& d, int64_t r0, int64_t r1, T* out, bool vector) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_DEPTHWISE
  if constexpr (std::is_same_v<T, float>) {
    if (vector) return depthwise3x3_rows_avx512(d, r0, r1, out);
  }
#endif
  const int64_t c = d.channels;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t q = 0; q < d.ow; ++q) {
      T* px = out + ((r - r0) * d.ow + q) * c;
      for (int64_t k = 0; k < c; ++k) px[k] = d.bias[k];
      for (int dy = 0; dy < 3; ++dy) {
        const int64_t ih = r * d.stride - 1 + dy;
        if (ih < 0 || ih >= d.h) continue;
        for (int dx = 0; dx < 3; ++dx) {
          const int64_t iw = q * d.stride - 1 + dx;
          if (iw < 0 || iw >= d.w) continue;
          const T* in_px = d.in + ((ih - d.in_row0) * d.w + iw) * c;
          const T* tap = d.taps + (3 * dy + dx) * c;
          for (int64_t k = 0; k < c; ++k) px[k] += in_px[k] * tap[k];
        }
      }
    }
  }
}

}  // namespace shufflenet_ops::cpu
