// The first two layers of a ShuffleNet bottleneck branch, run chunk by chunk over a band of
// output rows (the fused units: shuffle_unit_kernel.cpp for V1, shuffle_unit_v2_kernel.cpp for
// V2): a (grouped) 1x1 conv + bias + ReLU into a RowBuffer of its output rows, then the 3x3
// depthwise conv + bias of those rows. The activations between them never leave the
// per-thread buffers; the halo rows two chunks share are computed once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "depthwise3x3.h"
#include "pixel_gemm.h"
#include "row_bands.h"

namespace shufflenet_ops::cpu {

// The branch's operands. compress_weight: (groups, k, m) as pack_pointwise_weight lays it out
// (group i maps input channels [i*k, (i+1)*k) to bottleneck channels [i*m, (i+1)*m)); taps:
// the depthwise weight tap-major, (9, groups*m) (tap_major below).
template <typename T>
struct Bottleneck {
  const T* compress_weight;
  const T* compress_bias;
  int64_t groups, k, m;
  const T* taps;
  const T* depthwise_bias;
  int64_t h, w, stride, ow;

  int64_t channels() const { return groups * m; }
  // The compress rows a chunk of `chunk_rows` output rows needs at most (with the halo).
  int64_t max_rows(int64_t chunk_rows) const { return (chunk_rows - 1) * stride + 3; }
};

// Depthwise output rows [r0, r1) of one image into `filtered` (pixel-major, channels()
// per pixel). `image`: the image's first pixel of the compress input, `pixel_stride` apart,
// its channel k at image[p * pixel_stride + k]. `rows` holds the compress output between
// calls: a band calls this for consecutive chunks, top to bottom.
template <typename T>
void bottleneck_rows(const Bottleneck<T>& b, const T* image, int64_t pixel_stride, RowBuffer<T>& rows, int64_t r0,
                     int64_t r1, T* filtered, bool vector) {
  const int64_t channels = b.channels();
  // Input rows of the depthwise conv for output rows [r0, r1), clipped to the image.
  const int64_t need_end = std::min(b.h, (r1 - 1) * b.stride + 2);
  const int64_t compute_from = rows.hold(std::max<int64_t>(0, r0 * b.stride - 1), need_end);
  const int64_t pixels = (need_end - compute_from) * b.w;
  T* compressed = rows.row(compute_from);
  for (int64_t i = 0; i < b.groups; ++i) {
    gemm_bias_relu<T>(pixels, b.m, b.k, image + compute_from * b.w * pixel_stride + i * b.k, pixel_stride, 1,
                      nullptr, b.compress_weight + i * b.k * b.m, compressed + i * b.m, channels,
                      b.compress_bias + i * b.m, nullptr, 0, /*relu=*/true, vector, /*prefetch_rows=*/true);
  }
  const Depthwise3x3<T> depthwise{rows.row(rows.begin()), rows.begin(), b.h, b.w, channels, b.taps,
                                  b.depthwise_bias, b.stride, b.ow};
  depthwise3x3_rows(depthwise, r0, r1, filtered, vector);
}

}  // namespace shufflenet_ops::cpu
