// CPU forward of the fused grouped 1x1 conv + channel shuffle (both placements), and its
// grad input, which is the same computation with the weight transposed:
//   forward:     Pout(conv(Pin(x), W)) + bias, ReLU
//   grad input:  Pin^-1(conv_transpose(Pout^-1(go), W))
// Per (batch item, pixel tile) task and per group i: D_i (M x P) = op(W_i) (M x Kd) @ S_i (Kd x P),
// where S_i are the source rows of group i (read through a channel map) and D_i the
// destination rows (written through another). Evenly spaced rows go straight to BLAS as a
// leading dimension; other shuffles gather/scatter a cache-resident tile. Bias, residual and
// ReLU are applied to the tile while it is in cache. Nothing shuffled is ever materialised.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../channel_map.h"
#include "../checks.h"
#include "interleave.h"
#include "relu.h"
#include "small_gemm.h"
#include "tiles.h"

namespace shufflenet_ops::cpu {
namespace {

// The weight operand of group i: op(A_i) is (m x kd). Stored row-major per group at
// a + i*m*kd, as (m x kd) or, when transposed, as (kd x m).
template <typename acc_t>
struct WeightOperand {
  const acc_t* data;
  bool transposed;
  int64_t m, kd;
  const acc_t* group(int64_t i) const { return data + i * m * kd; }
  int64_t ld() const { return transposed ? m : kd; }
  // op(W_i)(r, k) = group(i)[r * row_stride() + k * col_stride()]
  int64_t row_stride() const { return transposed ? 1 : kd; }
  int64_t col_stride() const { return transposed ? m : 1; }
};

// op(W_i)^T as a contiguous (kd x m) matrix per group: the row-contiguous B operand that
// small_gemm needs in the pixel-major layout. In 16 x 16 blocks, on every thread for a large
// weight: a walk down the weight's columns touches a new cache line per element once the
// weight outgrows L1 (V2's conv5, 1024 x 464: ~500 us per call that way at batch 1, as long
// as the GEMM itself).
template <typename acc_t>
std::vector<acc_t> pack_weight_transposed(const WeightOperand<acc_t>& w, int64_t groups) {
  constexpr int64_t kBlock = 16;
  constexpr int64_t kSerialElements = 32 * 1024;  // below this, threads cost more than they save
  std::vector<acc_t> packed(groups * w.kd * w.m);
  const int64_t k_blocks = (w.kd + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, kSerialElements / (kBlock * std::max<int64_t>(w.m, 1)));
  at::parallel_for(0, groups * k_blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / k_blocks, k0 = (task % k_blocks) * kBlock, k1 = std::min(w.kd, k0 + kBlock);
      const acc_t* g = w.group(i);
      acc_t* out = packed.data() + i * w.kd * w.m;
      for (int64_t r0 = 0; r0 < w.m; r0 += kBlock) {
        const int64_t r1 = std::min(w.m, r0 + kBlock);
        for (int64_t k = k0; k < k1; ++k)
          for (int64_t r = r0; r < r1; ++r) out[k * w.m + r] = g[r * w.row_stride() + k * w.col_stride()];
      }
    }
  });
  return packed;
}

// The optional residual operand of the epilogue, read in output channel order.
template <typename scalar_t>
struct Residual {
  const scalar_t* data = nullptr;  // null: none
  Planar view;
};

