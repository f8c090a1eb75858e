"""`tcllava demo`: TC-LLaVA vs vanilla LLaVA as paired runs on the synthetic temporal benchmark.

Per seed both variants start from the same weights and see the same data in the same order; they differ
only in TC attention (vanilla = gamma 0 and the causal mask). The comparison is the mean of the per-seed
differences with its 95% interval. Each model is scored twice on MVBench's official prompts: by
likelihood (the option whose whole answer "B) red circle" the model finds most likely: what it knows about
the video; the headline) and by the generated letter (MVBench's own rule), which a model this small
rarely learns to write (docs/experiments.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tcllava.attention import TCAttentionConfig
from tcllava.recipes.experiment import (
    SCORINGS,
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
from tcllava.recipes.stats import bar_plot, comparison_table, mean_ci, paired_difference

VARIANTS = {"vanilla": TCAttentionConfig.vanilla(), "tc-llava": TCAttentionConfig()}
PROTOCOL = (
    "MVBench official prompts (system prompt, (A) options, 'Best option:(' priming), middle sampling; scored "
    "by likelihood of each option's whole answer and by the generated letter"
)


@dataclass
class DemoConfig(ExperimentConfig):
    """The experiment of ``make demo``; :meth:`quick` is a smoke test of the same path."""

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


def summarise(cfg: DemoConfig, runs: dict[str, dict[int, VariantRun]], scoring: str) -> dict[str, Any]:
    """Per variant, task and task group: mean ± 95% CI over seeds; and the paired TC - vanilla difference."""
    groups = task_groups(cfg.tasks)

    def per_seed(name: str, seed: int) -> dict[str, float]:
        accuracy = dict(runs[name][seed].accuracy[scoring])
        for kind, tasks in groups.items():
            accuracy[f"**mean {kind}**"] = sum(accuracy[t] for t in tasks) / len(tasks)
        return accuracy

    values = {name: [per_seed(name, s) for s in cfg.seeds] for name in VARIANTS}
    rows = list(values["vanilla"][0])
    summary = {name: {row: mean_ci([v[row] for v in values[name]]) for row in rows} for name in VARIANTS}
    paired = {
        row: paired_difference([v[row] for v in values["tc-llava"]], [v[row] for v in values["vanilla"]])
        for row in rows
    }
    return {"groups": groups, "summary": summary, "paired": paired}


def headline(paired: dict[str, Any], seeds: int) -> str:
    """The demo's result in one sentence: TC-LLaVA minus vanilla on the temporal tasks."""
    diff = paired["**mean temporal**"]
    if diff["excludes_zero"] is None:
        return f"TC-LLaVA minus vanilla on the temporal tasks: {100 * diff['mean']:+.1f} points (one seed: no interval)."
    verdict = "excludes zero" if diff["excludes_zero"] else "includes zero: no difference shown"
    return (
        f"TC-LLaVA minus vanilla on the temporal tasks: {100 * diff['mean']:+.1f} points "
        f"[{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}] (95% interval over {seeds} paired seeds; "
        f"the interval {verdict})."
    )


def chat_example(data: Path, runs: dict[str, VariantRun]) -> dict[str, Any]:
    """One temporal test question answered by both models through the chat path, with the option each
    finds most likely (from its likelihood evaluation)."""
    from tcllava.eval.protocols import MVBENCH_OFFICIAL
    from tcllava.model import load

    task = next(
        (t for t in ("action_sequence", "state_change") if (data / "test" / f"{t}.json").is_file()), None
    )
    task = task or sorted(p.stem for p in (data / "test").glob("*.json"))[0]
    row = json.loads((data / "test" / f"{task}.json").read_text())[0]
    options = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(row["candidates"]))
    question = f"Question: {row['question']}\nOptions:\n{options}\nOnly give the best option."
    truth = f"({chr(65 + row['candidates'].index(row['answer']))}) {row['answer']}"
    answers, likeliest = {}, {}
    for name, run in runs.items():
        model, _ = load(run.model)
        reply = model.chat(
            data / "test" / row["video"],
            question,
            system=MVBENCH_OFFICIAL.system,
            answer_prefix=MVBENCH_OFFICIAL.assistant_prefix,
            max_new_tokens=8,
            do_sample=False,
        )
        answers[name] = "(" + reply
        ranked = run.eval_dir / "likelihood" / "predictions.jsonl"
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


def next_commands(data: Path, models: dict[str, Path], chat: dict[str, Any], demo_out: str) -> list[str]:
    question = chat["question"].splitlines()[0].removeprefix("Question: ")
    return [
        f'tcllava chat --model {models["tc-llava"]} --video {chat["video"]} "{question}"',
        f"tcllava serve --model vanilla={models['vanilla']} --model tc-llava={models['tc-llava']}",
        f"tcllava eval synthetic --model {models['tc-llava']} --data {data} --out {demo_out}/eval-again "
        "--scoring likelihood",
        "tcllava ablate configs/ablate_cpu.yaml",
    ]


