// CPU inference kernel of a whole ShuffleNet V2 unit in one op (shuffle_unit_v2; semantics in
// csrc/ops.cpp, design in docs/design.md "The fused V2 unit"):
//   stride 1: x1, x2 = x.chunk(2, 1);  y = shuffle(cat(x1, branch2(x2)), 2)
//   stride 2:                          y = shuffle(cat(branch1(x), branch2(x)), 2)
//   branch2 = 1x1 conv + bias + ReLU -> 3x3 depthwise (stride 1/2) + bias -> 1x1 conv + bias + ReLU
//   branch1 = 3x3/2 depthwise + bias -> 1x1 conv + bias + ReLU
//
// The same work split as the V1 unit (shuffle_unit_kernel.cpp): tasks of (image, band of
// output rows), each band walked in chunks whose bottleneck activations stay in per-thread
// buffers (bottleneck.h). The V2-specific part is the index math of shuffle(cat(a, b), 2):
// a's channel j lands in channel 2j and b's in 2j + 1, so each chunk's two branch outputs
// (cache-resident) are interleaved pixel by pixel into the output. No concatenated or
// shuffled tensor exists, and the chunk x2 is read in place (a channel offset into x's pixels).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "bottleneck.h"
#include "interleave.h"
#include "planar.h"

