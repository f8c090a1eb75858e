"""Encode frames to a video file with PyAV (used by tests and the synthetic benchmark generators)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from itertools import chain
from pathlib import Path

import av
import numpy as np
import torch

# Preferred encoders per container, first available wins. PyAV's wheels bundle libx264 and libvpx, but
# a PyAV built against a system FFmpeg may lack them, hence the fallbacks.
_CODECS = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".ts": ("libx264", "h264", "mpeg4"),
    ".avi": ("mpeg4", "libx264"),
    ".webm": ("libvpx-vp9", "libvpx", "vp9", "vp8"),
    ".gif": ("gif",),
}


def available_encoder(suffix: str) -> str | None:
    """The encoder `write_video` would use for a file suffix such as ".webm", or None if none works."""
    for name in _CODECS.get(suffix.lower(), ()):
        try:
            codec = av.codec.Codec(name, "w")
        except Exception:  # not compiled into this FFmpeg
            continue
        if codec.is_encoder:
            return name
    return None


def _images(frames: torch.Tensor | np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield [H, W, 3] uint8 images from a [T, H, W, 3] array/tensor or from an iterable of images."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray) and (frames.ndim != 4 or frames.shape[0] == 0):
        raise ValueError(f"frames must be a non-empty uint8 array [T, H, W, 3], got shape {frames.shape}")
    for image in frames:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"each frame must be [H, W, 3], got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {image.dtype}")
        yield image


def _even(image: np.ndarray) -> np.ndarray:
    """Pad H and W to even by repeating the last row/column: yuv420p halves the chroma planes."""
    pad_h, pad_w = image.shape[0] % 2, image.shape[1] % 2
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return image


def write_video(
    path: str | Path,
    frames: torch.Tensor | np.ndarray | Iterable[np.ndarray],
    fps: float,
    *,
    codec: str | None = None,
    gop: int | None = None,
    crf: int | None = None,
) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] to `path` at a constant `fps`; the suffix picks the container.

    `frames` may also be an iterable of [H, W, 3] images, so long videos need not sit in memory.
    mp4/mkv/mov/ts use libx264 (mpeg4 as fallback), avi mpeg4, webm VP9/VP8, gif the gif encoder. Odd H or
    W are padded to even (yuv420p). `gop` sets the keyframe interval in frames (the encoder's default
    otherwise, 250 for libx264); `crf` the quality for libx264/libvpx. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CODECS:
        raise ValueError(f"{path}: unsupported suffix {suffix!r}; use one of {sorted(_CODECS)}")
    name = codec or available_encoder(suffix)
    if name is None:
        raise ValueError(f"{path}: no encoder for {suffix} in this PyAV build")
    is_gif = suffix == ".gif"
    rate = Fraction(fps).limit_denominator(1001)
    options = {}
    if crf is not None and name.startswith(("libx264", "libvpx")):
        options["crf"] = str(crf)
    if name.startswith("libvpx"):
        # Without a bitrate target libvpx ignores crf ("b" 0 means quality mode); realtime keeps it fast.
        options.update(b="0", deadline="realtime")
        options.setdefault("crf", "32")
        options["cpu-used"] = "8"

    images = _images(frames)
    first = next(images, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(name, rate=rate, options=options)
        shape = first.shape if is_gif else _even(first).shape
        stream.height, stream.width = shape[0], shape[1]
        stream.pix_fmt = "rgb8" if is_gif else "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for image in chain([first], images):
            image = image if is_gif else _even(image)
            if image.shape != shape:
                raise ValueError(f"{path}: frame of shape {image.shape} in a video of {shape}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
