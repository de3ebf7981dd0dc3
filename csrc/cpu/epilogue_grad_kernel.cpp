// CPU backward of the fused epilogues: grad bias (channel sums read through the output
// shuffle's inverse index) and the ReLU mask (from the saved output).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../channel_map.h"
#include "../checks.h"

namespace shufflenet_ops::cpu {
namespace {

at::Tensor conv1x1_shuffle_grad_bias(const at::Tensor& grad, int64_t out_shuffle) {
  check_input(grad, "grad_output");
  const int64_t cout = grad.size(1);
  check_groups(out_shuffle, "out_shuffle", cout, "output channels");
  // Channel sums in the accumulation type, in the gradient's own (shuffled) channel order...
  const at::Tensor sums = grad.sum({0, 2, 3}, /*keepdim=*/false, at::toOpMathType(grad.scalar_type()));
  // ...then bias entry r (conv output row r) takes the sum of the channel that row landed in.
  const RowMap rows = output_rows(cout, /*groups=*/1, out_shuffle);
  const at::Tensor index = at::tensor(rows.channel, grad.options().dtype(at::kLong));
  return sums.index_select(0, index).to(grad.scalar_type());
}

at::Tensor relu_grad(const at::Tensor& grad, const at::Tensor& output) {
  check_input(grad, "grad_output");
  TORCH_CHECK_TYPE(output.defined(), "output must be a torch.Tensor, got None");
  TORCH_CHECK_VALUE(grad.sizes() == output.sizes(), "relu_grad: grad_output shape ", grad.sizes(),
                    " does not match output shape ", output.sizes());
  check_same(output, grad, "output", "grad_output");
  at::Tensor out = at::empty_like(grad);
  return at::threshold_backward_out(out, grad, output, 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("conv1x1_shuffle_grad_bias", &conv1x1_shuffle_grad_bias);
  m.impl("relu_grad", &relu_grad);
}

}  // namespace shufflenet_ops::cpu
