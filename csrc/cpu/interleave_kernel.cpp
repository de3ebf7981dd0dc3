// CPU kernels of the ShuffleNet V2 unit's channel interleave and its inverse:
//   interleave(a, b)            = shuffle(cat(a, b), 2): a's channel j -> 2j, b's -> 2j + 1
//   deinterleave(first, second) = (y[:, 0::2], y[:, 1::2]) of y = cat(first, second)
// one read and one write per element. In channels_last every pixel is a row of channels, and
// torch's own copies of these permutations walk it two elements at a time (a stride-2 inner
// loop: 2.5-3.6x this kernel's time on cached data, docs/design.md); here each row is
// permuted 16 pairs per AVX-512 step. Channel-major (NCHW) layouts copy whole channel planes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "../checks.h"
#include "interleave.h"
#include "planar.h"
#include "prefetch.h"
#include "small_gemm.h"

namespace shufflenet_ops::cpu {
namespace {

// Pixels per task: about 32 KiB of output.
int64_t pixel_grain(int64_t channels) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(channels, 1)); }

template <typename scalar_t>
bool vectorized() {
  return std::is_same_v<scalar_t, float> && use_small_gemm();
}

// y's channel k (of `channels`, planes of `pixels`) from its source plane.
template <typename scalar_t, typename Source>
void copy_planes(const Planar& yv, scalar_t* y, const Source& source) {
  const int64_t channels = yv.channels, pixels = yv.pixels;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(pixels, 1));
  at::parallel_for(0, yv.batch * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / channels, k = t % channels;
      std::memcpy(y + n * yv.sb + k * yv.sc, source(n, k), pixels * sizeof(scalar_t));
    }
  });
}

// Runs run(n, p0, p1) over pixels [p0, p1) of batch item n, covering every pixel of every
// batch item, in parallel.
template <typename Run>
void for_each_run(int64_t batch, int64_t pixels, int64_t channels, const Run& run) {
  at::parallel_for(0, batch * pixels, pixel_grain(channels), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end;) {
      const int64_t n = t / pixels, p0 = t % pixels, p1 = std::min(pixels, p0 + (end - t));
      run(n, p0, p1);
      t += p1 - p0;
    }
  });
}

// The source rows are read once, from memory where they are not in cache: fetched this many
// pixels ahead (without, the loads' misses stalled a cold deinterleave 1.7x behind torch's
// strided copies).
constexpr int64_t kPixelsAhead = 8;

template <typename scalar_t>
void interleave_kernel(const at::Tensor& a, const at::Tensor& b, at::Tensor& y, Layout layout) {
  const Planar av = planar_of(a), bv = planar_of(b), yv = planar_of(y);
  const scalar_t* pa = a.const_data_ptr<scalar_t>();
  const scalar_t* pb = b.const_data_ptr<scalar_t>();
  scalar_t* py = y.mutable_data_ptr<scalar_t>();
  if (layout == Layout::kChannelMajor) {
    return copy_planes<scalar_t>(yv, py, [&](int64_t n, int64_t k) {
      return k % 2 == 0 ? pa + n * av.sb + (k / 2) * av.sc : pb + n * bv.sb + (k / 2) * bv.sc;
    });
  }
  const bool vector = vectorized<scalar_t>();
  const int64_t half = av.channels;
  for_each_run(yv.batch, yv.pixels, yv.channels, [&](int64_t n, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* a_row = pa + n * av.sb + p * av.sp;
      const scalar_t* b_row = pb + n * bv.sb + p * bv.sp;
      if (p + kPixelsAhead < p1) {
        prefetch_row(a_row + kPixelsAhead * av.sp, half);
        prefetch_row(b_row + kPixelsAhead * bv.sp, half);
      }
      interleave<scalar_t>(1, half, a_row, 0, b_row, 0, py + n * yv.sb + p * yv.sp, vector);
    }
  });
}

