"""``shufflenet-bench host-overhead``: host (CPU-side) time per call of the public ops, the
Python and dispatcher path a GPU kernel launch waits behind. A small fused kernel's GPU time
is tens of microseconds: where the host path takes longer, an eager caller waits for the
host path, not the kernel.

    shufflenet-bench host-overhead [--out FILE.json]
    shufflenet-bench host-overhead --device cuda [--out FILE.json]

On the CPU (runs anywhere), on tensors so small that the C++ kernel's own work is a small
part of the call:
- public op, no autograd / with autograd: ``shufflenet_ops.group_conv1x1_shuffle`` without and
  with a weight that requires grad;
- dispatcher only: ``torch.ops.shufflenet_ops.group_conv1x1_shuffle`` on the same tensors;
- Triton launchers with the launches stubbed (``stubbed_launches``): Triton's JIT runs for
  real on the CPU (the kernels compile for CUDA sm_90 with the ptxas that ships with triton;
  specialisation, cache keys, the launch cache's look-ups) up to the driver's launch call,
  which counts the launch instead of running it. So these rows are everything a CUDA call
  runs on the host except the CUDA driver's own launch and the current-stream query (a few
  us on a GPU machine, unmeasured here): the forward launcher and the conv's Triton backward
  (fused: ``conv1x1_shuffle_backward``; op by op: relu_grad, grad input, grad weight, grad
  bias, as the dispatcher path runs it), each with the launch cache (a hit) and without
  (``set_launch_cache(False)``: the plan and Triton's binding on every call), and the Triton
  launches and aten compute ops each backward issues (reductions sized for 132 SMs).
Medians of torch.utils.benchmark at torch's thread count.

On a GPU: host time per call of each piece of a fused forward+backward, on tensors small
enough that the GPU work hides behind the host path: N calls are issued without a
synchronisation, so time per call = the host path (Python, dispatcher, launch). Beside
them, an empty Triton kernel and an aten op (the floors), the whole fused step and the eager
unfused step, and the same steps' GPU time replayed from a CUDA graph.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer

import shufflenet_ops as so

from .provenance import load_average, provenance

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU measurements need no Triton
    triton = None

if triton is not None:
    # Module level: Triton resolves ``tl`` in the kernel's module globals.
    @triton.jit
    def _empty_kernel(x_ptr, n, BLOCK: tl.constexpr):
        """Does nothing: the floor of a Triton launch's host time."""
        pass


def per_call_us(fn, min_run_time: float = 0.5) -> float:
    fn()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


class StubDriver:
    """A Triton driver for a machine without a GPU: Triton's JIT compiles for CUDA
    ``sm_{arch}`` (ptxas ships with triton), and each launch is counted (with ``record``, kept
    as ``(grid, args)``) instead of run. Device 0, stream 0."""

    def __init__(self, arch: int = 90, record: bool = False) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.record = record
        self.launches = 0
        self.calls: list[tuple[tuple[int, int, int], tuple]] = []
        self.utils = SimpleNamespace(
            # (module, function, registers, spills, max threads): a module, so that the kernel
            # counts as loaded, as on a GPU (CompiledKernel._init_handles returns early)
            load_binary=lambda name, kernel, shared, device: (object(), None, 0, 0, 1024),
            get_device_properties=lambda device: {"max_shared_mem": 232448},
            unload_module=lambda module: None,
        )

    def launcher_cls(self, src, metadata):  # what CompiledKernel calls to build its launcher
        return self._launch

    def _launch(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata,
                enter_hook, exit_hook, *args) -> None:
        self.launches += 1
        if self.record:
            self.calls.append(((grid_x, grid_y, grid_z), args))

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _triton_kernels():
    """The JIT functions and autotuners of shufflenet_ops.triton and of this module."""
    import sys

    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    for name, module in list(sys.modules.items()):
        if name.startswith("shufflenet_ops.triton.") or name == __name__:
            yield from (v for v in vars(module).values() if isinstance(v, (JITFunction, Autotuner)))


