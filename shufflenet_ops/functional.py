"""The public fused ops. Each checks its arguments, picks a backend (``shufflenet_ops.backend``)
and runs its kernel; they are defined beside their specs in ``shufflenet_ops.ops``.

``interleave`` is the ShuffleNet V2 unit's ``shuffle(cat(a, b), 2)`` as one copy, written
with torch's own ops (no kernel of this package): shared by the V2 model and ``fuse``."""

from __future__ import annotations

import torch

from .ops.batch_norm_relu import batch_norm_relu
from .ops.batch_norm_relu_max_pool import batch_norm_relu_max_pool3x3s2
from .ops.channel_shuffle import channel_shuffle
from .ops.conv1x1_shuffle import group_conv1x1_shuffle, shuffle_group_conv1x1
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
        ``(N, 2C, H, W)``: channels_last if ``b`` is (and is not also contiguous NCHW),
        contiguous NCHW otherwise. Differentiable: the backward splits the gradient in one
        copy into two dense tensors in its memory format (``deinterleave``), so the layers
        before (a ReLU's backward, most of all) read dense gradients, not every other
        channel of a channels_last tensor, which torch's elementwise kernels walk ~10x slower.
    Raises:
        ValueError: ``a`` and ``b`` are not 4-D tensors of the same shape, dtype and device.
    """
    _check_pair(a, b)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _Interleave.apply(a, b)
    return _interleave(a, b)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 4 or a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(
            "interleave expects two 4-D tensors of the same shape, dtype and device, got "
            f"{tuple(a.shape)} {a.dtype} {a.device} and {tuple(b.shape)} {b.dtype} {b.device}"
        )


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, c, h, w = b.shape
    # reshape, not view: stack may lay out a (N, C, 1, 1) pair in either format, and then
    # reshape copies (a few elements) where a view cannot express it.
    if _is_channels_last(b):
        # (N, H, W, C, 2) contiguous is (N, 2C, H, W) channels_last with the channels interleaved.
        pair = torch.stack((a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)), dim=4)
        return pair.reshape(n, h, w, 2 * c).permute(0, 3, 1, 2)
    return torch.stack((a, b), dim=2).reshape(n, 2 * c, h, w)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def deinterleave(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``interleave``: ``(y[:, 0::2], y[:, 1::2])`` as two dense tensors in
    ``y``'s memory format (channels_last if ``y`` is, else contiguous NCHW), made by one
    copy that reads ``y`` once.

    Args:
        y: an ``(N, 2C, H, W)`` tensor.
    Returns:
        two ``(N, C, H, W)`` tensors. Differentiable (torch's copy and views).
    Raises:
        ValueError: ``y`` is not 4-D with an even channel count.
    """
    if y.dim() != 4 or y.shape[1] % 2:
        raise ValueError(f"deinterleave expects an (N, 2C, H, W) tensor, got shape {tuple(y.shape)}")
    n, channels, h, w = y.shape
    c = channels // 2
    if _is_channels_last(y):
        pairs = y.permute(0, 2, 3, 1).reshape(n, h, w, c, 2)
        halves = torch.empty((2, n, h, w, c), dtype=y.dtype, device=y.device)
        halves.copy_(pairs.permute(4, 0, 1, 2, 3))
        return halves[0].permute(0, 3, 1, 2), halves[1].permute(0, 3, 1, 2)
    halves = torch.empty((2, n, c, h, w), dtype=y.dtype, device=y.device)
    halves.copy_(y.reshape(n, c, 2, h, w).permute(2, 0, 1, 3, 4))
    return halves[0], halves[1]


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
        one buffer, laid out as ``interleave`` lays it out). Differentiable; with ``C`` odd
        a half holds one more channel of ``a`` than of ``b``, and autograd's chunk backward
        runs instead.
    Raises:
        ValueError: what ``interleave`` raises.
    """
    _check_pair(a, b)
    if a.shape[1] % 2 or not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return tuple(interleave(a, b).chunk(2, 1))
    return _SplitInterleave.apply(a, b)


class _SplitInterleave(torch.autograd.Function):
    """``interleave(a, b).chunk(2, 1)``; backward: each half's gradient is deinterleaved into
    its half of ``a``'s and ``b``'s channels (half j of y holds channels j*C/2 .. (j+1)*C/2 - 1
    of both)."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(_interleave(a, b).chunk(2, 1))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad_first: torch.Tensor, grad_second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = grad_first.shape  # c = C: each half holds C/2 channels of a and of b
        half = c // 2
        channels_last = _is_channels_last(grad_first) or _is_channels_last(grad_second)
        if channels_last:
            grads = torch.empty((2, n, h, w, c), dtype=grad_first.dtype, device=grad_first.device)
            for part, grad in enumerate((grad_first, grad_second)):
                pairs = grad.permute(0, 2, 3, 1).reshape(n, h, w, half, 2).permute(4, 0, 1, 2, 3)
                grads[..., part * half:(part + 1) * half].copy_(pairs)
            return grads[0].permute(0, 3, 1, 2), grads[1].permute(0, 3, 1, 2)
        grads = torch.empty((2, n, c, h, w), dtype=grad_first.dtype, device=grad_first.device)
        for part, grad in enumerate((grad_first, grad_second)):
            grads[:, :, part * half:(part + 1) * half].copy_(grad.reshape(n, half, 2, h, w).permute(2, 0, 1, 3, 4))
        return grads[0], grads[1]


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


class _Interleave(torch.autograd.Function):
    """``interleave`` with ``deinterleave`` as its backward (torch's stack would hand each
    input a strided view of the gradient)."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _interleave(a, b)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return deinterleave(grad)