template <typename scalar_t>
void deinterleave_kernel(const at::Tensor& first, const at::Tensor& second, at::Tensor& even, at::Tensor& odd,
                         Layout layout) {
  const Planar fv = planar_of(first), sv = planar_of(second), ev = planar_of(even), ov = planar_of(odd);
  const scalar_t* pf = first.const_data_ptr<scalar_t>();
  const scalar_t* ps = second.const_data_ptr<scalar_t>();
  scalar_t* pe = even.mutable_data_ptr<scalar_t>();
  scalar_t* po = odd.mutable_data_ptr<scalar_t>();
  const int64_t split = fv.channels;  // y's channel k is first's k below it, second's k - split above
  // y's channel k, of batch item n, pixel p (channel-major: the plane's start).
  const auto source = [&](int64_t n, int64_t k, int64_t p) {
    return k < split ? pf + n * fv.sb + k * fv.sc + p * fv.sp : ps + n * sv.sb + (k - split) * sv.sc + p * sv.sp;
  };
  if (layout == Layout::kChannelMajor) {
    copy_planes<scalar_t>(ev, pe, [&](int64_t n, int64_t j) { return source(n, 2 * j, 0); });
    copy_planes<scalar_t>(ov, po, [&](int64_t n, int64_t j) { return source(n, 2 * j + 1, 0); });
    return;
  }
  const bool vector = vectorized<scalar_t>();
  const int64_t pairs = ev.channels;
  const int64_t head = split / 2;  // the pairs in first (when split is even)
  for_each_run(ev.batch, ev.pixels, 2 * pairs, [&](int64_t n, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      scalar_t* e = pe + n * ev.sb + p * ev.sp;
      scalar_t* o = po + n * ov.sb + p * ov.sp;
      if (split % 2 == 0) {  // each part holds whole pairs: its row deinterleaves on its own
        if (p + kPixelsAhead < p1) {
          prefetch_row(source(n, 0, p + kPixelsAhead), split);
          prefetch_row(source(n, split, p + kPixelsAhead), 2 * pairs - split);
        }
        deinterleave<scalar_t>(head, source(n, 0, p), e, o, vector);
        deinterleave<scalar_t>(pairs - head, source(n, split, p), e + head, o + head, vector);
        continue;
      }
      for (int64_t k = 0; k < 2 * pairs; ++k) (k % 2 == 0 ? e : o)[k / 2] = *source(n, k, p);
    }
  });
}

void check_spatial(const at::Tensor& t, const at::Tensor& x, const char* what, const char* other, const char* op) {
  TORCH_CHECK_VALUE(t.size(0) == x.size(0) && t.size(2) == x.size(2) && t.size(3) == x.size(3), "shufflenet_ops ",
                    op, ": ", what, " and ", other, " must have the same batch and spatial sizes, got ", t.sizes(),
                    " and ", x.sizes());
}

at::Tensor interleave_op(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_input(a_in, "a");
  check_input(b_in, "b");
  check_same(b_in, a_in, "b", "a");
  TORCH_CHECK_VALUE(a_in.sizes() == b_in.sizes(), "shufflenet_ops interleave: a and b must have the same shape, got ",
                    a_in.sizes(), " and ", b_in.sizes());
  const Layout layout = layout_of(a_in);  // the output follows the first argument (as every op's)
  const at::Tensor a = as_planar(a_in, layout), b = as_planar(b_in, layout);
  at::Tensor y = empty_planar(a, 2 * a.size(1), layout);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "interleave", [&] {
    interleave_kernel<scalar_t>(a, b, y, layout);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> deinterleave_op(const at::Tensor& first_in, const at::Tensor& second_in) {
  check_input(first_in, "first");
  check_input(second_in, "second");
  check_same(second_in, first_in, "second", "first");
  check_spatial(second_in, first_in, "second", "first", "deinterleave");
  const int64_t channels = first_in.size(1) + second_in.size(1);
  TORCH_CHECK_VALUE(channels % 2 == 0, "shufflenet_ops deinterleave: first and second must hold an even number of "
                    "channels together, got ", first_in.size(1), " + ", second_in.size(1));
  // The outputs follow first's layout (as every op's its first argument's), or second's when
  // first holds no channel (and so has no layout of its own).
  const Layout layout = layout_of(first_in.size(1) > 0 ? first_in : second_in);
  const at::Tensor first = as_planar(first_in, layout), second = as_planar(second_in, layout);
  at::Tensor even = empty_planar(first, channels / 2, layout), odd = empty_planar(first, channels / 2, layout);
  if (even.numel() == 0) return {even, odd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, even.scalar_type(), "deinterleave", [&] {
    deinterleave_kernel<scalar_t>(first, second, even, odd, layout);
  });
  return {even, odd};
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("interleave", &interleave_op);
  m.impl("deinterleave", &deinterleave_op);
}

}  // namespace shufflenet_ops::cpu
