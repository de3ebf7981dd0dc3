"""The public fused ops. Each checks its arguments, picks a backend (``shufflenet_ops.backend``)
and runs its kernel; they are defined beside their specs in ``shufflenet_ops.ops``.

``interleave``, ``deinterleave`` and ``split_interleave`` are the ShuffleNet V2 unit's
``shuffle(cat(a, b), 2)``, its inverse, and the ending of one unit joined to the split of the
next (the ``interleave`` and ``deinterleave`` ops, ``ops/interleave.py``): shared by the V2
model and ``fuse``."""

from __future__ import annotations

import torch

from . import _backend
from .ops.batch_norm_relu import batch_norm_relu
from .ops.batch_norm_relu_max_pool import batch_norm_relu_max_pool3x3s2
from .ops.channel_shuffle import channel_shuffle
from .ops.conv1x1_shuffle import group_conv1x1_shuffle, shuffle_group_conv1x1
from .ops.interleave import DEINTERLEAVE, INTERLEAVE
from .ops.pool3x3s2_relu import avg_pool3x3s2_relu, max_pool3x3s2_relu
from .ops.shuffle_unit import pack_pointwise_weight, shuffle_unit
from .ops.shuffle_unit_v2 import shuffle_unit_v2

__all__ = [
    "avg_pool3x3s2_relu",
    "batch_norm_relu",
    "batch_norm_relu_max_pool3x3s2",
    "cat_channels",
    "channel_shuffle",
    "deinterleave",
    "group_conv1x1_shuffle",
    "interleave",
    "max_pool3x3s2_relu",
    "pack_pointwise_weight",
    "shuffle_group_conv1x1",
    "shuffle_unit",
    "shuffle_unit_v2",
    "split_interleave",
]


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat((a, b), 1), 2)`` in one copy: channel ``2j`` of the result
    is ``a[:, j]`` and channel ``2j + 1`` is ``b[:, j]`` (the ShuffleNet V2 unit's ending).

    Args:
        a, b: ``(N, C, H, W)`` tensors of the same shape, dtype and device, any strides
            (a channel slice such as ``x.chunk(2, 1)[0]`` is read in place).
    Returns:
        ``(N, 2C, H, W)`` in ``a``'s memory format (``torch``'s ``suggest_memory_format``):
        channels_last or contiguous NCHW. On CPU one pass of the C++ kernel (AVX-512 in
        channels_last, where torch's own copies of this permutation walk two elements at a
        time). Differentiable (also twice): the backward splits the gradient in one copy into
        two dense tensors in its memory format (``deinterleave``), so the layers before (a
        ReLU's backward, most of all) read dense gradients, not every other channel of a
        channels_last tensor, which torch's elementwise kernels walk ~10x slower.
    Raises:
        ValueError: ``a`` and ``b`` are not 4-D tensors of the same shape, dtype and device.
        TypeError: ``a`` or ``b`` is not a tensor, or has an unsupported dtype (float32,
            float64, bfloat16 and float16 are).
    """
    _check_pair(a, b)
    return INTERLEAVE(a, b)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    for t, name in ((a, "a"), (b, "b")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"interleave expects tensors, got {name} of type {type(t).__name__}")
    if a.dim() != 4 or a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(
            "interleave expects two 4-D tensors of the same shape, dtype and device, got "
            f"{tuple(a.shape)} {a.dtype} {a.device} and {tuple(b.shape)} {b.dtype} {b.device}"
        )


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def deinterleave(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``interleave``: ``(y[:, 0::2], y[:, 1::2])`` as two dense tensors in
    ``y``'s memory format (channels_last or contiguous NCHW), made by one pass (the
    ``deinterleave`` op) that reads ``y`` once.

    Args:
        y: an ``(N, 2C, H, W)`` tensor of a supported dtype.
    Returns:
        two ``(N, C, H, W)`` tensors. Differentiable (the backward is ``interleave``).
    Raises:
        ValueError: ``y`` is not 4-D with an even channel count.
        TypeError: ``y`` is not a tensor, or has an unsupported dtype.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"deinterleave expects a tensor, got {type(y).__name__}")
    if y.dim() != 4 or y.shape[1] % 2:
        raise ValueError(f"deinterleave expects an (N, 2C, H, W) tensor, got shape {tuple(y.shape)}")
    c = y.shape[1] // 2
    return DEINTERLEAVE(y[:, :c], y[:, c:])


def split_interleave(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``interleave(a, b).chunk(2, 1)``: the ShuffleNet V2 unit's ending and the next stride-1
    unit's split in one function, so that its backward takes the halves' gradients and
    writes ``a``'s and ``b``'s in one pass. (Chunking ``interleave``'s output instead has
    autograd concatenate the halves' gradients, a copy, before ``interleave``'s backward
    splits them again.)

    Args:
        a, b: ``(N, C, H, W)`` tensors of the same shape, dtype and device.
    Returns:
        the two ``(N, C, H, W)`` halves of the ``(N, 2C, H, W)`` interleaved tensor (views of
        one buffer, laid out as ``interleave`` lays it out; with ``C`` odd a pair straddles
        the halves). Differentiable: the backward is one ``deinterleave`` op of the two
        halves' gradients.
    Raises:
        ValueError, TypeError: what ``interleave`` raises.
    """
    _check_pair(a, b)
    backend = _backend.resolve(a.device)
    if backend == "reference" or not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return tuple(interleave(a, b).chunk(2, 1))
    INTERLEAVE.check(a, b)
    return _SplitInterleave.apply(a, b, backend)


class _SplitInterleave(torch.autograd.Function):
    """``interleave(a, b).chunk(2, 1)``; backward: the two halves' gradients are the two parts
    of the interleaved gradient, which the ``deinterleave`` op splits into ``a``'s and ``b``'s
    without concatenating them first."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(INTERLEAVE.run(backend, a, b).chunk(2, 1))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.backend = inputs[2]

    @staticmethod
    def backward(ctx, grad_first: torch.Tensor, grad_second: torch.Tensor) -> tuple:
        return (*DEINTERLEAVE.run(ctx.backend, grad_first, grad_second), None)


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat((a, b), 1)`` whose backward hands ``a`` and ``b`` dense gradients in the
    gradient's memory format (a ShuffleNet V1 stride-2 unit's ending). torch's cat hands
    each a channel slice, which in channels_last is strided, and the ReLU backward before
    it then runs ~10x slower.

    Args:
        a, b: 4-D tensors ``(N, Ca, H, W)`` and ``(N, Cb, H, W)``, one dtype and device.
    Returns:
        ``(N, Ca + Cb, H, W)``, as ``torch.cat`` returns it.
    Raises:
        RuntimeError: what ``torch.cat`` raises for mismatched tensors.
    """
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _CatChannels.apply(a, b)
    return torch.cat((a, b), 1)


class _CatChannels(torch.autograd.Function):
    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat((a, b), 1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.split = inputs[0].shape[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not _is_channels_last(grad):
            return grad[:, : ctx.split], grad[:, ctx.split :]  # dense already in NCHW
        layout = torch.channels_last
        return (grad[:, : ctx.split].contiguous(memory_format=layout),
                grad[:, ctx.split :].contiguous(memory_format=layout))
