"""This machine's roofs, measured in the same run as the kernels they judge.

Memory: the bandwidth of a large tensor copy (256 MiB into a preallocated tensor: bytes
read + bytes written per second), the most a memory-bound kernel can hope for. (A
``clone`` would time the page faults of a fresh allocation too: 5x slower on CPU.) Compute: the FLOP rate
of a large ``torch.mm`` in the run's dtype, the most a GEMM-shaped kernel can hope for.

Per layer, ``same_flops_gemm`` gives the reference the grouped GEMM's rate is judged
against: a dense square ``torch.mm`` of (nearly) the layer's FLOPs, timed interleaved with
the layer's providers, so drift in the machine's speed within a run lands on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .timing import Timing, measure


@dataclass(frozen=True)
class Roofline:
    copy_gbs: float  # GB/s (1e9 bytes), read + write
    gemm_gflops: float  # GFLOP/s (2 per multiply-add)
    copy_timing: Timing
    gemm_timing: Timing
    copy_bytes: int
    gemm_size: int

    def memory_fraction(self, nbytes: int, seconds: float) -> float:
        """Attained share of the copy bandwidth by a kernel moving ``nbytes`` in ``seconds``."""
        return nbytes / seconds / 1e9 / self.copy_gbs

    def compute_fraction(self, flops: int, seconds: float) -> float:
        return flops / seconds / 1e9 / self.gemm_gflops


def measure_roofline(
    device: torch.device, dtype: torch.dtype, min_run_time: float, copy_mib: int = 256, gemm_size: int | None = None
) -> Roofline:
    source = torch.empty(copy_mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page once
    copy_timing = measure(lambda: target.copy_(source), device, min_run_time)
    copy_bytes = 2 * source.numel() * source.element_size()
    del source, target
    if gemm_size is None:
        gemm_size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(gemm_size, gemm_size, device=device).to(dtype)
    b = torch.randn(gemm_size, gemm_size, device=device).to(dtype)
    torch.mm(a, b)  # warm up (BLAS thread pool, cuBLAS handle)
    gemm_timing = measure(lambda: torch.mm(a, b), device, min_run_time)
    return Roofline(
        copy_gbs=copy_bytes / (copy_timing.median_ms * 1e-3) / 1e9,
        gemm_gflops=2 * gemm_size**3 / (gemm_timing.median_ms * 1e-3) / 1e9,
        copy_timing=copy_timing,
        gemm_timing=gemm_timing,
        copy_bytes=copy_bytes,
        gemm_size=gemm_size,
    )


def same_flops_gemm(flops: int, device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], object], int]:
    """A dense ``torch.mm`` of (nearly) ``flops`` floating-point operations, and its exact
    FLOP count: square n x n x n with 2 n^3 closest to ``flops`` (the shape a dense GEMM runs
    best at for its size; operands preallocated, the output written in place)."""
    n = max(1, round((flops / 2) ** (1 / 3)))
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def run():
        return torch.mm(a, b, out=out)

    return run, 2 * n**3
