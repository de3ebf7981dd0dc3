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
- Triton launcher: the Triton forward launcher with the compiled kernel replaced by a no-op
  (everything a CUDA call runs before Triton's own launch code).
Medians of torch.utils.benchmark at torch's thread count.

On a GPU: host time per call of each piece of a fused forward+backward, on tensors small
enough that the GPU work hides behind the host path: N calls are issued without a
synchronisation, so time per call = the host path (Python, dispatcher, launch). Beside
them, an empty Triton kernel and an aten op (the floors), the whole fused step and the eager
unfused step, and the same steps' GPU time replayed from a CUDA graph.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
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


def triton_launcher_us(min_run_time: float = 0.5) -> float | None:
    """The Triton forward launcher with a no-op in place of the compiled kernel."""
    try:
        from shufflenet_ops.triton import conv_forward
    except ImportError:  # triton not installed
        return None

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    saved = conv_forward._permuted_group_conv1x1_kernel, os.environ.get("SHUFFLENET_OPS_TRITON_AUTOTUNE")
    conv_forward._permuted_group_conv1x1_kernel = NoLaunch()
    os.environ["SHUFFLENET_OPS_TRITON_AUTOTUNE"] = "0"  # the fixed-tile path (no autotuner object)
    try:
        x = torch.randn(16, 240, 28, 28).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(60, 80, 1, 1), torch.randn(60)
        return per_call_us(lambda: conv_forward.conv1x1_shuffle_forward(x, w, b, 3, 1, 3, True), min_run_time)
    finally:
        conv_forward._permuted_group_conv1x1_kernel = saved[0]
        if saved[1] is None:
            os.environ.pop("SHUFFLENET_OPS_TRITON_AUTOTUNE", None)
        else:
            os.environ["SHUFFLENET_OPS_TRITON_AUTOTUNE"] = saved[1]


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
        "fused forward+backward step": cuda_host_us(fused_step),
        "eager unfused forward+backward step": cuda_host_us(eager_step),
    }
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
            "Triton launcher, launch stubbed": triton_launcher_us(t),
        }
    info["load_average_end"] = load_average()
    for name, us in results.items():
        print(f"{name:44s} {'n/a' if us is None else f'{us:7.1f} us'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"provenance": info, "us_per_call": results}, f, indent=1)
    return 0
