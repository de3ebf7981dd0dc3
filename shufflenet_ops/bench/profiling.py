"""Looking inside a call: Nsight Compute's DRAM bytes beside the bytes model, and
torch.profiler of the fused forward+backward step.

    shufflenet-bench ncu --out DIR [--layers SLUG,...] [--providers fused,eager_channels_last]
    shufflenet-bench ncu-profile SLUG PROVIDER [--precision bf16-cl]   # one call, run under ncu
    shufflenet-bench profile-step --out DIR [--layers SLUG,...] [--steps 20]

``ncu`` runs ``ncu --profile-from-start off`` over ``ncu-profile`` once per layer and
provider: ``ncu-profile`` warms the call up (compiles, autotunes, allocates), then runs it
once between ``cudaProfilerStart`` and ``cudaProfilerStop``, so the profile holds exactly
that call's kernels. Their ``dram__bytes_read/write.sum`` and ``gpu__time_duration.sum``
are summed per call and written beside the bytes model's figure for the same provider
(``bytes_model``) to DIR/ncu_bytes.csv and ncu_bytes.json; ncu's own output per profile goes
to --raw-dir. Clocks are not locked (``--clock-control none``): the kernel times are the
GPU's at its usual clocks.

``profile-step`` times the fused provider's forward+backward step per layer and precision
(wall time per step over a loop, and the same step replayed from a CUDA graph: its GPU
time alone), then profiles a loop of steps and writes the tables of self CUDA and self CPU
time per op and kernel to DIR/profile_step.txt: where a step's host time goes.

Layers and inputs are those of ``shufflenet-bench kernels`` (``problem.placement_problems``,
``providers.make_layer_inputs``), named by slug.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import torch

from . import bytes_model, layers, report
from .cli import DEFAULT_PRECISIONS, add_device_option, add_shape_options, pick_device, precision, precision_list, str_list
from .problem import LayerProblem, element_size, find_problems, placement_problems, shufflenet_problems
from .provenance import provenance
from .providers import LAYER_PROVIDERS, LayerProvider, Setup, layer_providers

NCU_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "gpu__time_duration.sum")


def _problems(args: argparse.Namespace, keys: list[str] | None) -> list[LayerProblem]:
    """The kernel-level layers (``placement_problems``), or those named; a name may also be
    one of the main run's layers (``shufflenet_problems``)."""
    kernels_set = placement_problems(args.groups, args.width, args.batch, args.input_size)
    if not keys:
        return kernels_set
    network = shufflenet_problems(args.groups, args.width, args.batch, args.input_size)
    return find_problems(kernels_set + [p for p in network if p not in kernels_set], keys)


def resolve_provider(name: str, device: torch.device) -> LayerProvider:
    """A layer provider by name; ``fused``: the fused provider of ``device``."""
    if name == "fused":
        return next(p for p in layer_providers(device, compile=False) if p.fused)
    known = {p.name: p for p in LAYER_PROVIDERS}
    if name not in known:
        raise SystemExit(f"shufflenet-bench: unknown provider {name!r}; choose from fused, {', '.join(known)}")
    return known[name]


# ----------------------------------------------------------------------------- ncu
def ncu_profile_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shufflenet-bench ncu-profile",
                                     description="One warmed-up forward call of LAYER by PROVIDER between "
                                                 "cudaProfilerStart and cudaProfilerStop (run under ncu "
                                                 "--profile-from-start off; `shufflenet-bench ncu` does).")
    parser.add_argument("layer", help="a layer slug, e.g. g3_240to60_28x28_1st")
    parser.add_argument("provider", help="fused, or a layer provider's name")
    parser.add_argument("--precision", type=precision, default=precision("bf16-cl"), help="default bf16-cl")
    add_shape_options(parser, batch_default=128, batch_help="default 128")
    args = parser.parse_args(argv)
    device = pick_device("cuda")
    (problem,) = _problems(args, [args.layer])
    provider = resolve_provider(args.provider, device)
    dtype, layout = args.precision
    run = layers.layer_runner(problem, provider, "forward", Setup(device, dtype, layout, "default"))
    for _ in range(3):  # compile, autotune, allocate outside the profile
        run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(json.dumps({"layer": problem.slug, "provider": provider.name,
                      "model_bytes": bytes_model.bytes_moved(provider.traffic, problem, "forward",
                                                             element_size(dtype))}))
    return 0


