"""Kernel tables: one object per implementation with a function per op of the schema.

- ``torch.ops.shufflenet_ops``: the dispatcher (the C++ kernels on CPU; on CUDA the Triton
  kernels, registered by ``shufflenet_ops.ops.register_cuda_kernels``).
- ``shufflenet_ops.triton.table.TRITON``: the Triton kernels called directly.
Their functions take the schema's arguments positionally and trust them: the op's
``OpSpec.check`` ran before (the C++ ops check again inside, for their own callers).
"""

from __future__ import annotations

from typing import Protocol

import torch

from .. import _extension

Tensor = torch.Tensor


class KernelTable(Protocol):
    """The ops of csrc/ops.cpp, with their schema's signatures."""

    def channel_shuffle(self, x: Tensor, groups: int) -> Tensor: ...

    def interleave(self, a: Tensor, b: Tensor) -> Tensor: ...

    def deinterleave(self, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]: ...

    def group_conv1x1_shuffle(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, shuffle_groups: int, relu: bool,
        residual: Tensor | None = None, interleave_with: Tensor | None = None,
    ) -> Tensor: ...

    def shuffle_group_conv1x1(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, shuffle_groups: int, relu: bool,
        residual: Tensor | None = None,
    ) -> Tensor: ...

    def conv1x1_shuffle_grad_input(
        self, grad_output: Tensor, weight: Tensor, groups: int, in_shuffle: int, out_shuffle: int
    ) -> Tensor: ...

    def conv1x1_shuffle_grad_weight(
        self, grad_output: Tensor, x: Tensor, groups: int, in_shuffle: int, out_shuffle: int
    ) -> Tensor: ...

    def conv1x1_shuffle_grad_bias(self, grad_output: Tensor, out_shuffle: int) -> Tensor: ...

    def relu_grad(self, grad_output: Tensor, output: Tensor) -> Tensor: ...

    def max_pool3x3s2_relu(self, x: Tensor) -> Tensor: ...

    def avg_pool3x3s2_relu(self, x: Tensor) -> Tensor: ...

    def batch_norm_relu_max_pool3x3s2(
        self, x: Tensor, weight: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...

    def batch_norm_relu_max_pool3x3s2_backward(
        self, grad_out: Tensor, x: Tensor, weight: Tensor, mean: Tensor, var: Tensor, window: Tensor, out: Tensor,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def batch_norm_relu(
        self, x: Tensor, weight: Tensor, bias: Tensor, eps: float, relu: bool
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def batch_norm_relu_backward(
        self, grad_out: Tensor, x: Tensor, weight: Tensor, mean: Tensor, var: Tensor, out: Tensor, eps: float,
        relu: bool,
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def shuffle_unit(
        self, x: Tensor, compress_weight: Tensor, compress_bias: Tensor, depthwise_weight: Tensor,
        depthwise_bias: Tensor, expand_weight: Tensor, expand_bias: Tensor, shuffle_groups: int, stride: int,
    ) -> Tensor: ...

    def shuffle_unit_v2(
        self, x: Tensor, compress_weight: Tensor, compress_bias: Tensor, depthwise_weight: Tensor,
        depthwise_bias: Tensor, expand_weight: Tensor, expand_bias: Tensor,
        branch1_depthwise_weight: Tensor | None = None, branch1_depthwise_bias: Tensor | None = None,
        branch1_pointwise_weight: Tensor | None = None, branch1_pointwise_bias: Tensor | None = None, stride: int = 1,
    ) -> Tensor: ...


def kernel_table(backend: str | None, device: torch.device) -> KernelTable:
    """The table that runs ``backend`` ('cpp', 'triton', or None: the dispatcher) on ``device``.

    'triton' calls the Triton kernels directly in eager mode: the dispatcher reaches the same
    functions, but adds its Python autograd and dynamo wrappers to every launch (host time
    that a small GPU kernel cannot hide). Under torch.compile, CUDA tensors go through the
    dispatcher so the graph holds opaque ops. CPU tensors (Triton's interpreter, a testing
    path) always take the Triton table, as the dispatcher would send them to the C++
    kernels; torch.compile cannot trace that path (dynamo stops in the launchers' tile
    selection), so compile with the Triton backend needs CUDA tensors.
    """
    if backend == "triton":
        compiled_cuda = device.type == "cuda" and torch.compiler.is_compiling() and _extension.available()
        if not compiled_cuda:
            from ..triton.table import TRITON

            return TRITON
    _extension.require()
    return torch.ops.shufflenet_ops  # type: ignore[return-value]  (not cast(): torch.compile traces this)
