// Operand tiles of the per-group GEMMs: addressed in place when the group's channels are
// evenly spaced (the shuffle becomes a leading dimension), else gathered into / scattered
// from a small cache-resident buffer.
#pragma once

#include <type_traits>
#include <vector>

#include "../channel_map.h"
#include "gemm.h"
#include "planar.h"

namespace shufflenet_ops::cpu {

// Pixels per GEMM tile: a 256-pixel fp32 tile of 192 channels is ~200 KB, inside L2.
constexpr int64_t kPixelTile = 256;

template <typename T>
struct TileRef {
  T* data = nullptr;  // null: not addressable in place
  int64_t ld = 0;
};

// Group g's tile (rows = its channels, cols pixels from p0 of batch item b), in place.
template <typename T>
inline TileRef<T> direct_tile(T* base, const Planar& v, Layout layout, const RowMap& map, int64_t g, int64_t b,
                              int64_t p0, int64_t cols) {
  const int64_t stride = map.group_stride[g];
  if (stride == 0) return {};
  int64_t ld;
  if (layout == Layout::kChannelMajor) {
    ld = stride * v.sc;
    if (ld < cols) return {};  // BLAS wants ld >= row length even where it is never stepped
  } else {
    if (stride != 1) return {};
    ld = v.sp;
    if (ld < map.rows_per_group) return {};
  }
  if (!fits_blas(ld)) return {};
  return {base + b * v.sb + map.group_channels(g)[0] * v.sc + p0 * v.sp, ld};
}

// Reads group g's tile as acc_t: in place when possible, else gathered into `buffer`.
template <typename scalar_t, typename acc_t>
inline TileRef<const acc_t> read_tile(const scalar_t* base, const Planar& v, Layout layout, const RowMap& map, int64_t g,
                                      int64_t b, int64_t p0, int64_t cols, std::vector<acc_t>& buffer) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    auto ref = direct_tile(base, v, layout, map, g, b, p0, cols);
    if (ref.data) return {ref.data, ref.ld};
  }
  const int64_t rows = map.rows_per_group;
  buffer.resize(rows * cols);
  gather_tile(base, v, layout, b, p0, map.group_channels(g), rows, cols, buffer.data());
  return {buffer.data(), layout == Layout::kChannelMajor ? cols : rows};
}

}  // namespace shufflenet_ops::cpu
