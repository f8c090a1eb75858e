"""The needle-in-a-video-haystack study: accuracy by needle depth and video length, V-NIAH's heat map.

Models are trained at the demo's frame count on the needle task (:mod:`tcllava.data.synthetic.needle`)
beside the experiment's tasks, through the experiment kit (:mod:`tcllava.recipes.experiment`), then asked
the needle question at 2x to 64x more frames, every frame of each test video read once. Where the frames
outgrow the context, two ways to fewer visual tokens are options of the evaluation (a
:class:`Reduction`), so that their cost in accuracy is measured on the same questions, not assumed:

- pooling: a coarser ``pool_shape`` at load time (PLLaVA's adaptive pooling to fewer tokens per frame, or
  fewer frames), for a checkpoint trained with another;
- merging: frames within ``merge_threshold`` pixel levels of the last frame kept are dropped before
  tokenisation (:func:`tcllava.video.merge_similar_frames`), so a slowly changing video costs fewer frames.

:func:`evaluate_needle` evaluates one model on every length; :func:`needle_study` trains variants (name ->
:class:`~tcllava.attention.TCAttentionConfig`) and evaluates each under each reduction: it is the ablation
grid of :mod:`tcllava.recipes.ablate` with a needle section, the one code path of both. Both write
``needle.json``, ``needle.md`` (accuracy by depth x frames, and visual tokens per video) and ``needle.png``
(the heat map: frames across, depth down, colour accuracy).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tcllava.attention import TCAttentionConfig
from tcllava.data.synthetic import NEEDLE_TASKS, generate, generate_needle
from tcllava.data.synthetic.needle import DEPTHS, LENGTHS, check_needle_settings, needle_task
from tcllava.recipes.experiment import NOT_IN_RUN_KEY, ExperimentConfig, log, short_hash

# Settings of the needle evaluation only: they do not change the models trained, so not their runs' keys.
NEEDLE_EVAL_ONLY = ("needle_test", "lengths", "depths", "reductions", "needle_scoring")
SCORINGS = ("likelihood", "generate")


@dataclass(frozen=True)
class Reduction:
    """Fewer visual tokens for long inputs, at evaluation: ``pool_shape`` (frames, height, width) replaces
    the checkpoint's pooling (frames 0 keeps every frame), ``merge_threshold`` drops near-duplicate frames
    (mean absolute difference to the last kept frame, pixel levels 0-255). Neither: the model as trained."""

    name: str = "full"
    pool_shape: tuple[int, int, int] | None = None
    merge_threshold: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"a reduction needs a name without '/', got {self.name!r}")
        if self.pool_shape is not None:
            shape = tuple(self.pool_shape)
            if (
                len(shape) != 3
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in shape)
                or shape[0] < 0
                or min(shape[1:]) < 1
            ):
                raise ValueError(
                    f"reduction {self.name!r}: pool_shape must be (frames >= 0, height >= 1, width >= 1), "
                    f"got {self.pool_shape!r}"
                )
            object.__setattr__(self, "pool_shape", shape)
        threshold = self.merge_threshold
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold >= 0
        ):
            raise ValueError(
                f"reduction {self.name!r}: merge_threshold must be a number >= 0, got {threshold!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> Reduction:
        if not isinstance(values, dict) or set(values) - {"name", "pool_shape", "merge_threshold"}:
            raise ValueError(f"{where}: a reduction has name, pool_shape and merge_threshold; got {values!r}")
        shape = values.get("pool_shape")
        try:
            return cls(
                values.get("name", ""), None if shape is None else tuple(shape), values.get("merge_threshold")
            )
        except TypeError:
            raise ValueError(f"{where}: pool_shape must be a list of three integers, got {shape!r}") from None

    def describe(self) -> str:
        parts = []
        if self.pool_shape is not None:
            frames, h, w = self.pool_shape
            parts.append(f"pooled to {h}x{w} per frame" + (f", at most {frames} frames" if frames else ""))
        if self.merge_threshold is not None:
            parts.append(f"frames within {self.merge_threshold:g} levels of the last kept dropped")
        return "; ".join(parts) or "as trained"


class MergingPredictor:
    """A predictor whose clips lose their near-duplicate frames before they reach ``inner`` (whose
    processor then counts the visual tokens of the frames left)."""

    def __init__(self, inner: Any, threshold: float) -> None:
        self.inner, self.threshold = inner, threshold

    def _merged(self, clips: list) -> list:
        from tcllava.video import merge_similar_frames

        return [merge_similar_frames(clip, self.threshold) for clip in clips]

    def generate(self, clips: list, prompts: list) -> list[str]:
        return self.inner.generate(self._merged(clips), prompts)

    def rank(self, clips: list, prompts: list, continuations: list[list[str]]) -> list[list[float]]:
        return self.inner.rank(self._merged(clips), prompts, continuations)

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.inner, "describe", None)
        return {**(describe() if callable(describe) else {}), "merge_threshold": self.threshold}


def needle_lengths(tests: Path) -> list[int]:
    """The frame counts of the ``L{F}/test`` folders under ``tests``, ascending."""
    found = [p.parent.name[1:] for p in tests.glob("L*/test") if p.is_dir()]
    lengths = sorted(int(f) for f in found if f.isdigit())
    if not lengths:
        raise FileNotFoundError(
            f"{tests}: no L{{frames}}/test folders (write them with `tcllava needle data`)"
        )
    return lengths


def _needle_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.json"))
    if len(files) != 1 or files[0].stem not in NEEDLE_TASKS:
        names = ", ".join(f.name for f in files) or "none"
        raise FileNotFoundError(
            f"{folder}: expected one needle task file ({' or '.join(NEEDLE_TASKS)}.json), found {names}"
        )
    return files[0]


def visual_tokens(run: Any, config: Any, reduction: Reduction) -> dict[str, float]:
    """Visual tokens per video the model is given under ``reduction`` (mean, min, max): every frame read,
    pooled; with a merge, the frames it keeps, counted on the evaluation's own decoding."""
    samples = run.load().samples
    frames = [run.num_frames] * len(samples)
    if reduction.merge_threshold is not None:
        from tcllava.eval.dataset import decode_sample
        from tcllava.video import keep_distinct

        sampling = run.eval_protocol().sampling
        clips = (decode_sample(s, run.num_frames, sampling).frames for s in samples)
        frames = [len(keep_distinct(clip, reduction.merge_threshold)) for clip in clips]
    tokens = [config.media_tokens(f) for f in frames]
    return {"mean": sum(tokens) / len(tokens), "min": min(tokens), "max": max(tokens)}


