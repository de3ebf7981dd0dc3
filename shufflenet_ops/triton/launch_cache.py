"""Per-shape cache of the launchers' work: host time a small GPU kernel waits behind.

A launcher call does three things before the GPU sees a kernel: it derives the launch from
its arguments (layouts, geometry, tile, grid, flags), the autotuner (if any) looks up its
tile, and Triton's ``JITFunction.run`` binds the arguments to the kernel's signature,
specialises each one (dtype, 16-byte alignment of pointers, ints equal to 1 or divisible by
16), builds a cache key and finds the compiled kernel. For a given key all of that comes
out the same every time, so a launcher keeps it:

- ``LaunchCache.plan(tensors, scalars, make)``: the launcher's plan for this key, made by
  ``make`` on the first call. The key (``call_key``) is everything a plan depends on: each
  tensor's dtype, shape, strides and 16-byte alignment, the launcher's scalar arguments,
  the device, and the settings that change launches (``_common.launch_settings``: TF32,
  autotuning, deterministic grad weight, the 64-bit offsets limit, forced tiles in tests).
- ``Launch``: one kernel launch with everything but its leading tensor arguments bound. Its
  first call goes through ``kernel[grid](...)`` (the JIT, the autotuner), which returns the
  ``CompiledKernel``; later calls go straight to that kernel's launcher
  (``CompiledKernel.__getitem__(grid)``, the runner Triton itself calls), with the grid and
  the trailing arguments (ints, then constexprs) fixed by the first call. The runner reads
  the current CUDA stream at each call, and calls Triton's launch hooks (profilers) if set.

Outputs and workspaces are allocated fresh on every call (by torch: aligned to at least 16
bytes, as Triton assumed on the first call); only their sizes and layouts are cached.

What a replayed launch skips: Triton's check that the kernel's global values did not change
(our kernels read none), and a change of Triton's JIT knobs (``TRITON_DEBUG`` etc.) after
the first call; call ``clear_all()`` after changing those. Under Triton's interpreter
(TRITON_INTERPRET=1) ``kernel[grid]`` compiles nothing and returns None: plans are still
cached, every launch goes through the interpreter. ``_common.set_launch_cache(False)`` (or
SHUFFLENET_OPS_TRITON_LAUNCH_CACHE=0) makes a fresh plan per call: the uncached path.

What it saves: measured only on a CPU with the GPU launch stubbed (``shufflenet-bench
host-overhead``; numbers in benchmarks/README.md); the saving in wall time on a GPU is not
measured yet.

CUDA graphs: a miss inside a capture raises (its first call would compile, and autotune with
host syncs); warm up on the captured shapes first (docs/design.md, "CUDA graphs").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import _common

ALIGNMENT = 16  # Triton specialises pointers on divisibility by 16 (tt.divisibility)

_caches: list[LaunchCache] = []


def tensor_key(t: torch.Tensor | None) -> tuple | None:
    """What a launch depends on about one tensor: dtype, shape, strides, 16-byte alignment."""
    if t is None:
        return None
    return t.dtype, t.shape, t.stride(), t.data_ptr() % ALIGNMENT == 0


def call_key(tensors: Sequence[torch.Tensor | None], scalars: tuple) -> tuple:
    """The key of a launcher call: its tensors (``tensor_key``), scalars, device, settings."""
    return (tensors[0].device, _common.launch_settings(), scalars, *map(tensor_key, tensors))


class LaunchCache:
    """One launcher's plans by ``call_key``, at most ``maxsize`` of them (later keys run
    uncached: a model has a few dozen layer shapes, a shape sweep should not grow memory)."""

    def __init__(self, name: str, maxsize: int = 4096) -> None:
        self.name = name
        self.maxsize = maxsize
        self.hits = self.misses = 0
        self._plans: dict[tuple, Any] = {}
        _caches.append(self)

    def plan(self, tensors: Sequence[torch.Tensor | None], scalars: tuple, make: Callable[..., Any]) -> Any:
        """The plan for a call of ``make(*tensors, *scalars)``'s key, made on its first call."""
        if not _common.launch_cache_enabled():
            return make(*tensors, *scalars)
        key = call_key(tensors, scalars)
        plan = self._plans.get(key)
        if plan is not None:
            self.hits += 1
            return plan
        self.misses += 1
        if tensors[0].is_cuda and torch.cuda.is_current_stream_capturing():
            # A first call compiles its kernel and, autotuned, times tiles with host syncs:
            # neither belongs in a capture. A clear error instead of the driver's.
            raise RuntimeError(
                f"shufflenet_ops: the Triton {self.name} launcher got arguments it has not seen (shape, "
                "strides, dtype or alignment) inside a CUDA graph capture; run the captured code once "
                "on the same inputs before capturing (docs/design.md, 'CUDA graphs')"
            )
        plan = make(*tensors, *scalars)
        if len(self._plans) < self.maxsize:
            self._plans[key] = plan
        return plan

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self) -> None:
        self._plans.clear()
        self.hits = self.misses = 0


def clear_all() -> None:
    """Forget every launcher's plans (after changing Triton's JIT knobs, in tests)."""
    for cache in _caches:
        cache.clear()


def caches() -> dict[str, LaunchCache]:
    return {cache.name: cache for cache in _caches}


def _grid3(grid: Sequence[int]) -> tuple[int, int, int]:
    return (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)


class Launch:
    """``kernel[grid](*tensors, *args, **kwargs)`` with ``args`` and ``kwargs`` bound: called
    with the tensors only. ``kernel`` is a ``triton.jit`` function or a ``triton.autotune``
    of one; ``grid`` a tuple, or a function of the launch's arguments and tile (autotuned)."""

    __slots__ = ("_runner", "_tail", "args", "grid", "kernel", "kwargs")

    def __init__(self, kernel: Any, grid: Any, args: tuple, kwargs: dict) -> None:
        self.kernel, self.grid, self.args, self.kwargs = kernel, grid, args, kwargs
        self._runner: Callable[..., None] | None = None
        self._tail: tuple = ()

    @property
    def bound(self) -> bool:
        """Whether calls go straight to the compiled kernel (after a first call on a GPU)."""
        return self._runner is not None

    def __call__(self, *tensors: torch.Tensor) -> None:
        if self._runner is not None:
            self._runner(*tensors, *self._tail)
            return
        compiled = self.kernel[self.grid](*tensors, *self.args, **self.kwargs)
        if compiled is not None and _common.launch_cache_enabled():  # None: the interpreter
            self._bind(compiled, len(tensors))

    def _bind(self, compiled: Any, n_tensors: int) -> None:
        """Fix the grid and the trailing arguments as the first call resolved them."""
        names = self.kernel.arg_names
        meta = dict(zip(names[n_tensors:], self.args))
        meta.update(self.kwargs)
        config = getattr(self.kernel, "best_config", None)  # the autotuner's choice for this call
        if config is not None:
            meta.update(config.all_kwargs())
        grid = self.grid(meta) if callable(self.grid) else self.grid
        # Every parameter after the tensors, in signature order, constexprs included: the
        # runner takes the full argument list (its C launcher drops the constexprs).
        self._tail = tuple(meta[name] for name in names[n_tensors:])
        self._runner = compiled[_grid3(grid)]
