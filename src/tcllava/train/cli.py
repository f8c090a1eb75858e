"""`tcllava train CONFIG [key=value ...]`: run, or resume, the recipe a YAML config describes.

Single process: ``tcllava train configs/cpu_demo.yaml``. Several: ``torchrun --nproc_per_node 8 -m tcllava
train configs/pllava_7b_lora.yaml``. Exit codes: 0 done, 1 non-finite loss, 2 bad config or data,
143 stopped by SIGTERM/SIGINT after saving a checkpoint (run the same command again to continue).
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-4 llm=lora lora.r=16")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT, or from the latest one in output_dir (the default, resume=auto)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from tcllava.train import NonFiniteLoss, TrainConfig, train

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    try:
        config = TrainConfig.from_yaml(args.config, overrides)
    except (OSError, ValueError) as e:
        print(f"tcllava train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    try:
        summary = train(config)
    except NonFiniteLoss as e:
        print(f"tcllava train: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"tcllava train: {e}", file=sys.stderr)
        return 2
    if summary["interrupted"]:
        print(f"stopped at step {summary['steps']}; checkpoint {summary['checkpoint']}", file=sys.stderr)
        return 143
    skipped = summary["skipped"]["total"]
    print(
        f"done: {summary['steps']} steps, final loss {summary['final_loss']}, {skipped} skipped samples; "
        f"model in {summary['final_model_dir']}; report in {summary['run_dir']}/report.json"
    )
    return 0
