"""Triton kernels of the fused ops (GPU; CPU tensors under TRITON_INTERPRET=1).

Importing this package is cheap and never imports triton: the kernel table is the submodule
``shufflenet_ops.triton.kernels`` (imported on first use), and ``register_cuda_kernels``
makes it the CUDA implementation of ``torch.ops.shufflenet_ops.*``.

Settings: ``set_allow_tf32(True)`` or SHUFFLENET_OPS_TF32=1 (fp32 through TF32 tensor cores;
default exact fp32); SHUFFLENET_OPS_TRITON_AUTOTUNE=0 (fixed tiles instead of autotuning);
SHUFFLENET_OPS_DETERMINISTIC=0 (let the autotuner tile grad weight too).
"""

from __future__ import annotations

import importlib.util

from ._common import allow_tf32, set_allow_tf32  # noqa: F401  (light: torch only)
from ._register import OPS, register_cuda_kernels  # noqa: F401


def available() -> bool:
    """Whether triton is installed (the kernels can be imported)."""
    return importlib.util.find_spec("triton") is not None


__all__ = ["OPS", "allow_tf32", "available", "register_cuda_kernels", "set_allow_tf32"]
