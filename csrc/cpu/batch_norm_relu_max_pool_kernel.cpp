// CPU kernels of the ShuffleNet stem's tail in training (V1 and V2 alike):
//   out = relu(max_pool2d(batch_norm(x, batch statistics, weight, bias, eps), 3, stride 2, pad 1))
// and its backward (docs/design.md, "BatchNorm in training").
//
// aten runs this as BN (a statistics pass, then a write of the normalized tensor), ReLU, the
// max pool (which also writes an int64 index per output), and in backward a zero fill, the
// pool's scatter, the ReLU mask and BN's backward, each a pass over the full-resolution
// tensor: ~17 ms for a (16, 24, 112, 112) stem on 2 cores. Here the normalized tensor is
// never written: the forward reads x twice (statistics; then each pooling window is
// normalized in registers) and keeps each max's window offset (0..8, one byte); the backward
// reduces over the pooled gradient only, then writes dx in one pass, gathering each pixel's
// pooled gradient from the (at most 4) windows that hold it.
//
// The statistics and the BN backward's coefficients come from batch_norm.h (shared with the
// BN + ReLU op). Pixel-major (channels_last) data; other layouts are converted (a copy each
// way).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
// Before our code: no multiply-add contracted into an FMA, so the AVX-512 loops round as the
// portable loops do (which have no FMA on baseline x86-64) and both give the same results.
#include "fp_contract_off.h"
#include "batch_norm.h"
#include "pool3x3.h"
#include "prefetch.h"
#include "relu.h"

namespace shufflenet_ops::cpu {
namespace {

struct Shape {
  int64_t n, c, h, w, oh, ow;
  int64_t pixels() const { return n * h * w; }
  int64_t pooled_pixels() const { return n * oh * ow; }
};

Shape shape_of(const at::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), pooled_size(x.size(2)), pooled_size(x.size(3))};
}

// A pooling window's valid rows [h0, h1) and columns [w0, w1), and the window offset of (h0, w0).
struct Window {
  int64_t h0, h1, w0, w1, corner;
  Window(const Shape& s, int64_t r, int64_t q) {
    const int64_t top = r * kPoolStride - kPoolPad, left = q * kPoolStride - kPoolPad;
    h0 = std::max<int64_t>(top, 0), h1 = std::min(top + kPoolKernel, s.h);
    w0 = std::max<int64_t>(left, 0), w1 = std::min(left + kPoolKernel, s.w);
    corner = (h0 - top) * kPoolKernel + w0 - left;
  }
};

#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
// 16 window offsets (bytes) as int32 lanes; a tail reads only its own bytes.
SHUFFLENET_OPS_AVX512_BN inline __m512i load_offsets(const uint8_t* p, __mmask16 lanes) {
  return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(lanes, p));
}

