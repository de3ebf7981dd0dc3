"""The public fused ops. Each checks its arguments, picks a backend (``shufflenet_ops.backend``)
and runs its kernel; they are defined beside their specs in ``shufflenet_ops.ops``."""

from __future__ import annotations

from .ops.channel_shuffle import channel_shuffle
from .ops.conv1x1_shuffle import group_conv1x1_shuffle, shuffle_group_conv1x1
from .ops.pool3x3s2_relu import avg_pool3x3s2_relu, max_pool3x3s2_relu
from .ops.shuffle_unit import pack_pointwise_weight, shuffle_unit

__all__ = [
    "avg_pool3x3s2_relu",
    "channel_shuffle",
    "group_conv1x1_shuffle",
    "max_pool3x3s2_relu",
    "pack_pointwise_weight",
    "shuffle_group_conv1x1",
    "shuffle_unit",
]
