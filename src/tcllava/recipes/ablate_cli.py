"""`tcllava ablate CONFIG [key=value ...]`: run (or resume) an ablation grid. See :mod:`tcllava.recipes.ablate`."""

from __future__ import annotations

import argparse

import yaml


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML grid, e.g. configs/ablate_cpu.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides of the demo settings (e.g. steps=100)"
    )


def run(args: argparse.Namespace) -> int:
    from tcllava.recipes.ablate import load_grid, run_grid

    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"override {item!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    cfg, grid = load_grid(args.config, overrides)
    run_grid(cfg, grid)
    return 0
