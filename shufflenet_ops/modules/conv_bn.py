"""Conv + BatchNorm (+ ReLU) with the channel shuffle, as one module whose children are the
``conv`` (an ordinary ``nn.Conv2d``) and the ``bn`` it replaces:

- ``GroupConv1x1BNShuffle``: a 1x1 conv, the shuffle on its output, the BN before or after it;
- ``ShuffleGroupConv1x1BN``: a 1x1 conv, the shuffle on its input;
- ``Conv2dBN``: any zero-padded ``nn.Conv2d`` and its BN, no shuffle (the unit's 3x3
  depthwise conv).

These fold their BatchNorm by themselves: when the BN is in eval mode (``model.eval()``)
and has running statistics, it becomes the conv's weight and bias and the ReLU the
kernel's epilogue, so one fused call runs; in train mode they compute exactly what
conv -> BN -> ReLU -> shuffle computes (batch statistics, running-stat updates, gradients).
Switching back to train() restores that at once: nothing is overwritten, the folded
weights are derived, never stored. ``fold_batchnorm`` folds permanently instead (for
export), removing the BN.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional
from ._common import check_divisible, check_positive_int, shuffle_permutation
from .batchnorm import FoldCache, batch_norm_permuted, can_fold, folded_conv_bn, is_plain_batchnorm
from .conv1x1 import GroupConv1x1Shuffle, ShuffleGroupConv1x1, is_pointwise_conv


def conv1x1_bn(
    x: torch.Tensor,
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d,
    *,
    input_shuffle: int = 1,
    output_shuffle: int = 1,
    relu: bool = False,
    bn_after_shuffle: bool = False,
    residual: torch.Tensor | None = None,
    fold_cache: FoldCache | None = None,
    interleave_with: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(bn(P_out(conv(P_in(x)))) + residual)`` for a 1x1 ``conv`` with shuffles
    ``P_in = shuffle(., input_shuffle)`` and ``P_out = shuffle(., output_shuffle)`` (at most
    one of them > 1); ``bn_after_shuffle=False`` means the BN is indexed in the conv's own
    channel order (BN before the output shuffle). With ``interleave_with`` (that result's
    shape), ``functional.interleave(interleave_with, result)``: a ShuffleNet V2 unit's ending.

    BN in eval mode (``can_fold``): one fused call with the BN folded into the weight and
    bias, the residual and ReLU in the epilogue, the result written straight into the odd
    channels of the interleaved output (``group_conv1x1_shuffle``'s ``interleave_with``).
    Otherwise exactly the unfused computation: the fused conv (with its shuffle), then BN
    (batch statistics and running-stat updates as ``nn.BatchNorm2d``), then the residual
    add and ReLU, then ``functional.interleave``. (aten's BN here, not ``batch_norm_act``:
    V1's wide layers, 384+ channels at 28x28, train slower with the fused BN op so far.)

    Raises what the fused ops raise for bad shapes (see ``functional``); ValueError for
    ``interleave_with`` with ``input_shuffle > 1`` (the input-shuffled op has no
    interleaved output).
    """
    groups = conv.groups
    channels = conv.out_channels
    if interleave_with is not None and input_shuffle > 1:
        raise ValueError("conv1x1_bn: interleave_with needs input_shuffle == 1")
    if can_fold(bn):
        bn_index = None
        if bn_after_shuffle and output_shuffle > 1:
            # BN channel j sits on conv channel p[j]; conv channel c meets BN channel p^-1[c].
            bn_index = shuffle_permutation(channels, channels // output_shuffle, conv.weight.device)
        cache = fold_cache if fold_cache is not None else FoldCache()
        weight, bias = cache.folded(conv, bn, bn_index, transposed_memory=groups == 1 and x.device.type == "cpu")
        if input_shuffle > 1:
            return functional.shuffle_group_conv1x1(
                x, weight, groups, input_shuffle, bias=bias, relu=relu, residual=residual
            )
        return functional.group_conv1x1_shuffle(
            x, weight, groups, bias=bias, shuffle_groups=output_shuffle, relu=relu, residual=residual,
            interleave_with=interleave_with,
        )
    if input_shuffle > 1:
        y = bn(functional.shuffle_group_conv1x1(x, conv.weight, groups, input_shuffle, bias=conv.bias))
    else:
        z = functional.group_conv1x1_shuffle(x, conv.weight, groups, bias=conv.bias, shuffle_groups=output_shuffle)
        if bn_after_shuffle or output_shuffle == 1:
            y = bn(z)
        else:
            # BN acts per channel, so BN-then-shuffle equals shuffle-then-BN with the BN's
            # parameters and statistics permuted the same way: the shuffle stays in the conv.
            y = batch_norm_permuted(bn, z, shuffle_permutation(channels, output_shuffle, z.device))
    if residual is not None:
        y = y + residual
    y = F.relu(y) if relu else y
    return y if interleave_with is None else functional.interleave(interleave_with, y)


def is_foldable_conv(conv: nn.Module) -> bool:
    """True for an ``nn.Conv2d`` with the standard forward and zero padding: one
    ``F.conv2d`` call with a BN-folded weight and bias computes ``bn(conv(x))``."""
    return isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward and conv.padding_mode == "zeros"


def conv2d_bn(
    x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, fold_cache: FoldCache | None = None
) -> torch.Tensor:
    """``bn(conv(x))`` for any foldable ``nn.Conv2d`` (``is_foldable_conv``): with the BN in
    eval mode one ``F.conv2d`` with the folded weight and bias (one pass over the
    activation saved), otherwise exactly ``bn(conv(x))``."""
    if can_fold(bn):
        weight, bias = (fold_cache if fold_cache is not None else FoldCache()).folded(conv, bn)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return bn(conv(x))


class _FoldedConvBNBase(nn.Module):
    """Holds ``conv`` and ``bn`` and derives the BN-folded weight and bias
    (``folded_conv_bn``) from the live parameters; in inference the folded pair is cached
    (``FoldCache``) until any source tensor changes."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    _pointwise_only = True  # the fused-op subclasses need a 1x1 conv

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, shuffle_groups: int, relu: bool) -> None:
        super().__init__()
        if self._pointwise_only and not is_pointwise_conv(conv):
            raise ValueError(f"{type(self).__name__} needs a 1x1 nn.Conv2d with stride 1 and no padding, got {conv}")
        if not self._pointwise_only and not is_foldable_conv(conv):
            raise ValueError(f"{type(self).__name__} needs an nn.Conv2d with zero padding, got {conv}")
        if not is_plain_batchnorm(bn):
            raise TypeError(f"{type(self).__name__} needs an nn.BatchNorm2d, got {type(bn).__name__}")
        if bn.num_features != conv.out_channels:
            raise ValueError(
                f"bn.num_features ({bn.num_features}) must equal conv.out_channels ({conv.out_channels})"
            )
        self.conv = conv
        self.bn = bn
        self.shuffle_groups = check_positive_int(shuffle_groups, "shuffle_groups")
        self.relu = bool(relu)
        self._fold_cache = FoldCache()

    @property
    def groups(self) -> int:
        return self.conv.groups

    def _bn_index(self) -> torch.Tensor | None:
        return None

    def folded_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv weight and bias with the BN folded in (eval-mode BN)."""
        return self._fold_cache.folded(self.conv, self.bn, self._bn_index())

    def train(self, mode: bool = True) -> _FoldedConvBNBase:
        self._fold_cache.clear()
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, shuffle_groups={self.shuffle_groups}, relu={self.relu}"


class GroupConv1x1BNShuffle(_FoldedConvBNBase):
    """``shuffle(act(bn(conv(x))))`` for a 1x1 ``conv``, as one fused call in eval mode.

    ``forward(x, residual=None) = act(shuffle(bn(conv(x)), shuffle_groups) + residual)``;
    with ``bn_after_shuffle=True`` the BN comes after the shuffle,
    ``act(bn(shuffle(conv(x))) + residual)``: its channels are then indexed in shuffled
    order (as when a model applies BN after the shuffle).

    Eval mode (BN with running statistics): one fused call, the BN folded into the conv's
    weight and bias (cached until a parameter or statistic changes), the residual and ReLU
    in its epilogue. Train mode computes exactly the unfused layers (batch statistics,
    running-stat updates): the conv with its output shuffle fused, then BatchNorm on the
    shuffled tensor with its parameters and statistics permuted to match (see
    ``conv1x1_bn``), so the shuffle stays inside the conv pass in training too.

    Args:
        conv: a 1x1 ``nn.Conv2d`` with stride 1 and no padding (``Cin -> Cout``, any
            groups and bias); kept as the child ``conv``, not copied.
        bn: an ``nn.BatchNorm2d(Cout)``; kept as the child ``bn``.
        shuffle_groups: groups of the output's shuffle, dividing ``Cout``; None (default):
            ``conv.groups``; 1: no shuffle.
        relu: apply a ReLU last.
        bn_after_shuffle: the BN sees the shuffled channels (see above).

    Shape:
        x ``(N, Cin, H, W)``, residual ``(N, Cout, H, W)`` or None -> output ``(N, Cout, H, W)``.

    dtypes: x has ``conv.weight``'s dtype (float32, float64, bfloat16 or float16), and the
    output too.

    Memory format: the output is channels_last if x is, contiguous NCHW otherwise (C++
    and Triton backends; the ``reference`` backend returns contiguous NCHW).

    Raises:
        ValueError: (construction) ``conv`` is not a 1x1, stride-1, unpadded
            ``nn.Conv2d``, ``bn.num_features != conv.out_channels``, ``shuffle_groups``
            < 1 or not dividing ``Cout``; (forward) as the fused ops: x not 4-D or without
            ``Cin`` channels, a residual of another shape; in train mode, one value per
            channel (``N * H * W == 1``, from BatchNorm).
        TypeError: (construction) ``bn`` is not a plain ``nn.BatchNorm2d`` (nor is a
            subclass with its own forward), ``shuffle_groups`` not an int; (forward) x of
            another dtype than ``conv.weight`` or an unsupported one.
        RuntimeError: (forward) tensors on different devices, or CPU tensors without the
            built C++ extension.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        shuffle_groups: int | None = None,
        relu: bool = False,
        bn_after_shuffle: bool = False,
    ) -> None:
        if shuffle_groups is None and isinstance(conv, nn.Conv2d):
            shuffle_groups = conv.groups  # (another module fails the base class's check)
        super().__init__(conv, bn, shuffle_groups, relu)
        check_divisible(conv.out_channels, "conv.out_channels", self.shuffle_groups, "shuffle_groups")
        self.bn_after_shuffle = bool(bn_after_shuffle)

    def _bn_index(self) -> torch.Tensor | None:
        if not self.bn_after_shuffle or self.shuffle_groups == 1:
            return None
        channels = self.conv.out_channels
        return shuffle_permutation(channels, channels // self.shuffle_groups, self.conv.weight.device)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (the output's shape) is added after the BN, before the ReLU: a
        ShuffleNet unit's ``relu(shortcut + branch)`` in the conv's epilogue (eval mode)."""
        return conv1x1_bn(
            x, self.conv, self.bn, output_shuffle=self.shuffle_groups, relu=self.relu,
            bn_after_shuffle=self.bn_after_shuffle, residual=residual, fold_cache=self._fold_cache,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + (", bn_after_shuffle=True" if self.bn_after_shuffle else "")


class ShuffleGroupConv1x1BN(_FoldedConvBNBase):
    """``act(bn(conv(shuffle(x, shuffle_groups))))`` for a 1x1 ``conv``, fused in eval mode.

    ``forward(x, residual=None) = act(bn(conv(shuffle(x, shuffle_groups))) + residual)``.
    Eval mode (BN with running statistics): one fused call with the BN folded into the
    conv's weight and bias; train mode: the conv with its input shuffle fused, then the BN
    exactly as ``nn.BatchNorm2d`` (batch statistics, running-stat updates).

    Args:
        conv: a 1x1 ``nn.Conv2d`` with stride 1 and no padding (``Cin -> Cout``); kept as
            the child ``conv``.
        bn: an ``nn.BatchNorm2d(Cout)``; kept as the child ``bn``.
        shuffle_groups: groups of the input's shuffle, dividing ``Cin`` (the official
            ShuffleNet code's shuffle is ``Cin // conv.groups`` here).
        relu: apply a ReLU last.

    Shape, dtypes, memory format and the exceptions raised: as ``GroupConv1x1BNShuffle``
    (``(N, Cin, H, W)`` -> ``(N, Cout, H, W)``; here ``shuffle_groups`` must divide ``Cin``).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, shuffle_groups: int, relu: bool = False) -> None:
        super().__init__(conv, bn, shuffle_groups, relu)
        check_divisible(conv.in_channels, "conv.in_channels", self.shuffle_groups, "shuffle_groups")

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (the output's shape) is added after the BN, before the ReLU."""
        return conv1x1_bn(
            x, self.conv, self.bn, input_shuffle=self.shuffle_groups, relu=self.relu, residual=residual,
            fold_cache=self._fold_cache,
        )


class Conv2dBN(_FoldedConvBNBase):
    """``bn(conv(x))`` for any ``nn.Conv2d`` (the unit's 3x3 depthwise conv): in eval mode the
    BN folds into the conv's weight and bias, saving a full pass over the activation; in
    train mode it is exactly conv then BN. Children ``conv`` and ``bn``, as in
    ``nn.Sequential(conv, bn)`` with those names, so state_dict keys are unchanged.

    Args:
        conv: an ``nn.Conv2d`` with ``padding_mode="zeros"`` and the standard forward (any
            kernel, stride, padding, dilation, groups, bias).
        bn: an ``nn.BatchNorm2d(conv.out_channels)``.

    Shape: x ``(N, Cin, H, W)`` -> output ``(N, Cout, Hout, Wout)``, as ``conv``'s.
    dtypes and memory format: those of ``conv(x)`` (``F.conv2d``'s).

    Raises:
        ValueError: (construction) ``conv`` is not such an ``nn.Conv2d``, or
            ``bn.num_features != conv.out_channels``; (forward) in train mode
            ``N * Hout * Wout == 1`` (BatchNorm).
        TypeError: (construction) ``bn`` is not a plain ``nn.BatchNorm2d``.
        RuntimeError: (forward) what ``F.conv2d`` raises for a bad input.
    """

    _pointwise_only = False

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__(conv, bn, shuffle_groups=1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_bn(x, self.conv, self.bn, self._fold_cache)

    def extra_repr(self) -> str:
        return ""


FUSED_MODULE_TYPES = (GroupConv1x1Shuffle, ShuffleGroupConv1x1, GroupConv1x1BNShuffle, ShuffleGroupConv1x1BN)


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold the BatchNorm of every fused conv+BN module into its conv, permanently.

    Fused conv+BN modules already fold by themselves in eval mode (and unfold in train
    mode); this is for deployment and export: each ``GroupConv1x1BNShuffle`` /
    ``ShuffleGroupConv1x1BN`` becomes a ``GroupConv1x1Shuffle`` / ``ShuffleGroupConv1x1``
    with the folded weight and bias, and each ``Conv2dBN`` an ``nn.Conv2d`` with a bias
    (eval-mode BN semantics; training it afterwards trains a model without BN). The new
    modules keep the conv's dtype and device, the old module's train/eval mode and
    ``requires_grad``. Other modules are left as they are (an unfused conv + BN too).

    Args:
        model: the model, or a single fused conv+BN module.
        inplace: replace the modules inside ``model`` itself instead of a deep copy.

    Returns:
        The model with the BNs folded: a copy unless ``inplace=True`` (``model`` itself,
        or the replacement module if ``model`` is a fused conv+BN module).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a fused conv+BN module's BN tracks no running statistics
            (``track_running_stats=False``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    if isinstance(model, _FoldedConvBNBase):
        return _folded_replacement(model)
    for name, child in list(model.named_children()):
        setattr(model, name, fold_batchnorm(child, inplace=True))
    return model


def _folded_replacement(module: _FoldedConvBNBase) -> nn.Module:
    if module.bn.running_mean is None or module.bn.running_var is None:
        raise ValueError(
            f"cannot fold {module.bn}: it tracks no running statistics (track_running_stats=False)"
        )
    conv = module.conv
    with torch.no_grad():
        weight, bias = folded_conv_bn(conv, module.bn, module._bn_index())
    if isinstance(module, Conv2dBN):
        folded: nn.Module = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, bias=True, device=weight.device, dtype=weight.dtype,
        )
    elif isinstance(module, GroupConv1x1BNShuffle):
        folded = GroupConv1x1Shuffle(
            conv.in_channels, conv.out_channels, conv.groups, module.shuffle_groups, relu=module.relu,
            device=weight.device, dtype=weight.dtype,
        )
    else:
        folded = ShuffleGroupConv1x1(
            conv.in_channels, conv.out_channels, conv.groups, module.shuffle_groups, relu=module.relu,
            device=weight.device, dtype=weight.dtype,
        )
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    folded.weight.requires_grad_(conv.weight.requires_grad)
    folded.bias.requires_grad_(conv.weight.requires_grad)
    return folded.train(module.training)

