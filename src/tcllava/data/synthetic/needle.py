"""Needle in a video haystack, after V-NIAH (LongVA, arXiv 2406.16852) and its distractor variant.

A haystack of F frames shows grey shapes drifting slowly along straight lines (the same path whatever F, so
longer videos are slower, more alike frames of the same scene). One needle frame, at depth d (frame
``round(d * (F - 1))``, halves rounded up), adds a shape of one of ``COLORS``; the question, "One object in
the video is coloured. What colour is it?", is answerable from that frame only: the haystack holds no
colour at all. The candidates are the needle's colour and three others (MVBench-style multiple choice).
The question asks for a colour, not a shape, because the demo's tiny models see colours at 64 px but not
shapes (their image base is at chance on shape questions): a shape needle would measure nothing.

The distractor variant (task ``needle_distractor``) adds ``DISTRACTORS`` other frames with a look-alike,
as V-NIAH puts a similar-looking but wrong needle: each shows, for one frame, an object of the needle's
shape in white, brighter than any haystack grey. White is not a colour (nor one of the candidates), so
the question stays unambiguous, but a model must find the coloured object, not just an object that
appears for one frame.

Training data is written at the demo's frame count (the needle at every frame index equally often); test
data at other counts, each length its own folder in the synthetic benchmark's layout, so that
``tcllava eval synthetic --data OUT/L64 --frames 64`` reads all 64 frames. Rows also carry ``depth``,
``frames`` and ``needle_frame``, and the evaluator groups results by ``depth``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tcllava.data.synthetic.choices import _options, _pick, _pos
from tcllava.data.synthetic.drawing import COLORS, SHAPES, WHITE, R, _canvas, _draw
from tcllava.data.synthetic.samples import SPLITS, Sample, _cycle, fingerprint
from tcllava.data.synthetic.writer import write_mp4

NEEDLE_TASKS = ("needle", "needle_distractor")
NEEDLE_VERSION = "2"  # 2: the question asks for the needle's colour (1 asked for its shape)
QUESTION = "One object in the video is coloured. What colour is it?"
OPTIONS = 4  # candidates per question: the answer and three other colours
DISTRACTORS = 2  # look-alike frames of the distractor variant
DISTRACTOR_COLOR = WHITE  # no colour, and brighter than every haystack grey
HAYSTACK_OBJECTS = 2
GREYS = (110, 200)  # grey levels of the haystack's shapes: bright, but never a colour
MAX_FRAMES = 1024
LENGTHS = (16, 32, 64, 128)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
_CHUNK = 16  # videos held in memory at once while writing (512 frames of 64px are 6 MB each)


@dataclass
class NeedleSample(Sample):
    depth: float
    needle_frame: int
    distractor_frames: list[int]
    shape: str  # the needle's (and its look-alikes') shape


def needle_index(depth: float, num_frames: int) -> int:
    """The needle's frame at ``depth`` in [0, 1]: 0 is the first frame, 1 the last, halves rounded up."""
    return math.floor(depth * (num_frames - 1) + 0.5)


def needle_task(distractors: bool) -> str:
    return NEEDLE_TASKS[1] if distractors else NEEDLE_TASKS[0]


