"""Procedural MVBench-style video QA benchmark: temporal tasks plus static controls.

Why it exists: the project demo trains a tiny TC-LLaVA and a vanilla LLaVA on CPU and must show that
temporal modelling matters. Every temporal task picks its answer *only* through the order of the frames:
the multiset of frames has the same distribution for every answer (the answer-bearing choice is a
reversal or a reordering of blocks), so a model that sees the frames as an unordered set is at chance.
Static controls are answerable from any single frame, so both kinds of model should solve them.

Videos are tiny (default 8 frames of 64x64) with large saturated shapes on black, so that a small
randomly initialised vision tower can see them. Output follows MVBench: one JSON list per task and split,
``{"video", "question", "candidates", "answer"}``, where ``video`` is relative to the JSON's folder.

Modules: `drawing` (colours, shapes, painting into frames), `choices` (shared random picks), `tasks` (the
task registry `TASKS` and the 13 generators), `samples` (`make_samples`: balanced, deterministic samples),
`writer` (`generate`: videos, JSON and manifest on disk), `stills` (`generate_images`: captioned stills for
the image stage of the demo), `needle` (`generate_needle`: the needle-in-a-video-haystack task for long
videos, kept out of `TASKS` so the 13 tasks' outputs do not change).
"""

from tcllava.data.synthetic.drawing import COLORS, SHAPES
from tcllava.data.synthetic.needle import (
    NEEDLE_TASKS,
    NeedleSample,
    generate_needle,
    make_needle_samples,
    needle_index,
)
from tcllava.data.synthetic.samples import SPLITS, Sample, fingerprint, make_samples
from tcllava.data.synthetic.stills import (
    CAPTION_REQUEST,
    PLACES,
    SIZES,
    ImageSample,
    generate_images,
    image_sample,
    option_lists,
)
from tcllava.data.synthetic.tasks import SLOTS, TASKS, TaskSpec, thirds
from tcllava.data.synthetic.writer import VERSION, generate, write_mp4

__all__ = [
    "CAPTION_REQUEST",
    "COLORS",
    "NEEDLE_TASKS",
    "PLACES",
    "SHAPES",
    "SIZES",
    "SLOTS",
    "SPLITS",
    "TASKS",
    "VERSION",
    "ImageSample",
    "NeedleSample",
    "Sample",
    "TaskSpec",
    "fingerprint",
    "generate",
    "generate_images",
    "generate_needle",
    "image_sample",
    "make_needle_samples",
    "make_samples",
    "needle_index",
    "option_lists",
    "thirds",
    "write_mp4",
]
