"""Pictures of what TC attention changes: the four masks (paper Fig. 3), the RoPE positions, and attention
maps of a model on a real prompt (paper Fig. 5). matplotlib only, Agg backend, PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap

from tcllava.attention import MASK_KINDS, dense_mask, rope_positions, temporal_ids

TITLES = {
    "causal": "1. Causal",
    "full_visual": "2. Full visual",
    "frame_block": "3. Frame-wise block",
    "frame_block_causal": "4. Frame-wise block causal (TC)",
}


def layout_row(text_before: int, frames: int, tokens_per_frame: int, text_after: int) -> torch.Tensor:
    """frame_ids [1, L] of one prompt: text, a video, text."""
    row = [-1] * text_before + [f for f in range(frames) for _ in range(tokens_per_frame)] + [-1] * text_after
    return torch.tensor([row])


def _interaction_colours(frame_ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """0 blocked, 1 text-text, 2 visual-text, 3 visual-visual (the paper's blue / purple / red)."""
    visual = (frame_ids[0] >= 0).long()
    kinds = visual[:, None] + visual[None, :] + 1
    return torch.where(allowed, kinds, 0)


def plot_masks(frame_ids: torch.Tensor, path: str | Path) -> Path:
    """The four mask kinds side by side for one layout."""
    cmap = ListedColormap(["#f4f4f4", "#4a7fd4", "#9b59b6", "#d64541"])
    fig, axes = plt.subplots(1, len(MASK_KINDS), figsize=(4 * len(MASK_KINDS), 4.3))
    for ax, kind in zip(axes, MASK_KINDS, strict=True):
        colours = _interaction_colours(frame_ids, dense_mask(frame_ids, kind)[0])
        ax.imshow(colours, cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        ax.set_title(TITLES[kind], fontsize=10)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Attention masks (blue: text-text, purple: visual-text, red: visual-visual)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_positions(
    frame_ids: torch.Tensor, gammas: list[float], path: str | Path, text_after_video: str = "paper"
) -> Path:
    """RoPE position n_hat = n + gamma * I_t(n) for several gammas, with frames shaded."""
    fig, ax = plt.subplots(figsize=(8, 4))
    n = torch.arange(frame_ids.shape[1])
    for gamma in gammas:
        ax.plot(
            n,
            rope_positions(frame_ids, gamma, text_after_video=text_after_video)[0],
            marker=".",
            label=f"gamma={gamma:g}",
        )
    ids = temporal_ids(frame_ids, text_after_video=text_after_video)[0]
    for frame in torch.unique(frame_ids[frame_ids >= 0]):
        where = (frame_ids[0] == frame).nonzero()[:, 0]
        ax.axvspan(
            int(where[0]) - 0.5, int(where[-1]) + 0.5, color="#d64541", alpha=0.08 + 0.05 * (int(frame) % 2)
        )
    ax.set_xlabel("token index n")
    ax.set_ylabel("RoPE position")
    ax.set_title(
        f"Temporal-aware dual RoPE (temporal ids {ids.min()}..{ids.max()}, reading '{text_after_video}')"
    )
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_attention(maps: dict[str, torch.Tensor], frame_ids: torch.Tensor, path: str | Path) -> Path:
    """Attention weights [L, L] per model name side by side (lighter = higher, as in the paper's Fig. 5)."""
    fig, axes = plt.subplots(1, len(maps), figsize=(5 * len(maps), 5), squeeze=False)
    boundaries = [i for i in range(1, frame_ids.shape[1]) if frame_ids[0, i] != frame_ids[0, i - 1]]
    for ax, (name, weights) in zip(axes[0], maps.items(), strict=True):
        ax.imshow(weights.float().clamp_min(1e-4).log10(), cmap="magma", interpolation="nearest")
        for b in boundaries:
            ax.axhline(b - 0.5, color="white", lw=0.3, alpha=0.4)
            ax.axvline(b - 0.5, color="white", lw=0.3, alpha=0.4)
        ax.set_title(name)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.suptitle("Attention weights (log10, mean over heads)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
