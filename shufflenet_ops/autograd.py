"""torch.autograd.Functions of the fused ops, and the kernel table each backend provides.

A kernel table is any object with the shuffle and conv functions of the op schema
(csrc/ops.cpp): ``channel_shuffle``, ``group_conv1x1_shuffle``, ``shuffle_group_conv1x1``,
``conv1x1_shuffle_grad_input``, ``conv1x1_shuffle_grad_weight``,
``conv1x1_shuffle_grad_bias`` and ``relu_grad`` (the schema's two pool ops have a C++ CPU
kernel only: ``functional`` calls them on CPU, aten's pools elsewhere).
``torch.ops.shufflenet_ops`` is one table (the dispatcher picks C++ on CPU, Triton on
CUDA); ``shufflenet_ops.triton.kernels`` is the
other, used for Triton in eager mode (the same functions the dispatcher would reach on
CUDA, minus its Python wrappers; see ``kernels``) and where Triton is forced on tensors the
dispatcher would not send to it (CPU tensors under TRITON_INTERPRET=1).

The backward formulas (design notes): with y = Pout(conv(Pin(x), W)) and go = dL/dy,
grad_x = Pin^-1(conv_transpose(Pout^-1(go), W)), grad_W = sum Pout^-1(go) @ Pin(x)^T,
grad_b = channel sums of Pout^-1(go); ReLU first masks go as torch does (threshold_backward:
0 where y <= 0, so a NaN y passes its gradient). The kernels read and write through the
permuted indices, so no shuffled tensor is materialised.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _extension


def kernels(backend: str | None, device: torch.device) -> Any:
    """The kernel table for ``backend`` (None: the dispatcher) on ``device``.

    Triton in eager mode is called directly, not through the dispatcher: the registered CUDA
    kernel is the same function, but reaching it through ``torch.ops`` adds the Python
    autograd and dynamo-disable wrappers to every launch, host time that a small GPU kernel
    cannot hide. Under torch.compile the ops stay opaque dispatcher calls.
    """
    if backend == "triton" and (
        not (device.type == "cuda" and _extension.available()) or not torch.compiler.is_compiling()
    ):
        from .triton import kernels as triton_kernels

        return triton_kernels
    _extension.require()
    return torch.ops.shufflenet_ops


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether a call must record a graph: grad mode is on and an input requires grad.

    When it need not, the public ops call the kernel table directly and skip the
    autograd.Function machinery (~10 us of host time per call on this project's CPU, even
    with ``_PositionalFunction``'s shortcut): host time that a small GPU kernel cannot hide.
    """
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _PositionalFunction(torch.autograd.Function):
    """An autograd.Function always applied with every argument positionally.

    ``Function.apply`` binds each call to ``inspect.signature(forward)`` to fill in defaults:
    ~25 us of host time per call, as much as a small GPU kernel. With nothing to fill in,
    eager calls go straight to the C++ ``apply``; under torch.compile or functorch transforms
    the full ``Function.apply`` runs as usual.
    """

    @classmethod
    def apply(cls, *args):
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)


# --------------------------------------------------------------------------- shuffle
def save_shuffle(ctx: Any, x: torch.Tensor, groups: int, backend: str | None) -> None:
    ctx.inverse_groups = x.shape[1] // groups
    ctx.backend = backend


def shuffle_backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    # The inverse of shuffle(., g) is shuffle(., C/g); going through the Function keeps it
    # differentiable (double backward).
    return ChannelShuffleFunction.apply(grad, ctx.inverse_groups, ctx.backend)


class ChannelShuffleFunction(_PositionalFunction):
    @staticmethod
    def forward(x: torch.Tensor, groups: int, backend: str | None) -> torch.Tensor:
        return kernels(backend, x.device).channel_shuffle(x, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, groups, backend = inputs
        save_shuffle(ctx, x, groups, backend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return shuffle_backward(ctx, grad), None, None


# --------------------------------------------------------------------- fused 1x1 conv
def save_conv(
    ctx: Any,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    in_shuffle: int,
    out_shuffle: int,
    relu: bool,
    residual: torch.Tensor | None,
    output: torch.Tensor,
    backend: str | None,
) -> None:
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.groups, ctx.in_shuffle, ctx.out_shuffle = groups, in_shuffle, out_shuffle
    ctx.relu, ctx.has_bias, ctx.has_residual, ctx.backend = relu, bias is not None, residual is not None, backend


def conv_backward(ctx: Any, grad: torch.Tensor) -> tuple:
    """(grad_x, grad_weight, grad_bias, grad_residual) of a fused conv saved by ``save_conv``."""
    x, weight, output = ctx.saved_tensors
    k = kernels(ctx.backend, grad.device)
    if ctx.relu:
        grad = k.relu_grad(grad, output)
    grad_x = grad_weight = grad_bias = grad_residual = None
    if ctx.needs_input_grad[0]:
        grad_x = k.conv1x1_shuffle_grad_input(grad, weight, ctx.groups, ctx.in_shuffle, ctx.out_shuffle)
    if ctx.needs_input_grad[1]:
        grad_weight = k.conv1x1_shuffle_grad_weight(grad, x, ctx.groups, ctx.in_shuffle, ctx.out_shuffle)
        grad_weight = grad_weight.reshape(weight.shape)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = k.conv1x1_shuffle_grad_bias(grad, ctx.out_shuffle)
    if ctx.has_residual and ctx.needs_input_grad[6]:
        grad_residual = grad  # the residual is added in output order, after the shuffle
    return grad_x, grad_weight, grad_bias, grad_residual


class GroupConv1x1ShuffleFunction(_PositionalFunction):
    """``act(shuffle(conv1x1(x) + bias, shuffle_groups) + residual)``: the shuffle on the output."""

    @staticmethod
    def forward(x, weight, bias, groups: int, shuffle_groups: int, relu: bool, residual, backend: str | None):
        k = kernels(backend, x.device)
        return k.group_conv1x1_shuffle(x, weight, bias, groups, shuffle_groups, relu, residual)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, groups, shuffle_groups, relu, residual, backend = inputs
        save_conv(ctx, x, weight, bias, groups, 1, shuffle_groups, relu, residual, output, backend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        grad_x, grad_weight, grad_bias, grad_residual = conv_backward(ctx, grad)
        return grad_x, grad_weight, grad_bias, None, None, None, grad_residual, None


class ShuffleGroupConv1x1Function(_PositionalFunction):
    """``act(conv1x1(shuffle(x, shuffle_groups)) + bias + residual)``: the shuffle on the input."""

    @staticmethod
    def forward(x, weight, bias, groups: int, shuffle_groups: int, relu: bool, residual, backend: str | None):
        k = kernels(backend, x.device)
        return k.shuffle_group_conv1x1(x, weight, bias, groups, shuffle_groups, relu, residual)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, groups, shuffle_groups, relu, residual, backend = inputs
        save_conv(ctx, x, weight, bias, groups, shuffle_groups, 1, relu, residual, output, backend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        grad_x, grad_weight, grad_bias, grad_residual = conv_backward(ctx, grad)
        return grad_x, grad_weight, grad_bias, None, None, None, grad_residual, None
