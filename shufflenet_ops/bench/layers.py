"""Layer level: every distinct 1x1 conv of ShuffleNet V1, every provider, every mode."""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from . import bytes_model
from .problem import LayerProblem, element_size
from .providers import LayerFn, LayerProvider, Setup, make_layer_inputs
from .roofline import DenseGemm, Roofline, raise_compute_roof, same_flops_gemm
from .timing import UNSTEADY_SPREAD, cuda_graph_ms, measure_many, synchronize

# The runner name of the per-layer dense GEMM yardstick (not a provider: it computes no layer).
SAME_FLOPS_GEMM = "same_flops_gemm"


def _runner(fn, args: tuple, mode: str) -> Callable[[], object]:
    """A zero-argument call that does one ``mode`` step of ``fn(*args)``."""
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return fn(*args)

        return forward
    params = [t for t in args if t is not None]
    output = fn(*args)
    grad_output = torch.randn_like(output)
    if mode == "backward":
        # The graph of one forward is kept and differentiated again and again.
        def backward():
            return torch.autograd.grad(output, params, grad_output, retain_graph=True)

        return backward

    def forward_backward():
        return torch.autograd.grad(fn(*args), params, grad_output)

    return forward_backward


def layer_runner(
    problem: LayerProblem, provider: LayerProvider, mode: str, setup: Setup, fn: LayerFn | None = None
) -> Callable[[], object]:
    """One provider's ``mode`` step on this problem's inputs (``fn``: the provider's function
    for this problem, if already made; a compiled peer compiles on the first call)."""
    args = make_layer_inputs(problem, provider, setup, requires_grad=mode != "forward")
    return _runner(fn if fn is not None else provider.make(problem, setup), args, mode)


def layer_row(
    problem: LayerProblem, provider: LayerProvider, mode: str, timing, roofline: Roofline, dtype: torch.dtype
) -> dict:
    nbytes = bytes_model.bytes_moved(provider.traffic, problem, mode, element_size(dtype))
    flops = problem.flops(mode)
    seconds = timing.median_ms * 1e-3
    return {
        "level": "layer",
        "name": problem.name,
        "model_groups": problem.model_groups,
        "cin": problem.cin,
        "cout": problem.cout,
        "groups": problem.groups,
        "size": problem.size,
        "batch": problem.batch,
        "count": problem.count,
        "shuffle_groups": problem.shuffle_groups,
        "relu": problem.relu,
        "mode": mode,
        "provider": provider.name,
        "fused": provider.fused,
        **timing.columns(),
        "model_bytes": nbytes,
        "effective_gbs": nbytes / seconds / 1e9,
        "memory_roof_fraction": roofline.memory_fraction(nbytes, seconds),
        "useful_flops": flops,
        "gflops": flops / seconds / 1e9,
        "compute_roof_fraction": roofline.compute_fraction(flops, seconds),
    }


def layer_included(provider: LayerProvider, mode: str, full: bool) -> bool:
    """Whether a run times ``provider`` in ``mode``: a compiled peer's training graph
    (backward, forward+backward) doubles Inductor's work on a cold cache, so it waits for
    ``--full``; its inference graph is in every run."""
    return full or not provider.compiled or mode == "forward"


