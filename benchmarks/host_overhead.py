"""Host (CPU-side) time per call of the public ops: the Python and dispatcher path a GPU
kernel launch waits behind. On a GPU a small fused kernel takes 40-100 us; if the host path
takes longer, an eager caller sees the host path, not the kernel (benchmarks/results/gpu-h100).

    python benchmarks/host_overhead.py [--out FILE.json]

Measured on CPU tensors so that it runs anywhere:
- public op, no autograd / with autograd: ``shufflenet_ops.group_conv1x1_shuffle`` on a tiny
  tensor (the C++ kernel's own work is ~1-2 us of it), without and with a weight that
  requires grad;
- dispatcher only: ``torch.ops.shufflenet_ops.group_conv1x1_shuffle`` on the same tensors;
- Triton launcher: the Triton forward launcher with the compiled kernel replaced by a no-op
  (everything a CUDA call runs before Triton's own launch code).
Medians of torch.utils.benchmark at torch's thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess

import torch
from torch.utils.benchmark import Timer

import shufflenet_ops as so


def per_call_us(fn) -> float:
    fn()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.5).median * 1e6


def triton_launcher_us() -> float | None:
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
        return per_call_us(lambda: conv_forward.conv1x1_shuffle_forward(x, w, b, 3, 1, 3, True))
    finally:
        conv_forward._permuted_group_conv1x1_kernel = saved[0]
        if saved[1] is None:
            os.environ.pop("SHUFFLENET_OPS_TRITON_AUTOTUNE", None)
        else:
            os.environ["SHUFFLENET_OPS_TRITON_AUTOTUNE"] = saved[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    x, w, b = torch.randn(2, 6, 2, 2), torch.randn(6, 2, 1, 1), torch.randn(6)
    w_grad = w.clone().requires_grad_()
    results = {
        "public op, no autograd": per_call_us(lambda: so.group_conv1x1_shuffle(x, w, 3, bias=b, relu=True)),
        "public op, with autograd": per_call_us(lambda: so.group_conv1x1_shuffle(x, w_grad, 3, bias=b, relu=True)),
        "dispatcher only (torch.ops)": per_call_us(
            lambda: torch.ops.shufflenet_ops.group_conv1x1_shuffle(x, w, b, 3, 3, True)),
        "Triton launcher, launch stubbed": triton_launcher_us(),
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "git_commit": commit}
    for name, us in results.items():
        print(f"{name:34s} {'n/a' if us is None else f'{us:7.1f} us'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"provenance": info, "us_per_call": results}, f, indent=1)


if __name__ == "__main__":
    main()
