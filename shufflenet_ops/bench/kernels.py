"""``shufflenet-bench kernels``: the fused op against its peers at the kernel level, in wall
time and in GPU time alone. The GPU measurement of the project (``benchmarks/device_check.sh``
runs it).

    shufflenet-bench kernels --out DIR                          # CUDA: bf16 channels_last, fp32 NCHW
    shufflenet-bench kernels --quick --no-compile --out DIR     # what device_check.sh runs when short of time
    shufflenet-bench kernels --device cpu --precisions fp32-nchw --batch 2   # the same code on the CPU

Layers: ``problem.placement_problems``, both placements of the shuffle on Stage 2's
stride-1 unit at the network's size (28x28 from 224): per g the first GConv as the network
runs it (output shuffle, bias, ReLU: ``group_conv1x1_shuffle``), then per g the second GConv
with the unit's shuffle on its input in the official code's convention
(``shuffle_group_conv1x1``). Per precision (dtype and input layout, ``--precisions``) every
layer provider present (the fused kernel, eager NCHW and channels_last, torch.compile of the
unfused code in forward, the dense block-diagonal conv), forward and forward+backward,
timed by the layer level of the main run (``layers.run_layers``: triton.testing.do_bench on
CUDA) and, on CUDA, replayed from a CUDA graph as well (``graph_ms``: the GPU time without
the host path in front of each call). Bytes and roofs as in the main run; same-run ratios
over the fused row in both times.

Writes results.md, results.csv and results.json (provenance, the roofs of each precision,
the rows) into --out, rewritten after every layer so that a run cut off by its time limit
keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings

import torch

from . import layers, report
from .cli import (
    DEFAULT_PRECISIONS,
    Progress,
    add_device_option,
    add_layer_run_options,
    add_shape_options,
    check_choices,
    pick_device,
    precision,
    precision_list,
    progress_bar,
    str_list,
)
from .problem import MODES, find_problems, placement_problems
from .provenance import load_average, provenance
from .providers import Setup, layer_providers
from .roofline import Roofline, measure_roofline

DEFAULT_MODES = ("forward", "forward_backward")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shufflenet-bench kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_option(parser)
    parser.add_argument("--out", help="directory for results.md/csv/json (default: a new folder under "
                        "./shufflenet-bench-results/)")
    add_shape_options(parser, batch_help="default: 128 on CUDA, 16 on CPU")
    parser.add_argument("--precisions", type=precision_list, default=list(DEFAULT_PRECISIONS),
                        help="dtype-layout pairs, dtype fp32|bf16|fp16, layout nchw|cl (default "
                             + ",".join(DEFAULT_PRECISIONS) + ")")
    parser.add_argument("--layers", type=str_list, help="layer names (slugs, e.g. g3_240to60_28x28_1st; default: all)")
    add_layer_run_options(parser, MODES, DEFAULT_MODES)
    parser.add_argument("--quick", action="store_true",
                        help="torch.compile on the first two layers only (a max-autotune compile takes tens of "
                             "seconds per layer and precision)")
    parser.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                        help="skip the CUDA-graph replay times")
    parser.add_argument("--min-run-time", type=float, default=0.05, help="seconds of timing per measurement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    check_choices(parser, "mode", args.modes, MODES)
    return args


def write(out_dir: str, rows: list[dict], info: dict, rooflines: dict[str, Roofline], providers, problems) -> None:
    os.makedirs(out_dir, exist_ok=True)
    report.write_csv(rows, os.path.join(out_dir, "results.csv"))
    report.write_json({"provenance": info, "rooflines": {k: report.roofline_dict(v) for k, v in rooflines.items()},
                       "providers": {p.name: p.description for p in providers},
                       "problems": [dataclasses.asdict(p) | {"name": p.name, "slug": p.slug} for p in problems],
                       "results": rows}, os.path.join(out_dir, "results.json"))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(report.kernels_markdown(rows, info, rooflines))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    batch = args.batch or (128 if device.type == "cuda" else 16)
    problems = placement_problems(args.groups, args.width, batch, args.input_size)
    if args.layers:
        problems = find_problems(problems, args.layers)
    compile_mode = args.compile_mode or ("max-autotune" if device.type == "cuda" else "default")
    providers = layer_providers(device, args.providers, args.compile)
    compile_layers = 2 if args.quick else len(problems)
    cuda_graph = args.cuda_graph and device.type == "cuda"
    out_dir = args.out or report.default_out_dir()
    warnings.filterwarnings("ignore", module="torch._inductor")
    info = provenance(device, ["kernels", *argv])
    info.update(batch=batch, precisions=args.precisions, modes=args.modes, compile_mode=compile_mode if args.compile
                else None, compile_layers=compile_layers if args.compile else 0, cuda_graph=cuda_graph,
                min_run_time_s=args.min_run_time, groups=list(args.groups), width=args.width,
                input_size=args.input_size)
    runs = sum(1 for index in range(len(problems)) for p in providers for m in args.modes
               if layers.layer_included(p, m, full=False) and (index < compile_layers or not p.compiled))
    started = time.perf_counter()
    rows: list[dict] = []
    rooflines: dict[str, Roofline] = {}
    with progress_bar(len(args.precisions) * runs, args.no_progress) as bar:
        progress = Progress(bar)
        for name in args.precisions:
            dtype, layout = precision(name)
            setup = Setup(device, dtype, layout, compile_mode)
            roofline = measure_roofline(device, dtype, max(0.2, 2 * args.min_run_time))
            done = []
            for index, problem in enumerate(problems):
                chosen = providers if index < compile_layers else [p for p in providers if not p.compiled]
                layer_rows, roofline = layers.run_layers([problem], chosen, args.modes, setup, roofline,
                                                         args.min_run_time, progress, full=False,
                                                         cuda_graph=cuda_graph)
                for row in layer_rows:
                    row.update(precision=name, dtype=str(dtype).removeprefix("torch."),
                               layout="channels_last" if layout == torch.channels_last else "nchw",
                               placement=problem.placement, layer=problem.slug)
                done += layer_rows
                # Against this precision's final roof, like the main run's rows.
                for row in done:
                    row["compute_roof_fraction"] = row["gflops"] / roofline.gemm_gflops
                rooflines[name] = roofline
                info["elapsed_s"] = round(time.perf_counter() - started, 1)
                write(out_dir, rows + done, info, rooflines, providers, problems)
            rows += done
        progress.finish()
    info["elapsed_s"] = round(time.perf_counter() - started, 1)
    info["load_average_end"] = load_average()
    write(out_dir, rows, info, rooflines, providers, problems)
    print(report.kernels_markdown(rows, info, rooflines, terminal=True))
    print(f"shufflenet-bench kernels: {info['elapsed_s']} s; results in {os.path.abspath(out_dir)}: results.md, "
          "results.csv, results.json", file=sys.stderr)
    return 0
