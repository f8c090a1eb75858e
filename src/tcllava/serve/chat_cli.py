"""`tcllava chat --model DIR --video FILE "question"`: one answer, streamed as it is generated."""

from __future__ import annotations

import argparse
import sys
import time

from tcllava.argtypes import non_negative_float, non_negative_int, positive_int, probability
from tcllava.attention.settings import add_arguments, overrides_from


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the question about the video")
    parser.add_argument("--model", required=True, help="tcllava or llava-hf checkpoint directory")
    parser.add_argument("--video", required=True, help="video file, frame folder or image")
    parser.add_argument(
        "--frames", type=positive_int, default=None, help="frames to sample (default: the processor's)"
    )
    add_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16"
    )
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=probability, default=1.0)
    parser.add_argument("--seed", type=non_negative_int, default=0)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from tcllava.model import CheckpointError, load
    from tcllava.video import VideoError

    overrides = overrides_from(args)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        progress(f"loading {args.model}")
        model, processor = load(
            args.model, device=args.device, dtype=args.dtype, num_frames=args.frames, **overrides
        )
        torch.manual_seed(args.seed)
        sampling = {"do_sample": args.temperature > 0}
        if args.temperature > 0:
            sampling.update(temperature=args.temperature, top_p=args.top_p)
        streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        answer = model.chat(
            args.video,
            args.question,
            system=args.system,
            streamer=streamer,
            on_progress=progress,
            max_new_tokens=args.max_new_tokens,
            **sampling,
        )
    except (VideoError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"tcllava chat: {e}", file=sys.stderr)
        return 2
    progress(f"done ({len(processor.tokenizer(answer)['input_ids'])} tokens)")
    return 0
