"""shufflenet_ops: grouped 1x1 convolution and channel shuffle fused into one pass.

    import shufflenet_ops as so
    y = so.group_conv1x1_shuffle(x, weight, groups=3, bias=b, relu=True)
"""

from . import _extension  # noqa: F401  (loads the C++ ops: the schema and the CPU kernels)
from . import ops, reference  # ops: registers every op's fake kernel and autograd formula
from ._backend import BACKENDS, backend
from .functional import (
    avg_pool3x3s2_relu,
    batch_norm_relu,
    batch_norm_relu_max_pool3x3s2,
    channel_shuffle,
    group_conv1x1_shuffle,
    max_pool3x3s2_relu,
    pack_pointwise_weight,
    shuffle_group_conv1x1,
    shuffle_unit,
    shuffle_unit_v2,
)
from .modules import (
    GroupConv1x1BNShuffle,
    GroupConv1x1Shuffle,
    ShuffleGroupConv1x1,
    ShuffleGroupConv1x1BN,
    ShuffleUnit,
    fold_batchnorm,
)
from . import models, onnx
from .flops import count_flops, count_params
from .fuse import FuseWarning, fuse, fused_convs, original_forwards

# Triton becomes the CUDA implementation of the ops (a no-op without triton, CUDA or the
# C++ extension that defines the schema).
ops.register_cuda_kernels()

__version__ = "0.1.0"  # the only place the version is written: setup.py reads it from here

__all__ = [
    "BACKENDS",
    "FuseWarning",
    "GroupConv1x1BNShuffle",
    "GroupConv1x1Shuffle",
    "ShuffleGroupConv1x1",
    "ShuffleGroupConv1x1BN",
    "ShuffleUnit",
    "avg_pool3x3s2_relu",
    "backend",
    "batch_norm_relu",
    "batch_norm_relu_max_pool3x3s2",
    "channel_shuffle",
    "count_flops",
    "count_params",
    "fold_batchnorm",
    "fuse",
    "fused_convs",
    "group_conv1x1_shuffle",
    "max_pool3x3s2_relu",
    "models",
    "ops",
    "original_forwards",
    "onnx",
    "pack_pointwise_weight",
    "reference",
    "shuffle_group_conv1x1",
    "shuffle_unit",
    "shuffle_unit_v2",
]
