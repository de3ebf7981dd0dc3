// BatchNorm with batch statistics (training) on pixel-major (channels_last) data: the pieces
// shared by the stem's BN + ReLU + max pool op (batch_norm_relu_max_pool_kernel.cpp) and the
// BN + ReLU op (batch_norm_relu_kernel.cpp), so that both compute the statistics, the
// normalization's coefficients and the backward's coefficients the same way.
//
// Sums run in fixed chunks of pixels, in double, and are combined in chunk order: the results
// do not depend on the thread count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../checks.h"
#include "small_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SHUFFLENET_OPS_HAVE_AVX512_BN 1
// float32 with AVX-512: 16 channels per vector, masked at the channel tail. Each vector loop
// computes what the portable loop beside it does, lane by lane, in the same order.
#define SHUFFLENET_OPS_AVX512_BN __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

namespace shufflenet_ops::cpu {

// Pixels per partial sum: fixed (so the sums do not depend on the thread count). The partial
// sums take 2C doubles per chunk, zeroed and then combined one thread: chunks sized by bytes
// instead (a few rows of a 384-channel tensor) made that buffer grow as C^2 and cost more
// than the pass itself.
inline int64_t batch_norm_chunk(int64_t /*channels*/) { return 256; }

// Per-column sums (`width` of them) over `rows` rows in chunks of `chunk` rows:
// accumulate(first, last, acc) adds rows [first, last) into acc (zeroed); the chunks' partial
// sums are combined in chunk order.
template <typename Accumulate>
std::vector<double> chunked_sums(int64_t rows, int64_t width, int64_t chunk, const Accumulate& accumulate) {
  const int64_t chunks = (rows + chunk - 1) / chunk;
  std::vector<double> partial(chunks * width, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      accumulate(k * chunk, std::min(rows, (k + 1) * chunk), partial.data() + k * width);
    }
  });
  std::vector<double> total(width, 0.0);
  for (int64_t k = 0; k < chunks; ++k) {
    for (int64_t j = 0; j < width; ++j) total[j] += partial[k * width + j];
  }
  return total;
}

// 1 / sqrt(var + eps): one definition for the forward and the backward.
inline double inverse_std(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// Argument checks of both BN ops (same messages in their Python specs).
inline void check_batch_norm_input(const at::Tensor& x, const at::Tensor& weight, double eps, const char* op) {
  check_input(x, "x");
  TORCH_CHECK_VALUE(x.size(1) > 0, "shufflenet_ops ", op, ": x must have at least one channel, got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, "shufflenet_ops ", op,
                    ": x must have a non-empty spatial size, got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(0) * x.size(2) * x.size(3) > 1, "shufflenet_ops ", op,
                    ": batch statistics need more than one value per channel, got x of shape ", x.sizes());
  check_vector(weight, "weight", x.size(1));
  check_same(weight, x, "weight", "x");
  // As F.batch_norm in training: eps = 0 would divide by a zero variance.
  TORCH_CHECK_VALUE(eps > 0 && std::isfinite(eps), "shufflenet_ops ", op, ": eps must be finite and > 0, got ", eps);
}

// A backward op's saved tensors: grad_out and out of shape `shape`, mean and var (C,), all
// of x's dtype and device.
inline void check_saved(const at::Tensor& x, const at::Tensor& grad_out, const at::Tensor& out, at::IntArrayRef shape,
                        const at::Tensor& mean, const at::Tensor& var, const char* op) {
  for (const auto& [t, name] : {std::pair{&grad_out, "grad_out"}, std::pair{&out, "out"}}) {
    TORCH_CHECK_VALUE(t->sizes() == shape, "shufflenet_ops ", op, ": ", name, " must have shape ", shape, ", got ",
                      t->sizes());
    check_same(*t, x, name, "x");
  }
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, std::pair{&var, "var"}}) {
    check_vector(*t, name, x.size(1));
    check_same(*t, x, name, "x");
  }
}

// Every window offset of a (pixel-major, contiguous) uint8 `window` of pooled size oh x ow
// names a position inside the input (0..8, not in the padding): the backward reads x there.
inline void check_window_offsets(const at::Tensor& window, int64_t h, int64_t w, const char* op) {
  const int64_t n = window.size(0), c = window.size(1), oh = window.size(2), ow = window.size(3);
  const uint8_t* data = window.const_data_ptr<uint8_t>();
  const int64_t total = window.numel();
  bool in_range = at::parallel_reduce(
      0, total, 1 << 16, true,
      [&](int64_t begin, int64_t end, bool ok) {
        uint8_t high = 0;
        for (int64_t i = begin; i < end; ++i) high = std::max(high, data[i]);
        return ok && high <= 8;
      },
      [](bool a, bool b) { return a && b; });
  // Windows at the borders overlap the padding: their rows or columns there are invalid.
  for (int64_t image = 0; in_range && image < n; ++image) {
    for (int64_t r = 0; in_range && r < oh; ++r) {
      const bool top = r == 0, bottom = 2 * r + 1 >= h;
      for (int64_t q = 0; in_range && q < ow; ++q) {
        const bool left = q == 0, right = 2 * q + 1 >= w;
        if (!(top || bottom || left || right)) {
          q = std::max(q, ow - 2);  // interior pixels: any offset 0..8 is inside
          continue;
        }
        const uint8_t* px = data + ((image * oh + r) * ow + q) * c;
        for (int64_t j = 0; j < c; ++j) {
          const int64_t dh = px[j] / 3, dw = px[j] % 3;
          in_range = in_range && !(top && dh == 0) && !(bottom && dh == 2) && !(left && dw == 0) && !(right && dw == 2);
        }
      }
    }
  }
  TORCH_CHECK_VALUE(in_range, "shufflenet_ops ", op,
                    ": window holds an offset outside its 3x3 window's input (not the forward's window?)");
}