// In-cache epilogue on a destination tile (rows = the group's conv output rows, which land in
// output channels `channels[r]`): + bias, + residual, ReLU. One pass while the tile is hot.
template <typename scalar_t, typename acc_t>
void epilogue(acc_t* d, int64_t ld, Layout layout, const Tile& t, int64_t rows, const int64_t* channels,
              const acc_t* bias, const Residual<scalar_t>& residual, bool relu) {
  if (!bias && !relu && !residual.data) return;
  const acc_t zero = 0;
  const Planar& rv = residual.view;
  for (int64_t bi = 0; bi < t.nb; ++bi) {
    const scalar_t* res = residual.data ? residual.data + (t.b0 + bi) * rv.sb + t.p0 * rv.sp : nullptr;
    if (layout == Layout::kChannelMajor) {
      for (int64_t r = 0; r < rows; ++r) {
        acc_t* row = d + r * ld + bi * t.np;
        const acc_t add = bias ? bias[r] : zero;
        const scalar_t* res_row = res ? res + channels[r] * rv.sc : nullptr;
        for (int64_t p = 0; p < t.np; ++p) {
          acc_t v = row[p] + add;
          if (res_row) v += static_cast<acc_t>(res_row[p * rv.sp]);
          row[p] = relu ? cpu::relu(v) : v;  // a select, not a branch: signs are random
        }
      }
    } else {
      for (int64_t p = 0; p < t.np; ++p) {
        acc_t* px = d + (bi * t.np + p) * ld;
        const scalar_t* res_px = res ? res + p * rv.sp : nullptr;
        for (int64_t r = 0; r < rows; ++r) {
          acc_t v = px[r] + (bias ? bias[r] : zero);
          if (res_px) v += static_cast<acc_t>(res_px[channels[r] * rv.sc]);
          px[r] = relu ? cpu::relu(v) : v;
        }
      }
    }
  }
}

// The other half of an interleaved output (group_conv1x1_shuffle's interleave_with): `src`
// (the conv output's shape) is copied into the even channels `dst` of y, tile by tile in the
// GEMM's own tasks, so the copy is parallel and each tile's pixels of y are written by one
// thread while they are in its cache (in channels_last the odd and even channels of a pixel
// share its cache lines).
template <typename scalar_t>
struct Passthrough {
  const scalar_t* src = nullptr;  // null: none
  Planar sv;
  scalar_t* dst = nullptr;
  Planar dv;
};

template <typename scalar_t>
void copy_passthrough_tile(const Passthrough<scalar_t>& pass, Layout layout, const Tile& t) {
  const Planar &sv = pass.sv, &dv = pass.dv;
  for (int64_t bi = 0; bi < t.nb; ++bi) {
    const scalar_t* src = pass.src + (t.b0 + bi) * sv.sb + t.p0 * sv.sp;
    scalar_t* dst = pass.dst + (t.b0 + bi) * dv.sb + t.p0 * dv.sp;
    if (layout == Layout::kChannelMajor) {  // pixel stride 1 on both sides: whole rows
      for (int64_t c = 0; c < sv.channels; ++c) {
        std::copy_n(src + c * sv.sc, t.np, dst + c * dv.sc);
      }
    } else {  // a pixel's channels, contiguous in src, every other channel of y
      for (int64_t p = 0; p < t.np; ++p) {
        const scalar_t* s = src + p * sv.sp;
        scalar_t* d = dst + p * dv.sp;
        for (int64_t c = 0; c < sv.channels; ++c) d[c * dv.sc] = s[c];
      }
    }
  }
}

