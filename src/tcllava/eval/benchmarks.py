"""Benchmark loaders: published annotation layouts -> a flat list of `Sample`s.

Every loader reads a local copy in the layout its authors publish (nothing is downloaded), resolves
video paths, and records which annotation files it read so results can carry their sha256 hashes.

Layouts accepted (DIR is `--data`):
- mvbench: `DIR/json/{task}.json` (or `DIR/{task}.json`), videos under `DIR/video/{prefix}` (or
  `DIR/{prefix}`) with the prefixes of `MVBENCH_TASKS`. A subset of tasks is fine; found and missing
  tasks are reported.
- synthetic: `DIR/test/{task}.json` in MVBench format, video paths relative to `DIR/test/`; a row's
  `depth` (the needle task's) is kept as metadata, and results are grouped by it.
- videomme: `DIR/*.parquet|*.json|*.jsonl` (also `DIR/videomme/`), videos `DIR/data/{videoID}.mp4`
  (also `DIR/videos/`, `DIR/`), subtitles `DIR/subtitle/{videoID}.srt` (also `DIR/subtitles/`).
- open-ended QA (msvd-qa, msrvtt-qa, activitynet-qa, tgif-qa): `DIR/*.json|*.jsonl` rows with a
  question, an answer and a video name (keys: question/Q, answer/A/answers,
  video/video_name/video_id/gif_name), or the ActivityNet-QA pair `test_q.json` + `test_a.json` joined
  on question_id; videos under `DIR/videos/` or `DIR/` (extension and ActivityNet's `v_` prefix optional).
- videochatgpt: `DIR/generic_qa.json`, `DIR/temporal_qa.json`, `DIR/consistency_qa.json` (any subset;
  rows `{"video_name", "Q", "A"}` or `{"video_name", "Q1", "Q2", "A"}`), videos as for open-ended QA.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".MP4", ".mpg", ".m4v")

# Official MVBench table: task -> (json file, video prefix(es) under video/, data type, has start/end).
# The first prefix is the official one; later ones are layouts of re-distributed copies of the same files.
MVBENCH_TASKS: dict[str, tuple[str, tuple[str, ...], str, bool]] = {
    "Action Sequence": ("action_sequence.json", ("star/Charades_v1_480",), "video", True),
    "Action Prediction": ("action_prediction.json", ("star/Charades_v1_480",), "video", True),
    "Action Antonym": ("action_antonym.json", ("ssv2_video", "ssv2_video_mp4"), "video", False),
    "Fine-grained Action": ("fine_grained_action.json", ("Moments_in_Time_Raw/videos",), "video", False),
    "Unexpected Action": ("unexpected_action.json", ("FunQA_test/test",), "video", False),
    "Object Existence": ("object_existence.json", ("clevrer/video_validation",), "video", False),
    "Object Interaction": ("object_interaction.json", ("star/Charades_v1_480",), "video", True),
    "Object Shuffle": ("object_shuffle.json", ("perception/videos",), "video", False),
    "Moving Direction": ("moving_direction.json", ("clevrer/video_validation",), "video", False),
    "Action Localization": ("action_localization.json", ("sta/sta_video",), "video", True),
    "Scene Transition": ("scene_transition.json", ("scene_qa/video",), "video", False),
    "Action Count": ("action_count.json", ("perception/videos",), "video", False),
    "Moving Count": ("moving_count.json", ("clevrer/video_validation",), "video", False),
    "Moving Attribute": ("moving_attribute.json", ("clevrer/video_validation",), "video", False),
    "State Change": ("state_change.json", ("perception/videos",), "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", ("nturgbd", "nturgbd_convert"), "video", False),
    "Character Order": ("character_order.json", ("perception/videos",), "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", ("vlnqa",), "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", ("tvqa/frames_fps3_hq",), "frame", True),
    "Counterfactual Inference": (
        "counterfactual_inference.json",
        ("clevrer/video_validation",),
        "video",
        False,
    ),
}
MVBENCH_KEYS = ("video", "question", "candidates", "answer")
SYNTHETIC_GROUPS = ("depth",)  # row fields of the synthetic benchmark that results are grouped by
FRAME_FOLDER_FPS = 3.0  # MVBench's frame folders (TVQA) were extracted at 3 fps

OPEN_QA = ("msvd-qa", "msrvtt-qa", "activitynet-qa", "tgif-qa")
BENCHMARKS = ("mvbench", "videomme", "synthetic", *OPEN_QA, "videochatgpt")


class EvalError(RuntimeError):
    """Bad benchmark data or output directory: a message for the user, not a bug."""


class EvalInputError(EvalError):
    """A bad setting or annotation file: the user's input to fix (the CLI exits 2, not 1)."""


