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

#include "../checks.h"
#include "pool3x3.h"

namespace shufflenet_ops::cpu {
namespace {

template <typename scalar_t, bool kMax>
void pool_channels_last(const at::Tensor& x, at::Tensor& y) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = y.size(2), ow = y.size(3);
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* out = y.mutable_data_ptr<scalar_t>();
  // One task per output row (batch item, oh): each reads 3 input rows, in cache.
  at::parallel_for(0, n * oh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const PixelImage<scalar_t> image{in + (task / oh) * h * w * c, h, w, c, c};
      pool3x3s2_relu_row<kMax>(image, task % oh, ow, out + task * ow * c, c);
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
    const int64_t kernel[] = {kPoolKernel, kPoolKernel}, stride[] = {kPoolStride, kPoolStride},
                  pad[] = {kPoolPad, kPoolPad};
    at::Tensor pooled = kMax ? at::max_pool2d(x, kernel, stride, pad) : at::avg_pool2d(x, kernel, stride, pad);
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
