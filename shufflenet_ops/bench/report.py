"""Results out: markdown tables, CSV, JSON (with ``provenance.provenance``), PNG plots."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
from collections import defaultdict
from typing import Iterable

from .efficiency import PAPER_EFFICIENCY, efficiency
from .problem import LAYER_NAME_LEGEND
from .providers import display_name, short_name
from .roofline import Roofline
from .timing import UNSTEADY_SPREAD


def roofline_dict(roofline: Roofline) -> dict:
    return {
        "copy_gbs": roofline.copy_gbs,
        "copy_bytes": roofline.copy_bytes,
        "copy_ms": [roofline.copy_timing.median_ms, roofline.copy_timing.p20_ms, roofline.copy_timing.p80_ms],
        "gemm_gflops": roofline.gemm_gflops,
        "gemm_label": roofline.gemm_label,
        "gemm_ms": [roofline.gemm_timing.median_ms, roofline.gemm_timing.p20_ms, roofline.gemm_timing.p80_ms],
        "gemm_rates": roofline.gemm_rates,
    }


def roofline_from_dict(roof: dict) -> Roofline:
    from .timing import Timing

    # Results from before the best-of-several roof name one square torch.mm size.
    label = roof.get("gemm_label") or f"mm {roof['gemm_size']}^3"
    return Roofline(roof["copy_gbs"], roof["gemm_gflops"], Timing(*roof["copy_ms"], -1),
                    Timing(*roof["gemm_ms"], -1), roof["copy_bytes"], label, roof.get("gemm_rates"))


# ----------------------------------------------------------------------------- files
def write_csv(rows: list[dict], path: str) -> None:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:  # lists (the round medians) as one space-separated cell
            writer.writerow({k: " ".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else v
                             for k, v in row.items()})


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


def default_out_dir(now: datetime.datetime | None = None) -> str:
    """Where a run writes its files when ``--out`` is not given: a new folder per run under
    ./shufflenet-bench-results, named by its local start time."""
    now = now or datetime.datetime.now()
    return os.path.join("shufflenet-bench-results", now.strftime("%Y-%m-%d_%H%M%S"))


# ---------------------------------------------------------------------------- tables
RATIO_LEGEND = (
    "`vs X` = X's median time / the fused median time, from the same interleaved rounds "
    "(> 1: fused is faster; < 1: fused loses). `*`: the interleaved rounds disagree by more than "
    f"{UNSTEADY_SPREAD:g}x (see the warnings): do not trust that ratio alone."
)


def _table(head: list[str], body: list[list[str]]) -> str:
    """A markdown table padded to aligned columns, so it also reads as plain text."""
    widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def _grouped(rows: Iterable[dict], key: tuple[str, ...]) -> dict[tuple, dict[str, dict]]:
    """{key: {provider: row}}, in first-seen order."""
    out: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in key), {})[row["provider"]] = row
    return out


def _ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _ratio_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return _ratio(row["fused_speedup"]) + ("*" if row.get("unsteady") else "")


def _peers(rows: list[dict], order: Iterable[str] | None = None) -> list[str]:
    names = list(dict.fromkeys(r["provider"] for r in rows if not r["fused"] or r["provider"].startswith("compile")))
    fused_name = next((r["provider"] for r in rows if r["fused"]), None)
    names = [n for n in names if n != fused_name]
    if order is not None:
        order = list(order)
        names.sort(key=lambda n: order.index(n) if n in order else len(order))
    return names


def _fused_name(rows: list[dict]) -> str | None:
    return next((r["provider"] for r in rows if r["fused"]), None)


def _model_label(row: dict) -> str:
    if row["name"].startswith("ShuffleNet V2"):
        return f"V2 {row['width']:g}x"
    return f"g{row['groups']} {row['width']:g}x"


def _latency_or_throughput(row: dict) -> str:
    """Batch 1: the latency (median, p20-p80); larger batches: images per second."""
    if row["batch"] == 1:
        return f"{row['median_ms']:.2f} ms ({row['p20_ms']:.2f}-{row['p80_ms']:.2f})"
    return f"{row['images_per_s']:.0f} img/s"


HEADLINE_PEERS = ("naive", "compile_naive", "compile_fused", "onnxruntime", "openvino", "openvino_default")


def headline_table(rows: list[dict]) -> str:
    """Whole model, eval, at every batch size: the fused model against eager naive,
    torch.compile(naive), ONNX Runtime and OpenVINO."""
    rows = [r for r in rows if r["level"] == "model" and r["mode"] == "eval" and not r.get("extra_width")]
    fused_name = _fused_name(rows)
    if not rows or fused_name is None:
        return ""
    peers = [p for p in HEADLINE_PEERS if any(r["provider"] == p for r in rows)]
    head = ["model", "batch", "fused", *[f"vs {short_name(p)}" for p in peers]]
    body = []
    for _, by_provider in _grouped(rows, ("name", "batch")).items():
        fused = by_provider.get(fused_name)
        if fused is None:
            continue
        body.append([_model_label(fused), str(fused["batch"]), _latency_or_throughput(fused),
                     *[_ratio_cell(by_provider.get(p)) for p in peers]])
    return _table(head, body)


def headline_legend(rows: list[dict]) -> str:
    versions = {r["provider"]: r["runtime_version"] for r in rows if r.get("runtime_version")}
    names = [f"{short_name(p)} = {display_name(p)}" + (f" {versions[p]}" if p in versions else "")
             for p in HEADLINE_PEERS if any(r["provider"] == p for r in rows)]
    return ("fused: this package's model, eager; batch 1: latency, median (p20-p80); larger batches: images/s. "
            + "; ".join(names) + ".")


def network_table(rows: list[dict], level: str) -> str:
    """Units or whole models, every mode and batch: the fused time (batch 1) or throughput,
    and each peer's time over the fused time."""
    rows = [r for r in rows if r["level"] == level and not r.get("extra_width")]
    fused_name = _fused_name(rows)
    if not rows or fused_name is None:
        return ""
    peers = _peers(rows, ("naive", "naive_channels_last", "fuse_naive", "compile_naive", "compile_fused",
                          *HEADLINE_PEERS))
    head = [level, "batch", "mode", "fused", *[f"vs {short_name(p)}" for p in peers]]
    body = []
    for _, by_provider in _grouped(rows, ("name", "batch", "mode")).items():
        fused = by_provider.get(fused_name)
        if fused is None:
            continue
        name = _model_label(fused) if level == "model" else fused["name"].removeprefix("unit ")
        body.append([name, str(fused["batch"]), fused["mode"], _latency_or_throughput(fused),
                     *[_ratio_cell(by_provider.get(p)) for p in peers]])
    return _table(head, body)