inline bool is_pixel_major(const at::Tensor& x) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

inline at::Tensor pixel_major(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
inline bool avx512_bytes_available() {
  static const bool available = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return available;
}

SHUFFLENET_OPS_AVX512_BN inline __mmask16 lane_mask(int64_t remaining) {
  return remaining >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1u);
}

SHUFFLENET_OPS_AVX512_BN inline __m512d low_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }

SHUFFLENET_OPS_AVX512_BN inline __m512d high_pd(__m512 v) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// The vector sums walk a chunk of pixel rows once per block of up to 64 channels (4 vectors),
// 16 double accumulators in registers. (Accumulators in memory, updated per pixel with
// masked loads and stores, stalled on store forwarding: 2x slower than aten at 384
// channels; one 16-channel block per walk read the rows' cache lines too sparsely.) Each
// lane adds its terms in pixel order, as the portable loop does.
constexpr int64_t kBlockVectors = 4;
// Rows fetched ahead by the passes that walk a chunk once per channel block: a block's slice of
// each row is a short strided read the hardware prefetcher follows poorly.
constexpr int64_t kRowsAhead = 16;

// The shifted sums and sums of squares of pixel rows [first, last), in double, into
// acc[0..c) and acc[c..2c).
SHUFFLENET_OPS_AVX512_BN inline void channel_sums_avx512(const float* x, int64_t first, int64_t last, int64_t c,
                                                        const double* shift, double* acc) {
  for (int64_t b0 = 0; b0 < c; b0 += 16 * kBlockVectors) {
    __m512d shift_v[kBlockVectors][2], sum[kBlockVectors][2], squares[kBlockVectors][2];
    __mmask16 lanes[kBlockVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kBlockVectors; ++v) {
      const int64_t j0 = b0 + 16 * v;
      lanes[v] = j0 < c ? lane_mask(c - j0) : __mmask16(0);
      shift_v[v][0] = _mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes[v]), shift + j0);
      shift_v[v][1] = _mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes[v] >> 8), shift + j0 + 8);
      sum[v][0] = sum[v][1] = squares[v][0] = squares[v][1] = _mm512_setzero_pd();
    }
    for (int64_t p = first; p < last; ++p) {
#pragma GCC unroll 4
      for (int v = 0; v < kBlockVectors; ++v) {
        if (lanes[v] != 0 && p + kRowsAhead < last) {
          _mm_prefetch(reinterpret_cast<const char*>(x + (p + kRowsAhead) * c + b0 + 16 * v), _MM_HINT_T0);
        }
        const __m512 x_v = _mm512_maskz_loadu_ps(lanes[v], x + p * c + b0 + 16 * v);
        const __m512d d0 = _mm512_sub_pd(low_pd(x_v), shift_v[v][0]), d1 = _mm512_sub_pd(high_pd(x_v), shift_v[v][1]);
        sum[v][0] = _mm512_add_pd(sum[v][0], d0), sum[v][1] = _mm512_add_pd(sum[v][1], d1);
        squares[v][0] = _mm512_add_pd(squares[v][0], _mm512_mul_pd(d0, d0));
        squares[v][1] = _mm512_add_pd(squares[v][1], _mm512_mul_pd(d1, d1));
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < kBlockVectors; ++v) {
      const int64_t j0 = b0 + 16 * v;
      const __mmask8 m0 = static_cast<__mmask8>(lanes[v]), m1 = static_cast<__mmask8>(lanes[v] >> 8);
      _mm512_mask_storeu_pd(acc + j0, m0, sum[v][0]), _mm512_mask_storeu_pd(acc + j0 + 8, m1, sum[v][1]);
      _mm512_mask_storeu_pd(acc + c + j0, m0, squares[v][0]), _mm512_mask_storeu_pd(acc + c + j0 + 8, m1, squares[v][1]);
    }
  }
}
#endif

// Whether the AVX-512 loops run: float32 on an AVX-512 (F, BW, VL) CPU, unless
// SHUFFLENET_OPS_CPU_GEMM=blas asks for the portable loops (as for the other kernels).
template <typename scalar_t>
bool batch_norm_vectorized() {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
  return std::is_same_v<scalar_t, float> && avx512_bytes_available() && use_small_gemm();
#else
  return false;
#endif
}

