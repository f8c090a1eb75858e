"""Which frame indices to take from a clip: pure functions, testable without video files."""

from __future__ import annotations

import math

import numpy as np

SAMPLINGS = ("middle", "uniform", "random", "mvbench")

# Tolerance for float round-off when seconds are turned into frame indices (29.97 fps and friends).
_EPS = 1e-6


def frame_bounds(
    num_total: int,
    native_fps: float,
    start: float | None = None,
    end: float | None = None,
    rounding: str = "inside",
) -> tuple[int, int]:
    """First and last frame index (inclusive) of the frames whose timestamps i/fps lie in [start, end].

    Bounds are clamped to the video, so a clip bound past its end still yields its last frame.
    `rounding="nearest"` rounds both ends to the nearest frame instead, as MVBench's reference does.
    """
    if num_total <= 0:
        raise ValueError("the video has no frames")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be greater than start ({start})")
    last = num_total - 1
    if rounding == "nearest":
        first = 0 if start is None else round(start * native_fps)
        stop = last if end is None else round(end * native_fps)
    else:
        first = 0 if start is None else math.ceil(start * native_fps - _EPS)
        stop = last if end is None else math.floor(end * native_fps + _EPS)
    first = min(max(first, 0), last)
    stop = min(max(stop, first), last)
    return first, stop


def sample_indices(
    num_total: int,
    num_frames: int | None = 16,
    sampling: str = "middle",
    fps: float | None = None,
    native_fps: float | None = None,
    start_frame: int = 0,
    end_frame: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> list[int]:
    """Frame indices (non-decreasing, may repeat) to take from frames [start_frame, end_frame] inclusive.

    - "middle": split the range into `num_frames` equal segments and take each segment's middle frame
      (the segment-middle protocol of MVBench, without its rounding quirks: 16 of 16 frames is 0..15).
    - "uniform": `num_frames` evenly spaced frames including the first and the last.
    - "random": one uniformly random frame per segment (training-time jitter); `rng` (a numpy Generator
      or a seed) makes it deterministic.
    - "mvbench": MVBench's reference `get_index` formula, bit for bit, for reproducing published numbers.
    - `fps=X` (overrides `sampling`): one frame every 1/X seconds from the first frame of the range, the
      frame on screen at that time; `num_frames` is then a cap, applied by uniform subsampling.

    When the range holds fewer frames than asked, indices repeat (the caller decides whether to warn).
    """
    if num_total <= 0:
        raise ValueError("num_total must be positive")
    end_frame = num_total - 1 if end_frame is None else end_frame
    if not 0 <= start_frame <= end_frame < num_total:
        raise ValueError(
            f"need 0 <= start_frame <= end_frame < num_total, got {start_frame}, {end_frame}, {num_total}"
        )
    if fps is not None:
        return _fps_indices(start_frame, end_frame, fps, native_fps, num_frames)
    if num_frames is None or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames}")
    n = end_frame - start_frame + 1
    i = np.arange(num_frames)
    if sampling == "middle":
        idx = np.floor((i + 0.5) * n / num_frames)
    elif sampling == "uniform":
        idx = np.floor(np.linspace(0, n - 1, num_frames) + 0.5)
    elif sampling == "random":
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        lo = np.floor(i * n / num_frames)
        hi = np.maximum(np.floor((i + 1) * n / num_frames) - 1, lo)
        idx = gen.integers(lo.astype(np.int64), hi.astype(np.int64) + 1)
    elif sampling == "mvbench":
        # MVBench's get_index uses the last index, not the count, as the span; np.round is half-to-even.
        seg = (end_frame - start_frame) / num_frames
        idx = np.array([int(seg / 2 + np.round(seg * k)) for k in range(num_frames)])
    else:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLINGS} or fps=")
    idx = np.clip(idx.astype(np.int64), 0, n - 1) + start_frame
    return idx.tolist()


def _fps_indices(
    start_frame: int, end_frame: int, fps: float, native_fps: float | None, cap: int | None
) -> list[int]:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not native_fps or native_fps <= 0:
        raise ValueError("fps sampling needs the video's native_fps")
    t0 = start_frame / native_fps
    t_end = (end_frame + 1) / native_fps  # the last frame stays on screen until then
    count = max(1, math.ceil((t_end - t0) * fps - _EPS))
    times = t0 + np.arange(count) / fps
    idx = np.clip(np.floor(times * native_fps + _EPS).astype(np.int64), start_frame, end_frame)
    if cap is not None and len(idx) > cap:
        idx = idx[np.floor(np.linspace(0, len(idx) - 1, cap) + 0.5).astype(np.int64)]
    return idx.tolist()