def _number(text: str | None) -> float | None:
    try:
        return float((text or "").replace(",", ""))
    except ValueError:
        return None


def ncu_row(path: str, problem: LayerProblem, provider: LayerProvider, precision_name: str) -> dict:
    """One profile's kernels summed (ncu's ``--csv --page raw --print-units base`` output,
    one line per kernel after ncu's log lines and a units line) beside the bytes model."""
    dtype, _ = precision(precision_name)
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu and the profiled program print other lines
    read = written = nanoseconds = 0.0
    kernels = []
    for record in csv.DictReader(lines):
        r, w = _number(record.get(NCU_METRICS[0])), _number(record.get(NCU_METRICS[1]))
        if r is None or w is None:
            continue  # the units line
        read, written = read + r, written + w
        nanoseconds += _number(record.get(NCU_METRICS[2])) or 0.0
        kernels.append(record.get("Kernel Name", "?")[:80])
    model = bytes_model.bytes_moved(provider.traffic, problem, "forward", element_size(dtype))
    return {
        "layer": problem.slug, "placement": problem.placement, "precision": precision_name,
        "provider": provider.name, "batch": problem.batch,
        "dram_read_bytes": read, "dram_write_bytes": written, "dram_bytes": read + written,
        "model_bytes": model, "measured_over_model": (read + written) / model if model else None,
        "kernel_us": nanoseconds / 1e3,  # the profiled kernels' summed duration
        "kernels": len(kernels), "kernel_names": "; ".join(kernels),
    }


