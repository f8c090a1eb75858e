"""`tcllava ablate CONFIG`: the paper's studies on the synthetic benchmark as a resumable grid.

A cell is a name, a study and TC settings (any field of :class:`~tcllava.attention.TCAttentionConfig`;
unset ones are vanilla's: gamma 0, causal mask, the paper's reading). Every (cell, seed) is one variant run
of the experiment kit, trained and evaluated exactly like the demo's variants; finished runs are reused,
so an interrupted grid continues where it stopped and a grown grid trains only its new cells.

With a ``needle:`` section (the needle settings of :class:`~tcllava.recipes.needle.NeedleConfig`:
``needle_train``, ``needle_test``, ``lengths``, ``depths``, ...) every cell trains once on the tasks plus
the needle videos, and is tested on both: the tasks' test set as without the section, and the needle at
each length under each reduction (:mod:`tcllava.recipes.needle`). One table and one plot hold both
(``ablation.md``, ``ablation.png``), and the V-NIAH heat maps per cell are in ``needle.md`` and
``needle.png``. ``tcllava needle study`` is such a grid.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tcllava.attention import SETTINGS, TCAttentionConfig
from tcllava.data.synthetic.needle import needle_task
from tcllava.recipes.experiment import (
    ExperimentConfig,
    Phases,
    VariantRun,
    chance_levels,
    choose_start,
    log,
    prepare_data,
    run_variant,
    task_groups,
)
from tcllava.recipes.needle import (
    NEEDLE_SETTINGS,
    NeedleConfig,
    check_words,
    evaluate_needle,
    mean_cells,
    needle_title,
    prepare_needle_data,
    write_needle_report,
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
    """The experiment settings every cell shares, the cells, and optionally the needle section (a mapping
    of :data:`~tcllava.recipes.needle.NEEDLE_SETTINGS`, validated as a NeedleConfig's)."""

    out: str = "runs/ablate"
    grid: list[Cell] = field(default_factory=list)
    needle: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.grid:
            raise ValueError("an ablation needs a grid of cells")
        names = [c.name for c in self.grid]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate cell names in {names}")
        if self.needle is not None:
            if not isinstance(self.needle, dict) or set(self.needle) - set(NEEDLE_SETTINGS):
                raise ValueError(
                    f"the needle section may set {', '.join(NEEDLE_SETTINGS)}; got {self.needle!r}"
                )
            try:
                self.experiment()
            except (ValueError, TypeError) as e:
                raise ValueError(f"needle section: {e}") from None

    def experiment(self) -> ExperimentConfig:
        """What every cell's runs share and are keyed by: the experiment settings, a NeedleConfig with the
        needle section. Never the grid, so that cells added later leave the finished runs' keys alone."""
        values = {name: getattr(self, name) for name in ExperimentConfig.__dataclass_fields__}
        return ExperimentConfig(**values) if self.needle is None else NeedleConfig(**values, **self.needle)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> AblationConfig:
        """Settings from a YAML file, then ``overrides``; ``needle.KEY`` overrides a needle setting."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        for key, value in (overrides or {}).items():
            section, dot, name = key.partition(".")
            if dot and section == "needle":
                values["needle"] = {**(values.get("needle") or {}), name: value}
            else:
                values[key] = value
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        cells = [Cell.from_dict(c, str(path)) for c in values.pop("grid", None) or []]
        try:
            return cls(**values, grid=cells)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def with_needle(cls, cfg: NeedleConfig, grid: list[Cell]) -> AblationConfig:
        """``grid`` on ``cfg``'s experiment, with ``cfg``'s needle settings as the needle section."""
        values = {name: getattr(cfg, name) for name in ExperimentConfig.__dataclass_fields__}
        return cls(**values, grid=grid, needle={name: getattr(cfg, name) for name in NEEDLE_SETTINGS})


def describe(settings: TCAttentionConfig) -> str:
    """The settings a cell's scheme reads: gamma and the reading for ``tc``, delta for ``videorope``."""
    scheme = settings.position_scheme
    if scheme == "tc":
        scheme = f"tc gamma {settings.gamma:g} ({settings.text_after_video} reading)"
    elif scheme == "videorope":
        scheme = f"videorope delta {settings.videorope_delta:g}"
    return f"{scheme}, {settings.mask}"


def run_grid(cfg: AblationConfig) -> dict:
    """Train and evaluate every (cell, seed), then write ``ablation.json``, ``.md`` and ``.png`` (and with
    a needle section ``needle.json``, ``.md`` and ``.png``). Returns the ablation report, with the needle
    report (as in ``needle.json``) under ``needle``."""
    started = time.perf_counter()
    out = Path(cfg.out)
    experiment = cfg.experiment()
    needle = experiment if isinstance(experiment, NeedleConfig) else None
    units = len(cfg.grid) * len(cfg.seeds)
    phases = Phases(total=units + 2, units=units)
    phases.begin("benchmark videos")
    data, tests = prepare_needle_data(needle) if needle else (prepare_data(experiment), None)
    phases.end()
    groups = task_groups(cfg.tasks)
    starts = {seed: choose_start(experiment, data, seed) for seed in cfg.seeds}
    if needle and tests:
        for start in set(starts.values()):
            check_words(start, tests)
    rows, heat_maps = [], []
    for cell in cfg.grid:
        runs: dict[int, VariantRun] = {}
        found: dict[str, list[dict[str, Any]]] = {}  # reduction -> the needle's report cell per seed
        for seed in cfg.seeds:
            then = f", then the needle at {needle.lengths} frames" if needle else ""
            phases.begin(f"{cell.name} seed {seed}: {describe(cell.settings)}{then}", unit=True)
            run = runs[seed] = run_variant(experiment, data, starts[seed], cell.name, cell.settings, seed)
            for reduction in needle.reductions if needle and tests else ():
                found.setdefault(reduction.name, []).append(
                    evaluate_needle(
                        run.model,
                        tests,
                        out / "needle" / run.eval_dir.name / reduction.name / needle.needle_scoring,
                        needle.lengths,
                        reduction,
                        needle.needle_scoring,
                        batch_frames=cfg.eval_batch_size * cfg.frames,
                        num_workers=cfg.num_workers,
                    )
                )
            phases.end()
        row = cell_row(cell, runs, groups, cfg.tasks)
        if found:
            # Each seed's accuracy over all depths at a length (equal questions per depth: their mean).
            row["needle"] = {
                name: {f: mean_ci([c["by_length"][f] / 100 for c in cells]) for f in cells[0]["by_length"]}
                for name, cells in found.items()
            }
            heat_maps += [{"variant": cell.name, **mean_cells(cells)} for cells in found.values()]
        rows.append(row)
    phases.begin("report")
    config = asdict(cfg)
    config["grid"] = [{"name": c.name, "study": c.study, **c.settings.to_dict()} for c in cfg.grid]
    report: dict[str, Any] = {"config": config, "rows": rows, "data": str(data)}
    needle_report, chance = None, None
    if needle and tests:
        config["needle"] = {k: v for k, v in asdict(needle).items() if k in NEEDLE_SETTINGS}  # defaults too
        task = needle_task(needle.distractors)
        chance = chance_levels(tests / f"L{needle.lengths[0]}", [task])[task]
        report["needle"] = {"task": task, "tests": str(tests), "chance": chance, "report": "needle.json"}
        needle_report = write_needle_report(
            out,
            heat_maps,
            needle_title(needle),
            {
                "config": asdict(needle),
                "variants": {c.name: c.settings.to_dict() for c in cfg.grid},
                "models": {r["name"]: r["models"] for r in rows},
                "data": str(data),
                "tests": str(tests),
                "seconds": time.perf_counter() - started,
            },
        )
    report["seconds"] = time.perf_counter() - started
    (out / "ablation.json").write_text(json.dumps(report, indent=2, default=str))
    table = ablation_table(rows, list(groups))
    (out / "ablation.md").write_text(ablation_markdown(cfg, needle, table))
    ablation_plot(rows, list(groups), out / "ablation.png", needle_chance=chance)
    phases.end()
    print(table)
    log(f"grid done in {report['seconds'] / 60:.1f} min: {out / 'ablation.md'}")
    return {**report, "needle": needle_report} if needle_report else report


def cell_row(
    cell: Cell, runs: dict[int, VariantRun], groups: dict[str, list[str]], tasks: list[str]
) -> dict[str, Any]:
    """A cell's accuracy over seeds: per task group, all tasks (both scorings) and per task."""
    per_seed = [run.accuracy["likelihood"] for run in runs.values()]
    generated = [run.accuracy["generate"] for run in runs.values()]
    row: dict[str, Any] = {"name": cell.name, "study": cell.study, **cell.settings.to_dict()}
    for label, members in [*groups.items(), ("all", tasks)]:
        row[label] = mean_ci([sum(acc[t] for t in members) / len(members) for acc in per_seed])
    row["all_generated"] = mean_ci([sum(acc.values()) / len(acc) for acc in generated])
    row["tasks"] = {t: mean_ci([acc[t] for acc in per_seed]) for t in tasks}
    row["models"] = {seed: str(run.model) for seed, run in runs.items()}
    return row


def ablation_markdown(cfg: AblationConfig, needle: NeedleConfig | None, table: str) -> str:
    seeds = f"{len(cfg.seeds)} seed" + ("s" if len(cfg.seeds) > 1 else "")
    text = (
        f"# Ablation on the synthetic benchmark\n\n{seeds}, {cfg.steps} steps; mean accuracy % ± 95% CI "
        "over seeds, the tasks scored by likelihood (`all, generated letter`: by the generated letter)."
    )
    if needle:
        task = needle_task(needle.distractors)
        text += (
            f" Trained with {needle.needle_train} needle videos of {cfg.frames} frames; `needle F`: accuracy "
            f"on the needle question ({task}, {needle.needle_test} per depth) at F frames, the mean over "
            f"depths {needle.depths}, scored by {needle.needle_scoring}. Accuracy by depth: needle.md."
        )
    return f"{text}\n\n{table}"


def needle_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(heading, reduction, frames) per needle column; the reduction named only when there are several."""
    reductions = rows[0].get("needle", {})
    several = len(reductions) > 1
    return [
        (f"needle {frames}" + (f", {name}" if several else ""), name, frames)
        for name, by_length in reductions.items()
        for frames in by_length
    ]


def ablation_table(rows: list[dict], kinds: list[str]) -> str:
    """One row per cell: its settings (``-`` where its scheme does not read one), accuracy per task group,
    on all tasks by both scorings, and on the needle at each length when there is one."""
    needle = needle_columns(rows)
    head = [
        "study",
        "cell",
        "scheme",
        "mask",
        "gamma",
        "reading",
        *[f"{k} tasks" for k in kinds],
        "all",
        "all, generated letter",
        *[heading for heading, _, _ in needle],
    ]
    numbers = len(kinds) + 2 + len(needle)
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|---:|---|" + "---:|" * numbers]
    for r in rows:
        tc = r["position_scheme"] == "tc"
        scheme = r["position_scheme"]
        if scheme == "videorope":
            scheme += f" (delta {r['videorope_delta']:g})"
        cells = [r["study"], r["name"], scheme, r["mask"]]
        cells += [f"{r['gamma']:g}" if tc else "-", r["text_after_video"] if tc else "-"]
        cells += [percent(r[k]) for k in [*kinds, "all", "all_generated"]]
        cells += [percent(r["needle"][name][frames]) for _, name, frames in needle]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_plot(rows: list[dict], kinds: list[str], path: Path, needle_chance: float | None = None) -> Path:
    """A panel of bars per study (accuracy per task group and cell), then with a needle a panel per
    reduction: needle accuracy against frames, a line per cell (dashed: the causal mask)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = list(dict.fromkeys(r["study"] for r in rows))
    reductions = list(rows[0].get("needle", {}))
    panels = len(studies) + len(reductions)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4.2), squeeze=False, sharey=True)

    def error(stats: dict[str, Any]) -> float:
        return 0 if math.isnan(stats["ci95"]) else 100 * stats["ci95"]

    width = 0.8 / len(kinds)
    for ax, study in zip(axes[0], studies, strict=False):
        cells = [r for r in rows if r["study"] == study]
        for k, label in enumerate(kinds):
            offset = (k - (len(kinds) - 1) / 2) * width
            ax.bar(
                [i + offset for i in range(len(cells))],
                [100 * c[label]["mean"] for c in cells],
                width,
                yerr=[error(c[label]) for c in cells],
                capsize=2,
                label=f"{label} tasks",
            )
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([c["name"] for c in cells], rotation=30, ha="right", fontsize=8)
        ax.set_title(study)
        ax.legend(fontsize=8)
    for ax, reduction in zip(axes[0][len(studies) :], reductions, strict=True):
        for r in rows:
            by_length = r["needle"][reduction]
            ax.errorbar(
                [int(f) for f in by_length],
                [100 * s["mean"] for s in by_length.values()],
                yerr=[error(s) for s in by_length.values()],
                marker="o",
                markersize=3,
                capsize=2,
                linestyle="--" if r["mask"] == "causal" else "-",
                label=r["name"],
            )
        frames = [int(f) for f in rows[0]["needle"][reduction]]
        ax.set_xscale("log", base=2)
        ax.set_xticks(frames, [str(f) for f in frames])
        ax.minorticks_off()
        if needle_chance is not None:
            ax.axhline(100 * needle_chance, color="black", linestyle="dotted", lw=1, label="chance")
        ax.set_xlabel("frames")
        ax.set_title(f"needle by length ({reduction})")
        ax.legend(fontsize=7)
    axes[0][0].set_ylim(0, 105)
    axes[0][0].set_ylabel("accuracy % (mean over seeds, 95% CI)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
