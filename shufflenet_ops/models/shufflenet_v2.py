"""ShuffleNet V2 (Ma et al., ECCV 2018), Table 5 of the paper, with torchvision's module
names and state_dict keys, so ``model.load_state_dict(torchvision_state_dict)`` works
unchanged (torchvision itself is not needed):

- ``conv1``: Sequential(3x3/2 conv, BN, ReLU) (keys ``conv1.0.*``, ``conv1.1.*``);
  ``maxpool``: 3x3/2 max pool;
- ``stage2``, ``stage3``, ``stage4``: Sequentials of ``InvertedResidual`` units (one
  stride-2 unit, then 3 / 7 / 3 stride-1 units), each with ``branch1`` (stride 2 only:
  3x3/2 depthwise conv, BN, 1x1 conv, BN, ReLU at indices 0..4; an empty Sequential for
  stride 1) and ``branch2`` (1x1 conv, BN, ReLU, 3x3 depthwise conv, BN, 1x1 conv, BN,
  ReLU at indices 0..7);
- ``conv5``: Sequential(1x1 conv, BN, ReLU); global average pool; ``fc``.

What ``fused=True`` runs:

- in inference (every BN in eval mode, no gradient needed, CPU float32/float64, backend
  ``cpp``, channels_last activations, which the model switches to on CPU): each unit as one
  ``shuffle_unit_v2`` call (chunk, both branches, cat and shuffle in one pass over row bands;
  no concatenated, shuffled or sliced tensor is made), called by ``ShuffleNetV2`` directly
  (``models/_stages.py:run_stages``);
- otherwise, with the BN in eval mode (``can_fold``; e.g. a gradient needed, float16, CUDA):
  every 1x1 conv with its BN and ReLU as one call of the fused op (``conv1x1_bn``:
  ``group_conv1x1_shuffle`` with ``groups=1``, ``shuffle_groups=1``, the folded BN as its
  bias, the ReLU in its epilogue); every 3x3 conv with its BN folded (``conv2d_bn``: one
  ``F.conv2d``), and ``shuffle(cat(a, b), 2)`` of each unit made by branch2's last conv:
  it writes its output straight into the odd channels of the unit's output and copies
  ``a`` (the chunk ``x1``, read in place as a channel slice, or branch1's output) into the
  even ones in the same call (``group_conv1x1_shuffle``'s ``interleave_with``): no
  interleaving copy, cat or stack;
- with the BNs in eval mode, also the stem (its conv with the BN folded, then its ReLU and
  max pool as ``max_pool3x3s2_relu``) and conv5 (``conv1x1_bn``);
- with the BN in train mode (batch statistics keep a conv and its ReLU apart): each conv
  as its module, then its BN with the ReLU after it as one ``batch_norm_relu`` op
  (``batch_norm_act``); the stem's BN, ReLU and max pool as one op
  (``batch_norm_relu_max_pool``); the unit's ending is the interleaving copy, whose
  backward hands each branch a dense gradient (``functional.interleave``), and a unit
  followed by a stride-1 unit hands it the two halves of its output
  (``functional.split_interleave``), so the backward does not concatenate their gradients
  (``models/_stages.py:run_stages``).

``fused=False`` is torchvision's code (chunk, cat, then the reshape-transpose shuffle);
``shufflenet_ops.fuse`` of it (or of torchvision's own model) runs the ops listed above in
eval, given channels_last input on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import functional, reference
from ..modules import FoldCache, can_fold, conv1x1_bn, conv2d_bn, is_foldable_conv, is_pointwise_conv
from ..modules._common import global_hooks, runs_as_written
from ..modules.batchnorm import (
    TensorCache,
    batch_norm_act,
    batch_norm_relu_max_pool,
    foldable_sources,
    folded_conv_bn,
    is_plain_batchnorm,
)
from ..modules.unit import pixel_major, unit_op_applies
from ..ops.shuffle_unit import pack_pointwise_weight
from ._stages import global_average_pool, run_stages

WIDTH_MULTS = (0.5, 1.0, 1.5, 2.0)
STAGE_REPEATS = (4, 8, 4)  # one stride-2 unit, then 3 / 7 / 3 stride-1 units
# Table 5: output channels of conv1, Stages 2-4 and conv5 per width.
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False)


ConvBN = tuple[nn.Conv2d, nn.BatchNorm2d]


# torchvision's layer indices in each branch: (length, (conv, BN) pairs, ReLUs, which pairs
# hold a 1x1 conv).
_BRANCH2 = (8, ((0, 1), (3, 4), (5, 6)), (2, 7), (0, 2))
_BRANCH1 = (5, ((0, 1), (2, 3)), (4,), (1,))


def _plain_pairs(branch: nn.Module, layout: tuple) -> list[ConvBN] | None:
    """``branch``'s (conv, BN) pairs if it has torchvision's layers at torchvision's indices
    (``layout``: ``_BRANCH1`` or ``_BRANCH2``): foldable ``nn.Conv2d``s (1x1 ones where
    torchvision has them), plain ``nn.BatchNorm2d``s (no own forward) and ``nn.ReLU``s, the
    layers the fused paths fold and compute in their epilogues; else None (the branch runs as
    written). Through ``_modules``: nn.Module's ``__getattr__`` costs ~0.5 us a lookup."""
    length, pairs, relus, pointwise = layout
    layers = branch._modules
    if len(layers) != length or any(type(layers[str(i)]) is not nn.ReLU for i in relus):
        return None
    found = [(layers[str(c)], layers[str(b)]) for c, b in pairs]
    if not all(is_foldable_conv(conv) and is_plain_batchnorm(bn) for conv, bn in found):
        return None
    return found if all(is_pointwise_conv(found[i][0]) for i in pointwise) else None


