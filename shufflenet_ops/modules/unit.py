"""The ShuffleNet V1 unit, fused (``fused=True``) or naive (``fused=False``), with the same
state_dict keys either way."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend, _extension, functional, reference
from ..ops.shuffle_unit import pack_pointwise_weight
from ._common import check_divisible, check_positive_int, shuffle_permutation
from .batchnorm import TensorCache, foldable_sources, folded_conv_bn, folding_enabled
from .conv_bn import Conv2dBN, GroupConv1x1BNShuffle

# The dtypes of the whole-unit op (shuffle_unit); others run the unit op by op.
_UNIT_DTYPES = (torch.float32, torch.float64)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> OrderedDict:
    return OrderedDict(
        conv=nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        ),
        bn=nn.BatchNorm2d(out_channels),
    )


ConvBN = tuple[nn.Conv2d, nn.BatchNorm2d]


def unit_op_applies(x: torch.Tensor) -> bool:
    """The conditions of ``shuffle_unit_arguments`` that depend on the call, not on the unit:
    a 4-D CPU float32/float64 x, the extension built, BN folding on, not under torch.compile,
    backend ``cpp``. A caller running many units checks them once (``ShuffleNetV1``)."""
    return (
        x.device.type == "cpu" and x.dtype in _UNIT_DTYPES and x.dim() == 4 and _extension.available()
        and folding_enabled() and not torch.compiler.is_compiling() and _backend.resolve(x.device) == "cpp"
    )


def pixel_major(x: torch.Tensor) -> bool:
    """Whether the op reads x in place: a pixel's channels contiguous, the pixels one stride
    apart (the C++ kernels' as_planar test, csrc/cpu/planar.h)."""
    _, c, h, w = x.shape
    channels_contiguous = c == 1 or x.stride(1) == 1
    pixels_collapse = h == 1 or w == 1 or x.stride(2) == w * x.stride(3)
    return channels_contiguous and pixels_collapse


def shuffle_unit_arguments(
    x: torch.Tensor,
    compress: ConvBN,
    depthwise: ConvBN,
    expand: ConvBN,
    *,
    shuffle_groups: int,
    shuffle_before_depthwise: bool,
    stride: int,
    cache: TensorCache,
    compress_bn_after_shuffle: bool = False,
    checked: bool = False,
) -> tuple | None:
    """The ``shuffle_unit`` op's arguments after ``x`` for a ShuffleNet V1 unit given as its
    three (conv, BN) pairs, or None where the unit must run op by op: not CPU, not float32 /
    float64, a BN that cannot fold (train mode), a gradient needed, another backend than
    ``cpp``, torch.compile, or an input the per-op path should reject with its own errors.

    ``shuffle_before_depthwise``: the shuffle (``shuffle_groups``, 1: none) follows the
    compress conv (the paper's placement), else it precedes the expand conv;
    ``compress_bn_after_shuffle``: the compress BN is indexed in shuffled order. The folded,
    permuted and packed arguments are computed once and kept in ``cache`` until a source
    tensor changes. ``checked``: the caller knows ``unit_op_applies(x)`` holds (it checks once
    for many units). Kept cheap (~7 us): a batch-1 unit call is ~60 us, and this runs before
    every one.
    """
    if not (checked or unit_op_applies(x)):
        return None
    if stride == 1 and not pixel_major(x):
        # The op computes pixel-major and converts an NCHW x and its output; the per-op path
        # runs NCHW natively. Measured (g=3, 240 channels at 28x28, batch 16, NCHW): stride 1
        # 4712 img/s through the op, 12916 op by op; stride 2 6044 vs 3362 (its NCHW
        # depthwise conv and pool are slow), so stride 2 keeps the op.
        return None
    parts = (foldable_sources(*compress), foldable_sources(*depthwise), foldable_sources(*expand))
    if None in parts:
        return None  # a BN in train mode (or without running statistics)
    sources = parts[0] + parts[1] + parts[2]
    if x.dtype != sources[0].dtype or x.shape[1] != compress[0].in_channels or x.shape[2] == 0 or x.shape[3] == 0:
        return None  # the per-op path raises its usual errors
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in sources)):
        return None
    return cache.get(
        sources,
        lambda: _pack_unit(compress, depthwise, expand, shuffle_groups, shuffle_before_depthwise,
                           compress_bn_after_shuffle, stride),
        (compress[1].eps, depthwise[1].eps, expand[1].eps),
    )


