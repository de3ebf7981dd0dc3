"""Timing with the right tool per device.

CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` at torch's thread count (each sample
is the mean of a block of calls sized to beat timer overhead), or single calls timed with
``perf_counter`` when one call takes a millisecond or more; GPU: ``triton.testing.do_bench``
with quantiles (0.5, 0.2, 0.8), which syncs and flushes the L2 between calls. Both report
the median and the 20th/80th percentiles in milliseconds. On CUDA, ``cuda_graph_ms`` also
times a call replayed from a CUDA graph: its GPU time without the host path in front of it.

``measure_many`` times the implementations being compared in interleaved rounds on CPU
(A B C, A B C, ...): the machine is shared, and a burst of someone else's work then lands
on all of them instead of on whichever happened to be running, which keeps the same-run
ratios honest. It also keeps each round's median: when the rounds disagree (the machine's
speed changed, or a provider's time is bimodal), ``round_spread`` says by how much, and the
report warns instead of letting one lucky run claim a speed-up.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

QUANTILES = (0.5, 0.2, 0.8)
UNSTEADY_SPREAD = 1.5  # max/min of the round medians above which a measurement is flagged
MIN_SAMPLES = 5  # percentiles of fewer samples say little
SLOW_CALL_S = 1e-3  # calls at least this long are timed one by one (timer overhead < 0.1%)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int
    rounds_ms: tuple[float, ...] = ()  # the median of each interleaved round (CPU)

    @property
    def round_spread(self) -> float:
        """Slowest round median / fastest (1.0 with fewer than two rounds)."""
        if len(self.rounds_ms) < 2 or min(self.rounds_ms) <= 0:
            return 1.0
        return max(self.rounds_ms) / min(self.rounds_ms)

    def columns(self) -> dict:
        """The result-row columns every level reports."""
        return {"median_ms": self.median_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms, "samples": self.samples,
                "round_medians_ms": [round(v, 6) for v in self.rounds_ms], "round_spread": self.round_spread}


def _summary(times_s: list[float], rounds_ms: tuple[float, ...] = ()) -> Timing:
    median, p20, p80 = (float(v) * 1e3 for v in np.quantile(times_s, QUANTILES))
    return Timing(median, p20, p80, len(times_s), rounds_ms)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection inside a timed region (as timeit and torch's Timer do)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _cpu_samples(fn: Callable[[], object], min_run_time: float, min_samples: int) -> list[float]:
    """Seconds per call: at least ``min_samples`` samples and ``min_run_time`` seconds, at
    torch's current thread count (torch's Timer would default to one thread)."""
    with _gc_paused():
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
    if first >= SLOW_CALL_S:
        # Timer overhead is negligible against the call: one call per sample. (Timer.timeit
        # would also run two warm-up calls per extra sample, tripling the cost of slow rows.)
        times, spent = [first], first
        while len(times) < min_samples or spent < min_run_time:
            with _gc_paused():
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            spent += times[-1]
        return times
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    times, number = list(measurement.times), measurement.number_per_run
    while len(times) < min_samples:  # one more block of the calibrated size
        with _gc_paused():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times.append((time.perf_counter() - start) / number)
    return times


def _cpu_time(fn: Callable[[], object], min_run_time: float) -> Timing:
    return _summary(_cpu_samples(fn, min_run_time, MIN_SAMPLES))


def _cuda_time(fn: Callable[[], object], min_run_time: float) -> Timing:
    import triton.testing

    rep_ms = max(25, int(min_run_time * 1e3))
    median, p20, p80 = triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, quantiles=list(QUANTILES))
    return Timing(float(median), float(p20), float(p80), -1)  # do_bench does not say how many


def cuda_graph_ms(fn: Callable[[], object]) -> float:
    """Median ms of ``fn`` (already warmed up) replayed from a CUDA graph
    (``triton.testing.do_bench_cudagraph``): the GPU time alone, without the Python,
    dispatcher and launch path that ``measure`` includes. NaN where ``fn`` cannot be
    captured (the failure is printed: a capture failure must not lose the rest of a run)."""
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, return_mode="median"))
    except Exception as exc:  # noqa: BLE001  (any capture failure)
        print(f"shufflenet-bench: CUDA graph capture failed: {type(exc).__name__}: {exc}", flush=True)
        return float("nan")


def measure(fn: Callable[[], object], device: torch.device, min_run_time: float) -> Timing:
    """Time ``fn()`` (already warmed up) for about ``min_run_time`` seconds."""
    if device.type == "cuda":
        return _cuda_time(fn, min_run_time)
    return _cpu_time(fn, min_run_time)


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20


def pin_glibc_malloc() -> str | None:
    """Serve allocations below 32 MiB from glibc's heap and never trim it, for the whole run;
    returns what was set (None where the C library is not glibc).

    By default glibc maps each large block (>= 128 KiB) fresh and unmaps it on free, so every
    call of a whole model pays page faults on its activations, until a free of a larger
    mapped block raises the threshold for the rest of the process. Whether a provider ran
    before or after that moment changed its time (benchmarks/README.md has the figures of
    the fused model before and after the naive one had run). ONNX Runtime and
    OpenVINO reuse their own arenas. A fixed threshold makes every provider's allocations
    cost the same whatever ran before (what jemalloc or tcmalloc, the usual advice for CPU
    inference with PyTorch, also give)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
    except (OSError, AttributeError):
        return None
    return "glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB" if ok else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_many(
    runners: dict[str, Callable[[], object]],
    device: torch.device,
    min_run_time: float,
    rounds: int = 3,
    min_samples: int = MIN_SAMPLES,
    settle_s: dict[str, float] | None = None,
) -> dict[str, Timing]:
    """Time each runner (already warmed up) for about ``min_run_time`` seconds and at least
    ``min_samples`` samples in total; on CPU in ``rounds`` interleaved rounds (see the module
    docstring). ``settle_s``: seconds to wait after a runner's turn, for runtimes whose
    thread pools keep spinning on the cores after a call (ONNX Runtime's intra-op threads
    busy-wait for new work for tens of milliseconds: the next runner's first calls would pay
    for it)."""
    if device.type == "cuda":
        return {name: _cuda_time(fn, min_run_time) for name, fn in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    round_medians: dict[str, list[float]] = {name: [] for name in runners}
    # One untimed call of each runner in the same order first: the warm-ups ran each runner
    # alone, and the first timed round would otherwise be the one that meets the state they
    # left (another runtime's threads still spinning, caches holding another's data).
    for name, fn in runners.items():
        fn()
        if settle_s and settle_s.get(name):
            time.sleep(settle_s[name])
    for round_index in range(rounds):
        for name, fn in runners.items():
            # At least min_samples over all rounds, spread evenly across them.
            wanted = -(-min_samples * (round_index + 1) // rounds) - len(samples[name])
            this_round = _cpu_samples(fn, min_run_time / rounds, wanted)
            if settle_s and settle_s.get(name):
                time.sleep(settle_s[name])
            samples[name].extend(this_round)
            round_medians[name].append(float(np.median(this_round)) * 1e3)
    return {name: _summary(times, tuple(round_medians[name])) for name, times in samples.items()}