def _ending(a: torch.Tensor, b: torch.Tensor, split: bool):
    """``interleave(a, b)``, or its two channel halves (``split_interleave``) if ``split``."""
    return functional.split_interleave(a, b) if split else functional.interleave(a, b)


def _training_branch(branch: nn.Module, layout: tuple, x: torch.Tensor) -> torch.Tensor:
    """A plain branch (``_plain_pairs``) in training: each conv as its module, then its BN
    and the ReLU after it (torchvision puts each ReLU right after a BN) as one
    ``batch_norm_relu`` op (``batch_norm_act``, which runs a BN in eval mode as written)."""
    layers = branch._modules
    _, pairs, relus, _ = layout
    for conv, bn in pairs:
        relu = layers[str(bn + 1)] if bn + 1 in relus else None
        x = batch_norm_act(layers[str(conv)](x), layers[str(bn)], relu)
    return x


def _unit_layers(branch1: nn.Module, branch2: nn.Module, stride: int) -> list[ConvBN] | None:
    """A unit's (conv, BN) pairs in the order ``shuffle_unit_v2`` takes them (branch2's three,
    then branch1's two for stride 2), or None unless both branches are plain (``_plain_pairs``)."""
    pairs = _plain_pairs(branch2, _BRANCH2)
    if pairs is None or stride == 1:
        return pairs
    shortcut = _plain_pairs(branch1, _BRANCH1)
    return None if shortcut is None else pairs + shortcut


def _is_conv(conv: nn.Conv2d, kernel: int, stride: int, depthwise: bool) -> bool:
    """``conv`` is a ``kernel``-square conv with stride ``stride``, "same" padding, no
    dilation, zero padding mode, and depthwise (groups = channels) if ``depthwise``."""
    return (
        conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride) and conv.dilation == (1, 1)
        and conv.padding == (kernel // 2, kernel // 2) and conv.padding_mode == "zeros"
        and (not depthwise or conv.groups == conv.in_channels == conv.out_channels)
    )


