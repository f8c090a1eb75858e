"""Writing the video benchmark to disk: H.264 videos, one MVBench-style JSON per task and split, a manifest."""

from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from tcllava.data.synthetic.samples import SPLITS, make_samples
from tcllava.data.synthetic.tasks import TASKS

VERSION = "1"


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
