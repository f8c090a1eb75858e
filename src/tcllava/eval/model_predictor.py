"""`ModelPredictor`: a tcllava checkpoint behind the evaluation `Predictor` protocol (batched greedy
generation, and likelihood ranking of multiple-choice options), and `option_logprobs`, the scoring that
ranking and the lmms-eval plugin share: each prompt runs once and its options continue its KV cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from tcllava.eval.predictor import Prompt
from tcllava.model import Message, TCLlavaForConditionalGeneration, TCLlavaProcessor, load
from tcllava.model.processing import IGNORE_INDEX, Encoded
from tcllava.video import Clip

# (sum of the continuation tokens' log-probs, their count, whether each of them is the greedy token)
OptionScore = tuple[float, int, bool]


def option_ids(processor: TCLlavaProcessor, text: str) -> list[int]:
    """The tokens of ``text`` as a continuation of a prompt: tokenised on its own, as `encode` tokenises
    each rendered piece, so prompt + these ids are exactly the ids of the encoded whole."""
    ids, labels = processor.token_ids([(text, True)], [])
    return [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]


def row_chunks(counts: Sequence[int], batch_rows: int) -> list[list[int]]:
    """Consecutive prompt indices grouped so that each group's options fill at most ``batch_rows`` rows
    (a prompt with more options than that is a group of its own)."""
    chunks: list[list[int]] = []
    rows = 0
    for i, count in enumerate(counts):
        if not chunks or rows + count > batch_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(i)
        rows += count
    return chunks


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-probs in float32 at least (half-precision logits lose the small differences between options)."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


class _SharedPromptLayer(DynamicLayer):
    """One layer of the prompts' KV cache, read by every continuation row (``rows[i]`` is row i's prompt)
    and never written: a layer's expanded keys exist only while that layer runs, so scoring k options
    needs the prompt cache once, not k times."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.rows = keys, values, rows
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat([self.keys.index_select(0, self.rows), key_states], dim=-2)
        return keys, torch.cat([self.values.index_select(0, self.rows), value_states], dim=-2)


def _continue_prompts(
    model: TCLlavaForConditionalGeneration,
    prompts: dict[str, Any],
    cache: Cache,
    first: torch.Tensor,
    rows: list[int],
    tokens: list[list[int]],
    pad_id: int,
) -> list[OptionScore]:
    """Scores of continuations ``tokens`` (row i continues prompt ``rows[i]``) from one forward over the
    prompts' ``cache``; ``prompts`` are the prefill's inputs. ``first`` holds the log-probs after each
    prompt, which score every first token; a continuation's last token predicts nothing and is not run."""
    device = first.device
    index = torch.tensor(rows, device=device)
    length = max(len(t) for t in tokens)
    if length == 0:
        return [(0.0, 0, True)] * len(rows)
    ids = torch.tensor([t + [pad_id] * (length - len(t)) for t in tokens], device=device)
    real = torch.tensor([[1] * len(t) + [0] * (length - len(t)) for t in tokens], device=device)
    logprobs = first.index_select(0, index)[:, None]
    if length > 1:
        shared = Cache(layers=[_SharedPromptLayer(layer.keys, layer.values, index) for layer in cache.layers])
        # The whole padding mask (left-padded prompt, right-padded continuation) and the prompt's frame
        # ids: positions and the TC layout are derived from them, as for one pass over the whole row.
        logits = model(
            input_ids=ids[:, :-1],
            attention_mask=torch.cat([prompts["attention_mask"].index_select(0, index), real[:, :-1]], 1),
            frame_ids=prompts["frame_ids"].index_select(0, index),
            past_key_values=shared,
            use_cache=True,
        ).logits
        logprobs = torch.cat([logprobs, _log_softmax(logits)], dim=1)
    picked = logprobs.gather(-1, ids[..., None]).squeeze(-1)
    greedy = logprobs.argmax(-1) == ids
    scored = real.bool()
    return [
        (float(picked[b][scored[b]].sum()), len(tokens[b]), bool(greedy[b][scored[b]].all()))
        for b in range(len(rows))
    ]