def run_layers(
    problems: Iterable[LayerProblem],
    providers: list[LayerProvider],
    modes: list[str],
    setup: Setup,
    roofline: Roofline,
    min_run_time: float,
    progress: Callable[[str], None],
    full: bool = True,
    cuda_graph: bool = False,
) -> tuple[list[dict], Roofline]:
    """The rows, and ``roofline`` with its compute roof raised to the fastest same-FLOPs GEMM
    timed here (the rows' ``compute_roof_fraction`` are against that final roof). ``full``:
    see ``layer_included``. ``cuda_graph`` (CUDA): each row also gets ``graph_ms``, the same
    call replayed from a CUDA graph (``graph_time``)."""
    rows = []
    for problem in problems:
        # Each shape gets its own static graphs; a reset keeps Dynamo's recompile limit
        # (per code object) from turning later shapes dynamic or eager.
        torch._dynamo.reset()
        fns = {provider.name: provider.make(problem, setup) for provider in providers}
        for mode in modes:
            runners, warmup_s = {}, {}
            timed = [provider for provider in providers if layer_included(provider, mode, full)]
            for provider in timed:
                progress(f"{problem.name} {mode} {provider.name}")
                start = time.perf_counter()
                run = layer_runner(problem, provider, mode, setup, fns[provider.name])
                run()  # compiles, autotunes, allocates outside the timing
                run()
                synchronize(setup.device)
                runners[provider.name], warmup_s[provider.name] = run, time.perf_counter() - start
            gemm_flops = 0
            if mode == "forward":
                # The grouped GEMM's yardstick: a dense torch.mm of the same FLOPs, in the same rounds.
                runners[SAME_FLOPS_GEMM], gemm_flops = same_flops_gemm(problem.flops(mode), setup.device, setup.dtype)
                runners[SAME_FLOPS_GEMM]()
            timings = measure_many(runners, setup.device, min_run_time)
            for provider in timed:
                row = layer_row(problem, provider, mode, timings[provider.name], roofline, setup.dtype)
                row["warmup_s"] = round(warmup_s[provider.name], 3)
                if cuda_graph and setup.device.type == "cuda":
                    row["graph_ms"], row["graph_source"] = graph_time(
                        runners[provider.name], provider, setup, timings[provider.name])
                if gemm_flops:
                    gemm_gflops = gemm_flops / (timings[SAME_FLOPS_GEMM].median_ms * 1e-3) / 1e9
                    row["same_flops_gemm_gflops"] = gemm_gflops
                    row["gemm_rate"] = row["gflops"] / gemm_gflops
                rows.append(row)
            if gemm_flops:
                n = round((gemm_flops / 2) ** (1 / 3))
                roofline = raise_compute_roof(roofline, row["same_flops_gemm_gflops"], DenseGemm("mm", n, n, n))
    for row in rows:
        row["compute_roof_fraction"] = row["gflops"] / roofline.gemm_gflops
    add_speedups(rows, key=("name", "mode"))
    return rows, roofline


def graph_time(run: Callable[[], object], provider: LayerProvider, setup: Setup, timing) -> tuple[float, str]:
    """(ms, how it was measured) of ``run`` replayed from a CUDA graph. A peer compiled in a
    mode that uses CUDA graphs already replays Inductor's own graphs (cudagraph trees), which
    cannot be captured inside another: its wall time is its graph time."""
    mode = setup.compile_mode or ""
    if provider.compiled and mode.startswith(("max-autotune", "reduce-overhead")) and "no-cudagraphs" not in mode:
        return timing.median_ms, "inductor cudagraph trees (wall)"
    return cuda_graph_ms(run), "captured"


def add_speedups(rows: list[dict], key: tuple[str, ...]) -> None:
    """``fused_speedup`` on every row: this provider's median over the (first) fused
    provider's median for the same key, from the same run (> 1: fused is faster). Where both
    were timed in the same interleaved rounds, also the lowest and highest of the per-round
    ratios (``speedup_round_min``/``_max``), ``graph_fused_speedup`` from rows with a CUDA-graph
    time, and ``unsteady``: the rounds disagree by more than
    ``UNSTEADY_SPREAD`` (the row's own round medians, or the ratio from round to round)."""
    fused_rows = {}
    for row in rows:
        k = tuple(row[f] for f in key)
        if row["fused"] and k not in fused_rows:
            fused_rows[k] = row
    for row in rows:
        reference = fused_rows.get(tuple(row[f] for f in key))
        row["fused_speedup"] = row["median_ms"] / reference["median_ms"] if reference else float("nan")
        if "graph_ms" in row:  # the same ratio in GPU time alone
            row["graph_fused_speedup"] = (row["graph_ms"] / reference["graph_ms"]
                                          if reference and reference.get("graph_ms") else float("nan"))
        spread = row.get("round_spread", 1.0)
        mine, theirs = row.get("round_medians_ms") or [], (reference or {}).get("round_medians_ms") or []
        if reference is not None and len(mine) == len(theirs) > 1 and min(theirs) > 0:
            ratios = [a / b for a, b in zip(mine, theirs)]
            row["speedup_round_min"], row["speedup_round_max"] = min(ratios), max(ratios)
            if min(ratios) > 0:
                spread = max(spread, max(ratios) / min(ratios))
        row["unsteady"] = spread > UNSTEADY_SPREAD
