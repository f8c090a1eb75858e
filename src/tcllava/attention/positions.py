"""Temporal ids and the Temporal-Aware Dual RoPE positions (docs/method.md 1.1).

Every token keeps its global position ``n`` (real tokens only, padding gets none) and gets a temporal id
``I_t(n)`` shared by all tokens of a frame. RoPE then runs at ``n + gamma * I_t(n)``: two rotations on the
same channel pair add, so the "dual" RoPE is ordinary RoPE evaluated at that (possibly fractional) position.

``frame_ids`` encode the layout: -1 for a text token; for a visual token the number of its frame.
Consecutive real tokens with the same number form one frame; a new number starts a new frame. An image is a
video of one frame. The step rule between neighbouring real tokens generalises the paper's closed form to
several videos, images and multi-turn chats:

    text -> text +1, text -> frame +1, inside a frame 0, frame -> next frame +1,
    last visual token -> text: 0 ("paper") or +1 ("next", the VideoRoPE re-implementation).
"""

from __future__ import annotations

import torch

TEXT_AFTER_VIDEO_READINGS = ("paper", "next")


def _real_mask(frame_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if frame_ids.ndim != 2:
        raise ValueError(f"frame_ids must be [batch, length], got shape {tuple(frame_ids.shape)}")
    if attention_mask is None:
        return torch.ones_like(frame_ids, dtype=torch.bool)
    if attention_mask.shape != frame_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != frame_ids shape {tuple(frame_ids.shape)}"
        )
    return attention_mask.bool()


def _previous_real(real: torch.Tensor) -> torch.Tensor:
    """Index of the previous real token for every position (-1 when there is none)."""
    length = real.shape[1]
    index = torch.arange(length, device=real.device).expand_as(real)
    last_upto = torch.where(real, index, -1).cummax(dim=1).values
    return torch.cat([torch.full_like(last_upto[:, :1], -1), last_upto[:, :-1]], dim=1)


def _same_frame_as_previous(frame_ids: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(continues_frame, after_visual): per token, whether it extends the previous real token's frame,
    and whether the previous real token is visual."""
    prev = _previous_real(real)
    prev_frame = frame_ids.gather(1, prev.clamp(min=0))
    has_prev = prev >= 0
    visual = frame_ids >= 0
    prev_visual = has_prev & (prev_frame >= 0)
    continues_frame = visual & prev_visual & (prev_frame == frame_ids)
    return continues_frame, prev_visual & has_prev


def temporal_ids(
    frame_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    text_after_video: str = "paper",
) -> torch.Tensor:
    """Temporal id ``I_t`` of every token, [B, L] long; padding tokens get 0.

    The first real token has id 0 and every later real token adds the step of the module docstring.
    """
    if text_after_video not in TEXT_AFTER_VIDEO_READINGS:
        raise ValueError(
            f"text_after_video must be one of {TEXT_AFTER_VIDEO_READINGS}, got {text_after_video!r}"
        )
    real = _real_mask(frame_ids, attention_mask)
    continues_frame, after_visual = _same_frame_as_previous(frame_ids, real)
    step = torch.ones_like(frame_ids)
    step[continues_frame] = 0
    if text_after_video == "paper":
        step[(frame_ids < 0) & after_visual] = 0
    step = step * real
    # The first real token of each row starts at 0, not 1.
    first = real & (real.long().cumsum(1) == 1)
    step[first] = 0
    return torch.where(real, step.cumsum(1), 0)


def token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Global position ``n`` of every token, counting real tokens only; padding gets 0."""
    real = attention_mask.bool()
    return torch.where(real, real.long().cumsum(1) - 1, 0)


def rope_positions(
    frame_ids: torch.Tensor,
    gamma: float,
    attention_mask: torch.Tensor | None = None,
    text_after_video: str = "paper",
) -> torch.Tensor:
    """RoPE positions ``n + gamma * I_t(n)``, [B, L] float32. ``gamma = 0`` is vanilla RoPE."""
    real = _real_mask(frame_ids, attention_mask)
    n = token_positions(real).float()
    if gamma == 0:
        return n
    return n + gamma * temporal_ids(frame_ids, real, text_after_video).float()


def block_ids(frame_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Non-decreasing block index per token: one block per frame, one per text token; padding gets -1.

    ``frame_block_causal`` is exactly ``block(key) <= block(query)`` (docs/method.md 1.2), which is what the
    fast kernels are built on.
    """
    real = _real_mask(frame_ids, attention_mask)
    continues_frame, _ = _same_frame_as_previous(frame_ids, real)
    step = (real & ~continues_frame).long()
    return torch.where(real, step.cumsum(1) - 1, -1)