def _width_label(width: float) -> str:
    return f"{width:g}x"


def efficiency_table(rows: list[dict]) -> str:
    """Per provider and batch: the model's time at each width and the efficiency between
    neighbouring widths (time ratio / MAC ratio), beside the paper's 0.65."""
    entries = efficiency(rows)
    if not entries:
        return ""
    widths = sorted({e["width_small"] for e in entries} | {e["width_large"] for e in entries})
    pairs = sorted({(e["width_small"], e["width_large"]) for e in entries})
    head = ["provider", "g", "batch", *[f"ms {_width_label(w)}" for w in widths],
            *[f"{_width_label(a)}->{_width_label(b)}" for a, b in pairs]]
    grouped: dict[tuple, dict] = {}
    for e in entries:
        item = grouped.setdefault((e["groups"], e["batch"], e["provider"]), {"ms": {}, "eff": {}})
        item["ms"][e["width_small"]], item["ms"][e["width_large"]] = e["ms_small"], e["ms_large"]
        item["eff"][(e["width_small"], e["width_large"])] = e["efficiency"]
    body = []
    for (g, batch, provider), item in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        body.append([display_name(provider), str(g), str(batch),
                     *[f"{item['ms'][w]:.1f}" if w in item["ms"] else "-" for w in widths],
                     *[f"{item['eff'][p]:.2f}" if p in item["eff"] else "-" for p in pairs]])
    macs = {}
    for e in entries:
        macs[e["width_small"]], macs[e["width_large"]] = e["macs_small"], e["macs_large"]
    mac_text = ", ".join(f"{_width_label(w)} {macs[w] / 1e6:.0f}M" for w in widths if w in macs)
    ratio_text = ", ".join(f"{_width_label(a)}->{_width_label(b)} {macs[b] / macs[a]:.2f}x" for a, b in pairs)
    return (_table(head, body) + f"\n\nMACs per image: {mac_text} (ratios {ratio_text}). Efficiency = time ratio / "
            f"MAC ratio between neighbouring widths: 1.00 = time scales with the arithmetic; the paper measured "
            f"{PAPER_EFFICIENCY:.2f} on ARM (4x fewer MACs ran 2.6x faster).")


