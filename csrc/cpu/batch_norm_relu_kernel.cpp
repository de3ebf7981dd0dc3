// CPU kernels of BatchNorm with batch statistics (training) and an optional ReLU:
//   out = act(batch_norm(x, batch statistics, weight, bias, eps))
// and its backward (docs/design.md, "BatchNorm in training").
//
// In a training step every conv of a ShuffleNet unit is followed by such a BN (and most by a
// ReLU). aten runs BN (a statistics pass, then the normalized tensor), the ReLU (another pass)
// and in backward the ReLU mask (a pass writing the masked gradient) and BN's backward (a
// reduction, then dx). Here the forward is a statistics pass and one pass writing act(z);
// the backward masks the gradient by the saved output inside its reduction and its dx pass,
// so the masked gradient is never written.
//
// Statistics and coefficients: batch_norm.h (shared with the stem's BN + ReLU + max pool op).
// Pixel-major (channels_last) data; other layouts are converted (a copy each way).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
// Before our code: no multiply-add contracted into an FMA (the AVX-512 and portable loops
// round alike).
#include "fp_contract_off.h"
#include "batch_norm.h"
#include "relu.h"

namespace shufflenet_ops::cpu {
namespace {

#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
// Pixel rows [first, last): out = act(x * scale + offset) (a multiply, then an add: as the
// portable loop rounds).
SHUFFLENET_OPS_AVX512_BN void normalize_rows_avx512(const float* x, int64_t first, int64_t last, int64_t c,
                                                   const float* scale, const float* offset, bool relu, float* out) {
  for (int64_t p = first; p < last; ++p) {
    for (int64_t j0 = 0; j0 < c; j0 += 16) {
      const __mmask16 lanes = lane_mask(c - j0);
      const int64_t i = p * c + j0;
      __m512 z = _mm512_add_ps(
          _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x + i), _mm512_maskz_loadu_ps(lanes, scale + j0)),
          _mm512_maskz_loadu_ps(lanes, offset + j0));
      _mm512_mask_storeu_ps(out + i, lanes, relu ? relu_ps(z) : z);
    }
  }
}

// The lanes where the ReLU passed the gradient (threshold_backward's rule: blocked where
// out <= 0, so a NaN output passes it); every lane without the ReLU.
SHUFFLENET_OPS_AVX512_BN inline __mmask16 passed(const float* out, __mmask16 lanes, bool relu) {
  return relu ? _mm512_mask_cmp_ps_mask(lanes, _mm512_maskz_loadu_ps(lanes, out), _mm512_setzero_ps(), _CMP_NLE_UQ)
              : lanes;
}

