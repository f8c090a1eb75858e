"""The 13 video tasks, registered in `TASKS` in definition order (temporal tasks, then static controls).

A temporal task's answer is set only by the order of its frames; a static control is answerable from any
frame. Registration order is the order in which `generate` writes tasks, so it is part of the output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tcllava.data.synthetic.choices import _options, _pick, _pos, _split
from tcllava.data.synthetic.drawing import COLORS, DARK, GREY, SHAPES, WHITE, R, _canvas, _draw

SLOTS = ("left", "middle", "right")

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
