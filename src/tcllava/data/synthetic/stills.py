"""Still images in the visual vocabulary of the videos, with captions, quizzes and option drills.

They feed the image-LLaVA stage of the demo (see `image_sample`); they are never frames of the video
benchmark.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tcllava.data.synthetic.choices import _options, _pick
from tcllava.data.synthetic.drawing import BACKGROUND, COLORS, DARK, SHAPES, _canvas, _draw
from tcllava.data.synthetic.samples import SPLITS, make_samples
from tcllava.data.synthetic.tasks import TASKS
from tcllava.data.synthetic.writer import _check

ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")
KINDS = ("color", "shape", "place", "size", "count", "background")
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
    objects: list[dict[str, str]]  # per object: shape, color ("dark" on a background), size, place
    background: str | None  # the background colour, None for black


def image_sample(rng: np.random.Generator, size: int, kinds: tuple[str, ...] | None = None) -> ImageSample:
    """1-4 shapes in distinct cells of a 3x3 grid, on black or on a coloured background (then dark shapes,
    as in `scene_transition`), described in words and quizzed about one attribute.

    This is the image-LLaVA stage of the demo (LLaVA's caption alignment plus image instruction tuning):
    it teaches a tower trained from scratch to see colours, shapes, places and sizes, and the LLM to point
    at an option letter, before any video is shown; the video tasks still have to be learned from video.

    ``kinds`` focuses the questions on some attributes (drawn first, uniformly): then a colour question
    shows one object, so that it can be answered without telling shapes apart, and a background question
    always has a background.
    """
    focus = None if kinds is None else kinds[int(rng.integers(len(kinds)))]
    coloured = rng.random() < 0.25 if focus is None else focus == "background"
    background = _pick(rng, list(COLORS), 1)[0] if coloured else None
    n = 1 if focus == "color" else int(rng.integers(1, 5))
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
    if focus is None:
        kinds = ["place", "size", "count"] + (["background"] if background else ["color", "shape"])
        kind = kinds[int(rng.integers(len(kinds)))]
    else:
        kind = focus
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
    return ImageSample(image, caption, question, candidates, answer, kind, objects, background)


def option_lists(seed: int = 0, per_task: int = 24) -> list[list[str]]:
    """Candidate lists in the style of every task (from its train split's generator), for option drills."""
    lists = [s.candidates for t in TASKS for s in make_samples(t, per_task, "train", seed, size=32)]
    return [*lists, list(PLACES[:4]), list(PLACES[4:8]), list(SIZES), list(COLORS)[:4], list(COLORS)[2:]]


def generate_images(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    size: int = 64,
    kinds: tuple[str, ...] | None = None,
    drill: bool = True,
) -> dict:
    """Write `OUT/images.json` and `OUT/images/NNNNN.png`: LLaVA conversation records of three turns, an
    MVBench-style question about the image, its caption, and an option drill ("Which option is X?", with
    option lists in the style of the video tasks) that teaches answering with a letter. Each record also
    keeps its first question as data (`quiz`: kind, candidates, answer) for scoring. Deterministic in the
    arguments; the images are stills, never frames of the video benchmark. ``kinds`` focuses the questions
    (see `image_sample`); ``drill=False`` leaves the option drill out (two turns per record)."""
    from PIL import Image

    from tcllava.data.conversations import multiple_choice_messages

    _check(8, size, 1.0, seed, [])
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown or kinds == ():
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, len(SPLITS), zlib.crc32(b"images")])
    drills = option_lists(seed)
    records = []
    for i in range(n):
        sample = image_sample(rng, size, kinds)
        rel = f"images/{i:05d}.png"
        Image.fromarray(sample.image).save(out / rel)
        system, question, answer = multiple_choice_messages(sample.question, sample.candidates, sample.answer)
        options = _pick(rng, drills[int(rng.integers(len(drills)))], 99)
        target = options[int(rng.integers(len(options)))]
        _, drill_question, drill_answer = multiple_choice_messages(
            f"Which option is {target}?", options, target
        )
        turns = [
            ("system", system.content),
            ("human", question.content.replace("<video>", "<image>")),
            ("gpt", answer.content),
            ("human", CAPTION_REQUEST),
            ("gpt", sample.caption),
        ]
        if drill:
            turns += [
                ("human", drill_question.content.replace("<video>\n", "")),
                ("gpt", drill_answer.content),
            ]
        quiz = {"kind": sample.kind, "candidates": sample.candidates, "answer": sample.answer}
        records.append(
            {"image": rel, "conversations": [{"from": f, "value": v} for f, v in turns], "quiz": quiz}
        )
    text = json.dumps(records, indent=1) + "\n"
    (out / "images.json").write_text(text)
    return {"images": n, "seed": seed, "size": size, "sha256": hashlib.sha256(text.encode()).hexdigest()}
