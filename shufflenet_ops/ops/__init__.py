"""The ops: one ``OpSpec`` each (``spec.py``), declared in one file per op family, and the
registrations derived from them.

The schemas live in csrc/ops.cpp (the C++ extension defines the library); everything else
about an op is its spec. Importing this package registers, for every op, the fake kernel and
the autograd formula (when the extension loaded); ``register_cuda_kernels`` adds the CUDA
kernels (Triton).
"""

from __future__ import annotations

import importlib.util

import torch

from .. import _extension
from .batch_norm_relu import BATCH_NORM_RELU, BATCH_NORM_RELU_BACKWARD
from .batch_norm_relu_max_pool import BATCH_NORM_RELU_MAX_POOL3X3S2, BATCH_NORM_RELU_MAX_POOL3X3S2_BACKWARD
from .channel_shuffle import CHANNEL_SHUFFLE
from .conv1x1_shuffle import (
    GRAD_BIAS,
    GRAD_INPUT,
    GRAD_WEIGHT,
    GROUP_CONV1X1_SHUFFLE,
    RELU_GRAD,
    SHUFFLE_GROUP_CONV1X1,
)
from .interleave import DEINTERLEAVE, INTERLEAVE
from .pool3x3s2_relu import AVG_POOL3X3S2_RELU, MAX_POOL3X3S2_RELU
from .shuffle_unit import SHUFFLE_UNIT
from .shuffle_unit_v2 import SHUFFLE_UNIT_V2
from .spec import OpSpec, register, register_cuda_kernel
from .table import KernelTable, kernel_table

# In csrc/ops.cpp's order.
SPECS: tuple[OpSpec, ...] = (
    CHANNEL_SHUFFLE,
    INTERLEAVE,
    DEINTERLEAVE,
    GROUP_CONV1X1_SHUFFLE,
    SHUFFLE_GROUP_CONV1X1,
    GRAD_INPUT,
    GRAD_WEIGHT,
    GRAD_BIAS,
    RELU_GRAD,
    MAX_POOL3X3S2_RELU,
    AVG_POOL3X3S2_RELU,
    BATCH_NORM_RELU_MAX_POOL3X3S2,
    BATCH_NORM_RELU_MAX_POOL3X3S2_BACKWARD,
    BATCH_NORM_RELU,
    BATCH_NORM_RELU_BACKWARD,
    SHUFFLE_UNIT,
    SHUFFLE_UNIT_V2,
)
BY_NAME: dict[str, OpSpec] = {spec.name: spec for spec in SPECS}

_cuda_registered = False


def register_cuda_kernels(force: bool = False) -> bool:
    """Register every op's CUDA kernel (Triton, or the reference for an op without one);
    returns whether they are registered.

    A no-op (False) when triton is not installed, the C++ extension (which defines the ops)
    did not load, or, unless ``force``, CUDA is not available. Idempotent.
    """
    global _cuda_registered
    if _cuda_registered:
        return True
    if importlib.util.find_spec("triton") is None or not _extension.available():
        return False
    if not force and not torch.cuda.is_available():
        return False
    for spec in SPECS:
        register_cuda_kernel(spec)
    _cuda_registered = True
    return True


if _extension.available():
    for _spec in SPECS:
        register(_spec)

__all__ = ["BY_NAME", "SPECS", "KernelTable", "OpSpec", "kernel_table", "register_cuda_kernels"]
