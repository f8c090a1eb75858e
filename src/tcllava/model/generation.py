"""Answering questions with a loaded model: the prompt is built, checked against the LLM's context before
any frame is decoded, and generated from.

Takes the model and its processor as arguments and imports neither the model class nor the loaders, so
that ``model.chat`` can call it without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tcllava.model.processing import TCLlavaProcessor
from tcllava.model.templates import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

DEFAULT_MAX_NEW_TOKENS = 256


def chat(
    model: Any,
    video: str | Path | torch.Tensor,
    question: str,
    processor: TCLlavaProcessor | None = None,
    num_frames: int | None = None,
    system: str | None = None,
    answer_prefix: str = "",
    streamer: Any = None,
    on_progress: Callable[[str], None] | None = None,
    **generate_kwargs: Any,
) -> str:
    """Answer one question about a video file, an image file (one frame, as in training), or frames
    [T, H, W, 3]. A prompt that would outgrow the model's context is refused (``PromptTooLong``) before
    the video is decoded."""
    from tcllava.video import read_video
    from tcllava.video.images import IMAGE_SUFFIXES

    processor = processor or getattr(model, "processor", None)
    if processor is None:
        raise ValueError("no processor: load the model with tcllava.load(path) or pass processor=")
    generate_kwargs.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(video, torch.Tensor):
        frames = video
        count = 1 if frames.ndim == 3 else frames.shape[0]
    else:
        if num_frames is None:
            num_frames = 1 if Path(video).suffix.lower() in IMAGE_SUFFIXES else processor.num_frames
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        count, frames = num_frames, None

    def prompt(frames: int) -> list[tuple[str, bool]]:
        placeholder = IMAGE_PLACEHOLDER if frames == 1 else VIDEO_PLACEHOLDER
        return processor.render(
            processor.question(question, placeholder, system), answer_prefix=answer_prefix
        )

    ids, _ = processor.token_ids(prompt(count), [count])
    processor.check_context(ids, generate_kwargs["max_new_tokens"])
    if frames is None:
        if on_progress:
            on_progress(f"decoding {video}")
        frames = read_video(video, count).frames
    encoded = processor.encode(prompt(1 if frames.ndim == 3 else frames.shape[0]), [frames])
    processor.check_context(encoded.input_ids, generate_kwargs["max_new_tokens"])
    batch = processor.collate([encoded], padding_side="left")
    batch.pop("labels")
    if on_progress:
        on_progress(f"prefill of {batch['input_ids'].shape[1]} tokens")
    inputs = {k: (v.to(model.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    generate_kwargs.setdefault("eos_token_id", processor.stop_token_ids())
    generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    with torch.inference_mode():
        out = model.generate(**inputs, streamer=streamer, **generate_kwargs)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :])