def _pack_unit(compress: ConvBN, depthwise: ConvBN, expand: ConvBN, shuffle_groups: int,
               shuffle_before_depthwise: bool, compress_bn_after_shuffle: bool, stride: int) -> tuple:
    (compress_conv, compress_bn), (expand_conv, expand_bn) = compress, expand
    bottleneck = compress_conv.out_channels
    inverse = bottleneck // shuffle_groups  # shuffle(., inverse) undoes shuffle(., shuffle_groups)
    bn_index = None
    if compress_bn_after_shuffle and shuffle_before_depthwise and shuffle_groups > 1:
        bn_index = shuffle_permutation(bottleneck, inverse, compress_conv.weight.device)
    compress_weight, compress_bias = folded_conv_bn(compress_conv, compress_bn, bn_index)
    depthwise_weight, depthwise_bias = folded_conv_bn(*depthwise)
    expand_weight, expand_bias = folded_conv_bn(expand_conv, expand_bn)
    if shuffle_before_depthwise:
        # The depthwise conv then sees its channels in shuffled order; the op shuffles after
        # it (the same thing: the conv is per channel), so they are put back in the compress
        # output's order by the inverse shuffle.
        depthwise_weight = reference.channel_shuffle(depthwise_weight.reshape(1, bottleneck, 3, 3), inverse)
        depthwise_bias = reference.channel_shuffle(depthwise_bias.reshape(1, bottleneck, 1, 1), inverse)
    return (
        pack_pointwise_weight(compress_weight, compress_conv.groups), compress_bias,
        depthwise_weight.reshape(bottleneck, 1, 3, 3), depthwise_bias.reshape(bottleneck),
        pack_pointwise_weight(expand_weight, expand_conv.groups), expand_bias, shuffle_groups, stride,
    )


