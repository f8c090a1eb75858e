"""`ModelPredictor`: a tcllava checkpoint behind the evaluation `Predictor` protocol (batched, greedy)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tcllava.eval.predictor import Prompt
from tcllava.model import Message, TCLlavaForConditionalGeneration, TCLlavaProcessor, load
from tcllava.video import Clip


class ModelPredictor:
    """Left-padded batched generation; greedy unless generation kwargs say otherwise."""

    def __init__(
        self,
        model: TCLlavaForConditionalGeneration,
        processor: TCLlavaProcessor,
        name: str = "",
        max_new_tokens: int = 32,
        **generate_kwargs: Any,
    ) -> None:
        self.model = model.eval()
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

    def generate(self, clips: list[Clip], prompts: list[Prompt]) -> list[str]:
        encoded = []
        for clip, prompt in zip(clips, prompts, strict=True):
            messages = ([Message("system", prompt.system)] if prompt.system else []) + [
                Message("user", prompt.user)
            ]
            pieces = self.processor.render(messages, answer_prefix=prompt.assistant_prefix)
            encoded.append(self.processor.encode(pieces, [clip.frames]))
        batch = self.processor.collate(encoded, padding_side="left")
        batch.pop("labels")
        device = self.model.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generate_kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return [self.processor.decode(row) for row in new_tokens]
