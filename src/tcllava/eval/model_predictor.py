"""`ModelPredictor`: a tcllava checkpoint behind the evaluation `Predictor` protocol (batched greedy
generation, and likelihood ranking of multiple-choice options)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tcllava.eval.predictor import Prompt
from tcllava.model import Message, TCLlavaForConditionalGeneration, TCLlavaProcessor, load
from tcllava.model.processing import IGNORE_INDEX, Encoded
from tcllava.video import Clip


def continuation_logprobs(
    model: TCLlavaForConditionalGeneration, processor: TCLlavaProcessor, encoded: list[Encoded]
) -> list[tuple[float, int, bool]]:
    """(sum of the labelled tokens' log-probs, their count, whether each is the greedy token) per row.

    The labelled tokens are the continuation at the end of each row; rows are left-padded so every
    continuation ends its row and only the last positions' logits are computed."""
    batch = processor.collate(encoded, padding_side="left")
    labels = batch.pop("labels")
    inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    n = max(sum(label != IGNORE_INDEX for label in e.labels) for e in encoded)
    with torch.inference_mode():
        logits = model(**inputs, use_cache=False, logits_to_keep=n + 1).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    length = labels.shape[1]
    targets = inputs["input_ids"][:, length - n :]
    scored = (labels[:, length - n :] != IGNORE_INDEX).to(logprobs.device)
    token_logprobs = logprobs.gather(-1, targets[..., None]).squeeze(-1)
    greedy = logprobs.argmax(-1) == targets
    return [
        (float(token_logprobs[b][scored[b]].sum()), int(scored[b].sum()), bool(greedy[b][scored[b]].all()))
        for b in range(len(encoded))
    ]


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
            k: v for k, v in self.generate_kwargs.items() if k not in ("eos_token_id", "pad_token_id")
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
        training wrote it), per sample; one row per candidate, ``batch_rows`` rows per forward."""
        rows = [
            self.processor.encode([*self._pieces(prompt), (text, True)], [clip.frames])
            for clip, prompt, texts in zip(clips, prompts, continuations, strict=True)
            for text in texts
        ]
        sums = [
            total
            for start in range(0, len(rows), self.batch_rows)
            for total, _, _ in continuation_logprobs(
                self.model, self.processor, rows[start : start + self.batch_rows]
            )
        ]
        out, k = [], 0
        for texts in continuations:
            out.append(sums[k : k + len(texts)])
            k += len(texts)
        return out

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