@dataclass
class Sample:
    """One question about one video. `answer` is the option letter for multiple choice and the
    reference text for open-ended questions; `options` are option texts without letters."""

    id: str
    task: str
    video: str
    question: str
    answer: str
    options: list[str] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    frame_fps: float = FRAME_FOLDER_FPS
    subtitle: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Benchmark:
    name: str
    kind: str  # "mcq" | "openqa" | "videochatgpt"
    samples: list[Sample]
    files: list[Path]  # annotation files read (hashed into results)
    root: Path
    tasks_found: list[str] = field(default_factory=list)
    tasks_missing: list[str] = field(default_factory=list)

    def file_hashes(self) -> dict[str, str]:
        return {str(p.relative_to(self.root)): sha256_file(p) for p in self.files}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for each row of a .json (list, or dict of lists/rows), .jsonl or .parquet annotation
    file; `where` names the file and the row (`file[i]`, 0-based) or JSONL line (`file:n`, 1-based)."""
    if path.suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError as e:  # optional: only the parquet layouts need it
            raise EvalInputError(
                f"{path}: reading parquet needs pandas and pyarrow (pip install pandas pyarrow)"
            ) from e
        try:
            table = pd.read_parquet(path).to_dict(orient="records")
        except Exception as e:  # pyarrow raises several unrelated types for a bad file
            raise EvalInputError(f"{path}: not a readable parquet file ({e})") from None
        rows = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()} for row in table]
        return [(f"{path}[{i}]", row) for i, row in enumerate(rows)]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix == ".jsonl":
        located = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    located.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise EvalInputError(f"{path}:{n}:{e.colno}: not valid JSON ({e.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict):  # {id: row} or {"data": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1 and len(data) == 1:
                data = lists[0]
            else:
                data = [
                    {"_key": k, **v} if isinstance(v, dict) else {"_key": k, "value": v}
                    for k, v in data.items()
                ]
        if not isinstance(data, list):
            raise EvalInputError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        located = [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    for where, row in located:
        if not isinstance(row, dict):
            raise EvalInputError(f"{where}: a row is a JSON object, got {type(row).__name__}")
    return located


def _require(row: dict[str, Any], keys: tuple[str, ...], where: str, what: str) -> None:
    """One line naming the first missing key and the keys `what` needs."""
    for key in keys:
        if row.get(key) is None:
            raise EvalInputError(f"{where}: missing key {key!r} (a {what} row needs {', '.join(keys)})")


def _find_video(dirs: list[Path], name: str) -> Path:
    """First existing path for `name` under `dirs`, trying common extensions and ActivityNet's `v_`
    prefix; the plain first candidate if none exists (decoding then reports it missing per sample)."""
    for d in dirs:
        for stem in (name, f"v_{name}"):
            base = d / stem
            if base.exists():
                return base
            for ext in VIDEO_EXTS:
                if base.with_name(base.name + ext).exists():
                    return base.with_name(base.name + ext)
    return dirs[0] / name


def _bound(row: dict[str, Any], bounded: bool, where: str) -> tuple[float | None, float | None]:
    if not bounded or ("start" not in row and "end" not in row):
        if bounded:
            raise EvalInputError(f"{where}: a bounded task row needs 'start' and 'end'")
        return None, None
    try:
        start, end = float(row["start"]), float(row["end"])
    except (KeyError, TypeError, ValueError):
        raise EvalInputError(
            f"{where}: 'start' and 'end' must both be numbers (seconds), got "
            f"{row.get('start')!r} and {row.get('end')!r}"
        ) from None
    if end < start:
        raise EvalInputError(f"{where}: end {end} < start {start}")
    return start, end


def _mcq_answer_letter(row: dict[str, Any], where: str) -> str:
    candidates = row["candidates"]
    if not isinstance(candidates, list) or not candidates:
        raise EvalInputError(f"{where}: 'candidates' must be a non-empty list, got {candidates!r}")
    if row["answer"] not in candidates:
        raise EvalInputError(f"{where}: answer {row['answer']!r} is not one of the candidates {candidates}")
    return chr(ord("A") + candidates.index(row["answer"]))


def load_mvbench_layout(
    root: Path,
    table: dict[str, tuple[str, tuple[str, ...], str, bool | None]],
    json_dirs: list[Path],
    video_dirs: list[Path],
    name: str,
    limit: int | None = None,
    meta_keys: tuple[str, ...] = (),
) -> Benchmark:
    """MVBench-format tasks. `bound=None` in the table means "bounded when rows carry start/end";
    `meta_keys`: row fields kept in each sample's `meta` when a row has them."""
    samples: list[Sample] = []
    files: list[Path] = []
    found, missing = [], []
    for task, (json_name, prefixes, _data_type, bounded) in table.items():
        path = next((d / json_name for d in json_dirs if (d / json_name).is_file()), None)
        if path is None:
            missing.append(task)
            continue
        found.append(task)
        files.append(path)
        rows = _read_rows(path)[: limit if limit is not None else None]
        key = Path(json_name).stem
        for i, (where, row) in enumerate(rows):
            _require(row, MVBENCH_KEYS, where, "MVBench")
            is_bounded = bounded if bounded is not None else ("start" in row and "end" in row)
            start, end = _bound(row, is_bounded, where)
            dirs = [d / p for p in prefixes for d in video_dirs] if prefixes else list(video_dirs)
            video = _find_video(dirs, str(row["video"]))
            samples.append(
                Sample(
                    id=f"{key}/{i}",
                    task=task,
                    video=str(video),
                    question=str(row["question"]),
                    options=[str(c) for c in row["candidates"]],
                    answer=_mcq_answer_letter(row, where),
                    start=start,
                    end=end,
                    meta={k: row[k] for k in meta_keys if k in row},
                )
            )
    if not found:
        names = ", ".join(spec[0] for spec in list(table.values())[:3])
        raise EvalInputError(f"no {name} task files ({names}, ...) in {', '.join(map(str, json_dirs))}")
    return Benchmark(name, "mcq", samples, files, root, found, missing)


