"""`TCLlavaProcessor`: conversations + frames -> the exact tensors the model takes.

It renders chat templates (:mod:`tcllava.model.templates`), expands every ``<video>``/``<image>`` placeholder
into exactly the number of visual tokens the model will produce for that clip, marks which tokens are
trainable (labels), turns frames into pixel values with the vision tower's own image processor, pads a
batch (left for generation, right for training) and returns the ``frame_ids`` the attention core needs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcllava.attention import frame_step, scheme_positions, text_step
from tcllava.model.config import TCLlavaConfig
from tcllava.model.templates import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, ChatTemplate, Message, get_template

IGNORE_INDEX = -100
PROCESSOR_FILE = "tcllava_processor.json"
_PLACEHOLDER = re.compile(f"({re.escape(VIDEO_PLACEHOLDER)}|{re.escape(IMAGE_PLACEHOLDER)})")


class SampleTooLong(ValueError):
    """A sample whose tokens exceed ``max_length``: visual tokens are never cut, so it cannot be used."""


class PromptTooLong(ValueError):
    """A prompt (plus the tokens to generate) that reaches past the LLM's trained positions."""


def frame_ids_from_tokens(
    input_ids: torch.Tensor, media_token_id: int, tokens_per_frame: int
) -> torch.Tensor:
    """Every ``tokens_per_frame`` consecutive media tokens form one frame, numbered in order; text is -1."""
    media = input_ids == media_token_id
    positions = torch.arange(media.shape[-1], device=media.device).expand_as(media)
    previous_is_media = torch.nn.functional.pad(media, (1, 0))[..., :-1]
    run_start = torch.where(media & ~previous_is_media, positions, 0).cummax(-1).values
    new_frame = media & ((positions - run_start) % tokens_per_frame == 0)
    return torch.where(media, new_frame.long().cumsum(-1) - 1, -1)