namespace shufflenet_ops::cpu {
namespace {

// Output pixels per chunk, as the V1 unit's (shuffle_unit_kernel.cpp: kChunkPixels).
constexpr int64_t kChunkPixels = 128;

using OptionalTensor = std::optional<at::Tensor>;

void check_shuffle_unit_v2(const at::Tensor& x, const at::Tensor& cw, const at::Tensor& cb, const at::Tensor& dw,
                           const at::Tensor& db, const at::Tensor& ew, const at::Tensor& eb, const OptionalTensor& b1dw,
                           const OptionalTensor& b1db, const OptionalTensor& b1pw, const OptionalTensor& b1pb,
                           int64_t stride) {
  check_unit_input(x, stride, "shuffle_unit_v2");
  TORCH_CHECK_TYPE(cw.defined() && cb.defined() && dw.defined() && db.defined() && ew.defined() && eb.defined(),
                   "shuffle_unit_v2: every branch2 weight and bias must be a torch.Tensor, got None");
  const int64_t cin = x.size(1);
  const bool has_branch1 = b1dw.has_value() || b1db.has_value() || b1pw.has_value() || b1pb.has_value();
  const bool full_branch1 = b1dw.has_value() && b1db.has_value() && b1pw.has_value() && b1pb.has_value();
  if (stride == 1) {
    TORCH_CHECK_VALUE(!has_branch1, "shuffle_unit_v2: a stride-1 unit has no branch1: its four tensors must be None");
    TORCH_CHECK_VALUE(cin % 2 == 0, "shuffle_unit_v2: a stride-1 unit splits x's channels in half: x must have an "
                      "even channel count, got ", cin);
  } else {
    TORCH_CHECK_TYPE(full_branch1, "shuffle_unit_v2: a stride-2 unit needs all four branch1 tensors, got None");
  }
  const int64_t branch2_inputs = stride == 1 ? cin / 2 : cin;
  const int64_t half = check_bottleneck_branch(cw, cb, dw, db, ew, eb, "C2", branch2_inputs, "E").second;
  if (stride == 1) {
    TORCH_CHECK_VALUE(2 * half == cin, "shuffle_unit_v2: a stride-1 unit interleaves x1 with branch2: its ", half,
                      " output channels must equal half of x's ", cin);
  } else {
    check_depthwise(*b1dw, "branch1_depthwise_weight", cin);
    check_vector(*b1db, "branch1_depthwise_bias", cin);
    const int64_t left = check_packed(*b1pw, "branch1_pointwise_weight", "Cin", cin, "E");
    check_vector(*b1pb, "branch1_pointwise_bias", left);
    TORCH_CHECK_VALUE(left == half, "shuffle_unit_v2: the branches interleave channel by channel: branch1's ", left,
                      " output channels must equal branch2's ", half);
  }
  const char* names[] = {"compress_weight", "compress_bias", "depthwise_weight", "depthwise_bias", "expand_weight",
                         "expand_bias"};
  const at::Tensor* operands[] = {&cw, &cb, &dw, &db, &ew, &eb};
  for (int i = 0; i < 6; ++i) check_same(*operands[i], x, names[i], "x");
  if (stride == 2) {
    check_same(*b1dw, x, "branch1_depthwise_weight", "x");
    check_same(*b1db, x, "branch1_depthwise_bias", "x");
    check_same(*b1pw, x, "branch1_pointwise_weight", "x");
    check_same(*b1pb, x, "branch1_pointwise_bias", "x");
  }
}

// A packed 1x1 conv's operands: (groups, k, m) weight, (groups * m) bias.
template <typename T>
struct Pointwise {
  const T* weight;
  const T* bias;
  int64_t groups, k, m;
};

template <typename T>
Pointwise<T> pointwise_of(const at::Tensor& w, const at::Tensor& b) {
  return {w.const_data_ptr<T>(), b.const_data_ptr<T>(), w.size(0), w.size(1), w.size(2)};
}

// relu(A @ W + bias) for `pixels` rows of A (pixel stride a_pixel) into c (pixel stride ldc).
template <typename T>
void pointwise_relu(const Pointwise<T>& pw, int64_t pixels, const T* a, int64_t a_pixel, T* c, int64_t ldc,
                    bool vector) {
  for (int64_t i = 0; i < pw.groups; ++i) {
    gemm_bias_relu<T>(pixels, pw.m, pw.k, a + i * pw.k, a_pixel, 1, nullptr, pw.weight + i * pw.k * pw.m, c + i * pw.m,
                      ldc, pw.bias + i * pw.m, nullptr, 0, /*relu=*/true, vector, /*prefetch_rows=*/false);
  }
}

// branch1's operands (stride 2 only): depthwise taps (9, Cin) and bias, then the 1x1 conv.
template <typename T>
struct Branch1 {
  const T* taps;
  const T* depthwise_bias;
  Pointwise<T> pointwise;
};

template <typename T>
void run_unit_v2(const at::Tensor& x, const Bottleneck<T>& branch2, const Pointwise<T>& expand,
                 const std::optional<Branch1<T>>& branch1, at::Tensor& y) {
  const Planar xv = planar_of(x);  // pixel-major: channel stride 1, pixels collapse (as_planar)
  const int64_t batch = x.size(0), cin = x.size(1), h = branch2.h, w = branch2.w, oh = y.size(2), ow = branch2.ow;
  const int64_t stride = branch2.stride, half = expand.groups * expand.m, bottleneck = branch2.channels();
  // Stride 1: branch2 reads x2, channels [C/2, C) of each pixel, in place.
  const int64_t branch2_offset = stride == 1 ? cin / 2 : 0;
  const T* x_data = x.const_data_ptr<T>();
  T* y_data = y.mutable_data_ptr<T>();
  const int64_t y_pixel = 2 * half, y_image = oh * ow * y_pixel;
  const bool vector = std::is_same_v<T, float> && use_small_gemm();

  const int64_t bands = bands_per_image(batch, oh, at::get_num_threads());
  const int64_t chunk_rows = std::clamp<int64_t>((kChunkPixels + ow - 1) / ow, 1, oh);
  const int64_t chunk_pixels = chunk_rows * ow;

  at::parallel_for(0, batch * bands, 1, [&](int64_t begin, int64_t end) {
    // Kept across calls: a fresh allocation of this size would be page-faulted in each time.
    thread_local std::vector<T> compressed, filtered, right, branch1_filtered, left;
    compressed.resize(branch2.max_rows(chunk_rows) * w * bottleneck);
    filtered.resize(chunk_pixels * bottleneck);
    right.resize(chunk_pixels * half);
    if (branch1) {
      branch1_filtered.resize(chunk_pixels * cin);
      left.resize(chunk_pixels * half);
    }
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / bands;
      const auto [band_begin, band_end] = band_rows(task % bands, bands, oh);
      const T* image = x_data + n * xv.sb;
      T* out_image = y_data + n * y_image;
      RowBuffer<T> compress_rows(compressed, w * bottleneck);
      for (int64_t r0 = band_begin; r0 < band_end; r0 += chunk_rows) {
        const int64_t r1 = std::min(band_end, r0 + chunk_rows);
        const int64_t pixels = (r1 - r0) * ow;
        // branch2: 1x1 + ReLU, depthwise (bottleneck.h), then 1x1 + ReLU into `right`.
        bottleneck_rows(branch2, image + branch2_offset, xv.sp, compress_rows, r0, r1, filtered.data(), vector);
        pointwise_relu(expand, pixels, filtered.data(), bottleneck, right.data(), half, vector);
        // The even channels: x1 in place (stride 1), or branch1 of the chunk (stride 2).
        const T* even = image + r0 * w * xv.sp;
        int64_t even_pixel = xv.sp;
        if (branch1) {
          // x is dense pixel-major here (run_unit_v2's caller), as Depthwise3x3 reads it.
          const Depthwise3x3<T> depthwise{image, 0, h, w, cin, branch1->taps, branch1->depthwise_bias, stride, ow};
          depthwise3x3_rows(depthwise, r0, r1, branch1_filtered.data(), vector);
          pointwise_relu(branch1->pointwise, pixels, branch1_filtered.data(), cin, left.data(), half, vector);
          even = left.data();
          even_pixel = half;
        }
        interleave(pixels, half, even, even_pixel, right.data(), half, out_image + r0 * ow * y_pixel, vector);
      }
    }
  });
}

at::Tensor shuffle_unit_v2(const at::Tensor& x_in, const at::Tensor& compress_weight,
                           const at::Tensor& compress_bias, const at::Tensor& depthwise_weight,
                           const at::Tensor& depthwise_bias, const at::Tensor& expand_weight,
                           const at::Tensor& expand_bias, const OptionalTensor& branch1_depthwise_weight,
                           const OptionalTensor& branch1_depthwise_bias, const OptionalTensor& branch1_pointwise_weight,
                           const OptionalTensor& branch1_pointwise_bias, int64_t stride) {
  check_shuffle_unit_v2(x_in, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight,
                        expand_bias, branch1_depthwise_weight, branch1_depthwise_bias, branch1_pointwise_weight,
                        branch1_pointwise_bias, stride);
  const int64_t batch = x_in.size(0), cin = x_in.size(1), h = x_in.size(2), w = x_in.size(3);
  const int64_t oh = (h - 1) / stride + 1, ow = (w - 1) / stride + 1;
  const int64_t half = expand_weight.size(0) * expand_weight.size(2);
  // Computed channels_last; an NCHW x is converted once on the way in and the result on the
  // way out (the fused models run channels_last on CPU). branch1's depthwise conv reads x's
  // pixels `cin` apart, so a channel slice is made dense first.
  at::Tensor x = as_planar(x_in, Layout::kPixelMajor);
  if (stride == 2 && h * w > 1 && planar_of(x).sp != cin) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({batch, 2 * half, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y.contiguous(x_in.suggest_memory_format());
  const at::Tensor cw = compress_weight.contiguous(), cb = compress_bias.contiguous();
  const at::Tensor dw = depthwise_weight.contiguous(), db = depthwise_bias.contiguous();
  const at::Tensor ew = expand_weight.contiguous(), eb = expand_bias.contiguous();
  at::Tensor b1dw, b1db, b1pw, b1pb;
  if (stride == 2) {
    b1dw = branch1_depthwise_weight->contiguous();
    b1db = branch1_depthwise_bias->contiguous();
    b1pw = branch1_pointwise_weight->contiguous();
    b1pb = branch1_pointwise_bias->contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "shuffle_unit_v2", [&] {
    using T = scalar_t;
    const int64_t bottleneck = cw.size(0) * cw.size(2);
    const std::vector<T> taps = tap_major(dw.const_data_ptr<T>(), bottleneck);
    const Bottleneck<T> branch2{cw.const_data_ptr<T>(), cb.const_data_ptr<T>(), cw.size(0), cw.size(1), cw.size(2),
                                taps.data(), db.const_data_ptr<T>(), h, w, stride, ow};
    std::vector<T> branch1_taps;
    std::optional<Branch1<T>> branch1;
    if (stride == 2) {
      branch1_taps = tap_major(b1dw.const_data_ptr<T>(), cin);
      branch1 = Branch1<T>{branch1_taps.data(), b1db.const_data_ptr<T>(), pointwise_of<T>(b1pw, b1pb)};
    }
    run_unit_v2<T>(x, branch2, pointwise_of<T>(ew, eb), branch1, y);
  });
  return y.contiguous(x_in.suggest_memory_format());
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) { m.impl("shuffle_unit_v2", &shuffle_unit_v2); }

}  // namespace shufflenet_ops::cpu
