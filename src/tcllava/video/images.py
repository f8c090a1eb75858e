"""Frame folders (MVBench ships some videos as numbered JPEGs) and single images, read as videos."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import VideoError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders "frame2.jpg" before "frame10.jpg"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class ImageSequenceReader:
    """Frames from image files at a fixed frame rate; only the requested images are loaded."""

    def __init__(self, path: str | Path, files: list[Path], fps: float) -> None:
        if not files:
            raise VideoError(path, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        if fps <= 0:
            raise ValueError(f"folder_fps must be positive, got {fps}")
        self.path = Path(path)
        self.files = files
        self.fps = float(fps)
        self.num_frames = len(files)

    @classmethod
    def from_folder(cls, path: str | Path, fps: float) -> ImageSequenceReader:
        folder = Path(path)
        files = [f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        return cls(folder, sorted(files, key=lambda f: natural_key(f.name)), fps)

    def read(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        images = [self._load(self.files[i]) for i in indices]
        size = images[0].shape
        for i, image in zip(indices, images, strict=True):
            if image.shape != size:
                raise VideoError(
                    self.files[i],
                    f"frame size {image.shape[:2]} differs from {size[:2]} "
                    f"of the other frames in {self.path}",
                )
        return np.stack(images), np.asarray(indices, dtype=np.float64) / self.fps

    def _load(self, file: Path) -> np.ndarray:
        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise VideoError(file, f"cannot read image ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSequenceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