@dataclass
class Encoded:
    """One tokenised sample before batching."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: list[torch.Tensor]


class TCLlavaProcessor:
    def __init__(self, tokenizer, image_processor, config: TCLlavaConfig, num_frames: int = 16) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.num_frames = num_frames
        self.template: ChatTemplate = get_template(config.chat_template, config.text_config.model_type)
        if tokenizer.convert_ids_to_tokens(config.media_token_id) is None:
            raise ValueError(f"media_token_id {config.media_token_id} is not in the tokenizer's vocabulary")

    # -- persistence --
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        (path / PROCESSOR_FILE).write_text(json.dumps({"num_frames": self.num_frames}, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, config: TCLlavaConfig | None = None) -> TCLlavaProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        path = Path(path)
        config = config or TCLlavaConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        # PIL backend: torchvision cannot be installed beside the CPU torch build (docs/method.md 6).
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        settings = (
            json.loads((path / PROCESSOR_FILE).read_text()) if (path / PROCESSOR_FILE).is_file() else {}
        )
        return cls(tokenizer, image_processor, config, num_frames=settings.get("num_frames", 16))

    # -- pieces --
    def pixel_values(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] (or one image [H, W, 3]) -> float [T, 3, S, S] for the tower."""
        frames = torch.as_tensor(np.asarray(frames))
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3] uint8, got shape {tuple(frames.shape)}")
        images = list(frames.numpy())
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def render(
        self,
        messages: Sequence[Message | dict[str, str]],
        add_generation_prompt: bool = True,
        answer_prefix: str = "",
    ) -> list[tuple[str, bool]]:
        messages = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
        return self.template.render(
            messages, self.tokenizer.eos_token or "", add_generation_prompt, answer_prefix
        )

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def token_ids(
        self, pieces: list[tuple[str, bool]], frame_counts: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of rendered pieces whose placeholders take clips of ``frame_counts`` frames:
        the token layout, known before any frame is decoded."""
        ids: list[int] = []
        labels: list[int] = []
        if self.template.bos and self.tokenizer.bos_token_id is not None:
            ids.append(self.tokenizer.bos_token_id)
            labels.append(IGNORE_INDEX)
        clips = 0
        for text, trainable in pieces:
            for part in _PLACEHOLDER.split(text):
                if part in (VIDEO_PLACEHOLDER, IMAGE_PLACEHOLDER):
                    if clips == len(frame_counts):
                        raise ValueError(
                            f"the prompt has more media placeholders than the {len(frame_counts)} clips given"
                        )
                    count = self.config.media_tokens(frame_counts[clips])
                    clips += 1
                    ids += [self.config.media_token_id] * count
                    labels += [IGNORE_INDEX] * count
                else:
                    part_ids = self._token_ids(part)
                    if self.config.media_token_id in part_ids:
                        raise ValueError("the text contains the media token itself; use <video> or <image>")
                    ids += part_ids
                    labels += part_ids if trainable else [IGNORE_INDEX] * len(part_ids)
        if clips != len(frame_counts):
            raise ValueError(f"{len(frame_counts)} clips given but the prompt has {clips} media placeholders")
        return ids, labels

    def encode(
        self,
        pieces: list[tuple[str, bool]],
        media: Sequence[torch.Tensor | np.ndarray] = (),
        max_length: int | None = None,
    ) -> Encoded:
        """Tokenise rendered pieces; each placeholder takes the next clip of ``media`` (frames [T, H, W, 3])."""
        pixels = [self.pixel_values(clip) for clip in media]
        ids, labels = self.token_ids(pieces, [p.shape[0] for p in pixels])
        if max_length is not None and len(ids) > max_length:
            raise SampleTooLong(f"{len(ids)} tokens exceed max_length {max_length}")
        return Encoded(ids, labels, pixels)

    def check_context(self, input_ids: Sequence[int], max_new_tokens: int = 0) -> None:
        """Refuse a prompt whose RoPE positions, with ``max_new_tokens`` generated after it, pass the
        LLM's trained context; the error says how many frames, or how much less text, would fit."""
        ids = torch.tensor([list(input_ids)])
        tc = self.config.tc_attention
        frame_ids = frame_ids_from_tokens(ids, self.config.media_token_id, self.config.tokens_per_frame)
        # The largest position of any axis: the prompt's own, or the last generated token's.
        positions = scheme_positions(tc, frame_ids, None, tuple(self.config.pool_shape[1:]))[0]
        last = float(positions[-1].max()) + text_step(tc) * max_new_tokens
        last = max(last, float(positions.max()))
        limit = self.config.max_positions - 1
        if last <= limit:
            return
        over = last - limit
        frames = int(frame_ids.max()) + 1
        text = int((frame_ids < 0).sum())
        fit = frames - math.ceil(over / frame_step(tc, self.config.tokens_per_frame))
        hint = (
            f"at most {max(fit, 0)} frames fit with this text"
            if frames and fit > 0
            else f"the text alone is {text} tokens: shorten it by at least {math.ceil(over / text_step(tc))} tokens"
        )
        raise PromptTooLong(
            f"the prompt ({len(ids[0])} tokens: {frames} frames of {self.config.tokens_per_frame} visual tokens "
            f"and {text} text tokens) with {max_new_tokens} new tokens reaches RoPE position {last:g}, but the "
            f"model was trained on {self.config.max_positions} positions; {hint}"
        )

    def collate(self, samples: Sequence[Encoded], padding_side: str = "left") -> dict[str, Any]:
        """Pad to one length; media stay a flat list in placeholder order (row by row)."""
        length = max(len(s.input_ids) for s in samples)
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else (self.tokenizer.eos_token_id or 0)
        ids, labels, mask = [], [], []
        for s in samples:
            pad = length - len(s.input_ids)
            fill = ([pad_id] * pad, [IGNORE_INDEX] * pad, [0] * pad)
            row = (s.input_ids, s.labels, [1] * len(s.input_ids))
            if padding_side == "left":
                ids.append(fill[0] + row[0]), labels.append(fill[1] + row[1]), mask.append(fill[2] + row[2])
            else:
                ids.append(row[0] + fill[0]), labels.append(row[1] + fill[1]), mask.append(row[2] + fill[2])
        input_ids = torch.tensor(ids, dtype=torch.long)
        attention_mask = torch.tensor(mask, dtype=torch.long)
        frame_ids = frame_ids_from_tokens(input_ids, self.config.media_token_id, self.config.tokens_per_frame)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.tensor(labels, dtype=torch.long),
            "frame_ids": torch.where(attention_mask.bool(), frame_ids, -1),
            "pixel_values_videos": [p for s in samples for p in s.pixel_values],
        }

    def __call__(
        self,
        conversations: Sequence[Sequence[Message | dict[str, str]]] | Sequence[Message | dict[str, str]],
        media: Sequence[Sequence[torch.Tensor | np.ndarray]] | None = None,
        add_generation_prompt: bool = True,
        answer_prefix: str = "",
        padding_side: str = "left",
        max_length: int | None = None,
    ) -> dict[str, Any]:
        """Batch of conversations (a single one is allowed) with one list of clips per conversation."""
        if conversations and isinstance(conversations[0], Message | dict):
            conversations, media = [conversations], [media or []]
        media = media if media is not None else [[] for _ in conversations]
        if len(media) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(media)} media lists")
        encoded = [
            self.encode(self.render(conv, add_generation_prompt, answer_prefix), clips, max_length)
            for conv, clips in zip(conversations, media, strict=True)
        ]
        batch = self.collate(encoded, padding_side)
        if add_generation_prompt:
            batch.pop("labels")
        return batch

    def question(
        self, question: str, placeholder: str = VIDEO_PLACEHOLDER, system: str | None = None
    ) -> list[Message]:
        """A one-turn conversation about one clip: the placeholder goes before the question."""
        messages = [Message("system", system)] if system else []
        return [*messages, Message("user", f"{placeholder}\n{question}")]

    def decode(self, token_ids: torch.Tensor) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    def stop_token_ids(self) -> list[int]:
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        for text in self.template.stop_strings:
            token = self.tokenizer.convert_tokens_to_ids(text)
            if isinstance(token, int) and token != self.tokenizer.unk_token_id:
                ids.append(token)
        return ids
