"""The one `tcllava` entry point. Each subcommand lives in its own module, imported only when used.

A command module defines `configure(parser: argparse.ArgumentParser) -> None` and
`run(args: argparse.Namespace) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported lazily so `tcllava --help` stays instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "tcllava.recipes.demo_cli",
        "train and compare TC-LLaVA and vanilla LLaVA on the synthetic benchmark",
    ),
    "ablate": ("tcllava.recipes.ablate_cli", "run the mask / gamma / temporal-id ablation grid"),
    "needle": ("tcllava.recipes.needle_cli", "needle in a video haystack: data, heat maps, a study"),
    "chat": ("tcllava.serve.chat_cli", "answer a question about a video"),
    "serve": ("tcllava.serve.serve_cli", "chat with a video in the browser and an OpenAI-compatible API"),
    "convert": ("tcllava.model.convert_cli", "convert a llava-hf checkpoint to tcllava"),
    "data": ("tcllava.data.synthetic_cli", "generate datasets (tcllava data synthetic ...)"),
    "viz": ("tcllava.viz.cli", "plot masks, RoPE positions or a model's attention maps"),
    "eval": ("tcllava.eval.cli", "evaluate a model on mvbench, videomme, synthetic or open-ended QA"),
    "train": ("tcllava.train.cli", "supervised fine-tuning from a YAML recipe"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcllava", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"tcllava {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
