"""GPU micro-benchmark of the fused 1x1 conv + shuffle against its unfused peers.

    python benchmarks/gpu_bench.py --out DIR [--quick]            # timings -> DIR/gpu_bench.{csv,json}
    python benchmarks/gpu_bench.py profile-once LAYER VARIANT      # one call, for ncu (see device_check.sh)
    python benchmarks/gpu_bench.py ncu-summary --out DIR CSV...    # ncu DRAM bytes beside the bytes model
    python benchmarks/gpu_bench.py profile-step LAYER[,LAYER] --out DIR  # torch.profiler of fused fwd+bwd

Layers: ShuffleNet V1 1x, Stage 2 (28x28), batch 128: the first GConv (output shuffle, BN
folded into the bias, ReLU) and the second GConv (input shuffle in the official code's
convention) for g=3 and g=8. Precisions/layouts: bf16 channels_last and fp32 NCHW.
Peers, timed in the same run: eager unfused (F.conv2d + torch.channel_shuffle + ReLU, the
package reference) in NCHW and in channels_last, and torch.compile(mode="max-autotune") of the
unfused code. Timing: triton.testing.do_bench, quantiles 0.5/0.2/0.8 (ms). Bytes model
(design notes): fused = read x + W + b, write y; unfused adds the conv output's write and
read (the shuffle pass) and, with ReLU, a read and write of y. Roofline fraction = model
bytes / time / the bandwidth of a large device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch

warnings.filterwarnings("ignore", category=RuntimeWarning, module="shufflenet_ops")
import shufflenet_ops as so  # noqa: E402
from shufflenet_ops import reference  # noqa: E402


@dataclass(frozen=True)
class Layer:
    name: str
    groups: int
    cin: int
    cout: int
    placement: str  # "out": group_conv1x1_shuffle, "in": shuffle_group_conv1x1
    shuffle: int
    bias: bool
    relu: bool
    h: int = 28
    w: int = 28


LAYERS = (
    Layer("g3_gconv1_240to60", 3, 240, 60, "out", 3, True, True),
    Layer("g8_gconv1_384to96", 8, 384, 96, "out", 8, True, True),
    Layer("g3_gconv2_60to240", 3, 60, 240, "in", 60 // 3, True, False),
    Layer("g8_gconv2_96to384", 8, 96, 384, "in", 96 // 8, True, False),
)
PRECISIONS = (("bf16", torch.bfloat16, torch.channels_last), ("fp32", torch.float32, torch.contiguous_format))
FORMAT_NAMES = {torch.channels_last: "channels_last", torch.contiguous_format: "nchw"}
QUANTILES = (0.5, 0.2, 0.8)


def layer_by_name(name: str) -> Layer:
    for layer in LAYERS:
        if layer.name == name:
            return layer
    raise SystemExit(f"unknown layer {name!r}; choose one of {', '.join(l.name for l in LAYERS)}")


def make_inputs(layer: Layer, batch: int, dtype: torch.dtype, fmt: torch.memory_format, device: str, grad: bool):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, layer.cin, layer.h, layer.w, device=device, dtype=dtype, generator=gen)
    x = x.contiguous(memory_format=fmt)
    w = torch.randn(layer.cout, layer.cin // layer.groups, 1, 1, device=device, dtype=dtype, generator=gen)
    w = w / (layer.cin // layer.groups) ** 0.5
    b = torch.randn(layer.cout, device=device, dtype=dtype, generator=gen) if layer.bias else None
    if grad:
        for t in (x, w, b):
            if t is not None:
                t.requires_grad_()
    return x, w, b


def fused_fn(layer: Layer):
    if layer.placement == "out":
        return lambda x, w, b: so.group_conv1x1_shuffle(x, w, layer.groups, bias=b, shuffle_groups=layer.shuffle,
                                                        relu=layer.relu)
    return lambda x, w, b: so.shuffle_group_conv1x1(x, w, layer.groups, layer.shuffle, bias=b, relu=layer.relu)


def unfused_fn(layer: Layer):
    if layer.placement == "out":
        return lambda x, w, b: reference.group_conv1x1_shuffle(x, w, layer.groups, bias=b,
                                                               shuffle_groups=layer.shuffle, relu=layer.relu)
    return lambda x, w, b: reference.shuffle_group_conv1x1(x, w, layer.groups, layer.shuffle, bias=b,
                                                           relu=layer.relu)


def bytes_model(layer: Layer, batch: int, elem: int) -> dict:
    pixels = batch * layer.h * layer.w
    x = pixels * layer.cin * elem
    y = pixels * layer.cout * elem
    params = (layer.cout * (layer.cin // layer.groups) + (layer.cout if layer.bias else 0)) * elem
    fused = x + params + y
    # unfused: the shuffle is a separate pass over a materialised tensor (the conv output for
    # the output placement, the shuffled input for the input placement), ReLU another pass.
    shuffled = y if layer.placement == "out" else x
    unfused = fused + 2 * shuffled + (2 * y if layer.relu else 0)
    return {"fused_bytes": fused, "unfused_bytes": unfused}


def provenance() -> dict:
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "git_commit": commit,
        "git_dirty": dirty,
        "tf32": so.triton.allow_tf32(),
        "autotune": os.environ.get("SHUFFLENET_OPS_TRITON_AUTOTUNE", "1"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sm_count=props.multi_processor_count, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def copy_bandwidth(device: str) -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + written), this run's roofline."""
    import triton.testing

    src = torch.empty(2**30 // 4, device=device, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), quantiles=QUANTILES)[0]
    del src, dst
    return 2 * 2**30 / (ms * 1e-3) / 1e9


def time_ms(fn, device: str) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) in ms."""
    if device == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=QUANTILES))
    # --device cpu only smoke-tests this script (CUDA events do not exist there).
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    q = torch.tensor(samples).quantile(torch.tensor(QUANTILES, dtype=torch.float64).float())
    return tuple(float(v) for v in q)


def graph_ms(fn, device: str) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph: the GPU time alone, without the Python
    and launch overhead that ``time_ms`` includes (NaN where capture is not possible)."""
    if device != "cuda":
        return float("nan")
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, return_mode="median"))
    except Exception as exc:  # a capture failure must not lose the rest of the run
        print(f"  (CUDA graph timing failed: {type(exc).__name__}: {exc})", flush=True)
        return float("nan")