def layer_table(rows: list[dict], modes: Iterable[str] | None = None, detail: bool = True,
                roof_label: str = "the best dense GEMM") -> str:
    """One line per (layer, mode): the fused time, with ``detail`` its GB/s and roof shares
    (the compute roof named by ``roof_label``), then each peer's time over the fused time."""
    rows = [r for r in rows if r["level"] == "layer" and (modes is None or r["mode"] in modes)]
    fused_name = _fused_name(rows)
    if not rows or fused_name is None:
        return ""
    peers = _peers(rows)
    head = ["layer", *(["count"] if detail else []), *(["mode"] if modes is None or len(list(modes)) > 1 else []),
            "fused ms [p20, p80]" if detail else "fused ms",
            *(["GB/s", "% copy BW", f"% of {roof_label}"] if detail else []), *[f"vs {short_name(p)}" for p in peers]]
    body = []
    for (name, mode), by_provider in _grouped(rows, ("name", "mode")).items():
        fused = by_provider.get(fused_name)
        if fused is None:
            continue
        time_cell = (f"{fused['median_ms']:.3f} [{fused['p20_ms']:.3f}, {fused['p80_ms']:.3f}]" if detail
                     else f"{fused['median_ms']:.3f}")
        body.append([
            name, *([str(fused["count"])] if detail else []), *([mode] if "mode" in head else []), time_cell,
            *([f"{fused['effective_gbs']:.1f}", f"{100 * fused['memory_roof_fraction']:.0f}%",
               f"{100 * fused['compute_roof_fraction']:.0f}%"] if detail else []),
            *[_ratio_cell(by_provider.get(p)) for p in peers],
        ])
    return _table(head, body)


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
    head = ["g", "mode", "fused ms", *[f"vs {short_name(p)}" for p in peers]]
    if rates:
        head.append("GEMM rate")
    grouped: dict[tuple, dict[str, dict]] = {}
    for s in summary:
        grouped.setdefault((s["model_groups"], s["mode"]), {})[s["provider"]] = s
    body = []
    for (g, mode), by_provider in grouped.items():
        fused = by_provider.get(fused_name)
        if fused is None:
            continue
        cells = [f"g{g}", mode, f"{fused['total_ms']:.2f}",
                 *[_ratio(by_provider[p]["fused_speedup"]) if p in by_provider else "-" for p in peers]]
        if rates:
            cells.append(f"{100 * rates[g]:.0f}%" if mode == "forward" and g in rates else "-")
        body.append(cells)
    return _table(head, body)


WEIGHTED_LEGEND = (
    "Every 1x1 layer of the network, each shape's time times its count. GEMM rate: the time dense "
    "square torch.mm calls of the same FLOPs take (timed in the same rounds) over the fused layers' time."
)


def _layer_peers_legend(rows: list[dict]) -> str:
    peers = _peers([r for r in rows if r["level"] == "layer"])
    return "; ".join(f"{short_name(p)} = {display_name(p)}" for p in peers)


