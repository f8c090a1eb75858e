"""The four attention masks of the paper's ablation (Figure 3; docs/method.md 1.2), as readable dense references.

``allowed(i, j)``: query i may attend key j. ``vis(i)``: token i is visual; ``f(i)``: its frame.

    causal               j <= i
    full_visual          j <= i, or both visual (any frames, future ones too)
    frame_block          text i: j <= i;  visual i: j is text with j < i, or f(j) == f(i)
    frame_block_causal   j <= i, or both visual and f(j) == f(i)          (TC-LLaVA)

Padding keys are never attendable. The fast kernels in :mod:`tcllava.attention.kernels` are checked against
:func:`dense_mask`; it costs O(L^2) memory and is meant for tests, plots and short sequences.
"""

from __future__ import annotations

import torch

from tcllava.attention.positions import block_ids

MASK_KINDS = ("causal", "full_visual", "frame_block", "frame_block_causal")
# Kinds whose allowed keys form a prefix [0, e(i)) of the sequence for every query: exact fast kernels apply.
PREFIX_KINDS = ("causal", "frame_block_causal")


def check_kind(kind: str) -> str:
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}: mask must be one of {MASK_KINDS}")
    return kind


def dense_mask(
    frame_ids: torch.Tensor, kind: str, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, L, L] bool, True where query i (dim 1) may attend key j (dim 2)."""
    check_kind(kind)
    length = frame_ids.shape[1]
    real = torch.ones_like(frame_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    index = torch.arange(length, device=frame_ids.device)
    causal = (index[None, :, None] >= index[None, None, :]).expand(frame_ids.shape[0], -1, -1)
    visual = frame_ids >= 0
    vis_q, vis_k = visual[:, :, None], visual[:, None, :]
    blocks = block_ids(frame_ids, real)
    same_frame = vis_q & vis_k & (blocks[:, :, None] == blocks[:, None, :])
    if kind == "causal":
        allowed = causal
    elif kind == "full_visual":
        allowed = causal | (vis_q & vis_k)
    elif kind == "frame_block":
        strictly_before = index[None, :, None] > index[None, None, :]
        allowed = torch.where(vis_q, (~vis_k & strictly_before) | same_frame, causal)
    else:
        allowed = causal | same_frame
    return allowed & real[:, None, :]
