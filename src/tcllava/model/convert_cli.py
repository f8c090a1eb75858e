"""`tcllava convert SRC DST`: a llava-hf checkpoint directory -> a new tcllava checkpoint directory."""

from __future__ import annotations

import argparse
import sys

from tcllava.attention import TCAttentionConfig
from tcllava.attention.settings import add_arguments, overrides_from


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="llava-hf directory (llava, llava_next, llava_next_video, llava_onevision)"
    )
    parser.add_argument("destination", help="output directory (new or empty; see --overwrite)")
    add_arguments(parser, defaults=TCAttentionConfig())
    parser.add_argument(
        "--pool",
        type=int,
        nargs=3,
        metavar=("T", "H", "W"),
        default=None,
        help="pooled (frames, height, width); frames 0 keeps the input's count",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a model already in DESTINATION (atomically)"
    )


def run(args: argparse.Namespace) -> int:
    from tcllava.model import CheckpointError, convert_llava_hf
    from tcllava.model.storage import DestinationExists

    overrides = overrides_from(args)
    if args.pool:
        overrides["pool_shape"] = tuple(args.pool)
    try:
        out = convert_llava_hf(args.source, args.destination, overwrite=args.overwrite, **overrides)
    except (CheckpointError, DestinationExists, ValueError) as e:
        print(f"tcllava convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
