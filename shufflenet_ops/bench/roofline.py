"""This machine's roofs, measured in the same run as the kernels they judge.

Memory: the bandwidth of a large tensor copy (256 MiB into a preallocated tensor: bytes
read + bytes written per second), the most a memory-bound kernel can hope for. (A
``clone`` would time the page faults of a fresh allocation too, far slower on CPU.)

Compute: the best FLOP rate of a few dense GEMMs in the run's dtype (``DENSE_GEMMS``), the
most a GEMM-shaped kernel can hope for. One large square ``torch.mm`` is not that: on CPU it
is MKL's sgemm, which on some CPUs (AMD's among them) runs far below the FMA peak that
oneDNN's kernels and this package's AVX-512 kernel reach, and the grouped layers then read
as more than 100% of it. So the roof is the best of ``torch.mm`` squares (cache-sized to
memory-sized) and dense 1x1 convolutions in channels_last (oneDNN: the same GEMM, M =
pixels, K = N = channels), and ``raise_compute_roof`` lifts it to any faster dense GEMM timed
later in the run (the per-layer same-FLOPs GEMMs): a layer row above 100% then means the
machine got faster mid-run, and the report warns about it.

Per layer, ``same_flops_gemm`` gives the reference the grouped GEMM's rate is judged
against: a dense square ``torch.mm`` of (nearly) the layer's FLOPs, timed interleaved with
the layer's providers, so drift in the machine's speed within a run lands on both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .timing import Timing, measure


@dataclass(frozen=True)
class DenseGemm:
    """A dense GEMM the compute roof tries: ``mm`` (``torch.mm``, M x K times K x N) or
    ``conv1x1`` (a dense 1x1 conv of a channels_last (batch, K, size, size) input to N
    channels: M = batch * size^2)."""

    kind: str
    m: int
    k: int
    n: int
    size: int = 0  # conv1x1: the feature map's side

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def label(self) -> str:
        if self.kind == "mm":
            return f"mm {self.m}^3" if self.m == self.k == self.n else f"mm {self.m}x{self.k}x{self.n}"
        batch = self.m // (self.size * self.size)
        return f"1x1 conv {batch}x{self.k}x{self.size}x{self.size}->{self.n} CL"

    def make(self, device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
        if self.kind == "mm":
            a = torch.randn(self.m, self.k, device=device).to(dtype)
            b = torch.randn(self.k, self.n, device=device).to(dtype)
            out = torch.empty(self.m, self.n, device=device, dtype=dtype)
            return lambda: torch.mm(a, b, out=out)
        batch = self.m // (self.size * self.size)
        x = torch.randn(batch, self.k, self.size, self.size, device=device).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(self.n, self.k, 1, 1, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        return lambda: F.conv2d(x, w)


def conv1x1(batch: int, channels: int, size: int) -> DenseGemm:
    return DenseGemm("conv1x1", batch * size * size, channels, channels, size)


DENSE_GEMMS = (
    DenseGemm("mm", 512, 512, 512), DenseGemm("mm", 1024, 1024, 1024), DenseGemm("mm", 2048, 2048, 2048),
    conv1x1(16, 256, 56), conv1x1(16, 512, 28), conv1x1(64, 1024, 14),
)
CUDA_DENSE_GEMMS = (DenseGemm("mm", 8192, 8192, 8192),)  # a GPU's best GEMM is a large one


@dataclass(frozen=True)
class Roofline:
    copy_gbs: float  # GB/s (1e9 bytes), read + write
    gemm_gflops: float  # GFLOP/s (2 per multiply-add): the best dense GEMM
    copy_timing: Timing
    gemm_timing: Timing  # the best one's
    copy_bytes: int
    gemm_label: str  # the dense GEMM that set the roof
    gemm_rates: dict[str, float] | None = None  # GFLOP/s of every dense GEMM tried, by label

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
    gemms: tuple[DenseGemm, ...] | None = None,
) -> Roofline:
    """``min_run_time``: seconds of timing for the copy and for each dense GEMM."""
    source = torch.empty(copy_mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page once
    copy_timing = measure(lambda: target.copy_(source), device, min_run_time)
    copy_bytes = 2 * source.numel() * source.element_size()
    del source, target
    if gemms is None:
        gemms = CUDA_DENSE_GEMMS if device.type == "cuda" else DENSE_GEMMS
    best = None
    rates = {}
    for gemm in gemms:
        run = gemm.make(device, dtype)
        run()  # warm up (BLAS thread pool, oneDNN primitive, cuBLAS handle)
        timing = measure(run, device, min_run_time)
        rates[gemm.label] = gemm.flops / (timing.median_ms * 1e-3) / 1e9
        if best is None or rates[gemm.label] > best[0]:
            best = (rates[gemm.label], gemm.label, timing)
        del run
    return Roofline(
        copy_gbs=copy_bytes / (copy_timing.median_ms * 1e-3) / 1e9,
        gemm_gflops=best[0],
        copy_timing=copy_timing,
        gemm_timing=best[2],
        copy_bytes=copy_bytes,
        gemm_label=best[1],
        gemm_rates=rates,
    )


def raise_compute_roof(roofline: Roofline, rate_gflops: float, gemm: DenseGemm) -> Roofline:
    """The roof lifted to ``rate_gflops`` if ``gemm``, timed later in the run, beat it
    (``roofline`` unchanged otherwise)."""
    if rate_gflops <= roofline.gemm_gflops:
        return roofline
    rates = dict(roofline.gemm_rates or {})
    rates[gemm.label] = max(rate_gflops, rates.get(gemm.label, 0.0))
    ms = gemm.flops / (rate_gflops * 1e9) * 1e3
    return dataclasses.replace(roofline, gemm_gflops=rate_gflops, gemm_label=gemm.label,
                               gemm_timing=Timing(ms, ms, ms, -1), gemm_rates=rates)


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