class ShuffleUnit(nn.Module):
    """The ShuffleNet V1 unit (paper Fig. 2b / 2c).

    Stride 1: 1x1 GConv -> BN -> ReLU -> shuffle -> 3x3 depthwise conv -> BN -> 1x1 GConv
    -> BN, added to the input, then ReLU. Stride 2: the depthwise conv has stride 2, the
    shortcut is a 3x3 average pool (stride 2, padding 1), the two are concatenated
    (shortcut first) and ReLU'd; the branch outputs ``out_channels - in_channels``.
    The bottleneck is ``out_channels // 4``; no ReLU after the depthwise conv nor after the
    second GConv (before the add). ``grouped_first=False`` makes the first 1x1 conv
    ungrouped (the first unit of Stage 2); the shuffle still uses ``groups``.

    ``fused=True`` in inference (every BN in eval mode, no gradient needed: ``torch.no_grad``
    or ``torch.inference_mode``; CPU, float32 or float64, channels_last x or stride 2, the
    ``cpp`` backend) runs the whole unit as one op, ``shuffle_unit``, with the BNs folded and the
    weights packed once and cached until a parameter or statistic changes. Otherwise
    (training, a gradient through an eval-mode unit, NCHW x at stride 1, other devices or dtypes,
    torch.compile, BNs removed by ``fold_batchnorm``) it runs each 1x1 conv with its BN, ReLU
    and shuffle as one fused module (``GroupConv1x1BNShuffle``; BN folded in eval mode, and
    for stride 2 the final ReLU of the branch in the second conv's epilogue). ``fused=False`` is the naive unit: separate
    conv, BN, ReLU and ``nn.ChannelShuffle``. Both have the same parameters and
    state_dict keys (``compress.conv``, ``compress.bn``, ``depthwise.conv``,
    ``depthwise.bn``, ``expand.conv``, ``expand.bn``), so checkpoints load both ways.

    Args:
        in_channels: ``Cin``; equal to ``out_channels`` for stride 1.
        out_channels: ``Cout``, at least 4; greater than ``in_channels`` for stride 2.
        groups: groups of the 1x1 convs and of the shuffle; divides the bottleneck
            ``Cout // 4``, the branch output (``Cout``, or ``Cout - Cin`` for stride 2) and,
            with ``grouped_first``, ``Cin``.
        stride: 1 (residual add) or 2 (downsampling, concatenation).
        grouped_first: group the first 1x1 conv (False: ungrouped, for a narrow input).
        fused: the fused modules (True) or the naive layers (False).

    Shape:
        x ``(N, Cin, H, W)`` -> output ``(N, Cout, H, W)`` for stride 1,
        ``(N, Cout, ceil(H / 2), ceil(W / 2))`` for stride 2.

    dtypes: x has the parameters' dtype (float32 by default; the fused ops also take
    float64, bfloat16 and float16), as has the output.

    Memory format: the output is channels_last if x is, contiguous NCHW otherwise (the
    fused unit on the ``reference`` backend: contiguous NCHW).

    Raises:
        TypeError: (construction) ``in_channels``, ``out_channels``, ``groups`` or ``stride`` not an
            int; (forward, fused) x's dtype unlike the parameters' or unsupported.
        ValueError: (construction) a count < 1, a stride other than 1 or 2, ``Cin != Cout``
            for stride 1, ``Cout <= Cin`` for stride 2, ``Cout < 4``, or ``groups`` not
            dividing the channels above; (forward) x not 4-D (fused: also without ``Cin``
            channels); in train mode, a BN that sees one value per channel.
        RuntimeError: (forward, fused) x on another device than the parameters, or CPU
            tensors without the built C++ extension; (forward, naive) x's channel count or
            dtype wrong (from ``nn.Conv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        stride: int,
        grouped_first: bool = True,
        fused: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(groups, "groups")
        if isinstance(stride, bool) or not isinstance(stride, int):
            raise TypeError(f"stride must be an int, got {type(stride).__name__}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 unit adds its input to its output: in_channels ({in_channels}) must equal "
                f"out_channels ({out_channels})"
            )
        if stride == 2 and out_channels <= in_channels:
            raise ValueError(
                f"a stride-2 unit concatenates its input: out_channels ({out_channels}) must exceed "
                f"in_channels ({in_channels})"
            )
        bottleneck = out_channels // 4
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if grouped_first else 1
        if bottleneck < 1:
            raise ValueError(f"out_channels ({out_channels}) must be >= 4 (bottleneck = out_channels // 4)")
        check_divisible(bottleneck, "the bottleneck width out_channels // 4", groups, "groups")
        check_divisible(in_channels, "in_channels", first_groups, "groups")
        check_divisible(branch_out, "the branch output channels", groups, "groups")

        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.stride, self.grouped_first, self.fused = groups, stride, grouped_first, fused
        compress = _conv_bn(in_channels, bottleneck, 1, 1, first_groups)
        expand = _conv_bn(bottleneck, branch_out, 1, 1, groups)
        if fused:
            self.compress = GroupConv1x1BNShuffle(compress["conv"], compress["bn"], shuffle_groups=groups, relu=True)
        else:
            compress["relu"] = nn.ReLU(inplace=True)
            self.compress = nn.Sequential(compress)
            self.shuffle = nn.ChannelShuffle(groups) if groups > 1 else nn.Identity()
        depthwise = _conv_bn(bottleneck, bottleneck, 3, stride, bottleneck)
        # Fused: the depthwise BN folds into the depthwise conv in eval mode (no ReLU follows it).
        self.depthwise = Conv2dBN(depthwise["conv"], depthwise["bn"]) if fused else nn.Sequential(depthwise)
        if fused:
            # The second conv's epilogue ends the unit: stride 1 adds the shortcut and applies
            # the ReLU (relu(x + branch)); stride 2 applies the branch's ReLU, since
            # relu(cat(pool, branch)) == cat(relu(pool), relu(branch)).
            self.expand = GroupConv1x1BNShuffle(expand["conv"], expand["bn"], shuffle_groups=1, relu=True)
        else:
            self.expand = nn.Sequential(expand)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self._unit_cache = TensorCache()

    def train(self, mode: bool = True) -> ShuffleUnit:
        self._unit_cache.clear()
        return super().train(mode)

    def _unit_arguments(self, x: torch.Tensor, checked: bool = False) -> tuple | None:
        """``shuffle_unit_arguments`` for this unit; ``checked``: ``unit_op_applies(x)`` holds."""
        if not (checked or unit_op_applies(x)):
            return None
        # Children through _modules: nn.Module.__getattr__ costs ~0.5 us a lookup.
        modules = self._modules
        compress, depthwise, expand = (
            modules[name]._modules for name in ("compress", "depthwise", "expand")
        )
        if "bn" not in compress or "bn" not in depthwise or "bn" not in expand:
            return None  # BNs folded for good (fold_batchnorm): plain fused convs, run op by op
        return shuffle_unit_arguments(
            x, (compress["conv"], compress["bn"]), (depthwise["conv"], depthwise["bn"]), (expand["conv"], expand["bn"]),
            shuffle_groups=self.groups, shuffle_before_depthwise=True, stride=self.stride, cache=self._unit_cache,
            checked=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            arguments = self._unit_arguments(x)
            if arguments is not None:
                return torch.ops.shufflenet_ops.shuffle_unit.default(x, *arguments)
            hidden = self.depthwise(self.compress(x))
            if self.stride == 1:
                return self.expand(hidden, residual=x)
            return functional.cat_channels(functional.avg_pool3x3s2_relu(x), self.expand(hidden))
        branch = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.stride == 1:
            return F.relu(x + branch)
        return F.relu(torch.cat((self.shortcut(x), branch), dim=1))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, groups={self.groups}, stride={self.stride}, "
            f"grouped_first={self.grouped_first}, fused={self.fused}"
        )