def write_ncu(rows: list[dict], info: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    report.write_csv(rows, os.path.join(out_dir, "ncu_bytes.csv"))
    report.write_json({"provenance": info, "metrics": list(NCU_METRICS), "results": rows},
                      os.path.join(out_dir, "ncu_bytes.json"))
    for row in rows:
        ratio = row["measured_over_model"]
        print(f"{row['layer']:34s} {row['precision']} {row['provider']:20s} DRAM {row['dram_bytes'] / 1e6:8.1f} MB "
              f"model {row['model_bytes'] / 1e6:8.1f} MB ratio {ratio if ratio is not None else float('nan'):.2f} "
              f"{row['kernel_us']:8.1f} us ({row['kernels']} kernels)")


def ncu_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shufflenet-bench ncu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for ncu_bytes.csv and ncu_bytes.json")
    parser.add_argument("--raw-dir", help="ncu's output per profile (default: OUT/ncu)")
    parser.add_argument("--layers", type=str_list, help="layer slugs (default: the kernels subcommand's layers)")
    parser.add_argument("--providers", type=str_list, default=["fused", "eager_channels_last"],
                        help="fused (this device's fused provider) and layer provider names (default "
                             "fused,eager_channels_last: the unfused peer in the default precision's layout)")
    parser.add_argument("--precision", default="bf16-cl", type=precision_list,
                        help="one or more dtype-layout pairs (default bf16-cl)")
    parser.add_argument("--ncu", default="ncu", help="the Nsight Compute CLI (default: ncu on PATH)")
    add_shape_options(parser, batch_default=128, batch_help="default 128")
    args = parser.parse_args(argv)
    ncu = shutil.which(args.ncu)
    if ncu is None:
        raise SystemExit(f"shufflenet-bench ncu: {args.ncu!r} not found")
    device = pick_device("cuda")
    raw_dir = args.raw_dir or os.path.join(args.out, "ncu")
    os.makedirs(raw_dir, exist_ok=True)
    problems = _problems(args, args.layers)
    providers = [resolve_provider(name, device) for name in args.providers]
    info = provenance(device, ["ncu", *argv])
    version = subprocess.run([ncu, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    info.update(ncu=version[-1] if version else None, ncu_clock_control="none")
    rows, status = [], 0
    try:
        for precision_name in args.precision:
            for problem in problems:
                for provider in providers:
                    stem = os.path.join(raw_dir, f"ncu_{problem.slug}__{precision_name}__{provider.name}")
                    command = [ncu, "--profile-from-start", "off", "--clock-control", "none",
                               "--metrics", ",".join(NCU_METRICS), "--csv", "--page", "raw", "--print-units", "base",
                               sys.executable, "-m", "shufflenet_ops.bench", "ncu-profile", problem.slug,
                               provider.name, "--precision", precision_name, "--batch", str(args.batch),
                               "--input-size", str(args.input_size), "--width", str(args.width),
                               "--groups", ",".join(map(str, args.groups))]
                    with open(stem + ".csv", "w") as out, open(stem + ".err", "w") as err:
                        result = subprocess.run(command, stdout=out, stderr=err)
                    if result.returncode != 0:
                        with open(stem + ".err") as err:
                            tail = err.read()[-2000:]
                        print(f"shufflenet-bench ncu: failed on {problem.slug} {provider.name} "
                              f"(rc {result.returncode}):\n{tail}", file=sys.stderr)
                        raise RuntimeError("ncu failed")
                    rows.append(ncu_row(stem + ".csv", problem, provider, precision_name))
                    write_ncu(rows, info, args.out)  # a run cut off keeps what it measured
    except KeyboardInterrupt:
        print("shufflenet-bench ncu: interrupted; the profiles done are summarised", file=sys.stderr)
        status = 130
    except RuntimeError:
        status = 1
    write_ncu(rows, info, args.out)
    return status


# --------------------------------------------------------------------- profile-step
def profile_step_main(argv: list[str]) -> int:
    from torch.profiler import ProfilerActivity, profile

    from .timing import cuda_graph_ms, synchronize

    parser = argparse.ArgumentParser(prog="shufflenet-bench profile-step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for profile_step.txt")
    add_device_option(parser)
    parser.add_argument("--layers", type=str_list, help="layer slugs (default: the kernels subcommand's layers)")
    parser.add_argument("--precisions", type=precision_list, default=list(DEFAULT_PRECISIONS),
                        help="default " + ",".join(DEFAULT_PRECISIONS))
    parser.add_argument("--steps", type=int, default=20, help="steps per timed loop and per profile (default 20)")
    parser.add_argument("--rows", type=int, default=14, help="lines per profiler table (default 14)")
    add_shape_options(parser, batch_default=128, batch_help="default 128")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    provider = resolve_provider("fused", device)
    lines = [json.dumps(provenance(device, ["profile-step", *argv]))]

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    for problem in _problems(args, args.layers):
        for precision_name in args.precisions:
            dtype, layout = precision(precision_name)
            step = layers.layer_runner(problem, provider, "forward_backward", Setup(device, dtype, layout, "default"))
            for _ in range(5):
                step()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            synchronize(device)
            wall = (time.perf_counter() - start) / args.steps * 1e3
            graph = f", CUDA-graph replay {cuda_graph_ms(step):.4f} ms/step" if cuda else ""
            with profile(activities=activities) as prof:
                for _ in range(args.steps):
                    step()
                synchronize(device)
            emit(f"=== {problem.slug} {precision_name} batch {problem.batch}: {provider.name} forward+backward, "
                 f"wall {wall:.4f} ms/step (loop of {args.steps}){graph}")
            table = prof.key_averages()
            for key in (["self_cuda_time_total"] if cuda else []) + ["self_cpu_time_total"]:
                emit(table.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_step.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0
