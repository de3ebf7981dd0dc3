"""nn.Modules built on the fused ops, by concern:

- ``conv1x1``: ``GroupConv1x1Shuffle`` and ``ShuffleGroupConv1x1``, drop-in replacements
  for a 1x1 ``nn.Conv2d`` next to a channel shuffle (same parameters and state_dict keys);
- ``batchnorm``: BatchNorm folding (``folded_conv_bn``, ``can_fold``, ``FoldCache``,
  ``batchnorm_folding``), ``TensorCache`` (values derived from parameters, kept until they
  change) and BatchNorm on shuffled channels;
- ``conv_bn``: conv + BN (+ ReLU) with the shuffle as one module that folds its BN in eval
  mode (``GroupConv1x1BNShuffle``, ``ShuffleGroupConv1x1BN``, ``Conv2dBN``) and
  ``fold_batchnorm``, which folds permanently;
- ``unit``: ``ShuffleUnit``, the ShuffleNet V1 unit (one ``shuffle_unit`` op in inference;
  ``fused=False``: the naive unit with the same state_dict keys).
"""

from ._common import shuffle_permutation
from .batchnorm import (
    FoldCache,
    TensorCache,
    batchnorm_folding,
    batchnorm_scale_shift,
    can_fold,
    folded_conv_bn,
    folding_enabled,
    is_plain_batchnorm,
)
from .conv1x1 import GroupConv1x1Shuffle, ShuffleGroupConv1x1, is_pointwise_conv
from .conv_bn import (
    FUSED_MODULE_TYPES,
    Conv2dBN,
    GroupConv1x1BNShuffle,
    ShuffleGroupConv1x1BN,
    conv1x1_bn,
    conv2d_bn,
    fold_batchnorm,
    is_foldable_conv,
)
from .unit import ShuffleUnit

__all__ = [
    "FUSED_MODULE_TYPES",
    "Conv2dBN",
    "FoldCache",
    "GroupConv1x1BNShuffle",
    "GroupConv1x1Shuffle",
    "ShuffleGroupConv1x1",
    "ShuffleGroupConv1x1BN",
    "ShuffleUnit",
    "TensorCache",
    "batchnorm_folding",
    "batchnorm_scale_shift",
    "can_fold",
    "conv1x1_bn",
    "conv2d_bn",
    "fold_batchnorm",
    "folded_conv_bn",
    "folding_enabled",
    "is_foldable_conv",
    "is_plain_batchnorm",
    "is_pointwise_conv",
    "shuffle_permutation",
]