template <typename scalar_t>
void pointwise_gemm(const at::Tensor& src, const RowMap& src_rows, const WeightOperand<at::opmath_type<scalar_t>>& w,
                    const at::opmath_type<scalar_t>* bias, const at::Tensor& residual_tensor, bool relu,
                    const RowMap& dst_rows, at::Tensor& dst, Layout layout, Passthrough<scalar_t> pass = {}) {
  using acc_t = at::opmath_type<scalar_t>;
  Planar sv = planar_of(src), dv = planar_of(dst);
  Residual<scalar_t> residual;
  if (residual_tensor.defined()) residual = {residual_tensor.const_data_ptr<scalar_t>(), planar_of(residual_tensor)};
  if (layout == Layout::kPixelMajor && can_fold_batch(sv) && can_fold_batch(dv) &&
      (!residual.data || can_fold_batch(residual.view)) &&
      (!pass.src || (can_fold_batch(pass.sv) && can_fold_batch(pass.dv)))) {
    sv = fold_batch(sv);
    dv = fold_batch(dv);
    residual.view = fold_batch(residual.view);
    pass.sv = fold_batch(pass.sv);
    pass.dv = fold_batch(pass.dv);
  }
  const int64_t groups = src_rows.groups, m = w.m, kd = w.kd;
  // Channel-major tiles hold one group's rows at a time; pixel-major tiles are whole pixel
  // rows (every channel of the input and output), so those count against the cache.
  const int64_t tile_rows =
      layout == Layout::kChannelMajor ? m + kd : sv.channels + dv.channels + (pass.src ? pass.sv.channels : 0);
  const TilePlan plan = balanced_plan(sv.batch, sv.pixels, tile_columns(tile_rows), at::get_num_threads());
  bool small = false;
  std::vector<acc_t> packed_w;
  if constexpr (std::is_same_v<acc_t, float>) {
    small = use_small_gemm();
    // A transposed operand is stored as op(W_i)^T already: the B operand as it is.
    if (small && layout == Layout::kPixelMajor && !w.transposed) packed_w = pack_weight_transposed(w, groups);
  }
  const acc_t* b_operand = w.transposed ? w.data : packed_w.data();
  const scalar_t* src_data = src.const_data_ptr<scalar_t>();
  scalar_t* dst_data = dst.mutable_data_ptr<scalar_t>();
  // Pixel-major interleaved output whose conv rows are all of y's odd channels in order (one
  // group and no shuffle left: V2's convs, and fold_ungrouped_output_shuffle folds any
  // ungrouped shuffle): the GEMM tile (in its buffer: y's odd channels are not contiguous) and
  // the passthrough are written together, pixel by pixel (interleave.h: two AVX-512 permutes
  // per 16 channels of each), instead of a strided scatter and a strided copy.
  bool interleave_tile = false;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    interleave_tile = pass.src && layout == Layout::kPixelMajor && groups == 1 && dst_rows.channel[0] == 0 &&
                      dst_rows.group_stride[0] == 1 && dv.sc == 2 && dv.sp == 2 * m && pass.dv.sp == dv.sp &&
                      pass.sv.sc == 1;
  }
  const bool vector_interleave = std::is_same_v<scalar_t, float> && use_small_gemm();
  // Fewer tiles than threads (batch 1 at 7x7 is one tile): each tile's output channels are
  // also split, in whole 16-column vectors, among the threads (`column_chunks` tasks per
  // tile). Only the pixel-major small_gemm path writing in place with its epilogue in
  // registers splits (see `split` below); elsewhere chunk 0 does the whole group.
  const int64_t threads = at::get_num_threads();
  int64_t column_chunks = 1;
  if (small && layout == Layout::kPixelMajor && plan.size() < threads && m >= 128) {
    column_chunks = std::min((threads + plan.size() - 1) / plan.size(), m / 64);
  }
  const int64_t chunk_columns = ((m + column_chunks - 1) / column_chunks + 15) / 16 * 16;

  at::parallel_for(0, plan.size() * column_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> src_buffer, dst_buffer;
    for (int64_t task = begin; task < end; ++task) {
      const Tile t = plan[task / column_chunks];
      const int64_t chunk = task % column_chunks;
      const int64_t cols = t.cols();
      if (pass.src && chunk == 0 && !interleave_tile) copy_passthrough_tile(pass, layout, t);
      for (int64_t i = 0; i < groups; ++i) {
        // Pixel-major source rows spread evenly by a shuffle (the official code's input
        // shuffle reads every g-th channel): small_gemm reads them in place through a column
        // stride instead of a gather.
        TileRef<const acc_t> s;
        int64_t s_col = 1;
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (small && layout == Layout::kPixelMajor && t.nb == 1 && src_rows.group_stride[i] > 1) {
            s = {src_data + t.b0 * sv.sb + src_rows.group_channels(i)[0] * sv.sc + t.p0 * sv.sp, sv.sp};
            s_col = src_rows.group_stride[i] * sv.sc;
          }
        }
        if (!s.data) s = read_tile(src_data, sv, layout, src_rows, i, t, src_buffer);
        const bool s_in_place = src_buffer.empty() || s.data != src_buffer.data();
        TileRef<acc_t> d;
        if constexpr (std::is_same_v<scalar_t, acc_t>) d = direct_tile(dst_data, dv, layout, dst_rows, i, t);
        const bool scatter = d.data == nullptr;
        if (scatter) {
          dst_buffer.resize(m * cols);
          d = {dst_buffer.data(), layout == Layout::kChannelMajor ? cols : m};
        }
        const acc_t* group_bias = bias ? bias + i * m : nullptr;
        // small_gemm applies bias, residual and ReLU in registers when the residual tile is
        // addressable like the output tile (it is whenever the output is written in place).
        TileRef<const scalar_t> residual_tile;
        if (residual.data && !scatter) {
          residual_tile = direct_tile(residual.data, residual.view, layout, dst_rows, i, t);
        }
        const bool epilogue_in_registers = !residual.data || residual_tile.data;
        // This task's output columns [j0, j1) of the group.
        const bool split = column_chunks > 1 && !scatter && epilogue_in_registers;
        const int64_t j0 = split ? chunk * chunk_columns : 0, j1 = split ? std::min(m, j0 + chunk_columns) : m;
        if (split ? j0 >= j1 : chunk != 0) continue;
        SmallGemmEpilogue in_registers;
        if (epilogue_in_registers) {
          (layout == Layout::kChannelMajor ? in_registers.row_bias : in_registers.col_bias) =
              reinterpret_cast<const float*>(group_bias);
          in_registers.residual = reinterpret_cast<const float*>(residual_tile.data);
          in_registers.residual_ld = residual_tile.ld;
          in_registers.relu = relu;
        }
        bool done = false;
        if (layout == Layout::kChannelMajor) {  // D (m x cols) = op(W_i) @ S (kd x cols)
          done = small && small_gemm(m, cols, kd, reinterpret_cast<const float*>(w.group(i)), w.row_stride(),
                                     w.col_stride(), reinterpret_cast<const float*>(s.data), s.ld,
                                     reinterpret_cast<float*>(d.data), d.ld, in_registers,
                                     /*stream_rows=*/s_in_place && !scatter);
          if (!done) {
            gemm_row_major<acc_t>(w.transposed, false, m, cols, kd, 1, w.group(i), w.ld(), s.data, s.ld, 0, d.data,
                                  d.ld);
          }
        } else {  // D^T (cols x m) = S^T (cols x kd) @ op(W_i)^T, columns [j0, j1)
          if (in_registers.col_bias) in_registers.col_bias += j0;
          if (in_registers.residual) in_registers.residual += j0;
          done = small && small_gemm(cols, j1 - j0, kd, reinterpret_cast<const float*>(s.data), s.ld, s_col,
                                     reinterpret_cast<const float*>(b_operand + i * kd * m + j0), m,
                                     reinterpret_cast<float*>(d.data) + j0, d.ld, in_registers,
                                     /*stream_rows=*/false, /*prefetch_rows=*/s_in_place);
          TORCH_INTERNAL_ASSERT(done || !split, "a column split needs small_gemm");
          if (!done) {
            TORCH_INTERNAL_ASSERT(s_col == 1, "strided source rows need small_gemm");
            gemm_row_major<acc_t>(false, !w.transposed, cols, m, kd, 1, s.data, s.ld, w.group(i), w.ld(), 0, d.data,
                                  d.ld);
          }
        }
        const int64_t* channels = dst_rows.group_channels(i);
        if (!done || !epilogue_in_registers) epilogue(d.data, d.ld, layout, t, m, channels, group_bias, residual, relu);
        if (scatter && interleave_tile) {
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            for (int64_t bi = 0; bi < t.nb; ++bi) {
              interleave(t.np, m, pass.src + (t.b0 + bi) * pass.sv.sb + t.p0 * pass.sv.sp, pass.sv.sp,
                         d.data + bi * t.np * m, m, pass.dst + (t.b0 + bi) * pass.dv.sb + t.p0 * pass.dv.sp,
                         vector_interleave);
            }
          }
        } else if (scatter) {
          scatter_tile(d.data, dv, layout, t, channels, m, dst_data);
        }
      }
    }
  });
}

