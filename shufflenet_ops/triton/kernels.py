"""The Triton kernel table: the op schema's functions (csrc/ops.cpp), exact signatures.

``shufflenet_ops.autograd.kernels`` returns this module for CPU tensors under
TRITON_INTERPRET=1 (or when the C++ extension is missing), and ``register_cuda_kernels``
registers these same functions as the CUDA implementation of ``torch.ops.shufflenet_ops``.
Each validates its arguments with the package's shared checks (same errors as the C++ ops),
then calls a launcher: kernel (``_*_kernel``) -> launcher (shuffle.py, conv_forward.py,
conv_backward.py) -> this table.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

from .. import _checks
from . import _common, conv_backward, conv_forward, shuffle

_F = TypeVar("_F", bound=Callable)


def on_input_device(fn: _F) -> _F:
    """Run ``fn`` with the first tensor's GPU as the current device: Triton launches on the
    current device, which is not necessarily the one the tensors live on."""

    @functools.wraps(fn)
    def launch(first, *args, **kwargs):
        # Not a tensor: fn's own checks raise the error that names the problem.
        if getattr(first, "is_cuda", False) and first.device.index != torch.cuda.current_device():
            with torch.cuda.device(first.device):
                return fn(first, *args, **kwargs)
        return fn(first, *args, **kwargs)

    return launch  # type: ignore[return-value]


@on_input_device
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    _checks.check_channel_shuffle(x, groups)
    _common.check_device(x, "channel_shuffle")
    return shuffle.channel_shuffle(x, groups)


@on_input_device
def group_conv1x1_shuffle(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    shuffle_groups: int,
    relu: bool,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = act(shuffle(conv1x1(x) + bias, shuffle_groups) + residual)."""
    return _fused_conv("group_conv1x1_shuffle", x, weight, bias, groups, 1, shuffle_groups, relu, residual)


@on_input_device
def shuffle_group_conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    shuffle_groups: int,
    relu: bool,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = act(conv1x1(shuffle(x, shuffle_groups)) + bias + residual)."""
    return _fused_conv("shuffle_group_conv1x1", x, weight, bias, groups, shuffle_groups, 1, relu, residual)


def _fused_conv(op, x, weight, bias, groups: int, in_shuffle: int, out_shuffle: int, relu: bool, residual):
    """Both placements: the shared checks, then the one forward launcher."""
    _checks.check_conv1x1(x, weight, bias, groups, in_shuffle, out_shuffle)
    _checks.check_residual(residual, x, weight.shape[0])
    _common.check_device(x, op)
    return conv_forward.conv1x1_shuffle_forward(x, weight, bias, groups, in_shuffle, out_shuffle, relu, residual)


@on_input_device
def conv1x1_shuffle_grad_input(
    grad_output: torch.Tensor, weight: torch.Tensor, groups: int, in_shuffle: int, out_shuffle: int
) -> torch.Tensor:
    _check_grad_output(grad_output, weight.shape[0] if isinstance(weight, torch.Tensor) else None, out_shuffle)
    _check_weight(weight, grad_output, groups)
    _checks._check_groups(in_shuffle, "in_shuffle", weight.shape[1] * groups, "input channels")
    _common.check_device(grad_output, "conv1x1_shuffle_grad_input")
    return conv_backward.conv1x1_grad_input(grad_output, weight, groups, in_shuffle, out_shuffle)


@on_input_device
def conv1x1_shuffle_grad_weight(
    grad_output: torch.Tensor, x: torch.Tensor, groups: int, in_shuffle: int, out_shuffle: int
) -> torch.Tensor:
    _check_grad_output(grad_output, None, out_shuffle)
    _checks._check_input(x, "x")
    if x.shape[0] != grad_output.shape[0] or x.shape[2:] != grad_output.shape[2:]:
        raise ValueError(
            f"x of shape {tuple(x.shape)} does not match grad_output of shape {tuple(grad_output.shape)} "
            f"in batch or spatial size"
        )
    _same(x, grad_output, "x")
    _checks._check_groups(groups, "groups", x.shape[1], "input channels")
    _checks._check_groups(groups, "groups", grad_output.shape[1], "output channels")
    _checks._check_groups(in_shuffle, "in_shuffle", x.shape[1], "input channels")
    _common.check_device(grad_output, "conv1x1_shuffle_grad_weight")
    return conv_backward.conv1x1_grad_weight(grad_output, x, groups, in_shuffle, out_shuffle)


@on_input_device
def conv1x1_shuffle_grad_bias(grad_output: torch.Tensor, out_shuffle: int) -> torch.Tensor:
    _check_grad_output(grad_output, None, out_shuffle)
    _common.check_device(grad_output, "conv1x1_shuffle_grad_bias")
    return conv_backward.conv1x1_grad_bias(grad_output, out_shuffle)


@on_input_device
def relu_grad(grad_output: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    _checks._check_input(grad_output, "grad_output")
    _checks._check_input(output, "output")
    if output.shape != grad_output.shape:
        raise ValueError(
            f"output shape {tuple(output.shape)} does not match grad_output shape {tuple(grad_output.shape)}"
        )
    _same(output, grad_output, "output")
    _common.check_device(grad_output, "relu_grad")
    return conv_backward.relu_grad(grad_output, output)


# ----------------------------------------------------------------------------- checks
def _check_grad_output(grad_output: torch.Tensor, cout: int | None, out_shuffle: int) -> None:
    _checks._check_input(grad_output, "grad_output")
    if cout is not None and grad_output.shape[1] != cout:
        raise ValueError(
            f"grad_output has {grad_output.shape[1]} channels but weight has {cout} output channels"
        )
    _checks._check_groups(out_shuffle, "out_shuffle", grad_output.shape[1], "output channels")


def _check_weight(weight: torch.Tensor, grad_output: torch.Tensor, groups: int) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() not in (2, 4) or (weight.dim() == 4 and weight.shape[2:] != (1, 1)):
        raise ValueError(f"weight must have shape (Cout, Cin/groups, 1, 1) or (Cout, Cin/groups), got {tuple(weight.shape)}")
    _checks._check_groups(groups, "groups", weight.shape[0], "output channels (weight.shape[0])")
    _same(weight, grad_output, "weight")


def _same(t: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{what} dtype {t.dtype} does not match grad_output dtype {ref.dtype}")
    if t.device != ref.device:
        raise RuntimeError(f"{what} is on {t.device} but grad_output is on {ref.device}")
