"""Procedural MVBench-style video QA benchmark: temporal tasks plus static controls.

Why it exists: the project demo trains a tiny TC-LLaVA and a vanilla LLaVA on CPU and must show that
temporal modelling matters. Every temporal task picks its answer *only* through the order of the frames:
the multiset of frames has the same distribution for every answer (the answer-bearing choice is a
reversal or a reordering of blocks), so a model that sees the frames as an unordered set is at chance.
Static controls are answerable from any single frame, so both kinds of model should solve them.

Videos are tiny (default 8 frames of 64x64) with large saturated shapes on black, so that a small
randomly initialised vision tower can see them. Output follows MVBench: one JSON list per task and split,
``{"video", "question", "candidates", "answer"}``, where ``video`` is relative to the JSON's folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

VERSION = "1"
SPLITS = ("train", "test")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 220, 230),
}
SHAPES = ("circle", "square", "triangle", "cross")
SLOTS = ("left", "middle", "right")
BACKGROUND = (0, 0, 0)
DARK = (25, 25, 25)  # scene-transition decorations, visible on every coloured background
GREY = (170, 170, 170)  # object-shuffle cups
WHITE = (255, 255, 255)
R = 0.14  # default object radius as a fraction of the frame size

Result = tuple[np.ndarray, str, list[str], str]
TaskFn = Callable[[np.random.Generator, int, int], Result]


@dataclass(frozen=True)
class TaskSpec:
    """A task: `fn(rng, num_frames, size) -> (frames uint8 [T,H,W,3], question, candidates, answer)`."""

    name: str
    kind: str  # "temporal" (answer only from frame order) or "static" (answer from any frame)
    fn: TaskFn
    options: int  # number of candidates, fixed per task so answer positions can be balanced
    answers: tuple[str, ...] | None = None  # closed answer set: balanced exactly by `make_samples`


TASKS: dict[str, TaskSpec] = {}


def _task(kind: str, options: int, answers: tuple[str, ...] | None = None) -> Callable[[TaskFn], TaskFn]:
    def register(fn: TaskFn) -> TaskFn:
        TASKS[fn.__name__] = TaskSpec(fn.__name__, kind, fn, options, answers)
        return fn

    return register


# ----------------------------------------------------------------------------------------- drawing


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


# ----------------------------------------------------------------------------------------- helpers


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str], k: int) -> list[str]:
    """k distinct items in random order."""
    return [items[i] for i in rng.permutation(len(items))[:k]]


def _pos(rng: np.random.Generator, size: int, margin: float) -> tuple[float, float]:
    x, y = rng.uniform(margin, size - margin, 2)
    return float(x), float(y)


def _split(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    """Uniformly random composition of `total` into `parts` positive integers (exchangeable parts)."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
    return np.diff([0, *cuts.tolist(), total]).tolist()


def _options(
    rng: np.random.Generator, answer: str, pool: list[str] | tuple[str, ...], k: int = 0
) -> list[str]:
    """The answer plus `k` (default: all) other items of `pool`, shuffled."""
    others = [o for o in pool if o != answer]
    chosen = [answer, *_pick(rng, others, k or len(others))]
    return _pick(rng, chosen, len(chosen))


def thirds(num_frames: int) -> list[int]:
    """Frame boundaries of the beginning / middle / end segments used by `action_localization`."""
    return [round(k * num_frames / 3) for k in range(4)]


# ----------------------------------------------------------------------------------------- temporal tasks


