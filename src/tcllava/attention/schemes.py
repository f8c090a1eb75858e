"""Position schemes: the rotary position of every token, on one axis or three (docs/method.md 1.6).

- ``tc``: TC-LLaVA's ``n + gamma * I_t(n)`` (:mod:`tcllava.attention.positions`, docs/method.md 1.1).
- ``vanilla``: the plain 1-D position ``n`` of the unmodified LLM.
- ``mrope``: Qwen2-VL's multimodal RoPE. A visual token at frame ``k``, row ``r``, column ``c`` of a video
  that starts at ``s`` gets (t, h, w) = (s + k, s + r, s + c); text gets (p, p, p); text after a video
  continues at the largest position so far + 1. The rotary frequencies are cut into a temporal, a height and a
  width section (16, 24, 24 of 64 pairs: temporal on the highest frequencies).
- ``videorope``: VideoRoPE. Frames step by ``delta`` on the temporal axis, t = s + delta * k; the spatial
  axes sit on the diagonal, centred on the frame's temporal index, h = t + r - (H - 1) // 2 and
  w = t + c - (W - 1) // 2; text after a video continues at s + delta * T. The temporal axis takes the
  lowest frequencies (the last quarter), height and width alternate over the others.

A *video* is a run of visual tokens with no text between; its frames follow ``frame_ids`` (a new number
starts a new frame) and every frame is ``H * W`` tokens in row-major order, ``frame_grid = (H, W)``. An
image is a video of one frame. Multi-axis positions are [B, L, 3] (t, h, w); :func:`frequency_axes` says
which axis drives each rotary frequency, and :func:`per_frequency` expands them to the [B, L, F]
per-frequency positions the rotary embedding takes (:mod:`tcllava.attention.rotary`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from tcllava.attention.positions import _real_mask, _same_frame_as_previous, rope_positions, token_positions

if TYPE_CHECKING:
    from tcllava.attention.settings import TCAttentionConfig

POSITION_SCHEMES = ("tc", "vanilla", "mrope", "videorope")
# Schemes whose tokens have three coordinates (t, h, w) and which need the frame grid.
MULTI_AXIS_SCHEMES = ("mrope", "videorope")
AXES = ("t", "h", "w")


def check_frame_grid(frame_grid) -> tuple[int, int] | None:
    """``frame_grid`` as (height, width), or None; anything else is a one-line error."""
    if frame_grid is None:
        return None
    try:
        height, width = (int(x) for x in frame_grid)
        valid = [height, width] == list(frame_grid) and min(height, width) >= 1
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"frame_grid must be (height, width), two integers >= 1, got {frame_grid!r}")
    return height, width


class VisualCoordinates(NamedTuple):
    """Per token [B, L]: whether it is visual, its frame inside its video, its row and column inside the
    frame, how many frames its video has (0 for text), and whether it starts a video."""

    visual: torch.Tensor
    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    frames: torch.Tensor
    starts_video: torch.Tensor


def visual_coordinates(
    frame_ids: torch.Tensor, real: torch.Tensor, frame_grid: tuple[int, int]
) -> VisualCoordinates:
    """The (frame, row, column) of every visual token from ``frame_ids`` and the frame grid (H, W).

    A frame that is not exactly H * W tokens is an error naming the sizes: the grid would misplace tokens.
    """
    height, width = frame_grid
    continues_frame, after_visual = _same_frame_as_previous(frame_ids, real)
    visual = real & (frame_ids >= 0)
    new_frame = visual & ~continues_frame
    starts_video = visual & ~after_visual
    # Index of each token among the real ones, and of the first token of its frame.
    index = real.long().cumsum(1) - 1
    frame_start = torch.where(new_frame, index, -1).cummax(1).values
    inside = torch.where(visual, index - frame_start, 0)
    # Frames counted along the row; a token's frame inside its video is the count since the video began.
    frame_count = new_frame.long().cumsum(1)
    video_first = torch.where(starts_video, frame_count, 0).cummax(1).values
    frame = torch.where(visual, frame_count - video_first, 0)
    # Frames per video: the largest frame index of the video, spread back to all its tokens.
    video = torch.where(visual, starts_video.long().cumsum(1), 0)
    per_video = torch.zeros(video.shape[0], video.shape[1] + 1, dtype=torch.long, device=video.device)
    per_video.scatter_reduce_(1, video, torch.where(visual, frame + 1, 0), "amax")
    frames = torch.where(visual, per_video.gather(1, video), 0)
    sizes = torch.zeros_like(per_video).scatter_add_(1, torch.where(visual, frame_count, 0), visual.long())
    wrong = sizes[(sizes != 0) & (sizes != height * width)]
    if wrong.numel():
        raise ValueError(
            f"every frame must have frame_grid height x width = {height} x {width} = {height * width} visual "
            f"tokens, but some frames have {', '.join(map(str, wrong.unique().tolist()))}"
        )
    return VisualCoordinates(
        visual, frame, torch.div(inside, width, rounding_mode="floor"), inside % width, frames, starts_video
    )


def _axis_positions(
    coords: VisualCoordinates,
    real: torch.Tensor,
    video_length: torch.Tensor,
    temporal_step: float,
    frame_grid: tuple[int, int],
    diagonal: bool,
) -> torch.Tensor:
    """[B, L, 3] float positions for the two multi-axis schemes, which differ only in how far a video moves
    the text after it (``video_length`` per visual token), the temporal step between frames, and whether
    the spatial axes are centred on the temporal one (VideoRoPE's diagonal) or start at the video's start."""
    text = real & ~coords.visual
    video_length = video_length.double()
    # Every text token advances the next position by 1, every video by its length (counted on its first token),
    # so the start of a token's item is the running sum of what came before it.
    advance = text.double() + torch.where(coords.starts_video, video_length, 0.0)
    upto = advance.cumsum(1)
    start = torch.where(coords.visual, upto - video_length, upto - 1)
    t = start + temporal_step * coords.frame.double()
    height, width = frame_grid
    if diagonal:
        h = t + coords.row.double() - (height - 1) // 2
        w = t + coords.col.double() - (width - 1) // 2
    else:
        h = start + coords.row.double()
        w = start + coords.col.double()
    out = torch.stack([t, torch.where(coords.visual, h, t), torch.where(coords.visual, w, t)], dim=-1)
    return torch.where(real[..., None], out, 0.0).float()


def mrope_positions(
    frame_ids: torch.Tensor, attention_mask: torch.Tensor | None, frame_grid: tuple[int, int]
) -> torch.Tensor:
    """Qwen2-VL's (t, h, w) per token, [B, L, 3] float32; padding gets 0."""
    real = _real_mask(frame_ids, attention_mask)
    coords = visual_coordinates(frame_ids, real, frame_grid)
    # The text after a video starts at the largest position of the video + 1.
    extent = torch.maximum(coords.frames, torch.full_like(coords.frames, max(frame_grid)))
    return _axis_positions(coords, real, extent, 1.0, frame_grid, diagonal=False)


def videorope_positions(
    frame_ids: torch.Tensor, attention_mask: torch.Tensor | None, frame_grid: tuple[int, int], delta: float
) -> torch.Tensor:
    """VideoRoPE's (t, h, w) per token, [B, L, 3] float32; padding gets 0."""
    real = _real_mask(frame_ids, attention_mask)
    coords = visual_coordinates(frame_ids, real, frame_grid)
    return _axis_positions(coords, real, delta * coords.frames.double(), delta, frame_grid, diagonal=True)


def scheme_positions(
    config: TCAttentionConfig,
    frame_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    frame_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Positions of every token under ``config.position_scheme``: [B, L] for ``tc`` and ``vanilla``,
    [B, L, 3] (t, h, w) for the multi-axis schemes, which need ``frame_grid`` once a visual token exists."""
    scheme = config.position_scheme
    if scheme == "tc":
        return rope_positions(frame_ids, config.gamma, attention_mask, config.text_after_video)
    real = _real_mask(frame_ids, attention_mask)
    if scheme == "vanilla":
        return token_positions(real).float()
    grid = check_frame_grid(frame_grid)
    if grid is None:
        if bool((real & (frame_ids >= 0)).any()):
            raise ValueError(
                f"position_scheme {scheme!r} needs the frame grid (height, width) of the visual tokens: pass "
                "frame_grid=(h, w) to enable_tc_attention (a TC-LLaVA model takes it from pool_shape)"
            )
        grid = (1, 1)  # text only: the grid is never read
    if scheme == "mrope":
        return mrope_positions(frame_ids, real, grid)
    return videorope_positions(frame_ids, real, grid, config.videorope_delta)


def frequency_axes(scheme: str, pairs: int) -> torch.Tensor:
    """Which axis (0 t, 1 h, 2 w) drives each of the ``pairs`` rotary frequencies, highest frequency first.

    Both schemes give the temporal axis a quarter of the pairs (16 of 64, as Qwen2-VL's mrope_section
    (16, 24, 24) and VideoRoPE's 16 temporal pairs for head_dim 128). M-RoPE puts it on the highest
    frequencies, then height, then width; VideoRoPE alternates height and width over the high frequencies and
    puts time on the lowest.
    """
    if scheme not in MULTI_AXIS_SCHEMES:
        raise ValueError(
            f"position_scheme {scheme!r} has one axis; multi-axis schemes are {MULTI_AXIS_SCHEMES}"
        )
    temporal = pairs // 4
    if temporal < 1:
        raise ValueError(f"position_scheme {scheme!r} needs at least 4 rotary frequency pairs, got {pairs}")
    spatial = pairs - temporal
    if scheme == "mrope":
        height = spatial // 2
        axes = [0] * temporal + [1] * height + [2] * (spatial - height)
    else:
        axes = [1 + i % 2 for i in range(spatial)] + [0] * temporal
    return torch.tensor(axes, dtype=torch.long)


def per_frequency(positions: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """[B, Q, 3] axis positions -> [B, Q, F]: frequency i takes the position of axis ``axes[i]``."""
    return positions[..., axes.to(positions.device)]


def text_step(config: TCAttentionConfig) -> float:
    """How far each generated (text) token advances the position: 1 + gamma under ``tc``, else 1."""
    return 1.0 + config.gamma if config.position_scheme == "tc" else 1.0


def frame_step(config: TCAttentionConfig, tokens_per_frame: int) -> float:
    """Roughly how far one more frame moves the text after a video (for context-length hints)."""
    return {
        "tc": tokens_per_frame + config.gamma,
        "vanilla": float(tokens_per_frame),
        "mrope": 1.0,
        "videorope": config.videorope_delta,
    }[config.position_scheme]
