"""Argument checks, the shuffle's channel permutation and the hook test, shared by the
module files (and fuse.py)."""

from __future__ import annotations

import torch
from torch import nn


def check_positive_int(value: object, name: str) -> int:
    """``value`` itself; TypeError unless an int (bool excluded), ValueError if < 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_divisible(channels: int, channels_name: str, groups: int, groups_name: str) -> None:
    """ValueError unless ``groups`` divides ``channels``."""
    if channels % groups != 0:
        raise ValueError(f"{channels_name} ({channels}) must be divisible by {groups_name} ({groups})")


def shuffle_permutation(channels: int, groups: int, device: torch.device | None = None) -> torch.Tensor:
    """Index ``p`` with ``shuffle(x, groups)[:, j] == x[:, p[j]]`` for ``channels`` channels.

    The inverse permutation is ``shuffle_permutation(channels, channels // groups)``.
    """
    return torch.arange(channels, device=device).view(groups, channels // groups).t().reshape(-1)


def has_hooks(module: nn.Module) -> bool:
    """Forward or backward hooks on ``module`` (spectral_norm and weight_norm's old API are
    pre-hooks): it must be called, so that they run."""
    return any(getattr(module, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def runs_as_written(module: nn.Module, cls: type) -> bool:
    """``module`` is a ``cls`` whose forward is ``cls.forward`` (no subclass or instance
    override) and has no hooks: calling its children directly computes what calling it does."""
    return (
        isinstance(module, cls) and type(module).forward is cls.forward and "forward" not in vars(module)
        and not has_hooks(module)
    )


def global_hooks() -> bool:
    """Hooks registered for every module (``register_module_forward_hook`` and the like): then
    every unit must be called as a module."""
    hooks = torch.nn.modules.module
    return bool(
        hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks
        or hooks._global_backward_pre_hooks
    )
