// CPU inference kernel of a whole ShuffleNet V1 unit in one op (shuffle_unit; semantics in
// csrc/ops.cpp, design in docs/design.md "The fused unit"):
//   compress GConv + bias + ReLU -> 3x3 depthwise conv (stride 1/2) + bias -> shuffle ->
//   expand GConv + bias -> relu(x + .) (stride 1) or cat(relu(avgpool(x)), relu(.)) (stride 2).
//
// Work is cut into tasks of (image, band of output rows); a task walks its band in chunks of
// a few output rows. Per chunk, the compress output rows that the depthwise conv needs
// (the chunk's rows times the stride, plus a one-row halo on each side) and the depthwise
// output live in two small per-thread buffers, so the bottleneck activations never reach
// memory; the halo rows a chunk shares with the next one are kept (moved to the buffer's
// front), not recomputed. Only band edges recompute rows: a batch-1 image is split into as
// many bands as threads so both cores work.
//
// Everything runs pixel-major (a pixel's channels contiguous): the 1x1 convs are small_gemm
// calls whose B operand is the weight in the group-transposed layout the op takes (no
// packing per call), the depthwise conv is vectorised over channels, and the expand GConv
// reads its input channels through the shuffle with a column-offset table (no shuffled copy).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../channel_map.h"
#include "../checks.h"
#include "bottleneck.h"
#include "planar.h"
#include "pool3x3.h"

