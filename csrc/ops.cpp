// The op schema, defined once. CPU kernels live in csrc/cpu/ (TORCH_LIBRARY_IMPL). Everything
// else about an op is its OpSpec in shufflenet_ops/ops/ (docs/design.md, "Adding an op"): the
// fake kernel, the autograd formula and the CUDA kernel (Triton; the pools' reference) are
// registered from Python.
//
// Conventions shared by every op:
//   shuffle(x, s): output channel j*s + i <- input channel i*(C/s) + j (torch.channel_shuffle).
//   in_shuffle / out_shuffle: the shuffle group counts applied to the conv's input / output
//   in the forward pass (1 = no shuffle). Backward ops take the forward's values and read or
//   write through the inverse permutation (shuffle(., C/s)).
//   Outputs are in the memory format of the first tensor argument (NCHW or channels_last).
//   residual: an optional tensor of the output's shape added (in output channel order) before
//   the ReLU, e.g. a ShuffleNet unit's shortcut: relu(x + branch) in the conv's epilogue.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

TORCH_LIBRARY(shufflenet_ops, m) {
  m.def("channel_shuffle(Tensor x, int groups) -> Tensor");
  m.def("interleave(Tensor a, Tensor b) -> Tensor");
  m.def("deinterleave(Tensor first, Tensor second) -> (Tensor even, Tensor odd)");
  // f = act(shuffle(conv1x1(x, weight, groups) + bias, shuffle_groups) + residual)
  // y = f, or with interleave_with (f's shape) y = interleave(interleave_with, f): 2*Cout
  // channels, channel 2j = interleave_with[:, j], channel 2j+1 = f[:, j] (a ShuffleNet V2 unit's
  // shuffle(cat(a, f), 2)); the conv writes its rows straight into the odd channels.
  m.def(
      "group_conv1x1_shuffle(Tensor x, Tensor weight, Tensor? bias, int groups, "
      "int shuffle_groups, bool relu, Tensor? residual=None, Tensor? interleave_with=None) -> Tensor");
  // y = act(conv1x1(shuffle(x, shuffle_groups), weight, groups) + bias + residual)
  m.def(
      "shuffle_group_conv1x1(Tensor x, Tensor weight, Tensor? bias, int groups, "
      "int shuffle_groups, bool relu, Tensor? residual=None) -> Tensor");
  // Backward of y = Pout(conv(Pin(x))), given grad_output = dL/dy (already ReLU-masked).
  m.def(
      "conv1x1_shuffle_grad_input(Tensor grad_output, Tensor weight, int groups, "
      "int in_shuffle, int out_shuffle) -> Tensor");
  m.def(
      "conv1x1_shuffle_grad_weight(Tensor grad_output, Tensor x, int groups, "
      "int in_shuffle, int out_shuffle) -> Tensor");
  m.def("conv1x1_shuffle_grad_bias(Tensor grad_output, int out_shuffle) -> Tensor");
  // grad_output * (output > 0): the ReLU epilogue's backward, from the saved output.
  m.def("relu_grad(Tensor grad_output, Tensor output) -> Tensor");
  // relu(max_pool2d(x, 3, stride=2, padding=1)) and relu(avg_pool2d(x, 3, stride=2, padding=1))
  // (the average counts the padding): the stem's pool and the stride-2 units' shortcut.
  m.def("max_pool3x3s2_relu(Tensor x) -> Tensor");
  m.def("avg_pool3x3s2_relu(Tensor x) -> Tensor");
  // The stem's BN (training: batch statistics), ReLU and max pool in training, BN not folded:
  //   out = relu(max_pool2d(batch_norm(x, mean, var, weight, bias, eps), 3, stride=2, padding=1))
  // mean, var: the batch's per-channel mean and biased variance (the caller updates running
  // statistics); window: each output's max position in its 3x3 window (dh * 3 + dw), uint8.
  m.def(
      "batch_norm_relu_max_pool3x3s2(Tensor x, Tensor weight, Tensor bias, float eps) -> "
      "(Tensor out, Tensor mean, Tensor var, Tensor window)");
  // Its backward from the forward's outputs: (grad_x, grad_weight, grad_bias).
  m.def(
      "batch_norm_relu_max_pool3x3s2_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor mean, "
      "Tensor var, Tensor window, Tensor out, float eps) -> (Tensor, Tensor, Tensor)");
  // BatchNorm with batch statistics (training), then the ReLU if relu: every BN of a unit in
  // training. out = act(batch_norm(x, mean, var, weight, bias, eps)); mean, var as above.
  m.def("batch_norm_relu(Tensor x, Tensor weight, Tensor bias, float eps, bool relu) -> "
        "(Tensor out, Tensor mean, Tensor var)");
  m.def(
      "batch_norm_relu_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor mean, Tensor var, Tensor out, "
      "float eps, bool relu) -> (Tensor, Tensor, Tensor)");
  // An inference op (BN folded; forward only: its autograd kernel, below, refuses a call that
  // would need a graph), a whole ShuffleNet V1 unit:
  //   h = relu(conv1x1(x, compress) + compress_bias)                   grouped, Cin -> B
  //   d = depthwise3x3(h, stride, padding 1) + depthwise_bias          B -> B
  //   e = conv1x1(shuffle(d, shuffle_groups), expand) + expand_bias    grouped, B -> E
  //   y = relu(x + e) (stride 1, E == Cin)  or  cat(relu(avgpool3x3s2(x)), relu(e)) (stride 2)
  // The 1x1 weights come group-transposed, (groups, Cin/groups, B/groups) and
  // (groups, B/groups, E/groups): the GEMMs' B operand as it is read, so no call repacks them
  // (shufflenet_ops.ops.shuffle_unit.pack_pointwise_weight).
  m.def(
      "shuffle_unit(Tensor x, Tensor compress_weight, Tensor compress_bias, Tensor depthwise_weight, "
      "Tensor depthwise_bias, Tensor expand_weight, Tensor expand_bias, int shuffle_groups, int stride) -> Tensor");
  // An inference op (as shuffle_unit), a whole ShuffleNet V2 unit:
  //   branch2(v) = relu(conv1x1(depthwise3x3(relu(conv1x1(v, compress) + compress_bias), stride)
  //                + depthwise_bias, expand) + expand_bias)
  //   branch1(v) = relu(conv1x1(depthwise3x3(v, 2) + branch1_depthwise_bias, branch1_pointwise)
  //                + branch1_pointwise_bias)
  //   y = shuffle(cat(x1, branch2(x2)), 2) with x1, x2 = x.chunk(2, 1)      stride 1
  //   y = shuffle(cat(branch1(x), branch2(x)), 2)                          stride 2
  // 1x1 weights packed as shuffle_unit's; the branch1 tensors are None for stride 1.
  m.def(
      "shuffle_unit_v2(Tensor x, Tensor compress_weight, Tensor compress_bias, Tensor depthwise_weight, "
      "Tensor depthwise_bias, Tensor expand_weight, Tensor expand_bias, Tensor? branch1_depthwise_weight=None, "
      "Tensor? branch1_depthwise_bias=None, Tensor? branch1_pointwise_weight=None, "
      "Tensor? branch1_pointwise_bias=None, int stride=1) -> Tensor");
}

namespace {

// The inference ops have no backward. Their autograd kernel refuses to record a graph (an
// error now, rather than at backward) and otherwise goes straight to the backend's kernel, in
// C++: a Python autograd registration costs ~3.5 us per call, a tenth of a batch-1 unit's time.
void inference_only_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  bool requires_grad = false;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::IValue& value = (*stack)[stack->size() - arguments.size() + i];
    requires_grad = requires_grad || (value.isTensor() && value.toTensor().requires_grad());
  }
  TORCH_CHECK(!(requires_grad && at::GradMode::is_enabled()), op.schema().name(),
              " is an inference op and has no backward: call it under torch.no_grad() or "
              "torch.inference_mode(), or with tensors that do not require grad (the fused modules take "
              "their per-op path when a gradient is needed)");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.callBoxed(stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, Autograd, m) {
  m.impl("shuffle_unit", torch::CppFunction::makeFromBoxedFunction<&inference_only_autograd>());
  m.impl("shuffle_unit_v2", torch::CppFunction::makeFromBoxedFunction<&inference_only_autograd>());
}
