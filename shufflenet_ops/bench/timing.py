"""Timing with the right tool per device.

CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (each sample is the mean of a block
of calls sized to beat timer overhead); GPU: ``triton.testing.do_bench`` with quantiles
(0.5, 0.2, 0.8), which syncs and flushes the L2 between calls. Both report the median and
the 20th/80th percentiles in milliseconds.

``measure_many`` times the implementations being compared in interleaved rounds on CPU
(A B C, A B C, ...): the machine is shared, and a burst of someone else's work then lands
on all of them instead of on whichever happened to be running, which keeps the same-run
ratios honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

QUANTILES = (0.5, 0.2, 0.8)
MIN_SAMPLES = 5  # percentiles of fewer samples say little


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int

    def columns(self) -> dict:
        """The result-row columns every level reports."""
        return {"median_ms": self.median_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms, "samples": self.samples}


def _summary(times_s: list[float]) -> Timing:
    median, p20, p80 = (float(v) * 1e3 for v in np.quantile(times_s, QUANTILES))
    return Timing(median, p20, p80, len(times_s))


def _cpu_samples(fn: Callable[[], object], min_run_time: float, min_samples: int) -> list[float]:
    """Seconds per call, one sample per block of calls."""
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn})
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    times = list(measurement.times)
    while len(times) < min_samples:  # slow calls: one block each, add blocks up to the minimum
        times.extend(timer.timeit(measurement.number_per_run).times)
    return times


def _cpu_time(fn: Callable[[], object], min_run_time: float) -> Timing:
    return _summary(_cpu_samples(fn, min_run_time, MIN_SAMPLES))


def _cuda_time(fn: Callable[[], object], min_run_time: float) -> Timing:
    import triton.testing

    rep_ms = max(25, int(min_run_time * 1e3))
    median, p20, p80 = triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, quantiles=list(QUANTILES))
    return Timing(float(median), float(p20), float(p80), -1)  # do_bench does not say how many


def measure(fn: Callable[[], object], device: torch.device, min_run_time: float) -> Timing:
    """Time ``fn()`` (already warmed up) for about ``min_run_time`` seconds."""
    if device.type == "cuda":
        return _cuda_time(fn, min_run_time)
    return _cpu_time(fn, min_run_time)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_many(
    runners: dict[str, Callable[[], object]], device: torch.device, min_run_time: float, rounds: int = 3
) -> dict[str, Timing]:
    """Time each runner (already warmed up) for about ``min_run_time`` seconds in total;
    on CPU in ``rounds`` interleaved rounds (see the module docstring)."""
    if device.type == "cuda":
        return {name: _cuda_time(fn, min_run_time) for name, fn in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(rounds):
        for name, fn in runners.items():
            # At least MIN_SAMPLES over all rounds, spread across them.
            wanted = -(-MIN_SAMPLES * (round_index + 1) // rounds) - len(samples[name])
            samples[name].extend(_cpu_samples(fn, min_run_time / rounds, wanted))
    return {name: _summary(times) for name, times in samples.items()}
