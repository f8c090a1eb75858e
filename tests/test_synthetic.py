"""The synthetic benchmark measures time: scripted solvers need frame order for temporal tasks, not for controls.

Model-free checks on the generated frames: an ORDER-AWARE solver per task reads positions, sizes and colours
and answers almost perfectly; the same solver on shuffled frames stays at chance for temporal tasks; and for
every temporal sample, reorderings of the very same frames are read as every other candidate, so the frame
set alone cannot determine the answer. Plus determinism, balance, encoding and the CLI.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest

from tcllava.cli import main
from tcllava.data.synthetic import COLORS, SLOTS, TASKS, Sample, fingerprint, generate, make_samples, thirds

TEMPORAL = [t for t, spec in TASKS.items() if spec.kind == "temporal"]
STATIC = [t for t, spec in TASKS.items() if spec.kind == "static"]
PALETTE = np.array(list(COLORS.values()), dtype=float)

# ----------------------------------------------------------------------------------------- frame reading


def fg(frame: np.ndarray) -> np.ndarray:
    """Object pixels: every object is bright or saturated, the background black."""
    return frame.max(-1) > 80


def color_of(pixels: np.ndarray) -> str:
    median = np.median(pixels.reshape(-1, 3).astype(float), axis=0)
    return list(COLORS)[int(np.argmin(((PALETTE - median) ** 2).sum(1)))]


def object_color(frame: np.ndarray) -> str:
    return color_of(frame[fg(frame)])


def centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True values."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True))


def dedupe(seq: list) -> list:
    return [k for k, _ in itertools.groupby(seq)]


def components(mask: np.ndarray) -> int:
    """Number of 4-connected blobs."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count, stack, seen[start] = count + 1, [start], True
        while stack:
            y, x = stack.pop()
            for p in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= p[0] < mask.shape[0] and 0 <= p[1] < mask.shape[1] and mask[p] and not seen[p]:
                    seen[p] = True
                    stack.append(p)
    return count


# ----------------------------------------------------------------------------------------- solvers
# Each reads frames in the order given and returns a guess; `answer` falls back to the first candidate.


def cup_moves(frames: np.ndarray) -> tuple[int, list[tuple[int, ...] | None]]:
    """Slot of the revealed ball, and per frame the pair of slots being swapped (None when none is)."""
    grey = lambda f: np.abs(f.astype(int) - 170).max(-1) < 45
    red = [(f[..., 0] > 150) & (f[..., 1] < 110) & (f[..., 2] < 110) for f in frames]
    reveal = next((t for t, m in enumerate(red) if m.sum() > 5), 0)
    rows = np.nonzero(grey(frames[reveal]).any(1))[0]
    band = slice(rows.min(), rows.max() + 1)  # the cups' resting row
    slots = np.array([(a + b) / 2 for a, b in runs(grey(frames[reveal])[band].any(0))])
    ball = int(np.argmin(np.abs(slots - centre(red[reveal])[0])))
    pairs: list[tuple[int, ...] | None] = []
    for t, frame in enumerate(frames):
        still = runs(grey(frame)[band].any(0))  # exactly one cup at rest: the other two are swapping
        rest = int(np.argmin(np.abs(slots - sum(still[0]) / 2))) if len(still) == 1 else None
        pairs.append(None if t == reveal or rest is None else tuple(sorted({0, 1, 2} - {rest})))
    return ball, pairs


def cups(frames: np.ndarray) -> str:
    slot, pairs = cup_moves(frames)
    for p, q in dedupe([p for p in pairs if p]):
        slot = {p: q, q: p}.get(slot, slot)
    return SLOTS[slot]


def puck(frames: np.ndarray) -> str:
    path = np.array([centre(fg(f)) for f in frames])
    axis = int(np.argmax(np.ptp(path, axis=0)))
    speed, half = np.abs(np.diff(path[:, axis])), (len(frames) - 1) // 2
    return "forward" if speed[:half].sum() > speed[-half:].sum() else "reverse"


def direction(frames: np.ndarray) -> str:
    dx, dy = centre(fg(frames[-1])) - centre(fg(frames[0]))
    return ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")


def when(frames: np.ndarray) -> str:
    mid, n = np.mean([t for t, f in enumerate(frames) if fg(f).any()]) + 0.5, len(frames)
    return "beginning" if mid < n / 3 else "end" if mid > 2 * n / 3 else "middle"


def rotation(frames: np.ndarray) -> str:
    hand = [centre(fg(f) & (f.min(-1) < 200)) - f.shape[0] / 2 for f in frames]  # white hub excluded
    angles = np.array([np.arctan2(y, x) for x, y in hand])
    turn = np.angle(np.exp(1j * np.diff(angles))).sum()
    return "clockwise" if turn > 0 else "counterclockwise"  # image y points down


