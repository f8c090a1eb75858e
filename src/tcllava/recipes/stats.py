"""Means with 95% confidence intervals over seeds, and the comparison tables and plots built from them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Two-sided 95% Student t quantiles by degrees of freedom (n - 1); beyond 30 the normal value.
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t95(dof: int) -> float:
    if dof <= 0:
        return math.nan
    known = [d for d in _T95 if d <= dof]
    return _T95[max(known)] if dof <= 30 else 1.96


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and half-width of the 95% t interval (NaN half-width for a single value)."""
    n = len(values)
    mean = statistics.fmean(values)
    half = t95(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "ci95": half, "n": n, "values": list(values)}


def paired_difference(treated: Sequence[float], control: Sequence[float]) -> dict[str, Any]:
    """Mean of the per-seed differences ``treated - control`` with its 95% t interval: the comparison of
    paired runs (same seed, start and data order), whose seed-to-seed noise cancels. ``excludes_zero``:
    whether the interval lies wholly on one side of 0 (None with a single pair)."""
    if len(treated) != len(control):
        raise ValueError(
            f"paired runs need as many values on each side, got {len(treated)} and {len(control)}"
        )
    stats = mean_ci([a - b for a, b in zip(treated, control, strict=True)])
    half = stats["ci95"]
    stats["low"], stats["high"] = stats["mean"] - half, stats["mean"] + half
    stats["excludes_zero"] = None if math.isnan(half) else bool(stats["low"] > 0 or stats["high"] < 0)
    return stats


def percent(stats: dict[str, Any], signed: bool = False) -> str:
    """``53.3 ± 1.3`` (or ``+5.7 ± 3.1``) in percentage points from a fraction's mean and half-width."""
    mean = f"{100 * stats['mean']:+.1f}" if signed else f"{100 * stats['mean']:.1f}"
    return mean if math.isnan(stats["ci95"]) else f"{mean} ± {100 * stats['ci95']:.1f}"


def comparison_table(
    summary: dict, variants: Sequence[str], groups: dict[str, list[str]], paired: dict | None = None
) -> str:
    """Markdown: one row per task (and per group mean), one column per variant, mean ± 95% CI in %, and
    the last variant minus the first as the mean paired difference with its 95% interval."""
    head = "| task | kind | " + " | ".join(variants) + " | difference |"
    lines = [head, "|---|---|" + "---:|" * (len(variants) + 1)]
    rows = [(task, kind) for kind, tasks in groups.items() for task in tasks]
    rows += [(f"**mean {kind}**", kind) for kind in groups]
    for task, kind in rows:
        cells = [percent(summary[v][task]) for v in variants]
        if paired is not None:
            diff = percent(paired[task], signed=True)
        else:
            diff = f"{100 * (summary[variants[-1]][task]['mean'] - summary[variants[0]][task]['mean']):+.1f}"
        lines.append(f"| {task} | {kind} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def bar_plot(
    summary: dict,
    variants: Sequence[str],
    tasks: Sequence[str],
    path: Path,
    title: str,
    chance: dict | None = None,
) -> Path:
    """Grouped bars per task with 95% CI error bars; a dotted line marks chance per task if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(tasks)), 4.5))
    for i, variant in enumerate(variants):
        means = [100 * summary[variant][t]["mean"] for t in tasks]
        errors = [
            0 if math.isnan(summary[variant][t]["ci95"]) else 100 * summary[variant][t]["ci95"] for t in tasks
        ]
        xs = [x + (i - (len(variants) - 1) / 2) * width for x in range(len(tasks))]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=variant)
    if chance:
        for x, task in enumerate(tasks):
            if task in chance:
                ax.hlines(100 * chance[task], x - 0.45, x + 0.45, colors="black", linestyles="dotted", lw=1)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy % (mean over seeds, 95% CI)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