@_task("temporal", options=3)
def action_sequence(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """Three objects appear one after another; rotating the segments would make any of them first."""
    r = R * size
    colors, shapes = _pick(rng, list(COLORS), 3), _pick(rng, SHAPES, 3)
    lengths = _split(rng, num_frames, 3)  # tied to the object, not to its turn
    order = rng.permutation(3)
    frames, t = _canvas(num_frames, size), 0
    for k in order:
        _draw(frames[t : t + lengths[k]], shapes[k], COLORS[colors[k]], *_pos(rng, size, r + 1), r)
        t += lengths[k]
    names = [f"{c} {s}" for c, s in zip(colors, shapes, strict=True)]
    answer = names[order[0]]
    return frames, "Which object appears first?", _options(rng, answer, names), answer


@_task("temporal", options=2, answers=("left", "right", "up", "down"))
def moving_direction(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """An object moves in a straight line; reversing the video gives the opposite direction."""
    r, color, shape = R * size, *_pick(rng, list(COLORS), 1), *_pick(rng, SHAPES, 1)
    direction = ("left", "right", "up", "down")[rng.integers(4)]
    path = np.linspace(rng.uniform(r + 1, 0.4 * size), rng.uniform(0.6 * size, size - r - 1), num_frames)
    if direction in ("left", "up"):
        path = path[::-1]
    other = rng.uniform(r + 1, size - r - 1)
    horizontal = direction in ("left", "right")
    frames = _canvas(num_frames, size)
    for frame, p in zip(frames, path, strict=True):
        _draw(frame, shape, COLORS[color], *((p, other) if horizontal else (other, p)), r)
    pair = ["left", "right"] if horizontal else ["up", "down"]
    question = f"In which direction does the {color} {shape} move?"
    return frames, question, _options(rng, direction, pair), direction


@_task("temporal", options=2)
def state_change(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """An object changes colour once; reversed, it is the opposite change (switch frame uniform)."""
    r, (a, b), shape = R * size, _pick(rng, list(COLORS), 2), _pick(rng, SHAPES, 1)[0]
    switch = int(rng.integers(1, num_frames))
    x, y = _pos(rng, size, r + 1)
    frames = _canvas(num_frames, size)
    _draw(frames[:switch], shape, COLORS[a], x, y, r)
    _draw(frames[switch:], shape, COLORS[b], x, y, r)
    answer = f"from {a} to {b}"
    return (
        frames,
        f"How does the colour of the {shape} change?",
        _options(rng, answer, [f"from {b} to {a}"]),
        answer,
    )


@_task("temporal", options=4)
def scene_transition(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """Three scenes (background colour + decoration) follow each other; options are their orders."""
    r, colors, shapes = R * size, _pick(rng, list(COLORS), 3), _pick(rng, SHAPES, 3)
    lengths = _split(rng, num_frames, 3)
    order = rng.permutation(3)
    frames, t = _canvas(num_frames, size), 0
    for k in order:
        scene = frames[t : t + lengths[k]]
        scene[:] = COLORS[colors[k]]
        _draw(scene, shapes[k], DARK, *_pos(rng, size, r + 1), r)
        t += lengths[k]
    story = lambda seq: "from " + " to ".join(seq)
    answer = story(colors[k] for k in order)
    others = [story(p) for p in itertools.permutations(colors) if story(p) != answer]
    question = "How does the scene change?"
    return frames, question, _options(rng, answer, others, 3), answer


@_task("temporal", options=2, answers=SLOTS)
def object_shuffle(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """Ball shown under a cup, then two different swaps; swapping their order moves the ball elsewhere.

    Frame 0 reveals the ball, the last frame is at rest, the frames between animate the swaps (moving cups
    pass above and below). With two distinct swaps the ball never ends where it started, and the two
    orders of the same swaps always end in the two other slots, so the options are those two slots.
    """
    gap, home, cup = rng.uniform(0.27, 0.31) * size, rng.uniform(0.46, 0.54) * size, 0.1 * size / 0.85
    xs = [size / 2 + rng.uniform(-0.04, 0.04) * size + k * gap for k in (-1, 0, 1)]  # layout jitter: variety
    ball = int(rng.integers(3))
    swaps = [tuple(sorted(p)) for p in _pick(rng, [(0, 1), (0, 2), (1, 2)], 2)]
    durations = _split(rng, num_frames - 2, 2)  # exchangeable, so they do not reveal which swap came first
    rest = [(x, home) for x in xs]
    layouts, slot = [rest], ball  # cup centres per frame
    for (p, q), n in zip(swaps, durations, strict=True):
        for f in np.arange(1, n + 1) / (n + 1):  # the moving cups pass above and below the third one
            still = [c for k, c in enumerate(rest) if k not in (p, q)]
            layouts.append(
                [
                    *still,
                    (xs[p] + f * (xs[q] - xs[p]), home - 0.3 * size),
                    (xs[q] + f * (xs[p] - xs[q]), home + 0.3 * size),
                ]
            )
        slot = {p: q, q: p}.get(slot, slot)
    layouts.append(rest)
    frames = _canvas(num_frames, size)
    for frame, layout in zip(frames, layouts, strict=True):
        for x, y in layout:
            _draw(frame, "square", GREY, x, y, cup)
    _draw(frames[0], "circle", COLORS["red"], xs[ball], home + 0.22 * size, 0.07 * size)
    answer = SLOTS[slot]
    other = next(s for k, s in enumerate(SLOTS) if k not in (ball, slot))
    question = "A ball is hidden under a cup, then the cups are swapped twice. Where is the ball at the end?"
    return frames, question, _options(rng, answer, [other]), answer


@_task("temporal", options=2, answers=("forward", "reverse"))
def reverse_playback(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """A puck slides and decelerates to rest; played backwards it accelerates from rest instead."""
    r, color, shape = R * size, _pick(rng, list(COLORS), 1)[0], _pick(rng, SHAPES, 1)[0]
    dist, sign, horizontal = rng.uniform(0.45, 0.6) * size, rng.choice([-1.0, 1.0]), rng.integers(2) == 0
    start = rng.uniform(r + 1, size - r - 1 - dist) + (dist if sign < 0 else 0.0)
    s = np.linspace(0.0, 1.0, num_frames)
    path = start + sign * dist * (1 - (1 - s) ** 2)  # constant friction: speed falls linearly to zero
    answer = ("forward", "reverse")[rng.integers(2)]
    if answer == "reverse":
        path = path[::-1]
    other = rng.uniform(r + 1, size - r - 1)
    frames = _canvas(num_frames, size)
    for frame, p in zip(frames, path, strict=True):
        _draw(frame, shape, COLORS[color], *((p, other) if horizontal else (other, p)), r)
    question = f"The {color} {shape} slides and friction slows it. Is the video played forward or in reverse?"
    return frames, question, _options(rng, answer, ("forward", "reverse")), answer


@_task("temporal", options=3, answers=("beginning", "middle", "end"))
def action_localization(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """An object is visible for the same number of frames wherever it appears, so only position tells."""
    r, color, shape = R * size, _pick(rng, list(COLORS), 1)[0], _pick(rng, SHAPES, 1)[0]
    bounds = thirds(num_frames)
    length = min(np.diff(bounds))
    where = int(rng.integers(3))
    start = int(rng.integers(bounds[where], bounds[where + 1] - length + 1))
    frames = _canvas(num_frames, size)
    _draw(frames[start : start + length], shape, COLORS[color], *_pos(rng, size, r + 1), r)
    answer = ("beginning", "middle", "end")[where]
    question = f"When does the {color} {shape} appear in the video?"
    return frames, question, _options(rng, answer, ("beginning", "middle", "end")), answer


@_task("temporal", options=2, answers=("growing", "shrinking"))
def growing_shrinking(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """An object's size changes linearly; reversing swaps growing and shrinking."""
    color, shape = _pick(rng, list(COLORS), 1)[0], _pick(rng, SHAPES, 1)[0]
    radii = np.linspace(rng.uniform(0.05, 0.1) * size, rng.uniform(0.25, 0.32) * size, num_frames)
    answer = ("growing", "shrinking")[rng.integers(2)]
    if answer == "shrinking":
        radii = radii[::-1]
    x, y = _pos(rng, size, radii.max() + 1)
    frames = _canvas(num_frames, size)
    for frame, rad in zip(frames, radii, strict=True):
        _draw(frame, shape, COLORS[color], x, y, rad)
    question = f"Is the {color} {shape} growing or shrinking?"
    return frames, question, _options(rng, answer, ("growing", "shrinking")), answer


@_task("temporal", options=2, answers=("clockwise", "counterclockwise"))
def rotation_direction(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """A clock hand turns by a fixed step below 180 degrees: direction unambiguous, yet reversible."""
    color = _pick(rng, list(COLORS), 1)[0]
    length, step = rng.uniform(0.3, 0.38) * size, np.deg2rad(rng.uniform(30, 75))
    answer = ("clockwise", "counterclockwise")[rng.integers(2)]
    sign = 1.0 if answer == "clockwise" else -1.0  # image y points down, so a growing angle is clockwise
    angles = rng.uniform(0, 2 * np.pi) + sign * step * np.arange(num_frames)
    frames = _canvas(num_frames, size)
    for frame, angle in zip(frames, angles, strict=True):
        _draw(frame, "hand", COLORS[color], size / 2, size / 2, length, angle)
    _draw(frames, "circle", WHITE, size / 2, size / 2, 0.06 * size)
    question = f"Does the {color} hand rotate clockwise or counterclockwise?"
    return frames, question, _options(rng, answer, ("clockwise", "counterclockwise")), answer


@_task("temporal", options=3, answers=("1", "2", "3"))
def change_count(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """A lamp shows two colours for fixed frame counts; only their arrangement sets the switch count."""
    r, shape = R * size, _pick(rng, SHAPES, 1)[0]
    first, second = _pick(rng, list(COLORS), 2)
    counts = {first: num_frames // 2, second: num_frames - num_frames // 2}
    if rng.integers(2):
        counts = {first: counts[second], second: counts[first]}
    changes = int(rng.integers(1, 4))
    runs = changes + 1
    pieces = {
        first: _split(rng, counts[first], (runs + 1) // 2),
        second: _split(rng, counts[second], runs // 2),
    }
    sequence: list[str] = []
    for k in range(runs):  # runs alternate colours, starting with `first`
        color = (first, second)[k % 2]
        sequence += [color] * pieces[color][k // 2]
    x, y = _pos(rng, size, r + 1)
    frames = _canvas(num_frames, size)
    for frame, c in zip(frames, sequence, strict=True):
        _draw(frame, shape, COLORS[c], x, y, r)
    answer = str(changes)
    question = f"How many times does the {shape} change colour?"
    return frames, question, _options(rng, answer, ("1", "2", "3")), answer


# ----------------------------------------------------------------------------------------- static controls


def _drifting(rng: np.random.Generator, num_frames: int, size: int, shape: str, color: str) -> np.ndarray:
    """One object drifting along a random straight line: motion without any temporal question."""
    r = R * size
    (x0, y0), (x1, y1) = _pos(rng, size, r + 1), _pos(rng, size, r + 1)
    frames = _canvas(num_frames, size)
    for frame, f in zip(frames, np.linspace(0, 1, num_frames), strict=True):
        _draw(frame, shape, COLORS[color], x0 + f * (x1 - x0), y0 + f * (y1 - y0), r)
    return frames


@_task("static", options=4, answers=tuple(COLORS))
def object_color(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """Control: the colour is visible in every frame."""
    color, shape = _pick(rng, list(COLORS), 1)[0], _pick(rng, SHAPES, 1)[0]
    frames = _drifting(rng, num_frames, size, shape, color)
    return frames, f"What colour is the {shape}?", _options(rng, color, list(COLORS), 3), color


@_task("static", options=4, answers=SHAPES)
def object_shape(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """Control: the shape is visible in every frame."""
    color, shape = _pick(rng, list(COLORS), 1)[0], _pick(rng, SHAPES, 1)[0]
    frames = _drifting(rng, num_frames, size, shape, color)
    return frames, f"What shape is the {color} object?", _options(rng, shape, SHAPES), shape


@_task("static", options=4, answers=("1", "2", "3", "4"))
def object_count(rng: np.random.Generator, num_frames: int, size: int) -> Result:
    """Control: 1-4 still objects in distinct cells of a 3x3 grid, countable in any frame."""
    n, cell = int(rng.integers(1, 5)), size / 3
    r = 0.11 * size
    jitter = max(cell / 2 - r - 1.5, 0.0)
    frames = _canvas(num_frames, size)
    for k in rng.permutation(9)[:n]:
        cx, cy = (k % 3 + 0.5) * cell, (k // 3 + 0.5) * cell
        dx, dy = rng.uniform(-jitter, jitter, 2)
        _draw(frames, _pick(rng, SHAPES, 1)[0], COLORS[_pick(rng, list(COLORS), 1)[0]], cx + dx, cy + dy, r)
    answer = str(n)
    return frames, "How many objects are there?", _options(rng, answer, ("1", "2", "3", "4")), answer


# ----------------------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    question: str
    candidates: list[str]
    answer: str


def fingerprint(sample: Sample) -> bytes:
    """Identity of a sample (video + question), used to keep test samples out of train."""
    return hashlib.sha256(sample.frames.tobytes() + sample.question.encode()).digest()


def _cycle(rng: np.random.Generator, values: list, n: int) -> list:
    """n values in shuffled blocks that each contain every value once: exact balance up to one block."""
    out: list = []
    while len(out) < n:
        out += [values[i] for i in rng.permutation(len(values))]
    return out[:n]


def make_samples(
    task: str,
    n: int,
    split: str = "train",
    seed: int = 0,
    num_frames: int = 8,
    size: int = 64,
    exclude: set[bytes] | None = None,
    max_tries: int = 10_000,
) -> list[Sample]:
    """n samples of one task, with balanced answers and answer positions, deterministic in the arguments.

    Each (seed, split, task) has its own random streams, so splits are independent, adding a task does
    not change the others, and the first k samples do not depend on n. Answers of tasks with a closed
    answer set follow a balanced schedule (by rejection: the frame distribution given the answer is
    unchanged); the right answer is then placed at a scheduled position among the task's (shuffled)
    distractors. `exclude` holds fingerprints to avoid and is updated, so passing the train set's
    fingerprints keeps test samples disjoint from train.
    """
    spec = TASKS[task]
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    key = [seed, SPLITS.index(split), zlib.crc32(task.encode())]
    rng, schedule = np.random.default_rng([*key, 0]), np.random.default_rng([*key, 1])
    labels = _cycle(schedule, list(spec.answers or [None]), n)
    positions = _cycle(schedule, list(range(spec.options)), n)
    seen = set() if exclude is None else exclude
    samples = []
    for label, position in zip(labels, positions, strict=True):
        for _ in range(max_tries):
            frames, question, candidates, answer = spec.fn(rng, num_frames, size)
            sample = Sample(frames, question, candidates, answer)
            if (label is None or answer == label) and fingerprint(sample) not in seen:
                break
        else:
            raise RuntimeError(f"{task}: no new sample after {max_tries} tries; ask for fewer samples")
        assert len(candidates) == spec.options and answer in candidates, (task, candidates, answer)
        others = [c for c in candidates if c != answer]
        sample.candidates = [*others[:position], answer, *others[position:]]
        seen.add(fingerprint(sample))
        samples.append(sample)
    return samples


# ----------------------------------------------------------------------------------------- images

ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")
SIZES = {"small": (0.06, 0.09), "large": (0.12, 0.155)}  # radius ranges, as fractions of the frame size
CAPTION_REQUEST = "Describe the image."


def place(row: int, column: int) -> str:
    """The words for a cell of the 3x3 grid: "top left", "top", "centre", "bottom right", ..."""
    words = [w for w in (ROWS[row], COLUMNS[column]) if w not in ("middle", "centre")]
    return " ".join(words) or "centre"


PLACES = tuple(place(r, c) for r in range(3) for c in range(3))


@dataclass
class ImageSample:
    """One still scene (the visual vocabulary of the benchmark's frames) with a caption and a question."""

    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    question: str
    candidates: list[str]
    answer: str
    kind: str  # what the question asks about: color, shape, place, size, count or background


def image_sample(rng: np.random.Generator, size: int) -> ImageSample:
    """1-4 shapes in distinct cells of a 3x3 grid, on black or on a coloured background (then dark shapes,
    as in `scene_transition`), described in words and quizzed about one attribute.

    This is the image-LLaVA stage of the demo (LLaVA's caption alignment plus image instruction tuning):
    it teaches a tower trained from scratch to see colours, shapes, places and sizes, and the LLM to point
    at an option letter, before any video is shown; the video tasks still have to be learned from video.
    """
    background = _pick(rng, list(COLORS), 1)[0] if rng.random() < 0.25 else None
    n = int(rng.integers(1, 5))
    cells, colors, shapes = (
        np.sort(rng.permutation(9)[:n]),
        _pick(rng, list(COLORS), n),
        _pick(rng, SHAPES, n),
    )
    image = _canvas(1, size, COLORS[background] if background else BACKGROUND)[0]
    objects = []
    for cell, color, shape in zip(cells, colors, shapes, strict=True):
        scale = ("small", "large")[rng.integers(2)]
        r = rng.uniform(*SIZES[scale]) * size
        jitter = max(size / 6 - r - 1, 0.0)
        cx, cy = (cell % 3 + 0.5) * size / 3, (cell // 3 + 0.5) * size / 3
        color = "dark" if background else color
        _draw(
            image,
            shape,
            DARK if background else COLORS[color],
            cx + rng.uniform(-jitter, jitter),
            cy + rng.uniform(-jitter, jitter),
            r,
        )
        objects.append({"shape": shape, "color": color, "size": scale, "place": place(cell // 3, cell % 3)})
    parts = [f"a {o['size']} {o['color']} {o['shape']} at the {o['place']}" for o in objects]
    caption = ", ".join(parts) + (f" on a {background} background" if background else "") + "."
    caption = caption[0].upper() + caption[1:]
    target = objects[int(rng.integers(n))]
    name = f"{target['color']} {target['shape']}"
    kinds = ["place", "size", "count"] + (["background"] if background else ["color", "shape"])
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "color":
        question, answer, pool = f"What colour is the {target['shape']}?", target["color"], list(COLORS)
    elif kind == "shape":
        question, answer, pool = f"What shape is the {target['color']} object?", target["shape"], SHAPES
    elif kind == "place":
        question, answer, pool = f"Where is the {name}?", target["place"], PLACES
    elif kind == "size":
        question, answer, pool = f"Is the {name} small or large?", target["size"], tuple(SIZES)
    elif kind == "count":
        question, answer, pool = "How many objects are there?", str(n), ("1", "2", "3", "4")
    else:
        question, answer, pool = "What colour is the background?", str(background), list(COLORS)
    candidates = _options(rng, answer, pool, min(3, len(pool) - 1))
    return ImageSample(image, caption, question, candidates, answer, kind)


def option_lists(seed: int = 0, per_task: int = 24) -> list[list[str]]:
    """Candidate lists in the style of every task (from its train split's generator), for option drills."""
    lists = [s.candidates for t in TASKS for s in make_samples(t, per_task, "train", seed, size=32)]
    return [*lists, list(PLACES[:4]), list(PLACES[4:8]), list(SIZES), list(COLORS)[:4], list(COLORS)[2:]]


def generate_images(out_dir: str | Path, n: int, seed: int = 0, size: int = 64) -> dict:
    """Write `OUT/images.json` and `OUT/images/NNNNN.png`: LLaVA conversation records of three turns, an
    MVBench-style question about the image, its caption, and an option drill ("Which option is X?", with
    option lists in the style of the video tasks) that teaches answering with a letter. Each record also
    keeps its first question as data (`quiz`: kind, candidates, answer) for scoring. Deterministic in the
    arguments; the images are stills, never frames of the video benchmark."""
    from PIL import Image

    from tcllava.data.conversations import multiple_choice_messages

    _check(8, size, 1.0, seed, [])
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, len(SPLITS), zlib.crc32(b"images")])
    drills = option_lists(seed)
    records = []
    for i in range(n):
        sample = image_sample(rng, size)
        rel = f"images/{i:05d}.png"
        Image.fromarray(sample.image).save(out / rel)
        system, question, answer = multiple_choice_messages(sample.question, sample.candidates, sample.answer)
        options = _pick(rng, drills[int(rng.integers(len(drills)))], 99)
        target = options[int(rng.integers(len(options)))]
        _, drill, drill_answer = multiple_choice_messages(f"Which option is {target}?", options, target)
        turns = [
            ("system", system.content),
            ("human", question.content.replace("<video>", "<image>")),
            ("gpt", answer.content),
            ("human", CAPTION_REQUEST),
            ("gpt", sample.caption),
            ("human", drill.content.replace("<video>\n", "")),
            ("gpt", drill_answer.content),
        ]
        quiz = {"kind": sample.kind, "candidates": sample.candidates, "answer": sample.answer}
        records.append(
            {"image": rel, "conversations": [{"from": f, "value": v} for f, v in turns], "quiz": quiz}
        )
    text = json.dumps(records, indent=1) + "\n"
    (out / "images.json").write_text(text)
    return {"images": n, "seed": seed, "size": size, "sha256": hashlib.sha256(text.encode()).hexdigest()}


# ----------------------------------------------------------------------------------------- writing


def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Encode uint8 [T,H,W,3] frames as H.264 (yuv420p, near-lossless crf) so colours survive decoding."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "4", "preset": "veryfast"}
        stream.codec_context.thread_count = 1  # many small files are written in parallel instead
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode())


def _check(num_frames: int, size: int, fps: float, seed: int, tasks: list[str]) -> None:
    if not 4 <= num_frames <= 16:
        raise ValueError("num_frames must be in 4..16")
    if size < 32 or size % 2:
        raise ValueError("size must be even and at least 32")
    if fps <= 0 or seed < 0:
        raise ValueError("fps must be positive and seed non-negative")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {list(TASKS)}")


def generate(
    out_dir: str | Path,
    train_per_task: int,
    test_per_task: int,
    seed: int = 0,
    num_frames: int = 8,
    size: int = 64,
    fps: float = 4.0,
    tasks: list[str] | None = None,
    workers: int = 2,
) -> dict:
    """Write `OUT/{train,test}/{task}.json`, `OUT/{split}/videos/{task}/NNNN.mp4` and `OUT/manifest.json`.

    Returns the manifest. JSON and manifest are byte-identical for the same arguments; `workers` threads
    encode videos (it does not change the output).
    """
    tasks = list(TASKS) if tasks is None else list(tasks)
    _check(num_frames, size, fps, seed, tasks)
    out = Path(out_dir)
    counts = {"train": train_per_task, "test": test_per_task}
    hashes: dict[str, str] = {}
    with ThreadPoolExecutor(workers) as pool:
        for task in tasks:
            seen: set[bytes] = set()
            for split in SPLITS:
                samples = make_samples(task, counts[split], split, seed, num_frames, size, exclude=seen)
                (out / split / "videos" / task).mkdir(parents=True, exist_ok=True)
                rels = [f"videos/{task}/{i:04d}.mp4" for i in range(len(samples))]
                paths = [out / split / rel for rel in rels]
                list(pool.map(write_mp4, paths, [s.frames for s in samples], itertools.repeat(fps)))
                records = [
                    {"video": rel, "question": s.question, "candidates": s.candidates, "answer": s.answer}
                    for rel, s in zip(rels, samples, strict=True)
                ]
                text = json.dumps(records, indent=1) + "\n"
                (out / split / f"{task}.json").write_text(text)
                hashes[f"{split}/{task}.json"] = hashlib.sha256(text.encode()).hexdigest()
    manifest = {
        "generator": "tcllava.data.synthetic",
        "version": VERSION,
        "seed": seed,
        "num_frames": num_frames,
        "size": size,
        "fps": fps,
        "codec": "libx264 yuv420p crf 4",
        "video_paths": "relative to the folder of the task's JSON file",
        "tasks": {t: TASKS[t].kind for t in tasks},
        "counts": {split: dict.fromkeys(tasks, n) for split, n in counts.items()},
        "sha256": hashes,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
