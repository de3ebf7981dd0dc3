"""The public fused ops. Each checks its arguments, picks a backend (``shufflenet_ops.backend``)
and runs its kernel; they are defined beside their specs in ``shufflenet_ops.ops``.

``interleave`` is the ShuffleNet V2 unit's ``shuffle(cat(a, b), 2)`` as one copy, written
with torch's own ops (no kernel of this package): shared by the V2 model and ``fuse``."""

from __future__ import annotations

import torch

from .ops.channel_shuffle import channel_shuffle
from .ops.conv1x1_shuffle import group_conv1x1_shuffle, shuffle_group_conv1x1
from .ops.pool3x3s2_relu import avg_pool3x3s2_relu, max_pool3x3s2_relu
from .ops.shuffle_unit import pack_pointwise_weight, shuffle_unit
from .ops.shuffle_unit_v2 import shuffle_unit_v2

__all__ = [
    "avg_pool3x3s2_relu",
    "channel_shuffle",
    "group_conv1x1_shuffle",
    "interleave",
    "max_pool3x3s2_relu",
    "pack_pointwise_weight",
    "shuffle_group_conv1x1",
    "shuffle_unit",
    "shuffle_unit_v2",
]


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat((a, b), 1), 2)`` in one copy: channel ``2j`` of the result
    is ``a[:, j]`` and channel ``2j + 1`` is ``b[:, j]`` (the ShuffleNet V2 unit's ending).

    Args:
        a, b: ``(N, C, H, W)`` tensors of the same shape, dtype and device, any strides
            (a channel slice such as ``x.chunk(2, 1)[0]`` is read in place).
    Returns:
        ``(N, 2C, H, W)``: channels_last if ``b`` is (and is not also contiguous NCHW),
        contiguous NCHW otherwise. Differentiable (a ``torch.stack`` and views).
    Raises:
        ValueError: ``a`` and ``b`` are not 4-D tensors of the same shape, dtype and device.
    """
    if a.dim() != 4 or a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(
            "interleave expects two 4-D tensors of the same shape, dtype and device, got "
            f"{tuple(a.shape)} {a.dtype} {a.device} and {tuple(b.shape)} {b.dtype} {b.device}"
        )
    n, c, h, w = b.shape
    # reshape, not view: stack may lay out a (N, C, 1, 1) pair in either format, and then
    # reshape copies (a few elements) where a view cannot express it.
    if b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous():
        # (N, H, W, C, 2) contiguous is (N, 2C, H, W) channels_last with the channels interleaved.
        pair = torch.stack((a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)), dim=4)
        return pair.reshape(n, h, w, 2 * c).permute(0, 3, 1, 2)
    return torch.stack((a, b), dim=2).reshape(n, 2 * c, h, w)
