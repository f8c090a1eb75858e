"""The tiny image LLaVA, trained on still images: where the demo's video fine-tuning starts.

TC-LLaVA takes an image LLaVA (a pretrained LLM that already answers multiple-choice questions, a tower
and projector aligned on images) and fine-tunes it on video. None can be downloaded here, so the demo
builds one on the CPU from still images of the benchmark's visual vocabulary
(:func:`tcllava.data.synthetic.generate_images`: a question, a caption and an option drill per image),
through the same trainer as everything else, with plain causal attention (an image model has no frames
to be temporal about). What it learned is measured on held-out stills and written to
``base_report.json``, last, so a report marks a finished build.

:func:`image_llava` builds it once per machine into a cache outside the repository (``$TCLLAVA_CACHE``,
else ``$XDG_CACHE_HOME/tcllava`` or ``~/.cache/tcllava``), in a folder named by a hash of the build
settings, :data:`BASE_FORMAT` and the benchmark's words: changing any of them builds a new one instead of
reusing a model that does not fit. An interrupted build resumes from its last checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tcllava.data.synthetic import TASKS, generate_images, make_needle_samples, make_samples
from tcllava.data.synthetic.stills import KINDS
from tcllava.recipes.tiny_model import TinySizes, corpus, demo_config, save_checkpoint

TOWER_REPORT = "tower_report.json"
BASE_FORMAT = 2  # bump when a build's recipe or report changes in a way its settings do not show
NOT_IN_KEY = ("out", "num_workers", "progress")  # settings that do not change the model built


@dataclass
class ImageLlavaConfig(TinySizes):
    """Settings of the image-LLaVA build (the defaults: about 28 minutes on two CPU cores)."""

    out: str = ""  # "" = this build's folder in the cache (see image_llava)
    images: int = 0  # training stills; 0 = steps x batch_size, at most 16,000
    test_images: int = 300
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1.0e-3
    # What the stills ask about (tcllava.data.synthetic.stills.KINDS; None: everything) and whether each
    # also drills pointing at an option letter.
    kinds: list[str] | None = None
    drill: bool = True
    # Before the LLaVA stage: steps of the tower's own probe objective (tcllava.recipes.tower); 0 = none.
    tower_steps: int = 0
    tower_batch_size: int = 64
    tower_lr: float = 3.0e-3
    seed: int = 0
    num_workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.test_images < 1:
            raise ValueError("steps, batch_size and test_images must be positive")
        if self.tower_steps < 0 or self.tower_batch_size < 1 or not self.tower_lr > 0:
            raise ValueError("tower_steps must be >= 0, tower_batch_size >= 1 and tower_lr > 0")
        if self.kinds is not None and (not self.kinds or set(self.kinds) - set(KINDS)):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if self.images <= 0:
            self.images = min(self.steps * self.batch_size, 16000)


def recipe(name: str) -> Path:
    """A YAML recipe shipped in the package (``configs/`` in the repository points at the same files)."""
    return Path(str(resources.files("tcllava") / "configs" / name))


@functools.cache
def benchmark_texts(seed: int = 0, per_task: int = 64) -> tuple[str, ...]:
    """Questions and candidates of every task of the video benchmark and of the needle (both variants):
    the words the base must know. Cached: every demo seed and ablation cell hashes them to find its start."""
    texts: list[str] = []
    for task in TASKS:
        for sample in make_samples(task, per_task, "train", seed, size=32):
            texts += [sample.question, *sample.candidates]
    for distractors in (False, True):
        for sample in make_needle_samples(per_task, 8, "train", None, seed, 32, distractors):
            texts += [sample.question, *sample.candidates]
    return tuple(texts)


def cache_dir() -> Path:
    """Where built models are kept: ``$TCLLAVA_CACHE``, else ``$XDG_CACHE_HOME/tcllava``, else
    ``~/.cache/tcllava``."""
    if os.environ.get("TCLLAVA_CACHE"):
        return Path(os.environ["TCLLAVA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tcllava"


def build_key(cfg: ImageLlavaConfig) -> str:
    """A name for what this build produces: its settings, the build format and the benchmark's words."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}
    payload = json.dumps([BASE_FORMAT, settings, benchmark_texts(cfg.seed)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def image_llava(cfg: ImageLlavaConfig, announce: Callable[[str], None] = print) -> Path:
    """The image LLaVA of these settings: reused when built before, otherwise built (once) and cached.

    Only the model and its report are kept; the stills, the initial weights and the checkpoints of a
    finished build are deleted."""
    folder = Path(cfg.out) if cfg.out else cache_dir() / "image_llava" / build_key(cfg)
    model = folder / "model"
    if (model / "base_report.json").is_file():
        announce(f"image LLaVA: reusing {model}")
        return model
    announce(
        f"image LLaVA: building it once into {folder} ({cfg.steps} steps of {cfg.batch_size} stills; "
        f"about {cfg.steps * 0.56 / 60:.0f} min on two CPU cores; later runs reuse it)"
    )
    build_image_llava(replace(cfg, out=str(folder)))
    for scratch in ("images", "test_images", "init", "run"):
        shutil.rmtree(folder / scratch, ignore_errors=True)
    return model


def image_question_accuracy(model_dir: Path, data: Path, limit: int | None = None) -> dict[str, Any]:
    """Accuracy on the first question of held-out stills (MVBench-style, about one attribute), per kind
    of question, scored as the demo scores videos: by likelihood and by the generated letter read with
    the evaluator's answer extraction."""
    from tcllava.data.conversations import MVBENCH_ANSWER_PREFIX
    from tcllava.eval.extract import extract_choice
    from tcllava.eval.model_predictor import ModelPredictor
    from tcllava.eval.predictor import Prompt
    from tcllava.eval.protocols import MVBENCH_OFFICIAL
    from tcllava.video import read_video

    predictor = ModelPredictor.from_pretrained(model_dir, max_new_tokens=8)
    rows = json.loads((data / "images.json").read_text())[:limit]
    hits: dict[str, Counter[str]] = {"likelihood": Counter(), "generate": Counter()}
    totals: Counter[str] = Counter()
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        clips = [read_video(data / row["image"], 1) for row in chunk]
        prompts = [
            Prompt(
                row["conversations"][0]["value"],
                row["conversations"][1]["value"].replace("<image>", "<video>"),
                MVBENCH_ANSWER_PREFIX,
            )
            for row in chunk
        ]
        quizzes = [row["quiz"] for row in chunk]
        scores = predictor.rank(
            clips,
            prompts,
            [[MVBENCH_OFFICIAL.continuation(k, o) for k, o in enumerate(q["candidates"])] for q in quizzes],
        )
        replies = predictor.generate(clips, prompts)
        for quiz, score, reply in zip(quizzes, scores, replies, strict=True):
            truth = chr(ord("A") + quiz["candidates"].index(quiz["answer"]))
            totals[quiz["kind"]] += 1
            hits["likelihood"][quiz["kind"]] += chr(ord("A") + score.index(max(score))) == truth
            hits["generate"][quiz["kind"]] += extract_choice(reply, quiz["candidates"]) == truth
    report: dict[str, Any] = {"n": sum(totals.values()), "n_by_kind": dict(sorted(totals.items()))}
    for scoring, counts in hits.items():
        report[scoring] = {
            "accuracy": 100 * sum(counts.values()) / max(1, sum(totals.values())),
            "by_kind": {k: 100 * counts[k] / totals[k] for k in sorted(totals)},
        }
    return report


def build_image_llava(cfg: ImageLlavaConfig) -> Path:
    """Generate the still images, train a random tiny LLaVA on them, test it on held-out stills."""
    from tcllava.model import TCLlavaForConditionalGeneration, TCLlavaProcessor
    from tcllava.model.factory import build_image_processor, build_word_tokenizer
    from tcllava.recipes.tower import pretrain_tower
    from tcllava.train import TrainConfig, train

    start = time.perf_counter()
    out = Path(cfg.out)
    data, test = out / "images", out / "test_images"
    kinds = None if cfg.kinds is None else tuple(cfg.kinds)
    if not (data / "images.json").is_file():
        generate_images(data, cfg.images, seed=cfg.seed, size=cfg.size, kinds=kinds, drill=cfg.drill)
    if not (test / "images.json").is_file():
        generate_images(test, cfg.test_images, seed=cfg.seed + 1, size=cfg.size, kinds=kinds, drill=cfg.drill)
    init = out / "init"
    if not (init / "config.json").is_file():
        tokenizer = build_word_tokenizer([*corpus([data / "images.json"]), *benchmark_texts(cfg.seed)])
        config = demo_config(cfg, tokenizer, "plain")
        torch.manual_seed(cfg.seed)
        model = TCLlavaForConditionalGeneration(config)
        tower = None
        if cfg.tower_steps:
            processor = TCLlavaProcessor(
                tokenizer, build_image_processor(cfg.size), config, num_frames=cfg.frames
            )
            tower = pretrain_tower(
                model, processor, cfg.tower_steps, cfg.tower_batch_size, cfg.tower_lr, cfg.seed
            )
        save_checkpoint(model, tokenizer, cfg, init)
        (init / TOWER_REPORT).write_text(json.dumps(tower, indent=2))
    overrides = {
        "model": str(init),
        "output_dir": str(out / "run"),
        "data": [{"path": str(data / "images.json"), "media_root": str(data)}],
        "max_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "attention": {"gamma": 0.0, "mask": "causal"},
        "log_every": max(1, cfg.steps // 20),
        "save_every": max(1, cfg.steps // 4),
        "seed": cfg.seed,
        "num_workers": cfg.num_workers,
        "progress": cfg.progress,
    }
    summary = train(TrainConfig.from_yaml(recipe("cpu_demo.yaml"), values=overrides))
    if summary.get("error"):
        raise RuntimeError(f"building the base failed: {summary['error']}")
    model = out / "model"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(summary["final_model_dir"], model)
    report = {
        "base": asdict(cfg),
        "tower": json.loads((init / TOWER_REPORT).read_text()),
        "held_out_image_questions": image_question_accuracy(model, test),
        "final_loss": summary.get("final_loss"),
        "minutes": (time.perf_counter() - start) / 60,
    }
    (model / "base_report.json").write_text(json.dumps(report, indent=2))
    return model
