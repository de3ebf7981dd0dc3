"""Running a model's stages of fused units in inference, and its global average pool,
shared by ShuffleNet V1 and V2."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..modules._common import global_hooks, runs_as_written
from ..modules.unit import unit_op_applies


def run_stages(
    stages: Sequence[nn.Module], x: torch.Tensor, unit_type: type, unit_op: Callable[..., torch.Tensor], fused: bool
) -> torch.Tensor:
    """``x`` through ``stages`` (Sequentials of ``unit_type`` units). In inference with a
    whole-unit op (``fused`` and ``unit_op_applies``), each unit's op is called here directly
    with its ``_unit_arguments(x, checked=True)``: the call-level checks run once per forward,
    not per unit (at batch 1 a unit is ~60 us, and each check and module call is a few us).
    A stage or unit with hooks, or another type or forward, is called as a module, so that
    they run."""
    if not (fused and unit_op_applies(x)) or global_hooks():
        for stage in stages:
            x = stage(x)
        return x
    for stage in stages:
        if not runs_as_written(stage, nn.Sequential):
            x = stage(x)
            continue
        for unit in stage:
            arguments = unit._unit_arguments(x, checked=True) if runs_as_written(unit, unit_type) else None
            x = unit(x) if arguments is None else unit_op(x, *arguments)
    return x


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3))``: ``(N, C, H, W)`` -> ``(N, C)``. A channels_last ``x`` is reduced
    through its NHWC view, so its gradient comes back channels_last too (torch's mean and
    adaptive pool return a contiguous NCHW gradient, which the ReLU backward before the
    pool then reads ~20x slower against its channels_last output)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1).mean((1, 2))
    return x.mean((2, 3))