namespace shufflenet_ops::cpu {
namespace {

// Output pixels per chunk: wide enough for the GEMMs to run at speed (several 16-pixel row
// blocks per weight panel), small enough that a chunk's buffers stay in L1/L2 (stage 2 of
// the 1x g=3 net: 60 bottleneck channels x (3 + 2) rows x 28 pixels x 4 bytes = 34 KB).
constexpr int64_t kChunkPixels = 128;

// The unit's sizes, from the operands (checked by check_shuffle_unit).
struct UnitShape {
  int64_t batch, in_channels, h, w, stride, oh, ow;
  int64_t compress_groups, compress_k, compress_m;  // compress weight (groups, K, M) per group
  int64_t bottleneck;
  int64_t expand_groups, expand_k, expand_m;
  int64_t out_channels, branch_offset;  // the expand output's first channel in y (stride 2: after the pool)
};

void check_shuffle_unit(const at::Tensor& x, const at::Tensor& cw, const at::Tensor& cb, const at::Tensor& dw,
                        const at::Tensor& db, const at::Tensor& ew, const at::Tensor& eb, int64_t shuffle_groups,
                        int64_t stride) {
  check_unit_input(x, stride, "shuffle_unit");
  const int64_t cin = x.size(1);
  TORCH_CHECK_TYPE(cw.defined() && ew.defined() && cb.defined() && dw.defined() && db.defined() && eb.defined(),
                   "shuffle_unit: every weight and bias must be a torch.Tensor, got None");
  const auto [bottleneck, branch] = check_bottleneck_branch(cw, cb, dw, db, ew, eb, "Cin", cin, "Cout");
  check_groups(shuffle_groups, "shuffle_groups", bottleneck, "bottleneck channels");
  TORCH_CHECK_VALUE(stride == 2 || branch == cin, "shuffle_unit: a stride-1 unit adds x to the expand output: its ",
                    branch, " channels must equal x's ", cin);
  const char* names[] = {"compress_weight", "compress_bias", "depthwise_weight", "depthwise_bias", "expand_weight",
                         "expand_bias"};
  const at::Tensor* operands[] = {&cw, &cb, &dw, &db, &ew, &eb};
  for (int i = 0; i < 6; ++i) check_same(*operands[i], x, names[i], "x");
}

UnitShape unit_shape(const at::Tensor& x, const at::Tensor& cw, const at::Tensor& ew, int64_t stride) {
  UnitShape s{};
  s.batch = x.size(0);
  s.in_channels = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  s.stride = stride;
  s.oh = (s.h - 1) / stride + 1;
  s.ow = (s.w - 1) / stride + 1;
  s.compress_groups = cw.size(0);
  s.compress_k = cw.size(1);
  s.compress_m = cw.size(2);
  s.bottleneck = s.compress_groups * s.compress_m;
  s.expand_groups = ew.size(0);
  s.expand_k = ew.size(1);
  s.expand_m = ew.size(2);
  const int64_t branch = s.expand_groups * s.expand_m;
  s.branch_offset = stride == 2 ? s.in_channels : 0;
  s.out_channels = s.branch_offset + branch;
  return s;
}

template <typename T>
void run_unit(const UnitShape& s, const at::Tensor& x, const T* cw, const T* cb, const T* taps, const T* db,
              const T* ew, const T* eb, const RowMap& expand_rows, at::Tensor& y) {
  const Planar xv = planar_of(x);  // pixel-major: xv.sc == 1, pixels collapse (as_planar)
  const T* x_data = x.const_data_ptr<T>();
  T* y_data = y.mutable_data_ptr<T>();
  const int64_t y_pixel = s.out_channels, y_image = s.oh * s.ow * s.out_channels;
  const int64_t cb_channels = s.bottleneck;
  const bool vector = std::is_same_v<T, float> && use_small_gemm();

  const int64_t threads = at::get_num_threads();
  const int64_t bands = bands_per_image(s.batch, s.oh, threads);
  const int64_t chunk_rows = std::clamp<int64_t>((kChunkPixels + s.ow - 1) / s.ow, 1, s.oh);

  // Per expand group: its input channels (bottleneck channels read through the shuffle) as
  // one stride, or as an offset table where no stride describes them.
  std::vector<int64_t> first(s.expand_groups), step(s.expand_groups);
  for (int64_t j = 0; j < s.expand_groups; ++j) {
    first[j] = expand_rows.group_stride[j] > 0 ? expand_rows.group_channels(j)[0] : 0;
    step[j] = expand_rows.group_stride[j];
  }

  const Bottleneck<T> branch{cw, cb, s.compress_groups, s.compress_k, s.compress_m, taps, db,
                             s.h, s.w, s.stride, s.ow};
  at::parallel_for(0, s.batch * bands, 1, [&](int64_t begin, int64_t end) {
    // Kept across calls: a fresh allocation of this size would be page-faulted in each time.
    thread_local std::vector<T> compressed, filtered;
    compressed.resize(branch.max_rows(chunk_rows) * s.w * cb_channels);
    filtered.resize(chunk_rows * s.ow * cb_channels);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / bands;
      const auto [band_begin, band_end] = band_rows(task % bands, bands, s.oh);
      const T* image = x_data + n * xv.sb;
      T* out_image = y_data + n * y_image;
      RowBuffer<T> compress_rows(compressed, s.w * cb_channels);
      for (int64_t r0 = band_begin; r0 < band_end; r0 += chunk_rows) {
        const int64_t r1 = std::min(band_end, r0 + chunk_rows);
        // 1-2. compress GConv + bias + ReLU, depthwise 3x3 + bias.
        bottleneck_rows(branch, image, xv.sp, compress_rows, r0, r1, filtered.data(), vector);

        // 3. expand GConv through the shuffle + bias, then the unit's epilogue.
        const int64_t out_pixels = (r1 - r0) * s.ow;
        T* out = out_image + r0 * s.ow * y_pixel + s.branch_offset;
        const T* residual = s.stride == 1 ? image + r0 * s.w * xv.sp : nullptr;
        for (int64_t j = 0; j < s.expand_groups; ++j) {
          const int64_t* offsets = step[j] > 0 ? nullptr : expand_rows.group_channels(j);
          gemm_bias_relu<T>(out_pixels, s.expand_m, s.expand_k, filtered.data() + first[j], cb_channels, step[j],
                            offsets, ew + j * s.expand_k * s.expand_m, out + j * s.expand_m, y_pixel,
                            eb + j * s.expand_m, residual ? residual + j * s.expand_m : nullptr, xv.sp,
                            /*relu=*/true, vector, /*prefetch_rows=*/true);
        }
        // 4. stride 2: the average-pooled shortcut into channels [0, Cin).
        if (s.stride == 2) {
          const PixelImage<T> pooled_from{image, s.h, s.w, s.in_channels, xv.sp};
          for (int64_t r = r0; r < r1; ++r) {
            pool3x3s2_relu_row<false>(pooled_from, r, s.ow, out_image + r * s.ow * y_pixel, y_pixel);
          }
        }
      }
    }
  });
}

at::Tensor shuffle_unit(const at::Tensor& x_in, const at::Tensor& compress_weight, const at::Tensor& compress_bias,
                        const at::Tensor& depthwise_weight, const at::Tensor& depthwise_bias,
                        const at::Tensor& expand_weight, const at::Tensor& expand_bias, int64_t shuffle_groups,
                        int64_t stride) {
  check_shuffle_unit(x_in, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight,
                     expand_bias, shuffle_groups, stride);
  const UnitShape s = unit_shape(x_in, compress_weight, expand_weight, stride);
  // Computed channels_last; an NCHW x is converted once on the way in and the result on the
  // way out (the fused models run channels_last on CPU).
  const at::Tensor x = as_planar(x_in, Layout::kPixelMajor);
  at::Tensor y = at::empty({s.batch, s.out_channels, s.oh, s.ow},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y.contiguous(x_in.suggest_memory_format());
  const at::Tensor cw = compress_weight.contiguous(), ew = expand_weight.contiguous();
  const at::Tensor cb = compress_bias.contiguous(), db = depthwise_bias.contiguous(), eb = expand_bias.contiguous();
  const at::Tensor dw = depthwise_weight.contiguous();
  const RowMap expand_rows = input_rows(s.bottleneck, s.expand_groups, shuffle_groups);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "shuffle_unit", [&] {
    const std::vector<scalar_t> taps = tap_major(dw.const_data_ptr<scalar_t>(), s.bottleneck);
    run_unit<scalar_t>(s, x, cw.const_data_ptr<scalar_t>(), cb.const_data_ptr<scalar_t>(), taps.data(),
                       db.const_data_ptr<scalar_t>(), ew.const_data_ptr<scalar_t>(), eb.const_data_ptr<scalar_t>(),
                       expand_rows, y);
  });
  return y.contiguous(x_in.suggest_memory_format());
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) { m.impl("shuffle_unit", &shuffle_unit); }

}  // namespace shufflenet_ops::cpu
