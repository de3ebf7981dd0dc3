"""Which implementation runs a call: ``auto``, ``cpp``, ``triton`` or ``reference``.

``auto`` picks by device: CPU -> the C++ extension, CUDA -> Triton, anything else -> the
pure-PyTorch reference. The choice is read at call time from, in order, the innermost
``shufflenet_ops.backend(name)`` context manager and the ``SHUFFLENET_OPS_BACKEND``
environment variable. Under ``torch.compile`` it is read once, when the graph is traced.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import torch

BACKENDS = ("auto", "cpp", "triton", "reference")
ENV_VAR = "SHUFFLENET_OPS_BACKEND"

_state = threading.local()


def _validate(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} from {source}; choose one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (thread-local, nests)."""
    _validate(name, "shufflenet_ops.backend()")
    stack = _state.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


@torch.compiler.assume_constant_result
def configured_backend() -> str:
    """The requested backend name, before device resolution."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return _validate(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", f"${ENV_VAR}")


def resolve(device: torch.device) -> str:
    """The backend that will run on ``device``: ``cpp``, ``triton`` or ``reference``."""
    name = configured_backend()
    if name != "auto":
        if name == "cpp" and device.type != "cpu":
            raise RuntimeError(f"backend 'cpp' runs on CPU tensors only, got a tensor on {device}")
        return name
    if device.type == "cpu":
        return "cpp"
    if device.type == "cuda":
        return "triton"
    return "reference"
