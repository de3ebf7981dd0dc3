// Argument checks shared by every C++ op. Same messages and exception types as the Python
// layer (shufflenet_ops/_checks.py): ValueError for shapes and group counts, TypeError for
// dtypes, RuntimeError for devices.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace shufflenet_ops {

inline void check_input(const at::Tensor& x, const char* what) {
  TORCH_CHECK_TYPE(x.defined(), what, " must be a torch.Tensor, got None");
  TORCH_CHECK_VALUE(x.dim() == 4, what, " must be 4-D (N, C, H, W), got ", x.dim(), "-D with shape ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(
      dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, what,
      " has unsupported dtype ", dt, "; supported: float32, float64, bfloat16, float16");
}

inline void check_groups(int64_t value, const char* name, int64_t channels, const char* channels_name) {
  TORCH_CHECK_VALUE(value >= 1, name, " must be >= 1, got ", value);
  TORCH_CHECK_VALUE(
      channels % value == 0, channels_name, " (", channels, ") must be divisible by ", name, " (", value, ")");
}

// t has the dtype and device of x (named `other` in the message).
inline void check_same(const at::Tensor& t, const at::Tensor& x, const char* what, const char* other = "input") {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), what, " dtype ", t.scalar_type(), " does not match ", other,
                   " dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), what, " is on ", t.device(), " but ", other, " is on ", x.device());
}

// A 1x1 conv weight: (Cout, Cin/groups, 1, 1) or (Cout, Cin/groups).
inline void check_weight_shape(const at::Tensor& weight) {
  TORCH_CHECK_TYPE(weight.defined(), "weight must be a torch.Tensor, got None");
  if (weight.dim() == 4) {
    TORCH_CHECK_VALUE(weight.size(2) == 1 && weight.size(3) == 1,
                      "weight must be a 1x1 kernel (Cout, Cin/groups, 1, 1), got kernel ", weight.size(2), "x",
                      weight.size(3), " in shape ", weight.sizes());
  } else {
    TORCH_CHECK_VALUE(weight.dim() == 2, "weight must have shape (Cout, Cin/groups, 1, 1) or (Cout, Cin/groups), got ",
                      weight.sizes());
  }
}

// A 1x1 conv weight for `cin` input channels in `groups` groups.
inline void check_weight(const at::Tensor& weight, int64_t cin, int64_t groups) {
  check_weight_shape(weight);
  check_groups(groups, "groups", cin, "input channels");
  check_groups(groups, "groups", weight.size(0), "output channels (weight.shape[0])");
  TORCH_CHECK_VALUE(weight.size(1) * groups == cin, "weight shape ", weight.sizes(), " does not match input with ", cin,
                    " channels and groups=", groups, ": expected weight.shape[1] == ", cin / groups);
}

inline void check_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       int64_t groups, int64_t in_shuffle, int64_t out_shuffle) {
  check_input(x, "input");
  check_weight(weight, x.size(1), groups);
  check_groups(in_shuffle, "shuffle_groups", x.size(1), "input channels");
  check_groups(out_shuffle, "shuffle_groups", weight.size(0), "output channels");
  check_same(weight, x, "weight");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == weight.size(0), "bias must have shape (", weight.size(0),
                      ",), got ", b.sizes());
    check_same(b, x, "bias");
  }
}

inline void check_residual(const std::optional<at::Tensor>& residual, const at::Tensor& x, int64_t cout) {
  if (!residual.has_value()) return;
  const at::Tensor& r = *residual;
  TORCH_CHECK_VALUE(r.dim() == 4 && r.size(0) == x.size(0) && r.size(1) == cout && r.size(2) == x.size(2) &&
                        r.size(3) == x.size(3),
                    "residual must have the output's shape (", x.size(0), ", ", cout, ", ", x.size(2), ", ", x.size(3),
                    "), got ", r.sizes());
  check_same(r, x, "residual");
}

// interleave_with of group_conv1x1_shuffle: the passthrough half of an interleaved output, of
// the conv output's shape (N, cout, H, W).
inline void check_interleave_with(const std::optional<at::Tensor>& t, const at::Tensor& x, int64_t cout) {
  if (!t.has_value()) return;
  const at::Tensor& a = *t;
  TORCH_CHECK_VALUE(a.dim() == 4 && a.size(0) == x.size(0) && a.size(1) == cout && a.size(2) == x.size(2) &&
                        a.size(3) == x.size(3),
                    "interleave_with must have the conv output's shape (", x.size(0), ", ", cout, ", ", x.size(2),
                    ", ", x.size(3), "), got ", a.sizes());
  check_same(a, x, "interleave_with");
}

// ---- the whole-unit inference ops (shuffle_unit, shuffle_unit_v2)

// x of a unit op named `op`: 4-D float32/float64 with channels and pixels, and its stride 1 or 2.
inline void check_unit_input(const at::Tensor& x, int64_t stride, const char* op) {
  check_input(x, "x");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   " supports float32 and float64, got x of dtype ", x.scalar_type(),
                   " (other dtypes: run the unit's per-op path)");
  TORCH_CHECK_VALUE(x.size(1) > 0, op, ": x must have at least one channel, got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, op, ": x must have a non-empty spatial size, got ", x.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
}

// A packed 1x1 weight (groups, inputs/groups, outputs/groups) for `inputs` input channels
// (pack_pointwise_weight); returns its output channels.
inline int64_t check_packed(const at::Tensor& w, const char* name, const char* inputs_name, int64_t inputs,
                            const char* outputs_name) {
  TORCH_CHECK_VALUE(w.dim() == 3 && w.size(0) >= 1 && w.size(0) * w.size(1) == inputs && w.size(2) >= 1, name,
                    " must have shape (groups, ", inputs_name, "/groups, ", outputs_name, "/groups) with ",
                    inputs_name, " = ", inputs, ", got ", w.sizes());
  return w.size(0) * w.size(2);
}

inline void check_vector(const at::Tensor& b, const char* name, int64_t length) {
  TORCH_CHECK_TYPE(b.defined(), name, " must be a torch.Tensor, got None");
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == length, name, " must have shape (", length, ",), got ", b.sizes());
}

inline void check_depthwise(const at::Tensor& w, const char* name, int64_t channels) {
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(0) == channels && w.size(1) == 1 && w.size(2) == 3 && w.size(3) == 3,
                    name, " must have shape (", channels, ", 1, 3, 3), got ", w.sizes());
}

// A unit's bottleneck branch: packed 1x1 weight + bias for `inputs` input channels, 3x3
// depthwise weight + bias, packed 1x1 weight + bias. Returns {bottleneck, output channels}.
inline std::pair<int64_t, int64_t> check_bottleneck_branch(const at::Tensor& cw, const at::Tensor& cb,
                                                           const at::Tensor& dw, const at::Tensor& db,
                                                           const at::Tensor& ew, const at::Tensor& eb,
                                                           const char* inputs_name, int64_t inputs,
                                                           const char* outputs_name) {
  const int64_t bottleneck = check_packed(cw, "compress_weight", inputs_name, inputs, "bottleneck");
  check_vector(cb, "compress_bias", bottleneck);
  check_depthwise(dw, "depthwise_weight", bottleneck);
  check_vector(db, "depthwise_bias", bottleneck);
  const int64_t outputs = check_packed(ew, "expand_weight", "bottleneck", bottleneck, outputs_name);
  check_vector(eb, "expand_bias", outputs);
  return {bottleneck, outputs};
}

}  // namespace shufflenet_ops
