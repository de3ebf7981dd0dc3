"""The public fused ops. Each validates its arguments, picks a backend (see ``_backend``)
and runs the matching torch.autograd.Function (the kernel directly when no graph is
recorded), or the pure-PyTorch reference."""

from __future__ import annotations

import torch

from . import _backend, _checks, _extension, reference
from .autograd import (
    ChannelShuffleFunction,
    GroupConv1x1ShuffleFunction,
    ShuffleGroupConv1x1Function,
    kernels,
    needs_autograd,
)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Fast standalone channel shuffle, same result as ``torch.channel_shuffle(x, groups)``."""
    _checks.check_channel_shuffle(x, groups)
    backend = _backend.resolve(x.device)
    if backend == "reference":
        return reference.channel_shuffle(x, groups)
    if not needs_autograd(x):
        return kernels(backend, x.device).channel_shuffle(x, groups)
    return ChannelShuffleFunction.apply(x, groups, backend)


def group_conv1x1_shuffle(
    x: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    *,
    bias: torch.Tensor | None = None,
    shuffle_groups: int | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(shuffle(conv1x1(x, weight, groups) + bias, shuffle_groups) + residual)`` in one pass.

    ``shuffle_groups=None`` shuffles with ``groups`` (the paper's placement, right after the
    first GConv); ``shuffle_groups=1`` is a plain grouped 1x1 conv with a fused epilogue.
    ``weight`` is ``(Cout, Cin/groups, 1, 1)`` or ``(Cout, Cin/groups)``. ``residual`` (the
    output's shape) is added before the ReLU: a ShuffleNet unit's ``relu(x + branch)``.
    """
    shuffle_groups = groups if shuffle_groups is None else shuffle_groups
    _checks.check_conv1x1(x, weight, bias, groups, 1, shuffle_groups)
    _checks.check_residual(residual, x, weight.shape[0])
    backend = _backend.resolve(x.device)
    if backend == "reference":
        return reference.group_conv1x1_shuffle(
            x, weight, groups, bias=bias, shuffle_groups=shuffle_groups, relu=relu, residual=residual
        )
    if not needs_autograd(x, weight, bias, residual):
        return kernels(backend, x.device).group_conv1x1_shuffle(x, weight, bias, groups, shuffle_groups, relu, residual)
    return GroupConv1x1ShuffleFunction.apply(x, weight, bias, groups, shuffle_groups, relu, residual, backend)


def shuffle_group_conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    shuffle_groups: int,
    *,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(conv1x1(shuffle(x, shuffle_groups), weight, groups) + bias + residual)`` in one pass.

    The placement where the shuffle precedes a grouped conv. The official ShuffleNet code's
    shuffle is the inverse permutation, i.e. ``shuffle_groups = Cin // groups`` here.
    """
    _checks.check_conv1x1(x, weight, bias, groups, shuffle_groups, 1)
    _checks.check_residual(residual, x, weight.shape[0])
    backend = _backend.resolve(x.device)
    if backend == "reference":
        return reference.shuffle_group_conv1x1(
            x, weight, groups, shuffle_groups, bias=bias, relu=relu, residual=residual
        )
    if not needs_autograd(x, weight, bias, residual):
        return kernels(backend, x.device).shuffle_group_conv1x1(x, weight, bias, groups, shuffle_groups, relu, residual)
    return ShuffleGroupConv1x1Function.apply(x, weight, bias, groups, shuffle_groups, relu, residual, backend)


def _pool3x3s2_relu(name: str, x: torch.Tensor) -> torch.Tensor:
    _checks.check_pool_input(x, name)
    if _backend.resolve(x.device) == "cpp":  # the C++ kernel; Triton has no pool kernel
        _extension.require()
        return getattr(torch.ops.shufflenet_ops, name)(x)
    return getattr(reference, name)(x)


def max_pool3x3s2_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(max_pool2d(x, 3, stride=2, padding=1))`` in one pass over x on CPU (the C++
    kernel, channels_last; aten's pool and ReLU in other layouts and on other devices)."""
    return _pool3x3s2_relu("max_pool3x3s2_relu", x)


def avg_pool3x3s2_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(avg_pool2d(x, 3, stride=2, padding=1))`` (padding counted, as ``nn.AvgPool2d``)
    in one pass over x on CPU, as ``max_pool3x3s2_relu``."""
    return _pool3x3s2_relu("avg_pool3x3s2_relu", x)
