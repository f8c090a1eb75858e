"""`tcllava eval BENCH --model DIR --data DIR --out DIR ...`: the command-line face of `evaluate()`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tcllava.eval.benchmarks import BENCHMARKS
from tcllava.eval.config import EVAL_SAMPLINGS, EvalRun
from tcllava.eval.protocols import PROTOCOL_NAMES, SCORINGS
from tcllava.eval.subtitles import SUBTITLE_MODES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "benchmark", choices=BENCHMARKS, metavar="BENCH", help=f"one of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--model", help="model directory (loaded with tcllava.eval.model_predictor.ModelPredictor)"
    )
    parser.add_argument("--data", required=True, help="local copy of the benchmark in its published layout")
    parser.add_argument("--out", required=True, help="output directory (predictions, results.json/.md/.png)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOL_NAMES,
        default="official",
        help="prompt/sampling/scoring protocol (recorded in results); default official",
    )
    parser.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    parser.add_argument(
        "--sampling",
        choices=EVAL_SAMPLINGS,
        help="override the protocol's frame sampling (recorded in results)",
    )
    parser.add_argument(
        "--scoring",
        choices=SCORINGS,
        default="generate",
        help="generate (greedy answer + extraction, default) or likelihood (the option whose whole "
        "answer the model finds most likely; multiple choice only); recorded in results",
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding videos ahead")
    parser.add_argument("--limit", type=int, help="only the first N rows of each task (smoke runs)")
    parser.add_argument("--subtitles", action="store_true", help="videomme: add subtitles to the prompt")
    parser.add_argument(
        "--subtitle-mode",
        choices=SUBTITLE_MODES,
        default="frames",
        help="subtitle lines of the sampled frames (default) or all of them",
    )
    parser.add_argument("--device", default=None, help="model device (default: the predictor's choice)")
    parser.add_argument("--dtype", default=None, help="model dtype, e.g. float32, bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation length cap")
    parser.add_argument(
        "--merge-only",
        action="store_true",
        help="do not generate: merge the shard files in --out (after all ranks) and score",
    )
    parser.add_argument("--judge-url", help="OpenAI-compatible endpoint (default $TCLLAVA_JUDGE_URL)")
    parser.add_argument("--judge-model", help="judge model name (default $TCLLAVA_JUDGE_MODEL)")
    parser.add_argument("--judge-workers", type=int, default=4, help="parallel judge requests")
    parser.add_argument(
        "--judge-max-failures",
        type=int,
        default=5,
        help="stop after this many failed judgements in a row (default 5)",
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        default=0.05,
        help="exit 1 when more than this share of samples (or judgements) failed; results are still "
        "written and a rerun retries the failures (default 0.05)",
    )


def _summary(results: dict[str, Any]) -> str:
    if results.get("status"):
        return (
            f"rank {results['rank']}/{results['world_size']} done; results are written once all shards "
            "are (run with --merge-only after the last rank if none merged)"
        )
    m = results["metrics"]
    if results["kind"] == "mcq":
        o = m["overall"]
        head = (
            f"average {m['average']:.2f} over {m['average_over_tasks']} tasks, "
            if m.get("average") is not None and len(m["tasks"]) > 1
            else ""
        )
        overall = "-" if o["accuracy"] is None else f"{o['accuracy']:.2f}"
        return (
            f"{results['benchmark']} ({results['protocol']['name']}): {head}overall {overall} "
            f"(n={o['n']}, errors={o['errors']}, unparseable={o['unparseable']}, excluded={o['excluded']})"
        )
    parts = [
        f"{k}: score {v['score']}" + (f", accuracy {v['accuracy']}" if "accuracy" in v else "")
        for k, v in m["criteria"].items()
    ]
    return f"{results['benchmark']}: " + "; ".join(parts)


def _eval_run(args: argparse.Namespace) -> EvalRun:
    return EvalRun(
        args.benchmark,
        args.data,
        args.out,
        protocol=args.protocol,
        num_frames=args.frames,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        limit=args.limit,
        subtitles=args.subtitles,
        subtitle_mode=args.subtitle_mode,
        sampling=args.sampling,
        scoring=args.scoring,
        judge_workers=args.judge_workers,
        max_error_rate=args.max_error_rate,
        judge_max_failures=args.judge_max_failures,
    )


def _device_problem(device: str | None) -> str | None:
    """Why `--device` cannot work in this torch build, or None."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a device; use e.g. cpu, cuda, cuda:1, mps"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return (
                f"--device {device}: this torch build sees no CUDA GPU (torch.cuda.is_available() is False)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: MPS is not available in this torch build"
    elif dev.type not in ("cpu", "cuda", "mps"):
        return f"--device {device}: unsupported device type {dev.type!r}; use cpu, cuda or mps"
    return None


def run(args: argparse.Namespace) -> int:
    from tcllava.eval.benchmarks import EvalError, EvalInputError
    from tcllava.eval.judge import Judge, JudgeConfigError, JudgeError

    def fail(message: object, code: int) -> int:
        print(f"tcllava eval: {message}", file=sys.stderr)
        return code

    try:
        spec = _eval_run(args)
        judge = Judge.from_env(args.judge_url, args.judge_model) if spec.judged else None
    except (EvalInputError, JudgeConfigError) as e:
        return fail(e, 2)
    if not args.merge_only and not args.model:
        return fail("--model is required (unless --merge-only)", 2)
    if not args.merge_only and (problem := _device_problem(args.device)):
        return fail(problem, 2)

    from tcllava.eval.runner import evaluate, merge

    try:
        if args.merge_only:
            results = merge(spec, judge)
        else:
            spec.load()  # bad data and a dead judge are found in seconds, before the model loads
            if judge is not None:
                judge.check()
            from tcllava.eval.model_predictor import ModelPredictor

            gen_kwargs = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
            try:
                predictor = ModelPredictor.from_pretrained(
                    args.model, device=args.device, dtype=args.dtype, **gen_kwargs
                )
            except (OSError, ValueError) as e:  # CheckpointError is a ValueError
                return fail(f"cannot load --model {args.model}: {e}", 2)
            results = evaluate(predictor, spec, judge)
    except (EvalInputError, FileNotFoundError, JudgeConfigError) as e:
        return fail(e, 2)
    except (EvalError, JudgeError, OSError) as e:
        return fail(e, 1)
    print(_summary(results))
    if results.get("status"):
        return 0
    print(f"results: {args.out}/results.json, results.md, results.png")
    message = results["failures"]["message"]  # too many failed samples or judgements
    return fail(message, 1) if message else 0
