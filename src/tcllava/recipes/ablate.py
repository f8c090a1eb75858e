"""`tcllava ablate CONFIG`: the paper's studies on the synthetic benchmark as a resumable grid.

A cell is a name, a study and TC settings (any field of :class:`~tcllava.attention.TCAttentionConfig`;
unset ones are vanilla's: gamma 0, causal mask, the paper's reading). Every (cell, seed) is one variant run
of the experiment kit, trained and evaluated exactly like the demo's variants; finished runs are reused,
so an interrupted grid continues where it stopped and a grown grid trains only its new cells.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tcllava.attention import SETTINGS, TCAttentionConfig
from tcllava.recipes.experiment import (
    ExperimentConfig,
    Phases,
    choose_start,
    log,
    prepare_data,
    run_variant,
    task_groups,
)
from tcllava.recipes.stats import mean_ci, percent


@dataclass(frozen=True)
class Cell:
    name: str
    study: str
    settings: TCAttentionConfig

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> Cell:
        values = dict(values)
        name, study = values.pop("name", None), values.pop("study", "grid")
        unknown = set(values) - set(SETTINGS)
        if not name or unknown:
            raise ValueError(
                f"{where}: a cell needs a name and may set study and {', '.join(SETTINGS)}; got {values}"
            )
        try:
            settings = TCAttentionConfig.vanilla().replace(**values)
        except ValueError as e:
            raise ValueError(f"{where}: cell {name!r}: {e}") from None
        return cls(str(name), str(study), settings)


@dataclass
class AblationConfig(ExperimentConfig):
    out: str = "runs/ablate"
    grid: list[Cell] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.grid:
            raise ValueError("an ablation needs a grid of cells")
        names = [c.name for c in self.grid]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate cell names in {names}")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> AblationConfig:
        values = yaml.safe_load(Path(path).read_text()) or {}
        values.update(overrides or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        cells = [Cell.from_dict(c, str(path)) for c in values.pop("grid", None) or []]
        return cls(**values, grid=cells)


def run_grid(cfg: AblationConfig) -> dict:
    started = time.perf_counter()
    out = Path(cfg.out)
    units = len(cfg.grid) * len(cfg.seeds)
    phases = Phases(total=units + 2, units=units)
    phases.begin("benchmark videos")
    data = prepare_data(cfg)
    phases.end()
    groups = task_groups(cfg.tasks)
    starts = {seed: choose_start(cfg, data, seed) for seed in cfg.seeds}
    rows = []
    for cell in cfg.grid:
        per_seed: dict[int, dict[str, float]] = {}
        generated: dict[int, dict[str, float]] = {}
        models: dict[int, str] = {}
        for seed in cfg.seeds:
            settings = cell.settings
            phases.begin(
                f"{cell.name} seed {seed}: gamma {settings.gamma:g}, {settings.mask}, {settings.text_after_video}",
                unit=True,
            )
            run = run_variant(cfg, data, starts[seed], cell.name, settings, seed)
            phases.end()
            per_seed[seed], generated[seed] = run.accuracy["likelihood"], run.accuracy["generate"]
            models[seed] = str(run.model)
        row: dict[str, Any] = {"name": cell.name, "study": cell.study, **cell.settings.to_dict()}
        for label, tasks in [*groups.items(), ("all", cfg.tasks)]:
            row[label] = mean_ci([sum(acc[t] for t in tasks) / len(tasks) for acc in per_seed.values()])
        row["all_generated"] = mean_ci([sum(acc.values()) / len(acc) for acc in generated.values()])
        row["tasks"] = {t: mean_ci([acc[t] for acc in per_seed.values()]) for t in cfg.tasks}
        row["models"] = models
        rows.append(row)
    phases.begin("report")
    config = asdict(cfg)
    config["grid"] = [{"name": c.name, "study": c.study, **c.settings.to_dict()} for c in cfg.grid]
    report = {"config": config, "rows": rows, "seconds": time.perf_counter() - started}
    (out / "ablation.json").write_text(json.dumps(report, indent=2, default=str))
    table = ablation_table(rows, list(groups))
    (out / "ablation.md").write_text(
        f"# Ablation on the synthetic benchmark\n\n{len(cfg.seeds)} seeds, {cfg.steps} steps; mean accuracy % "
        f"± 95% CI, scored by likelihood (last column: by the generated letter).\n\n{table}"
    )
    ablation_plot(rows, list(groups), out / "ablation.png")
    phases.end()
    print(table)
    log(f"grid done in {report['seconds'] / 60:.1f} min: {out / 'ablation.md'}")
    return report


def ablation_table(rows: list[dict], kinds: list[str]) -> str:
    head = [
        "study",
        "cell",
        "gamma",
        "mask",
        "reading",
        *[f"{k} tasks" for k in kinds],
        "all",
        "all, generated letter",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---|---|" + "---:|" * (len(kinds) + 2)]
    for r in rows:
        cells = [r["study"], r["name"], f"{r['gamma']:g}", r["mask"], r["text_after_video"]]
        cells += [percent(r[k]) for k in [*kinds, "all", "all_generated"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_plot(rows: list[dict], kinds: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = list(dict.fromkeys(r["study"] for r in rows))
    fig, axes = plt.subplots(1, len(studies), figsize=(4.5 * len(studies), 4), squeeze=False, sharey=True)
    width = 0.8 / len(kinds)
    for ax, study in zip(axes[0], studies, strict=True):
        cells = [r for r in rows if r["study"] == study]
        for k, label in enumerate(kinds):
            offset = (k - (len(kinds) - 1) / 2) * width
            ax.bar(
                [i + offset for i in range(len(cells))],
                [100 * c[label]["mean"] for c in cells],
                width,
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
