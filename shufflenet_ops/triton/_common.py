"""Shared launcher helpers: settings, tensor geometry, device checks.

Every kernel sees a 4-D tensor as (NB, C, P): NB batch items, C channels, P pixels, with
three strides. (H, W) always flattens into P because launchers first make tensors dense in
their own memory format (NCHW: pixel stride 1; channels_last: pixel stride C). When every
tensor of a launch has batch stride P * pixel_stride (channels_last, or C == 1), the batch
folds into the pixel axis (NB = 1, P = N*H*W): long contiguous pixel runs and no tile wasted
at the end of each image.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch._prims_common import suggest_memory_format

INT32_LIMIT = 2**31


@functools.lru_cache(maxsize=None)
def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 when the
    kernels were defined, so read once: launchers ask on every call)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "on", "yes")


# TF32 is an opt-in: the default fp32 result is exact fp32 (ieee) like the reference.
_settings = {
    "allow_tf32": _env_flag("SHUFFLENET_OPS_TF32", False),
    "launch_cache": _env_flag("SHUFFLENET_OPS_TRITON_LAUNCH_CACHE", True),
}


def set_allow_tf32(enabled: bool) -> None:
    """Let float32 GEMMs use TF32 tensor cores (10-bit mantissa products; faster, ~1e-3 error)."""
    _settings["allow_tf32"] = bool(enabled)


def allow_tf32() -> bool:
    return _settings["allow_tf32"]


def set_launch_cache(enabled: bool) -> None:
    """Cache each launcher's plan and compiled kernel per argument key (default on;
    SHUFFLENET_OPS_TRITON_LAUNCH_CACHE=0 at import turns it off). See launch_cache.py."""
    _settings["launch_cache"] = bool(enabled)


def launch_cache_enabled() -> bool:
    return _settings["launch_cache"]


def autotune_enabled() -> bool:
    """Autotune the forward/grad-input tiles (CUDA only; SHUFFLENET_OPS_TRITON_AUTOTUNE=0 turns
    it off and uses the fixed rule of ``_configs.pick``)."""
    return not interpreting() and _env_flag("SHUFFLENET_OPS_TRITON_AUTOTUNE", True)


def deterministic() -> bool:
    """Grad weight/bias with a fixed tile and reduction order (default). Setting
    SHUFFLENET_OPS_DETERMINISTIC=0 lets the autotuner pick the grad-weight tile too."""
    return _env_flag("SHUFFLENET_OPS_DETERMINISTIC", True)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact fp32 unless TF32 was opted into (ignored for 16-bit)."""
    return "tf32" if dtype == torch.float32 and allow_tf32() else "ieee"


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter (triton 3.9) computes bf16 tl.dot wrongly; there (only) operands are
    upcast to fp32 first. On GPU bf16 goes to the tensor cores as bf16."""
    return dtype == torch.bfloat16 and interpreting()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_device(t: torch.Tensor, op: str) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise RuntimeError(
        f"shufflenet_ops {op}: the Triton backend runs on CUDA tensors, or on CPU tensors only "
        f"under Triton's interpreter (set TRITON_INTERPRET=1 before triton is imported); got a "
        f"tensor on {t.device}"
    )


# Host-side integer helpers. triton.cdiv and triton.next_power_of_2 are constexpr functions,
# whose Python call goes through Triton's wrapper: launchers call these plain ones instead
# (host time is what a small GPU kernel waits behind).
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    return 1  # interpreter: one "SM", so a few slices are still exercised


def like(t: torch.Tensor, ref: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``t`` (``ref``'s shape) with exactly ``ref``'s strides, ``ref`` being dense in ``fmt``:
    a kernel then addresses both with one set of offsets. A copy only if needed (size-1 dims
    can leave ``contiguous`` with other strides)."""
    t = t.contiguous(memory_format=fmt)
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def dense_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format ``t`` is (or, if it is not dense, is closest to): NCHW or channels_last.
    Launchers run ``t.contiguous(memory_format=...)`` of it: a copy only if ``t`` is not dense."""
    nchw, nhwc = t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    if nchw != nhwc:  # the common, unambiguous case, without suggest_memory_format's stride analysis
        return torch.contiguous_format if nchw else torch.channels_last
    return suggest_memory_format(t)


@dataclass(frozen=True)
class Geometry:
    """How a launch walks pixels: ``nb`` batch items of ``p`` pixels each."""

    nb: int
    p: int

    @staticmethod
    def of(*tensors: torch.Tensor) -> "Geometry":
        n, _, h, w = tensors[0].shape
        p = h * w
        fold = all(t.stride(0) == p * t.stride(3) for t in tensors)
        return Geometry(1, n * p) if fold else Geometry(n, p)


def strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, channel, pixel) strides of a dense NCHW or channels_last tensor."""
    return t.stride(0), t.stride(1), t.stride(3)


def needs_int64(*tensors: torch.Tensor) -> bool:
    """64-bit offsets when any tensor spans 2^31 elements or more (int32 would wrap). A
    strided view (the odd channels of an interleaved output) spans more than its numel."""
    return any(t.numel() >= INT32_LIMIT or _span(t) >= INT32_LIMIT for t in tensors)


def _span(t: torch.Tensor) -> int:
    """1 + the largest element offset of ``t`` (its numel when it is dense)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if t.numel() else 0


# Tests force a tile to reach every kernel path on tiny shapes: {kernel name: Tile}.
_forced: dict = {}


@contextlib.contextmanager
def forced_tile(kernel: str, tile) -> Iterator[None]:
    """Use ``tile`` (a ``_configs.Tile``) for ``kernel`` ('conv' or 'grad_weight') inside the block."""
    previous = _forced.get(kernel)
    _forced[kernel] = tile
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(kernel, None)
        else:
            _forced[kernel] = previous


def forced(kernel: str):
    return _forced.get(kernel)


# Tests force the number of reduction slices to reach the multi-slice path on tiny shapes.
_forced_splits: list[int] = []


@contextlib.contextmanager
def forced_splits(n: int) -> Iterator[None]:
    _forced_splits.append(n)
    try:
        yield
    finally:
        _forced_splits.pop()


def splits_override() -> int | None:
    return _forced_splits[-1] if _forced_splits else None


def launch_settings() -> tuple:
    """Everything besides a launcher's arguments that changes what it launches: part of
    every launch-cache key (launch_cache.py). Environment variables are read per call, as
    the launchers read them."""
    return (
        _settings["allow_tf32"], autotune_enabled(), deterministic(), INT32_LIMIT,
        tuple(_forced.items()), tuple(_forced_splits),
    )


# Channel permutations as (a, b): channel c maps to (c % a) * b + c // a.
def shuffled_source(s: int, channels: int) -> tuple[int, int]:
    """Channel c of shuffle(t, s) is channel (c % s) * (C/s) + c // s of t: read through this."""
    return s, channels // s


def shuffled_target(s: int, channels: int) -> tuple[int, int]:
    """Channel r of t lands at channel (r % (C/s)) * s + r // (C/s) of shuffle(t, s)."""
    return channels // s, s
