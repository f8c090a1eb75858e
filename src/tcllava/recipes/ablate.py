"""`tcllava ablate CONFIG`: the paper's two studies on the synthetic benchmark, plus the temporal-id reading.

A grid of cells (each: gamma, mask kind, text_after_video) x seeds, every cell trained and evaluated exactly
like the demo's variants (accuracies by likelihood scoring, the generated letter's beside them). Each
(cell, seed) leaves ``eval/<cell>-seed<s>/<scoring>/results.json``; a rerun skips those and the trainer
resumes a half-finished run, so an interrupted grid continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tcllava.data.synthetic import TASKS
from tcllava.recipes.demo import (
    SCORINGS,
    DemoConfig,
    evaluate_model,
    initial_checkpoint,
    log,
    prepare_data,
    task_accuracy,
    train_variant,
)
from tcllava.recipes.stats import mean_ci

CELL_KEYS = {"name", "study", "gamma", "mask", "text_after_video"}


def load_grid(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[DemoConfig, list[dict[str, Any]]]:
    values = yaml.safe_load(Path(path).read_text()) or {}
    values.update(overrides or {})
    grid = values.pop("grid", None)
    if not grid:
        raise ValueError(f"{path}: no grid of cells")
    names = set()
    for cell in grid:
        unknown = set(cell) - CELL_KEYS
        if unknown or "name" not in cell:
            raise ValueError(f"{path}: a cell needs a name and may set {sorted(CELL_KEYS)}; got {cell}")
        if cell["name"] in names:
            raise ValueError(f"{path}: duplicate cell name {cell['name']!r}")
        names.add(cell["name"])
        cell.setdefault("study", "grid")
        cell.setdefault("gamma", 0.0)
        cell.setdefault("mask", "causal")
        cell.setdefault("text_after_video", "paper")
    known = set(DemoConfig.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    cfg = DemoConfig(**values)
    cfg.variants = {c["name"]: {k: c[k] for k in ("gamma", "mask", "text_after_video")} for c in grid}
    return cfg, grid


def run_grid(cfg: DemoConfig, grid: list[dict[str, Any]]) -> dict:
    start = time.perf_counter()
    out = Path(cfg.out)
    data = prepare_data(cfg)
    temporal = [t for t, spec in TASKS.items() if spec.kind == "temporal"]
    static = [t for t, spec in TASKS.items() if spec.kind == "static"]
    rows = []
    for cell in grid:
        per_seed: dict[int, dict[str, float]] = {}
        generated: dict[int, dict[str, float]] = {}
        for seed in cfg.seeds:
            done = {k: out / "eval" / f"{cell['name']}-seed{seed}" / k / "results.json" for k in SCORINGS}
            if all(path.is_file() for path in done.values()):
                log(f"{cell['name']} seed {seed}: done before, skipped")
                results = {k: json.loads(path.read_text()) for k, path in done.items()}
            else:
                log(
                    f"{cell['name']} seed {seed}: gamma {cell['gamma']}, {cell['mask']}, {cell['text_after_video']}"
                )
                init = initial_checkpoint(cfg, data, seed)
                model_dir = train_variant(cfg, data, init, cell["name"], seed)
                results = evaluate_model(cfg, data, model_dir, f"{cell['name']}-seed{seed}")
            accuracy = task_accuracy(results)
            per_seed[seed], generated[seed] = accuracy["likelihood"], accuracy["generate"]
        row = dict(cell)
        for label, tasks in (("temporal", temporal), ("static", static), ("all", list(TASKS))):
            row[label] = mean_ci([sum(acc[t] for t in tasks) / len(tasks) for acc in per_seed.values()])
        row["all_generated"] = mean_ci([sum(acc.values()) / len(acc) for acc in generated.values()])
        row["tasks"] = {t: mean_ci([acc[t] for acc in per_seed.values()]) for t in TASKS}
        rows.append(row)
    report = {"config": cfg.__dict__, "rows": rows, "seconds": time.perf_counter() - start}
    (out / "ablation.json").write_text(json.dumps(report, indent=2, default=str))
    table = ablation_table(rows)
    (out / "ablation.md").write_text(
        f"# Ablation on the synthetic benchmark\n\n{len(cfg.seeds)} seeds, {cfg.steps} steps; mean accuracy % "
        f"± 95% CI, scored by likelihood (last column: by the generated letter).\n\n{table}"
    )
    ablation_plot(rows, out / "ablation.png")
    print(table)
    log(f"grid done in {report['seconds'] / 60:.1f} min: {out / 'ablation.md'}")
    return report


def ablation_table(rows: list[dict]) -> str:
    def cell(stats: dict) -> str:
        ci = "" if stats["ci95"] != stats["ci95"] else f" ± {100 * stats['ci95']:.1f}"
        return f"{100 * stats['mean']:.1f}{ci}"

    lines = [
        "| study | cell | gamma | mask | reading | temporal tasks | static tasks | all | all, generated letter |",
        "|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['study']} | {r['name']} | {r['gamma']:g} | {r['mask']} | {r['text_after_video']} | "
            f"{cell(r['temporal'])} | {cell(r['static'])} | {cell(r['all'])} | {cell(r['all_generated'])} |"
        )
    return "\n".join(lines) + "\n"


def ablation_plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = list(dict.fromkeys(r["study"] for r in rows))
    fig, axes = plt.subplots(1, len(studies), figsize=(4.5 * len(studies), 4), squeeze=False, sharey=True)
    for ax, study in zip(axes[0], studies, strict=True):
        cells = [r for r in rows if r["study"] == study]
        for offset, label in ((-0.2, "temporal"), (0.2, "static")):
            ax.bar(
                [i + offset for i in range(len(cells))],
                [100 * c[label]["mean"] for c in cells],
                0.4,
                yerr=[0 if c[label]["ci95"] != c[label]["ci95"] else 100 * c[label]["ci95"] for c in cells],
                capsize=2,
                label=f"{label} tasks",
            )
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([c["name"] for c in cells], rotation=30, ha="right", fontsize=8)
        ax.set_title(study)
        ax.set_ylim(0, 105)
    axes[0][0].set_ylabel("accuracy % (mean over seeds, 95% CI)")
    axes[0][0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