def load_mvbench(data_dir: str | Path, limit: int | None = None) -> Benchmark:
    root = Path(data_dir)
    return load_mvbench_layout(
        root, MVBENCH_TASKS, [root / "json", root], [root / "video", root], "mvbench", limit
    )


def load_synthetic(data_dir: str | Path, limit: int | None = None, split: str = "test") -> Benchmark:
    """The demo benchmark: the same MVBench code path with a task table built from `DIR/{split}/*.json`."""
    root = Path(data_dir)
    folder = root / split
    table = {p.stem: (p.name, (), "video", None) for p in sorted(folder.glob("*.json"))}
    if not table:
        raise FileNotFoundError(f"no synthetic tasks: {folder}/*.json not found")
    return load_mvbench_layout(root, table, [folder], [folder], "synthetic", limit, SYNTHETIC_GROUPS)


_OPTION_LETTER = re.compile(r"^\s*\(?([A-Z])[.):]\s*")


def _annotation_files(dirs: list[Path], patterns: tuple[str, ...]) -> list[Path]:
    for d in dirs:
        files = sorted(p for pat in patterns for p in d.glob(pat) if p.is_file())
        if files:
            return files
    return []


def load_videomme(data_dir: str | Path, limit: int | None = None) -> Benchmark:
    root = Path(data_dir)
    files = _annotation_files([root, root / "videomme"], ("*.parquet", "*.json", "*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no Video-MME annotation (*.parquet, *.json, *.jsonl) in {root}")
    video_dirs = [root / "data", root / "videos", root]
    subtitle_dirs = [root / "subtitle", root / "subtitles", root]
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for path in files:
        for where, row in _read_rows(path):
            _require(row, ("question", "options", "answer"), where, "Video-MME")
            if not (row.get("videoID") or row.get("video_id") or row.get("video")):
                raise EvalInputError(f"{where}: missing key 'videoID' (or 'video_id', 'video')")
            vid = str(row.get("videoID") or row.get("video_id") or row.get("video"))
            if not isinstance(row["options"], list):
                raise EvalInputError(f"{where}: 'options' must be a list, got {row['options']!r}")
            options = [str(o) for o in row["options"]]
            texts = [_OPTION_LETTER.sub("", o, count=1) for o in options]
            answer = str(row["answer"]).strip().upper()
            if answer not in {chr(ord("A") + k) for k in range(len(options))}:
                raise EvalInputError(
                    f"{where}: answer {row['answer']!r} is not a letter of the {len(options)} options"
                )
            qid = str(row.get("question_id") or f"{row.get('video_id', vid)}-{seen.get(vid, 0) + 1}")
            seen[vid] = seen.get(vid, 0) + 1
            srt = next(
                (
                    d / f"{name}.srt"
                    for d in subtitle_dirs
                    for name in (vid, str(row.get("video_id")))
                    if (d / f"{name}.srt").is_file()
                ),
                None,
            )
            samples.append(
                Sample(
                    id=qid,
                    task="videomme",
                    video=str(_find_video(video_dirs, vid)),
                    question=str(row["question"]),
                    options=texts,
                    answer=answer,
                    subtitle=str(srt) if srt else None,
                    meta={
                        "duration": row.get("duration"),
                        "domain": row.get("domain"),
                        "sub_category": row.get("sub_category"),
                        "task_type": row.get("task_type"),
                        "option_lines": options,
                        "video_id": str(row.get("video_id", vid)),
                    },
                )
            )
    if limit is not None:
        samples = samples[:limit]
    return Benchmark("videomme", "mcq", samples, files, root, ["videomme"], [])


def _first(row: dict[str, Any], keys: tuple[str, ...], where: str) -> Any:
    for k in keys:
        if k in row and row[k] is not None:
            return row[k]
    raise EvalInputError(f"{where}: none of the keys {', '.join(map(repr, keys))} present")


def load_open_qa(data_dir: str | Path, name: str, limit: int | None = None) -> Benchmark:
    root = Path(data_dir)
    video_dirs = [root / "videos", root / "video", root]
    q_file, a_file = root / "test_q.json", root / "test_a.json"
    if q_file.is_file() and a_file.is_file():  # ActivityNet-QA's published split files
        answers = {}
        for where, r in _read_rows(a_file):
            _require(r, ("question_id", "answer"), where, "ActivityNet-QA answer")
            answers[str(r["question_id"])] = r["answer"]
        rows = []
        for where, r in _read_rows(q_file):
            _require(r, ("question_id",), where, "ActivityNet-QA question")
            if str(r["question_id"]) not in answers:
                raise EvalInputError(f"{where}: question_id {r['question_id']!r} has no answer in {a_file}")
            rows.append((where, {**r, "answer": answers[str(r["question_id"])]}))
        files = [q_file, a_file]
    else:
        files = [p for p in _annotation_files([root], ("*.json", "*.jsonl"))]
        if not files:
            raise FileNotFoundError(f"no {name} annotation (*.json, *.jsonl) in {root}")
        rows = [r for p in files for r in _read_rows(p)]
    if limit is not None:
        rows = rows[:limit]
    samples = []
    for i, (where, row) in enumerate(rows):
        answer = _first(row, ("answer", "A", "answers", "a"), where)
        if isinstance(answer, list):
            answer = answer[0]
        video = str(_first(row, ("video", "video_name", "video_id", "gif_name", "vid"), where))
        qid = str(row.get("question_id", row.get("id", i)))
        samples.append(
            Sample(
                id=qid,
                task=name,
                video=str(_find_video(video_dirs, video)),
                question=str(_first(row, ("question", "Q", "q"), where)),
                answer=str(answer),
            )
        )
    if len({s.id for s in samples}) != len(samples):
        raise EvalInputError(f"{name}: duplicate question ids in {', '.join(map(str, files))}")
    return Benchmark(name, "openqa", samples, files, root, [name], [])


VIDEOCHATGPT_FILES = {
    "generic": "generic_qa.json",
    "temporal": "temporal_qa.json",
    "consistency": "consistency_qa.json",
}


def load_videochatgpt(data_dir: str | Path, limit: int | None = None) -> Benchmark:
    """Generic questions are judged for correctness, detail and context; temporal ones for temporal
    understanding; each consistency row becomes two samples (Q1, Q2) judged together."""
    root = Path(data_dir)
    video_dirs = [root / "videos", root / "Test_Videos", root]
    samples: list[Sample] = []
    files, found, missing = [], [], []
    for task, fname in VIDEOCHATGPT_FILES.items():
        path = root / fname
        if not path.is_file():
            missing.append(task)
            continue
        files.append(path)
        found.append(task)
        needs = ("video_name", "Q1", "Q2", "A") if task == "consistency" else ("video_name", "Q", "A")
        for i, (where, row) in enumerate(_read_rows(path)[: limit if limit is not None else None]):
            _require(row, needs, where, f"Video-ChatGPT {task}")
            video = str(_find_video(video_dirs, str(row["video_name"])))
            questions = [("q1", row["Q1"]), ("q2", row["Q2"])] if task == "consistency" else [("q", row["Q"])]
            for suffix, q in questions:
                sid = f"{task}/{i}/{suffix}" if task == "consistency" else f"{task}/{i}"
                samples.append(Sample(id=sid, task=task, video=video, question=str(q), answer=str(row["A"])))
    if not files:
        raise FileNotFoundError(f"none of {list(VIDEOCHATGPT_FILES.values())} in {root}")
    return Benchmark("videochatgpt", "videochatgpt", samples, files, root, found, missing)


def load_benchmark(name: str, data_dir: str | Path, limit: int | None = None) -> Benchmark:
    """`limit`: the first N rows of each task file (each annotation for videomme and open-ended QA)."""
    if name == "mvbench":
        return load_mvbench(data_dir, limit)
    if name == "synthetic":
        return load_synthetic(data_dir, limit)
    if name == "videomme":
        return load_videomme(data_dir, limit)
    if name in OPEN_QA:
        return load_open_qa(data_dir, name, limit)
    if name == "videochatgpt":
        return load_videochatgpt(data_dir, limit)
    raise EvalInputError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
