"""Likelihood scoring of multiple-choice options: one full pass per option vs one pass over the shared prompt.

    python benchmarks/likelihood.py              # the demo's shape and a larger one, 9 interleaved rounds
    python benchmarks/likelihood.py --repeats 15 --questions 16

"old" is the scoring `ModelPredictor.rank` did before (kept here as the baseline): every option is its own
row, prompt + answer, so the vision tower, image preprocessing and the whole prompt run once per option.
"new" is `ModelPredictor.rank` now: each prompt runs once and its options continue its KV cache. Both get
the same clips, MVBench-official prompts ("Best option:(" then "B) text") and `--questions` questions of 4
options per call, on a random tiny tcllava model with TC attention on (gamma 1 + frame_block_causal); its
output layer is random (std 0.5) so options get clearly different scores. Times cover the whole call
(tokenising and image preprocessing included, as an evaluation pays them). Both methods run in every
round, their order alternating; the speed ratio is old / new within a round. The ratio is taken on the
process's CPU time, single-threaded by default (``--threads``): on a machine shared with other jobs, wall
time measures the neighbours (it is recorded too). Writes benchmarks/results/likelihood.json and
likelihood.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import string
import time
from pathlib import Path

import torch

from tcllava.data.conversations import MVBENCH_SYSTEM
from tcllava.eval.model_predictor import ModelPredictor
from tcllava.eval.predictor import Prompt
from tcllava.eval.protocols import MVBENCH_OFFICIAL
from tcllava.model import TCLlavaForConditionalGeneration, TCLlavaProcessor
from tcllava.model.factory import build_image_processor, build_word_tokenizer, tiny_config
from tcllava.model.processing import IGNORE_INDEX
from tcllava.video import Clip

RESULTS = Path(__file__).parent / "results"
# name -> (frames, visual tokens per frame side): the demo reads 8 frames pooled to 4 x 4 tokens
SHAPES = {"demo": (8, 4), "large": (16, 8)}
IMAGE_SIZE, PATCH = 64, 8  # the demo's 64 px frames: an 8 x 8 patch grid
WORDS = "red green blue yellow ball cup box left right first then last moved which what colour was the"
OPTIONS = ["red ball", "green cup moved left", "blue box", "the yellow cup moved first"]


def build(shape: str, seed: int = 0) -> tuple[TCLlavaForConditionalGeneration, TCLlavaProcessor]:
    frames, side = SHAPES[shape]
    texts = [WORDS, MVBENCH_SYSTEM, "Question: Options: Only give the best option. Best option:( A) B) C) D)"]
    tok = build_word_tokenizer([*texts, "USER: ASSISTANT: ? . ,"], extra_tokens=["<video>"])
    config = tiny_config(
        len(tok),
        tok.convert_tokens_to_ids("<image>"),
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        vision_hidden=64,
        text_hidden=128,
        text_layers=4,
        pool_shape=(0, side, side),
        chat_template="plain",
        tc_attention={"gamma": 1.0, "mask": "frame_block_causal"},
    )
    torch.manual_seed(seed)
    model = TCLlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.language_model.lm_head.weight.normal_(std=0.5)
    processor = TCLlavaProcessor(tok, build_image_processor(IMAGE_SIZE), config, num_frames=frames)
    return model, processor


def questions(count: int, frames: int) -> tuple[list[Clip], list[Prompt], list[list[str]]]:
    generator = torch.Generator().manual_seed(1)
    clips, prompts, continuations = [], [], []
    for q in range(count):
        pixels = torch.randint(0, 256, (frames, IMAGE_SIZE, IMAGE_SIZE, 3), generator=generator)
        clips.append(Clip(pixels.to(torch.uint8), torch.arange(frames).float()))
        options = OPTIONS[q % 4 :] + OPTIONS[: q % 4]  # prompts of different lengths and orders
        listed = "\n".join(f"({string.ascii_uppercase[k]}) {o}" for k, o in enumerate(options))
        question = " ".join(WORDS.split()[: 3 + q % 5]) + " ?"
        user = f"<video>\nQuestion: {question}\nOptions:\n{listed}\nOnly give the best option."
        prompts.append(Prompt(MVBENCH_SYSTEM, user, MVBENCH_OFFICIAL.assistant_prefix))
        continuations.append([MVBENCH_OFFICIAL.continuation(k, o) for k, o in enumerate(options)])
    return clips, prompts, continuations


def rank_per_option(predictor: ModelPredictor, clips, prompts, continuations) -> list[list[float]]:
    """The previous `ModelPredictor.rank`: one left-padded row per option, the whole prompt in each, only
    the last positions' logits computed; ``batch_rows`` rows per forward."""
    processor, model = predictor.processor, predictor.model
    rows = [
        processor.encode([*predictor._pieces(prompt), (text, True)], [clip.frames])
        for clip, prompt, texts in zip(clips, prompts, continuations, strict=True)
        for text in texts
    ]
    sums = []
    for start in range(0, len(rows), predictor.batch_rows):
        batch = processor.collate(rows[start : start + predictor.batch_rows], padding_side="left")
        labels = batch.pop("labels")
        n = int((labels != IGNORE_INDEX).sum(1).max())
        inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.inference_mode():
            logits = model(**inputs, use_cache=False, logits_to_keep=n + 1).logits
        logits = logits[:, :-1]
        logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        targets = inputs["input_ids"][:, -n:]
        picked = logprobs.gather(-1, targets[..., None]).squeeze(-1)
        sums += (picked * (labels[:, -n:] != IGNORE_INDEX).to(picked.device)).sum(1).tolist()
    out, k = [], 0
    for texts in continuations:
        out.append(sums[k : k + len(texts)])
        k += len(texts)
    return out


