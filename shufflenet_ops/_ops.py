"""Python-side registrations of the ops whose schema lives in csrc/ops.cpp.

- fake (meta) kernels, so torch.compile and torch.library.opcheck can trace the ops;
- autograd formulas, so calling ``torch.ops.shufflenet_ops.*`` directly is differentiable;
- the CUDA implementation (Triton), registered by ``shufflenet_ops.triton`` when Triton
  imports.
The output of every op is in the memory format of its (first) tensor input, as the C++
kernels do: ``suggest_memory_format`` on both sides.
"""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from . import _extension, autograd

LIB = "shufflenet_ops"
POOL_OPS = ("max_pool3x3s2_relu", "avg_pool3x3s2_relu")  # C++ on CPU, aten on CUDA


def _empty_like_format(reference: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(
        shape, dtype=reference.dtype, device=reference.device, memory_format=suggest_memory_format(reference)
    )


def _register_fakes() -> None:
    @torch.library.register_fake(f"{LIB}::channel_shuffle")
    def _(x, groups):
        return _empty_like_format(x, tuple(x.shape))

    def conv_fake(x, weight, bias, groups, shuffle_groups, relu, residual=None):
        n, _, h, w = x.shape
        return _empty_like_format(x, (n, weight.shape[0], h, w))

    torch.library.register_fake(f"{LIB}::group_conv1x1_shuffle", conv_fake)
    torch.library.register_fake(f"{LIB}::shuffle_group_conv1x1", conv_fake)

    @torch.library.register_fake(f"{LIB}::conv1x1_shuffle_grad_input")
    def _(grad_output, weight, groups, in_shuffle, out_shuffle):
        n, _, h, w = grad_output.shape
        return _empty_like_format(grad_output, (n, weight.shape[1] * groups, h, w))

    @torch.library.register_fake(f"{LIB}::conv1x1_shuffle_grad_weight")
    def _(grad_output, x, groups, in_shuffle, out_shuffle):
        return grad_output.new_empty((grad_output.shape[1], x.shape[1] // groups, 1, 1))

    @torch.library.register_fake(f"{LIB}::conv1x1_shuffle_grad_bias")
    def _(grad_output, out_shuffle):
        return grad_output.new_empty((grad_output.shape[1],))

    @torch.library.register_fake(f"{LIB}::relu_grad")
    def _(grad_output, output):
        return torch.empty_like(grad_output)

    def pool_fake(x):
        n, c, h, w = x.shape
        return _empty_like_format(x, (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1))

    for name in POOL_OPS:
        torch.library.register_fake(f"{LIB}::{name}", pool_fake)


def _register_autograd() -> None:
    def shuffle_setup(ctx, inputs, output):
        x, groups = inputs
        autograd.save_shuffle(ctx, x, groups, None)

    torch.library.register_autograd(
        f"{LIB}::channel_shuffle",
        lambda ctx, grad: (autograd.shuffle_backward(ctx, grad), None),
        setup_context=shuffle_setup,
    )

    def conv_setup(output_shuffled: bool):
        def setup(ctx, inputs, output):
            x, weight, bias, groups, shuffle_groups, relu, residual = inputs
            in_shuffle, out_shuffle = (1, shuffle_groups) if output_shuffled else (shuffle_groups, 1)
            autograd.save_conv(ctx, x, weight, bias, groups, in_shuffle, out_shuffle, relu, residual, output, None)

        return setup

    def conv_backward(ctx, grad):
        grad_x, grad_weight, grad_bias, grad_residual = autograd.conv_backward(ctx, grad)
        return grad_x, grad_weight, grad_bias, None, None, None, grad_residual

    torch.library.register_autograd(
        f"{LIB}::group_conv1x1_shuffle", conv_backward, setup_context=conv_setup(True)
    )
    torch.library.register_autograd(
        f"{LIB}::shuffle_group_conv1x1", conv_backward, setup_context=conv_setup(False)
    )

    # The pools: ReLU-mask the gradient by the saved output as torch's ReLU does
    # (threshold_backward: 0 where y <= 0, else grad, so a NaN output passes its gradient and
    # an inf gradient where y <= 0 gives 0, not inf * 0), then aten's pool backward (the max
    # pool's argmax indices recomputed from x: the forward does not store them).
    def pool_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    def max_pool_backward(ctx, grad):
        x, y = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1])
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [3, 3], [2, 2], [1, 1], [1, 1], False, indices)

    def avg_pool_backward(ctx, grad):
        x, y = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
        return torch.ops.aten.avg_pool2d_backward(grad, x, [3, 3], [2, 2], [1, 1], False, True, None)

    torch.library.register_autograd(f"{LIB}::max_pool3x3s2_relu", max_pool_backward, setup_context=pool_setup)
    torch.library.register_autograd(f"{LIB}::avg_pool3x3s2_relu", avg_pool_backward, setup_context=pool_setup)

    # The backward ops have no derivative of their own: double backward through the fused
    # convs fails loudly instead of silently returning zeros.
    def no_double_backward(ctx, *grads):
        raise RuntimeError(
            f"double backward (create_graph=True) through {ctx.op_name} is not supported; "
            "use shufflenet_ops.backend('reference') for higher-order gradients"
        )

    for name in ("conv1x1_shuffle_grad_input", "conv1x1_shuffle_grad_weight", "conv1x1_shuffle_grad_bias", "relu_grad"):

        def setup(ctx, inputs, output, name=name):
            ctx.op_name = f"{LIB}::{name}"

        torch.library.register_autograd(f"{LIB}::{name}", no_double_backward, setup_context=setup)


def _register_pool_fallbacks() -> None:
    """The pools' C++ kernel is CPU-only: on CUDA the ops run aten's pool and ReLU (no
    Triton kernel; the modules call them on CPU only, see ``functional``)."""
    from . import reference

    for name in POOL_OPS:
        torch.library.impl(f"{LIB}::{name}", "CUDA")(getattr(reference, name))


if _extension.available():
    _register_fakes()
    _register_autograd()
    _register_pool_fallbacks()