def needle_sample(
    rng: np.random.Generator,
    num_frames: int,
    size: int,
    index: int,
    color: str,
    distractors: bool = False,
) -> NeedleSample:
    """One haystack of ``num_frames`` frames with a ``color`` needle of a random shape at frame ``index``;
    candidates in random order (callers place the answer)."""
    r = R * size
    frames = _canvas(num_frames, size)
    path = np.linspace(0.0, 1.0, num_frames)
    for _ in range(HAYSTACK_OBJECTS):
        kind, grey = _pick(rng, SHAPES, 1)[0], int(rng.integers(*GREYS))
        (x0, y0), (x1, y1) = _pos(rng, size, r + 1), _pos(rng, size, r + 1)
        for frame, f in zip(frames, path, strict=True):
            _draw(frame, kind, (grey, grey, grey), x0 + f * (x1 - x0), y0 + f * (y1 - y0), r)
    shape = _pick(rng, SHAPES, 1)[0]
    _draw(frames[index], shape, COLORS[color], *_pos(rng, size, r + 1), r)
    others: list[int] = []
    if distractors:
        free = [i for i in range(num_frames) if i != index]
        others = sorted(free[i] for i in rng.permutation(len(free))[:DISTRACTORS])
        for i in others:
            _draw(frames[i], shape, DISTRACTOR_COLOR, *_pos(rng, size, r + 1), r)
    candidates = _options(rng, color, list(COLORS), OPTIONS - 1)
    depth = index / (num_frames - 1)
    return NeedleSample(frames, QUESTION, candidates, color, depth, index, others, shape)


def make_needle_samples(
    n: int,
    num_frames: int,
    split: str = "test",
    depths: tuple[float, ...] | None = DEPTHS,
    seed: int = 0,
    size: int = 64,
    distractors: bool = False,
    exclude: set[bytes] | None = None,
) -> list[NeedleSample]:
    """``n`` samples per depth (``depths`` in turn, so a prefix of the rows covers every depth), or with
    ``depths=None`` ``n`` samples with the needle at every frame index equally often (training). Colours
    and the answer's position among the candidates are balanced; deterministic in the arguments, with
    streams of their own per (seed, split, frames, variant). ``depth`` is the needle frame's own depth,
    ``index / (num_frames - 1)``; with ``depths`` given it is the requested one."""
    _check_frames(num_frames, distractors)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    task = needle_task(distractors)
    key = [seed, SPLITS.index(split), num_frames, zlib.crc32(task.encode())]
    rng, schedule = np.random.default_rng([*key, 0]), np.random.default_rng([*key, 1])
    if depths is None:
        wanted = [(None, i) for i in _cycle(schedule, list(range(num_frames)), n)]
    else:
        wanted = [(d, needle_index(d, num_frames)) for _ in range(n) for d in depths]
    colors = _cycle(schedule, list(COLORS), len(wanted))
    positions = _cycle(schedule, list(range(OPTIONS)), len(wanted))
    seen = set() if exclude is None else exclude
    samples = []
    for (depth, index), color, position in zip(wanted, colors, positions, strict=True):
        sample = needle_sample(rng, num_frames, size, index, color, distractors)
        while fingerprint(sample) in seen:  # never in practice: positions are continuous
            sample = needle_sample(rng, num_frames, size, index, color, distractors)
        others = [c for c in sample.candidates if c != color]
        sample.candidates = [*others[:position], color, *others[position:]]
        if depth is not None:
            sample.depth = float(depth)
        seen.add(fingerprint(sample))
        samples.append(sample)
    return samples


def _check_frames(num_frames: int, distractors: bool) -> None:
    low = 2 + (DISTRACTORS if distractors else 0)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not low <= num_frames <= MAX_FRAMES:
        raise ValueError(
            f"frames must be integers in {low}..{MAX_FRAMES}"
            + (f" with {DISTRACTORS} distractors" if distractors else "")
            + f", got {num_frames!r}"
        )


def check_needle_settings(
    train: int,
    test: int,
    lengths: tuple[int, ...],
    depths: tuple[float, ...],
    train_frames: int,
    size: int,
    fps: float,
    seed: int,
    distractors: bool,
) -> None:
    if train < 0 or test < 0 or not train + test:
        raise ValueError(f"train and test must be >= 0 and not both 0, got {train} and {test}")
    if test and (not lengths or len(set(lengths)) != len(lengths)):
        raise ValueError(f"lengths must be distinct frame counts, got {list(lengths)}")
    for frames in [train_frames, *lengths]:
        _check_frames(frames, distractors)
    if test and (not depths or len(set(depths)) != len(depths) or not all(0 <= d <= 1 for d in depths)):
        raise ValueError(f"depths must be distinct numbers in [0, 1], got {list(depths)}")
    if size < 32 or size % 2:
        raise ValueError(f"size must be even and at least 32, got {size}")
    if not fps > 0 or seed < 0:
        raise ValueError("fps must be positive and seed non-negative")


