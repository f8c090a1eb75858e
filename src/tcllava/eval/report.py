"""results.json (numbers + provenance), results.md (a table) and results.png (a bar plot)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mcq_rows(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        f"| {title} | accuracy | accuracy (all) | n | denominator | errors | unparseable | empty |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in groups.items():
        rows.append(
            f"| {name} | {_fmt(s['accuracy'])} | {_fmt(s['accuracy_all'])} | {s['n']} | "
            f"{s['denominator']} | {s['errors']} | {s['unparseable']} | {s['empty']} |"
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["metrics"]
    protocol = results["protocol"]
    lines = [
        f"# {results['benchmark']} results",
        "",
        f"- model: `{json.dumps(results['model'], sort_keys=True)}`",
        f"- protocol: **{protocol['name']}** (denominator: {protocol['denominator']}), "
        f"{results['num_frames']} frames, sampling `{protocol['sampling']}`"
        + (f", subtitles ({results.get('subtitle_mode')})" if protocol.get("subtitles") else ""),
        f"- extraction: `{results['extraction_version']}`",
        f"- tcllava {results['tcllava_version']}, {results['date']}, world size {results['world_size']}",
    ]
    if results.get("tasks_missing"):
        lines.append(f"- tasks missing from the data: {', '.join(results['tasks_missing'])}")
    lines.append("")
    if results["kind"] == "mcq":
        lines.append(
            f"**Average over {m['average_over_tasks']} tasks: {_fmt(m['average'])}** · "
            f"overall: {_fmt(m['overall']['accuracy'])} "
            f"(n={m['overall']['n']}, errors={m['overall']['errors']}, "
            f"unparseable={m['overall']['unparseable']}, excluded={m['overall']['excluded']})"
        )
        lines += ["", *_mcq_rows("task", m["tasks"])]
        for field, groups in m.get("groups", {}).items():
            lines += ["", *_mcq_rows(field, groups)]
    else:
        judge = results.get("judge") or {}
        lines.append(f"- judge: `{judge.get('model')}` at `{judge.get('url')}`")
        lines += [
            "",
            f"n={m['n']}, video errors={m['errors']}",
            "",
            "| criterion | accuracy | score | judged | judge errors |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in m["criteria"].items():
            lines.append(
                f"| {name} | {_fmt(s.get('accuracy'))} | {_fmt(s['score'], 3)} | {s['judged']} | "
                f"{s['judge_errors']} |"
            )
    lines += [
        "",
        "Accuracy in %. `accuracy` uses the protocol's denominator; `accuracy (all)` counts every "
        "decoded sample (unparseable answers, empty ones included, as wrong). Samples whose video failed to decode are "
        "excluded and counted under `errors`.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = results["metrics"]
    if results["kind"] == "mcq":
        groups = m["tasks"] if len(m["tasks"]) > 1 else m.get("groups", {}).get("task_type", m["tasks"])
        labels, values = list(groups), [g["accuracy"] or 0.0 for g in groups.values()]
        ylabel, headline = "accuracy (%)", m["average"] if len(m["tasks"]) > 1 else m["overall"]["accuracy"]
    else:
        labels = list(m["criteria"])
        key = "accuracy" if results["kind"] == "openqa" else "score"
        values = [c.get(key) or 0.0 for c in m["criteria"].values()]
        ylabel, headline = ("accuracy (%)" if key == "accuracy" else "score (0-5)"), None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels) + 2), 4.5))
    bars = ax.bar(range(len(labels)), values, color="#4c72b0")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    if headline is not None:
        ax.axhline(headline, color="#c44e52", linestyle="--", label=f"average {headline:.1f}")
        ax.legend(loc="upper right", fontsize=8)
    rotate = len(labels) > 1 and max(map(len, labels)) > 6
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=35 if rotate else 0,
        ha="right" if rotate else "center",
        fontsize=8,
    )
    ax.set_ylabel(ylabel)
    ax.set_title(f"{results['benchmark']} ({results['protocol']['name']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(results: dict[str, Any], out_dir: Path) -> None:
    """Write atomically, so a crash never leaves a half-written results.json beside good predictions."""
    tmp = out_dir / f"results.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(out_dir / "results.json")
    (out_dir / "results.md").write_text(markdown(results))
    plot(results, out_dir / "results.png")
