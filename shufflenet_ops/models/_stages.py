"""Running a fused model's stages of units, and its global average pool, shared by ShuffleNet
V1 and V2."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..modules._common import global_hooks, runs_as_written
from ..modules.unit import unit_op_applies

Halves = tuple[torch.Tensor, torch.Tensor]


def run_stages(
    stages: Sequence[nn.Module], x: torch.Tensor, unit_type: type, unit_op: Callable[..., torch.Tensor], fused: bool
) -> torch.Tensor:
    """``x`` through ``stages`` (Sequentials of ``unit_type`` units).

    In inference with a whole-unit op (``fused`` and ``unit_op_applies``), each unit's op is
    called here directly with its ``_unit_arguments(x, checked=True)``: the call-level
    checks run once per forward, not per unit (at batch 1 a unit is ~60 us, and each check
    and module call is a few us). Otherwise a unit runs as a module, or, if ``unit_type``
    has ``_per_op(x_or_halves, split)`` (ShuffleNet V2's ``InvertedResidual``), op by op:
    a unit followed by a stride-1 unit then hands it its output's two channel halves
    (``functional.split_interleave``), so that the backward never concatenates the halves'
    gradients only to split them again. A stage or unit with hooks (global ones too), of
    another type or forward, or not fused, is called as a module, with the whole tensor."""
    if not fused or global_hooks():
        for stage in stages:
            x = stage(x)
        return x
    checked, per_op = unit_op_applies(x), hasattr(unit_type, "_per_op")

    def joined(value: torch.Tensor | Halves) -> torch.Tensor:
        return torch.cat(value, 1) if isinstance(value, tuple) else value

    def fused_unit(unit: nn.Module | None) -> bool:
        return unit is not None and runs_as_written(unit, unit_type) and unit.fused

    def takes_halves(unit: nn.Module | None) -> bool:
        return per_op and fused_unit(unit) and unit.stride == 1

    value: torch.Tensor | Halves = x
    for stage in stages:
        if not runs_as_written(stage, nn.Sequential):
            value = stage(joined(value))
            continue
        units = list(stage._modules.values())
        for unit, following in zip(units, [*units[1:], None]):
            if not fused_unit(unit):
                value = unit(joined(value))
                continue
            arguments = unit._unit_arguments(value, checked=True) if checked and torch.is_tensor(value) else None
            if arguments is not None:
                value = unit_op(value, *arguments)
            elif per_op:
                value = unit._per_op(value, split=takes_halves(following))
            else:
                value = unit(value)
    return joined(value)


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3))``: ``(N, C, H, W)`` -> ``(N, C)``. A channels_last ``x`` is reduced
    through its NHWC view, so its gradient comes back channels_last too (torch's mean and
    adaptive pool return a contiguous NCHW gradient, which the ReLU backward before the
    pool then reads ~20x slower against its channels_last output)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1).mean((1, 2))
    return x.mean((2, 3))
