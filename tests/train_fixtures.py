"""Helpers (no tests): tiny checkpoints and conversation datasets on disk for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tcllava.model import TCLlavaForConditionalGeneration, TCLlavaProcessor
from tcllava.model.factory import build_image_processor, build_word_tokenizer, tiny_config
from tcllava.video import write_video

COLORS = ["red", "green", "blue", "yellow"]
WORDS = "what colour comes first ? then which is last describe the video image it is and . , ( ) : A B C D"
FRAMES, IMAGE = 4, 32


def build_checkpoint(path: Path, seed: int = 0, **fields) -> Path:
    """A 2-layer, hidden-64 TC-LLaVA (32 px images, 4 tokens per frame) with a word tokenizer."""
    tok = build_word_tokenizer(
        [WORDS, " ".join(COLORS), "USER ASSISTANT Question Options Only give best option"],
        extra_tokens=["<video>"],
    )
    config = tiny_config(
        len(tok),
        tok.convert_tokens_to_ids("<image>"),
        image_size=IMAGE,
        patch_size=8,
        vision_hidden=32,
        text_layers=2,
        text_hidden=64,
        heads=2,
        pool_shape=(0, 2, 2),
        chat_template="plain",
        **{"tc_attention": {"gamma": 1.0}, **fields},
    )
    torch.manual_seed(seed)
    model = TCLlavaForConditionalGeneration(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    TCLlavaProcessor(tok, build_image_processor(IMAGE), config, num_frames=FRAMES).save_pretrained(path)
    return path


def colour_frames(order: list[str], size: int = 40) -> np.ndarray:
    palette = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 80, 245), "yellow": (245, 225, 30)}
    frames = np.zeros((len(order), size, size, 3), np.uint8)
    for i, c in enumerate(order):
        frames[i, 8:32, 8:32] = palette[c]
    return frames


def build_dataset(root: Path, n: int = 24, seed: int = 0, bad: bool = False) -> Path:
    """``root/data.json`` (LLaVA format) with ``n`` videos of coloured frames and two-turn answers;
    with ``bad``, also a missing file, a corrupt file and a placeholder mismatch."""
    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        order = [COLORS[j] for j in rng.integers(0, 4, FRAMES)]
        rel = f"videos/{i:03d}.mp4"
        write_video(root / rel, colour_frames(order), fps=4)
        turns = [
            {"from": "human", "value": "<video>\nwhat colour comes first ?"},
            {"from": "gpt", "value": order[0]},
        ]
        if i % 2:
            turns += [
                {"from": "human", "value": "which is last ?"},
                {"from": "gpt", "value": f"it is {order[-1]} ."},
            ]
        records.append({"id": f"s{i}", "video": rel, "conversations": turns})
    if bad:
        (root / "videos" / "corrupt.mp4").write_bytes(b"not a video at all" * 50)
        ask = [
            {"from": "human", "value": "<video>\nwhat colour comes first ?"},
            {"from": "gpt", "value": "red"},
        ]
        records.insert(3, {"id": "missing", "video": "videos/nope.mp4", "conversations": ask})
        records.insert(6, {"id": "corrupt", "video": "videos/corrupt.mp4", "conversations": ask})
        two = [{"from": "human", "value": "<video> <video>\nwhat ?"}, {"from": "gpt", "value": "red"}]
        records.insert(9, {"id": "mismatch", "video": "videos/000.mp4", "conversations": two})
    (root / "data.json").write_text(json.dumps(records, indent=1))
    return root / "data.json"