// A (rows, cols) matrix stored as its transpose, row-major (and not also row-major itself).
bool is_column_major(const at::Tensor& w) {
  return w.size(0) > 1 && w.size(1) > 1 && w.stride(0) == 1 && w.stride(1) == w.size(0);
}

// weight as a (Cout, K) matrix in the accumulation type: row-major, or column-major where an
// ungrouped weight's memory already is W^T (the fused modules keep their folded 1x1 weights so
// on CPU: W^T's rows are the B operand of the pixel-major GEMM, which then packs nothing; a
// per-call transpose of V2's 1024 x 464 conv5 weight costs ~130-200 us, as long as the GEMM).
at::Tensor weight_matrix(const at::Tensor& weight, int64_t groups) {
  const auto acc = at::toOpMathType(weight.scalar_type());
  at::Tensor w = weight.reshape({weight.size(0), weight.size(1)}).to(acc);
  return groups == 1 && is_column_major(w) ? w : w.contiguous();
}

// An ungrouped conv's output shuffle is a permutation of its output channels:
// P(W x + b) = (P W) x + P b. Permuting the weight rows (and the bias) instead lets the kernel
// write whole pixel rows in place rather than scatter them (one group's shuffled rows are not
// evenly spaced: RowMap stride 0), as in Stage 2's first unit (24 -> 60 channels at 56x56,
// ungrouped). The same permuted weight serves grad input, which then reads go in place.
// Each output element is the same dot product as before, in the same order. Returns
// out_shuffle unchanged, or 1 once folded.
int64_t fold_ungrouped_output_shuffle(at::Tensor& w, at::Tensor* b, int64_t groups, int64_t out_shuffle) {
  const int64_t cout = w.size(0);
  if (groups != 1 || out_shuffle == 1 || out_shuffle == cout) return out_shuffle;
  const RowMap dst = output_rows(cout, 1, out_shuffle);
  at::Tensor row_of_channel = at::empty({cout}, at::TensorOptions().dtype(at::kLong));
  int64_t* index = row_of_channel.data_ptr<int64_t>();
  for (int64_t r = 0; r < cout; ++r) index[dst.channel[r]] = r;
  w = w.index_select(0, row_of_channel);
  if (b && b->defined()) *b = b->index_select(0, row_of_channel);
  return 1;
}

