"""Models built on the fused ops."""

from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1, stage_channels

__all__ = ["ShuffleNetV1", "shufflenet_v1", "stage_channels"]
