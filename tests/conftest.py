"""Shared fixtures: tiny random layouts and models. Everything runs on CPU in fp32/fp64."""

from __future__ import annotations

import os
import random

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """Models the tests build (the demo's image LLaVA) go to a cache of this session, not the user's."""
    before = os.environ.get("TCLLAVA_CACHE")
    os.environ["TCLLAVA_CACHE"] = str(tmp_path_factory.mktemp("tcllava_cache"))
    yield
    if before is None:
        os.environ.pop("TCLLAVA_CACHE")
    else:
        os.environ["TCLLAVA_CACHE"] = before


def video_layout(text_before: int, frames: int, tokens_per_frame: int, text_after: int) -> list[int]:
    """frame_ids of one prompt: text, then `frames` frames of `tokens_per_frame` tokens, then text."""
    return (
        [-1] * text_before + [f for f in range(frames) for _ in range(tokens_per_frame)] + [-1] * text_after
    )


def random_layout(rng: random.Random, max_len: int = 80) -> list[int]:
    """A random multi-turn, multi-video row: text runs, videos of several frames, single images."""
    row: list[int] = []
    while len(row) < max_len:
        row += [-1] * rng.randint(1, 6)
        if rng.random() < 0.7:
            frames = rng.randint(1, 4)  # 1 frame = an image
            row += [f for f in range(frames) for _ in range(rng.randint(1, 5))]
    return row[:max_len]


def pad_rows(rows: list[list[int]], side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad frame-id rows to one length; returns (frame_ids, attention_mask)."""
    length = max(map(len, rows))
    ids, mask = [], []
    for row in rows:
        pad = length - len(row)
        ids.append([-1] * pad + row if side == "left" else row + [-1] * pad)
        mask.append([0] * pad + [1] * len(row) if side == "left" else [1] * len(row) + [0] * pad)
    return torch.tensor(ids), torch.tensor(mask)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(0)
