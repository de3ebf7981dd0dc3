"""The paper's yardstick: how much of a cut in multiply-adds (MACs) becomes a cut in time.

ShuffleNet V1's paper (section 4.5) reports that on ARM "every 4x reduction of theoretical
complexity usually results in ~2.6x actual speedup": an efficiency of 2.6 / 4 = 0.65. Here the
efficiency between two widths of the same network is

    (time of the larger / time of the smaller) / (MACs of the larger / MACs of the smaller)

from the whole-model eval rows of one run. 1.0: time scales with the arithmetic; below 1: the
smaller network saves less time than MACs (fixed costs per op, memory traffic, idle cores).
"""

from __future__ import annotations

from collections import defaultdict

PAPER_EFFICIENCY = 2.6 / 4


def efficiency(rows: list[dict]) -> list[dict]:
    """One entry per provider, g, batch and pair of neighbouring widths that provider has
    eval rows for (whole models, the same run)."""
    times: dict[tuple, dict[float, tuple[float, int]]] = defaultdict(dict)
    for r in rows:
        if r.get("level") == "model" and r.get("mode") == "eval" and r.get("macs_per_image"):
            times[(r["provider"], r["groups"], r["batch"])][float(r["width"])] = (r["median_ms"], r["macs_per_image"])
    out = []
    for (provider, groups, batch), by_width in times.items():
        widths = sorted(by_width)
        for small, large in zip(widths, widths[1:]):
            (t_small, m_small), (t_large, m_large) = by_width[small], by_width[large]
            time_ratio, mac_ratio = t_large / t_small, m_large / m_small
            out.append({
                "provider": provider, "groups": groups, "batch": batch,
                "width_small": small, "width_large": large,
                "ms_small": t_small, "ms_large": t_large,
                "macs_small": m_small, "macs_large": m_large,
                "time_ratio": time_ratio, "mac_ratio": mac_ratio,
                "efficiency": time_ratio / mac_ratio,
            })
    return out