// The batch statistics of `pixels` rows of `c` channels and what the forward needs of them:
// mean and biased variance (written to mean_out, var_out) and z = x * scale + offset, aten's
// form of (x - mean) * invstd * gamma + beta. Shifted sums (by the first pixel) keep
// E[x^2] - E[x]^2 from cancelling when |mean| >> std.
template <typename scalar_t>
void batch_statistics(const scalar_t* x, int64_t pixels, int64_t c, const scalar_t* gamma, const scalar_t* beta,
                      double eps, scalar_t* mean_out, scalar_t* var_out,
                      std::vector<at::opmath_type<scalar_t>>& scale, std::vector<at::opmath_type<scalar_t>>& offset) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool vector = batch_norm_vectorized<scalar_t>();
  // The shift is the first pixel's value where finite: an inf there would make every
  // shifted value inf - inf = NaN, where the mean is inf.
  std::vector<double> shift(c);
  for (int64_t j = 0; j < c; ++j) {
    const double v = static_cast<double>(x[j]);
    shift[j] = std::isfinite(v) ? v : 0.0;
  }
  const std::vector<double> sums =
      chunked_sums(pixels, 2 * c, batch_norm_chunk(c), [&](int64_t first, int64_t last, double* acc) {
#ifdef SHUFFLENET_OPS_HAVE_AVX512_BN
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (vector) return channel_sums_avx512(x, first, last, c, shift.data(), acc);
        }
#endif
        for (int64_t p = first; p < last; ++p) {
          const scalar_t* px = x + p * c;
          for (int64_t j = 0; j < c; ++j) {
            const double d = static_cast<double>(px[j]) - shift[j];
            acc[j] += d;
            acc[c + j] += d * d;
          }
        }
      });
  const double count = static_cast<double>(pixels);
  scale.resize(c), offset.resize(c);
  for (int64_t j = 0; j < c; ++j) {
    const double m = sums[j] / count;
    const double var = std::max(sums[c + j] / count - m * m, 0.0);
    const double mean = shift[j] + m;
    mean_out[j] = static_cast<scalar_t>(mean);
    var_out[j] = static_cast<scalar_t>(var);
    const double a = inverse_std(var, eps) * static_cast<double>(gamma[j]);
    scale[j] = static_cast<acc_t>(a);
    offset[j] = static_cast<acc_t>(static_cast<double>(beta[j]) - mean * a);
  }
}

// A backward op's outputs: grad_x (pixel-major; `in_layout_of` returns it in x's layout),
// grad_weight and grad_bias (C,).
struct BatchNormGrads {
  at::Tensor x, weight, bias;
  BatchNormGrads(const at::Tensor& x_pixel_major, const at::Tensor& gamma)
      : x(at::empty_like(x_pixel_major, at::MemoryFormat::ChannelsLast)),
        weight(at::empty({x_pixel_major.size(1)}, gamma.options())),
        bias(at::empty({x_pixel_major.size(1)}, gamma.options())) {}
  std::tuple<at::Tensor, at::Tensor, at::Tensor> in_layout_of(const at::Tensor& x_in) const {
    return {is_pixel_major(x_in) ? x : x.contiguous(), weight, bias};
  }
};

// The backward of BatchNorm with batch statistics, given the sums of dz (the gradient of the
// normalized output) and of dz * xhat: grad_bias and grad_weight are those sums, and
// dx = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)) = dz * k + x * a + b.
template <typename scalar_t>
struct BatchNormBackward {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<double> mean, invstd;  // from the forward's mean and var
  std::vector<acc_t> k, a, b;

  BatchNormBackward(const at::Tensor& mean_in, const at::Tensor& var_in, double eps) {
    const int64_t c = mean_in.numel();
    mean.resize(c), invstd.resize(c);
    const at::Tensor m = mean_in.contiguous(), v = var_in.contiguous();
    for (int64_t j = 0; j < c; ++j) {
      mean[j] = static_cast<double>(m.const_data_ptr<scalar_t>()[j]);
      invstd[j] = inverse_std(static_cast<double>(v.const_data_ptr<scalar_t>()[j]), eps);
    }
  }

  // sums: [sum dz (c values), sum dz * xhat (c values)] over `count` pixels.
  void finish(const std::vector<double>& sums, double count, const scalar_t* gamma, scalar_t* grad_weight,
              scalar_t* grad_bias) {
    const int64_t c = static_cast<int64_t>(mean.size());
    k.resize(c), a.resize(c), b.resize(c);
    for (int64_t j = 0; j < c; ++j) {
      grad_bias[j] = static_cast<scalar_t>(sums[j]);
      grad_weight[j] = static_cast<scalar_t>(sums[c + j]);
      const double kj = static_cast<double>(gamma[j]) * invstd[j];
      const double slope = -kj * invstd[j] * sums[c + j] / count;
      k[j] = static_cast<acc_t>(kj);
      a[j] = static_cast<acc_t>(slope);
      b[j] = static_cast<acc_t>(-kj * sums[j] / count - slope * mean[j]);
    }
  }
};

}  // namespace shufflenet_ops::cpu