// Over pixel rows [first, last): sum dz and sum dz * xhat, in double, per block of channels
// (batch_norm.h: kBlockVectors).
SHUFFLENET_OPS_AVX512_BN void gradient_sums_avx512(const float* grad, const float* x, const float* out,
                                                  int64_t first, int64_t last, int64_t c, bool relu,
                                                  const double* mean, const double* invstd, double* acc) {
  for (int64_t b0 = 0; b0 < c; b0 += 16 * kBlockVectors) {
    __m512d mean_v[kBlockVectors][2], inv_v[kBlockVectors][2], g_sum[kBlockVectors][2], gx_sum[kBlockVectors][2];
    __mmask16 lanes[kBlockVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kBlockVectors; ++v) {
      const int64_t j0 = b0 + 16 * v;
      lanes[v] = j0 < c ? lane_mask(c - j0) : __mmask16(0);
      const __mmask8 m0 = static_cast<__mmask8>(lanes[v]), m1 = static_cast<__mmask8>(lanes[v] >> 8);
      mean_v[v][0] = _mm512_maskz_loadu_pd(m0, mean + j0), mean_v[v][1] = _mm512_maskz_loadu_pd(m1, mean + j0 + 8);
      inv_v[v][0] = _mm512_maskz_loadu_pd(m0, invstd + j0), inv_v[v][1] = _mm512_maskz_loadu_pd(m1, invstd + j0 + 8);
      g_sum[v][0] = g_sum[v][1] = gx_sum[v][0] = gx_sum[v][1] = _mm512_setzero_pd();
    }
    for (int64_t p = first; p < last; ++p) {
#pragma GCC unroll 4
      for (int v = 0; v < kBlockVectors; ++v) {
        const int64_t i = p * c + b0 + 16 * v;
        if (lanes[v] != 0 && p + kRowsAhead < last) {
          for (const float* t : {grad, x, out}) _mm_prefetch(reinterpret_cast<const char*>(t + i + kRowsAhead * c), _MM_HINT_T0);
        }
        // Loads under the static lane mask: a mask computed from `out` would make them wait
        // for out's cache miss. Lanes the ReLU blocked are left out by the masked adds.
        const __mmask16 pass = passed(out + i, lanes[v], relu);
        const __m512 g = _mm512_maskz_loadu_ps(lanes[v], grad + i), xv = _mm512_maskz_loadu_ps(lanes[v], x + i);
        const __mmask8 p0 = static_cast<__mmask8>(pass), p1 = static_cast<__mmask8>(pass >> 8);
        const __m512d d0 = low_pd(g), d1 = high_pd(g);
        g_sum[v][0] = _mm512_mask_add_pd(g_sum[v][0], p0, g_sum[v][0], d0);
        g_sum[v][1] = _mm512_mask_add_pd(g_sum[v][1], p1, g_sum[v][1], d1);
        const __m512d h0 = _mm512_mul_pd(_mm512_mul_pd(d0, _mm512_sub_pd(low_pd(xv), mean_v[v][0])), inv_v[v][0]);
        const __m512d h1 = _mm512_mul_pd(_mm512_mul_pd(d1, _mm512_sub_pd(high_pd(xv), mean_v[v][1])), inv_v[v][1]);
        gx_sum[v][0] = _mm512_mask_add_pd(gx_sum[v][0], p0, gx_sum[v][0], h0);
        gx_sum[v][1] = _mm512_mask_add_pd(gx_sum[v][1], p1, gx_sum[v][1], h1);
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < kBlockVectors; ++v) {
      const int64_t j0 = b0 + 16 * v;
      const __mmask8 m0 = static_cast<__mmask8>(lanes[v]), m1 = static_cast<__mmask8>(lanes[v] >> 8);
      _mm512_mask_storeu_pd(acc + j0, m0, g_sum[v][0]), _mm512_mask_storeu_pd(acc + j0 + 8, m1, g_sum[v][1]);
      _mm512_mask_storeu_pd(acc + c + j0, m0, gx_sum[v][0]), _mm512_mask_storeu_pd(acc + c + j0 + 8, m1, gx_sum[v][1]);
    }
  }
}

// Pixel rows [first, last): dx = dz * k + x * a + b, dz the gradient where the ReLU passed it.
SHUFFLENET_OPS_AVX512_BN void grad_input_rows_avx512(const float* grad, const float* x, const float* out,
                                                    int64_t first, int64_t last, int64_t c, bool relu,
                                                    const float* k, const float* a, const float* b, float* dx) {
  for (int64_t p = first; p < last; ++p) {
    for (int64_t j0 = 0; j0 < c; j0 += 16) {
      const __mmask16 lanes = lane_mask(c - j0);
      const int64_t i = p * c + j0;
      const __m512 dz = _mm512_maskz_mov_ps(passed(out + i, lanes, relu), _mm512_maskz_loadu_ps(lanes, grad + i));
      const __m512 t = _mm512_add_ps(_mm512_mul_ps(dz, _mm512_maskz_loadu_ps(lanes, k + j0)),
                                     _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x + i),
                                                   _mm512_maskz_loadu_ps(lanes, a + j0)));
      _mm512_mask_storeu_ps(dx + i, lanes, _mm512_add_ps(t, _mm512_maskz_loadu_ps(lanes, b + j0)));
    }
  }
}
#endif

// Pixels per task of the elementwise passes: about 16 KiB of float32.
int64_t grain(int64_t c) { return std::max<int64_t>(4096 / std::max<int64_t>(c, 1), 1); }

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps, bool relu,
                    at::Tensor& out_t, at::Tensor& mean_out, at::Tensor& var_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = x.size(1), pixels = x.numel() / c;
  const bool vector = batch_norm_vectorized<scalar_t>();
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  std::vector<acc_t> scale, offset;
  batch_statistics(in, pixels, c, weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), eps,
                   mean_out.mutable_data_ptr<scalar_t>(), var_out.mutable_data_ptr<scalar_t>(), scale, offset);
  scalar_t* out = out_t.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, pixels, grain(c), [&](int64_t first, int64_t last) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (vector) return normalize_rows_avx512(in, first, last, c, scale.data(), offset.data(), relu, out);
    }
