"""Drawing samples of a task: balanced answers and answer positions, deterministic per (seed, split, task)."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from tcllava.data.synthetic.tasks import TASKS

SPLITS = ("train", "test")


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