def write_results(out: str, info: dict, layers, rows: list[dict]) -> None:
    """Write (or rewrite) the CSV and JSON, with same-run speed-ups over the fused row."""
    for row in rows:
        key = (row["layer"], row["precision"], row["mode"])
        fused = next((r for r in rows if (r["layer"], r["precision"], r["mode"]) == key and r["variant"] == "fused"),
                     None)
        row["fused_speedup"] = row["ms_median"] / fused["ms_median"] if fused else float("nan")
        if fused and row.get("graph_ms") is not None and fused.get("graph_ms"):
            row["fused_speedup_graph"] = row["graph_ms"] / fused["graph_ms"]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out, "gpu_bench.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "gpu_bench.json"), "w") as f:
        json.dump({"provenance": info, "layers": [asdict(l) for l in layers], "results": rows}, f, indent=1)


def bench(args) -> None:
    device = args.device
    os.makedirs(args.out, exist_ok=True)
    layers = LAYERS if not args.layers else tuple(layer_by_name(n) for n in args.layers.split(","))
    batch = args.batch
    info = provenance()
    bw = copy_bandwidth(device) if device == "cuda" else float("nan")
    info["copy_bandwidth_gbs"] = bw
    print(json.dumps(info, indent=1), flush=True)
    rows = []
    for index, layer in enumerate(layers):
        for prec, dtype, fmt in PRECISIONS:
            model = bytes_model(layer, batch, torch.empty((), dtype=dtype).element_size())
            fused, unfused = fused_fn(layer), unfused_fn(layer)
            variants = {
                "fused": (fused, fmt),
                "eager_nchw": (unfused, torch.contiguous_format),
                "eager_channels_last": (unfused, torch.channels_last),
            }
            if args.compile and index < args.compile_layers:
                torch._dynamo.reset()
                variants["compile_max_autotune"] = (torch.compile(unfused, mode=args.compile_mode), fmt)
            for mode in ("forward", "forward_backward"):
                for vname, (fn, vfmt) in variants.items():
                    if mode == "forward_backward" and vname.startswith("compile"):
                        continue  # the goals compare fwd+bwd with eager only
                    x, w, b = make_inputs(layer, batch, dtype, vfmt, device, grad=mode != "forward")
                    if mode == "forward":
                        def run(fn=fn, x=x, w=w, b=b):
                            with torch.no_grad():
                                return fn(x, w, b)
                    else:
                        go = torch.randn(batch, layer.cout, layer.h, layer.w, device=device, dtype=dtype)
                        go = go.contiguous(memory_format=vfmt)
                        params = [t for t in (x, w, b) if t is not None]

                        def run(fn=fn, x=x, w=w, b=b, go=go, params=params):
                            return torch.autograd.grad(fn(x, w, b), params, go)
                    start = time.monotonic()
                    run()  # compile / autotune outside the timing
                    warm_s = time.monotonic() - start
                    med, lo, hi = time_ms(run, device)
                    row = {
                        "layer": layer.name, "precision": prec, "layout": FORMAT_NAMES[vfmt], "mode": mode,
                        "variant": vname, "batch": batch, "ms_median": med, "ms_p20": lo, "ms_p80": hi,
                        "first_call_s": round(warm_s, 2), **model,
                    }
                    if vname.startswith("compile") and "cudagraphs" not in args.compile_mode and \
                            args.compile_mode.startswith(("max-autotune", "reduce-overhead")):
                        # Inductor already replays its own CUDA graph (cudagraph trees), which
                        # cannot be captured inside another: its wall time is its graph time.
                        row["graph_ms"], row["graph_source"] = med, "inductor cudagraph trees (wall)"
                    else:
                        row["graph_ms"], row["graph_source"] = graph_ms(run, device), "captured"
                    if mode == "forward":
                        row["effective_gbs"] = model["fused_bytes"] / (med * 1e-3) / 1e9
                        row["roofline_fraction"] = row["effective_gbs"] / bw if bw == bw else float("nan")
                    rows.append(row)
                    print(f"{layer.name:20s} {prec} {FORMAT_NAMES[vfmt]:13s} {mode:16s} {vname:22s} "
                          f"{med:8.4f} ms [{lo:.4f}, {hi:.4f}]"
                          + f"  graph {row['graph_ms']:.4f} ms", flush=True)
            # Rewritten after every layer/precision: a run cut off by its time limit keeps its rows.
            write_results(args.out, info, layers, rows)
    print(f"wrote {args.out}/gpu_bench.csv and gpu_bench.json ({len(rows)} rows)")


