"""Attention maps of one checkpoint on one prompt, vanilla settings vs TC settings (paper Fig. 5)."""

from __future__ import annotations

from pathlib import Path

import torch

from tcllava.attention import TCAttentionConfig, record_attention
from tcllava.model import load
from tcllava.video import read_video
from tcllava.viz.plots import plot_attention


def attention_map(model, batch: dict, layer: int) -> torch.Tensor:
    """Mean-over-heads attention weights [L, L] of one decoder layer for the first sample of ``batch``."""
    layers = model.config.text_config.num_hidden_layers
    index = layer % layers
    with torch.inference_mode(), record_attention({index}) as maps:
        model(**batch)
    return maps[index][0].mean(0)


def compare_attention(
    model_dir: str | Path,
    video: str | Path,
    question: str,
    out: str | Path,
    layer: int = -1,
    num_frames: int | None = None,
) -> Path:
    maps = {}
    frame_ids = None
    for name, overrides in (
        ("vanilla (gamma 0, causal)", TCAttentionConfig.vanilla().to_dict()),
        ("TC (checkpoint settings)", {}),
    ):
        model, processor = load(model_dir, **overrides)
        frames = read_video(video, num_frames or processor.num_frames).frames
        batch = processor(processor.question(question), [frames])
        maps[name] = attention_map(model, batch, layer)
        frame_ids = batch["frame_ids"]
    return plot_attention(maps, frame_ids, out)
