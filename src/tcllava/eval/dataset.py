"""Decode videos in DataLoader workers, ahead of the model.

Each item is a decoded clip plus its prompt (or the decoding error). Decoding runs in worker processes
so the model never waits on FFmpeg; the collate keeps plain lists because clips differ in size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tcllava.eval.benchmarks import Sample
from tcllava.eval.protocols import EvalProtocol
from tcllava.eval.subtitles import subtitles_for

if TYPE_CHECKING:
    from tcllava.video import Clip


def decode_sample(sample: Sample, num_frames: int, sampling: str, timeout: float = 60.0) -> Clip:
    """The sample's frames inside its [start, end] bound; a folder of images is read at its frame rate."""
    from tcllava.video import VideoError, read_video

    if not Path(sample.video).exists():
        raise VideoError(sample.video, "no such file or folder")
    kwargs: dict[str, Any] = {}
    if Path(sample.video).is_dir():
        kwargs["folder_fps"] = sample.frame_fps
    return read_video(
        sample.video,
        num_frames=num_frames,
        sampling=sampling,
        start=sample.start,
        end=sample.end,
        timeout=timeout,
        **kwargs,
    )


class EvalDataset(torch.utils.data.Dataset):
    """Samples -> {"sample", "clip", "prompt", "error"}; a VideoError becomes `error`, never an exception,
    so one bad file costs one sample, not the run."""

    def __init__(
        self,
        samples: list[Sample],
        protocol: EvalProtocol,
        num_frames: int,
        subtitle_mode: str = "frames",
        timeout: float = 60.0,
    ) -> None:
        self.samples = samples
        self.protocol = protocol
        self.num_frames = num_frames
        self.subtitle_mode = subtitle_mode
        self.timeout = timeout

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from tcllava.video import VideoError

        sample = self.samples[index]
        try:
            clip = decode_sample(sample, self.num_frames, self.protocol.sampling, self.timeout)
        except VideoError as e:
            return {"sample": sample, "clip": None, "prompt": None, "error": f"VideoError: {e}"}
        subtitles = None
        if self.protocol.subtitles:
            subtitles = subtitles_for(sample.subtitle, clip.timestamps.tolist(), self.subtitle_mode)
        return {
            "sample": sample,
            "clip": clip,
            "prompt": self.protocol.prompt(sample, subtitles),
            "error": None,
        }


def keep_lists(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collate that batches nothing: clips of different sizes stay separate."""
    return batch
