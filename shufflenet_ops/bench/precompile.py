"""Compile the torch.compile peers in worker processes before anything is timed
(``shufflenet-bench --precompile-workers N``; off by default).

A first run (an empty Inductor cache) spends most of its time compiling the peers, one graph
after another. Here each compiled peer is compiled once in a pool of worker processes, which
fills Inductor's on-disk caches (FX graph and AOTAutograd caches); the main process then
builds the same graphs and loads them from the cache. Nothing is timed while the workers
run, so they cannot disturb a measurement.

The compiles are CPU-bound, so the workers save at most what the machine's idle cores can
take over, and a run whose cache is already warm pays for them (every job still traces and
loads its graph once more): off by default, worth it on a fresh machine with more cores
(measured gains and costs: benchmarks/README.md).

A job names a peer by value (the layer problem, or the unit/model case by name, the
provider and the mode), and the worker builds it with the same code the main process uses
(``layers.layer_runner`` and ``networks.prepare``), so the graphs and the cache keys match.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable

import torch

from .problem import LayerProblem
from .providers import LAYER_PROVIDERS, NETWORK_PROVIDERS, Setup


@dataclass(frozen=True)
class CompileJob:
    label: str
    mode: str
    provider: str
    problem: LayerProblem | None = None  # a layer job
    network: tuple | None = None  # a unit/model job: the case's spec (networks.case_from_spec)


def compile_jobs(problems, providers, modes, network_runs, full: bool = True) -> list[CompileJob]:
    """One ``CompileJob`` per graph the compiled peers will build, longest first
    (whole models, then units, then layers) so the workers finish together; ``full``: the
    layers' training graphs too (``layers.layer_included``)."""
    jobs = []
    for case, provider, mode in network_runs:
        if provider.compiled:
            label = f"{case.name} b{case.batch} {mode} {provider.name}"
            jobs.append(CompileJob(label, mode, provider.name, network=case.spec))
    jobs.sort(key=lambda job: job.network[0] != "model")
    # forward runs the inference graph; backward and forward_backward share the training graph.
    graph_modes = [m for m in ("forward", "backward") if m in modes]
    if "forward_backward" in modes and "backward" not in modes:
        graph_modes.append("forward_backward")
    if not full:
        graph_modes = [m for m in graph_modes if m == "forward"]
    for problem in problems:
        for provider in (p for p in providers if p.compiled):
            for mode in graph_modes:
                jobs.append(CompileJob(f"{problem.name} {mode} {provider.name}", mode, provider.name, problem=problem))
    return jobs


def _run_job(job: CompileJob, setup: Setup) -> tuple[str, float]:
    """In a worker: build the peer exactly as the timed run does and call it once."""
    from . import layers, networks

    torch._dynamo.reset()  # a worker compiles many shapes: keep clear of the recompile limit
    start = time.perf_counter()
    if job.problem is not None:
        provider = next(p for p in LAYER_PROVIDERS if p.name == job.provider)
        run = layers.layer_runner(job.problem, provider, job.mode, setup)
    else:
        provider = next(p for p in NETWORK_PROVIDERS if p.name == job.provider)
        run = networks.prepare(networks.case_from_spec(job.network), provider, job.mode, setup)
    run()
    return job.label, time.perf_counter() - start


def _init_worker() -> None:
    import warnings

    import torch._inductor.config as inductor_config

    warnings.filterwarnings("ignore", module="torch._inductor")
    # g++ in the worker itself: the pool's processes already keep every core busy, and each
    # Inductor sub-pool would cost a start-up of its own (not part of the cache key).
    inductor_config.compile_threads = 1


def precompile(
    jobs: list[CompileJob], setup: Setup, workers: int, progress: Callable[[str], None] | None = None
) -> dict:
    """Run ``jobs`` in ``workers`` processes; returns what was spent (for the provenance)."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    if jobs and workers > 0:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
            futures = [pool.submit(_run_job, job, setup) for job in jobs]
            for done, future in enumerate(as_completed(futures), 1):
                label, spent = future.result()
                seconds[label] = round(spent, 2)
                if progress is not None:
                    progress(f"compiling the torch.compile peers in {workers} processes: {done}/{len(jobs)}")
    return {"workers": workers, "jobs": len(jobs), "wall_s": round(time.perf_counter() - start, 1),
            "compile_s": round(sum(seconds.values()), 1), "seconds": seconds}
