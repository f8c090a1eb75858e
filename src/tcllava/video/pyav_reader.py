"""Seeking frame reader on PyAV: the always-available decode path.

Taking 16 frames from a long video must not decode the whole file. For sorted target frames the reader
decodes forward while that is cheaper (no keyframe between the current position and the target), and
otherwise seeks to the last keyframe before the target and decodes forward from there, taking the
first frame whose index is >= the target. Frame indices come from presentation timestamps,
index = round((pts - start) * time_base * fps), which is exact for constant frame rate videos even when
the time base cannot represent 1/fps (webm's milliseconds: 0, 33, 67, 100, ...).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from itertools import chain, pairwise
from pathlib import Path

import av
import numpy as np

from .errors import VideoError

# Formats whose demuxer cannot seek by timestamp: read them front to back.
_NO_SEEK_FORMATS = {"gif", "image2", "image2pipe", "apng"}
# Codecs decoded with slice threading by default (see PyAVReader); others use FFmpeg's AUTO.
_SLICE_THREADED = {"h264"}
# Decode errors tolerated per read (the decoder conceals damaged packets) before the file is refused.
_MAX_DECODE_ERRORS = 16
# Until keyframes are known, seek only for gaps longer than this many seconds of video.
_DEFAULT_GOP_SECONDS = 2.0

Frame = tuple[int, "av.VideoFrame"]


class PyAVReader:
    """Random access to the frames of one video stream; frame indices are 0-based display order.

    `frames_decoded` and `seeks` count the work done, for tests and benchmarks. `deadline` (a
    `time.monotonic()` value) and `cancel` stop a decode between packets. `thread_type` (PyAV's
    "SLICE", "FRAME", "AUTO", "NONE") defaults by codec, as measured here for these short decode runs:
    slice threading for H.264 (frame threading was 20-60% slower), FFmpeg's "AUTO" for the rest
    (10-20% faster than slice threading on VP9).
    """

    def __init__(
        self,
        path: str | Path,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        thread_type: str | None = None,
        skip_nonref: bool = True,
    ) -> None:
        self.path = Path(path)
        self.frames_decoded = 0
        self.seeks = 0
        self.decode_errors = 0
        self._deadline = deadline
        self._cancel = cancel
        self._thread_type = thread_type
        self._skip_nonref = skip_nonref
        self._target = 0  # the frame being sought: non-reference frames before it are not decoded
        self._container: av.container.InputContainer | None = None
        self._open()
        try:
            self._setup()
        except Exception:
            self.close()
            raise

    # -- opening and metadata ------------------------------------------------------------------

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        io_timeout = None if self._deadline is None else max(1.0, self._deadline - time.monotonic())
        try:
            self._container = av.open(str(self.path), metadata_errors="ignore", timeout=io_timeout)
        except EOFError as e:  # av.error.EOFError: nothing decodable before the end of the file
            raise VideoError(self.path, f"no video data: empty or truncated file ({_describe(e)})") from e
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(self.path, f"cannot open as a video ({_describe(e)})") from e
        streams = self._container.streams.video
        if not streams:
            raise VideoError(self.path, "no video stream (or one without frames) in the file")
        self._stream = streams[0]
        codec = self._stream.codec_context.name
        self._stream.thread_type = self._thread_type or ("SLICE" if codec in _SLICE_THREADED else "AUTO")
        self._skipping = False
        self._last_idx: int | None = None  # index of the last frame decoded since the last seek
        self._at_start = True  # freshly opened: decoding forward starts at the first frame
        self._frames: Iterator[Frame] | None = None  # the running decode, continued across reads

    def _setup(self) -> None:
        stream = self._stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or stream.time_base is None:
            raise VideoError(self.path, "the video stream has no frame rate or time base")
        self._tb = Fraction(stream.time_base)
        self.fps = float(rate)
        self._start = stream.start_time or 0
        self._pts_per_frame = 1 / (Fraction(rate) * self._tb)
        self._frames_per_pts = float(Fraction(rate) * self._tb)
        self._can_seek = not (set(self._container.format.name.split(",")) & _NO_SEEK_FORMATS)
        self._gop = max(2.0, _DEFAULT_GOP_SECONDS * self.fps)
        self._last_key: int | None = None
        # mkv/webm report 0 frames; container frame counts can also be absent for other formats.
        self.num_frames = stream.frames if stream.frames > 0 else self._count_frames()
        if self.num_frames <= 0:
            raise VideoError(self.path, "the video stream has no frames")
        self.width: int | None = stream.codec_context.width or None  # else taken from the first frame
        self.height: int | None = stream.codec_context.height or None

    def _count_frames(self) -> int:
        """Exact frame count from the largest packet timestamp (duration x fps is off by the last frame's
        duration or by other streams): seek a little before the end and demux, without decoding, to the
        end. A little before, as with B-frames the last packet is not the last frame shown, and demuxers
        without an index (mpeg-ts) may land past the last keyframe."""
        duration = self._duration_pts()
        last_pts = None
        if self._can_seek and duration is not None:
            margin = max(1.0, 16 / self.fps) / self._tb  # one second or 16 frames, in pts
            try:
                self._seek_raw(math.floor(self._start + max(0, duration - margin)))
                last_pts = self._max_packet_pts()
            except av.FFmpegError:
                last_pts = None
        if last_pts is None:  # cannot seek: demux the whole file (cheap next to decoding it)
            self._open()
            last_pts = self._max_packet_pts()
            self._open()
        return 0 if last_pts is None else self._index_of_pts(last_pts) + 1

    def _duration_pts(self) -> int | None:
        if self._stream.duration:
            return self._stream.duration
        if self._container.duration:
            return int(self._container.duration / av.time_base / self._tb)
        return None

    def _max_packet_pts(self) -> int | None:
        last = None
        try:
            for packet in self._container.demux(self._stream):
                self._check_time()
                if packet.pts is not None and (last is None or packet.pts > last):
                    last = packet.pts
        except av.FFmpegError as e:
            raise VideoError(self.path, f"corrupt stream while reading packets ({_describe(e)})") from e
        return last

    # -- index and timestamp maths -------------------------------------------------------------

    def _index_of_pts(self, pts: int) -> int:
        return round((pts - self._start) * self._frames_per_pts)

    def _pts_of_index(self, index: float) -> int:
        # Rounded up: muxers round timestamps either way by less than one time base unit.
        return math.ceil(self._start + Fraction(index) * self._pts_per_frame)

    def _keyframe_before(self, target: int) -> float | None:
        """Frame index of the last indexed keyframe at or before `target`, or None when the demuxer's
        index does not cover the target (empty, or built only as far as demuxing got)."""
        entries = self._stream.index_entries
        if len(entries) < 2:
            return None
        target_pts = self._pts_of_index(target)
        if entries[len(entries) - 1].timestamp < target_pts - self._pts_per_frame:
            return None
        i = entries.search_timestamp(target_pts, backward=True)
        if i < 0:
            return None
        # mp4 index timestamps are decode timestamps, a few frames early with B-frames: conservative.
        return (entries[i].timestamp - self._start) * self._frames_per_pts

    def _should_seek(self, target: int) -> bool:
        if self._last_idx is None:
            return target > self._gop  # at the start: decode forward if the target is close
        if target <= self._last_idx:
            return True  # behind us (a second read() on this reader)
        if not self._can_seek or target - self._last_idx <= 1:
            return False
        key = self._keyframe_before(target)
        if key is not None:
            return key > self._last_idx
        return target - self._last_idx > self._gop

    # -- decoding ------------------------------------------------------------------------------

    def _check_time(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise VideoError(self.path, "decoding cancelled (timed out)")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise VideoError(self.path, "decoding took longer than the timeout")

    def _seek_raw(self, pts: int) -> None:
        self.seeks += 1
        self._container.seek(int(pts), stream=self._stream, backward=True, any_frame=False)
        self._last_idx = None
        self._at_start = False
        self._frames = None

    def _decode(self) -> Iterator[Frame]:
        """Decode forward from the demuxer's position, yielding (frame index, frame)."""
        try:
            for packet in self._container.demux(self._stream):
                self._check_time()
                self._set_skipping(packet)
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:
                    self.decode_errors += 1
                    if self.decode_errors > _MAX_DECODE_ERRORS:
                        raise VideoError(self.path, f"corrupt stream ({_describe(e)})") from e
                    continue
                for frame in frames:
                    self.frames_decoded += 1
                    if frame.pts is not None:
                        idx = self._index_of_pts(frame.pts)
                    else:  # no timestamps (rare): count frames
                        idx = 0 if self._last_idx is None else self._last_idx + 1
                    if frame.key_frame:
                        if self._last_key is not None and idx > self._last_key:
                            self._gop = max(self._gop, idx - self._last_key)
                        self._last_key = idx
                    self._last_idx = idx
                    yield idx, frame
        except av.FFmpegError as e:
            raise VideoError(self.path, f"corrupt stream ({_describe(e)})") from e

    def _set_skipping(self, packet: av.Packet) -> None:
        """Let the decoder drop non-reference frames (B-frames, mostly) shown before the target: they are
        never output and nothing refers to them. About a third of H.264 frames; a no-op for VP9."""
        skip = self._skip_nonref and packet.pts is not None and self._index_of_pts(packet.pts) < self._target
        if skip != self._skipping:
            self._stream.codec_context.skip_frame = "NONREF" if skip else "DEFAULT"
            self._skipping = skip

    def _seek(self, target: int) -> Iterator[Frame]:
        """Seek so that decoding starts at or before `target`, and return the decoding iterator.

        The demuxer picks a keyframe by its (decode) timestamp, so with B-frames it can land just after
        the target; then seek again further back, and in the end restart from the beginning."""
        before = self._last_idx
        back = 0.0
        while True:
            try:
                self._seek_raw(self._pts_of_index(max(target - back, 0)))
            except av.FFmpegError:
                break
            frames = self._decode()
            first = next(frames, None)
            if first is not None and first[0] <= target:
                if before is not None and first[0] <= before:  # wasted: no keyframe in (before, target]
                    self._gop = max(self._gop, target - first[0] + 1)
                return chain([first], frames)
            if target - back <= 0:
                break
            back = back * 8 + self._gop
        self._open()
        return self._decode()

    def read(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames (uint8 [K, H, W, 3] RGB) and timestamps (float64 seconds [K]) at sorted `indices`."""
        if not indices or any(b < a for a, b in pairwise(indices)):
            raise ValueError(f"indices must be a non-empty sorted list, got {indices}")
        images: list[np.ndarray] = []
        stamps: list[float] = []
        current: Frame | None = None
        for target in indices:
            if current is None or current[0] < target:
                self._target = target
                if self._frames is None and self._at_start and target <= self._gop:
                    self._frames = self._decode()
                elif self._frames is None or self._should_seek(target):
                    self._frames = self._seek(target)
                current = self._advance(self._frames, target, current)
            idx, frame = current
            images.append(self._to_rgb(frame))
            stamps.append(
                float((frame.pts - self._start) * self._tb) if frame.pts is not None else idx / self.fps
            )
        return np.stack(images), np.asarray(stamps, dtype=np.float64)

    def _advance(self, frames: Iterator[Frame], target: int, current: Frame | None) -> Frame:
        for item in frames:
            current = item
            if item[0] >= target:
                return item
        # End of stream before the target: container frame counts can be a frame or two high (edit
        # lists, rounding); more than that means the file is cut short or damaged.
        missing = target - (current[0] if current is not None else -1)
        if current is None or missing > max(2, self.num_frames // 100):
            got = "no frame" if current is None else f"frame {current[0]}"
            raise VideoError(
                self.path,
                f"stream ended at {got} but frame {target} of {self.num_frames} was expected "
                f"(truncated or corrupt file)",
            )
        return current

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # A mid-stream resolution change is scaled back to the stream's size so that frames stack.
        if self.width is None or self.height is None:
            self.width, self.height = frame.width, frame.height
        return frame.to_ndarray(format="rgb24", width=self.width, height=self.height)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> PyAVReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