def _write(folder: Path, task: str, samples: list[NeedleSample], fps: float, pool: ThreadPoolExecutor) -> str:
    """Videos under ``folder/videos/task/``, rows in ``folder/task.json``; returns the JSON's sha256."""
    (folder / "videos" / task).mkdir(parents=True, exist_ok=True)
    rels = [f"videos/{task}/{i:04d}.mp4" for i in range(len(samples))]
    for start in range(0, len(samples), _CHUNK):
        chunk = samples[start : start + _CHUNK]
        paths = [folder / rel for rel in rels[start : start + _CHUNK]]
        list(pool.map(write_mp4, paths, [s.frames for s in chunk], itertools.repeat(fps)))
    records = [
        {
            "video": rel,
            "question": s.question,
            "candidates": s.candidates,
            "answer": s.answer,
            "depth": s.depth,
            "frames": int(s.frames.shape[0]),
            "needle_frame": s.needle_frame,
        }
        for rel, s in zip(rels, samples, strict=True)
    ]
    text = json.dumps(records, indent=1) + "\n"
    (folder / f"{task}.json").write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def generate_needle(
    out_dir: str | Path,
    train: int,
    test: int,
    lengths: tuple[int, ...] = LENGTHS,
    depths: tuple[float, ...] = DEPTHS,
    seed: int = 0,
    size: int = 64,
    distractors: bool = False,
    train_frames: int = 8,
    fps: float = 4.0,
    workers: int = 2,
) -> dict:
    """Write the needle task: ``OUT/train/{task}.json`` (``train`` videos of ``train_frames`` frames, the
    needle at every index equally often), ``OUT/L{F}/test/{task}.json`` (``test`` videos per depth for
    each F in ``lengths``), videos beside each JSON under ``videos/{task}/``, and
    ``OUT/{task}.manifest.json``. ``task`` is ``needle`` or ``needle_distractor``. Returns the manifest;
    JSON and manifest are byte-identical for the same arguments. ``OUT/train`` may be a folder of
    :func:`~tcllava.data.synthetic.generate`'s: the other tasks' files are left alone."""
    lengths, depths = tuple(lengths), tuple(float(d) for d in depths)
    check_needle_settings(train, test, lengths, depths, train_frames, size, fps, seed, distractors)
    out, task = Path(out_dir), needle_task(distractors)
    hashes: dict[str, str] = {}
    with ThreadPoolExecutor(workers) as pool:
        seen: set[bytes] = set()
        if train:
            samples = make_needle_samples(train, train_frames, "train", None, seed, size, distractors, seen)
            hashes[f"train/{task}.json"] = _write(out / "train", task, samples, fps, pool)
        for frames in lengths if test else ():
            exclude = seen if frames == train_frames else None
            samples = make_needle_samples(test, frames, "test", depths, seed, size, distractors, exclude)
            hashes[f"L{frames}/test/{task}.json"] = _write(
                out / f"L{frames}" / "test", task, samples, fps, pool
            )
    manifest = {
        "generator": "tcllava.data.synthetic.needle",
        "version": NEEDLE_VERSION,
        "task": task,
        "seed": seed,
        "size": size,
        "fps": fps,
        "distractors": DISTRACTORS if distractors else 0,
        "train": {"videos": train, "frames": train_frames} if train else None,
        "test": {"per_depth": test, "lengths": list(lengths), "depths": list(depths)} if test else None,
        "codec": "libx264 yuv420p crf 4",
        "video_paths": "relative to the folder of the task's JSON file",
        "sha256": hashes,
    }
    (out / f"{task}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