def _pack_unit(pairs: list[ConvBN], stride: int) -> tuple | None:
    """``shuffle_unit_v2``'s arguments after x from a unit's (conv, BN) pairs (``_unit_layers``),
    BNs folded and 1x1 weights packed; None if a conv is not what the op computes (a 1x1
    conv, or a 3x3 depthwise one of the unit's stride, padding 1)."""
    shapes = [(1, 1, False), (3, stride, True), (1, 1, False), (3, 2, True), (1, 1, False)]
    if not all(_is_conv(conv, *shape) for (conv, _), shape in zip(pairs, shapes)):
        return None
    folded = [folded_conv_bn(conv, bn) for conv, bn in pairs]

    def pointwise(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = folded[index]
        return pack_pointwise_weight(weight, pairs[index][0].groups), bias

    branch1 = (*folded[3], *pointwise(4)) if stride == 2 else (None,) * 4
    return (*pointwise(0), *folded[1], *pointwise(2), *branch1, stride)


def shuffle_unit_v2_arguments(
    x: torch.Tensor, pairs: list[ConvBN], stride: int, cache: TensorCache, checked: bool = False
) -> tuple | None:
    """The ``shuffle_unit_v2`` op's arguments after ``x`` for a V2 unit given as its (conv, BN)
    pairs (branch2's 1x1, 3x3 depthwise, 1x1, then for stride 2 branch1's 3x3 depthwise and
    1x1; each conv's ReLU, where the unit has one, is the caller's to check), or None where
    the unit must run op by op: not ``unit_op_applies(x)`` (CPU float32/float64, backend
    cpp, not compiling), a BN in train mode, a gradient needed, a stride-1 unit with NCHW x
    (the per-op path runs NCHW natively, as ``ShuffleUnit``), a conv of another shape than
    the op computes, or an x the per-op path should reject with its own errors. The folded,
    packed arguments are kept in ``cache`` until a source tensor or a BN's eps changes.
    ``checked``: the caller knows ``unit_op_applies(x)`` holds."""
    if not (checked or unit_op_applies(x)) or (stride == 1 and not pixel_major(x)):
        return None
    parts = tuple(foldable_sources(conv, bn) for conv, bn in pairs)
    if None in parts:
        return None  # a BN in train mode (or without running statistics)
    sources = tuple(t for part in parts for t in part)
    inputs = pairs[0][0].in_channels * (2 if stride == 1 else 1)
    if x.dtype != sources[0].dtype or x.shape[1] != inputs or x.shape[2] == 0 or x.shape[3] == 0:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in sources)):
        return None
    return cache.get(sources, lambda: _pack_unit(pairs, stride), tuple(bn.eps for _, bn in pairs))


class _Folding(nn.Module):
    """A module whose fused forward folds ``pairs`` conv+BN pairs: one ``FoldCache`` each
    (derived data, not in the state_dict), cleared on ``train()`` / ``eval()``."""

    def __init__(self, pairs: int) -> None:
        super().__init__()
        self._fold_caches = [FoldCache() for _ in range(pairs)]

    def train(self, mode: bool = True):
        for cache in self._fold_caches:
            cache.clear()
        return super().train(mode)


