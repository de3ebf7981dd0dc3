// relu(pool3x3(x)) with stride 2 and padding 1, one output row at a time, on pixel-major
// (channels_last-like) data: every output pixel is the max or the average of up to 9 rows of
// channels. Shared by the pool ops (pool3x3_relu_kernel.cpp) and the stride-2 ShuffleNet
// unit's shortcut (shuffle_unit_kernel.cpp), which writes it into part of a wider pixel.
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "relu.h"
#include "small_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SHUFFLENET_OPS_HAVE_AVX512_POOL 1
#endif

namespace shufflenet_ops::cpu {

constexpr int64_t kPoolKernel = 3, kPoolStride = 2, kPoolPad = 1;

inline int64_t pooled_size(int64_t size) { return (size + 2 * kPoolPad - kPoolKernel) / kPoolStride + 1; }

// One image's pixels: pixel (ih, iw) of channel k at data[(ih * w + iw) * pixel_stride + k].
template <typename scalar_t>
struct PixelImage {
  const scalar_t* data;
  int64_t h, w, channels, pixel_stride;
};

#ifdef SHUFFLENET_OPS_HAVE_AVX512_POOL
// 16 channels per vector: the window's max (or sum) and the ReLU in registers. NaN propagates
// as in aten: a NaN anywhere in a max window makes the output NaN.
template <bool kMax>
__attribute__((target("avx512f"))) void pool_row_avx512(const PixelImage<float>& in, int64_t r, int64_t ow,
                                                        float* out_row, int64_t out_pixel_stride) {
  const int64_t c = in.channels;
  const __m512 window = _mm512_set1_ps(static_cast<float>(kPoolKernel * kPoolKernel));
  for (int64_t q = 0; q < ow; ++q) {
    float* px = out_row + q * out_pixel_stride;
    for (int64_t k0 = 0; k0 < c; k0 += 16) {
      const __mmask16 lanes = c - k0 >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (c - k0)) - 1u);
      __m512 acc = kMax ? _mm512_set1_ps(-std::numeric_limits<float>::infinity()) : _mm512_setzero_ps();
      __mmask16 nan = 0;
      for (int64_t dh = 0; dh < kPoolKernel; ++dh) {
        const int64_t ih = r * kPoolStride - kPoolPad + dh;
        if (ih < 0 || ih >= in.h) continue;
        for (int64_t dw = 0; dw < kPoolKernel; ++dw) {
          const int64_t iw = q * kPoolStride - kPoolPad + dw;
          if (iw < 0 || iw >= in.w) continue;
          const __m512 v = _mm512_maskz_loadu_ps(lanes, in.data + (ih * in.w + iw) * in.pixel_stride + k0);
          if constexpr (kMax) {
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            acc = _mm512_max_ps(acc, v);
          } else {
            acc = _mm512_add_ps(acc, v);
          }
        }
      }
      if constexpr (kMax) {
        acc = _mm512_mask_blend_ps(nan, acc, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
      } else {
        acc = _mm512_div_ps(acc, window);  // padding counted: always /9
      }
      _mm512_mask_storeu_ps(px + k0, lanes, relu_ps(acc));  // NaN stays NaN (relu.h)
    }
  }
}
#endif

// Output row r (ow pixels, `in.channels` channels each, out_pixel_stride apart) of
// relu(pool3x3s2(image)). Any dtype; float32 on AVX-512 CPUs takes the vector kernel.
template <bool kMax, typename scalar_t>
void pool3x3s2_relu_row(const PixelImage<scalar_t>& in, int64_t r, int64_t ow, scalar_t* out_row,
                        int64_t out_pixel_stride) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_POOL
  if constexpr (std::is_same_v<scalar_t, float>) {
    static const bool avx512 = small_gemm_available();
    if (avx512) return pool_row_avx512<kMax>(in, r, ow, out_row, out_pixel_stride);
  }
#endif
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> acc(in.channels);
  for (int64_t q = 0; q < ow; ++q) {
    std::fill(acc.begin(), acc.end(), kMax ? -std::numeric_limits<acc_t>::infinity() : acc_t(0));
    for (int64_t dh = 0; dh < kPoolKernel; ++dh) {
      const int64_t ih = r * kPoolStride - kPoolPad + dh;
      if (ih < 0 || ih >= in.h) continue;  // padding: -inf for max, 0 for the average
      for (int64_t dw = 0; dw < kPoolKernel; ++dw) {
        const int64_t iw = q * kPoolStride - kPoolPad + dw;
        if (iw < 0 || iw >= in.w) continue;
        const scalar_t* row = in.data + (ih * in.w + iw) * in.pixel_stride;
        for (int64_t k = 0; k < in.channels; ++k) {
          const acc_t v = static_cast<acc_t>(row[k]);
          if constexpr (kMax) {
            acc[k] = (v > acc[k] || std::isnan(v)) ? v : acc[k];  // NaN propagates, as in aten
          } else {
            acc[k] += v;
          }
        }
      }
    }
    scalar_t* px = out_row + q * out_pixel_stride;
    // The average counts the padding (count_include_pad, nn.AvgPool2d's default): always /9.
    const acc_t scale = kMax ? acc_t(1) : acc_t(1) / acc_t(kPoolKernel * kPoolKernel);
    for (int64_t k = 0; k < in.channels; ++k) px[k] = static_cast<scalar_t>(relu(acc[k] * scale));
  }
}

}  // namespace shufflenet_ops::cpu
