// CPU grad weight of the fused grouped 1x1 conv + channel shuffle:
//   grad_W[i] (N x K) = sum over batch and pixels of Pout^-1(go)_i (N x P) @ Pin(x)_i^T (P x K)
// with both operands read through their channel maps (no shuffled copy).
//
// Deterministic: the (batch, pixel tile) units are split into a FIXED number of chunks that
// does not depend on the thread count; each chunk accumulates its own partial sum in a fixed
// order and the partials are added in chunk order. Same bits for any thread count.
//
// fp32 on AVX-512 runs each tile through the small_gemm kernels (no packing): BLAS packs
// both operands on every call, and with 12 to 48 channels per group (g=8) the packing costs
// as much as the arithmetic.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../channel_map.h"
#include "../checks.h"
#include "small_gemm.h"
#include "tiles.h"

namespace shufflenet_ops::cpu {
namespace {

// Upper bound on partial sums (memory: chunks * Cout * K accumulators).
constexpr int64_t kMaxChunks = 16;

// acc (n x k) += G (n x cols) @ X (k x cols)^T for one fp32 tile without BLAS; false where
// this CPU has no such kernel. Channel-major tiles are rows of pixels: dot products along
// them. Pixel-major tiles are rows of channels: one operand read through strides against
// the other's contiguous channel rows, accumulated through small_gemm's residual epilogue;
// `transposed` accumulates acc^T (k x n) instead, so that the wider of n and k fills the
// vectors (g=8's second GConv has 12 inputs and 48 outputs per group).
bool grad_weight_tile_small(Layout layout, bool transposed, int64_t n, int64_t k, int64_t cols,
                            TileRef<const float> g, TileRef<const float> x, float* acc) {
  if (layout == Layout::kChannelMajor) {
    return small_gemm_nt_accumulate(n, k, cols, g.data, g.ld, x.data, x.ld, acc, k);
  }
  SmallGemmEpilogue accumulate;  // acc = product + acc
  accumulate.residual = acc;
  accumulate.residual_ld = transposed ? n : k;
  if (transposed) return small_gemm(k, n, cols, x.data, 1, x.ld, g.data, g.ld, acc, n, accumulate);
  return small_gemm(n, k, cols, g.data, 1, g.ld, x.data, x.ld, acc, k, accumulate);
}

template <typename scalar_t>
void grad_weight_kernel(const at::Tensor& go, const RowMap& go_rows, const at::Tensor& x, const RowMap& x_rows,
                        Layout layout, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  Planar gv = planar_of(go), xv = planar_of(x);
  if (layout == Layout::kPixelMajor && can_fold_batch(gv) && can_fold_batch(xv)) {
    gv = fold_batch(gv);
    xv = fold_batch(xv);
  }
  const int64_t groups = go_rows.groups, n = go_rows.rows_per_group, k = x_rows.rows_per_group;
  const TilePlan plan(gv.batch, gv.pixels, tile_columns(n + k));
  const int64_t units = plan.size();
  const int64_t chunks = std::min(units, kMaxChunks);
  std::vector<acc_t> partial(chunks * groups * n * k, acc_t(0));
  const scalar_t* go_data = go.const_data_ptr<scalar_t>();
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();

  bool small = false;
  if constexpr (std::is_same_v<acc_t, float>) small = use_small_gemm();
  // Whether each partial holds grad_W_i^T (k x n): see grad_weight_tile_small.
  const bool transposed = small && layout == Layout::kPixelMajor && n > k;

  at::parallel_for(0, chunks * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> go_buffer, x_buffer;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t c = job / groups, i = job % groups;
      acc_t* acc = partial.data() + job * n * k;
      for (int64_t u = c * units / chunks; u < (c + 1) * units / chunks; ++u) {
        const Tile t = plan[u];
        auto g = read_tile(go_data, gv, layout, go_rows, i, t, go_buffer);
        auto xt = read_tile(x_data, xv, layout, x_rows, i, t, x_buffer);
        if constexpr (std::is_same_v<acc_t, float>) {
          if (small) {
            TORCH_INTERNAL_ASSERT(grad_weight_tile_small(layout, transposed, n, k, t.cols(), g, xt, acc));
            continue;
          }
        }
        if (layout == Layout::kChannelMajor) {  // (n x cols) @ (k x cols)^T
          gemm_row_major<acc_t>(false, true, n, k, t.cols(), 1, g.data, g.ld, xt.data, xt.ld, 1, acc, k);
        } else {  // (cols x n)^T @ (cols x k)
          gemm_row_major<acc_t>(true, false, n, k, t.cols(), 1, g.data, g.ld, xt.data, xt.ld, 1, acc, k);
        }
      }
    }
  });

  // Fixed-order reduction of the partials, parallel over weight elements.
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const int64_t size = groups * n * k;
  at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      int64_t src = e;
      if (transposed) {  // element (r, j) = (within / k, within % k) of its group, stored at (j, r)
        const int64_t within = e % (n * k);
        src = e - within + (within % k) * n + within / k;
      }
      acc_t sum = partial[src];
      for (int64_t c = 1; c < chunks; ++c) sum += partial[c * size + src];
      out_data[e] = static_cast<scalar_t>(sum);
    }
  });
}

at::Tensor conv1x1_shuffle_grad_weight(const at::Tensor& grad_in, const at::Tensor& x_in, int64_t groups,
                                       int64_t in_shuffle, int64_t out_shuffle) {
  check_input(grad_in, "grad_output");
  check_input(x_in, "input");
  check_same(grad_in, x_in, "grad_output");
  const int64_t cout = grad_in.size(1), cin = x_in.size(1);
  check_groups(groups, "groups", cin, "input channels");
  check_groups(groups, "groups", cout, "output channels");
  check_groups(in_shuffle, "in_shuffle", cin, "input channels");
  check_groups(out_shuffle, "out_shuffle", cout, "output channels");
  TORCH_CHECK_VALUE(grad_in.size(0) == x_in.size(0) && grad_in.size(2) == x_in.size(2) &&
                        grad_in.size(3) == x_in.size(3),
                    "grad_output shape ", grad_in.sizes(), " does not match input shape ", x_in.sizes());
  // Both operands in the same layout: the one grad_output suggests.
  const Layout layout = layout_of(grad_in);
  const at::Tensor go = as_planar(grad_in, layout), x = as_planar(x_in, layout);
  at::Tensor out = at::empty({cout, cin / groups, 1, 1}, go.options());
  if (go.numel() == 0 || x.numel() == 0) return out.zero_();
  const RowMap go_rows = output_rows(cout, groups, out_shuffle), x_rows = input_rows(cin, groups, in_shuffle);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, go.scalar_type(), "conv1x1_shuffle_grad_weight", [&] {
    grad_weight_kernel<scalar_t>(go, go_rows, x, x_rows, layout, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("conv1x1_shuffle_grad_weight", &conv1x1_shuffle_grad_weight);
}

}  // namespace shufflenet_ops::cpu