@contextlib.contextmanager
def stubbed_launches(record: bool = False, sm_count: int = 132):
    """Inside the block, Triton kernels compile and launch on a ``StubDriver`` (yielded), and
    the launchers size their reductions for ``sm_count`` SMs (an H100/H200: 132). On exit the
    real driver is back and every kernel compiled for the stub is forgotten (Triton's caches,
    the launch caches). For a process without CUDA work: do not use it beside real launches."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.driver import driver

    from shufflenet_ops.triton import _common, launch_cache

    previous_driver, previous_sm_count = driver._active, _common.sm_count
    stub = StubDriver(record=record)
    driver.set_active(stub)
    _common.sm_count = lambda device: sm_count
    try:
        yield stub
    finally:
        launch_cache.clear_all()
        for kernel in _triton_kernels():
            if isinstance(kernel, Autotuner):
                kernel.cache.clear()
            else:
                kernel.device_caches.clear()
        gc.collect()  # the stub kernels unload through the stub
        driver.set_active(previous_driver)
        _common.sm_count = previous_sm_count


@contextlib.contextmanager
def _env(name: str, value: str):
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


class AtenCounter(TorchDispatchMode):
    """Counts the aten ops that compute (on a GPU: launch a kernel), not those that only
    allocate or make views."""

    NO_KERNEL = {"empty", "empty_strided", "empty_like", "view", "_unsafe_view", "as_strided", "alias", "detach",
                 "t", "transpose", "permute", "expand", "select", "slice", "unsqueeze", "squeeze", "_reshape_alias",
                 "reshape"}

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in self.NO_KERNEL:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def stubbed_triton_results(min_run_time: float = 0.5) -> dict:
    """Host time of the Triton launchers on CPU tensors with the launches stubbed (see the
    module docstring), with and without the launch cache, and the backward's launch counts.
    Empty without triton, or under the interpreter (which runs kernels, it has nothing to stub)."""
    if triton is None:
        return {}
    from shufflenet_ops.triton import _common, conv_backward, conv_forward

    if _common.interpreting():
        return {}
    x = torch.randn(16, 240, 28, 28).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(60, 80, 1, 1), torch.randn(60)
    results: dict = {}
    cache_was = _common.launch_cache_enabled()
    with stubbed_launches() as stub, _env("SHUFFLENET_OPS_TRITON_AUTOTUNE", "0"):
        y = conv_forward.conv1x1_shuffle_forward(x, w, b, 3, 1, 3, True)
        go = torch.randn_like(y)

        def fused():
            return conv_backward.conv1x1_shuffle_backward(go, x, w, y, 3, 1, 3, (True, True, True))

        def op_by_op():  # what ops/conv1x1_shuffle.py:_conv_backward runs op by op
            g = conv_backward.relu_grad(go, y)
            return (conv_backward.conv1x1_grad_input(g, w, 3, 1, 3), conv_backward.conv1x1_grad_weight(g, x, 3, 1, 3),
                    conv_backward.conv1x1_grad_bias(g, 3))

        try:
            for cached, label in ((True, "cached (hit)"), (False, "uncached")):
                _common.set_launch_cache(cached)
                results[f"Triton forward launcher, {label}"] = per_call_us(
                    lambda: conv_forward.conv1x1_shuffle_forward(x, w, b, 3, 1, 3, True), min_run_time)
                results[f"Triton backward fused, {label}"] = per_call_us(fused, min_run_time)
                results[f"Triton backward op by op, {label}"] = per_call_us(op_by_op, min_run_time)
            results["empty Triton kernel (3 args), JIT path"] = per_call_us(
                lambda: _empty_kernel[(1,)](x, 16, BLOCK=16), min_run_time)
            _common.set_launch_cache(True)
            for name, fn in (("fused", fused), ("op by op", op_by_op)):
                before = stub.launches
                with AtenCounter() as aten:
                    fn()
                results[f"Triton backward {name}: Triton launches (count)"] = stub.launches - before
                results[f"Triton backward {name}: aten compute ops (count)"] = len(aten.ops)
        finally:
            _common.set_launch_cache(cache_was)
    return results


def cuda_host_us(fn, calls: int = 300, repeats: int = 7) -> float:
    """Median over ``repeats`` of (time to issue ``calls`` calls, then synchronise) / calls."""
    import statistics
    import time

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def cuda_results() -> dict:
    import triton.testing

    from shufflenet_ops import reference
    from shufflenet_ops.triton import _common, conv_backward
    from shufflenet_ops.triton.table import TRITON

    _empty = _empty_kernel
    dev = "cuda"
    x = torch.randn(2, 240, 4, 4, device=dev).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(60, 80, 1, 1, device=dev), torch.randn(60, device=dev)
    y = TRITON.group_conv1x1_shuffle(x, w, b, 3, 3, True)
    go = torch.randn_like(y)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

    def fused_step():
        return torch.autograd.grad(so.group_conv1x1_shuffle(xg, wg, 3, bias=bg, relu=True), (xg, wg, bg), go)

    def eager_step():
        out = reference.group_conv1x1_shuffle(xg, wg, 3, bias=bg, shuffle_groups=3, relu=True)
        return torch.autograd.grad(out, (xg, wg, bg), go)

    results = {
        "empty Triton kernel (3 args)": cuda_host_us(lambda: _empty[(1,)](x, 16, BLOCK=16)),
        "aten add_ (one kernel)": cuda_host_us(lambda: x.add_(0.0)),
        "public op forward, no autograd": cuda_host_us(lambda: so.group_conv1x1_shuffle(x, w, 3, bias=b, relu=True)),
        "public op forward, with autograd": cuda_host_us(
            lambda: so.group_conv1x1_shuffle(xg, wg, 3, bias=bg, relu=True)),
        "kernel table: forward": cuda_host_us(lambda: TRITON.group_conv1x1_shuffle(x, w, b, 3, 3, True)),
        "kernel table: relu_grad": cuda_host_us(lambda: TRITON.relu_grad(go, y)),
        "kernel table: grad_input": cuda_host_us(lambda: TRITON.conv1x1_shuffle_grad_input(go, w, 3, 1, 3)),
        "kernel table: grad_weight": cuda_host_us(lambda: TRITON.conv1x1_shuffle_grad_weight(go, x, 3, 1, 3)),
        "kernel table: grad_bias": cuda_host_us(lambda: TRITON.conv1x1_shuffle_grad_bias(go, 3)),
        "fused conv backward (conv1x1_shuffle_backward)": cuda_host_us(
            lambda: conv_backward.conv1x1_shuffle_backward(go, x, w, y, 3, 1, 3, (True, True, True))),
        "fused forward+backward step": cuda_host_us(fused_step),
        "eager unfused forward+backward step": cuda_host_us(eager_step),
    }
    _common.set_launch_cache(False)  # the same with every launch planned and bound anew
    try:
        results["kernel table: forward, launch cache off"] = cuda_host_us(
            lambda: TRITON.group_conv1x1_shuffle(x, w, b, 3, 3, True))
        results["fused forward+backward step, launch cache off"] = cuda_host_us(fused_step)
    finally:
        _common.set_launch_cache(True)
    for name, fn in (("fused", fused_step), ("eager", eager_step)):
        try:
            results[f"{name} step, CUDA-graph replay (GPU time)"] = 1e3 * triton.testing.do_bench_cudagraph(
                fn, return_mode="median")
        except Exception as exc:  # a capture failure is itself a finding: record it
            print(f"{name} step: CUDA graph capture failed: {type(exc).__name__}: {exc}")
            results[f"{name} step, CUDA-graph replay (GPU time)"] = None
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shufflenet-bench host-overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--min-run-time", type=float, default=0.5, help="CPU: seconds of timing per entry")
    args = parser.parse_args(argv)
    t = args.min_run_time
    device = torch.device(args.device)
    info = provenance(device, ["host-overhead", *argv])
    if args.device == "cuda":
        os.environ.setdefault("SHUFFLENET_OPS_TRITON_AUTOTUNE", "0")
        results = cuda_results()
    else:
        x, w, b = torch.randn(2, 6, 2, 2), torch.randn(6, 2, 1, 1), torch.randn(6)
        w_grad = w.clone().requires_grad_()
        results = {
            "public op, no autograd": per_call_us(lambda: so.group_conv1x1_shuffle(x, w, 3, bias=b, relu=True), t),
            "public op, with autograd": per_call_us(
                lambda: so.group_conv1x1_shuffle(x, w_grad, 3, bias=b, relu=True), t),
            "dispatcher only (torch.ops)": per_call_us(
                lambda: torch.ops.shufflenet_ops.group_conv1x1_shuffle(x, w, b, 3, 3, True), t),
            **stubbed_triton_results(t),
        }
    info["load_average_end"] = load_average()
    for name, us in results.items():
        unit = "" if name.endswith("(count)") else " us"
        print(f"{name:60s} {'n/a' if us is None else f'{us:7.1f}{unit}'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"provenance": info, "us_per_call": results}, f, indent=1)
    return 0
