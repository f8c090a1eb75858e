"""The experiment kit the demo and the ablation grid are composed of: prepare the data, choose the start,
run one variant (train, then evaluate with both scorings), report.

Everything goes through the code a GPU user runs: encoded video files and MVBench-format JSON
(:mod:`tcllava.data.synthetic`), the training recipe (:mod:`tcllava.train`) and the MVBench evaluator on
MVBench's official prompts (:mod:`tcllava.eval`). A variant is a name and a
:class:`~tcllava.attention.TCAttentionConfig`; variants of one experiment share data, start, steps and
seeds, so they differ only in TC attention.

Reruns into the same ``out`` folder never mix configurations: data live in ``data/<key>``, and each run in
``runs/<variant>-seed<s>-<key>`` (evaluation in ``eval/...`` of the same name), where the key hashes every
setting that shapes that model. An interrupted experiment with the same settings resumes (the trainer from
its last checkpoint; finished evaluations are reused); other settings start their own runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tcllava.attention import TCAttentionConfig
from tcllava.data.synthetic import TASKS, generate
from tcllava.recipes.image_llava import ImageLlavaConfig, image_llava, recipe
from tcllava.recipes.tiny_model import TinySizes

SCORINGS = ("likelihood", "generate")  # the first is the headline
START_KINDS = ("base", "scratch")  # or the path of a tcllava checkpoint
LLMS = ("tiny", "smollm2")
# What a run's folder name is keyed by: what shapes the model it trains (not seeds, not where it goes).
NOT_IN_RUN_KEY = ("out", "seeds", "eval_batch_size", "num_workers", "progress", "test_per_task")


def log(message: str) -> None:
    print(f"[tcllava {time.strftime('%H:%M:%S')}] {message}", flush=True)


def short_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass
class ExperimentConfig(TinySizes):
    """Settings shared by every variant of an experiment. ``start``: ``base`` (the tiny image LLaVA of
    :mod:`tcllava.recipes.image_llava`, built once and cached), ``scratch`` (random weights, one set per
    seed) or a tcllava checkpoint directory. With ``llm="smollm2"`` the start is always scratch tower and
    projector around the pretrained SmolLM2-135M-Instruct."""

    out: str = "runs/demo"
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    train_per_task: int = 240
    test_per_task: int = 40
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 160
    batch_size: int = 16
    lr: float = 1.0e-3
    start: str = "base"
    base_steps: int = ImageLlavaConfig.steps
    base_test_images: int = ImageLlavaConfig.test_images
    llm: str = "tiny"
    eval_batch_size: int = 32
    num_workers: int = 0  # decoding in the main process: faster than a DataLoader worker on two cores
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct names among {', '.join(TASKS)}; got {self.tasks}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct integers >= 0, got {self.seeds}")
        for name in (
            "train_per_task",
            "test_per_task",
            "steps",
            "batch_size",
            "base_steps",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.llm not in LLMS:
            raise ValueError(f"llm must be one of {LLMS}, got {self.llm!r}")
        if self.start not in START_KINDS and not (Path(self.start) / "config.json").is_file():
            raise ValueError(
                f"start must be base, scratch or a tcllava checkpoint directory; got {self.start!r}"
            )

    @property
    def start_per_seed(self) -> bool:
        """Random weights (a tiny LLM from scratch, or SmolLM2's random tower) are drawn per seed."""
        return self.start == "scratch" or self.llm != "tiny"

    def run_key(self, settings: TCAttentionConfig) -> str:
        values = {k: v for k, v in asdict(self).items() if k not in NOT_IN_RUN_KEY}
        return short_hash([values, settings.to_dict()])

    def image_llava_config(self) -> ImageLlavaConfig:
        """The image-LLaVA build that fits this experiment: the same model shape, its build length."""
        sizes = {name: getattr(self, name) for name in TinySizes.__dataclass_fields__}
        return ImageLlavaConfig(
            **sizes, steps=self.base_steps, test_images=self.base_test_images, progress=self.progress
        )


class Phases:
    """One line per phase, numbered; before a unit of the main work (a variant's training and evaluation)
    the time left, estimated from the units done so far."""

    def __init__(self, total: int, units: int) -> None:
        self.total, self.units = total, units
        self.done, self.unit_seconds = 0, []
        self.current: tuple[bool, float] | None = None

    def begin(self, what: str, unit: bool = False) -> None:
        eta = ""
        if unit and self.unit_seconds:
            left = (self.units - len(self.unit_seconds)) * sum(self.unit_seconds) / len(self.unit_seconds)
            eta = f" (about {math.ceil(left / 60)} min left)"
        log(f"[{self.done + 1}/{self.total}] {what}{eta}")
        self.current = (unit, time.perf_counter())

    def end(self) -> None:
        unit, began = self.current or (False, time.perf_counter())
        if unit:
            self.unit_seconds.append(time.perf_counter() - began)
        self.done += 1
        self.current = None


def prepare_data(cfg: ExperimentConfig) -> Path:
    """The benchmark's train and test videos for these settings, generated once into ``data/<key>``."""
    request = {
        "tasks": cfg.tasks,
        "train": cfg.train_per_task,
        "test": cfg.test_per_task,
        "frames": cfg.frames,
        "size": cfg.size,
    }
    data = Path(cfg.out) / "data" / short_hash(request)
    manifest = data / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("request") == request:
        log(f"data: reusing {data}")
        return data
    log(
        f"data: {len(cfg.tasks)} tasks x ({cfg.train_per_task} train + {cfg.test_per_task} test) videos -> {data}"
    )
    result = generate(
        data,
        cfg.train_per_task,
        cfg.test_per_task,
        seed=0,
        num_frames=cfg.frames,
        size=cfg.size,
        tasks=cfg.tasks,
    )
    manifest.write_text(json.dumps({**result, "request": request}, indent=2))
    return data


def choose_start(cfg: ExperimentConfig, data: Path, seed: int) -> Path:
    """The weights every variant of ``seed`` starts from: the image LLaVA or a given checkpoint (the same
    for every seed), or random weights for this seed, saved with tokenizer and processor."""
    from tcllava.recipes.tiny_model import build_initial_checkpoint

    if not cfg.start_per_seed:
        path = image_llava(cfg.image_llava_config(), announce=log) if cfg.start == "base" else Path(cfg.start)
        check_start(path, data, cfg)
        return path
    path = (
        Path(cfg.out)
        / "init"
        / f"{cfg.llm}-seed{seed}-{short_hash([cfg.image_llava_config().__dict__, data.name])}"
    )
    if (path / "config.json").is_file():
        return path
    return build_initial_checkpoint(cfg, data, seed, path)


def check_start(path: Path, data: Path, cfg: ExperimentConfig) -> None:
    """A starting checkpoint must read the experiment's frames and know every word of its benchmark."""
    from tcllava.model import TCLlavaConfig, TCLlavaProcessor

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no tcllava checkpoint here (config.json missing)")
    size = TCLlavaConfig.from_pretrained(path).vision_config.image_size
    if size != cfg.size:
        raise ValueError(
            f"{path}: the tower reads {size}px frames but the experiment's videos are {cfg.size}px"
        )
    tokenizer = TCLlavaProcessor.from_pretrained(path).tokenizer
    for file in sorted(data.glob("*/*.json")):
        texts = [
            text for row in json.loads(file.read_text()) for text in (row["question"], *row["candidates"])
        ]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        unknown = [text for text, ids in zip(texts, encoded, strict=True) if tokenizer.unk_token_id in ids]
        if unknown:
            raise ValueError(
                f"{path}: its tokenizer does not know all of {unknown[0]!r} ({file}); rebuild the "
                "image LLaVA with `tcllava demo --build-base` after changing the benchmark"
            )


@dataclass
class VariantRun:
    """Where one (variant, seed) was trained and evaluated, and its accuracy (a fraction) per scoring and
    task."""

    name: str
    seed: int
    model: Path
    eval_dir: Path
    accuracy: dict[str, dict[str, float]]
    results: dict[str, dict[str, Any]]


def run_folder(cfg: ExperimentConfig, name: str, settings: TCAttentionConfig, seed: int) -> str:
    return f"{name}-seed{seed}-{cfg.run_key(settings)}"


def run_variant(
    cfg: ExperimentConfig, data: Path, start: Path, name: str, settings: TCAttentionConfig, seed: int
) -> VariantRun:
    """Fine-tune ``start`` with ``settings`` (the CPU recipe configs/cpu_demo.yaml with this experiment's
    values), then evaluate it with both scorings. Finished evaluations are reused, not redone."""
    folder = run_folder(cfg, name, settings, seed)
    run_dir, eval_dir = Path(cfg.out) / "runs" / folder, Path(cfg.out) / "eval" / folder
    done = {scoring: eval_dir / scoring / "results.json" for scoring in SCORINGS}
    model = run_dir / "final"
    if all(path.is_file() for path in done.values()) and (model / "config.json").is_file():
        results = {k: json.loads(path.read_text()) for k, path in done.items()}
    else:
        model = train_variant(cfg, data, start, run_dir, settings, seed)
        results = evaluate_variant(cfg, data, model, eval_dir)
    accuracy = {
        scoring: {task: stats["accuracy"] / 100 for task, stats in result["metrics"]["tasks"].items()}
        for scoring, result in results.items()
    }
    return VariantRun(name, seed, model, eval_dir, accuracy, results)


def train_variant(
    cfg: ExperimentConfig, data: Path, start: Path, run_dir: Path, settings: TCAttentionConfig, seed: int
) -> Path:
    from tcllava.train import TrainConfig, train

    values = {
        "model": str(start),
        "output_dir": str(run_dir),
        "data": [{"path": str(data / "train" / "*.json"), "media_root": str(data / "train")}],
        "num_frames": cfg.frames,
        "max_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "log_every": max(1, cfg.steps // 10),
        "save_every": max(1, cfg.steps // 2),
        "seed": seed,
        "num_workers": cfg.num_workers,
        "progress": cfg.progress,
        "attention": settings.to_dict(),
    }
    summary = train(TrainConfig.from_yaml(recipe("cpu_demo.yaml"), values=values))
    if summary.get("error"):
        raise RuntimeError(f"training {run_dir.name} failed: {summary['error']}")
    return Path(summary["final_model_dir"])


def evaluate_variant(cfg: ExperimentConfig, data: Path, model: Path, eval_dir: Path) -> dict[str, dict]:
    """The MVBench evaluator's results for each scoring (official prompts, frames at segment middles)."""
    from tcllava.eval import EvalRun, evaluate
    from tcllava.eval.model_predictor import ModelPredictor

    predictor = ModelPredictor.from_pretrained(model, max_new_tokens=8)
    return {
        scoring: evaluate(
            predictor,
            EvalRun(
                "synthetic",
                data,
                eval_dir / scoring,
                protocol="official",
                num_frames=cfg.frames,
                batch_size=cfg.eval_batch_size,
                num_workers=cfg.num_workers,
                sampling="middle",
                scoring=scoring,
            ),
        )
        for scoring in SCORINGS
    }


def task_groups(tasks: list[str]) -> dict[str, list[str]]:
    """The experiment's tasks by kind (temporal tasks answerable only from frame order; static controls)."""
    groups = {kind: [t for t in tasks if TASKS[t].kind == kind] for kind in ("temporal", "static")}
    return {kind: names for kind, names in groups.items() if names}


def chance_levels(data: Path, tasks: list[str]) -> dict[str, float]:
    levels = {}
    for task in tasks:
        rows = json.loads((data / "test" / f"{task}.json").read_text())
        levels[task] = sum(1 / len(r["candidates"]) for r in rows) / len(rows)
    return levels
