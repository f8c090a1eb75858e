"""Optional decoders behind `read_video(..., backend=...)`; PyAV stays the default and the fallback.

Measured on this project's machines (benchmarks/results/video_decode.md) the seeking PyAV reader was
faster than decord and OpenCV at taking 16 frames, so these exist for comparison and for pipelines
that must match decord's frames, not for speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import VideoError


class DecordReader:
    """Frames through decord (`pip install decord`), which also seeks by keyframe."""

    def __init__(self, path: str | Path) -> None:
        try:
            import decord
        except ImportError as e:
            raise ImportError("backend='decord' needs the optional package: pip install decord") from e
        self.path = Path(path)
        try:
            self._reader = decord.VideoReader(str(path), num_threads=1)
        except (decord.DECORDError, RuntimeError) as e:
            raise VideoError(path, f"decord cannot open the file ({type(e).__name__}: {e})") from e
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        if self.num_frames <= 0 or self.fps <= 0:
            raise VideoError(path, "the video stream has no frames or no frame rate")

    def read(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        try:
            frames = self._reader.get_batch(indices).asnumpy()
            stamps = np.asarray(self._reader.get_frame_timestamp(indices), dtype=np.float64)[:, 0]
        except Exception as e:  # decord raises its own error types from C++
            raise VideoError(self.path, f"decord failed to decode ({type(e).__name__}: {e})") from e
        return frames, stamps

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> DecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
