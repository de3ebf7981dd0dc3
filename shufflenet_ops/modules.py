"""nn.Modules built on the fused ops.

Drop-in replacements for a 1x1 ``nn.Conv2d`` next to a channel shuffle (same ``weight`` /
``bias`` parameters and state_dict keys as the conv):

- ``GroupConv1x1Shuffle``: ``act(shuffle(conv1x1(x) + bias, shuffle_groups))``;
- ``ShuffleGroupConv1x1``: ``act(conv1x1(shuffle(x, shuffle_groups)) + bias)``.

Conv + BatchNorm (+ ReLU) with the shuffle, as one module whose children are the
``conv`` (an ordinary 1x1 ``nn.Conv2d``) and the ``bn`` it replaces:

- ``GroupConv1x1BNShuffle``: the shuffle on the output, the BN before or after it;
- ``ShuffleGroupConv1x1BN``: the shuffle on the input.

These fold their BatchNorm by themselves: when the BN is in eval mode (``model.eval()``)
and has running statistics, it becomes the conv's weight and bias and the ReLU the
kernel's epilogue, so one fused call runs; in train mode they compute exactly what
conv -> BN -> ReLU -> shuffle computes (batch statistics, running-stat updates, gradients). Switching back to train() restores
that at once: nothing is overwritten, the folded weights are derived, never stored.
``fold_batchnorm`` folds permanently instead (for export), removing the BN.

``ShuffleUnit`` is the ShuffleNet V1 unit; ``fused=False`` gives the naive unit with the
same state_dict keys.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections import OrderedDict
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import functional


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_divisible(channels: int, channels_name: str, groups: int, groups_name: str) -> None:
    if channels % groups != 0:
        raise ValueError(f"{channels_name} ({channels}) must be divisible by {groups_name} ({groups})")


def shuffle_permutation(channels: int, groups: int, device: torch.device | None = None) -> torch.Tensor:
    """Index ``p`` with ``shuffle(x, groups)[:, j] == x[:, p[j]]`` for ``channels`` channels.

    The inverse permutation is ``shuffle_permutation(channels, channels // groups)``.
    """
    return torch.arange(channels, device=device).view(groups, channels // groups).t().reshape(-1)


# ----------------------------------------------------------------- plain conv modules
class _Conv1x1Base(nn.Module):
    """Parameters laid out exactly as a 1x1 ``nn.Conv2d``'s, so state_dicts load both ways."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        shuffle_groups: int,
        shuffled_channels: int,
        bias: bool,
        relu: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        self.groups = _check_positive_int(groups, "groups")
        self.shuffle_groups = _check_positive_int(shuffle_groups, "shuffle_groups")
        _check_divisible(in_channels, "in_channels", groups, "groups")
        _check_divisible(out_channels, "out_channels", groups, "groups")
        _check_divisible(shuffled_channels, "the shuffled channels", shuffle_groups, "shuffle_groups")
        self.relu = bool(relu)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 1, 1, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default initialisation, so a fresh module is distributed like the conv.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def _sharing(cls, conv: nn.Conv2d, shuffle_groups: int | None, relu: bool):
        cls._check_conv(conv)
        module = cls(
            conv.in_channels, conv.out_channels, conv.groups, shuffle_groups,
            bias=conv.bias is not None, relu=relu, device="meta",
        )
        module.weight, module.bias = conv.weight, conv.bias
        return module

    @classmethod
    def _check_conv(cls, conv: nn.Module) -> None:
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{cls.__name__}.from_conv needs an nn.Conv2d, got {type(conv).__name__}")
        if not is_pointwise_conv(conv):
            raise ValueError(
                f"{cls.__name__}.from_conv needs a 1x1 conv with stride 1 and no padding, got {conv}"
            )

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, groups={self.groups}, shuffle_groups={self.shuffle_groups}"
        if self.bias is None:
            text += ", bias=False"
        return text + (", relu=True" if self.relu else "")


class GroupConv1x1Shuffle(_Conv1x1Base):
    """A 1x1 conv whose output is channel-shuffled (and optionally ReLU'd) in the same pass.

    ``forward(x) = act(shuffle(conv1x1(x, weight, groups) + bias, shuffle_groups))``;
    ``shuffle_groups=None`` means ``groups`` (the paper's placement), ``1`` no shuffle.
    ``weight`` and ``bias`` are those of the ``nn.Conv2d(in, out, 1, groups=groups)`` it
    replaces: ``module.load_state_dict(conv.state_dict())`` works, and the other way round.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int = 1,
        shuffle_groups: int | None = None,
        bias: bool = True,
        relu: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shuffle_groups = groups if shuffle_groups is None else shuffle_groups
        super().__init__(
            in_channels, out_channels, groups, shuffle_groups, out_channels, bias, relu, device, dtype
        )

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, shuffle_groups: int | None = None, relu: bool = False
    ) -> "GroupConv1x1Shuffle":
        """A module that shares ``conv``'s parameters (no copy)."""
        return cls._sharing(conv, shuffle_groups, relu)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (the output's shape) is added before the ReLU, in the same pass."""
        return functional.group_conv1x1_shuffle(
            x, self.weight, self.groups, bias=self.bias, shuffle_groups=self.shuffle_groups, relu=self.relu,
            residual=residual,
        )


class ShuffleGroupConv1x1(_Conv1x1Base):
    """A 1x1 conv that reads its input channel-shuffled: ``act(conv1x1(shuffle(x, s)) + bias)``.

    The placement of the official ShuffleNet code (shuffle right before the second GConv);
    its shuffle is the inverse permutation, i.e. ``shuffle_groups = in_channels // groups``
    here. Parameters are those of the ``nn.Conv2d`` it replaces.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int,
        shuffle_groups: int,
        bias: bool = True,
        relu: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, groups, shuffle_groups, in_channels, bias, relu, device, dtype
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, shuffle_groups: int, relu: bool = False) -> "ShuffleGroupConv1x1":
        """A module that shares ``conv``'s parameters (no copy)."""
        return cls._sharing(conv, shuffle_groups, relu)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (the output's shape) is added before the ReLU, in the same pass."""
        return functional.shuffle_group_conv1x1(
            x, self.weight, self.groups, self.shuffle_groups, bias=self.bias, relu=self.relu, residual=residual
        )


# ------------------------------------------------------------- conv + BN (+ ReLU) modules
def is_pointwise_conv(conv: nn.Module) -> bool:
    """True for an ``nn.Conv2d`` that is a plain 1x1 conv the fused ops can run."""
    if not isinstance(conv, nn.Conv2d) or type(conv).forward is not nn.Conv2d.forward:
        return False
    # With a 1x1 kernel, padding "same" is no padding, and dilation changes nothing.
    no_padding = conv.padding in ("valid", "same") or tuple(conv.padding) == (0, 0)
    return tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and no_padding


def is_plain_batchnorm(bn: nn.Module) -> bool:
    """True for an ``nn.BatchNorm2d`` whose forward is the standard one (foldable)."""
    return isinstance(bn, nn.BatchNorm2d) and type(bn).forward is nn.BatchNorm2d.forward


def batchnorm_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(z) == z * scale + shift`` per channel, in eval mode."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _batch_norm_permuted(bn: nn.BatchNorm2d, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``bn`` applied to ``z`` whose channel j holds BN channel ``index[j]``.

    Equals ``bn(z[:, inverse])[:, index]`` exactly: the same per-channel statistics, the same
    running-stat update (momentum or cumulative average, num_batches_tracked) as
    ``nn.BatchNorm2d.forward``, written back in the BN's own channel order.
    """
    bn._check_input_dim(z)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    pass_buffers = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean.index_select(0, index) if pass_buffers and bn.running_mean is not None else None
    running_var = bn.running_var.index_select(0, index) if pass_buffers and bn.running_var is not None else None
    weight = bn.weight.index_select(0, index) if bn.weight is not None else None
    bias = bn.bias.index_select(0, index) if bn.bias is not None else None
    out = F.batch_norm(z, running_mean, running_var, weight, bias, use_batch_stats, momentum, bn.eps)
    if bn.training and running_mean is not None:  # F.batch_norm updated the permuted copies
        with torch.no_grad():
            bn.running_mean.index_copy_(0, index, running_mean)
            bn.running_var.index_copy_(0, index, running_var)
    return out


_folding_enabled = threading.local()


def folding_enabled() -> bool:
    return getattr(_folding_enabled, "value", True)


@contextlib.contextmanager
def batchnorm_folding(enabled: bool) -> Iterator[None]:
    """Turn eval-mode BN folding off (or on) inside a ``with`` block, e.g. so that hooks see
    every conv module called (``count_flops``); the results are the same either way."""
    previous = folding_enabled()
    _folding_enabled.value = enabled
    try:
        yield
    finally:
        _folding_enabled.value = previous


def _add_relu(y: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def can_fold(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` acts as a fixed per-channel affine map now: eval mode with running
    statistics (and folding not turned off by ``batchnorm_folding(False)``). The BN's own
    mode decides, as in the unfused model: a frozen BN inside a training model folds too."""
    return folding_enabled() and not bn.training and bn.running_mean is not None and bn.running_var is not None


def folded_conv_bn(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``conv`` with the eval-mode ``bn`` folded in.

    With ``s = gamma / sqrt(var + eps)``: ``W' = W * s`` and ``b' = beta + (b - mean) * s``
    per output channel. ``bn_index[c]`` is the BN channel that conv output channel ``c``
    meets (a BN applied after a shuffle); None: the same channel. Differentiable.
    """
    scale, shift = batchnorm_scale_shift(bn)
    if bn_index is not None:
        scale, shift = scale.index_select(0, bn_index), shift.index_select(0, bn_index)
    weight = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return weight, bias.to(conv.weight.dtype)


class FoldCache:
    """The last folded ``(weight, bias)`` of one conv+BN pair, reused in inference until
    any source tensor is replaced or changed in place (which bumps its version counter).
    Derived data: never pickled or deep-copied."""

    def __init__(self) -> None:
        self._entry: tuple[list, tuple[torch.Tensor, torch.Tensor]] | None = None

    def clear(self) -> None:
        self._entry = None

    def folded(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sources = [t for t in (*conv.parameters(), *bn.parameters(), *bn.buffers()) if t is not None]
        needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        if needs_graph or torch.compiler.is_compiling() or any(t.is_inference() for t in sources):
            return folded_conv_bn(conv, bn, bn_index)
        # In-place updates bump _version; `.data =` (as in module.to()) swaps the storage.
        stamps = [(t, t._version, t.data_ptr(), t.dtype, t.device) for t in sources]
        if self._entry is not None:
            old_stamps, folded = self._entry
            if len(old_stamps) == len(stamps) and all(
                old[0] is new[0] and old[1:] == new[1:] for old, new in zip(old_stamps, stamps)
            ):
                return folded
        with torch.no_grad():
            folded = folded_conv_bn(conv, bn, bn_index)
        self._entry = (stamps, folded)
        return folded

    def __deepcopy__(self, memo: dict) -> "FoldCache":
        return FoldCache()

    def __reduce__(self):
        return (FoldCache, ())


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
) -> torch.Tensor:
    """``act(bn(P_out(conv(P_in(x)))) + residual)`` for a 1x1 ``conv`` with shuffles
    ``P_in = shuffle(., input_shuffle)`` and ``P_out = shuffle(., output_shuffle)`` (at most
    one of them > 1); ``bn_after_shuffle=False`` means the BN is indexed in the conv's own
    channel order (BN before the output shuffle).

    BN in eval mode (``can_fold``): one fused call with the BN folded into the weight and
    bias, the residual and ReLU in the epilogue. Otherwise exactly the unfused computation:
    the fused conv (with its shuffle), then BN (batch statistics and running-stat updates
    as ``nn.BatchNorm2d``), then the residual add and ReLU.

    Raises what the fused ops raise for bad shapes (see ``functional``).
    """
    groups = conv.groups
    channels = conv.out_channels
    if can_fold(bn):
        bn_index = None
        if bn_after_shuffle and output_shuffle > 1:
            # BN channel j sits on conv channel p[j]; conv channel c meets BN channel p^-1[c].
            bn_index = shuffle_permutation(channels, channels // output_shuffle, conv.weight.device)
        cache = fold_cache if fold_cache is not None else FoldCache()
        weight, bias = cache.folded(conv, bn, bn_index)
        if input_shuffle > 1:
            return functional.shuffle_group_conv1x1(
                x, weight, groups, input_shuffle, bias=bias, relu=relu, residual=residual
            )
        return functional.group_conv1x1_shuffle(
            x, weight, groups, bias=bias, shuffle_groups=output_shuffle, relu=relu, residual=residual
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
            y = _batch_norm_permuted(bn, z, shuffle_permutation(channels, output_shuffle, z.device))
    return _add_relu(y, residual, relu)


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
    """Holds ``conv`` (1x1 nn.Conv2d) and ``bn`` and derives the BN-folded weight and bias
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
        self.shuffle_groups = _check_positive_int(shuffle_groups, "shuffle_groups")
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

    def train(self, mode: bool = True) -> "_FoldedConvBNBase":
        self._fold_cache.clear()
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, shuffle_groups={self.shuffle_groups}, relu={self.relu}"


class GroupConv1x1BNShuffle(_FoldedConvBNBase):
    """``shuffle(act(bn(conv(x))))`` for a 1x1 ``conv``, as one fused call in eval mode.

    ``bn_after_shuffle=True`` is ``act(bn(shuffle(conv(x))))``: the BN's channels are then
    indexed in shuffled order (as when a model applies BN after the shuffle).

    Train mode runs the conv with its output shuffle fused, then BatchNorm on the shuffled
    tensor with its parameters and statistics permuted to match (see ``conv1x1_bn``): the
    shuffle stays inside the conv pass in training too.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        shuffle_groups: int | None = None,
        relu: bool = False,
        bn_after_shuffle: bool = False,
    ) -> None:
        shuffle_groups = conv.groups if shuffle_groups is None else shuffle_groups
        super().__init__(conv, bn, shuffle_groups, relu)
        _check_divisible(conv.out_channels, "conv.out_channels", self.shuffle_groups, "shuffle_groups")
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
    """``act(bn(conv(shuffle(x, shuffle_groups))))`` for a 1x1 ``conv``, fused in eval mode."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, shuffle_groups: int, relu: bool = False) -> None:
        super().__init__(conv, bn, shuffle_groups, relu)
        _check_divisible(conv.in_channels, "conv.in_channels", self.shuffle_groups, "shuffle_groups")

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
    ``nn.Sequential(conv, bn)`` with those names, so state_dict keys are unchanged."""

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
    with the folded weight and bias (eval-mode BN semantics; training it afterwards trains
    a model without BN). Returns a copy unless ``inplace=True``.
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


# --------------------------------------------------------------------------- ShuffleUnit
def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> "OrderedDict":
    return OrderedDict(
        conv=nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        ),
        bn=nn.BatchNorm2d(out_channels),
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

    ``fused=True`` runs each 1x1 conv with its BN, ReLU and shuffle as one fused module
    (``GroupConv1x1BNShuffle``; BN folded in eval mode, and for stride 2 the final ReLU of
    the branch in the second conv's epilogue). ``fused=False`` is the naive unit: separate
    conv, BN, ReLU and ``nn.ChannelShuffle``. Both have the same parameters and
    state_dict keys (``compress.conv``, ``compress.bn``, ``depthwise.conv``,
    ``depthwise.bn``, ``expand.conv``, ``expand.bn``), so checkpoints load both ways.
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
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(out_channels, "out_channels")
        _check_positive_int(groups, "groups")
        if stride not in (1, 2) or isinstance(stride, bool):
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
        _check_divisible(bottleneck, "the bottleneck width out_channels // 4", groups, "groups")
        _check_divisible(in_channels, "in_channels", first_groups, "groups")
        _check_divisible(branch_out, "the branch output channels", groups, "groups")

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            hidden = self.depthwise(self.compress(x))
            if self.stride == 1:
                return self.expand(hidden, residual=x)
            return torch.cat((functional.avg_pool3x3s2_relu(x), self.expand(hidden)), dim=1)
        branch = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if self.stride == 1:
            return F.relu(x + branch)
        return F.relu(torch.cat((self.shortcut(x), branch), dim=1))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, groups={self.groups}, stride={self.stride}, "
            f"grouped_first={self.grouped_first}, fused={self.fused}"
        )