// One output pixel: per channel the max of z = x * scale + offset over the window's valid
// positions (rows h0..h1, columns w0..w1 of the image, k0: the offset of (h0, w0)), its
// window offset, and relu(max) into out.
SHUFFLENET_OPS_AVX512_BN inline void pool_pixel_avx512(const float* image, int64_t w, int64_t c, int64_t h0, int64_t h1,
                                            int64_t w0, int64_t w1, int64_t k0, const float* scale,
                                            const float* offset, float* out, uint8_t* window) {
  for (int64_t j0 = 0; j0 < c; j0 += 16) {
    const __mmask16 lanes = lane_mask(c - j0);
    const __m512 a = _mm512_maskz_loadu_ps(lanes, scale + j0), b = _mm512_maskz_loadu_ps(lanes, offset + j0);
    __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512i arg = _mm512_set1_epi32(static_cast<int>(k0));
    for (int64_t ih = h0; ih < h1; ++ih) {
      for (int64_t iw = w0; iw < w1; ++iw) {
        // A multiply, then an add: as the portable loop rounds (fp-contract is off here).
        const __m512 z = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, image + (ih * w + iw) * c + j0), a), b);
        const __mmask16 take = _mm512_cmp_ps_mask(z, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q);
        best = _mm512_mask_blend_ps(take, best, z);
        arg = _mm512_mask_blend_epi32(take, arg, _mm512_set1_epi32(static_cast<int>(k0 + (ih - h0) * kPoolKernel + iw - w0)));
      }
    }
    _mm512_mask_storeu_ps(out + j0, lanes, relu_ps(best));
    _mm512_mask_cvtepi32_storeu_epi8(window + j0, lanes, arg);
  }
}
// The backward's sums over pooled pixels [first, last) of one image, per 16 channels, in
// double: dz (the gradient where the ReLU passed it) and dz * xhat, x gathered at each max.
// offsets[k]: the element offset of window position k from the window's corner.
SHUFFLENET_OPS_AVX512_BN void gradient_sums_avx512(const float* x_image, const float* grad, const float* out,
                                               const uint8_t* window, int64_t first, int64_t last, int64_t ow,
                                               int64_t w, int64_t c, const int32_t* offsets, const double* mean,
                                               const double* invstd, double* acc) {
  const __m512i table = _mm512_loadu_si512(offsets);  // 16 entries, the first 9 used
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t j0 = 0; j0 < c; j0 += 16) {
    const __mmask16 lanes = lane_mask(c - j0);
    const __mmask8 m0 = static_cast<__mmask8>(lanes), m1 = static_cast<__mmask8>(lanes >> 8);
    const __m512d mean0 = _mm512_maskz_loadu_pd(m0, mean + j0), mean1 = _mm512_maskz_loadu_pd(m1, mean + j0 + 8);
    const __m512d inv0 = _mm512_maskz_loadu_pd(m0, invstd + j0), inv1 = _mm512_maskz_loadu_pd(m1, invstd + j0 + 8);
    __m512d g0 = _mm512_setzero_pd(), g1 = g0, gx0 = g0, gx1 = g0;
    for (int64_t q = first; q < last; ++q) {
      const int64_t o = q * c + j0, r = q / ow, col = q % ow;
      const __mmask16 pass = _mm512_mask_cmp_ps_mask(lanes, _mm512_maskz_loadu_ps(lanes, out + o),
                                                     _mm512_setzero_ps(), _CMP_NLE_UQ);
      // Loads and the gather under the static lane mask (every offset is checked to be inside
      // the input): under `pass` they would wait for out's cache miss. Blocked lanes are left
      // out by the masked adds.
      const __m512 g = _mm512_maskz_loadu_ps(lanes, grad + o);
      const int32_t corner = static_cast<int32_t>(((r * kPoolStride - kPoolPad) * w + col * kPoolStride - kPoolPad) * c + j0);
      const __m512i index = _mm512_add_epi32(_mm512_permutexvar_epi32(load_offsets(window + o, lanes), table),
                                             _mm512_add_epi32(lane, _mm512_set1_epi32(corner)));
      const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, index, x_image, 4);
      const __mmask8 p0 = static_cast<__mmask8>(pass), p1 = static_cast<__mmask8>(pass >> 8);
      const __m512d d0 = low_pd(g), d1 = high_pd(g);
      g0 = _mm512_mask_add_pd(g0, p0, g0, d0), g1 = _mm512_mask_add_pd(g1, p1, g1, d1);
      const __m512d h0 = _mm512_mul_pd(_mm512_mul_pd(d0, _mm512_sub_pd(low_pd(xv), mean0)), inv0);
      const __m512d h1 = _mm512_mul_pd(_mm512_mul_pd(d1, _mm512_sub_pd(high_pd(xv), mean1)), inv1);
      gx0 = _mm512_mask_add_pd(gx0, p0, gx0, h0), gx1 = _mm512_mask_add_pd(gx1, p1, gx1, h1);
    }
    _mm512_mask_storeu_pd(acc + j0, m0, g0), _mm512_mask_storeu_pd(acc + j0 + 8, m1, g1);
    _mm512_mask_storeu_pd(acc + c + j0, m0, gx0), _mm512_mask_storeu_pd(acc + c + j0 + 8, m1, gx1);
  }
}

