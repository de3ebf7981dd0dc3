"""The ShuffleNet stem's BatchNorm (training), ReLU and 3x3/2 max pool as one op, and its
backward op: specs and the public function.

In training the stem's BN uses the batch's statistics, so it cannot fold into the conv before
it; aten then makes five passes over the full-resolution tensor forward and backward. The C++
kernel (csrc/cpu/batch_norm_relu_max_pool_kernel.cpp) never writes the normalized tensor:
statistics, then one pass that normalizes each pooling window in registers; the backward
reduces over the pooled gradient and writes dx in one pass. There is no Triton kernel: on
CUDA the reference (aten's batch_norm, max_pool2d and relu) runs.
"""

from __future__ import annotations

import torch

from .. import _checks, reference
from ._samples import empty_like_format, in_format_of, replace_argument
from .batch_norm_relu import affine_inputs, batch_norm_backward_reference, batch_norm_specs, check_saved

Tensor = torch.Tensor
_NAME = "batch_norm_relu_max_pool3x3s2"


def _pooled_shape(x: Tensor) -> tuple[int, int, int, int]:
    n, c, h, w = x.shape
    return n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1


def _check_backward(grad_out, x, weight, mean, var, window, out, eps) -> None:
    op = f"{_NAME}_backward"
    _checks.check_batch_norm_input(x, weight, eps, op)
    pooled = list(_pooled_shape(x))
    check_saved(x, mean, var, {"grad_out": (grad_out, pooled), "out": (out, pooled)}, op)
    _checks.check_tensor(window, "window")
    if list(window.shape) != pooled or window.dtype != torch.uint8:
        raise ValueError(f"shufflenet_ops {op}: window must be a uint8 tensor of shape {pooled}")


def _fake(x, weight, bias, eps):
    c = x.shape[1]
    out = empty_like_format(x, _pooled_shape(x))
    return out, x.new_empty((c,)), x.new_empty((c,)), torch.empty_like(out, dtype=torch.uint8)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _, eps = inputs
    out, mean, var, window = output
    ctx.mark_non_differentiable(mean, var, window)
    ctx.set_materialize_grads(False)  # no zero gradients made for the statistics
    ctx.save_for_backward(x, weight, mean, var, window, out)
    ctx.eps = eps


def _backward(ctx, grad_out, *_statistics) -> tuple:
    if grad_out is None:  # only the statistics were used
        return None, None, None, None
    x, weight, mean, var, window, out = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = BATCH_NORM_RELU_MAX_POOL3X3S2_BACKWARD.run(
        ctx.backend, grad_out, x, weight, mean, var, window, out, ctx.eps
    )
    return grad_x, grad_weight, grad_bias, None


def _reference_backward(grad_out, x, weight, mean, var, window, out, eps):
    """The gradients by aten's pieces: the ReLU mask (threshold_backward), the pool's scatter to
    each window's max, then BatchNorm's training backward written out."""
    oh, ow = grad_out.shape[2:]
    rows = torch.arange(oh, device=x.device).view(oh, 1) * 2 - 1 + torch.div(window, 3, rounding_mode="floor").long()
    cols = torch.arange(ow, device=x.device).view(1, ow) * 2 - 1 + (window % 3).long()
    grad = torch.ops.aten.threshold_backward(grad_out, out, 0)
    dz = torch.ops.aten.max_pool2d_with_indices_backward(
        grad, x, [3, 3], [2, 2], [1, 1], [1, 1], False, rows * x.shape[3] + cols
    )
    return batch_norm_backward_reference(dz, x, weight, mean, var, eps)


def _backward_samples():
    gen = torch.Generator().manual_seed(2)
    for x, weight, bias, eps in affine_inputs():
        out, mean, var, window = reference.batch_norm_relu_max_pool3x3s2(x.detach(), weight.detach(), bias.detach(), eps)
        grad_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(memory_format=torch.channels_last)
        yield in_format_of(out, grad_out), x.detach(), weight.detach(), mean, var, window, out, eps


BATCH_NORM_RELU_MAX_POOL3X3S2, BATCH_NORM_RELU_MAX_POOL3X3S2_BACKWARD = batch_norm_specs(
    _NAME, _fake, _setup_context, _backward, affine_inputs,
    (_reference_backward, _check_backward, _backward_samples, (
        ("window dtype", replace_argument(5, lambda w: w.long()), ValueError, r"window must be a uint8 tensor"),
    )),
)


def batch_norm_relu_max_pool3x3s2(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """``relu(max_pool2d(batch_norm(x, weight, bias, training=True, eps=eps), 3, 2, 1))``: the
    ShuffleNet stem's BN (batch statistics), ReLU and max pool in training, without writing
    the normalized tensor (one C++ op forward and one backward on CPU; aten's ops elsewhere).

    Args:
        x: ``(N, C, H, W)`` with ``C >= 1``, ``H, W >= 1`` and ``N * H * W >= 2``; float32,
            float64, bfloat16 or float16; NCHW or channels_last (other layouts are copied).
        weight, bias: the BN's affine parameters, ``(C,)``, ``x``'s dtype and device.
        eps: added to the variance (``nn.BatchNorm2d.eps``), finite, > 0.

    Returns:
        ``(out, mean, var)``: ``out`` is ``(N, C, (H - 1) // 2 + 1, (W - 1) // 2 + 1)`` in
        ``x``'s dtype and memory format, differentiable in ``x``, ``weight`` and ``bias``;
        ``mean`` and ``var`` are the batch's per-channel mean and biased variance ``(C,)``,
        not differentiable, for the caller's running statistics (``nn.BatchNorm2d`` keeps
        ``var * n / (n - 1)`` with ``n = N * H * W``). The argmax of each window is kept
        for the backward (one byte per output), not returned.

    Raises:
        TypeError: a tensor argument is not a tensor, or has an unsupported or mismatched dtype.
        ValueError: a shape above does not hold (including one value per channel, where
            the batch variance is undefined), or ``eps`` is not a finite number > 0.
        RuntimeError: tensors on different devices; the C++ extension is not built (CPU).
    """
    out, mean, var, _window = BATCH_NORM_RELU_MAX_POOL3X3S2(x, weight, bias, float(eps))
    return out, mean, var
