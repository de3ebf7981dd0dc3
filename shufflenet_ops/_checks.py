"""Argument checks: the Python twin of csrc/checks.h.

Every op's ``OpSpec.check`` is built from these, with the C++ ops' messages and exception
types (ValueError for shapes and group counts, TypeError for dtypes, RuntimeError for
devices), so a bad call fails the same way whichever backend runs it. tests/test_errors.py
runs every op's bad calls through both.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_tensor(t: object, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")


def check_input(x: torch.Tensor, what: str = "input") -> None:
    """A 4-D (N, C, H, W) tensor of a supported floating dtype."""
    check_tensor(x, what)
    if x.dim() != 4:
        raise ValueError(f"{what} must be 4-D (N, C, H, W), got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what} has unsupported dtype {x.dtype}; supported: float32, float64, bfloat16, float16")


def check_groups(value: int, name: str, channels: int, channels_name: str) -> None:
    """``value`` is an int >= 1 that divides ``channels``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if channels % value != 0:
        raise ValueError(f"{channels_name} ({channels}) must be divisible by {name} ({value})")


def check_same(t: torch.Tensor, x: torch.Tensor, what: str, other: str = "input") -> None:
    """``t`` has the dtype and device of ``x``."""
    if t.dtype != x.dtype:
        raise TypeError(f"{what} dtype {t.dtype} does not match {other} dtype {x.dtype}")
    if t.device != x.device:
        raise RuntimeError(f"{what} is on {t.device} but {other} is on {x.device}")


def check_vector(t: torch.Tensor, name: str, length: int) -> None:
    """A 1-D tensor of ``length`` values (a bias, a BN's weight)."""
    check_tensor(t, name)
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {list(t.shape)}")


def check_batch_norm_input(x: torch.Tensor, weight: torch.Tensor, eps: float, op: str) -> None:
    """The input of a BatchNorm with batch statistics (csrc/cpu/batch_norm.h, same messages):
    x 4-D with channels, pixels and more than one value per channel; weight ``(C,)`` of x's
    dtype and device; eps finite and > 0."""
    check_input(x, "x")
    if x.shape[1] == 0:
        raise ValueError(f"shufflenet_ops {op}: x must have at least one channel, got {list(x.shape)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"shufflenet_ops {op}: x must have a non-empty spatial size, got {list(x.shape)}")
    if x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        raise ValueError(
            f"shufflenet_ops {op}: batch statistics need more than one value per channel, got x of shape "
            f"{list(x.shape)}"
        )
    check_vector(weight, "weight", x.shape[1])
    check_same(weight, x, "weight", "x")
    if not (0 < eps < float("inf")):  # as F.batch_norm in training
        raise ValueError(f"shufflenet_ops {op}: eps must be finite and > 0, got {eps}")


def check_weight_shape(weight: torch.Tensor) -> None:
    """A 1x1 conv weight: (Cout, Cin/groups, 1, 1) or (Cout, Cin/groups)."""
    check_tensor(weight, "weight")
    if weight.dim() == 4:
        if weight.shape[2] != 1 or weight.shape[3] != 1:
            raise ValueError(
                f"weight must be a 1x1 kernel (Cout, Cin/groups, 1, 1), got kernel "
                f"{weight.shape[2]}x{weight.shape[3]} in shape {tuple(weight.shape)}"
            )
    elif weight.dim() != 2:
        raise ValueError(
            f"weight must have shape (Cout, Cin/groups, 1, 1) or (Cout, Cin/groups), got {tuple(weight.shape)}"
        )


def check_weight(weight: torch.Tensor, cin: int, groups: int) -> None:
    """A 1x1 conv weight for ``cin`` input channels in ``groups`` groups."""
    check_weight_shape(weight)
    check_groups(groups, "groups", cin, "input channels")
    check_groups(groups, "groups", weight.shape[0], "output channels (weight.shape[0])")
    if weight.shape[1] * groups != cin:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match input with {cin} channels and "
            f"groups={groups}: expected weight.shape[1] == {cin // groups}"
        )


def check_conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    in_shuffle: int,
    out_shuffle: int,
    relu: bool,
    residual: torch.Tensor | None,
    interleave_with: torch.Tensor | None = None,
) -> None:
    """A grouped 1x1 conv whose input is shuffled by ``in_shuffle`` and output by
    ``out_shuffle`` groups (1 = no shuffle), with an optional bias, residual and passthrough
    half of an interleaved output (``interleave_with``, of the conv output's shape)."""
    check_input(x)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    check_weight(weight, x.shape[1], groups)
    cout = weight.shape[0]
    check_groups(in_shuffle, "shuffle_groups", x.shape[1], "input channels")
    check_groups(out_shuffle, "shuffle_groups", cout, "output channels")
    check_same(weight, x, "weight")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dim() != 1 or bias.shape[0] != cout:
            raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
        check_same(bias, x, "bias")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor or None, got {type(residual).__name__}")
        expected = (x.shape[0], cout, x.shape[2], x.shape[3])
        if tuple(residual.shape) != expected:
            raise ValueError(f"residual must have the output's shape {expected}, got {tuple(residual.shape)}")
        check_same(residual, x, "residual")
    if interleave_with is not None:
        if not isinstance(interleave_with, torch.Tensor):
            raise TypeError(f"interleave_with must be a torch.Tensor or None, got {type(interleave_with).__name__}")
        expected = (x.shape[0], cout, x.shape[2], x.shape[3])
        if tuple(interleave_with.shape) != expected:
            raise ValueError(
                f"interleave_with must have the conv output's shape {expected}, got {tuple(interleave_with.shape)}"
            )
        check_same(interleave_with, x, "interleave_with")
