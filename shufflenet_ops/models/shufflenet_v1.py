"""ShuffleNet V1 (Zhang et al., CVPR 2018), Table 1 of the paper.

Widths at 1.0x are the paper's. For a scale ``s`` ("ShuffleNet s x") the paper gives no
rounding rule; this module uses:

- Stage 2 width = ``s * base`` rounded to the nearest multiple of ``4 * groups`` (ties
  round up, at least ``4 * groups``); Stages 3 and 4 are 2x and 4x Stage 2. Every stage
  width is then divisible by ``groups`` and by 4, and its bottleneck (width / 4) by
  ``groups``. This reproduces the official code's stage widths for g=3 and g=8 at
  0.5x, 1.5x and 2.0x.
- Stem width = ``24 * s`` rounded up to a multiple of ``groups`` (the first unit's branch
  outputs ``stage2 - stem`` channels through a conv with ``groups`` groups). That is the
  official 12 (g=3) / 16 (g=8) at 0.5x and 48 at 2.0x; at 1.5x the official code keeps 24
  where this rule gives 36 (g=3) / 40 (g=8).

Inputs of any size >= 32x32 work: the network downsamples by 32 and ends with a global
average pool.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from ..modules import ShuffleUnit, can_fold, conv2d_bn
from ..modules._common import runs_as_written
from ..modules.batchnorm import batch_norm_relu_max_pool
from ._stages import global_average_pool, run_stages

GROUPS = (1, 2, 3, 4, 8)
WIDTH_MULTS = (0.25, 0.5, 1.0, 1.5, 2.0)
# Table 1: output channels of Stage 2 at 1.0x; Stages 3 and 4 double each time.
STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
STEM_CHANNELS = 24
STAGE_REPEATS = (4, 8, 4)  # one stride-2 unit, then 3 / 7 / 3 stride-1 units


def stage_channels(groups: int, width_mult: float) -> tuple[int, int, int, int]:
    """``(stem, stage2, stage3, stage4)`` output channels; see the module docstring."""
    if groups not in STAGE2_CHANNELS:
        raise ValueError(f"groups must be one of {GROUPS}, got {groups!r}")
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    quantum = 4 * groups
    stage2 = max(quantum, math.floor(STAGE2_CHANNELS[groups] * width_mult / quantum + 0.5) * quantum)
    stem = max(groups, math.ceil(STEM_CHANNELS * width_mult / groups) * groups)
    return stem, stage2, 2 * stage2, 4 * stage2


class _Stem(nn.Sequential):
    """3x3/2 conv, BN, ReLU, 3x3/2 max pool (keys ``0.*``, ``1.*`` as the plain Sequential).

    In the fused network in training, the BN, ReLU and pool run as one op
    (``batch_norm_relu_max_pool``: the normalized tensor is never written). With the BN in
    eval mode, the BN folds into the conv as in
    ``Conv2dBN`` (``can_fold`` and ``conv2d_bn``, which ``Conv2dBN`` runs; not that module
    itself, whose children ``conv`` / ``bn`` would rename these keys; the weights are tiny,
    so they are folded on every call rather than cached) and the ReLU follows the pool
    (same result, fewer elements)."""

    def __init__(self, stem: int, fold: bool) -> None:
        super().__init__(
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.fold = fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, relu, pool = self
        if not self.fold:
            return super().forward(x)
        if not can_fold(bn):
            # Training: the BN, ReLU and pool as one op (batch_norm_relu_max_pool).
            return batch_norm_relu_max_pool(conv(x), bn, relu, pool)
        y = conv2d_bn(x, conv, bn)
        # ReLU is monotone, so it commutes with the max pool: pool and ReLU in one pass
        # (on CPU; aten's max pool alone also writes an int64 index per output).
        return functional.max_pool3x3s2_relu(y)


class ShuffleNetV1(nn.Module):
    """Stem (3x3/2 conv, BN, ReLU, 3x3/2 max pool), Stages 2-4 of ``ShuffleUnit``s, global
    average pool, fully connected classifier. ``fused=False`` builds the naive units (the
    same state_dict keys), the baseline for benchmarks and tests.

    Args:
        groups: groups of the units' 1x1 convs, one of 1, 2, 3, 4, 8 (Table 1).
        width_mult: the scale ``s`` of "ShuffleNet s x", any positive number (stage widths
            rounded as the module docstring says; ``shufflenet_v1`` takes the paper's).
        num_classes: outputs of the classifier.
        fused: the fused units, stem BN folded in eval mode (True), or the naive layers.

    Shape:
        x ``(N, 3, H, W)`` (224x224 in the paper; any H, W >= 1 runs) -> logits
        ``(N, num_classes)``.

    dtypes: x has the parameters' dtype (float32 as built; ``model.to(dtype)`` for
    float64, bfloat16 or float16), as have the logits.

    Memory format: the logits are a contiguous 2-D tensor whatever x's format. On CPU the
    fused model runs its activations channels_last (x converted once), except under
    ``torch.export``.

    Raises:
        ValueError: (construction) ``groups`` not one of the above, ``width_mult`` not a
            positive number, ``num_classes`` not a positive int; (forward, naive) x not 4-D.
        RuntimeError: (forward) x's dtype unlike the parameters', x without 3 channels
            (from the stem's conv); (fused, on CPU) x not 4-D.
    """

    def __init__(
        self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000, fused: bool = True
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        stem, *widths = stage_channels(groups, width_mult)
        self.groups, self.width_mult, self.fused = groups, width_mult, fused
        self.stage_out_channels = (stem, *widths)
        self.stem = _Stem(stem, fold=fused)
        stages = []
        in_channels = stem
        for stage_index, (out_channels, repeats) in enumerate(zip(widths, STAGE_REPEATS)):
            units = [
                ShuffleUnit(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    groups,
                    stride=2 if i == 0 else 1,
                    # Stage 2's first pointwise conv is not grouped: its input has few channels.
                    grouped_first=not (stage_index == 0 and i == 0),
                    fused=fused,
                )
                for i in range(repeats)
            ]
            stages.append(nn.Sequential(*units))
            in_channels = out_channels
        self.stage2, self.stage3, self.stage4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._initialize()

    def _initialize(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.device.type == "cpu" and not torch.compiler.is_exporting():
            # The fused kernels run NCHW and channels_last alike, but the 3x3 depthwise convs
            # and the pools around them run faster in channels_last on CPU (oneDNN's NHWC
            # kernels; the pools' one-pass kernel takes channels_last only), so the fused
            # network takes its activations there (one pass over the input image).
            # Not under torch.export (and so torch.onnx.export): the memory-format queries of
            # aten's conv on a channels_last tensor with a symbolic batch add an `n <= 1` guard
            # (torch 2.13), which breaks exporting from a batch-1 example with a dynamic batch.
            # An exported graph has no layout to keep anyway (ONNX is NCHW).
            x = x.contiguous(memory_format=torch.channels_last)
        x = self._stages(self.stem(x))
        pool = self.pool
        if self.fused and runs_as_written(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)):
            return self.fc(global_average_pool(x))  # its backward keeps channels_last
        return self.fc(torch.flatten(pool(x), 1))

    def _stages(self, x: torch.Tensor) -> torch.Tensor:
        """Stages 2-4, each unit as one ``shuffle_unit`` call in inference (``run_stages``)."""
        return run_stages((self.stage2, self.stage3, self.stage4), x, ShuffleUnit,
                          torch.ops.shufflenet_ops.shuffle_unit.default, self.fused)


def shufflenet_v1(
    groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000, fused: bool = True
) -> ShuffleNetV1:
    """ShuffleNet V1 with ``groups`` in {1, 2, 3, 4, 8} and ``width_mult`` in
    {0.25, 0.5, 1.0, 1.5, 2.0} (the paper's configurations; ``ShuffleNetV1`` itself takes
    any positive scale). ``fused=True`` uses the fused conv+shuffle modules.

    Args, shape, dtypes and memory format: as ``ShuffleNetV1``.

    Raises:
        ValueError: ``width_mult`` not one of the five above, or what ``ShuffleNetV1``
            raises (``groups``, ``num_classes``).
    """
    if width_mult not in WIDTH_MULTS:
        raise ValueError(f"width_mult must be one of {WIDTH_MULTS}, got {width_mult!r}")
    return ShuffleNetV1(groups, width_mult, num_classes, fused)
