// Operand tiles of the per-group GEMMs: addressed in place when the group's channels are
// evenly spaced (the shuffle becomes a leading dimension), else gathered into / scattered
// from a small cache-resident buffer.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../channel_map.h"
#include "gemm.h"
#include "planar.h"

namespace shufflenet_ops::cpu {

// How the [batch][pixel] plane is cut into GEMM tiles of about `target_cols` columns.
// Images of 128 pixels or more: tiles of one batch item, the pixels split evenly (no thin
// remainder tile). Smaller ones (the 7x7 stage): several whole batch items per tile, so the
// GEMM is still wide; such tiles are gathered into a buffer. The plan depends only on the
// shape, never on the thread count (grad weight's reduction order is defined by it).
struct TilePlan {
  int64_t batch = 0, pixels = 0;
  int64_t batch_per_tile = 1, tiles_per_batch = 1, tile_pixels = 0;

  TilePlan(int64_t batch_, int64_t pixels_, int64_t target_cols) : batch(batch_), pixels(pixels_) {
    // Folding batch items forces a gather and a scatter (a tile then spans two images): only
    // worth it where one image's pixels make too narrow a GEMM.
    constexpr int64_t kWideEnough = 128;
    if (pixels >= std::min(target_cols / 2, kWideEnough)) {
      tiles_per_batch = (pixels + target_cols - 1) / target_cols;
      tile_pixels = (pixels + tiles_per_batch - 1) / tiles_per_batch;
      // Whole 64-byte lines per tile row where the image is split (fp32: 16 pixels), so the
      // channel-major output can be streamed to memory (small_gemm) from every tile.
      if (tiles_per_batch > 1) {
        tile_pixels = (tile_pixels + 15) / 16 * 16;
        tiles_per_batch = (pixels + tile_pixels - 1) / tile_pixels;
      }
    } else {
      const int64_t most = std::max<int64_t>(1, target_cols / std::max<int64_t>(pixels, 1));
      const int64_t count = (batch + most - 1) / most;
      batch_per_tile = std::max<int64_t>(1, (batch + count - 1) / std::max<int64_t>(count, 1));
      tile_pixels = pixels;
    }
  }

  int64_t size() const { return (batch + batch_per_tile - 1) / batch_per_tile * tiles_per_batch; }

  Tile operator[](int64_t t) const {
    const int64_t b0 = (t / tiles_per_batch) * batch_per_tile, p0 = (t % tiles_per_batch) * tile_pixels;
    return {b0, std::min(batch_per_tile, batch - b0), p0, std::min(tile_pixels, pixels - p0)};
  }
};

// A plan whose tile count is a multiple of `threads` when there are few tiles (15 tiles on 2
// threads: one thread idles while the other runs the last tile): the next few tile counts
// that divide evenly are tried, with tiles no narrower than half the target width unless
// there are fewer tiles than threads (g=8's 384->768 GConv at 7x7, batch 16, NCHW: all 784
// columns fit one tile of tile_columns(144) = 910, which would run on one thread). Only
// for kernels whose results do not depend on the tiling (the forward/grad-input GEMMs;
// grad weight's reduction order does).
inline TilePlan balanced_plan(int64_t batch, int64_t pixels, int64_t target_cols, int64_t threads) {
  constexpr int64_t kMinSplitCols = 64;  // one GEMM panel: a narrower split costs more than it saves
  TilePlan plan(batch, pixels, target_cols);
  const int64_t count = plan.size();
  if (threads <= 1 || count % threads == 0 || count >= 8 * threads) return plan;
  for (int64_t want = (count / threads + 1) * threads; want <= count + 2 * threads; want += threads) {
    const int64_t cols = (batch * pixels + want - 1) / want;
    if (cols < target_cols / 2 && (count >= threads || cols < kMinSplitCols)) break;
    const TilePlan candidate(batch, pixels, cols);
    if (candidate.size() % threads == 0) return candidate;
  }
  return plan;
}

// Columns per GEMM tile for a GEMM whose tiles hold `rows` rows in all (inputs + outputs):
// the tiles of one group stay inside ~512 KB of L2, and narrow groups (g=8 has 12 inputs per
// group) get wide tiles so each BLAS call has enough work to amortise its packing.
inline int64_t tile_columns(int64_t rows) {
  constexpr int64_t kL2Floats = 128 * 1024;
  return std::clamp<int64_t>(kL2Floats / std::max<int64_t>(rows, 1), 128, 4096);
}

template <typename T>
struct TileRef {
  T* data = nullptr;  // null: not addressable in place
  int64_t ld = 0;
};

// Group g's tile (rows = its channels) in place, where a leading dimension can describe it.
template <typename T>
inline TileRef<T> direct_tile(T* base, const Planar& v, Layout layout, const RowMap& map, int64_t g, const Tile& t) {
  const int64_t stride = map.group_stride[g];
  if (stride == 0 || t.nb != 1) return {};
  const int64_t cols = t.np;
  int64_t ld;
  if (layout == Layout::kChannelMajor) {
    ld = stride * v.sc;
    if (ld < cols) return {};  // BLAS wants ld >= row length even where it is never stepped
  } else {
    // A pixel's channels of the tile must be contiguous: evenly spaced rows of a tensor whose
    // channels are themselves spaced (the odd channels of an interleaved output) are not.
    if (stride * v.sc != 1) return {};
    ld = v.sp;
    if (ld < map.rows_per_group) return {};
  }
  if (!fits_blas(ld)) return {};
  return {base + t.b0 * v.sb + map.group_channels(g)[0] * v.sc + t.p0 * v.sp, ld};
}

// Reads group g's tile as acc_t: in place when possible, else gathered into `buffer`.
template <typename scalar_t, typename acc_t>
inline TileRef<const acc_t> read_tile(const scalar_t* base, const Planar& v, Layout layout, const RowMap& map, int64_t g,
                                      const Tile& t, std::vector<acc_t>& buffer) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    auto ref = direct_tile(base, v, layout, map, g, t);
    if (ref.data) return {ref.data, ref.ld};
  }
  const int64_t rows = map.rows_per_group;
  buffer.resize(rows * t.cols());
  gather_tile(base, v, layout, t, map.group_channels(g), rows, buffer.data());
  return {buffer.data(), layout == Layout::kChannelMajor ? t.cols() : rows};
}

}  // namespace shufflenet_ops::cpu
