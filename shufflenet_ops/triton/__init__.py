"""Triton kernels of the fused ops (GPU; CPU tensors under TRITON_INTERPRET=1).

Importing this package is cheap and never imports triton: the kernel table is
``shufflenet_ops.triton.table.TRITON`` (importing it imports triton), and
``shufflenet_ops.ops.register_cuda_kernels`` makes it the CUDA implementation of
``torch.ops.shufflenet_ops.*``. Files: one launcher module per op family (``shuffle.py``,
``conv_forward.py``, ``conv_backward.py``), each holding its ``@triton.jit`` kernels
(``_*_kernel``); ``_configs.py`` the tiles; ``_common.py`` settings and geometry;
``launch_cache.py`` the per-shape cache of each launcher's plan and compiled kernel.

Settings: ``set_allow_tf32(True)`` or SHUFFLENET_OPS_TF32=1 (fp32 through TF32 tensor cores;
default exact fp32); SHUFFLENET_OPS_TRITON_AUTOTUNE=0 (fixed tiles instead of autotuning);
SHUFFLENET_OPS_DETERMINISTIC=0 (let the autotuner tile grad weight too);
``set_launch_cache(False)`` or SHUFFLENET_OPS_TRITON_LAUNCH_CACHE=0 (no launch cache).
"""

from __future__ import annotations

import importlib.util

from ._common import allow_tf32, set_allow_tf32, set_launch_cache  # noqa: F401  (light: torch only)


def available() -> bool:
    """Whether triton is installed (the kernels can be imported)."""
    return importlib.util.find_spec("triton") is not None


__all__ = ["allow_tf32", "available", "set_allow_tf32", "set_launch_cache"]
