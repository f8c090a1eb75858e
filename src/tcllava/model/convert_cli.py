"""`tcllava convert SRC DST`: a llava-hf checkpoint directory -> a tcllava checkpoint directory."""

from __future__ import annotations

import argparse
import sys

from tcllava.attention import MASK_KINDS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="llava-hf directory (llava, llava_next, llava_next_video, llava_onevision)"
    )
    parser.add_argument("destination", help="output directory")
    parser.add_argument("--gamma", type=float, default=1.0, help="temporal RoPE ratio (0 = vanilla)")
    parser.add_argument("--mask", choices=MASK_KINDS, default="frame_block_causal")
    parser.add_argument(
        "--pool",
        type=int,
        nargs=3,
        metavar=("T", "H", "W"),
        default=None,
        help="pooled (frames, height, width); frames 0 keeps the input's count",
    )


def run(args: argparse.Namespace) -> int:
    from tcllava.model import CheckpointError, convert_llava_hf

    overrides = {"gamma": args.gamma, "attention_mask_kind": args.mask}
    if args.pool:
        overrides["pool_shape"] = tuple(args.pool)
    try:
        out = convert_llava_hf(args.source, args.destination, **overrides)
    except CheckpointError as e:
        print(f"tcllava convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
