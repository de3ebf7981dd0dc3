"""The Triton kernel table: every op of the schema on Triton (GPU; CPU tensors under
TRITON_INTERPRET=1), built from the op specs (``OpSpec.triton`` names each op's launcher).

An op without a Triton kernel (the pools) runs its reference. Each entry first checks that
Triton can run on the tensor's device and makes that GPU the current one (Triton launches on
the current device, not necessarily the tensors'). Arguments are not checked here: the op's
``OpSpec.check`` ran before (the public functions and the dispatcher's CUDA kernel).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import torch

from ..ops import SPECS, KernelTable, OpSpec
from . import _common, conv_backward


def on_input_device(name: str, launcher: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``launcher`` run with its first tensor's GPU as the current device, after checking that
    Triton can run on that tensor's device (CUDA, or CPU under the interpreter)."""

    @functools.wraps(launcher)
    def launch(first: torch.Tensor, *args: Any) -> torch.Tensor:
        _common.check_device(first, name)
        if first.is_cuda and first.device.index != torch.cuda.current_device():
            with torch.cuda.device(first.device):
                return launcher(first, *args)
        return launcher(first, *args)

    return launch


def _entry(spec: OpSpec) -> Callable[..., torch.Tensor]:
    if spec.triton is None:  # the reference, under the same device rule as the kernels
        return on_input_device(spec.name, spec.reference)
    module, function = spec.triton.split(":")
    return on_input_device(spec.name, getattr(importlib.import_module(f"{__package__}.{module}"), function))


TRITON = cast(KernelTable, SimpleNamespace(**{spec.name: _entry(spec) for spec in SPECS}))


# Not a schema op: the Triton conv backward in one call (ops/conv1x1_shuffle.py takes it in
# eager mode when the Triton table runs the op), under the same device rule.
conv1x1_shuffle_backward = on_input_device("conv1x1_shuffle_backward", conv_backward.conv1x1_shuffle_backward)
