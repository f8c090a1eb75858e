"""Answering questions with a loaded model: the prompt is built, checked against the LLM's context before
any frame is decoded, and generated from.

Takes the model and its processor as arguments and imports neither the model class nor the loaders, so
that ``model.chat`` can call it without an import circle. :func:`generate_batch` answers several prompts
in one batch, each with its own sampling and length (``tcllava serve`` batches concurrent requests with it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from tcllava.model.processing import Encoded, TCLlavaProcessor
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
    # A generated media placeholder would be taken for a visual token at the next step.
    generate_kwargs.setdefault("suppress_tokens", [processor.config.media_token_id])
    with torch.inference_mode():
        out = model.generate(**inputs, streamer=streamer, **generate_kwargs)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :])


@dataclass(frozen=True)
class RowSettings:
    """How one row of :func:`generate_batch` is decoded: ``temperature`` 0 is greedy (``top_p`` unused);
    a sampled row draws from its own generator, seeded with ``seed`` (None: a fresh random seed), so its
    answer does not depend on the rows beside it."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class RowOutput:
    """The new tokens of one row (with the stop token that ended it, if any) and why it ended: ``stop``
    (a stop token), ``length`` (``max_new_tokens``) or ``caller`` (``on_token`` asked to stop)."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class _RowSampler(LogitsProcessor):
    """Per-row temperature and top-p sampling inside a greedy ``generate``: a sampled row's scores become
    -inf except for the token drawn from its own generator, so argmax picks it; greedy rows pass through.
    No row may generate the media token (it would need pixels at the next step)."""

    def __init__(self, settings: Sequence[RowSettings], device: torch.device, media_token_id: int) -> None:
        self.media_token_id = media_token_id
        self.rows = []
        for i, s in enumerate(settings):
            if s.temperature > 0:
                generator = torch.Generator(device=device)
                if s.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(s.seed)
                self.rows.append((i, s.temperature, s.top_p, generator))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.media_token_id] = float("-inf")
        for i, temperature, top_p, generator in self.rows:
            probs = torch.softmax(scores[i] / temperature, dim=-1)
            if top_p < 1:
                # Keep the most likely tokens whose cumulative probability reaches top_p (at least one).
                sorted_probs, order = probs.sort(descending=True)
                drop = sorted_probs.cumsum(0) - sorted_probs >= top_p
                probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0))
            token = torch.multinomial(probs, 1, generator=generator)
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


class _RowStops(StoppingCriteria):
    """Each row ends on its own stop token, its own ``max_new_tokens`` or when the caller says so; sees
    every new token first, so it is also where tokens are handed to the caller as they come."""

    def __init__(
        self,
        settings: Sequence[RowSettings],
        stop_ids: Sequence[int],
        on_token: Callable[[int, int], bool] | None,
        on_finish: Callable[[int, RowOutput], None] | None,
    ) -> None:
        self.settings = settings
        self.stop_ids = set(stop_ids)
        self.on_token = on_token
        self.on_finish = on_finish
        self.rows = [RowOutput() for _ in settings]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for i, token in enumerate(input_ids[:, -1].tolist()):
            row = self.rows[i]
            if row.finish_reason is not None:
                continue
            row.tokens.append(token)
            if self.on_token is not None and self.on_token(i, token):
                row.finish_reason = "caller"
            elif token in self.stop_ids:
                row.finish_reason = "stop"
            elif len(row.tokens) >= self.settings[i].max_new_tokens:
                row.finish_reason = "length"
            if row.finish_reason is not None and self.on_finish is not None:
                self.on_finish(i, row)
        done = [row.finish_reason is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_batch(
    model: Any,
    processor: TCLlavaProcessor,
    prompts: Sequence[Encoded],
    settings: Sequence[RowSettings],
    on_token: Callable[[int, int], bool] | None = None,
    on_finish: Callable[[int, RowOutput], None] | None = None,
) -> list[RowOutput]:
    """Several encoded prompts in one left-padded ``generate``, each row with its own sampling, seed and
    length. A greedy row gets exactly the tokens :func:`chat` gives it alone (TC positions and masks follow
    each row's own padding); the batch runs until its last row ends. The media token is never generated.

    ``on_token(row, token)`` sees each new token of a running row as it is generated and returns True to
    end that row there; ``on_finish(row, output)`` is called the moment a row ends. Check each prompt with
    ``processor.check_context`` first."""
    if len(prompts) != len(settings) or not prompts:
        raise ValueError(f"need one RowSettings per prompt, got {len(settings)} for {len(prompts)} prompts")
    batch = processor.collate(list(prompts), padding_side="left")
    batch.pop("labels")
    inputs = {k: (v.to(model.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    stop_ids = processor.stop_token_ids()
    pad_id = processor.tokenizer.pad_token_id
    stops = _RowStops(settings, stop_ids, on_token, on_finish)
    sampler = _RowSampler(settings, model.device, processor.config.media_token_id)
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=max(s.max_new_tokens for s in settings),
            do_sample=False,
            eos_token_id=stop_ids or None,
            pad_token_id=pad_id if pad_id is not None else (stop_ids or [0])[0],
            logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([stops]),
        )
    for i, row in enumerate(stops.rows):
        if row.finish_reason is None:  # the batch's own max_length ended it
            row.finish_reason = "length"
            if on_finish is not None:
                on_finish(i, row)
    return stops.rows
