"""A tiny image LLaVA trained on still images: a starting point for the demo's video fine-tuning.

TC-LLaVA takes an image LLaVA (a pretrained LLM that already answers multiple-choice questions, a tower
and projector aligned on images) and fine-tunes it on video. None can be downloaded here, so
``tcllava demo --build-base`` builds one on the CPU from still images of the benchmark's visual vocabulary
(:func:`tcllava.data.synthetic.generate_images`: a question, a caption and an option drill per image),
through the same trainer as everything else, with plain causal attention (an image model has no frames
to be temporal about); ``tcllava demo --start runs/base/model`` then fine-tunes both variants from it.
What it learns within its budget is measured on held-out stills and written to ``base_report.json``
(README: the default build learns to name colours and counts, not yet to point at the option letter).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tcllava.data.synthetic import TASKS, generate_images, make_samples
from tcllava.recipes.tiny_model import TinySizes


@dataclass
class BaseConfig(TinySizes):
    """Defaults of ``tcllava demo --build-base`` (about 14 minutes on two CPU cores)."""

    out: str = "runs/base"
    images: int = 16000
    test_images: int = 300
    steps: int = 2000
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


def image_mc_accuracy(model_dir: Path, data: Path, limit: int | None = None) -> dict[str, Any]:
    """Accuracy of the first turn (an MVBench-style question about the image) on held-out images."""
    from tcllava.data.conversations import MVBENCH_ANSWER_PREFIX
    from tcllava.model import load

    model, _ = load(model_dir)
    rows = json.loads((data / "images.json").read_text())[:limit]
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for row in rows:
        system, question, answer = (turn["value"] for turn in row["conversations"][:3])
        text = question.replace("<image>\n", "")
        reply = model.chat(
            data / row["image"],
            text,
            system=system,
            answer_prefix=MVBENCH_ANSWER_PREFIX,
            max_new_tokens=2,
            do_sample=False,
        )
        kind = text.split("\n")[0].removeprefix("Question: ").split(" the ")[0]
        totals[kind] += 1
        hits[kind] += reply.strip()[:1] == answer.removeprefix(MVBENCH_ANSWER_PREFIX)[:1]
    return {
        "accuracy": 100 * sum(hits.values()) / max(1, sum(totals.values())),
        "n": sum(totals.values()),
        "by_question": {k: 100 * hits[k] / totals[k] for k in sorted(totals)},
    }


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
        "held_out_image_questions": image_mc_accuracy(model, test),
        "final_loss": summary.get("final_loss"),
        "minutes": (time.perf_counter() - start) / 60,
    }
    (model / "base_report.json").write_text(json.dumps(report, indent=2))
    return model
