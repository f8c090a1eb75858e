"""`tcllava data synthetic ...`: write the procedural temporal benchmark (see `tcllava.data.synthetic`)."""

from __future__ import annotations

import argparse
import sys
import time

from tcllava.argtypes import non_negative_int, positive_float, positive_int


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    p = sub.add_parser("synthetic", help="procedural MVBench-style videos: temporal tasks + static controls")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=non_negative_int, default=200, help="train samples per task")
    p.add_argument("--test", type=non_negative_int, default=50, help="test samples per task")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--frames", type=positive_int, default=8, help="frames per video (4..16)")
    p.add_argument("--size", type=positive_int, default=64, help="frame side in pixels (even)")
    p.add_argument("--fps", type=positive_float, default=4.0)
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--workers", type=positive_int, default=2, help="parallel video encoders")


def run(args: argparse.Namespace) -> int:
    from tcllava.data.synthetic import generate

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    start = time.perf_counter()
    try:
        manifest = generate(
            args.out,
            args.train,
            args.test,
            seed=args.seed,
            num_frames=args.frames,
            size=args.size,
            fps=args.fps,
            tasks=tasks,
            workers=args.workers,
        )
    except (ValueError, OSError) as e:
        print(f"tcllava data: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    counts = manifest["counts"]
    width = max(len("task"), *map(len, manifest["tasks"]))
    print(f"{'task':<{width}}  {'kind':<8}  {'train':>6}  {'test':>6}")
    for task, kind in manifest["tasks"].items():
        print(f"{task:<{width}}  {kind:<8}  {counts['train'][task]:>6}  {counts['test'][task]:>6}")
    total = sum(sum(split.values()) for split in counts.values())
    shape = f"{manifest['num_frames']} frames, {manifest['size']}px"
    print(f"{total} videos ({shape}) in {seconds:.1f}s -> {args.out}")
    return 0
