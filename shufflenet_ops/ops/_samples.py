"""Helpers shared by the op specs: the fake kernels' output allocation and the sample tensors
the tests run every op on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._prims_common import suggest_memory_format


def empty_like_format(reference: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An empty ``shape`` tensor in ``reference``'s dtype, device and memory format: every op's
    output follows its first tensor argument's layout, as the C++ kernels do."""
    return torch.empty(
        shape, dtype=reference.dtype, device=reference.device, memory_format=suggest_memory_format(reference)
    )


def in_format_of(reference: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in ``reference``'s memory format (a no-op when it already is): the references
    follow the kernels' layout rule, so the 'reference' backend keeps channels_last too."""
    return y.contiguous(memory_format=suggest_memory_format(reference))


def replace_argument(index, make):
    """For a spec's bad calls: a sample's arguments with argument ``index`` replaced by
    ``make(that argument)``."""
    return lambda a: (*a[:index], make(a[index]), *a[index + 1:])


@dataclass(frozen=True)
class SampleTensors:
    """float64 sample operands of a grouped 1x1 conv, 12 -> 24 channels on 3x5 pixels, in NCHW
    (index 0) and channels_last (index 1). x, w, b, residual require grad; go (a gradient of the
    output) and y (an output) do not."""

    x: tuple[torch.Tensor, ...]
    w: torch.Tensor
    b: torch.Tensor
    residual: tuple[torch.Tensor, ...]
    go: tuple[torch.Tensor, ...]
    y: tuple[torch.Tensor, ...]
    passthrough: tuple[torch.Tensor, ...]  # the conv's interleave_with, (2, 24, 3, 5), requires grad


def sample_tensors() -> SampleTensors:
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    layouts = (torch.contiguous_format, torch.channels_last)

    def per_layout(*shape: int, grad: bool = False) -> tuple[torch.Tensor, ...]:
        t = randn(*shape)
        return tuple(t.to(memory_format=f).clone().requires_grad_(grad) for f in layouts)

    return SampleTensors(
        x=per_layout(2, 12, 3, 5, grad=True),
        w=randn(24, 4, 1, 1).requires_grad_(),
        b=randn(24).requires_grad_(),
        residual=per_layout(2, 24, 3, 5, grad=True),
        go=per_layout(2, 24, 3, 5),
        y=per_layout(2, 24, 3, 5),
        passthrough=per_layout(2, 24, 3, 5, grad=True),
    )