#endif
    for (int64_t p = first; p < last; ++p) {
      for (int64_t j = 0; j < c; ++j) {
        const acc_t z = static_cast<acc_t>(in[p * c + j]) * scale[j] + offset[j];
        out[p * c + j] = static_cast<scalar_t>(relu ? cpu::relu(z) : z);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_t, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& mean_in, const at::Tensor& var_in, const at::Tensor& out_t, double eps,
                     bool relu, at::Tensor& grad_x, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = x.size(1), pixels = x.numel() / c;
  const bool vector = batch_norm_vectorized<scalar_t>();
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  const scalar_t* grad = grad_t.const_data_ptr<scalar_t>();
  const scalar_t* out = out_t.const_data_ptr<scalar_t>();
  BatchNormBackward<scalar_t> coefficients(mean_in, var_in, eps);
  const std::vector<double>& mean = coefficients.mean;
  const std::vector<double>& invstd = coefficients.invstd;
  const std::vector<double> sums =
      chunked_sums(pixels, 2 * c, batch_norm_chunk(c), [&](int64_t first, int64_t last, double* acc) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (vector) {
            return gradient_sums_avx512(grad, in, out, first, last, c, relu, mean.data(), invstd.data(), acc);
          }
        }
#endif
        for (int64_t p = first; p < last; ++p) {
          for (int64_t j = 0; j < c; ++j) {
            const int64_t i = p * c + j;
            if (relu && out[i] <= scalar_t(0)) continue;  // (a NaN output passes)
            const double g = static_cast<double>(grad[i]);
            acc[j] += g;
            acc[c + j] += g * (static_cast<double>(in[i]) - mean[j]) * invstd[j];
          }
        }
      });
  coefficients.finish(sums, static_cast<double>(pixels), weight.const_data_ptr<scalar_t>(),
                      grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>());
  const auto &k = coefficients.k, &a = coefficients.a, &b = coefficients.b;
  scalar_t* dx = grad_x.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, pixels, grain(c), [&](int64_t first, int64_t last) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (vector) return grad_input_rows_avx512(grad, in, out, first, last, c, relu, k.data(), a.data(), b.data(), dx);
    }
#endif
    for (int64_t p = first; p < last; ++p) {
      for (int64_t j = 0; j < c; ++j) {
        const int64_t i = p * c + j;
        const acc_t dz = relu && out[i] <= scalar_t(0) ? acc_t(0) : static_cast<acc_t>(grad[i]);
        dx[i] = static_cast<scalar_t>(dz * k[j] + static_cast<acc_t>(in[i]) * a[j] + b[j]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu(const at::Tensor& x_in, const at::Tensor& weight,
                                                               const at::Tensor& bias, double eps, bool relu) {
  constexpr const char* op = "batch_norm_relu";
  check_batch_norm_input(x_in, weight, eps, op);
  check_vector(bias, "bias", x_in.size(1));
  check_same(bias, x_in, "bias", "x");
  const at::Tensor x = pixel_major(x_in);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  at::Tensor mean = at::empty({x.size(1)}, x.options()), var = at::empty({x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), op, [&] {
    forward_kernel<scalar_t>(x, weight.contiguous(), bias.contiguous(), eps, relu, out, mean, var);
  });
  if (!is_pixel_major(x_in)) out = out.contiguous();
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& mean,
    const at::Tensor& var, const at::Tensor& out, double eps, bool relu) {
  constexpr const char* op = "batch_norm_relu_backward";
  check_batch_norm_input(x_in, weight, eps, op);
  check_saved(x_in, grad_out, out, x_in.sizes(), mean, var, op);
  const at::Tensor x = pixel_major(x_in);
  BatchNormGrads grads(x, weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), op, [&] {
    backward_kernel<scalar_t>(pixel_major(grad_out), x, weight.contiguous(), mean, var, pixel_major(out), eps, relu,
                              grads.x, grads.weight, grads.bias);
  });
  return grads.in_layout_of(x_in);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("batch_norm_relu", &batch_norm_relu);
  m.impl("batch_norm_relu_backward", &batch_norm_relu_backward);
}

}  // namespace shufflenet_ops::cpu