def busy_machine(info: dict | None) -> str | None:
    """A warning when other work competed for the cores: the load average (1 minute) at the
    start or the end of the run above the cores this run's threads leave free, plus one.
    (A parallel region waits for its slowest thread; with another busy process on the
    machine that thread is often descheduled for a whole time slice.)"""
    if not info or not info.get("cpu_count") or info.get("device") != "cpu":
        return None
    loads = [v[0] for v in (info.get("load_average_start"), info.get("load_average_end")) if v]
    # This run itself accounts for up to torch_threads of the load.
    limit = max(info["cpu_count"], info.get("torch_threads") or 1) + 1
    if loads and max(loads) > limit:
        return (f"busy machine: load average {max(loads):.1f} on {info['cpu_count']} cores (this run counts for up "
                f"to {info.get('torch_threads')}): other processes competed for the cores, and multi-threaded calls "
                "slow down by up to a scheduler time slice each; rerun on a quiet machine before quoting a ratio")
    return None


def warnings_list(rows: list[dict], roofline: Roofline | None = None, info: dict | None = None) -> list[str]:
    """The machine was busy (``busy_machine``); rows that contradict each other or
    themselves: a peer whose ratio to fused changes by more than ``UNSTEADY_SPREAD`` across
    the interleaved rounds (worst first), a backward slower than the same layer's
    forward+backward, a layer above the compute roof."""
    busy = busy_machine(info)
    unsteady = []
    for r in rows:
        if not r.get("unsteady") or r["provider"] == _fused_name([x for x in rows if x["level"] == r["level"]]):
            continue
        what = r["name"] + (f" batch {r['batch']}" if r["level"] != "layer" else "") + f" {r['mode']}"
        detail = f"vs {display_name(r['provider'])} {r['fused_speedup']:.2f}x"
        spread = r.get("round_spread", 1.0)
        if "speedup_round_min" in r:
            detail += f", {r['speedup_round_min']:.2f}x-{r['speedup_round_max']:.2f}x across the rounds"
            spread = max(spread, r["speedup_round_max"] / max(r["speedup_round_min"], 1e-12))
        unsteady.append((spread, f"unsteady: {what}: {detail}"))
    out = ([busy] if busy else []) + [text for _, text in sorted(unsteady, key=lambda item: -item[0])]
    by_key = {(r["name"], r["mode"], r["provider"]): r for r in rows if r["level"] == "layer"}
    for (name, mode, provider), r in by_key.items():
        both = by_key.get((name, "forward_backward", provider))
        if mode == "backward" and both is not None and r["median_ms"] > both["median_ms"]:
            out.append(f"contradiction: {name} {display_name(provider)}: backward {r['median_ms']:.2f} ms > "
                       f"forward+backward {both['median_ms']:.2f} ms (one of the two was disturbed: rerun before "
                       "quoting either)")
    if roofline is not None:
        for r in rows:
            if r["level"] == "layer" and r.get("compute_roof_fraction", 0) > 1:
                out.append(f"above the compute roof: {r['name']} {r['mode']} {display_name(r['provider'])} "
                           f"{100 * r['compute_roof_fraction']:.0f}% of the best dense GEMM (the machine's speed "
                           "changed during the run)")
    return out


TERMINAL_WARNINGS = 10


def _title(info: dict) -> str:
    precisions = ", ".join(info["precisions"]) if info.get("precisions") else info.get("dtype", "float32")
    return (f"shufflenet-bench: {info.get('gpu') or info.get('cpu')} ({info['device']}, "
            f"{info.get('torch_threads')} threads), torch {info['torch']}, {precisions}, "
            f"{info['date'][:16].replace('T', ' ')} UTC")


def _roof_line(roofline: Roofline) -> str:
    return (f"Roofs measured in this run: copy {roofline.copy_gbs:.1f} GB/s (256 MiB tensor copy, read + write); "
            f"compute {roofline.gemm_gflops:.1f} GFLOP/s, the best dense GEMM of the run ({roofline.gemm_label}; "
            "tried: " + ", ".join(f"{k} {v:.0f}" for k, v in (roofline.gemm_rates or {}).items()) + " GFLOP/s; "
            "CL = channels_last, run by oneDNN).")


