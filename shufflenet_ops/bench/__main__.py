"""shufflenet-bench: the fused grouped 1x1 conv + channel shuffle against its peers.

    shufflenet-bench                   # the default run (run times: benchmarks/README.md)
    shufflenet-bench --quick           # two layer shapes per g and one unit
    shufflenet-bench --efficiency      # + the whole model at widths 0.5x, 1x, 2x
    shufflenet-bench --full            # + the slow-to-compile peers (many minutes on a small CPU)
    shufflenet-bench --models v1,v2    # + ShuffleNet V2 0.5x and 1x at the model level
    python -m shufflenet_ops.bench --device cuda --quick --out DIR

The default run times, on the best device present: every distinct 1x1 conv shape of
ShuffleNet V1 (forward, backward, forward+backward) against eager PyTorch, torch.compile
(forward) and a dense GEMM; two ShuffleNet units; and the whole network in eval at batch 1
(latency) and 16 (throughput) against eager, torch.compile(naive), ONNX Runtime and
OpenVINO (the naive model exported to ONNX), and its training step. --efficiency adds the
paper's yardstick: the whole model at widths 0.5x/1x/2x. --full adds that and
torch.compile of the units, of the fused model and of every training step, and OpenVINO
at its default precision: Inductor needs minutes per network on a small CPU. A first run
on a machine is slower: Inductor compiles the torch.compile peers, and its on-disk cache
serves later runs.

Prints a summary; writes results.md (every table), results.csv, results.json (with
provenance and the roofs measured in the same run) and PNG plots to a new folder under
./shufflenet-bench-results/ (or --out DIR) and prints its path.

Subcommands (each has its own --help):
    shufflenet-bench kernels        # both shuffle placements on Stage 2's layers, per precision
                                    # (bf16 channels_last, fp32 NCHW), wall and CUDA-graph time
    shufflenet-bench ncu            # Nsight Compute DRAM bytes and kernel time beside the bytes model
    shufflenet-bench profile-step   # torch.profiler of the fused forward+backward step
    shufflenet-bench host-overhead  # host (CPU-side) time per call of the ops and launchers
    shufflenet-bench train          # train ShuffleNet V1 on a small dataset, fused against naive
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import warnings

import torch

from .. import _extension
from . import deploy, layers, networks, precompile, report
from .cli import (
    DTYPES,
    LAYOUTS,
    Progress,
    add_device_option,
    add_layer_run_options,
    add_shape_options,
    check_choices,
    float_list,
    int_list,
    pick_device,
    progress_bar,
    str_list,
)
from .efficiency import efficiency
from .problem import MODES, shufflenet_problems
from .provenance import load_average, provenance
from .providers import NetworkProvider, Setup, display_name, layer_providers, network_providers
from .roofline import measure_roofline
from .timing import pin_glibc_malloc

LEVELS = ("layers", "units", "models")
MODELS = ("v1", "v2")  # the networks of the model level (--models)
# name -> (module, its entry point taking the arguments after the name)
SUBCOMMANDS = {
    "kernels": ("kernels", "main"),
    "ncu": ("profiling", "ncu_main"),
    "ncu-profile": ("profiling", "ncu_profile_main"),
    "profile-step": ("profiling", "profile_step_main"),
    "host-overhead": ("host_overhead", "main"),
    "train": ("train", "main"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="shufflenet-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_device_option(parser)
    parser.add_argument("--quick", action="store_true",
                        help="the two most frequent layer shapes per g and the stride-1 unit, no compiled unit "
                             "peers, no whole model, shorter timing")
    parser.add_argument("--full", action="store_true",
                        help="also torch.compile of the units, of the fused whole model and of the training steps "
                             "(the layers' backward too), "
                             "the compiled peers at the efficiency table's other widths, and OpenVINO at its "
                             "default precision (Inductor needs minutes per network on a small CPU)")
    parser.add_argument("--out", help="directory for results.md/csv/json and the PNG plots (default: a new folder "
                        "under ./shufflenet-bench-results/)")
    add_shape_options(parser)
    parser.add_argument("--model-batch", type=int_list,
                        help="whole-model batch sizes, eval at each, the training step at the largest "
                             "(default: 1 and --batch)")
    parser.add_argument("--models", type=str_list, default=["v1"],
                        help="networks of the model level: any of " + ",".join(MODELS) + " (default v1; v2: "
                             "ShuffleNet V2 at --v2-widths, torchvision's structure)")
    parser.add_argument("--v2-widths", type=float_list, default=(0.5, 1.0),
                        help="ShuffleNet V2 widths with --models v2 (default 0.5,1)")
    parser.add_argument("--efficiency-widths", type=float_list, default=(0.5, 1.0, 2.0),
                        help="widths of the efficiency table (default 0.5,1,2)")
    parser.add_argument("--efficiency-groups", type=int_list, default=(3,),
                        help="the g values the efficiency table times at every width (default 3)")
    parser.add_argument("--efficiency", action="store_true",
                        help="the efficiency table: the whole model in eval at every --efficiency-widths, batch 1 "
                             "and 16 (on in --full)")
    parser.add_argument("--no-deploy", dest="deploy", action="store_false",
                        help="skip the ONNX Runtime and OpenVINO rows")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--layout", default="nchw", choices=sorted(LAYOUTS),
                        help="input layout of every provider but those with a layout in their name (eager: "
                             "NCHW; eager_channels_last, naive_channels_last) (default nchw)")
    add_layer_run_options(parser, MODES, MODES)
    parser.add_argument("--levels", type=str_list, help="any of " + ",".join(LEVELS) + " (default: all; "
                        "--quick: layers,units)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="CUDA: also time every layer row replayed from a CUDA graph (GPU time without the "
                             "host path; graph_ms in the CSV, a table of its own in results.md)")
    parser.add_argument("--min-run-time", type=float, help="seconds of timing per layer measurement "
                        "(default 0.05, --quick 0.04; units/models 2x)")
    parser.add_argument("--precompile-workers", type=int, default=0,
                        help="compile the torch.compile peers in this many worker processes before timing "
                             "(fills Inductor's cache: shortens a first run on a machine with spare cores, "
                             "lengthens a run whose cache is warm; default 0: off)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--replot", metavar="DIR", help="only redraw the plots of a finished run from DIR/results.json")
    args = parser.parse_args(argv)
    check_choices(parser, "mode", args.modes, MODES)
    args.levels = args.levels or (["layers", "units"] if args.quick else list(LEVELS))
    check_choices(parser, "level", args.levels, LEVELS)
    check_choices(parser, "model", args.models, MODELS)
    return args


def deployment_providers(
    providers: list[NetworkProvider], device: torch.device, dtype: torch.dtype
) -> tuple[list[NetworkProvider], list[str]]:
    """``providers`` without the deployment runtimes that cannot run here, and one line per
    runtime left out saying why."""
    kept, skipped = [], []
    for provider in providers:
        if provider.runtime is None:
            kept.append(provider)
            continue
        reason = deploy.missing(provider.runtime)
        if reason is None and device.type != "cpu":
            reason = f"CPU only (this run is on {device.type})"
        if reason is None and provider.runtime == "onnxruntime" and dtype != torch.float32:
            reason = "float32 runs only"
        if reason is None:
            kept.append(provider)
        else:
            skipped.append(f"shufflenet-bench: skipping the {display_name(provider.name)} rows: {reason}")
    return kept, skipped


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        module, entry = SUBCOMMANDS[argv[0]]
        return getattr(importlib.import_module(f".{module}", __package__), entry)(argv[1:])
    args = parse_args(argv)
    if args.replot:
        report.replot(args.replot)
        return 0
    device = pick_device(args.device)
    if device.type == "cpu" and not _extension.available():
        raise SystemExit(f"shufflenet-bench: the C++ extension is not built ({_extension.LOAD_ERROR})")
    batch = args.batch or (128 if device.type == "cuda" else 16)
    model_batches = tuple(args.model_batch or (1, batch))
    compile_mode = args.compile_mode or ("max-autotune" if device.type == "cuda" and not args.quick else "default")
    min_run_time = args.min_run_time or (0.04 if args.quick else 0.05)
    setup = Setup(device, DTYPES[args.dtype], LAYOUTS[args.layout], compile_mode)
    warnings.filterwarnings("ignore", module="torch._inductor")
    out_dir = args.out or report.default_out_dir()
    malloc = pin_glibc_malloc() if device.type == "cpu" else None

    problems = shufflenet_problems(args.groups, args.width, batch, args.input_size) if "layers" in args.levels else []
    if args.quick:
        # The most frequent shapes: Stage 3's stride-1 pair (7 units of each network).
        problems = [p for p in problems if p.count == max(q.count for q in problems if q.model_groups == p.model_groups)]
    providers = layer_providers(device, args.providers, args.compile) if problems else []
    unit_cases = networks.unit_cases(args.groups, args.width, batch, args.input_size) if "units" in args.levels else []
    if args.quick:
        unit_cases = [c for c in unit_cases if " s1 " in c.name]
    model_cases = []
    if "models" in args.levels:
        efficiency_groups = args.efficiency_groups if args.efficiency or args.full else ()
        if "v1" in args.models:
            model_cases = networks.model_cases(args.groups, args.width, model_batches, args.input_size,
                                               args.efficiency_widths, efficiency_groups)
        if "v2" in args.models:
            model_cases += networks.model_v2_cases(args.v2_widths, model_batches, args.input_size)
    # --quick leaves the compiled unit peers to --full like the default run does.
    net_providers = [p for p in network_providers(args.compile, args.deploy)
                     if args.full or p.name != "openvino_default"]
    skipped_lines = []
    if model_cases:
        net_providers, skipped_lines = deployment_providers(net_providers, device, setup.dtype)
    for line in skipped_lines:
        print(line, file=sys.stderr)
    network_runs = [(case, provider, mode) for case in unit_cases + model_cases for mode in case.modes
                    for provider in net_providers if networks.included(case, provider, mode, args.full)]
    layer_runs = [(provider, mode) for provider in providers for mode in args.modes
                  if layers.layer_included(provider, mode, args.full)]
    total = len(problems) * len(layer_runs) + len(network_runs)
    workers = args.precompile_workers
    jobs = []
    if workers:
        jobs = precompile.compile_jobs(problems, providers, args.modes, network_runs, args.full)

    info = provenance(device, argv)
    info.update(batch=batch, model_batches=list(model_batches), dtype=args.dtype, layout=args.layout,
                compile_mode=compile_mode if args.compile else None, quick=args.quick, full=args.full,
                min_run_time_s=min_run_time, groups=list(args.groups), width=args.width, input_size=args.input_size,
                models=list(args.models),
                skipped=skipped_lines, malloc=malloc, cuda_graph=args.cuda_graph and device.type == "cuda")
    started = time.perf_counter()
    with progress_bar(total, args.no_progress) as bar, \
            tempfile.TemporaryDirectory(prefix="shufflenet-bench-onnx-") as onnx_dir:
        progress = Progress(bar)
        if jobs:
            info["precompile"] = precompile.precompile(jobs, setup, workers, lambda label: bar.set_postfix_str(
                label, refresh=True))
        roofline = measure_roofline(device, setup.dtype, max(0.2, 2 * min_run_time))
        rows = []
        if problems:
            layer_rows, roofline = layers.run_layers(problems, providers, args.modes, setup, roofline, min_run_time,
                                                     progress, full=args.full, cuda_graph=args.cuda_graph)
            rows += layer_rows
        if unit_cases or model_cases:
            try:
                rows += networks.run_networks(unit_cases + model_cases, net_providers, setup, 2 * min_run_time,
                                              progress, full=args.full, exports=deploy.ExportCache(onnx_dir))
            except deploy.OutputMismatch as error:
                raise SystemExit(f"shufflenet-bench: {error}: refusing to time a runtime that computes "
                                 "something else") from error
        progress.finish()
    info["elapsed_s"] = round(time.perf_counter() - started, 1)
    info["load_average_end"] = load_average()
    print(report.markdown(rows, info, roofline, terminal=True))
    os.makedirs(out_dir, exist_ok=True)
    report.write_csv(rows, os.path.join(out_dir, "results.csv"))
    report.write_json({"provenance": info, "roofline": report.roofline_dict(roofline),
                       "providers": {p.name: p.description for p in providers}
                       | {p.name: p.description for p in net_providers},
                       "network_weighted": report.network_weighted_speedups(rows),
                       "gemm_rate": report.gemm_rates(rows),
                       "efficiency": efficiency(rows),
                       "warnings": report.warnings_list(rows, roofline, info),
                       "results": rows}, os.path.join(out_dir, "results.json"))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(report.markdown(rows, info, roofline))
    plots = report.write_plots(rows, roofline, out_dir, info)
    print(f"shufflenet-bench: {info['elapsed_s']} s; results in {os.path.abspath(out_dir)}: results.md (every "
          f"table), results.csv, results.json" + (f", {', '.join(plots)}" if plots else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
