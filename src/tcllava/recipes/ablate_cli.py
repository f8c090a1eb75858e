"""`tcllava ablate CONFIG [key=value ...]`: run (or resume) an ablation grid, with the needle if the
config has a needle section. See :mod:`tcllava.recipes.ablate`."""

from __future__ import annotations

import argparse
import sys

import yaml


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML grid, e.g. configs/ablate_cpu.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides of the experiment settings (e.g. steps=100; needle.lengths=[8,16])",
    )


def run(args: argparse.Namespace) -> int:
    from tcllava.recipes.ablate import AblationConfig, run_grid

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"tcllava ablate: override {item!r} is not key=value", file=sys.stderr)
            return 2
        overrides[key] = yaml.safe_load(value)
    try:
        cfg = AblationConfig.from_yaml(args.config, overrides)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        print(f"tcllava ablate: {e}", file=sys.stderr)
        return 2
    run_grid(cfg)
    return 0