def sections(rows: list[dict], info: dict, roofline: Roofline | None, terminal: bool) -> list[tuple[str, str]]:
    """(title, body) of each part of the report; ``terminal``: the short form printed at
    the end of a run (forward-only layer table, no roof columns), else the full results.md."""
    out = []
    headline = headline_table(rows)
    if headline:
        out.append(("Whole model, eval (inference)", headline + "\n\n" + headline_legend(rows)))
    eff = efficiency_table(rows)
    if eff:
        out.append(("Efficiency across widths (the paper's yardstick)", eff))
    for level, title in (("model", "Whole model, every mode"), ("unit", "ShuffleNet units")):
        table = network_table(rows, level)
        if table and not (terminal and level == "model"):
            out.append((title, table))
    weighted = weighted_table(rows)
    if weighted:
        out.append(("All 1x1 layers of the network", weighted + "\n\n" + WEIGHTED_LEGEND))
    if terminal:
        layers = layer_table(rows, modes=("forward",), detail=False)
    else:
        layers = layer_table(rows, roof_label=roofline.gemm_label if roofline is not None else "the best dense GEMM")
    if layers:
        legend = f"{LAYER_NAME_LEGEND}. {_layer_peers_legend(rows)}."
        if not terminal:
            legend += " count: layers of this shape in the network."
        if not terminal and roofline is not None:
            legend += (" GB/s: the provider's modelled bytes / time; % copy BW: that over the copy bandwidth; "
                       f"% of {roofline.gemm_label}: useful FLOPs / time over the rate of that dense GEMM, the "
                       "best of the run (the compute roof).")
        out.append(("Layers, forward" if terminal else "Layers", layers + "\n\n" + legend))
    graph = graph_table(rows, modes=("forward",) if terminal else None)
    if graph:
        out.append(("Layers, CUDA-graph replay", graph + "\n\n" + GRAPH_LEGEND))
    return out


GRAPH_LEGEND = (
    "The same calls replayed from a CUDA graph (triton.testing.do_bench_cudagraph): the GPU time without the "
    "Python, dispatcher and launch path in front of each call, which the tables above include. `vs X` = X's "
    "graph time / the fused graph time. A peer compiled in a mode with CUDA graphs (max-autotune) already "
    "replays Inductor's own graphs: its wall time stands in (`graph_source` in the CSV)."
)


def graph_table(rows: list[dict], modes: Iterable[str] | None = None) -> str:
    """``layer_table`` of the CUDA-graph replay times (rows without one left out)."""
    timed = [{**r, "median_ms": r["graph_ms"], "fused_speedup": r.get("graph_fused_speedup", float("nan")),
              "unsteady": False}
             for r in rows if r["level"] == "layer" and isinstance(r.get("graph_ms"), float)
             and math.isfinite(r["graph_ms"])]
    return layer_table(timed, modes=modes, detail=False)


def kernels_markdown(rows: list[dict], info: dict, rooflines: dict[str, Roofline], terminal: bool = False) -> str:
    """The report of ``shufflenet-bench kernels``: per precision, the layer table (wall time)
    and the CUDA-graph table; ``terminal``: without the roof columns."""
    parts = [f"# {_title(info)}", RATIO_LEGEND]
    for name, roofline in rooflines.items():
        these = [r for r in rows if r.get("precision") == name]
        if not these:
            continue
        dtype, layout = these[0].get("dtype", ""), these[0].get("layout", "")
        head = f"## {name}: {dtype}, {layout} inputs"
        if not terminal:
            head += "\n\n" + _roof_line(roofline)
        table = layer_table(these, detail=not terminal, roof_label=roofline.gemm_label)
        timer = "triton.testing.do_bench" if info.get("device") == "cuda" else "torch.utils.benchmark"
        parts.append(f"{head}\n\n### Wall time ({timer})\n\n{table}")
        graph = graph_table(these)
        if graph:
            parts.append(f"### CUDA-graph replay (GPU time)\n\n{graph}")
    legend = f"{LAYER_NAME_LEGEND}. {_layer_peers_legend(rows)}."
    if any(isinstance(r.get("graph_ms"), float) for r in rows):
        legend += " " + GRAPH_LEGEND
    parts.append(legend)
    text = "\n\n".join(parts) + "\n"
    return _wrap(text) if terminal else text