def run_demo(cfg: DemoConfig) -> dict:
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    variant_runs = len(cfg.seeds) * len(VARIANTS)
    phases = Phases(
        total=variant_runs + 2 + (len(cfg.seeds) if cfg.start_per_seed else 1), units=variant_runs
    )
    phases.begin("benchmark videos")
    data = prepare_data(cfg)
    phases.end()
    runs: dict[str, dict[int, VariantRun]] = {name: {} for name in VARIANTS}
    starts: dict[int, str] = {}
    for seed in cfg.seeds:
        if seed == cfg.seeds[0] or cfg.start_per_seed:
            phases.begin(f"start of seed {seed} ({cfg.start}, {cfg.llm} LLM)")
            starts[seed] = str(choose_start(cfg, data, seed))
            phases.end()
        else:
            starts[seed] = starts[cfg.seeds[0]]
        for name, settings in VARIANTS.items():
            phases.begin(f"{name}, seed {seed}: train {cfg.steps} steps, then evaluate", unit=True)
            run = run_variant(cfg, data, Path(starts[seed]), name, settings, seed)
            runs[name][seed] = run
            phases.end()
            overall = {k: r["metrics"]["overall"]["accuracy"] for k, r in run.results.items()}
            log(
                f"{name} seed {seed}: {overall['likelihood']:.1f}% by likelihood, {overall['generate']:.1f}% by "
                f"generated letter ({run.results['generate']['metrics']['overall']['n']} questions)"
            )
    phases.begin("report and chat example")
    reports = {scoring: summarise(cfg, runs, scoring) for scoring in SCORINGS}
    first = {name: runs[name][cfg.seeds[0]] for name in VARIANTS}
    chat = chat_example(data, first)
    models = {name: run.model for name, run in first.items()}
    results = {
        "demo": asdict(cfg),
        "protocol": PROTOCOL,
        "start": describe_start(cfg, starts),
        "chance": chance_levels(data, cfg.tasks),
        "summary": {scoring: report["summary"] for scoring, report in reports.items()},
        "paired": {scoring: report["paired"] for scoring, report in reports.items()},
        "headline": headline(reports["likelihood"]["paired"], len(cfg.seeds)),
        "per_run": {
            scoring: {
                name: {seed: r.accuracy[scoring] for seed, r in by_seed.items()}
                for name, by_seed in runs.items()
            }
            for scoring in SCORINGS
        },
        "models": {
            name: {seed: str(r.model) for seed, r in by_seed.items()} for name, by_seed in runs.items()
        },
        "evaluations": {
            name: {seed: str(r.eval_dir) for seed, r in by_seed.items()} for name, by_seed in runs.items()
        },
        "data": str(data),
        "chat_example": chat,
        "next": next_commands(data, models, chat, cfg.out),
        "seconds": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = report_markdown(cfg, results, reports)
    (out / "results.md").write_text(text)
    bar_plot(
        reports["likelihood"]["summary"],
        list(VARIANTS),
        cfg.tasks,
        out / "results.png",
        "Synthetic temporal benchmark (likelihood scoring): vanilla vs TC-LLaVA",
        results["chance"],
    )
    phases.end()
    print()
    print(text)
    print(f"Question ({chat['task']}): {chat['question']}")
    for name, answer in chat["answers"].items():
        print(f"  {name:>10}: says {answer}; finds most likely {chat['likeliest'][name]}")
    print(f"  {'truth':>10}: {chat['truth']}\n")
    log(f"done in {results['seconds'] / 60:.1f} min: {out / 'results.md'}, {out / 'results.png'}")
    print(f"\n{results['headline']}\n\nNext, try:")
    for command in results["next"]:
        print(f"  {command}")
    return results


def report_markdown(cfg: DemoConfig, results: dict[str, Any], reports: dict[str, Any]) -> str:
    header = (
        f"# tcllava demo: TC-LLaVA vs vanilla on the synthetic temporal benchmark\n\n"
        f"{len(cfg.seeds)} paired seeds, {cfg.steps} steps x batch {cfg.batch_size}, {cfg.frames} frames, "
        f"{cfg.test_per_task} test questions per task; accuracy % as mean ± 95% CI over seeds; the "
        "difference is TC-LLaVA minus vanilla, the mean of the per-seed differences ± its 95% interval.\n\n"
        + start_line(results["start"])
        + f"**{results['headline']}**\n\n"
    )
    sections = {
        "likelihood": "## Scored by likelihood: the option whose whole answer the model finds most likely\n\n",
        "generate": "## Scored by the generated letter (MVBench official: greedy after 'Best option:(')\n\n",
    }
    tables = {
        scoring: comparison_table(report["summary"], list(VARIANTS), report["groups"], report["paired"])
        for scoring, report in reports.items()
    }
    return header + "\n".join(sections[k] + tables[k] for k in SCORINGS)


def describe_start(cfg: DemoConfig, starts: dict[int, str]) -> dict[str, Any]:
    """What the variants were fine-tuned from, with the image LLaVA's own report when there is one."""
    report = Path(starts[cfg.seeds[0]]) / "base_report.json"
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
