"""`tcllava eval BENCH --model DIR --data DIR --out DIR ...`: the command-line face of `evaluate()`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tcllava.eval.benchmarks import BENCHMARKS, OPEN_QA
from tcllava.eval.protocols import PROTOCOL_NAMES, SCORINGS
from tcllava.eval.subtitles import SUBTITLE_MODES

JUDGED = (*OPEN_QA, "videochatgpt")


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
        choices=("middle", "uniform", "mvbench"),
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


def run(args: argparse.Namespace) -> int:
    from tcllava.eval.benchmarks import EvalError
    from tcllava.eval.judge import Judge, JudgeError
    from tcllava.eval.runner import evaluate, merge

    if args.subtitles and args.benchmark != "videomme":
        print("tcllava eval: --subtitles applies to videomme only", file=sys.stderr)
        return 2
    if args.benchmark in JUDGED and args.protocol != "official":
        print(f"tcllava eval: {args.benchmark} has one protocol (official)", file=sys.stderr)
        return 2
    if args.benchmark in JUDGED and args.scoring != "generate":
        print(
            f"tcllava eval: {args.benchmark} is open-ended: --scoring likelihood needs options",
            file=sys.stderr,
        )
        return 2
    try:
        judge = Judge.from_env(args.judge_url, args.judge_model) if args.benchmark in JUDGED else None
        if args.merge_only:
            results = merge(
                args.benchmark,
                args.data,
                args.out,
                args.protocol,
                args.limit,
                subtitles=args.subtitles,
                sampling=args.sampling,
                scoring=args.scoring,
                judge=judge,
                judge_workers=args.judge_workers,
            )
        else:
            if not args.model:
                print("tcllava eval: --model is required (unless --merge-only)", file=sys.stderr)
                return 2
            from tcllava.eval.model_predictor import ModelPredictor

            gen_kwargs = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
            predictor = ModelPredictor.from_pretrained(
                args.model, device=args.device, dtype=args.dtype, **gen_kwargs
            )
            results = evaluate(
                predictor,
                args.benchmark,
                args.data,
                args.out,
                args.protocol,
                args.frames,
                args.batch_size,
                args.num_workers,
                args.limit,
                subtitles=args.subtitles,
                subtitle_mode=args.subtitle_mode,
                sampling=args.sampling,
                scoring=args.scoring,
                judge=judge,
                judge_workers=args.judge_workers,
            )
    except (FileNotFoundError, EvalError, JudgeError) as e:
        print(f"tcllava eval: {e}", file=sys.stderr)
        return 1
    print(_summary(results))
    if not results.get("status"):
        print(f"results: {args.out}/results.json, results.md, results.png")
    return 0