def profile_once(args) -> None:
    """Warm up (autotune, compile), then run one forward inside cudaProfilerStart/Stop so
    that ``ncu --profile-from-start off`` measures exactly that call's kernels."""
    layer = layer_by_name(args.layer)
    prec = {p[0]: p for p in PRECISIONS}[args.precision]
    _, dtype, fmt = prec
    fn = fused_fn(layer) if args.variant == "fused" else unfused_fn(layer)
    x, w, b = make_inputs(layer, args.batch, dtype, fmt, "cuda", grad=False)
    with torch.no_grad():
        for _ in range(3):
            fn(x, w, b)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        fn(x, w, b)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
    print(json.dumps({"layer": layer.name, "variant": args.variant, "precision": args.precision,
                      **bytes_model(layer, args.batch, x.element_size())}))


def profile_step(args) -> None:
    """Where a fused forward+backward spends its time: torch.profiler over ``--steps`` calls
    (after warm-up) of each layer's fused op, per precision; tables of self CUDA and self CPU
    time per op/kernel, and the wall time per step beside the CUDA-graph replay time (GPU
    work alone) of the same step. Written to DIR/profile_step.txt."""
    from torch.profiler import ProfilerActivity, profile

    lines = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    for name in args.layers.split(","):
        layer = layer_by_name(name)
        for prec, dtype, fmt in PRECISIONS:
            fn = fused_fn(layer)
            x, w, b = make_inputs(layer, args.batch, dtype, fmt, "cuda", grad=True)
            go = torch.randn(args.batch, layer.cout, layer.h, layer.w, device="cuda", dtype=dtype)
            go = go.contiguous(memory_format=fmt)
            params = [t for t in (x, w, b) if t is not None]

            def step():
                return torch.autograd.grad(fn(x, w, b), params, go)

            for _ in range(5):
                step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / args.steps * 1e3
            graph = graph_ms(step, "cuda")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(args.steps):
                    step()
                torch.cuda.synchronize()
            emit(f"=== {layer.name} {prec} {FORMAT_NAMES[fmt]} batch {args.batch}: fused forward+backward, "
                 f"wall {wall:.4f} ms/step (loop of {args.steps}), CUDA-graph replay {graph:.4f} ms/step")
            table = prof.key_averages()
            emit(table.table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))
            emit(table.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_step.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def ncu_summary(args) -> None:
    """Sum ncu's per-kernel DRAM bytes per (layer, precision, variant) CSV, beside the model."""
    out = []
    for path in args.csvs:
        # file name: ncu_<layer>__<precision>__<variant>.csv
        stem = os.path.basename(path)[len("ncu_"):-len(".csv")]
        layer_name, precision, variant = stem.split("__")
        layer = layer_by_name(layer_name)
        elem = 2 if precision == "bf16" else 4
        model = bytes_model(layer, args.batch, elem)
        read = write = nanoseconds = 0.0
        kernels = []
        with open(path, newline="") as f:
            lines = [l for l in f if l.startswith('"')]  # ncu prints log lines before the CSV
        for rec in csv.DictReader(lines):
            r, w = _number(rec.get("dram__bytes_read.sum", "")), _number(rec.get("dram__bytes_write.sum", ""))
            if r is None or w is None:
                continue  # the units row
            read, write = read + r, write + w
            nanoseconds += _number(rec.get("gpu__time_duration.sum", "")) or 0.0
            kernels.append(rec.get("Kernel Name", "?")[:80])
        modeled = model["fused_bytes"] if variant == "fused" else model["unfused_bytes"]
        out.append({
            "layer": layer_name, "precision": precision, "variant": variant, "batch": args.batch,
            "dram_read_bytes": read, "dram_write_bytes": write, "dram_bytes": read + write,
            "model_bytes": modeled, "measured_over_model": (read + write) / modeled if modeled else None,
            "kernel_us": nanoseconds / 1e3,  # the profiled kernels' summed duration (ncu, clocks unlocked)
            "kernels": len(kernels), "kernel_names": "; ".join(kernels),
        })
    with open(os.path.join(args.out, "ncu_bytes.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]) if out else ["layer"])
        writer.writeheader()
        writer.writerows(out)
    with open(os.path.join(args.out, "ncu_bytes.json"), "w") as f:
        json.dump(out, f, indent=1)
    for row in out:
        print(f"{row['layer']:20s} {row['precision']} {row['variant']:8s} DRAM {row['dram_bytes'] / 1e6:9.1f} MB "
              f"model {row['model_bytes'] / 1e6:9.1f} MB ratio {row['measured_over_model'] or float('nan'):.2f} "
              f"{row['kernel_us']:8.1f} us "
              f"({row['kernels']} kernels)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--out", default="benchmarks/results/gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="compile only the first two layers")
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-mode", default="max-autotune")
    p = sub.add_parser("profile-once")
    p.add_argument("layer")
    p.add_argument("variant", choices=["fused", "unfused"])
    p.add_argument("--precision", default="bf16", choices=[p[0] for p in PRECISIONS])
    p.add_argument("--batch", type=int, default=128)
    q = sub.add_parser("profile-step")
    q.add_argument("layers", help="comma-separated layer names")
    q.add_argument("--out", default="benchmarks/results/gpu")
    q.add_argument("--batch", type=int, default=128)
    q.add_argument("--steps", type=int, default=20)
    s = sub.add_parser("ncu-summary")
    s.add_argument("csvs", nargs="+")
    s.add_argument("--out", default="benchmarks/results/gpu")
    s.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    if args.command == "profile-once":
        profile_once(args)
    elif args.command == "profile-step":
        profile_step(args)
    elif args.command == "ncu-summary":
        ncu_summary(args)
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("no CUDA device (this is the GPU benchmark; use --device cpu only to smoke-test it)")
        # max-autotune compiles take tens of seconds each: --quick compiles the first two layers only.
        args.compile_layers = 2 if args.quick else len(LAYERS)
        bench(args)


if __name__ == "__main__":
    main()
