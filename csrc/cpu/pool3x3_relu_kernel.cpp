// CPU forward of relu(pool3x3(x)) with stride 2 and padding 1: the ShuffleNet stem's max
// pool (ReLU commutes with it) and the stride-2 units' average-pool shortcut (whose ReLU the
// concat applies). One pass: aten's channels_last max pool also writes an int64 index per
// output, and the ReLU is a second pass over the pooled tensor. Channels_last tensors take
// the kernel below (every output pixel is a max or sum of 9 contiguous channel rows); other
// layouts take aten's pool and ReLU.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "relu.h"
#include "small_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SHUFFLENET_OPS_HAVE_AVX512_POOL 1
#endif

namespace shufflenet_ops::cpu {
namespace {

constexpr int64_t kKernel = 3, kStride = 2, kPad = 1;

int64_t pooled_size(int64_t size) { return (size + 2 * kPad - kKernel) / kStride + 1; }

#ifdef SHUFFLENET_OPS_HAVE_AVX512_POOL
// One output row (batch item b, output row r) of float32 channels_last, 16 channels per
// vector: the max (or sum) of the window's up to 9 channel rows, then the ReLU, in registers.
// NaN propagates as in aten: a NaN anywhere in the window makes the output NaN.
template <bool kMax>
__attribute__((target("avx512f"))) void pool_row_avx512(const float* in, float* out_row, int64_t h, int64_t w,
                                                        int64_t c, int64_t b, int64_t r, int64_t ow) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 window = _mm512_set1_ps(static_cast<float>(kKernel * kKernel));
  for (int64_t q = 0; q < ow; ++q) {
    float* px = out_row + q * c;
    for (int64_t k0 = 0; k0 < c; k0 += 16) {
      const __mmask16 lanes = c - k0 >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (c - k0)) - 1u);
      __m512 acc = kMax ? _mm512_set1_ps(-std::numeric_limits<float>::infinity()) : zero;
      __mmask16 nan = 0;
      for (int64_t dh = 0; dh < kKernel; ++dh) {
        const int64_t ih = r * kStride - kPad + dh;
        if (ih < 0 || ih >= h) continue;
        for (int64_t dw = 0; dw < kKernel; ++dw) {
          const int64_t iw = q * kStride - kPad + dw;
          if (iw < 0 || iw >= w) continue;
          const __m512 v = _mm512_maskz_loadu_ps(lanes, in + ((b * h + ih) * w + iw) * c + k0);
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

template <typename scalar_t, bool kMax>
void pool_channels_last(const at::Tensor& x, at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = y.size(2), ow = y.size(3);
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* out = y.mutable_data_ptr<scalar_t>();
  // One task per output row (batch item, oh): each reads 3 input rows, in cache.
  at::parallel_for(0, n * oh, 1, [&](int64_t begin, int64_t end) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_POOL
    if constexpr (std::is_same_v<scalar_t, float>) {
      static const bool avx512 = small_gemm_available();
      if (avx512) {
        for (int64_t task = begin; task < end; ++task) {
          pool_row_avx512<kMax>(in, out + task * ow * c, h, w, c, task / oh, task % oh, ow);
        }
        return;
      }
    }
#endif
    std::vector<acc_t> acc(c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / oh, r = task % oh;
      for (int64_t q = 0; q < ow; ++q) {
        std::fill(acc.begin(), acc.end(), kMax ? -std::numeric_limits<acc_t>::infinity() : acc_t(0));
        for (int64_t dh = 0; dh < kKernel; ++dh) {
          const int64_t ih = r * kStride - kPad + dh;
          if (ih < 0 || ih >= h) continue;  // padding: -inf for max, 0 for the average
          for (int64_t dw = 0; dw < kKernel; ++dw) {
            const int64_t iw = q * kStride - kPad + dw;
            if (iw < 0 || iw >= w) continue;
            const scalar_t* row = in + ((b * h + ih) * w + iw) * c;
            for (int64_t k = 0; k < c; ++k) {
              const acc_t v = static_cast<acc_t>(row[k]);
              if constexpr (kMax) {
                acc[k] = (v > acc[k] || std::isnan(v)) ? v : acc[k];  // NaN propagates, as in aten
              } else {
                acc[k] += v;
              }
            }
          }
        }
        scalar_t* px = out + ((b * oh + r) * ow + q) * c;
        // The average counts the padding (count_include_pad, nn.AvgPool2d's default): always /9.
        const acc_t scale = kMax ? acc_t(1) : acc_t(1) / acc_t(kKernel * kKernel);
        for (int64_t k = 0; k < c; ++k) {
          const acc_t v = acc[k] * scale;
          px[k] = static_cast<scalar_t>(relu(v));
        }
      }
    }
  });
}

template <bool kMax>
at::Tensor pool3x3_stride2_relu(const at::Tensor& x, const char* op) {
  check_input(x, "x");
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, "shufflenet_ops ", op,
                    ": x must have a non-empty spatial size, got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) > 0, "shufflenet_ops ", op, ": x must have at least one channel, got ", x.sizes());
  if (!x.is_contiguous(at::MemoryFormat::ChannelsLast) || x.is_contiguous()) {
    // NCHW (and layouts that are both, e.g. one channel): aten's pool and ReLU.
    at::Tensor pooled = kMax ? at::max_pool2d(x, {kKernel, kKernel}, {kStride, kStride}, {kPad, kPad})
                             : at::avg_pool2d(x, {kKernel, kKernel}, {kStride, kStride}, {kPad, kPad});
    return at::relu_(pooled);
  }
  at::Tensor y = at::empty({x.size(0), x.size(1), pooled_size(x.size(2)), pooled_size(x.size(3))},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pool3x3_stride2_relu",
                                  [&] { pool_channels_last<scalar_t, kMax>(x, y); });
  return y;
}

at::Tensor max_pool3x3s2_relu(const at::Tensor& x) { return pool3x3_stride2_relu<true>(x, "max_pool3x3s2_relu"); }

at::Tensor avg_pool3x3s2_relu(const at::Tensor& x) { return pool3x3_stride2_relu<false>(x, "avg_pool3x3s2_relu"); }

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("max_pool3x3s2_relu", &max_pool3x3s2_relu);
  m.impl("avg_pool3x3s2_relu", &avg_pool3x3s2_relu);
}

}  // namespace shufflenet_ops::cpu