def max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True))


def measure(shape: str, count: int, repeats: int, device: str) -> dict:
    frames, side = SHAPES[shape]
    model, processor = build(shape)
    clips, prompts, continuations = questions(count, frames)
    # Rounding reference: the old path in float64 (fp32 scores near -100 carry rounding errors near 1e-5).
    exact = rank_per_option(
        ModelPredictor(copy.deepcopy(model).double(), processor), clips, prompts, continuations
    )
    predictor = ModelPredictor(model.to(device), processor)
    methods = {"old": rank_per_option, "new": ModelPredictor.rank}
    seconds: dict[str, list[float]] = {m: [] for m in methods}  # CPU time of this process
    wall: dict[str, list[float]] = {m: [] for m in methods}
    scores = {}
    for round_ in range(repeats + 1):  # round 0 warms up and is not counted
        order = list(methods) if round_ % 2 else list(methods)[::-1]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            scores[name] = methods[name](predictor, clips, prompts, continuations)
            if round_:
                seconds[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
    ratios = [old / new for old, new in zip(seconds["old"], seconds["new"], strict=True)]
    wall_ratios = [old / new for old, new in zip(wall["old"], wall["new"], strict=True)]
    argmax = [max(range(len(s)), key=s.__getitem__) for s in scores["old"]]
    prompt_tokens = [
        len(processor.encode(predictor._pieces(p), [c.frames]).input_ids)
        for c, p in zip(clips, prompts, strict=True)
    ]
    return {
        "shape": shape,
        "frames": frames,
        "tokens_per_frame": side * side,
        "questions": count,
        "options": sum(len(c) for c in continuations),
        "prompt_tokens": [min(prompt_tokens), max(prompt_tokens)],
        "old_cpu_seconds_median": statistics.median(seconds["old"]),
        "new_cpu_seconds_median": statistics.median(seconds["new"]),
        "speedup_min": min(ratios),
        "speedup_median": statistics.median(ratios),
        "speedup_max": max(ratios),
        "wall_speedup_median": statistics.median(wall_ratios),
        "max_abs_score_difference": max_difference(scores["old"], scores["new"]),
        "max_abs_error_old": max_difference(scores["old"], exact),
        "max_abs_error_new": max_difference(scores["new"], exact),
        "max_abs_score": max(abs(x) for s in exact for x in s),
        "same_argmax": argmax == [max(range(len(s)), key=s.__getitem__) for s in scores["new"]],
        "distinct_argmax": len(set(argmax)),
        "old_cpu_seconds": seconds["old"],
        "new_cpu_seconds": seconds["new"],
        "old_wall_seconds": wall["old"],
        "new_wall_seconds": wall["new"],
    }


def markdown(report: dict) -> str:
    lines = [
        "Likelihood scoring, one full pass per option (old) vs one pass over the shared prompt (new); "
        "tiny tcllava, TC on, fp32; `python benchmarks/likelihood.py`",
        "",
        "| shape | frames x tokens | questions (options) | prompt tokens | old CPU s | new CPU s "
        "| speedup min / median / max | wall speedup | max abs old - new | max abs error vs fp64: old / new "
        "| largest score | same argmax |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['shape']} | {r['frames']} x {r['tokens_per_frame']} | {r['questions']} ({r['options']}) "
            f"| {r['prompt_tokens'][0]}-{r['prompt_tokens'][1]} | {r['old_cpu_seconds_median']:.3f} "
            f"| {r['new_cpu_seconds_median']:.3f} | {r['speedup_min']:.2f} / {r['speedup_median']:.2f} / "
            f"{r['speedup_max']:.2f} | {r['wall_speedup_median']:.2f} | {r['max_abs_score_difference']:.1e} "
            f"| {r['max_abs_error_old']:.1e} / {r['max_abs_error_new']:.1e} | {r['max_abs_score']:.0f} "
            f"| {r['same_argmax']} |"
        )
    lines += [
        "",
        f"Times: median CPU seconds of {report['repeats']} interleaved rounds, whole `rank` call "
        "(preprocessing included); speedup = old / new CPU time per round (wall: median of the wall-time "
        "ratios). Errors: against the old path run in float64, i.e. the fp32 rounding of scores this large. "
        f"{report['date']}, {report['machine']}, {report['device']}, "
        f"torch {report['torch']}, "
        f"torch threads: {report['threads']}, on a shared 2-core machine (other jobs running).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--questions", type=int, default=8, help="questions per rank call (4 options each)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is exact at 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.repeats < 7:
        parser.error("--repeats must be at least 7 (the ratios' spread needs them)")
    torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes:
        row = measure(shape, args.questions, args.repeats, args.device)
        rows.append(row)
        print(
            f"{shape:<6} old {row['old_cpu_seconds_median']:.3f} s  "
            f"new {row['new_cpu_seconds_median']:.3f} s  "
            f"x{row['speedup_median']:.2f} (min {row['speedup_min']:.2f}, max {row['speedup_max']:.2f}; "
            f"wall x{row['wall_speedup_median']:.2f})  "
            f"max |old - new| {row['max_abs_score_difference']:.1e}, "
            f"vs fp64: old {row['max_abs_error_old']:.1e} "
            f"new {row['max_abs_error_new']:.1e} (scores up to {row['max_abs_score']:.0f})",
            flush=True,
        )
    report = {
        "benchmark": "MVBench-style likelihood ranking, 4 options per question, fp32",
        "device": args.device,
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "likelihood.json").write_text(json.dumps(report, indent=2))
    (args.out / "likelihood.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