// With interleave_with: y = interleave(interleave_with, f) has 2*Cout channels. The conv
// writes f through its usual output map into the view y[:, 1::2], whose channel stride is
// doubled: in NCHW an evenly spaced group's rows are still one GEMM output with a doubled
// leading dimension (in place, streamed); in channels_last a pixel's rows are every other
// element, so the tile is scattered from the cache-resident buffer. The passthrough goes to
// y[:, 0::2] in the same tasks (copy_passthrough_tile). No concatenated tensor exists.
at::Tensor conv1x1_forward(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           int64_t groups, int64_t in_shuffle, int64_t out_shuffle, bool relu,
                           const std::optional<at::Tensor>& residual,
                           const std::optional<at::Tensor>& interleave_with = std::nullopt) {
  check_conv(x_in, weight, bias, groups, in_shuffle, out_shuffle);
  check_residual(residual, x_in, weight.size(0));
  check_interleave_with(interleave_with, x_in, weight.size(0));
  const Layout layout = layout_of(x_in);
  const at::Tensor x = as_planar(x_in, layout);
  const int64_t cin = x.size(1), cout = weight.size(0);
  const bool interleaved = interleave_with.has_value();
  const at::Tensor y_full = empty_planar(x, interleaved ? 2 * cout : cout, layout);
  at::Tensor y = interleaved ? y_full.slice(1, 1, 2 * cout, 2) : y_full;
  if (y.numel() == 0) return y_full;
  const at::Tensor pass = interleaved ? as_planar(*interleave_with, layout) : at::Tensor();
  const at::Tensor pass_dst = interleaved ? y_full.slice(1, 0, 2 * cout, 2) : at::Tensor();
  at::Tensor w = weight_matrix(weight, groups);
  at::Tensor b = bias.has_value() ? bias->to(w.scalar_type()).contiguous() : at::Tensor();
  out_shuffle = fold_ungrouped_output_shuffle(w, &b, groups, out_shuffle);
  const bool column_major = is_column_major(w);  // else row-major (index_select returns it so)
  const at::Tensor res = residual.has_value() ? as_planar(*residual, layout) : at::Tensor();
  const RowMap src_rows = input_rows(cin, groups, in_shuffle), dst_rows = output_rows(cout, groups, out_shuffle);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "conv1x1_shuffle_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const WeightOperand<acc_t> op{w.const_data_ptr<acc_t>(), column_major, cout / groups, cin / groups};
    Passthrough<scalar_t> passthrough;
    if (interleaved) {
      passthrough = {pass.const_data_ptr<scalar_t>(), planar_of(pass), pass_dst.data_ptr<scalar_t>(),
                     planar_of(pass_dst)};
    }
    pointwise_gemm<scalar_t>(x, src_rows, op, b.defined() ? b.const_data_ptr<acc_t>() : nullptr, res, relu, dst_rows,
                             y, layout, passthrough);
  });
  return y_full;
}