TERMINAL_COLUMNS = 88


def _wrap(text: str) -> str:
    """Prose paragraphs wrapped for a terminal; tables and list items left as they are."""
    import textwrap

    return "\n".join(line if line.startswith("|") else textwrap.fill(line, TERMINAL_COLUMNS, subsequent_indent=(
        "  " if line.startswith("- ") else "")) for line in text.splitlines())


def markdown(rows: list[dict], info: dict, roofline: Roofline | None, terminal: bool = False) -> str:
    """The report: the full results.md, or (``terminal``) the short form printed at the end
    of a run, its prose wrapped to ``TERMINAL_COLUMNS``."""
    text = _markdown(rows, info, roofline, terminal)
    return _wrap(text) if terminal else text


def _markdown(rows: list[dict], info: dict, roofline: Roofline | None, terminal: bool) -> str:
    parts = [f"# {_title(info)}", RATIO_LEGEND]
    if roofline is not None and not terminal:
        parts.append(_roof_line(roofline))
    parts += [f"## {title}\n\n{body}" for title, body in sections(rows, info, roofline, terminal)]
    warned = warnings_list(rows, roofline, info)
    if warned:
        shown = warned[:TERMINAL_WARNINGS] if terminal else warned
        more = len(warned) - len(shown)
        parts.append("## Warnings\n\n" + "\n".join(f"- WARN {w}" for w in shown)
                     + (f"\n- ... and {more} more in results.md" if more else ""))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis, ratio: bool = False) -> None:
    """Plain numbers on a log axis (``2x`` for ratios), not 10^0-style labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x" if ratio else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _plot_title(info: dict | None, what: str, batch: int | str | None = None) -> str:
    if not info:
        return what
    device = info.get("gpu") or info.get("cpu") or info.get("device", "")
    parts = [what, f"{device}, {info.get('torch_threads', '?')} threads"]
    if batch is not None:
        parts.append(f"batch {batch}")
    parts.append(info.get("dtype", "float32"))
    return parts[0] + "\n" + ", ".join(parts[1:])


def _figure_legend(fig, axes, title: str, columns: int = 4) -> None:
    """One legend for the whole figure, under its title and above the panels (a legend
    inside a panel hides bars), every series once."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    rows = -(-len(handles) // columns)
    height = fig.get_figheight()
    title_bottom = 1 - 0.5 / height  # two lines of 11 pt
    fig.suptitle(title, fontsize=11, y=0.995)
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=columns, fontsize=8,
               bbox_to_anchor=(0.5, title_bottom), frameon=False)
    fig.tight_layout()
    fig.subplots_adjust(top=title_bottom - (0.35 + 0.2 * rows) / height)  # room for the panels' titles


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float]]) -> None:
    """Bars per group for the series that have a value there, centred on the group: no
    empty slots for series not measured in a group. One colour per series."""
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled = set()
    for i in range(len(groups)):
        present = [name for name, values in series.items() if math.isfinite(values[i])]
        width = 0.8 / max(1, len(present))
        for j, name in enumerate(present):
            index = list(series).index(name)
            ax.bar(i + (j - (len(present) - 1) / 2) * width, series[name][i], width,
                   color=colours[index % len(colours)], label=None if name in labelled else name)
            labelled.add(name)