def shape(frame: np.ndarray) -> str:
    mask = fg(frame)
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill, top = box.mean(), box[: len(box) // 2].sum() / box.sum()
    return "square" if fill > 0.9 else "circle" if fill > 0.7 else "triangle" if top < 0.4 else "cross"


SOLVERS: dict[str, Callable[[np.ndarray, list[str]], str]] = {
    "action_sequence": lambda f, c: {x.split()[0]: x for x in c}.get(object_color(f[0]), ""),
    "moving_direction": lambda f, c: direction(f),
    "state_change": lambda f, c: f"from {object_color(f[0])} to {object_color(f[-1])}",
    "scene_transition": lambda f, c: "from " + " to ".join(dedupe([color_of(x[:2, :2]) for x in f])),
    "object_shuffle": lambda f, c: cups(f),
    "reverse_playback": lambda f, c: puck(f),
    "action_localization": lambda f, c: when(f),
    "growing_shrinking": lambda f, c: "growing" if fg(f[0]).sum() < fg(f[-1]).sum() else "shrinking",
    "rotation_direction": lambda f, c: rotation(f),
    "change_count": lambda f, c: str(len(dedupe([object_color(x) for x in f])) - 1),
    # static controls look at one frame only
    "object_color": lambda f, c: object_color(f[len(f) // 2]),
    "object_shape": lambda f, c: shape(f[len(f) // 2]),
    "object_count": lambda f, c: str(components(fg(f[len(f) // 2]))),
}


def answer(task: str, frames: np.ndarray, candidates: list[str]) -> str:
    guess = SOLVERS[task](frames, candidates)
    return guess if guess in candidates else candidates[0]


def blocks(frames: np.ndarray, keys: list) -> list[np.ndarray]:
    """Consecutive frames with equal keys, as blocks."""
    sizes = [len(list(g)) for _, g in itertools.groupby(keys)]
    return np.split(frames, np.cumsum(sizes)[:-1])


def reorderings(task: str, frames: np.ndarray) -> list[np.ndarray]:
    """Other valid videos made of exactly the same frames, following the generator's rules."""
    if task in (
        "moving_direction",
        "state_change",
        "reverse_playback",
        "growing_shrinking",
        "rotation_direction",
    ):
        return [frames[::-1]]
    if task in ("action_sequence", "scene_transition"):  # runs of identical frames = objects / scenes
        return [
            np.concatenate(p) for p in itertools.permutations(blocks(frames, [f.tobytes() for f in frames]))
        ]
    if task == "action_localization":  # slide the visible block to the start of each third
        shown = np.array([fg(f).any() for f in frames])
        blank, block = frames[~shown], frames[shown]
        return [np.concatenate([blank[:start], block, blank[start:]]) for start in thirds(len(frames))[:3]]
    if task == "object_shuffle":  # keep the reveal and final frames, swap the order of the two swaps
        swaps = blocks(frames[1:-1], cup_moves(frames)[1][1:-1])
        return [np.concatenate([frames[:1], *swaps[::-1], frames[-1:]])]
    if task == "change_count":  # the two colour groups arranged with 1, 2 and 3 switches
        colors = [object_color(f) for f in frames]
        a, b = (frames[[c == k for c in colors]] for k in dict.fromkeys(colors))
        return [np.concatenate(x) for x in ([a, b], [a[:1], b, a[1:]], [a[:1], b[:1], a[1:], b[1:]])]
    raise KeyError(task)


# ----------------------------------------------------------------------------------------- tests


@cache
def samples(task: str, n: int = 120, num_frames: int = 8, size: int = 64) -> list[Sample]:
    return make_samples(task, n, "train", seed=0, num_frames=num_frames, size=size)


def accuracy(task: str, items: list[Sample], shuffle: np.random.Generator | None = None) -> float:
    frames = lambda s: s.frames if shuffle is None else s.frames[shuffle.permutation(len(s.frames))]
    return float(np.mean([answer(task, frames(s), s.candidates) == s.answer for s in items]))


def test_registry_has_temporal_tasks_and_controls() -> None:
    assert len(TEMPORAL) >= 8 and len(STATIC) >= 2
    for task, spec in TASKS.items():
        frames, question, candidates, ans = spec.fn(np.random.default_rng(1), 6, 96)
        assert frames.dtype == np.uint8 and frames.shape == (6, 96, 96, 3), task
        assert question.endswith("?") and ans in candidates and len(set(candidates)) == len(candidates)
        assert 2 <= len(candidates) == spec.options <= 4
        assert spec.answers is None or set(spec.answers) >= {ans}


@pytest.mark.parametrize("task", list(TASKS))
def test_ordered_solver_answers_every_task(task: str) -> None:
    assert accuracy(task, samples(task)) >= 0.9


@pytest.mark.parametrize("task", list(TASKS))
def test_order_blind_solver_is_at_chance_on_temporal_tasks_only(task: str) -> None:
    blind = accuracy(task, samples(task), shuffle=np.random.default_rng(0))
    if task in TEMPORAL:
        assert abs(blind - 1 / TASKS[task].options) <= 0.15, blind
    else:
        assert blind >= 0.9  # controls: one frame of a shuffled video is enough


@pytest.mark.parametrize("task", TEMPORAL)
def test_the_same_frames_in_another_order_give_every_answer(task: str) -> None:
    """So the frame set cannot tell the answer: only the order (chosen uniformly by the generator) does."""
    key = lambda frames: sorted(f.tobytes() for f in frames)
    for s in samples(task)[:40]:
        videos = [s.frames, *reorderings(task, s.frames)]
        assert all(key(v) == key(s.frames) for v in videos)
        assert {answer(task, v, s.candidates) for v in videos} == set(s.candidates)


@pytest.mark.parametrize(("num_frames", "size"), [(4, 64), (16, 96)])
def test_solvers_work_at_other_lengths_and_sizes(num_frames: int, size: int) -> None:
    for task in TASKS:
        assert accuracy(task, samples(task, 24, num_frames, size)) >= 0.9, task


def test_answers_and_positions_are_balanced() -> None:
    for task, spec in TASKS.items():
        items = samples(task)[:40]
        positions = Counter(s.candidates.index(s.answer) for s in items)
        assert set(positions) == set(range(spec.options)), task
        assert max(positions.values()) - min(positions.values()) <= 1, (task, positions)
        answers = Counter(s.answer for s in items)
        if spec.answers:
            assert set(answers) == set(spec.answers), task
            assert max(answers.values()) - min(answers.values()) <= 1, (task, answers)
        else:
            assert max(answers.values()) <= 0.25 * len(items), (task, answers)
        distractor_orders = {tuple(c for c in s.candidates if c != s.answer) for s in items}
        assert len(distractor_orders) > (1 if spec.options == 2 else spec.options), task


def test_sampling_is_deterministic_and_splits_are_disjoint() -> None:
    for task in TASKS:
        a, b = make_samples(task, 6, seed=3), make_samples(task, 6, seed=3)
        assert [fingerprint(s) for s in a] == [fingerprint(s) for s in b]
        assert [(s.candidates, s.answer) for s in a] == [(s.candidates, s.answer) for s in b]
        assert [fingerprint(s) for s in make_samples(task, 4, seed=3)] == [fingerprint(s) for s in a[:4]]
        other_seed = {fingerprint(s) for s in make_samples(task, 6, seed=4)}
        test = {fingerprint(s) for s in make_samples(task, 6, "test", seed=3)}
        assert not other_seed & {fingerprint(s) for s in a} and not test & {fingerprint(s) for s in a}
        # `exclude` really skips known samples (how generate() keeps test out of train)
        fresh = make_samples(task, 6, "test", seed=3, exclude=set(test))
        assert not test & {fingerprint(s) for s in fresh}


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_generate_is_deterministic_and_videos_decode_faithfully(tmp_path: Path) -> None:
    kwargs = dict(train_per_task=2, test_per_task=1, seed=5, num_frames=6, size=64, fps=5.0)
    manifest = generate(tmp_path / "a", **kwargs)
    assert generate(tmp_path / "b", **kwargs) == manifest
    for name in ["manifest.json", *manifest["sha256"]]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    correct = []
    for task in TASKS:
        made = make_samples(task, 2, "train", seed=5, num_frames=6, size=64)
        records = json.loads((tmp_path / "a" / "train" / f"{task}.json").read_text())
        for sample, record in zip(made, records, strict=True):
            assert (record["candidates"], record["answer"]) == (sample.candidates, sample.answer)
            video = decode(tmp_path / "a" / "train" / record["video"])
            assert np.array_equal(video, decode(tmp_path / "b" / "train" / record["video"]))
            assert video.shape == (6, 64, 64, 3)
            assert np.abs(video.astype(int) - sample.frames).mean() < 4, task
            correct.append(answer(task, video, record["candidates"]) == record["answer"])
    assert np.mean(correct) >= 0.9  # the information survives encoding
    train = {decode(tmp_path / "a" / "train" / f"videos/{t}/0000.mp4").tobytes() for t in TASKS}
    assert not train & {decode(tmp_path / "a" / "test" / f"videos/{t}/0000.mp4").tobytes() for t in TASKS}


def test_different_seeds_give_different_datasets(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 2, 1, seed=0, tasks=["moving_direction"])
    b = generate(tmp_path / "b", 2, 1, seed=1, tasks=["moving_direction"])
    assert a["sha256"] != b["sha256"]
    video = "train/videos/moving_direction/0000.mp4"
    assert not np.array_equal(decode(tmp_path / "a" / video), decode(tmp_path / "b" / video))


def test_cli_writes_layout_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    argv = ["data", "synthetic", "--out", str(out), "--train", "3", "--test", "2", "--seed", "7"]
    assert main([*argv, "--frames", "4", "--size", "32", "--tasks", "action_localization,object_count"]) == 0
    printed = capsys.readouterr().out
    assert "action_localization" in printed and "object_count" in printed and str(out) in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["seed"], manifest["num_frames"], manifest["size"]) == (7, 4, 32)
    assert manifest["tasks"] == {"action_localization": "temporal", "object_count": "static"}
    for split, n in (("train", 3), ("test", 2)):
        for task in manifest["tasks"]:
            assert manifest["counts"][split][task] == n
            path = out / split / f"{task}.json"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"][f"{split}/{task}.json"]
            records = json.loads(path.read_text())
            assert len(records) == n and all(r["answer"] in r["candidates"] for r in records)
            assert all(decode(out / split / r["video"]).shape == (4, 32, 32, 3) for r in records)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    for kwargs in (dict(num_frames=3), dict(num_frames=17), dict(size=63), dict(tasks=["nope"])):
        with pytest.raises(ValueError):
            generate(tmp_path, 1, 1, **kwargs)


# ----------------------------------------------------------------------------------------- still images


def test_still_images_are_described_truthfully_and_deterministically(tmp_path: Path) -> None:
    """The image-LLaVA stage's data: every caption names the colour found in each grid cell of the pixels,
    the question's answer is among its options and agrees with the caption, and the set is reproducible."""
    from PIL import Image

    from tcllava.data.conversations import parse_record
    from tcllava.data.synthetic import PLACES, generate_images

    first = generate_images(tmp_path / "a", 40, seed=3, size=64)
    assert generate_images(tmp_path / "b", 40, seed=3, size=64) == first
    assert generate_images(tmp_path / "c", 40, seed=4, size=64)["sha256"] != first["sha256"]
    records = json.loads((tmp_path / "a" / "images.json").read_text())
    checked = 0
    for i, record in enumerate(records):
        conversation = parse_record(record, tmp_path / "a", f"#{i}")
        roles = [m.role for m in conversation.messages]
        assert roles == ["system", "user", "assistant"] * 1 + ["user", "assistant"] * 2
        assert conversation.media[0].kind == "image"
        question, answer, _, caption, drill, drill_answer = (m.content for m in conversation.messages[1:])
        for text, reply in ((question, answer), (drill, drill_answer)):
            options = dict(line[1:].split(") ", 1) for line in text.split("\n") if line.startswith("("))
            letter, chosen = reply.removeprefix("Best option:(").split(") ", 1)
            assert options[letter] == chosen
        assert drill_answer.endswith(drill.split("Which option is ")[1].split("?")[0])
        quiz = record["quiz"]  # the first question as data, which scoring reads instead of the text
        asked = [line.split(") ", 1)[1] for line in question.split("\n") if line.startswith("(")]
        assert asked == quiz["candidates"]
        assert answer.endswith(f") {quiz['answer']}") and quiz["answer"] in quiz["candidates"]
        assert quiz["kind"] in {"color", "shape", "place", "size", "count", "background"}
        assert (quiz["kind"] == "count") == ("How many" in question)
        objects = [part.split(" at the ") for part in caption.rstrip(".").split(" on a ")[0].split(", ")]
        if "How many" in question:
            assert chosen_count(answer) == len(objects)
        if " on a " in caption:
            continue  # dark shapes on a coloured background: colours checked on black ones
        image = np.asarray(Image.open(tmp_path / "a" / record["image"]))
        cells = {
            place: image[k // 3 * 64 // 3 : (k // 3 + 1) * 64 // 3, k % 3 * 64 // 3 : (k % 3 + 1) * 64 // 3]
            for k, place in enumerate(PLACES)
        }
        seen = {place for place, cell in cells.items() if fg(cell).sum() > 20}
        assert seen == {place for _, place in objects}, caption
        for words, place in objects:
            assert color_of(cells[place][fg(cells[place])]) == words.split()[-2], caption
            checked += 1
    assert checked > 40


def chosen_count(answer: str) -> int:
    return int(answer.rsplit(" ", 1)[1])
