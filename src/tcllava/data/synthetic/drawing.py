"""The visual vocabulary of the benchmark (colours, shapes, object radius) and how shapes are painted.

Shared by the video tasks and the stills; underscore names are internal to `tcllava.data.synthetic`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 220, 230),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUND = (0, 0, 0)
DARK = (25, 25, 25)  # scene-transition decorations, visible on every coloured background
GREY = (170, 170, 170)  # object-shuffle cups
WHITE = (255, 255, 255)
R = 0.14  # default object radius as a fraction of the frame size


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    return xs, ys


def _mask(size: int, shape: str, cx: float, cy: float, r: float, angle: float = 0.0) -> np.ndarray:
    """Boolean [size, size] mask of a shape of radius `r` centred at (cx, cy), rotated by `angle`."""
    xs, ys = _grid(size)
    dx, dy = xs - cx, ys - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, cos * dy - sin * dx  # v points down the image when angle == 0
    au, av_ = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(au, av_) <= 0.85 * r
    if shape == "triangle":  # apex up
        return (v <= 0.8 * r) & (au <= (v + r) / 1.8)
    if shape == "cross":
        return ((au <= r) & (av_ <= r / 3)) | ((au <= r / 3) & (av_ <= r))
    if shape == "hand":  # clock hand from the centre along +u, with a round tip
        return ((u >= 0) & (u <= r) & (av_ <= 0.12 * r)) | ((u - r) ** 2 + v * v <= (0.22 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def _draw(
    frames: np.ndarray,
    shape: str,
    color: tuple[int, int, int],
    cx: float,
    cy: float,
    r: float,
    angle: float = 0.0,
) -> None:
    """Paint a shape into one frame [H,W,3] or a block of frames [N,H,W,3] in place."""
    frames[..., _mask(frames.shape[-2], shape, cx, cy, r, angle), :] = color


def _canvas(num_frames: int, size: int, color: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    frames[:] = color
    return frames
