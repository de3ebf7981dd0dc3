"""Models built on the fused ops."""

from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1, stage_channels
from .shufflenet_v2 import ShuffleNetV2, shufflenet_v2

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "shufflenet_v1", "shufflenet_v2", "stage_channels"]
