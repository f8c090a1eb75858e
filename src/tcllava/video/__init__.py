"""tcllava.video: robust, seeking video reading (PyAV), frame sampling, and a small video writer.

Usage: `frames, timestamps = read_video("clip.mp4", num_frames=16, sampling="middle", start=2.0, end=9.5)`.
"""

from .errors import VideoError, VideoWarning
from .read import BACKENDS, Clip, read_video
from .sampling import SAMPLINGS, frame_bounds, sample_indices
from .writer import available_encoder, write_video

__all__ = [
    "BACKENDS",
    "SAMPLINGS",
    "Clip",
    "VideoError",
    "VideoWarning",
    "available_encoder",
    "frame_bounds",
    "read_video",
    "sample_indices",
    "write_video",
]
