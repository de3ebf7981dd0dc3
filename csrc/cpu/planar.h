// A 4-D activation addressed as [batch][channel][pixel], H*W pixels collapsed into one index.
// Two layouts reach the GEMMs without a copy:
//   channel-major (NCHW-like): pixel stride 1, a channel is a row of pixels;
//   pixel-major (channels_last-like): channel stride 1, a pixel is a row of channels.
// Batch and channel strides are free (sliced inputs run in place); anything else is copied
// once into the layout first.
#pragma once

#include <ATen/ATen.h>

namespace shufflenet_ops::cpu {

enum class Layout { kChannelMajor, kPixelMajor };

inline Layout layout_of(const at::Tensor& x) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? Layout::kPixelMajor : Layout::kChannelMajor;
}

inline at::MemoryFormat memory_format_of(Layout layout) {
  return layout == Layout::kPixelMajor ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

struct Planar {
  int64_t batch = 0, channels = 0, pixels = 0;
  int64_t sb = 0, sc = 0, sp = 0;  // element strides of batch, channel, pixel
};

inline Planar planar_of(const at::Tensor& x) {
  Planar v;
  v.batch = x.size(0);
  v.channels = x.size(1);
  v.pixels = x.size(2) * x.size(3);
  v.sb = x.stride(0);
  v.sc = x.size(1) == 1 ? 1 : x.stride(1);
  v.sp = x.size(3) > 1 ? x.stride(3) : (x.size(2) > 1 ? x.stride(2) : 1);
  return v;
}

// x itself when it is addressable in `layout` (see above), else a copy in that layout.
inline at::Tensor as_planar(const at::Tensor& x, Layout layout) {
  const bool pixels_collapse = x.size(2) == 1 || x.size(3) == 1 || x.stride(2) == x.size(3) * x.stride(3);
  const Planar v = planar_of(x);
  const bool unit = layout == Layout::kChannelMajor ? (v.sp == 1 || v.pixels <= 1) : (v.sc == 1);
  if (pixels_collapse && unit) return x;
  return x.contiguous(memory_format_of(layout));
}

inline at::Tensor empty_planar(const at::Tensor& like, int64_t channels, Layout layout) {
  return at::empty({like.size(0), channels, like.size(2), like.size(3)},
                   like.options().memory_format(memory_format_of(layout)));
}

// Pixel-major tensors whose batch items follow each other without gaps (contiguous
// channels_last) are one long row of B*H*W pixels: GEMM tiles then span batch items for free.
inline bool can_fold_batch(const Planar& v) { return v.batch <= 1 || v.sb == v.pixels * v.sp; }

inline Planar fold_batch(Planar v) {
  v.pixels *= v.batch;
  v.batch = v.batch > 0 ? 1 : 0;
  return v;
}

// A block of the [batch][pixel] plane: `nb` batch items from b0, pixels [p0, p0 + np) of each.
// Its columns are ordered batch item by batch item (cols = nb * np).
struct Tile {
  int64_t b0, nb, p0, np;
  int64_t cols() const { return nb * np; }
};

// One operand tile of a grouped 1x1 conv: `rows` channels (memory channels ch[r]) x the
// tile's columns. A pixel-major tensor's channel stride is 1 except for the odd channels of
// an interleaved output (stride 2), which the scatter writes. Channel-major tiles are stored rows x cols, pixel-major tiles cols x rows
// (a pixel's channels contiguous), like the tensor itself.
template <typename scalar_t, typename acc_t>
inline void gather_tile(const scalar_t* base, const Planar& v, Layout layout, const Tile& t, const int64_t* ch,
                        int64_t rows, acc_t* out) {
  const int64_t cols = t.cols();
  for (int64_t bi = 0; bi < t.nb; ++bi) {
    const scalar_t* src = base + (t.b0 + bi) * v.sb + t.p0 * v.sp;
    if (layout == Layout::kChannelMajor) {
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = src + ch[r] * v.sc;
        acc_t* o = out + r * cols + bi * t.np;
        for (int64_t p = 0; p < t.np; ++p) o[p] = static_cast<acc_t>(row[p]);
      }
    } else {
      for (int64_t p = 0; p < t.np; ++p) {
        const scalar_t* px = src + p * v.sp;
        acc_t* o = out + (bi * t.np + p) * rows;
        for (int64_t r = 0; r < rows; ++r) o[r] = static_cast<acc_t>(px[ch[r]]);  // sources: sc == 1 (as_planar)
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
inline void scatter_tile(const acc_t* in, const Planar& v, Layout layout, const Tile& t, const int64_t* ch,
                         int64_t rows, scalar_t* base) {
  const int64_t cols = t.cols();
  for (int64_t bi = 0; bi < t.nb; ++bi) {
    scalar_t* dst = base + (t.b0 + bi) * v.sb + t.p0 * v.sp;
    if (layout == Layout::kChannelMajor) {
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* row = dst + ch[r] * v.sc;
        const acc_t* i = in + r * cols + bi * t.np;
        for (int64_t p = 0; p < t.np; ++p) row[p] = static_cast<scalar_t>(i[p]);
      }
    } else {
      for (int64_t p = 0; p < t.np; ++p) {
        scalar_t* px = dst + p * v.sp;
        const acc_t* i = in + (bi * t.np + p) * rows;
        if (v.sc == 1) {
          for (int64_t r = 0; r < rows; ++r) px[ch[r]] = static_cast<scalar_t>(i[r]);
        } else {
          for (int64_t r = 0; r < rows; ++r) px[ch[r] * v.sc] = static_cast<scalar_t>(i[r]);
        }
      }
    }
  }
}

}  // namespace shufflenet_ops::cpu
