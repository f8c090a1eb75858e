"""tcllava.video: robust, seeking video reading (PyAV), frame sampling, a merge of
near-duplicate frames, and a small video writer.

Usage: `frames, timestamps = read_video("clip.mp4", num_frames=16, sampling="middle", start=2.0, end=9.5)`.
"""

from .errors import VideoError, VideoWarning
from .merge import keep_distinct, merge_similar_frames
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
    "keep_distinct",
    "merge_similar_frames",
    "read_video",
    "sample_indices",
    "write_video",
]
