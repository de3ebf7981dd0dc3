"""Loads the compiled C++ extension, which registers the op schema and the CPU kernels."""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

BUILD_HINT = (
    "the shufflenet_ops C++ extension (shufflenet_ops._C) is not built. Build it from the "
    "repository root with `pip install --no-build-isolation -e .` (needs torch installed "
    "first, and a C++ compiler), or run the pure-PyTorch reference with "
    "SHUFFLENET_OPS_BACKEND=reference"
)

try:
    from . import _C  # noqa: F401  (importing registers torch.ops.shufflenet_ops.*)

    LOAD_ERROR: Exception | None = None
except ImportError as error:  # the package still imports; the reference backend still works
    LOAD_ERROR = error
    warnings.warn(f"{BUILD_HINT} (import failed: {error})", RuntimeWarning, stacklevel=2)


def available() -> bool:
    return LOAD_ERROR is None


def require() -> None:
    """Raise a RuntimeError that says how to build the extension if it did not load."""
    if LOAD_ERROR is not None:
        raise RuntimeError(f"{BUILD_HINT} (import failed: {LOAD_ERROR})")


def cpu_gemm() -> str | None:
    """``'small_gemm'`` (the AVX-512 kernels) or ``'blas'``: the GEMM the fp32 CPU kernels
    use on this machine (``SHUFFLENET_OPS_CPU_GEMM=blas`` forces BLAS); None without the
    extension."""
    return _C.cpu_gemm() if LOAD_ERROR is None else None
