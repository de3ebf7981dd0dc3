"""This machine's roofs, measured in the same run as the kernels they judge.

Memory: the bandwidth of a large tensor copy (256 MiB into a preallocated tensor: bytes
read + bytes written per second), the most a memory-bound kernel can hope for. (A
``clone`` would time the page faults of a fresh allocation too: 5x slower on CPU.) Compute: the
best FLOP rate of a few dense ``torch.mm`` shapes in the run's dtype (``GEMM_SHAPES``), the most
a GEMM-shaped kernel can hope for. One large square GEMM is not that: on a CPU whose caches
hold a small GEMM's operands, a 2048^3 ``torch.mm`` runs below the FMA peak, and the small
grouped GEMMs of ShuffleNet's layers then read as more than 100% of it. The roof is therefore
the best of squares from cache-sized to memory-sized and a tall-skinny shape like a 1x1
conv's, and ``raise_compute_roof`` lifts it to any faster dense GEMM timed later in the run
(the per-layer same-FLOPs GEMMs), so that a layer row above 100% means the machine got
faster mid-run, not a flawed yardstick.

Per layer, ``same_flops_gemm`` gives the reference the grouped GEMM's rate is judged
against: a dense square ``torch.mm`` of (nearly) the layer's FLOPs, timed interleaved with
the layer's providers, so drift in the machine's speed within a run lands on both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from .timing import Timing, measure


# (M, K, N) of the dense GEMMs the compute roof is the best of; on CUDA only the large square
# (a GPU's best GEMM is a large one).
GEMM_SHAPES = ((256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (12544, 480, 480))
CUDA_GEMM_SHAPES = ((8192, 8192, 8192),)


def gemm_label(shape: tuple[int, int, int]) -> str:
    m, k, n = shape
    return f"{m}^3" if m == k == n else f"{m}x{k}x{n}"


@dataclass(frozen=True)
class Roofline:
    copy_gbs: float  # GB/s (1e9 bytes), read + write
    gemm_gflops: float  # GFLOP/s (2 per multiply-add): the best dense GEMM
    copy_timing: Timing
    gemm_timing: Timing  # the best shape's
    copy_bytes: int
    gemm_shape: tuple[int, int, int]  # the shape that set the roof
    gemm_rates: dict[str, float] | None = None  # GFLOP/s of every shape tried, by gemm_label

    @property
    def gemm_label(self) -> str:
        return gemm_label(self.gemm_shape)

    def memory_fraction(self, nbytes: int, seconds: float) -> float:
        """Attained share of the copy bandwidth by a kernel moving ``nbytes`` in ``seconds``."""
        return nbytes / seconds / 1e9 / self.copy_gbs

    def compute_fraction(self, flops: int, seconds: float) -> float:
        return flops / seconds / 1e9 / self.gemm_gflops


def measure_roofline(
    device: torch.device,
    dtype: torch.dtype,
    min_run_time: float,
    copy_mib: int = 256,
    gemm_shapes: tuple[tuple[int, int, int], ...] | None = None,
) -> Roofline:
    """``min_run_time``: seconds of timing for the copy and for each GEMM shape."""
    source = torch.empty(copy_mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page once
    copy_timing = measure(lambda: target.copy_(source), device, min_run_time)
    copy_bytes = 2 * source.numel() * source.element_size()
    del source, target
    if gemm_shapes is None:
        gemm_shapes = CUDA_GEMM_SHAPES if device.type == "cuda" else GEMM_SHAPES
    best = None
    rates = {}
    for shape in gemm_shapes:
        m, k, n = shape
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)  # warm up (BLAS thread pool, cuBLAS handle)
        timing = measure(lambda: torch.mm(a, b, out=out), device, min_run_time)
        rates[gemm_label(shape)] = 2 * m * k * n / (timing.median_ms * 1e-3) / 1e9
        if best is None or rates[gemm_label(shape)] > best[0]:
            best = (rates[gemm_label(shape)], shape, timing)
        del a, b, out
    return Roofline(
        copy_gbs=copy_bytes / (copy_timing.median_ms * 1e-3) / 1e9,
        gemm_gflops=best[0],
        copy_timing=copy_timing,
        gemm_timing=best[2],
        copy_bytes=copy_bytes,
        gemm_shape=best[1],
        gemm_rates=rates,
    )


def raise_compute_roof(roofline: Roofline, rate_gflops: float, shape: tuple[int, int, int]) -> Roofline:
    """The roof lifted to ``rate_gflops`` if a dense GEMM of ``shape`` timed later in the run
    beat it (``roofline`` unchanged otherwise)."""
    if rate_gflops <= roofline.gemm_gflops:
        return roofline
    rates = dict(roofline.gemm_rates or {})
    rates[gemm_label(shape)] = max(rate_gflops, rates.get(gemm_label(shape), 0.0))
    seconds = 2 * shape[0] * shape[1] * shape[2] / (rate_gflops * 1e9)
    timing = Timing(seconds * 1e3, seconds * 1e3, seconds * 1e3, -1)
    return dataclasses.replace(roofline, gemm_gflops=rate_gflops, gemm_shape=shape, gemm_timing=timing,
                               gemm_rates=rates)


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