def evaluate_needle(
    model: str | Path,
    tests: str | Path,
    out: str | Path,
    lengths: list[int] | None = None,
    reduction: Reduction = Reduction(),
    scoring: str = "likelihood",
    batch_frames: int = 256,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate ``model`` on the needle questions of each length under ``tests/L{F}/test`` (all by
    default) with MVBench's official prompts, every frame read (``middle`` sampling of F of F frames), into
    ``out/L{F}/``. Finished evaluations are reused. ``batch_frames``: frames per batch (videos per batch =
    batch_frames // F, at least one). Returns one cell of the report (see :func:`needle_cell`)."""
    from tcllava.eval import EvalRun, evaluate
    from tcllava.eval.model_predictor import ModelPredictor
    from tcllava.model import load

    tests, out = Path(tests), Path(out)
    lengths = list(lengths) if lengths else needle_lengths(tests)
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    for frames in lengths:
        _needle_file(tests / f"L{frames}" / "test")
    overrides = {} if reduction.pool_shape is None else {"pool_shape": list(reduction.pool_shape)}
    network, processor = load(model, **overrides)
    predictor: Any = ModelPredictor(network, processor, name=str(model), max_new_tokens=8)
    if reduction.merge_threshold is not None:
        predictor = MergingPredictor(predictor, reduction.merge_threshold)
    results, tokens = {}, {}
    for frames in lengths:
        run = EvalRun(
            "synthetic",
            tests / f"L{frames}",
            out / f"L{frames}",
            protocol="official",
            num_frames=frames,
            batch_size=max(1, batch_frames // frames),
            num_workers=num_workers,
            sampling="middle",
            scoring=scoring,
        )
        results[frames] = evaluate(predictor, run)
        tokens[frames] = visual_tokens(run, network.config, reduction)
    return needle_cell(results, tokens, reduction, context=network.config.max_positions)


def needle_cell(
    results: dict[int, dict[str, Any]],
    tokens: dict[int, dict[str, float]],
    reduction: Reduction,
    context: int,
) -> dict[str, Any]:
    """Accuracy (%) by depth and frame count, with counts, from the evaluator's results per frame count."""
    lengths = sorted(results)
    depths = sorted({d for r in results.values() for d in r["metrics"]["groups"]["depth"]}, key=float)
    accuracy: dict[str, dict[str, float | None]] = {d: {} for d in depths}
    counts: dict[str, dict[str, int]] = {d: {} for d in depths}
    for frames in lengths:
        groups = results[frames]["metrics"]["groups"]["depth"]
        for d in depths:
            accuracy[d][str(frames)] = groups[d]["accuracy"] if d in groups else None
            counts[d][str(frames)] = groups[d]["denominator"] if d in groups else 0
    return {
        "reduction": asdict(reduction),
        "lengths": lengths,
        "depths": depths,
        "accuracy": accuracy,
        "n": counts,
        "by_length": {str(f): results[f]["metrics"]["overall"]["accuracy"] for f in lengths},
        "visual_tokens": {str(f): tokens[f] for f in lengths},
        "context": context,
        "task": next(iter(results[lengths[0]]["metrics"]["tasks"])),
    }


def mean_cells(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of cells of the same grid; each seed's accuracy kept under ``per_seed``."""
    first = cells[0]

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    merged = dict(first)
    merged["accuracy"] = {
        d: {f: mean([c["accuracy"][d][f] for c in cells]) for f in row}
        for d, row in first["accuracy"].items()
    }
    merged["by_length"] = {f: mean([c["by_length"][f] for c in cells]) for f in first["by_length"]}
    merged["n"] = {d: {f: sum(c["n"][d][f] for c in cells) for f in row} for d, row in first["n"].items()}
    merged["per_seed"] = [c["accuracy"] for c in cells]
    return merged


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def needle_markdown(cells: list[dict[str, Any]], title: str) -> str:
    lines = [f"# {title}", ""]
    for cell in cells:
        reduction = Reduction(**cell["reduction"])
        heading = f"## {cell.get('variant', 'model')}, {reduction.name} ({reduction.describe()})"
        frames = [str(f) for f in cell["lengths"]]
        lines += [
            heading,
            "",
            "| depth \\ frames | " + " | ".join(frames) + " |",
            "|---" + "|---:" * len(frames) + "|",
        ]
        for d in cell["depths"]:
            lines.append(
                f"| {100 * float(d):g}% | " + " | ".join(_fmt(cell["accuracy"][d][f]) for f in frames) + " |"
            )
        lines.append("| **all depths** | " + " | ".join(_fmt(cell["by_length"][f]) for f in frames) + " |")
        lines.append(
            "| visual tokens per video | "
            + " | ".join(f"{cell['visual_tokens'][f]['mean']:.0f}" for f in frames)
            + " |"
        )
        lines += ["", f"Task `{cell['task']}`; the LLM's context: {cell['context']} positions.", ""]
    lines.append(
        "Accuracy in % of the needle questions at each depth (0% = the first frame, 100% = the last), "
        "scored as the evaluator's results.json files (in the folders beside this file)."
    )
    return "\n".join(lines) + "\n"


def needle_plot(cells: list[dict[str, Any]], path: Path, title: str) -> Path:
    """V-NIAH's heat map per cell (a row per variant, a column per reduction): frames across, needle depth
    down, accuracy as colour (red 0, green 100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(dict.fromkeys(c.get("variant", "model") for c in cells))
    reductions = list(dict.fromkeys(c["reduction"]["name"] for c in cells))
    width = max(2.4, 0.55 * len(cells[0]["lengths"]) + 1.0)
    height = max(2.2, 0.35 * len(cells[0]["depths"]) + 1.2)
    fig, axes = plt.subplots(
        len(variants),
        len(reductions),
        figsize=(width * len(reductions) + 1.2, height * len(variants) + 0.6),
        squeeze=False,
    )
    image = None
    for cell in cells:
        row, column = (
            variants.index(cell.get("variant", "model")),
            reductions.index(cell["reduction"]["name"]),
        )
        ax = axes[row][column]
        frames = [str(f) for f in cell["lengths"]]
        grid = np.array(
            [
                [np.nan if v is None else v for v in (cell["accuracy"][d][f] for f in frames)]
                for d in cell["depths"]
            ]
        )
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(frames)), frames, fontsize=7)
        depths = [f"{100 * float(d):g}%" for d in cell["depths"]] if column == 0 else []
        ax.set_yticks(range(len(cell["depths"])) if column == 0 else [], depths, fontsize=7)
        if row == len(variants) - 1:
            ax.set_xlabel("frames", fontsize=8)
        if column == 0:
            ax.set_ylabel(f"{cell.get('variant', 'model')}\nneedle depth", fontsize=8)
        if row == 0:
            ax.set_title(cell["reduction"]["name"], fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="accuracy %")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_needle_report(
    out: Path, cells: list[dict[str, Any]], title: str, extra: dict[str, Any] | None = None
) -> dict:
    """``out/needle.json``, ``needle.md`` and ``needle.png`` from report cells; returns the report as it
    reads back from the file."""
    out.mkdir(parents=True, exist_ok=True)
    report = json.loads(json.dumps({**(extra or {}), "cells": cells}, default=str))
    (out / "needle.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "needle.md").write_text(needle_markdown(cells, title))
    needle_plot(cells, out / "needle.png", title)
    return report


# ----------------------------------------------------------------------------------------------- the study


@dataclass
class NeedleConfig(ExperimentConfig):
    """An experiment whose training data add ``needle_train`` needle videos (at ``frames``) to the tasks,
    and whose models are then tested on ``needle_test`` videos per depth at each of ``lengths`` frames,
    under each of ``reductions``."""

    out: str = "runs/needle"
    needle_train: int = 480
    needle_test: int = 8
    lengths: list[int] = field(default_factory=lambda: list(LENGTHS))
    depths: list[float] = field(default_factory=lambda: list(DEPTHS))
    distractors: bool = False
    reductions: list[Reduction] = field(default_factory=lambda: [Reduction()])
    needle_scoring: str = "likelihood"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.reductions = [
            r if isinstance(r, Reduction) else Reduction.from_dict(r, "reductions") for r in self.reductions
        ]
        names = [r.name for r in self.reductions]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"reductions need distinct names, got {names}")
        if self.needle_train < 1 or self.needle_test < 1:
            raise ValueError("needle_train and needle_test must be >= 1")
        # The generator's own checks, here so that a bad length or depth stops a study before it starts.
        check_needle_settings(
            self.needle_train,
            self.needle_test,
            tuple(self.lengths),
            tuple(self.depths),
            self.frames,
            self.size,
            4.0,
            0,
            self.distractors,
        )
        if self.needle_scoring not in SCORINGS:
            raise ValueError(
                f"needle_scoring must be one of {', '.join(SCORINGS)}, got {self.needle_scoring!r}"
            )

    @classmethod
    def quick(cls, **overrides: Any) -> NeedleConfig:
        """Seconds, not minutes: a smoke test of the whole path (one task, one seed, random weights)."""
        values: dict[str, Any] = dict(
            tasks=["object_color"],
            train_per_task=8,
            test_per_task=1,
            needle_train=16,
            needle_test=1,
            lengths=[16],
            depths=[0.0, 1.0],
            seeds=[0],
            steps=2,
            batch_size=4,
            text_layers=1,
            start="scratch",
            progress=False,
        )
        values.update(overrides)
        return cls(**values)

    def run_key(self, settings: TCAttentionConfig) -> str:
        values = {k: v for k, v in asdict(self).items() if k not in (*NOT_IN_RUN_KEY, *NEEDLE_EVAL_ONLY)}
        return short_hash([values, settings.to_dict()])

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: dict[str, Any] | None = None
    ) -> tuple[NeedleConfig, dict[str, TCAttentionConfig]]:
        """Settings and variants from a YAML file: the fields of this class, and ``grid``, the variants as
        cells of ``tcllava ablate`` (a name and TC settings; vanilla's where unset)."""
        from tcllava.recipes.ablate import Cell

        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        values.update(overrides or {})
        unknown = set(values) - set(cls.__dataclass_fields__) - {"grid"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        cells = [Cell.from_dict(c, str(path)) for c in values.pop("grid", None) or []]
        if not cells or len({c.name for c in cells}) != len(cells):
            raise ValueError(f"{path}: grid needs variants with distinct names")
        return cls(**values), {c.name: c.settings for c in cells}


# The needle's own settings (the rest are the experiment's): the keys of an ablation's needle section.
NEEDLE_SETTINGS = tuple(
    f for f in NeedleConfig.__dataclass_fields__ if f not in ExperimentConfig.__dataclass_fields__
)


def _generated(folder: Path, request: dict[str, Any], make: Any) -> Path:
    """``folder``, generated by ``make(folder)`` unless a finished generation of ``request`` is there."""
    marker = folder / "request.json"
    if marker.is_file() and json.loads(marker.read_text()) == request:
        log(f"data: reusing {folder}")
        return folder
    make(folder)
    marker.write_text(json.dumps(request, indent=2))
    return folder


def prepare_needle_data(cfg: NeedleConfig) -> tuple[Path, Path]:
    """(training data: the tasks and the needle at ``frames``, in one ``train/`` folder; needle tests,
    ``L{F}/test`` per length), each generated once into a folder keyed by what it holds."""
    train = {
        "tasks": cfg.tasks,
        "train": cfg.train_per_task,
        "test": cfg.test_per_task,
        "frames": cfg.frames,
        "size": cfg.size,
        "needle": {"train": cfg.needle_train, "distractors": cfg.distractors},
    }
    test = {
        "needle_test": cfg.needle_test,
        "lengths": cfg.lengths,
        "depths": cfg.depths,
        "size": cfg.size,
        "distractors": cfg.distractors,
    }

    def make_train(folder: Path) -> None:
        log(f"data: {len(cfg.tasks)} tasks and {cfg.needle_train} needle videos -> {folder}")
        generate(
            folder,
            cfg.train_per_task,
            cfg.test_per_task,
            num_frames=cfg.frames,
            size=cfg.size,
            tasks=cfg.tasks,
        )
        generate_needle(
            folder, cfg.needle_train, 0, size=cfg.size, distractors=cfg.distractors, train_frames=cfg.frames
        )

    def make_tests(folder: Path) -> None:
        log(f"data: needle tests at {cfg.lengths} frames, {cfg.needle_test} per depth -> {folder}")
        generate_needle(
            folder,
            0,
            cfg.needle_test,
            tuple(cfg.lengths),
            tuple(cfg.depths),
            size=cfg.size,
            distractors=cfg.distractors,
        )

    root = Path(cfg.out) / "data"
    return (
        _generated(root / short_hash(train), train, make_train),
        _generated(root / f"needle-{short_hash(test)}", test, make_tests),
    )


def check_words(model: Path, tests: Path) -> None:
    """A start must know every word of the needle questions it will be asked."""
    from tcllava.model import TCLlavaProcessor

    tokenizer = TCLlavaProcessor.from_pretrained(model).tokenizer
    for file in sorted(tests.glob("L*/test/*.json")):
        texts = sorted(
            {t for row in json.loads(file.read_text()) for t in (row["question"], *row["candidates"])}
        )
        unknown = [
            t
            for t, ids in zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True)
            if tokenizer.unk_token_id in ids
        ]
        if unknown:
            raise ValueError(f"{model}: its tokenizer does not know all of {unknown[0]!r} ({file})")


def needle_title(cfg: NeedleConfig) -> str:
    seeds = f"{len(cfg.seeds)} seed" + ("s" if len(cfg.seeds) > 1 else "")
    task = needle_task(cfg.distractors)
    return f"Needle in a video haystack ({task}): trained at {cfg.frames} frames, {seeds}"


def needle_study(cfg: NeedleConfig, variants: dict[str, TCAttentionConfig]) -> dict[str, Any]:
    """Train each variant per seed (the experiment kit: same data, start and steps) on the tasks plus the
    needle, evaluate it on the tasks and on the needle at every length under every reduction, and write the
    report into ``cfg.out``: ``needle.json``, ``needle.md``, ``needle.png`` (one heat map per variant and
    reduction, the mean over seeds) and the ablation table and plot beside them. This is `tcllava ablate`'s
    grid (study ``needle``) with ``cfg``'s needle settings as its needle section; finished runs and
    evaluations are reused. Returns the needle report."""
    from tcllava.recipes.ablate import AblationConfig, Cell, run_grid

    if not variants:
        raise ValueError("a needle study needs at least one variant")
    grid = [Cell(name, "needle", settings) for name, settings in variants.items()]
    report = run_grid(AblationConfig.with_needle(cfg, grid))
    log(f"needle study: {Path(cfg.out) / 'needle.md'}")
    return report["needle"]
