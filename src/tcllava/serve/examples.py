"""The page's example videos: drawn at start from the synthetic benchmark (nothing is downloaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXAMPLE_TASKS = ("action_sequence", "moving_direction", "state_change", "object_color")


@dataclass(frozen=True)
class Example:
    label: str
    video: Path
    question: str


def make_examples(
    folder: Path, tasks: tuple[str, ...] = EXAMPLE_TASKS, frames: int = 16, size: int = 128, fps: float = 4.0
) -> list[Example]:
    """One test-split sample per task, written as an H.264 mp4 into ``folder``, with its question and
    options as the benchmark asks them."""
    from tcllava.data.synthetic import make_samples, write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for task in tasks:
        sample = make_samples(task, 1, "test", seed=0, num_frames=frames, size=size)[0]
        path = folder / f"{task}.mp4"
        write_mp4(path, sample.frames, fps)
        options = ", ".join(sample.candidates)
        label = f"{task.replace('_', ' ')}: {sample.question}"
        examples.append(Example(label, path, f"{sample.question} Options: {options}."))
    return examples
