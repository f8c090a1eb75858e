"""A tiny image LLaVA trained on still images: where the demo's video fine-tuning starts.

TC-LLaVA takes an image LLaVA (a pretrained LLM that already answers multiple-choice questions, a tower
and projector aligned on images) and fine-tunes it on video. None can be downloaded here, so
``tcllava demo --build-base`` builds one on the CPU from still images of the benchmark's visual vocabulary
(:func:`tcllava.data.synthetic.generate_images`: a question, a caption and an option drill per image),
through the same trainer as everything else, with plain causal attention (an image model has no frames
to be temporal about). What it learned is measured on held-out stills and written to
``base_report.json``. The build takes longer than the demo's budget, so its result ships in the package
(``tcllava/assets/tiny_image_llava``, 3.4 MB) and is the demo's default start; ``--start scratch``
skips it, ``--start DIR`` takes a rebuilt one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tcllava.data.synthetic import TASKS, generate_images, make_samples
from tcllava.recipes.tiny_model import TinySizes


@dataclass
class BaseConfig(TinySizes):
    """Defaults of ``tcllava demo --build-base`` (27.8 minutes on two CPU cores; the packaged base is this build)."""

    out: str = "runs/base"
    images: int = 16000
    test_images: int = 300
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1.0e-3
    seed: int = 0
    num_workers: int = 1
    progress: bool = True


def benchmark_texts(seed: int = 0, per_task: int = 64) -> list[str]:
    """Questions and candidates of every task of the video benchmark: the words the base must know."""
    texts = []
    for task in TASKS:
        for sample in make_samples(task, per_task, "train", seed, size=32):
            texts += [sample.question, *sample.candidates]
    return texts


def packaged_base() -> Path:
    """The tiny image LLaVA shipped inside the package: the demo's default start (README: how it was
    built, and what it knows)."""
    return Path(str(resources.files("tcllava") / "assets" / "tiny_image_llava"))


def image_question_accuracy(model_dir: Path, data: Path, limit: int | None = None) -> dict[str, Any]:
    """Accuracy on the first turn of held-out stills (an MVBench-style question about the image), per
    question kind, scored as the demo scores videos: by likelihood and by the generated letter."""
    from tcllava.data.conversations import MVBENCH_ANSWER_PREFIX
    from tcllava.eval.model_predictor import ModelPredictor
    from tcllava.eval.predictor import Prompt
    from tcllava.eval.protocols import MVBENCH_OFFICIAL
    from tcllava.video import read_video

    predictor = ModelPredictor.from_pretrained(model_dir, max_new_tokens=2)
    rows = json.loads((data / "images.json").read_text())[:limit]
    hits: dict[str, Counter[str]] = {"likelihood": Counter(), "generate": Counter()}
    totals: Counter[str] = Counter()
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        clips, prompts, answers, options, kinds = [], [], [], [], []
        for row in chunk:
            system, question, answer = (turn["value"] for turn in row["conversations"][:3])
            clips.append(read_video(data / row["image"], 1))
            prompts.append(Prompt(system, question.replace("<image>", "<video>"), MVBENCH_ANSWER_PREFIX))
            answers.append(answer.removeprefix(MVBENCH_ANSWER_PREFIX)[:1])
            options.append(
                [line[4:] for line in question.split("\n") if line[:1] == "(" and line[2:4] == ") "]
            )
            kinds.append(question.split("\n")[1].removeprefix("Question: ").split(" the ")[0])
        scores = predictor.rank(
            clips,
            prompts,
            [[MVBENCH_OFFICIAL.continuation(k, o) for k, o in enumerate(opts)] for opts in options],
        )
        replies = predictor.generate(clips, prompts)
        for kind, answer, score, reply in zip(kinds, answers, scores, replies, strict=True):
            totals[kind] += 1
            hits["likelihood"][kind] += chr(ord("A") + score.index(max(score))) == answer
            hits["generate"][kind] += reply.strip()[:1] == answer
    report: dict[str, Any] = {"n": sum(totals.values())}
    for scoring, counts in hits.items():
        report[scoring] = {
            "accuracy": 100 * sum(counts.values()) / max(1, sum(totals.values())),
            "by_question": {k: 100 * counts[k] / totals[k] for k in sorted(totals)},
        }
    return report


def build_base(cfg: BaseConfig) -> Path:
    """Generate the still images, train a random tiny LLaVA on them, test it on held-out stills."""
    from tcllava.model import TCLlavaForConditionalGeneration
    from tcllava.model.factory import build_word_tokenizer
    from tcllava.recipes.demo import recipe
    from tcllava.recipes.tiny_model import corpus, demo_config, save_checkpoint
    from tcllava.train import TrainConfig, train

    start = time.perf_counter()
    out = Path(cfg.out)
    data, test = out / "images", out / "test_images"
    if not (data / "images.json").is_file():
        generate_images(data, cfg.images, seed=cfg.seed, size=cfg.size)
    if not (test / "images.json").is_file():
        generate_images(test, cfg.test_images, seed=cfg.seed + 1, size=cfg.size)
    init = out / "init"
    if not (init / "config.json").is_file():
        tokenizer = build_word_tokenizer(corpus([data / "images.json"]) + benchmark_texts(cfg.seed))
        config = demo_config(cfg, tokenizer, "plain")
        torch.manual_seed(cfg.seed)
        save_checkpoint(TCLlavaForConditionalGeneration(config), tokenizer, cfg, init)
    overrides = {
        "model": str(init),
        "output_dir": str(out / "run"),
        "data": [{"path": str(data / "images.json"), "media_root": str(data)}],
        "max_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "gamma": 0.0,
        "mask": "causal",
        "log_every": max(1, cfg.steps // 20),
        "save_every": max(1, cfg.steps // 4),
        "seed": cfg.seed,
        "num_workers": cfg.num_workers,
        "progress": cfg.progress,
    }
    config = TrainConfig.from_yaml(
        recipe("cpu_demo.yaml"), [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    )
    summary = train(config)
    if summary.get("error"):
        raise RuntimeError(f"building the base failed: {summary['error']}")
    model = out / "model"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(summary["final_model_dir"], model)
    report = {
        "base": asdict(cfg),
        "held_out_image_questions": image_question_accuracy(model, test),
        "final_loss": summary.get("final_loss"),
        "minutes": (time.perf_counter() - start) / 60,
    }
    (model / "base_report.json").write_text(json.dumps(report, indent=2))
    return model
