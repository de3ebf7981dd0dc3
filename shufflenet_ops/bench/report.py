"""Results out: markdown tables, CSV, JSON with provenance, PNG plots."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import subprocess
from collections import defaultdict
from typing import Iterable

import torch

from .. import _extension
from .roofline import Roofline


# ------------------------------------------------------------------------ provenance
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def provenance(device: torch.device, argv: list[str]) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    status = _git("status", "--porcelain")
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_gemm": _extension.cpu_gemm() if device.type == "cpu" else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "command": ["shufflenet-bench", *argv],
        # Other processes share this machine: the load average says how busy it was.
        "load_average_start": load_average(),
    }
    return info


def roofline_dict(roofline: Roofline) -> dict:
    return {
        "copy_gbs": roofline.copy_gbs,
        "copy_bytes": roofline.copy_bytes,
        "copy_ms": [roofline.copy_timing.median_ms, roofline.copy_timing.p20_ms, roofline.copy_timing.p80_ms],
        "gemm_gflops": roofline.gemm_gflops,
        "gemm_size": roofline.gemm_size,
        "gemm_ms": [roofline.gemm_timing.median_ms, roofline.gemm_timing.p20_ms, roofline.gemm_timing.p80_ms],
    }


# ----------------------------------------------------------------------------- files
def write_csv(rows: list[dict], path: str) -> None:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_json(payload: dict, path: str) -> None:
    def clean(value):
        # JSON has no NaN/inf: write null.
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    with open(path, "w") as f:
        json.dump(clean(payload), f, indent=1)


# ---------------------------------------------------------------------------- tables
def _grouped(rows: Iterable[dict], key: tuple[str, ...]) -> dict[tuple, dict[str, dict]]:
    """{key: {provider: row}}, in first-seen order."""
    out: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in key), {})[row["provider"]] = row
    return out


def _ratio(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def layer_table(rows: list[dict]) -> str:
    """One line per (layer, mode): the fused time and roofline shares, then each peer's
    time over the fused time (> 1: fused is faster)."""
    rows = [r for r in rows if r["level"] == "layer"]
    if not rows:
        return ""
    fused_name = next(r["provider"] for r in rows if r["fused"])
    peers = list(dict.fromkeys(r["provider"] for r in rows if r["provider"] != fused_name))
    head = ["layer", "n", "mode", f"{fused_name} ms [p20, p80]", "GB/s", "mem roof", "compute roof",
            *[f"vs {p}" for p in peers]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (name, mode), by_provider in _grouped(rows, ("name", "mode")).items():
        fused = by_provider.get(fused_name)
        if fused is None:
            continue
        cells = [
            name, str(fused["count"]), mode,
            f"{fused['median_ms']:.3f} [{fused['p20_ms']:.3f}, {fused['p80_ms']:.3f}]",
            f"{fused['effective_gbs']:.1f}", f"{100 * fused['memory_roof_fraction']:.0f}%",
            f"{100 * fused['compute_roof_fraction']:.0f}%",
            *[_ratio(by_provider[p]["fused_speedup"]) if p in by_provider else "-" for p in peers],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def network_weighted_speedups(rows: list[dict]) -> list[dict]:
    """Per (g, mode, provider): the time of all 1x1 layers of the network (each shape
    times its count) over the fused provider's, i.e. the speed-up on the network's 1x1
    convs as a whole."""
    totals: dict[tuple, float] = defaultdict(float)
    for r in rows:
        if r["level"] == "layer":
            totals[(r["model_groups"], r["mode"], r["provider"], r["fused"])] += r["count"] * r["median_ms"]
    fused_total = {}
    for (g, mode, provider, fused), total in totals.items():
        if fused and (g, mode) not in fused_total:
            fused_total[(g, mode)] = (provider, total)
    out = []
    for (g, mode, provider, _), total in totals.items():
        fused_provider, reference = fused_total.get((g, mode), (None, float("nan")))
        out.append({"model_groups": g, "mode": mode, "provider": provider, "total_ms": total,
                    "fused_provider": fused_provider, "fused_speedup": total / reference})
    return out


def gemm_rates(rows: list[dict]) -> dict[int, float]:
    """Per g: the fused forward's FLOP rate over all 1x1 layers of the network (each shape
    times its count) as a share of the same-run, same-FLOPs dense ``torch.mm`` rates, i.e.
    (time the dense GEMMs would take for the same FLOPs) / (time the fused layers take)."""
    dense_ms: dict[int, float] = defaultdict(float)
    fused_ms: dict[int, float] = defaultdict(float)
    for r in rows:
        if r["level"] == "layer" and r["fused"] and r["mode"] == "forward" and r.get("gemm_rate") is not None:
            fused_ms[r["model_groups"]] += r["count"] * r["median_ms"]
            dense_ms[r["model_groups"]] += r["count"] * r["median_ms"] * r["gemm_rate"]
    return {g: dense_ms[g] / fused_ms[g] for g in fused_ms}


def weighted_table(rows: list[dict]) -> str:
    summary = network_weighted_speedups(rows)
    if not summary:
        return ""
    rates = gemm_rates(rows)
    fused_name = summary[0]["fused_provider"]
    peers = list(dict.fromkeys(s["provider"] for s in summary if s["provider"] != fused_name))
    head = ["all 1x1 layers (x count)", "mode", f"{fused_name} ms", *[f"vs {p}" for p in peers]]
    if rates:
        head.append("GEMM rate (vs same-FLOPs mm)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    grouped: dict[tuple, dict[str, dict]] = {}
    for s in summary:
        grouped.setdefault((s["model_groups"], s["mode"]), {})[s["provider"]] = s
    for (g, mode), by_provider in grouped.items():
        fused = by_provider.get(fused_name)
        if fused is None:
            continue
        cells = [f"g{g}", mode, f"{fused['total_ms']:.2f}",
                 *[_ratio(by_provider[p]["fused_speedup"]) if p in by_provider else "-" for p in peers]]
        if rates:
            cells.append(f"{100 * rates[g]:.0f}%" if mode == "forward" and g in rates else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def network_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r["level"] in ("unit", "model")]
    if not rows:
        return ""
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fused_name = next(r["provider"] for r in rows if r["fused"])
    peers = [p for p in providers if p != fused_name]
    head = ["network", "batch", "mode", *[f"{p} img/s" for p in providers], *[f"vs {p}" for p in peers]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (name, mode), by_provider in _grouped(rows, ("name", "mode")).items():
        first = next(iter(by_provider.values()))
        cells = [name, str(first["batch"]), mode,
                 *[f"{by_provider[p]['images_per_s']:.1f}" if p in by_provider else "-" for p in providers],
                 *[_ratio(by_provider[p]["fused_speedup"]) if p in by_provider else "-" for p in peers]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict], info: dict, roofline: Roofline | None) -> str:
    parts = [
        f"# shufflenet-bench: {info.get('gpu') or info.get('cpu')} ({info['device']}), "
        f"torch {info['torch']}, {info['date']}",
    ]
    if roofline is not None:
        parts.append(
            f"Roofs measured in this run: copy {roofline.copy_gbs:.1f} GB/s, "
            f"GEMM ({roofline.gemm_size}^3) {roofline.gemm_gflops:.1f} GFLOP/s. "
            "`vs X` = X's median time / fused median time, same run (> 1: fused is faster)."
        )
    for title, table in (("Layers", layer_table(rows)), ("All 1x1 layers of the network, weighted by count", weighted_table(rows)),
                         ("Units and models", network_table(rows))):
        if table:
            parts.append(f"## {title}\n\n{table}")
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedups(rows: list[dict], path: str) -> None:
    """Per layer shape and peer, the peer's time over the fused time; one panel per mode."""
    rows = [r for r in rows if r["level"] == "layer"]
    plt = _pyplot()
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    peers = list(dict.fromkeys(r["provider"] for r in rows if not r["fused"]))
    index = {(r["name"], r["mode"], r["provider"]): r for r in rows}
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 0.55 * len(names) + 2), 3.2 * len(modes)), squeeze=False)
    width = 0.8 / max(1, len(peers))
    for ax, mode in zip(axes[:, 0], modes):
        for j, peer in enumerate(peers):
            values = [index.get((n, mode, peer), {}).get("fused_speedup", float("nan")) for n in names]
            ax.bar([i + (j - (len(peers) - 1) / 2) * width for i in range(len(names))], values, width, label=peer)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("peer time / fused time")
        ax.set_title(f"{mode}: speed-up of fused over each peer (> 1: fused faster)")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names if ax is axes[-1, 0] else [""] * len(names), rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(peers))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roofline(rows: list[dict], roofline: Roofline, path: str, mode: str = "forward") -> None:
    """Left: effective GB/s (model bytes / time) per layer and provider against the copy
    bandwidth. Right: the classic roofline, attained GFLOP/s against arithmetic intensity
    (useful FLOPs per model byte) under min(copy GB/s x intensity, GEMM GFLOP/s)."""
    rows = [r for r in rows if r["level"] == "layer" and r["mode"] == mode]
    if not rows:
        return
    plt = _pyplot()
    names = list(dict.fromkeys(r["name"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    index = {(r["name"], r["provider"]): r for r in rows}
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(12, 0.5 * len(names) + 6), 5),
                                      gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(providers)
    for j, provider in enumerate(providers):
        values = [index.get((n, provider), {}).get("effective_gbs", float("nan")) for n in names]
        left.bar([i + (j - (len(providers) - 1) / 2) * width for i in range(len(names))], values, width, label=provider)
    left.axhline(roofline.copy_gbs, color="red", linestyle="--", label=f"copy {roofline.copy_gbs:.1f} GB/s")
    left.set_xticks(range(len(names)))
    left.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    left.set_ylabel("effective GB/s (model bytes / median time)")
    left.set_title(f"{mode}: bandwidth against the copy roof")
    left.legend(fontsize=7)
    left.grid(axis="y", alpha=0.3)

    intensities = []
    for provider in providers:
        points = [(r["useful_flops"] / r["model_bytes"], r["gflops"]) for r in rows if r["provider"] == provider]
        intensities += [p[0] for p in points]
        right.scatter([p[0] for p in points], [p[1] for p in points], s=14, label=provider)
    lo, hi = min(intensities) / 2, max(intensities) * 4
    ridge = roofline.gemm_gflops / roofline.copy_gbs
    xs = sorted({lo, hi, min(max(ridge, lo), hi)})
    right.plot(xs, [min(roofline.copy_gbs * x, roofline.gemm_gflops) for x in xs], color="red", linestyle="--",
               label="roof (copy, GEMM)")
    right.set_xscale("log")
    right.set_yscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for axis in (right.xaxis, right.yaxis):  # plain numbers, no labels on minor ticks
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    right.set_xlabel("useful FLOPs / model byte")
    right.set_ylabel("GFLOP/s")
    right.set_title("roofline")
    right.legend(fontsize=7)
    right.grid(which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_networks(rows: list[dict], path: str) -> None:
    rows = [r for r in rows if r["level"] in ("unit", "model")]
    if not rows:
        return
    plt = _pyplot()
    keys = list(dict.fromkeys((r["name"], r["mode"]) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    index = {(r["name"], r["mode"], r["provider"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(keys) + 2), 4.5))
    width = 0.8 / len(providers)
    for j, provider in enumerate(providers):
        values = [index.get((*k, provider), {}).get("images_per_s", float("nan")) for k in keys]
        ax.bar([i + (j - (len(providers) - 1) / 2) * width for i in range(len(keys))], values, width, label=provider)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{n}\n{m}" for n, m in keys], rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("images / s")
    ax.set_title("units and models: throughput")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(rows: list[dict], roofline: Roofline, out_dir: str) -> None:
    if any(r["level"] == "layer" for r in rows):
        plot_speedups(rows, os.path.join(out_dir, "speedup.png"))
        plot_roofline(rows, roofline, os.path.join(out_dir, "roofline.png"))
    plot_networks(rows, os.path.join(out_dir, "networks.png"))


def replot(out_dir: str) -> None:
    """Redraw the PNGs of a finished run from its results.json."""
    from .timing import Timing

    with open(os.path.join(out_dir, "results.json")) as f:
        payload = json.load(f)
    roof = payload["roofline"]
    roofline = Roofline(roof["copy_gbs"], roof["gemm_gflops"], Timing(*roof["copy_ms"], -1),
                        Timing(*roof["gemm_ms"], -1), roof["copy_bytes"], roof["gemm_size"])
    rows = [{k: (float("nan") if v is None else v) for k, v in row.items()} for row in payload["results"]]
    write_plots(rows, roofline, out_dir)