def option_logprobs(
    model: TCLlavaForConditionalGeneration,
    processor: TCLlavaProcessor,
    prompts: Sequence[Encoded],
    options: Sequence[Sequence[list[int]]],
    batch_rows: int = 64,
) -> list[list[OptionScore]]:
    """Per prompt, the score of each option (token ids, see :func:`option_ids`) as its continuation.

    Every prompt, vision tower included, runs once: prompts are prefilled together (left-padded) and
    their options then continue the shared KV cache as right-padded rows, ``batch_rows`` at a time. The
    scores equal those of one full pass per option (same positions and masks: options are text after
    the prompt), at the cost of one prompt pass plus the option tokens."""
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else (processor.tokenizer.eos_token_id or 0)
    out: list[list[OptionScore]] = []
    for chunk in row_chunks([len(o) for o in options], batch_rows):
        batch = processor.collate([prompts[i] for i in chunk], padding_side="left")
        batch.pop("labels")
        inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        rows = [s for s, i in enumerate(chunk) for _ in options[i]]
        tokens = [list(t) for i in chunk for t in options[i]]
        scores: list[OptionScore] = []
        with torch.inference_mode():
            prefill = model(**inputs, use_cache=True, logits_to_keep=1)
            first = _log_softmax(prefill.logits[:, -1])
            for start in range(0, len(rows), batch_rows):
                scores += _continue_prompts(
                    model,
                    inputs,
                    prefill.past_key_values,
                    first,
                    rows[start : start + batch_rows],
                    tokens[start : start + batch_rows],
                    pad_id,
                )
        offset = 0
        for i in chunk:
            out.append(scores[offset : offset + len(options[i])])
            offset += len(options[i])
    return out


class ModelPredictor:
    """Left-padded batched generation (greedy unless generation kwargs say otherwise) and ranking."""

    def __init__(
        self,
        model: TCLlavaForConditionalGeneration,
        processor: TCLlavaProcessor,
        name: str = "",
        max_new_tokens: int = 32,
        batch_rows: int = 64,
        **generate_kwargs: Any,
    ) -> None:
        self.model = model.eval()
        self.batch_rows = batch_rows
        self.processor = processor
        self.name = name
        self.generate_kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "eos_token_id": processor.stop_token_ids(),
            "pad_token_id": processor.tokenizer.pad_token_id,
            "suppress_tokens": [processor.config.media_token_id],  # never a visual placeholder
            **generate_kwargs,
        }

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, dtype: str | None = None, **generate_kwargs: Any
    ) -> ModelPredictor:
        model, processor = load(path, device=device or "cpu", dtype=dtype)
        return cls(model, processor, name=str(path), **generate_kwargs)

    def describe(self) -> dict[str, Any]:
        config = self.model.config.to_dict()
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        settings = {
            k: v
            for k, v in self.generate_kwargs.items()
            if k not in ("eos_token_id", "pad_token_id", "suppress_tokens")
        }
        return {
            "model": self.name,
            "config_sha256": digest,
            "tc_attention": self.model.config.tc_attention.to_dict(),
            "pool_shape": list(self.model.config.pool_shape),
            "chat_template": self.processor.template.name,
            "generation": settings,
        }

    def _pieces(self, prompt: Prompt) -> list[tuple[str, bool]]:
        messages = ([Message("system", prompt.system)] if prompt.system else []) + [
            Message("user", prompt.user)
        ]
        return self.processor.render(messages, answer_prefix=prompt.assistant_prefix)

    def rank(
        self, clips: list[Clip], prompts: list[Prompt], continuations: list[list[str]]
    ) -> list[list[float]]:
        """Summed log-probability of each candidate continuation after its prompt (the whole answer, as
        training wrote it), per sample. Each prompt runs once and all its candidates continue its KV cache
        (see :func:`option_logprobs`); ``batch_rows`` candidate rows per forward."""
        encoded = [
            self.processor.encode(self._pieces(prompt), [clip.frames])
            for clip, prompt in zip(clips, prompts, strict=True)
        ]
        options = [[option_ids(self.processor, text) for text in texts] for texts in continuations]
        scores = option_logprobs(self.model, self.processor, encoded, options, self.batch_rows)
        return [[total for total, _, _ in sample] for sample in scores]

    def generate(self, clips: list[Clip], prompts: list[Prompt]) -> list[str]:
        encoded = [
            self.processor.encode(self._pieces(prompt), [clip.frames])
            for clip, prompt in zip(clips, prompts, strict=True)
        ]
        batch = self.processor.collate(encoded, padding_side="left")
        batch.pop("labels")
        device = self.model.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generate_kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return [self.processor.decode(row) for row in new_tokens]