def plot_speedups(rows: list[dict], path: str, info: dict | None = None) -> None:
    """Per layer shape and peer, the peer's time over the fused time; one panel per mode."""
    rows = [r for r in rows if r["level"] == "layer"]
    plt = _pyplot()
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    peers = list(dict.fromkeys(r["provider"] for r in rows if not r["fused"]))
    index = {(r["name"], r["mode"], r["provider"]): r for r in rows}
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 0.55 * len(names) + 2), 3.4 * len(modes) + 0.6),
                             squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        series = {display_name(p): [index.get((n, mode, p), {}).get("fused_speedup", float("nan")) for n in names]
                  for p in peers}
        _grouped_bars(ax, names, series)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis, ratio=True)
        ax.set_ylabel("peer time / fused time")
        ax.set_title(f"{mode.replace('_', '+')}: > 1 = fused faster", fontsize=10)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names if ax is axes[-1, 0] else [""] * len(names), rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
    batch = rows[0]["batch"] if rows else None
    _figure_legend(fig, axes[:, 0], _plot_title(info, "Fused 1x1 conv + shuffle vs each peer, per layer", batch))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roofline(rows: list[dict], roofline: Roofline, path: str, mode: str = "forward",
                  info: dict | None = None) -> None:
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
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(12, 0.5 * len(names) + 6), 5.5),
                                      gridspec_kw={"width_ratios": [2, 1]})
    series = {display_name(p): [index.get((n, p), {}).get("effective_gbs", float("nan")) for n in names]
              for p in providers}
    _grouped_bars(left, names, series)
    left.axhline(roofline.copy_gbs, color="red", linestyle="--", label=f"copy {roofline.copy_gbs:.1f} GB/s")
    left.set_xticks(range(len(names)))
    left.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    left.set_ylabel("effective GB/s (model bytes / median time)")
    left.set_title(f"{mode}: bandwidth against the copy roof", fontsize=10)
    left.grid(axis="y", alpha=0.3)

    intensities = []
    for provider in providers:
        points = [(r["useful_flops"] / r["model_bytes"], r["gflops"]) for r in rows if r["provider"] == provider]
        intensities += [p[0] for p in points]
        right.scatter([p[0] for p in points], [p[1] for p in points], s=14, label=display_name(provider))
    lo, hi = min(intensities) / 2, max(intensities) * 4
    ridge = roofline.gemm_gflops / roofline.copy_gbs
    xs = sorted({lo, hi, min(max(ridge, lo), hi)})
    right.plot(xs, [min(roofline.copy_gbs * x, roofline.gemm_gflops) for x in xs], color="red", linestyle="--",
               label=f"roof (copy; best GEMM, {roofline.gemm_label})")
    right.set_xscale("log")
    right.set_yscale("log")
    _plain_log_axis(right.xaxis)
    _plain_log_axis(right.yaxis)
    right.set_xlabel("useful FLOPs / model byte")
    right.set_ylabel("GFLOP/s")
    right.set_title("roofline", fontsize=10)
    right.grid(which="both", alpha=0.3)
    _figure_legend(fig, [left, right], _plot_title(info, "Layers against this run's roofs", rows[0]["batch"]))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_networks(rows: list[dict], path: str, info: dict | None = None) -> None:
    """Units and whole models: each peer's time over the fused time, per network, batch and mode."""
    rows = [r for r in rows if r["level"] in ("unit", "model") and not r.get("extra_width")]
    if not rows:
        return
    plt = _pyplot()
    keys = list(dict.fromkeys((r["name"], r["batch"], r["mode"]) for r in rows))
    peers = list(dict.fromkeys(r["provider"] for r in rows if r["provider"] != _fused_name(rows)))
    index = {(r["name"], r["batch"], r["mode"], r["provider"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(keys) + 2), 6))
    series = {display_name(p): [index.get((*k, p), {}).get("fused_speedup", float("nan")) for k in keys]
              for p in peers}
    _grouped_bars(ax, [str(k) for k in keys], series)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(keys)))
    labels = [f"{n.replace('ShuffleNet V1 ', 'model ')}\nbatch {b} {m.replace('_', ' ')}" for n, b, m in keys]
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis, ratio=True)
    ax.set_ylabel("peer time / fused time (> 1: fused faster)")
    ax.grid(axis="y", which="both", alpha=0.3)
    batches = ", ".join(str(b) for b in sorted({k[1] for k in keys}))
    _figure_legend(fig, [ax], _plot_title(info, "Units and whole models: fused against each peer", batches))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_efficiency(rows: list[dict], path: str, info: dict | None = None) -> None:
    """Time against MACs per image across widths, log-log, one line per provider and one
    panel per batch, with the ideal slope (time proportional to MACs) and the paper's (4x
    fewer MACs, 2.6x less time) drawn through the fused model's smallest width."""
    entries = [r for r in rows if r.get("level") == "model" and r.get("mode") == "eval" and r.get("macs_per_image")]
    by_line: dict[tuple, dict[float, dict]] = defaultdict(dict)
    for r in entries:
        by_line[(r["batch"], r["groups"], r["provider"])][r["width"]] = r
    by_line = {k: v for k, v in by_line.items() if len(v) >= 2}
    if not by_line:
        return
    plt = _pyplot()
    batches = sorted({k[0] for k in by_line})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.2 * len(batches), 5), squeeze=False)
    slope = math.log(2.6) / math.log(4)
    fused_name = _fused_name(entries)
    for ax, batch in zip(axes[0], batches):
        lines = {k: v for k, v in by_line.items() if k[0] == batch}
        multi_g = len({k[1] for k in lines}) > 1
        for (_, g, provider), points in lines.items():
            widths = sorted(points)
            label = display_name(provider) + (f" g{g}" if multi_g else "")
            ax.plot([points[w]["macs_per_image"] / 1e6 for w in widths], [points[w]["median_ms"] for w in widths],
                    marker="o", label=label)
            if provider == fused_name:
                for w in widths:
                    ax.annotate(_width_label(w), (points[w]["macs_per_image"] / 1e6, points[w]["median_ms"]),
                                textcoords="offset points", xytext=(4, -10), fontsize=7)
        anchor = next((v for k, v in lines.items() if k[2] == fused_name), next(iter(lines.values())))
        w0, w1 = min(anchor), max(anchor)
        m0, t0 = anchor[w0]["macs_per_image"] / 1e6, anchor[w0]["median_ms"]
        m1 = anchor[w1]["macs_per_image"] / 1e6
        ax.plot([m0, m1], [t0, t0 * m1 / m0], "k--", linewidth=1, label="ideal: time proportional to MACs")
        ax.plot([m0, m1], [t0, t0 * (m1 / m0) ** slope], "k:", linewidth=1,
                label=f"paper (ARM): 4x MACs = 2.6x time ({PAPER_EFFICIENCY:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_axis(ax.xaxis)
        _plain_log_axis(ax.yaxis)
        ax.set_xlabel("MACs per image (millions)")
        ax.set_ylabel(f"time per batch of {batch} (ms)")
        ax.set_title(_plot_title(info, "ShuffleNet V1 eval: time against MACs across widths", batch), fontsize=10)
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(rows: list[dict], roofline: Roofline, out_dir: str, info: dict | None = None) -> list[str]:
    """The PNGs this run's rows support; returns their file names."""
    written = []
    if any(r["level"] == "layer" for r in rows):
        plot_speedups(rows, os.path.join(out_dir, "speedup.png"), info)
        plot_roofline(rows, roofline, os.path.join(out_dir, "roofline.png"), info=info)
        written += ["speedup.png", "roofline.png"]
    if any(r["level"] in ("unit", "model") for r in rows):
        plot_networks(rows, os.path.join(out_dir, "networks.png"), info)
        written.append("networks.png")
    if efficiency(rows):
        plot_efficiency(rows, os.path.join(out_dir, "efficiency.png"), info)
        written.append("efficiency.png")
    return written


def replot(out_dir: str) -> None:
    """Redraw the PNGs of a finished run from its results.json."""
    with open(os.path.join(out_dir, "results.json")) as f:
        payload = json.load(f)
    rows = [{k: (float("nan") if v is None else v) for k, v in row.items()} for row in payload["results"]]
    write_plots(rows, roofline_from_dict(payload["roofline"]), out_dir, payload.get("provenance"))
