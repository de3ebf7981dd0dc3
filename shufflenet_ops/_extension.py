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


def tensor_stamps(tensors: tuple[torch.Tensor, ...]) -> tuple | None:
    """The identity, version counter, data pointer, dtype and device of each tensor, as one
    tuple (equal tuples: none of the tensors was replaced or changed in place, while the
    caller keeps them alive); None if one is an inference tensor (it has no version counter).
    The extension's version reads them in one call (a cache check of 15 tensors per fused
    unit call costs ~8 us in Python); this is its fallback."""
    if LOAD_ERROR is None:
        return _C.tensor_stamps(tensors)
    if any(t.is_inference() for t in tensors):
        return None
    return tuple(s for t in tensors for s in (id(t), t._version, t.data_ptr(), t.dtype, t.device))
