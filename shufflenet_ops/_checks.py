"""Argument validation shared by every backend.

The C++ ops check the same things (csrc/checks.h) with the same exception types
(ValueError for shapes and group counts, TypeError for dtypes, RuntimeError for devices),
so a bad call fails the same way whichever backend runs it.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_input(x: torch.Tensor, what: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what} must be 4-D (N, C, H, W), got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{what} has unsupported dtype {x.dtype}; supported: float32, float64, bfloat16, float16"
        )


def _check_groups(value: int, name: str, channels: int, channels_name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if channels % value != 0:
        raise ValueError(f"{channels_name} ({channels}) must be divisible by {name} ({value})")


def check_pool_input(x: torch.Tensor, op: str) -> None:
    _check_input(x, "x")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"shufflenet_ops {op}: x must have a non-empty spatial size, got {list(x.shape)}")


def check_channel_shuffle(x: torch.Tensor, groups: int) -> None:
    _check_input(x)
    _check_groups(groups, "groups", x.shape[1], "channels")


def check_conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    in_shuffle: int,
    out_shuffle: int,
) -> None:
    """Checks a grouped 1x1 conv whose input is shuffled by ``in_shuffle`` and output by
    ``out_shuffle`` groups (1 = no shuffle)."""
    _check_input(x)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
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
    cin = x.shape[1]
    cout = weight.shape[0]
    _check_groups(groups, "groups", cin, "input channels")
    _check_groups(groups, "groups", cout, "output channels (weight.shape[0])")
    if weight.shape[1] * groups != cin:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match input with {cin} channels and "
            f"groups={groups}: expected weight.shape[1] == {cin // groups}"
        )
    _check_groups(in_shuffle, "shuffle_groups", cin, "input channels")
    _check_groups(out_shuffle, "shuffle_groups", cout, "output channels")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} does not match input dtype {x.dtype}")
    if weight.device != x.device:
        raise RuntimeError(f"weight is on {weight.device} but input is on {x.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dim() != 1 or bias.shape[0] != cout:
            raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias dtype {bias.dtype} does not match input dtype {x.dtype}")
        if bias.device != x.device:
            raise RuntimeError(f"bias is on {bias.device} but input is on {x.device}")


def check_residual(residual: torch.Tensor | None, x: torch.Tensor, cout: int) -> None:
    """The epilogue's residual: a tensor of the output's shape, dtype and device."""
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual must be a torch.Tensor or None, got {type(residual).__name__}")
    expected = (x.shape[0], cout, x.shape[2], x.shape[3])
    if tuple(residual.shape) != expected:
        raise ValueError(f"residual must have the output's shape {expected}, got {tuple(residual.shape)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"residual dtype {residual.dtype} does not match input dtype {x.dtype}")
    if residual.device != x.device:
        raise RuntimeError(f"residual is on {residual.device} but input is on {x.device}")