at::Tensor group_conv1x1_shuffle(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t groups, int64_t shuffle_groups, bool relu,
                                 const std::optional<at::Tensor>& residual,
                                 const std::optional<at::Tensor>& interleave_with) {
  return conv1x1_forward(x, weight, bias, groups, 1, shuffle_groups, relu, residual, interleave_with);
}

at::Tensor shuffle_group_conv1x1(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t groups, int64_t shuffle_groups, bool relu,
                                 const std::optional<at::Tensor>& residual) {
  return conv1x1_forward(x, weight, bias, groups, shuffle_groups, 1, relu, residual);
}

at::Tensor conv1x1_shuffle_grad_input(const at::Tensor& grad_in, const at::Tensor& weight, int64_t groups,
                                      int64_t in_shuffle, int64_t out_shuffle) {
  check_input(grad_in, "grad_output");
  check_weight_shape(weight);
  const int64_t cout = weight.size(0), cin = weight.size(1) * groups;
  check_groups(groups, "groups", cout, "output channels (weight.shape[0])");
  TORCH_CHECK_VALUE(grad_in.size(1) == cout, "grad_output has ", grad_in.size(1), " channels, weight expects ", cout);
  check_groups(in_shuffle, "in_shuffle", cin, "input channels");
  check_groups(out_shuffle, "out_shuffle", cout, "output channels");
  check_same(weight, grad_in, "weight", "grad_output");
  const Layout layout = layout_of(grad_in);
  const at::Tensor grad = as_planar(grad_in, layout);
  at::Tensor grad_x = empty_planar(grad, cin, layout);
  if (grad_x.numel() == 0) return grad_x;
  at::Tensor w = weight_matrix(weight, groups);
  out_shuffle = fold_ungrouped_output_shuffle(w, nullptr, groups, out_shuffle);
  const bool column_major = is_column_major(w);
  // Read go through the forward's output map (= Pout^-1), write through its input map (= Pin^-1).
  const RowMap src_rows = output_rows(cout, groups, out_shuffle), dst_rows = input_rows(cin, groups, in_shuffle);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "conv1x1_shuffle_grad_input", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // op(W) = W^T: stored transposed when W is row-major, as itself when W is column-major.
    const WeightOperand<acc_t> op{w.const_data_ptr<acc_t>(), !column_major, cin / groups, cout / groups};
    pointwise_gemm<scalar_t>(grad, src_rows, op, nullptr, at::Tensor(), false, dst_rows, grad_x, layout);
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("group_conv1x1_shuffle", &group_conv1x1_shuffle);
  m.impl("shuffle_group_conv1x1", &shuffle_group_conv1x1);
  m.impl("conv1x1_shuffle_grad_input", &conv1x1_shuffle_grad_input);
}

}  // namespace shufflenet_ops::cpu
