"""shufflenet-bench: the fused grouped 1x1 conv + channel shuffle against its peers.

    shufflenet-bench                         # best device present, the full suite
    shufflenet-bench --quick --out DIR       # about a minute on a 2-core CPU
    python -m shufflenet_ops.bench --device cuda --quick --out DIR

Levels: every distinct 1x1 conv shape of ShuffleNet V1 (forward, backward, forward+backward;
providers in ``shufflenet_ops.bench.providers``), a ShuffleNet unit (stride 1 and 2) and the
whole network (eval inference and one SGD training step). Prints markdown tables; with
``--out`` writes results.csv, results.json (with provenance and the roofs measured in the
same run), results.md and PNG plots.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

from .. import _extension
from . import layers, networks, precompile, report
from .problem import MODES, shufflenet_problems
from .providers import Setup, layer_providers, network_providers
from .roofline import measure_roofline

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
LEVELS = ("layers", "units", "models")


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="shufflenet-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda if present, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="the two most frequent layer shapes per g, the stride-1 unit without the compiled "
                             "peers, no whole model, shorter timing")
    parser.add_argument("--out", help="directory for results.csv/json/md and the PNG plots")
    parser.add_argument("--groups", type=_int_list, default=(3, 8), help="ShuffleNet g values (default 3,8)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    parser.add_argument("--batch", type=int, help="layer and unit batch (default: 16 on CPU, 128 on CUDA)")
    parser.add_argument("--model-batch", type=int, help="whole-model batch (default: --batch)")
    parser.add_argument("--input-size", type=int, default=224, help="image size the shapes derive from")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--layout", default="nchw", choices=sorted(LAYOUTS),
                        help="input layout of every provider but eager_channels_last")
    parser.add_argument("--modes", type=_str_list, default=list(MODES), help="layer modes: " + ",".join(MODES))
    parser.add_argument("--providers", type=_str_list, help="layer providers to run (default: all present)")
    parser.add_argument("--levels", type=_str_list, help="any of " + ",".join(LEVELS) + " (default: all; "
                        "--quick: layers,units)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile peers")
    parser.add_argument("--full", action="store_true",
                        help="also torch.compile(fused) of the whole models and the compiled whole-model training "
                             "steps (Inductor needs minutes per network on a small CPU, so the default has only "
                             "torch.compile(naive) in whole-model eval)")
    parser.add_argument("--compile-mode", help="torch.compile mode (default: max-autotune on CUDA, "
                        "default on CPU and in --quick)")
    parser.add_argument("--min-run-time", type=float, help="seconds of timing per layer measurement "
                        "(default 0.05, --quick 0.04; units/models 2x)")
    parser.add_argument("--precompile-workers", type=int, default=0,
                        help="compile the torch.compile peers in this many worker processes before timing "
                             "(fills Inductor's cache: shortens a first run on a machine with spare cores, "
                             "lengthens a run whose cache is warm; default 0: off)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--replot", metavar="DIR", help="only redraw the plots of a finished run from DIR/results.json")
    args = parser.parse_args(argv)
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    args.levels = args.levels or (["layers", "units"] if args.quick else list(LEVELS))
    for level in args.levels:
        if level not in LEVELS:
            parser.error(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("shufflenet-bench: --device cuda, but no CUDA device is available")
    return torch.device(name)


class _Progress:
    """Called with a label as each measurement starts: counts the one before as done and
    shows what runs now (a compile can take a while)."""

    def __init__(self, bar) -> None:
        self.bar, self.running = bar, False

    def __call__(self, label: str) -> None:
        self.finish()
        self.bar.set_postfix_str(label, refresh=True)
        self.running = True

    def finish(self) -> None:
        if self.running:
            self.bar.update(1)
        self.running = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.replot:
        report.replot(args.replot)
        return 0
    device = pick_device(args.device)
    if device.type == "cpu" and not _extension.available():
        raise SystemExit(f"shufflenet-bench: the C++ extension is not built ({_extension.LOAD_ERROR})")
    batch = args.batch or (128 if device.type == "cuda" else 16)
    model_batch = args.model_batch or batch
    compile_mode = args.compile_mode or ("max-autotune" if device.type == "cuda" and not args.quick else "default")
    min_run_time = args.min_run_time or (0.04 if args.quick else 0.05)
    setup = Setup(device, DTYPES[args.dtype], LAYOUTS[args.layout], compile_mode)
    warnings.filterwarnings("ignore", module="torch._inductor")

    problems = shufflenet_problems(args.groups, args.width, batch, args.input_size) if "layers" in args.levels else []
    if args.quick:
        # The most frequent shapes: Stage 3's stride-1 pair (7 units of each network).
        problems = [p for p in problems if p.count == max(q.count for q in problems if q.model_groups == p.model_groups)]
    providers = layer_providers(device, args.providers, args.compile) if problems else []
    unit_cases = networks.unit_cases(args.groups, args.width, batch, args.input_size) if "units" in args.levels else []
    if args.quick:
        unit_cases = [c for c in unit_cases if " s1 " in c.name]
    model_cases = networks.model_cases(args.groups, args.width, model_batch, args.input_size) if "models" in args.levels else []
    # Compiling a training step takes 10-15 s per network on a 2-core CPU: --quick leaves
    # the compiled peers to the layer level.
    net_providers = network_providers(args.compile and not args.quick)
    network_runs = [(case, provider, mode) for case in unit_cases + model_cases for mode in networks.NETWORK_MODES
                    for provider in net_providers
                    if not networks.compiled_peer_skipped(case, provider, mode, args.full)]
    total = len(problems) * len(providers) * len(args.modes) + len(network_runs)
    workers = args.precompile_workers
    jobs = []
    if workers:
        jobs = precompile.compile_jobs(problems, providers, args.modes, network_runs, args, batch, model_batch)

    info = report.provenance(device, argv)
    info.update(batch=batch, model_batch=model_batch, dtype=args.dtype, layout=args.layout,
                compile_mode=compile_mode if args.compile else None, quick=args.quick, full=args.full,
                min_run_time_s=min_run_time,
                groups=list(args.groups), width=args.width, input_size=args.input_size)
    started = time.perf_counter()
    from tqdm import tqdm

    with tqdm(total=total, desc="shufflenet-bench", unit="run", file=sys.stderr, disable=args.no_progress,
              dynamic_ncols=True) as bar:
        progress = _Progress(bar)
        if jobs:
            info["precompile"] = precompile.precompile(jobs, setup, workers, lambda label: bar.set_postfix_str(
                label, refresh=True))
        roofline = measure_roofline(device, setup.dtype, max(0.3, 3 * min_run_time))
        rows = []
        if problems:
            rows += layers.run_layers(problems, providers, args.modes, setup, roofline, min_run_time, progress)
        if unit_cases or model_cases:
            rows += networks.run_networks(unit_cases + model_cases, net_providers, list(networks.NETWORK_MODES),
                                          setup, 2 * min_run_time, progress, compile_model_training=args.full)
        progress.finish()
    info["elapsed_s"] = round(time.perf_counter() - started, 1)
    info["load_average_end"] = report.load_average()
    text = report.markdown(rows, info, roofline)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        report.write_csv(rows, os.path.join(args.out, "results.csv"))
        report.write_json({"provenance": info, "roofline": report.roofline_dict(roofline),
                           "providers": {p.name: p.description for p in providers}
                           | {p.name: p.description for p in net_providers},
                           "network_weighted": report.network_weighted_speedups(rows),
                           "gemm_rate": report.gemm_rates(rows),
                           "results": rows}, os.path.join(args.out, "results.json"))
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text)
        report.write_plots(rows, roofline, args.out)
        print(f"wrote {args.out}: results.csv, results.json, results.md and plots ({info['elapsed_s']} s)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
