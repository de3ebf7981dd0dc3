"""Registers the Triton kernel table as the CUDA implementation of the C++-defined ops.

``torch.ops.shufflenet_ops`` on CUDA tensors then runs Triton through the dispatcher, under
autograd and torch.compile (the ops are opaque to Inductor, traced through their fake
kernels). The package's own eager calls reach the same functions directly
(``shufflenet_ops.autograd.kernels``), without the dispatcher's Python wrappers. Triton is imported on the first
CUDA call, not at registration, so ``import shufflenet_ops`` stays fast.

Why register_kernel and not ``torch.library.triton_op``: the schema lives in C++ (one schema
for the C++ CPU kernels and the Triton CUDA ones), and triton_op defines a new op. The
launchers also do Python-side work (layout, autotuning, slice counts) that Inductor need not
see.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import torch

LIB = "shufflenet_ops"
OPS = (
    "channel_shuffle",
    "group_conv1x1_shuffle",
    "shuffle_group_conv1x1",
    "conv1x1_shuffle_grad_input",
    "conv1x1_shuffle_grad_weight",
    "conv1x1_shuffle_grad_bias",
    "relu_grad",
)

_registered = False


def _lazy(name: str) -> Callable[..., Any]:
    def cuda_kernel(*args: Any) -> Any:
        from . import kernels

        return getattr(kernels, name)(*args)

    cuda_kernel.__name__ = f"{name}_triton_cuda"
    cuda_kernel.__qualname__ = cuda_kernel.__name__
    return cuda_kernel


def register_cuda_kernels(force: bool = False) -> bool:
    """Register Triton as the CUDA kernel of every op; returns whether they are registered.

    A no-op (False) when triton is not installed, the C++ extension (which defines the ops)
    did not load, or, unless ``force``, CUDA is not available. Idempotent.
    """
    global _registered
    if _registered:
        return True
    if importlib.util.find_spec("triton") is None:
        return False
    from .. import _extension

    if not _extension.available():
        return False
    if not force and not torch.cuda.is_available():
        return False
    for name in OPS:
        torch.library.register_kernel(f"{LIB}::{name}", "cuda", _lazy(name))
    _registered = True
    return True