class InvertedResidual(_Folding):
    """The ShuffleNet V2 unit (paper Fig. 3c / 3d), torchvision's ``InvertedResidual``.

    Stride 1: ``x1, x2 = x.chunk(2, 1)``; ``out = shuffle(cat(x1, branch2(x2)), 2)``.
    Stride 2: ``out = shuffle(cat(branch1(x), branch2(x)), 2)``. branch1 = 3x3/2
    depthwise conv, BN, 1x1 conv, BN, ReLU; branch2 = 1x1 conv, BN, ReLU, 3x3 depthwise
    conv (stride 1 or 2), BN, 1x1 conv, BN, ReLU; each branch outputs ``oup // 2``.

    ``fused``: see the module docstring. Both variants have the same parameters and
    state_dict keys (``branch1.{0,1,2,3}.*``, ``branch2.{0,1,3,4,5,6}.*``).

    Args:
        inp: input channels; ``oup`` for stride 1 (each half is ``oup // 2``).
        oup: output channels, even.
        stride: 1 or 2.
        fused: the fused forward (True) or torchvision's (False).

    Shape: x ``(N, inp, H, W)`` -> ``(N, oup, H, W)`` (stride 1) or
    ``(N, oup, ceil(H / 2), ceil(W / 2))`` (stride 2).

    Raises:
        ValueError: (construction) stride not 1 or 2, ``oup`` odd or < 2, ``inp != oup``
            for stride 1.
    """

    def __init__(self, inp: int, oup: int, stride: int, fused: bool = True) -> None:
        super().__init__(pairs=5)  # branch2: two 1x1 convs and the depthwise one; branch1: two
        self._unit_cache = TensorCache()  # shuffle_unit_v2's arguments (see _unit_arguments)
        if stride not in (1, 2) or isinstance(stride, bool):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if oup < 2 or oup % 2:
            raise ValueError(f"oup must be an even number >= 2, got {oup!r}")
        if stride == 1 and inp != oup:
            raise ValueError(f"a stride-1 unit keeps its width: inp ({inp}) must equal oup ({oup})")
        self.stride, self.fused = stride, fused
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride),
                nn.BatchNorm2d(inp),
                _pointwise(inp, branch_features),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            _pointwise(inp if stride > 1 else branch_features, branch_features),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            _depthwise(branch_features, stride),
            nn.BatchNorm2d(branch_features),
            _pointwise(branch_features, branch_features),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def train(self, mode: bool = True) -> InvertedResidual:
        self._unit_cache.clear()
        return super().train(mode)

    def _unit_arguments(self, x: torch.Tensor, checked: bool = False) -> tuple | None:
        """``shuffle_unit_v2_arguments`` for this unit (cached in ``_unit_cache``), or None where
        it runs op by op, also when its branches are not the plain layers the op computes
        (``_unit_layers``). ``checked``: the caller knows ``unit_op_applies(x)`` holds
        (``run_stages`` checks once for all units)."""
        if not (checked or unit_op_applies(x)):
            return None
        modules = self._modules
        pairs = _unit_layers(modules["branch1"], modules["branch2"], self.stride)
        if pairs is None:
            return None
        return shuffle_unit_v2_arguments(x, pairs, self.stride, self._unit_cache, checked=True)

    def _branch2(self, x: torch.Tensor, interleave_with: torch.Tensor, split: bool = False):
        """``interleave(interleave_with, branch2(x))``: the unit's ending (its two channel
        halves if ``split``). With the BNs folded the last conv writes its output straight
        into the odd channels of the unit's output (``conv1x1_bn``'s ``interleave_with``);
        otherwise (training: ``_training_branch``; other layers or hooks: the modules)
        ``functional.interleave`` / ``split_interleave`` makes the output."""
        pairs, caches = _plain_pairs(self.branch2, _BRANCH2), self._fold_caches
        if pairs is None or global_hooks():  # (global hooks: every module must be called)
            return _ending(interleave_with, self.branch2(x), split)
        if not all(can_fold(bn) for _, bn in pairs):
            return _ending(interleave_with, _training_branch(self.branch2, _BRANCH2, x), split)
        (compress, compress_bn), (depthwise, depthwise_bn), (expand, expand_bn) = pairs
        y = conv1x1_bn(x, compress, compress_bn, relu=True, fold_cache=caches[0])
        y = conv2d_bn(y, depthwise, depthwise_bn, caches[1])
        y = conv1x1_bn(y, expand, expand_bn, relu=True, fold_cache=caches[2], interleave_with=interleave_with)
        return tuple(y.chunk(2, 1)) if split else y

    def _branch1(self, x: torch.Tensor) -> torch.Tensor:
        pairs, caches = _plain_pairs(self.branch1, _BRANCH1), self._fold_caches
        if pairs is None or global_hooks():  # (global hooks: every module must be called)
            return self.branch1(x)
        if not all(can_fold(bn) for _, bn in pairs):
            return _training_branch(self.branch1, _BRANCH1, x)
        (depthwise, depthwise_bn), (pointwise, pointwise_bn) = pairs
        return conv1x1_bn(conv2d_bn(x, depthwise, depthwise_bn, caches[3]), pointwise, pointwise_bn, relu=True,
                          fold_cache=caches[4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return reference.channel_shuffle(out, 2)  # torchvision's reshape-transpose-flatten
        arguments = self._unit_arguments(x)
        if arguments is not None:
            return torch.ops.shufflenet_ops.shuffle_unit_v2.default(x, *arguments)
        return self._per_op(x)

    def _per_op(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], split: bool = False):
        """The fused forward op by op. ``x``: the input, or (stride 1) its two halves as the
        unit before handed them over; ``split``: return the output's two halves
        (``functional.split_interleave``) for a stride-1 unit after this one."""
        if self.stride == 1:
            x1, x2 = x if isinstance(x, tuple) else x.chunk(2, dim=1)
            return self._branch2(x2, x1, split)
        return self._branch2(x, self._branch1(x), split)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, fused={self.fused}"


class ShuffleNetV2(_Folding):
    """ShuffleNet V2 (paper Table 5) with torchvision's module names and state_dict keys
    (see the module docstring): ``conv1``, ``maxpool``, ``stage2``-``stage4`` of
    ``InvertedResidual``, ``conv5``, global average pool, ``fc``.

    Args:
        stages_repeats: units per stage (3 values; ``(4, 8, 4)`` in the paper).
        stages_out_channels: output channels of conv1, Stages 2-4 and conv5 (5 values;
            Stage widths even).
        num_classes: outputs of the classifier.
        fused: see the module docstring; False: torchvision's forward.

    Shape: x ``(N, 3, H, W)`` (any H, W >= 1) -> logits ``(N, num_classes)``.

    dtypes: x has the parameters' dtype, as have the logits.

    Memory format: the logits are a contiguous 2-D tensor; on CPU the fused model runs its
    activations channels_last (x converted once), except under ``torch.export``.

    Raises:
        ValueError: (construction) not 3 repeats or 5 widths, an odd stage width,
            ``num_classes`` not a positive int.
    """

    def __init__(
        self,
        stages_repeats: tuple[int, ...] = STAGE_REPEATS,
        stages_out_channels: tuple[int, ...] = STAGE_OUT_CHANNELS[1.0],
        num_classes: int = 1000,
        fused: bool = True,
    ) -> None:
        super().__init__(pairs=2)  # conv1 and conv5
        if len(stages_repeats) != 3:
            raise ValueError(f"expected stages_repeats as a list of 3 positive ints, got {stages_repeats!r}")
        if len(stages_out_channels) != 5:
            raise ValueError(f"expected stages_out_channels as a list of 5 positive ints, got {stages_out_channels!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.fused = fused
        self._stage_out_channels = tuple(stages_out_channels)
        input_channels = 3
        output_channels = self._stage_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, output_channels in zip(
            ("stage2", "stage3", "stage4"), stages_repeats, self._stage_out_channels[1:]
        ):
            units = [InvertedResidual(input_channels, output_channels, 2, fused)]
            units += [InvertedResidual(output_channels, output_channels, 1, fused) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            input_channels = output_channels
        output_channels = self._stage_out_channels[-1]
        self.conv5 = nn.Sequential(
            _pointwise(input_channels, output_channels),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            x = self.maxpool(self.conv1(x))
            x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
            return self.fc(x.mean([2, 3]))
        if x.device.type == "cpu" and not torch.compiler.is_exporting():
            # As ShuffleNetV1: the depthwise convs and pools run faster channels_last on CPU.
            x = x.contiguous(memory_format=torch.channels_last)
        conv, bn = self.conv1[0], self.conv1[1]
        if can_fold(bn):
            # ReLU is monotone, so it commutes with the max pool: pool and ReLU in one pass.
            x = functional.max_pool3x3s2_relu(conv2d_bn(x, conv, bn, self._fold_caches[0]))
        elif runs_as_written(self.conv1, nn.Sequential) and len(self.conv1) == 3:
            # Training: the BN, ReLU and max pool as one op (the normalized tensor is not written).
            x = batch_norm_relu_max_pool(conv(x), bn, self.conv1[2], self.maxpool)
        else:
            x = self.maxpool(self.conv1(x))
        x = run_stages((self.stage2, self.stage3, self.stage4), x, InvertedResidual,
                       torch.ops.shufflenet_ops.shuffle_unit_v2.default, self.fused)
        conv, bn = self.conv5[0], self.conv5[1]
        if can_fold(bn):
            x = conv1x1_bn(x, conv, bn, relu=True, fold_cache=self._fold_caches[1])
        elif runs_as_written(self.conv5, nn.Sequential) and len(self.conv5) == 3:
            x = batch_norm_act(conv(x), bn, self.conv5[2])  # training: BN and ReLU as one op
        else:
            x = self.conv5(x)
        return self.fc(global_average_pool(x))


def shufflenet_v2(width_mult: float = 1.0, num_classes: int = 1000, fused: bool = True) -> ShuffleNetV2:
    """ShuffleNet V2 at ``width_mult`` in {0.5, 1.0, 1.5, 2.0} (Table 5), torchvision's
    ``shufflenet_v2_x{0_5,1_0,1_5,2_0}`` structure. Args and shape: as ``ShuffleNetV2``.

    Raises:
        ValueError: ``width_mult`` not one of the four above, ``num_classes`` not a
            positive int.
    """
    if width_mult not in STAGE_OUT_CHANNELS:
        raise ValueError(f"width_mult must be one of {WIDTH_MULTS}, got {width_mult!r}")
    return ShuffleNetV2(STAGE_REPEATS, STAGE_OUT_CHANNELS[width_mult], num_classes, fused)
