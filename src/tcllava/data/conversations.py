"""Training conversation formats, normalised into one shape: messages plus the media they refer to.

Three record layouts are read (detected per record):

- LLaVA / PLLaVA: ``{"id", "video" | "image": path or [paths], "conversations": [{"from": "human" | "gpt" |
  "system", "value": "...<video>..."}]}``.
- VideoChat2-IT: ``{"video", "QA": [{"i": instruction, "q": question, "a": answer}, ...]}``; the first
  instruction becomes the system prompt (as VideoChat2 does).
- Multiple choice (MVBench layout, which `tcllava data synthetic` writes): ``{"video", "question",
  "candidates", "answer"}``, rendered with the MVBench official prompt so that training and evaluation
  ask the same question the same way.

Optional ``start``/``end`` (seconds) bound a video. A record with media but no placeholder gets one per
clip at the start of its first user turn (the LLaVA convention); any other placeholder/media mismatch
makes the record invalid. Parsing does no I/O: missing or corrupt files are found when decoding.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcllava.model.templates import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Message

# Kept equal to tcllava.eval.protocols (checked by a test); the data layer must not import eval.
MVBENCH_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
    "movement of objects, and the action and pose of persons. Based on your observations, select the "
    "best option that accurately addresses the question."
)
MVBENCH_ANSWER_PREFIX = "Best option:("

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_PLACEHOLDER = re.compile(f"{re.escape(VIDEO_PLACEHOLDER)}|{re.escape(IMAGE_PLACEHOLDER)}")


class InvalidRecord(ValueError):
    """A record that cannot become a training conversation; ``reason`` is a short category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Media:
    path: str  # absolute, or relative to the working directory
    kind: str  # "video" | "image" (an image is one frame)
    start: float | None = None
    end: float | None = None


@dataclass
class Conversation:
    id: str
    messages: list[Message]
    media: list[Media] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "messages": [[m.role, m.content] for m in self.messages],
                "media": [[m.path, m.kind, m.start, m.end] for m in self.media],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Conversation:
        d = json.loads(text)
        return cls(d["id"], [Message(r, c) for r, c in d["messages"]], [Media(*m) for m in d["media"]])

    def word_count(self) -> int:
        return sum(len(m.content.split()) for m in self.messages)


def _media(record: dict[str, Any], media_root: Path) -> list[Media]:
    out = []
    for kind in ("video", "image"):
        value = record.get(kind)
        if value is None:
            continue
        paths = value if isinstance(value, list) else [value]
        for p in paths:
            if not isinstance(p, str) or not p:
                raise InvalidRecord("invalid_record", f"{kind} must be a path or a list of paths, got {p!r}")
            start, end = record.get("start"), record.get("end")
            out.append(Media(str(media_root / p), kind, start, end))
    return out


def _llava_messages(turns: list[Any]) -> list[Message]:
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or "value" not in turn or turn.get("from") not in ROLES:
            raise InvalidRecord(
                "invalid_record", f"a turn needs 'from' in {sorted(ROLES)} and 'value': {turn!r}"
            )
        messages.append(Message(ROLES[turn["from"]], str(turn["value"])))
    return messages


def _videochat2_messages(qa: list[Any]) -> list[Message]:
    messages = []
    for i, item in enumerate(qa):
        if not isinstance(item, dict) or "a" not in item:
            raise InvalidRecord("invalid_record", f"a QA item needs 'a' (and 'q'/'i'): {item!r}")
        if i == 0 and item.get("i"):
            messages.append(Message("system", str(item["i"])))
        messages.append(Message("user", str(item.get("q", "")).strip()))
        messages.append(Message("assistant", str(item["a"])))
    return messages


def multiple_choice_messages(question: str, candidates: list[str], answer: str) -> list[Message]:
    """MVBench's official prompt; the answer is "Best option:(B) text", which eval primes up to "("."""
    if answer not in candidates:
        raise InvalidRecord("invalid_record", f"answer {answer!r} is not among the candidates {candidates!r}")
    options = "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(candidates))
    letter = chr(ord("A") + candidates.index(answer))
    return [
        Message("system", MVBENCH_SYSTEM),
        Message(
            "user",
            f"{VIDEO_PLACEHOLDER}\nQuestion: {question}\nOptions:\n{options}\nOnly give the best option.",
        ),
        Message("assistant", f"{MVBENCH_ANSWER_PREFIX}{letter}) {answer}"),
    ]


def parse_record(record: Any, media_root: str | Path, default_id: str) -> Conversation:
    """One JSON record -> a :class:`Conversation`, or :class:`InvalidRecord` saying why not."""
    if not isinstance(record, dict):
        raise InvalidRecord("invalid_record", f"a record must be an object, got {type(record).__name__}")
    media = _media(record, Path(media_root))
    if "conversations" in record:
        messages = _llava_messages(record["conversations"])
    elif "QA" in record:
        messages = _videochat2_messages(record["QA"])
    elif "question" in record and "candidates" in record and "answer" in record:
        messages = multiple_choice_messages(
            str(record["question"]), list(map(str, record["candidates"])), str(record["answer"])
        )
    else:
        raise InvalidRecord("invalid_record", "no 'conversations', 'QA' or 'question'/'candidates'/'answer'")
    if messages and messages[0].role == "system":
        system, rest = messages[:1], messages[1:]
    else:
        system, rest = [], messages
    if any(m.role == "system" for m in rest):
        raise InvalidRecord("invalid_record", "a system message may only come first")
    if not any(m.role == "assistant" and m.content.strip() for m in rest):
        raise InvalidRecord("invalid_record", "no assistant answer to learn from")
    placeholders = sum(len(_PLACEHOLDER.findall(m.content)) for m in rest if m.role == "user")
    stray = sum(len(_PLACEHOLDER.findall(m.content)) for m in messages if m.role != "user")
    if stray:
        raise InvalidRecord("placeholder_mismatch", "media placeholders outside user turns")
    if not media and not placeholders:
        # Every rank must use the projector in every step (DDP/FSDP reduce all gradients together).
        raise InvalidRecord("no_media", "text-only samples are not supported; give a video or an image")
    if placeholders == 0 and media:
        first = (
            next(i for i, m in enumerate(rest) if m.role == "user")
            if any(m.role == "user" for m in rest)
            else None
        )
        if first is None:
            raise InvalidRecord("invalid_record", "media but no user turn to put it in")
        marks = "".join(IMAGE_PLACEHOLDER if m.kind == "image" else VIDEO_PLACEHOLDER for m in media)
        rest[first] = Message("user", f"{marks}\n{rest[first].content}")
    elif placeholders != len(media):
        raise InvalidRecord(
            "placeholder_mismatch", f"{placeholders} placeholders for {len(media)} media files"
        )
    return Conversation(str(record.get("id", default_id)), system + rest, media)


def read_records(path: str | Path) -> list[Any]:
    """A JSON list or JSON Lines file of records; a malformed file is named with its line (1-based)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{number}: not a JSON record ({e.msg} at column {e.colno})"
                ) from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return records


def expand_paths(pattern: str) -> list[Path]:
    """A file path or a glob ("data/synthetic/train/*.json"), sorted; an empty match is an error."""
    if any(c in pattern for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(pattern))
    else:
        paths = [Path(pattern)]
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(
            f"no data file matches {pattern!r}" if not paths else f"missing data file {missing[0]}"
        )
    return paths


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
