"""`read_video`: sampled frames and their timestamps from a video file, frame folder or image."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import torch

from .errors import VideoError, VideoWarning
from .images import IMAGE_SUFFIXES, ImageSequenceReader
from .sampling import SAMPLINGS, frame_bounds, sample_indices

BACKENDS = ("auto", "pyav", "decord")

T = TypeVar("T")


class Clip(NamedTuple):
    """Sampled frames, uint8 [T, H, W, 3] RGB, and their timestamps in seconds, float64 [T]."""

    frames: torch.Tensor
    timestamps: torch.Tensor


class FrameReader(Protocol):
    path: Path
    num_frames: int
    fps: float

    def read(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


def read_video(
    path: str | Path,
    num_frames: int | None = 16,
    sampling: str = "middle",
    start: float | None = None,
    end: float | None = None,
    fps: float | None = None,
    seed: int | np.random.Generator | None = None,
    timeout: float | None = 60.0,
    *,
    backend: str = "auto",
    folder_fps: float = 3.0,
    stats: dict[str, Any] | None = None,
) -> Clip:
    """Read `num_frames` frames of a video (mp4/webm/mkv/avi/gif...), a frame folder or a single image.

    `sampling` is "middle" (segment middles, the MVBench protocol), "uniform", "random" (per-segment
    jitter, deterministic with `seed`) or "mvbench" (MVBench's reference index formula); `fps=X` takes a
    frame every 1/X s instead, with `num_frames` as a cap. `start`/`end` bound the clip in seconds.
    Frame folders are sorted naturally and played at `folder_fps`. Timestamps are the frames' own
    presentation times, from the start of the stream.

    Only the needed stretches of the file are decoded (keyframe seeks). Any failure, including a decode
    that runs past `timeout` seconds (None: no limit), raises VideoError naming the file. If the clip
    holds fewer distinct frames than asked, frames repeat and a VideoWarning is issued.

    `backend`: "auto" and "pyav" use the seeking PyAV reader (the fastest measured, always installed);
    "decord" needs the optional package. `stats`, if a dict, receives the indices and decode counters.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if fps is None and sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLINGS} or fps=")
    if fps is None and (num_frames is None or num_frames < 1):
        raise ValueError(f"num_frames must be a positive integer, got {num_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if start is not None and end is not None and end <= start:
        raise VideoError(path, f"end ({end} s) must be after start ({start} s)")
    if not path.exists():
        raise VideoError(path, "no such file or directory")

    cancel = threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout

    def work() -> tuple[np.ndarray, np.ndarray, list[int], int]:
        with _open_reader(path, backend, folder_fps, deadline, cancel) as reader:
            rounding = "nearest" if sampling == "mvbench" and fps is None else "inside"
            first, last = frame_bounds(reader.num_frames, reader.fps, start, end, rounding)
            indices = sample_indices(
                reader.num_frames, num_frames, sampling, fps, reader.fps, first, last, rng=seed
            )
            unique = sorted(set(indices))
            images, stamps = reader.read(unique)
            if stats is not None:
                stats.update(
                    backend=type(reader).__name__,
                    num_frames_total=reader.num_frames,
                    native_fps=reader.fps,
                    indices=indices,
                    frames_decoded=getattr(reader, "frames_decoded", len(unique)),
                    seeks=getattr(reader, "seeks", 0),
                )
        positions = np.searchsorted(np.asarray(unique), np.asarray(indices))
        return images[positions], stamps[positions], indices, last - first + 1

    images, stamps, indices, available = _run_with_timeout(work, timeout, path, cancel)
    distinct = len(set(indices))
    if distinct < len(indices) and available < len(indices):
        warnings.warn(
            f"{path}: only {distinct} distinct frames for {len(indices)} requested; frames repeat",
            VideoWarning,
            stacklevel=2,
        )
    return Clip(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(stamps))


def _open_reader(
    path: Path, backend: str, folder_fps: float, deadline: float | None, cancel: threading.Event
) -> FrameReader:
    if path.is_dir():
        return ImageSequenceReader.from_folder(path, folder_fps)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSequenceReader(path, [path], folder_fps)
    if backend == "decord":
        from .backends import DecordReader

        return DecordReader(path)
    from .pyav_reader import PyAVReader

    return PyAVReader(path, deadline=deadline, cancel=cancel)


def _run_with_timeout(work: Callable[[], T], timeout: float | None, path: Path, cancel: threading.Event) -> T:
    """Run `work` in a worker thread and give up after `timeout` seconds.

    A decoder stuck inside one FFmpeg call never returns to Python, so a deadline checked between
    packets is not enough; the thread is told to stop (`cancel`) and left to finish on its own."""
    if timeout is None:
        return work()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=target, name=f"tcllava-read-video:{path.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        cancel.set()
        raise VideoError(path, f"decoding did not finish within the {timeout} s timeout (hung or too slow)")
    if "error" in result:
        raise result["error"]
    return result["value"]
