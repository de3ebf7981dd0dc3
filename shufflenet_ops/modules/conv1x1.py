"""The fused 1x1 conv modules: drop-in replacements for a 1x1 ``nn.Conv2d`` next to a
channel shuffle, with the conv's ``weight`` / ``bias`` parameters and state_dict keys.

- ``GroupConv1x1Shuffle``: ``act(shuffle(conv1x1(x) + bias, shuffle_groups))``;
- ``ShuffleGroupConv1x1``: ``act(conv1x1(shuffle(x, shuffle_groups)) + bias)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional
from ._common import check_divisible, check_positive_int


def is_pointwise_conv(conv: nn.Module) -> bool:
    """True for an ``nn.Conv2d`` that is a plain 1x1 conv the fused ops can run."""
    if not isinstance(conv, nn.Conv2d) or type(conv).forward is not nn.Conv2d.forward:
        return False
    # With a 1x1 kernel, padding "same" is no padding, and dilation changes nothing.
    no_padding = conv.padding in ("valid", "same") or tuple(conv.padding) == (0, 0)
    return tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and no_padding


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
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.groups = check_positive_int(groups, "groups")
        self.shuffle_groups = check_positive_int(shuffle_groups, "shuffle_groups")
        check_divisible(in_channels, "in_channels", groups, "groups")
        check_divisible(out_channels, "out_channels", groups, "groups")
        check_divisible(shuffled_channels, "the shuffled channels", shuffle_groups, "shuffle_groups")
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

    ``forward(x, residual=None) = act(shuffle(conv1x1(x, weight, groups) + bias,
    shuffle_groups) + residual)``, ``act`` being a ReLU with ``relu=True``. ``weight``
    ``(Cout, Cin/groups, 1, 1)`` and ``bias`` ``(Cout,)`` are those of the
    ``nn.Conv2d(in_channels, out_channels, 1, groups=groups)`` it replaces:
    ``module.load_state_dict(conv.state_dict())`` works, and the other way round.

    Args:
        in_channels: ``Cin``, divisible by ``groups``.
        out_channels: ``Cout``, divisible by ``groups`` and by ``shuffle_groups``.
        groups: groups of the conv.
        shuffle_groups: groups of the output's channel shuffle; None (default): ``groups``,
            the paper's placement; 1: no shuffle.
        bias: whether there is a ``bias`` parameter.
        relu: apply a ReLU last.
        device, dtype: of the parameters, as for ``nn.Conv2d``.

    Shape:
        x ``(N, Cin, H, W)``, residual ``(N, Cout, H, W)`` or None -> output ``(N, Cout, H, W)``.

    dtypes: float32, float64, bfloat16 or float16; x, the parameters and the residual
    share one dtype, the output's.

    Memory format: the output is channels_last if x is, contiguous NCHW otherwise (C++
    and Triton backends; the ``reference`` backend returns contiguous NCHW).

    Raises:
        TypeError: (construction) a channel or group count that is not an int;
            (forward) x of another dtype than the parameters or of an unsupported one.
        ValueError: (construction) a count < 1, a channel count not divisible by its
            group count; (forward) x not 4-D or without ``Cin`` channels, a residual of
            another shape.
        RuntimeError: (forward) x, the parameters and the residual not on one device, or
            CPU tensors without the built C++ extension.
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
    ) -> GroupConv1x1Shuffle:
        """A module that shares ``conv``'s parameters (no copy).

        Raises TypeError if ``conv`` is not an ``nn.Conv2d``, ValueError if it is not a 1x1
        conv with stride 1 and no padding (or ``shuffle_groups`` does not divide its
        ``out_channels``)."""
        return cls._sharing(conv, shuffle_groups, relu)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (the output's shape) is added before the ReLU, in the same pass."""
        return functional.group_conv1x1_shuffle(
            x, self.weight, self.groups, bias=self.bias, shuffle_groups=self.shuffle_groups, relu=self.relu,
            residual=residual,
        )


class ShuffleGroupConv1x1(_Conv1x1Base):
    """A 1x1 conv that reads its input channel-shuffled: ``act(conv1x1(shuffle(x, s)) + bias)``.

    ``forward(x, residual=None) = act(conv1x1(shuffle(x, shuffle_groups), weight, groups)
    + bias + residual)``. The placement of the official ShuffleNet code (shuffle right
    before the second GConv); its shuffle is the inverse permutation, i.e.
    ``shuffle_groups = in_channels // groups`` here. ``weight`` ``(Cout, Cin/groups, 1, 1)``
    and ``bias`` ``(Cout,)`` are those of the ``nn.Conv2d`` it replaces (state_dicts load
    both ways).

    Args:
        in_channels: ``Cin``, divisible by ``groups`` and by ``shuffle_groups``.
        out_channels: ``Cout``, divisible by ``groups``.
        groups: groups of the conv.
        shuffle_groups: groups of the input's channel shuffle (1: no shuffle).
        bias: whether there is a ``bias`` parameter.
        relu: apply a ReLU last.
        device, dtype: of the parameters, as for ``nn.Conv2d``.

    Shape, dtypes, memory format and the exceptions raised: as ``GroupConv1x1Shuffle``
    (``(N, Cin, H, W)`` -> ``(N, Cout, H, W)``; here ``shuffle_groups`` must divide ``Cin``).
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
    def from_conv(cls, conv: nn.Conv2d, shuffle_groups: int, relu: bool = False) -> ShuffleGroupConv1x1:
        """A module that shares ``conv``'s parameters (no copy); raises as
        ``GroupConv1x1Shuffle.from_conv``."""
        return cls._sharing(conv, shuffle_groups, relu)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (the output's shape) is added before the ReLU, in the same pass."""
        return functional.shuffle_group_conv1x1(
            x, self.weight, self.groups, self.shuffle_groups, bias=self.bias, relu=self.relu, residual=residual
        )
