"""`tcllava viz masks|positions|attention`: pictures of the TC changes (paper Figs. 3, 4-style, 5)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["masks", "positions", "attention"])
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument(
        "--layout",
        type=int,
        nargs=4,
        default=[4, 3, 6, 3],
        metavar=("TEXT", "FRAMES", "TOKENS", "TEXT2"),
        help="masks/positions: text tokens, frames, tokens per frame, text tokens after",
    )
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--model", help="attention: checkpoint directory")
    parser.add_argument("--video", help="attention: video file")
    parser.add_argument("--question", default="What happens in the video?")
    parser.add_argument(
        "--layer", type=int, default=-1, help="attention: decoder layer (negative counts from the end)"
    )
    parser.add_argument("--frames", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from tcllava.viz.plots import layout_row, plot_masks, plot_positions

    if args.what == "masks":
        path = plot_masks(layout_row(*args.layout), args.out)
    elif args.what == "positions":
        path = plot_positions(layout_row(*args.layout), args.gammas, args.out)
    else:
        if not (args.model and args.video):
            print("tcllava viz attention needs --model and --video", file=sys.stderr)
            return 2
        from tcllava.viz.maps import compare_attention

        path = compare_attention(
            args.model, args.video, args.question, args.out, layer=args.layer, num_frames=args.frames
        )
    print(f"wrote {path}")
    return 0
