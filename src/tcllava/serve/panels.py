"""The page's attention panel: the mask and RoPE positions of the current prompt (``tcllava.viz``), and,
after an answer, the share of attention each frame received from the answer's tokens.

pyplot keeps global state and the page answers several users at once on separate threads, so every
figure is drawn under one lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tcllava.serve.engine import Prepared

PLOT_LOCK = threading.Lock()
MAX_PANEL_TOKENS = 4096  # a dense [L, L] map per head beyond this is too large to draw usefully


def prompt_frame_ids(processor: Any, prepared: Prepared) -> torch.Tensor:
    from tcllava.model.processing import frame_ids_from_tokens

    ids = torch.tensor([prepared.encoded.input_ids])
    return frame_ids_from_tokens(ids, processor.config.media_token_id, processor.config.tokens_per_frame)


def prompt_figures(processor: Any, prepared: Prepared, folder: Path) -> tuple[Path, Path] | None:
    """PNGs of the four masks (the model uses ``tc_attention.mask``) and of the RoPE positions (the
    model's gamma beside vanilla RoPE) on this prompt's layout; None when the prompt is too long."""
    from tcllava.viz.plots import plot_masks, plot_positions

    if prepared.prompt_tokens > MAX_PANEL_TOKENS:
        return None
    frame_ids = prompt_frame_ids(processor, prepared)
    tc = processor.config.tc_attention
    folder.mkdir(parents=True, exist_ok=True)
    with PLOT_LOCK:
        masks = plot_masks(frame_ids, folder / "masks.png")
        positions = plot_positions(
            frame_ids, sorted({0.0, tc.gamma}), folder / "positions.png", tc.text_after_video
        )
    return masks, positions


@dataclass
class FrameShares:
    """Mean share of the answer tokens' attention (last decoder layer, mean over heads) on each frame's
    visual tokens, and on text. Frames are the LLM's: after temporal pooling there may be fewer."""

    labels: list[str]
    shares: list[float]
    text: float


def frame_shares(model: Any, processor: Any, prepared: Prepared, answer_tokens: list[int]) -> FrameShares:
    """One forward pass over the prompt and the answer with attention recorded (run it on the engine's
    thread: ``engine.call``)."""
    from tcllava.model.processing import IGNORE_INDEX, Encoded
    from tcllava.viz.maps import attention_map

    prompt = prepared.encoded
    ids = prompt.input_ids + answer_tokens
    batch = processor.collate([Encoded(ids, [IGNORE_INDEX] * len(ids), prompt.pixel_values)])
    batch.pop("labels")
    inputs = {k: (v.to(model.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    weights = attention_map(model, inputs, layer=-1).float()
    queries = weights[len(prompt.input_ids) :] if answer_tokens else weights[-1:]
    frame_ids = batch["frame_ids"][0]
    count = int(frame_ids.max()) + 1
    shares = [float(queries[:, frame_ids == f].sum(-1).mean()) for f in range(count)]
    text = float(queries[:, frame_ids < 0].sum(-1).mean())
    stamps = [float(t) for clip in prepared.clips for t in clip.timestamps]
    if count == len(stamps):
        labels = [f"{i + 1}\n{t:.1f}s" for i, t in enumerate(stamps)]
    else:  # temporal pooling merged frames, or several clips of different lengths
        labels = [str(i + 1) for i in range(count)]
    return FrameShares(labels, shares, text)


def plot_shares(shares: FrameShares, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(shares.labels) + 2), 3))
        ax.bar(range(len(shares.shares)), [100 * s for s in shares.shares], color="#d64541")
        ax.set_xticks(range(len(shares.labels)), shares.labels, fontsize=7)
        ax.set_xlabel(f"frame (as the LLM sees it), time; text gets {100 * shares.text:.0f}%")
        ax.set_ylabel("% of the answer's attention")
        ax.set_title("Answer's attention per frame (last layer)", fontsize=10)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return path
