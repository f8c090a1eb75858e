"""Temporal merge of near-duplicate frames: fewer visual tokens for long, slowly changing videos.

A long video often holds runs of frames that barely differ; each costs a frame's visual tokens all the
same. Dropping a frame that is close to the last frame kept (not to its neighbour, so that a slow drift
still gets a new frame once it adds up) keeps every frame that shows something new, a one-frame event
included, with its own timestamp. It runs on decoded pixels, before tokenisation, so the processor
counts the visual tokens of the frames that are left.
"""

from __future__ import annotations

import numpy as np
import torch

from .read import Clip


def keep_distinct(frames: torch.Tensor | np.ndarray, threshold: float) -> list[int]:
    """Indices of the frames to keep from uint8 frames [T, H, W, 3]: the first, then every frame whose mean
    absolute difference to the last kept frame, in pixel levels 0-255 over all pixels and channels,
    exceeds ``threshold`` (0 drops only exact repeats)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold >= 0:
        raise ValueError(f"threshold must be a number of pixel levels >= 0, got {threshold!r}")
    frames = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty [T, H, W, C] array, got shape {tuple(frames.shape)}")
    kept = [0]
    last = frames[0].to(torch.int16)
    for i in range(1, frames.shape[0]):
        frame = frames[i].to(torch.int16)
        if (frame - last).abs().float().mean().item() > threshold:
            kept.append(i)
            last = frame
    return kept


def merge_similar_frames(clip: Clip, threshold: float) -> Clip:
    """The clip without its near-duplicate frames (see :func:`keep_distinct`), timestamps of the kept
    frames kept."""
    index = torch.tensor(keep_distinct(clip.frames, threshold))
    return Clip(clip.frames[index], clip.timestamps[index])
