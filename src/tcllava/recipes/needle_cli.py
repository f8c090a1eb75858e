"""`tcllava needle data|eval|study`: the needle in a video haystack. See :mod:`tcllava.recipes.needle`.

tcllava needle data --out DIR [--train N] [--test N] [--lengths 16 32 64 128] [--distractors]
tcllava needle eval --model DIR --data DIR --out DIR [--pool H W] [--merge-threshold X]
tcllava needle study CONFIG [key=value ...]
"""

from __future__ import annotations

import argparse
import sys

import yaml

from tcllava.argtypes import fraction, non_negative_float, non_negative_int, positive_float, positive_int


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    data = sub.add_parser("data", help="write needle videos: train at one frame count, tests at others")
    data.add_argument("--out", required=True, help="output folder (train/, L{frames}/test/)")
    data.add_argument("--train", type=non_negative_int, default=0, help="training videos (default 0)")
    data.add_argument("--test", type=non_negative_int, default=8, help="test videos per depth and length")
    data.add_argument("--lengths", type=positive_int, nargs="+", default=[16, 32, 64, 128])
    data.add_argument("--depths", type=fraction, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    data.add_argument("--train-frames", type=positive_int, default=8, help="frames of training videos")
    data.add_argument("--distractors", action="store_true", help="add look-alike needles of another colour")
    data.add_argument("--seed", type=non_negative_int, default=0)
    data.add_argument("--size", type=positive_int, default=64, help="frame side in pixels (even)")
    data.add_argument("--fps", type=positive_float, default=4.0)
    data.add_argument("--workers", type=positive_int, default=2, help="parallel video encoders")

    ev = sub.add_parser("eval", help="accuracy of one model by needle depth and frame count")
    ev.add_argument("--model", required=True, help="tcllava checkpoint directory")
    ev.add_argument("--data", required=True, help="folder of L{frames}/test needle tests")
    ev.add_argument("--out", required=True, help="output folder (needle.json/.md/.png, evaluations)")
    ev.add_argument("--lengths", type=positive_int, nargs="+", help="frame counts (default: all found)")
    ev.add_argument(
        "--pool",
        type=positive_int,
        nargs=2,
        metavar=("H", "W"),
        help="pool each frame to H x W visual tokens instead of the checkpoint's pooling",
    )
    ev.add_argument(
        "--merge-threshold",
        type=non_negative_float,
        help="drop frames within this mean absolute difference (pixel levels) of the last frame kept",
    )
    ev.add_argument("--scoring", choices=["likelihood", "generate"], default="likelihood")
    ev.add_argument("--batch-frames", type=positive_int, default=256, help="frames per batch (default 256)")
    ev.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader decoding workers")

    study = sub.add_parser("study", help="train variants with the needle and test them at every length")
    study.add_argument("config", help="YAML: needle study settings and a grid of variants")
    study.add_argument("overrides", nargs="*", help="key=value overrides of the settings (e.g. steps=100)")


def _data(args: argparse.Namespace) -> int:
    from tcllava.data.synthetic import generate_needle

    manifest = generate_needle(
        args.out,
        args.train,
        args.test,
        tuple(args.lengths),
        tuple(args.depths),
        seed=args.seed,
        size=args.size,
        distractors=args.distractors,
        train_frames=args.train_frames,
        fps=args.fps,
        workers=args.workers,
    )
    for name in manifest["sha256"]:
        print(f"{args.out}/{name}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tcllava.recipes.needle import Reduction, evaluate_needle, write_needle_report

    parts = ([f"pool{args.pool[0]}x{args.pool[1]}"] if args.pool else []) + (
        [f"merge{args.merge_threshold:g}"] if args.merge_threshold is not None else []
    )
    reduction = Reduction(
        "-".join(parts) or "full",
        None if args.pool is None else (0, *args.pool),
        args.merge_threshold,
    )
    out = Path(args.out)
    cell = evaluate_needle(
        args.model,
        args.data,
        out / reduction.name / args.scoring,
        args.lengths,
        reduction,
        args.scoring,
        args.batch_frames,
        args.num_workers,
    )
    title = f"Needle in a video haystack: {args.model}"
    write_needle_report(out, [{"variant": Path(args.model).name, **cell}], title, {"model": args.model})
    print((out / "needle.md").read_text())
    return 0


def _study(args: argparse.Namespace) -> int:
    from tcllava.recipes.needle import NeedleConfig, needle_study

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"tcllava needle: override {item!r} is not key=value", file=sys.stderr)
            return 2
        overrides[key] = yaml.safe_load(value)
    try:
        cfg, variants = NeedleConfig.from_yaml(args.config, overrides)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        print(f"tcllava needle: {e}", file=sys.stderr)
        return 2
    needle_study(cfg, variants)
    return 0


def run(args: argparse.Namespace) -> int:
    """Bad data, settings or checkpoints (ValueError, CheckpointError among them) are one line, exit 2;
    a study's training is not wrapped, as in `tcllava ablate`."""
    from tcllava.eval.benchmarks import EvalError

    if args.action == "study":
        return _study(args)
    try:
        return _data(args) if args.action == "data" else _eval(args)
    except (FileNotFoundError, ValueError, EvalError) as e:
        print(f"tcllava needle: {e}", file=sys.stderr)
        return 2