// dx of one input pixel from the windows (output rows r0..r1, columns q0..q1) that hold it:
// dz = the sum of their routed gradients, in output order, then dx = dz * k + x * a + b.
SHUFFLENET_OPS_AVX512_BN inline void grad_input_pixel_avx512(const float* grad, const float* out, const uint8_t* window,
                                                  int64_t ih, int64_t iw, int64_t r0, int64_t r1, int64_t q0,
                                                  int64_t q1, int64_t ow, int64_t c, const float* x, const float* k,
                                                  const float* a, const float* b, float* dx) {
  for (int64_t j0 = 0; j0 < c; j0 += 16) {
    const __mmask16 lanes = lane_mask(c - j0);
    __m512 dz = _mm512_setzero_ps();
    for (int64_t r = r0; r <= r1; ++r) {
      for (int64_t q = q0; q <= q1; ++q) {
        const int position = static_cast<int>((ih - (r * kPoolStride - kPoolPad)) * kPoolKernel + iw -
                                              (q * kPoolStride - kPoolPad));
        const int64_t o = (r * ow + q) * c + j0;
        const __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(lanes, load_offsets(window + o, lanes),
                                                           _mm512_set1_epi32(position));
        // Loads under the static lane mask, not under `hit` and `pass` (which would wait for
        // the window's and out's loads).
        const __mmask16 pass = _mm512_mask_cmp_ps_mask(hit, _mm512_maskz_loadu_ps(lanes, out + o), _mm512_setzero_ps(),
                                                       _CMP_NLE_UQ);
        dz = _mm512_mask_add_ps(dz, pass, dz, _mm512_maskz_loadu_ps(lanes, grad + o));
      }
    }
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(dz, _mm512_maskz_loadu_ps(lanes, k + j0)),
                                   _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x + j0), _mm512_maskz_loadu_ps(lanes, a + j0)));
    _mm512_mask_storeu_ps(dx + j0, lanes, _mm512_add_ps(t, _mm512_maskz_loadu_ps(lanes, b + j0)));
  }
}
constexpr int64_t kPixelsAhead = 16;

// Input row ih of one image (the per-pixel function above, inlined: one call per row).
SHUFFLENET_OPS_AVX512_BN void grad_input_row_avx512(const float* grad, const float* out, const uint8_t* window,
                                                int64_t ih, int64_t w, int64_t oh, int64_t ow, int64_t c,
                                                const float* x, const float* k, const float* a, const float* b,
                                                float* dx) {
  const int64_t r0 = ih / kPoolStride, r1 = std::min((ih + 1) / kPoolStride, oh - 1);
  for (int64_t iw = 0; iw < w; ++iw) {
    const int64_t q0 = iw / kPoolStride, q1 = std::min((iw + 1) / kPoolStride, ow - 1);
    // x is read once, from memory (the stem's input is the largest tensor of the step):
    // fetch it ahead of the loads, which otherwise stall this pass.
    if (iw + kPixelsAhead < w) prefetch_row(x + (iw + kPixelsAhead) * c, c);
    grad_input_pixel_avx512(grad, out, window, ih, iw, r0, r1, q0, q1, ow, c, x + iw * c, k, a, b, dx + iw * c);
  }
}

