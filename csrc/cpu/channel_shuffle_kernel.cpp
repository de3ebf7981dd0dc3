// CPU channel shuffle: one read and one write per element, parallel over all cores.
// Channel-major: every output channel is one contiguous copy of its source channel's pixels.
// Pixel-major (channels_last): every pixel's channels are gathered through the index table.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../channel_map.h"
#include "../checks.h"
#include "planar.h"

namespace shufflenet_ops::cpu {
namespace {

template <typename scalar_t>
void shuffle_kernel(const at::Tensor& x, at::Tensor& y, const std::vector<int64_t>& source, Layout layout) {
  const Planar xv = planar_of(x), yv = planar_of(y);
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* out = y.mutable_data_ptr<scalar_t>();
  const int64_t channels = xv.channels, pixels = xv.pixels;
  if (layout == Layout::kChannelMajor) {
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(pixels, 1));
    at::parallel_for(0, xv.batch * channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / channels, c = t % channels;
        std::memcpy(out + b * yv.sb + c * yv.sc, in + b * xv.sb + source[c] * xv.sc, pixels * sizeof(scalar_t));
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(channels, 1));
    at::parallel_for(0, xv.batch * pixels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / pixels, p = t % pixels;
        const scalar_t* src = in + b * xv.sb + p * xv.sp;
        scalar_t* dst = out + b * yv.sb + p * yv.sp;
        for (int64_t c = 0; c < channels; ++c) dst[c] = src[source[c]];
      }
    });
  }
}

at::Tensor channel_shuffle(const at::Tensor& x_in, int64_t groups) {
  check_input(x_in, "input");
  check_groups(groups, "groups", x_in.size(1), "channels");
  const Layout layout = layout_of(x_in);
  const at::Tensor x = as_planar(x_in, layout);
  at::Tensor y = empty_planar(x, x.size(1), layout);
  if (y.numel() == 0) return y;
  std::vector<int64_t> source(x.size(1));
  for (int64_t c = 0; c < x.size(1); ++c) source[c] = shuffle_source(c, x.size(1), groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_shuffle", [&] {
    shuffle_kernel<scalar_t>(x, y, source, layout);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("channel_shuffle", &channel_shuffle);
}

}  // namespace shufflenet_ops::cpu