// Output row r of one image (the per-pixel function above, inlined: one call per row).
SHUFFLENET_OPS_AVX512_BN void pool_row_avx512(const float* image, const Shape& s, int64_t r, const float* scale,
                                          const float* offset, float* out, uint8_t* window) {
  for (int64_t q = 0; q < s.ow; ++q) {
    const Window win(s, r, q);
    pool_pixel_avx512(image, s.w, s.c, win.h0, win.h1, win.w0, win.w1, win.corner, scale, offset, out + q * s.c,
                      window + q * s.c);
  }
}
#endif

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                    at::Tensor& out, at::Tensor& mean_out, at::Tensor& var_out, at::Tensor& window_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Shape s = shape_of(x);
  const int64_t c = s.c;
  const bool vector = batch_norm_vectorized<scalar_t>();
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  std::vector<acc_t> scale, offset;
  batch_statistics(in, s.pixels(), c, weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), eps,
                   mean_out.mutable_data_ptr<scalar_t>(), var_out.mutable_data_ptr<scalar_t>(), scale, offset);
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  uint8_t* window = window_out.mutable_data_ptr<uint8_t>();
  // One task per output row (image, r): it reads 3 input rows.
  at::parallel_for(0, s.n * s.oh, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(c);
    std::vector<uint8_t> arg(c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task % s.oh;
      const scalar_t* image = in + (task / s.oh) * s.h * s.w * c;
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (vector) {
          pool_row_avx512(image, s, r, scale.data(), offset.data(), y + task * s.ow * c, window + task * s.ow * c);
          continue;
        }
      }
#endif
      for (int64_t q = 0; q < s.ow; ++q) {
        const Window win(s, r, q);
        const int64_t o = (task * s.ow + q) * c;
        // As aten's max pool: the first window position until a larger value or a NaN.
        std::fill(best.begin(), best.end(), -std::numeric_limits<acc_t>::infinity());
        std::fill(arg.begin(), arg.end(), static_cast<uint8_t>(win.corner));
        for (int64_t ih = win.h0; ih < win.h1; ++ih) {
          for (int64_t iw = win.w0; iw < win.w1; ++iw) {
            const auto k = static_cast<uint8_t>(win.corner + (ih - win.h0) * kPoolKernel + iw - win.w0);
            const scalar_t* px = image + (ih * s.w + iw) * c;
            for (int64_t j = 0; j < c; ++j) {
              const acc_t z = static_cast<acc_t>(px[j]) * scale[j] + offset[j];
              const bool take = z > best[j] || std::isnan(z);
              best[j] = take ? z : best[j];
              arg[j] = take ? k : arg[j];
            }
          }
        }
        for (int64_t j = 0; j < c; ++j) {
          y[o + j] = static_cast<scalar_t>(relu(best[j]));
          window[o + j] = arg[j];
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& mean_in, const at::Tensor& var_in, const at::Tensor& window_in,
                     const at::Tensor& out_in, double eps, at::Tensor& grad_x, at::Tensor& grad_weight,
                     at::Tensor& grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const Shape s = shape_of(x);
  const int64_t c = s.c;
  // The gathers' offsets are int32.
  const bool vector = batch_norm_vectorized<scalar_t>() && s.h * s.w * c < (int64_t(1) << 31);
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  const scalar_t* grad = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* out = out_in.const_data_ptr<scalar_t>();
  const uint8_t* window = window_in.const_data_ptr<uint8_t>();
  BatchNormBackward<scalar_t> coefficients(mean_in, var_in, eps);
  const std::vector<double>& mean = coefficients.mean;
  const std::vector<double>& invstd = coefficients.invstd;
  // dz, the gradient of the normalized tensor, is the pooled gradient where the ReLU passed it
  // (torch's threshold_backward: 0 where out <= 0, so a NaN output passes it), routed to its
  // window's max. Its sums (grad_bias = sum dz, grad_weight = sum dz * xhat) need only the
  // pooled pixels and x at each max. Chunks do not straddle images (the gather's base).
  const int64_t image_pixels = s.h * s.w * c, pooled_image = s.oh * s.ow;
  const int64_t chunk = batch_norm_chunk(c), chunks_per_image = (pooled_image + chunk - 1) / chunk;
  std::vector<int32_t> offsets(16, 0);  // window position k -> element offset from the corner
  for (int64_t k = 0; k < kPoolKernel * kPoolKernel; ++k) {
    offsets[k] = static_cast<int32_t>(((k / kPoolKernel) * s.w + k % kPoolKernel) * c);
  }
  const std::vector<double> sums =
      chunked_sums(s.n * chunks_per_image * chunk, 2 * c, chunk, [&](int64_t first, int64_t last, double* acc) {
        const int64_t image = first / (chunks_per_image * chunk);
        const int64_t q0 = first % (chunks_per_image * chunk);
        const int64_t q1 = std::min(q0 + (last - first), pooled_image);
        if (q0 >= q1) return;
        const scalar_t* x_image = in + image * image_pixels;
        const int64_t base = image * pooled_image * c;
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (vector) {
            return gradient_sums_avx512(x_image, grad + base, out + base, window + base, q0, q1, s.ow, s.w, c,
                                        offsets.data(), mean.data(), invstd.data(), acc);
          }
        }
#endif
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t o = base + q * c;
          const int64_t corner = ((q / s.ow) * kPoolStride - kPoolPad) * s.w + (q % s.ow) * kPoolStride - kPoolPad;
          for (int64_t j = 0; j < c; ++j) {
            if (out[o + j] <= scalar_t(0)) continue;  // (a NaN output passes)
            const double g = static_cast<double>(grad[o + j]);
            const double xv = static_cast<double>(x_image[corner * c + offsets[window[o + j]] + j]);
            acc[j] += g;
            acc[c + j] += g * (xv - mean[j]) * invstd[j];
          }
        }
      });
  coefficients.finish(sums, static_cast<double>(s.pixels()), weight.const_data_ptr<scalar_t>(),
                      grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>());
  const auto &k = coefficients.k, &a = coefficients.a, &b = coefficients.b;
  scalar_t* dx = grad_x.mutable_data_ptr<scalar_t>();
  // One task per input row (image, ih); a pixel sits in the windows of output rows
  // ceil((ih - 1) / 2) .. floor((ih + 1) / 2) and columns likewise, summed in output order as
  // aten's scatter adds them.
  at::parallel_for(0, s.n * s.h, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dz(c);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t image = task / s.h, ih = task % s.h;
      const int64_t base = image * pooled_image * c;
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (vector) {
          grad_input_row_avx512(grad + base, out + base, window + base, ih, s.w, s.oh, s.ow, c, in + task * s.w * c,
                                k.data(), a.data(), b.data(), dx + task * s.w * c);
          continue;
        }
      }
#endif
      const int64_t r0 = ih / kPoolStride, r1 = std::min((ih + 1) / kPoolStride, s.oh - 1);
      for (int64_t iw = 0; iw < s.w; ++iw) {
        const int64_t q0 = iw / kPoolStride, q1 = std::min((iw + 1) / kPoolStride, s.ow - 1);
        const int64_t p = (task * s.w + iw) * c;
        std::fill(dz.begin(), dz.end(), acc_t(0));
        for (int64_t r = r0; r <= r1; ++r) {
          for (int64_t q = q0; q <= q1; ++q) {
            const auto position = static_cast<uint8_t>((ih - (r * kPoolStride - kPoolPad)) * kPoolKernel + iw -
                                                       (q * kPoolStride - kPoolPad));
            const int64_t o = base + (r * s.ow + q) * c;
            for (int64_t j = 0; j < c; ++j) {
              const bool routed = window[o + j] == position && !(out[o + j] <= scalar_t(0));
              dz[j] += routed ? static_cast<acc_t>(grad[o + j]) : acc_t(0);
            }
          }
        }
        for (int64_t j = 0; j < c; ++j) {
          dx[p + j] = static_cast<scalar_t>(dz[j] * k[j] + static_cast<acc_t>(in[p + j]) * a[j] + b[j]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_max_pool3x3s2(
    const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  constexpr const char* op = "batch_norm_relu_max_pool3x3s2";
  check_batch_norm_input(x_in, weight, eps, op);
  check_vector(bias, "bias", x_in.size(1));
  check_same(bias, x_in, "bias", "x");
  const at::Tensor x = pixel_major(x_in);
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  const Shape s = shape_of(x);
  const auto layout = at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({s.n, s.c, s.oh, s.ow}, x.options().memory_format(layout));
  at::Tensor window = at::empty({s.n, s.c, s.oh, s.ow}, x.options().dtype(at::kByte).memory_format(layout));
  at::Tensor mean = at::empty({s.c}, x.options()), var = at::empty({s.c}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), op, [&] {
    forward_kernel<scalar_t>(x, w, b, eps, out, mean, var, window);
  });
  if (!is_pixel_major(x_in)) {
    out = out.contiguous(), window = window.contiguous();
  }
  return {out, mean, var, window};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_max_pool3x3s2_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& mean,
    const at::Tensor& var, const at::Tensor& window, const at::Tensor& out, double eps) {
  constexpr const char* op = "batch_norm_relu_max_pool3x3s2_backward";
  check_batch_norm_input(x_in, weight, eps, op);
  const Shape s = shape_of(x_in);
  const int64_t pooled[] = {s.n, s.c, s.oh, s.ow};
  check_saved(x_in, grad_out, out, pooled, mean, var, op);
  TORCH_CHECK_VALUE(window.sizes() == c10::IntArrayRef(pooled) && window.scalar_type() == at::kByte, "shufflenet_ops ",
                    op, ": window must be a uint8 tensor of shape ", c10::IntArrayRef(pooled));
  const at::Tensor x = pixel_major(x_in), offsets = pixel_major(window);
  check_window_offsets(offsets, s.h, s.w, op);  // the kernel reads x at each offset
  BatchNormGrads grads(x, weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), op, [&] {
    backward_kernel<scalar_t>(pixel_major(grad_out), x, weight.contiguous(), mean, var, offsets, pixel_major(out),
                              eps, grads.x, grads.weight, grads.bias);
  });
  return grads.in_layout_of(x_in);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("batch_norm_relu_max_pool3x3s2", &batch_norm_relu_max_pool3x3s2);
  m.impl("batch_norm_relu_max_pool3x3s2_backward", &batch_norm_relu_max_pool3x3s2_backward);
}

}  // namespace shufflenet_ops::cpu
