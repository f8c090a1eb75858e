"""Training data: weighted conversation sources, a decoding Dataset that never raises, its collate, and
a length-grouped global-batch sampler that resumes exactly and splits the same way on any world size.

Flow: :func:`load_training_data` parses every record once (no I/O beyond the JSON files) and packs the
valid conversations into one byte buffer, cheap to fork into DataLoader workers.
:class:`GlobalBatchSampler` plans each epoch from ``(seed, epoch)`` alone; :class:`ConversationDataset`
decodes and tokenises in the workers and turns any failure into a :class:`Skipped` marker that
:class:`TrainCollator` drops and reports inside the batch, so counts survive worker processes.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcllava.data.conversations import (
    Conversation,
    InvalidRecord,
    expand_paths,
    file_sha256,
    parse_record,
    read_records,
)
from tcllava.model.processing import Encoded, SampleTooLong, TCLlavaProcessor
from tcllava.model.templates import Message

# A word is about 1.3 tokens for LLaMA-family BPE; only used to group similar lengths together.
TOKENS_PER_WORD = 1.3
MAX_LISTED = 1000  # skipped samples listed by id in a report; counts are always complete


@dataclass
class DataSource:
    """One conversation file (or glob) and its share of each epoch.

    ``weight`` is how many times each of its samples is seen per epoch on average: 1 = once, 2 = twice,
    0.5 = a fresh random half every epoch. ``media_root`` defaults to the JSON file's folder.
    """

    path: str
    media_root: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("a data source needs a path")
        if not self.weight > 0:
            raise ValueError(f"data source {self.path}: weight must be > 0, got {self.weight}")


@dataclass
class Skipped:
    """A sample that could not be used, and why (reason: a short category; detail: the message)."""

    id: str
    source: str
    reason: str
    detail: str


class PackedConversations:
    """Conversations stored as compact JSON in one numpy byte buffer: forked workers share the pages
    instead of copying them (Python objects would be copied by reference counting)."""

    def __init__(self, items: Sequence[str]) -> None:
        blobs = [s.encode() for s in items]
        self.offsets = np.cumsum([0, *map(len, blobs)], dtype=np.int64)
        self.buffer = np.frombuffer(b"".join(blobs) or b" ", dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Conversation:
        return Conversation.from_json(self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes())


@dataclass
class TrainingData:
    conversations: PackedConversations
    lengths: np.ndarray  # estimated tokens per sample (text words + visual tokens), for grouping
    source_of: np.ndarray  # source number per sample
    sources: list[dict[str, Any]]  # per file: path, media_root, weight, start, count, records, sha256
    invalid: list[Skipped] = field(default_factory=list)  # records rejected at parse time

    def __len__(self) -> int:
        return len(self.conversations)

    @property
    def spans(self) -> list[tuple[int, int, float]]:
        """(first index, count, weight) of each source."""
        return [(s["start"], s["count"], s["weight"]) for s in self.sources]

    def manifest(self) -> dict[str, Any]:
        files = [
            {k: s[k] for k in ("path", "media_root", "weight", "records", "count", "sha256")}
            for s in self.sources
        ]
        return {"files": files, "samples": len(self), "invalid_records": len(self.invalid)}

    def manifest_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()


def load_training_data(
    sources: Sequence[DataSource], video_tokens: int, image_tokens: int, hash_files: bool = True
) -> TrainingData:
    """Parse every source; invalid records are listed in ``invalid``, not fatal. A glob path becomes one
    source per file, each with the given weight."""
    items: list[str] = []
    lengths: list[int] = []
    source_of: list[int] = []
    files: list[dict[str, Any]] = []
    invalid: list[Skipped] = []
    for spec in sources:
        for path in expand_paths(spec.path):
            media_root = Path(spec.media_root) if spec.media_root else path.parent
            records = read_records(path)
            start = len(items)
            for i, record in enumerate(records):
                default_id = f"{path.name}:{i}"
                try:
                    conv = parse_record(record, media_root, default_id)
                except InvalidRecord as e:
                    rid = str(record.get("id", default_id)) if isinstance(record, dict) else default_id
                    invalid.append(Skipped(rid, str(path), e.reason, e.detail))
                    continue
                visual = sum(image_tokens if m.kind == "image" else video_tokens for m in conv.media)
                items.append(conv.to_json())
                lengths.append(int(conv.word_count() * TOKENS_PER_WORD) + visual)
                source_of.append(len(files))
            files.append(
                {
                    "path": str(path),
                    "media_root": str(media_root),
                    "weight": float(spec.weight),
                    "start": start,
                    "count": len(items) - start,
                    "records": len(records),
                    "sha256": file_sha256(path) if hash_files else None,
                }
            )
    return TrainingData(
        PackedConversations(items),
        np.asarray(lengths, dtype=np.int64),
        np.asarray(source_of, dtype=np.int32),
        files,
        invalid,
    )


@dataclass
class Example:
    id: str
    encoded: Encoded
    truncated: bool = False


def _drop_last_exchange(messages: list[Message]) -> list[Message] | None:
    """The conversation without its last user/assistant exchange, or None if that would remove the
    only answer or a media placeholder (visual tokens are never cut)."""
    answers = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if len(answers) < 2:
        return None
    kept = messages[: answers[-2] + 1]
    dropped = messages[answers[-2] + 1 :]
    if any("<video>" in m.content or "<image>" in m.content for m in dropped):
        return None
    return kept


class ConversationDataset(torch.utils.data.Dataset):
    """Map-style dataset over keys ``(index, epoch)``: the epoch seeds random frame sampling, so a sample
    decodes identically whenever (and in whichever worker) it is fetched again, e.g. after a resume.

    ``__getitem__`` never raises: missing or corrupt media, decoding past ``sample_timeout`` seconds and
    samples that cannot fit ``max_length`` without cutting visual tokens come back as :class:`Skipped`.
    Too-long multi-turn conversations first lose trailing exchanges (counted as truncated).
    """

    def __init__(
        self,
        data: TrainingData,
        processor: TCLlavaProcessor,
        num_frames: int,
        frame_sampling: str = "random",
        max_length: int | None = None,
        sample_timeout: float | None = 60.0,
        seed: int = 0,
    ) -> None:
        self.data = data
        self.processor = processor
        self.num_frames = num_frames
        self.frame_sampling = frame_sampling
        self.max_length = max_length
        self.sample_timeout = sample_timeout
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> Example | Skipped:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        source = self.data.sources[int(self.data.source_of[index])]["path"]
        conv: Conversation | None = None
        try:
            conv = self.data.conversations[index]
            deadline = time.monotonic() + self.sample_timeout if self.sample_timeout else None
            clips = [self._read(m, index, epoch, k, deadline) for k, m in enumerate(conv.media)]
            return self._encode(conv, clips)
        except Exception as e:  # never stop the run for one sample
            sample_id = conv.id if conv is not None else f"#{index}"
            return Skipped(sample_id, source, _reason(e), f"{type(e).__name__}: {e}")

    def _read(self, media, index: int, epoch: int, k: int, deadline: float | None) -> torch.Tensor:
        from tcllava.video import VideoWarning, read_video

        timeout = None if deadline is None else max(0.1, deadline - time.monotonic())
        frames = 1 if media.kind == "image" else self.num_frames
        rng = np.random.default_rng([self.seed, epoch, index, k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VideoWarning)  # short clips repeat frames; not an error
            clip = read_video(
                media.path,
                frames,
                self.frame_sampling,
                start=media.start,
                end=media.end,
                seed=rng,
                timeout=timeout,
            )
        return clip.frames

    def _encode(self, conv: Conversation, clips: list[torch.Tensor]) -> Example:
        messages: list[Message] | None = conv.messages
        truncated = False
        while True:
            try:
                pieces = self.processor.render(messages, add_generation_prompt=False)
                return Example(conv.id, self.processor.encode(pieces, clips, self.max_length), truncated)
            except SampleTooLong:
                messages, truncated = _drop_last_exchange(messages), True
                if messages is None:
                    raise


def _reason(error: Exception) -> str:
    from tcllava.video import VideoError

    if isinstance(error, SampleTooLong):
        return "too_long"
    if isinstance(error, VideoError):
        if "no such file" in error.cause:
            return "missing_media"
        return "timeout" if "timeout" in error.cause else "decode_error"
    if isinstance(error, FileNotFoundError):
        return "missing_media"
    if "placeholder" in str(error):
        return "placeholder_mismatch"
    return "error"


class TrainCollator:
    """Pads the good samples of a micro-batch (right padding) and carries the skipped ones as data."""

    def __init__(self, processor: TCLlavaProcessor) -> None:
        self.processor = processor

    def __call__(self, items: Sequence[Example | Skipped]) -> dict[str, Any]:
        good = [x for x in items if isinstance(x, Example)]
        batch: dict[str, Any] = (
            self.processor.collate([x.encoded for x in good], padding_side="right") if good else {}
        )
        batch["sample_ids"] = [x.id for x in good]
        batch["skipped"] = [asdict(x) for x in items if isinstance(x, Skipped)]
        batch["truncated"] = sum(x.truncated for x in good)
        return batch


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This rank's micro-batches of keys ``(index, epoch)``, starting at a given (epoch, step).

    Each optimizer step consumes one global batch of ``batch_size * grad_accum * world_size`` samples,
    made of ``grad_accum * world_size`` micro-batches of consecutive samples; micro-batch ``j`` of a step
    goes to rank ``j % world_size`` as accumulation step ``j // world_size``. The plan depends only on
    (seed, epoch, batch_size, global batch), so one process with ``grad_accum=2`` and two with
    ``grad_accum=1`` train on the same micro-batches. With ``group_by_length`` the epoch is cut into
    megabatches of ``megabatch_steps`` global batches, each sorted by length (longest first), so that
    padding is small and ranks working at the same time get similar lengths. The last partial global
    batch of an epoch is dropped.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        spans: Sequence[tuple[int, int, float]],
        batch_size: int,
        grad_accum: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        group_by_length: bool = True,
        megabatch_steps: int = 16,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.spans = list(spans)
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.world_size, self.rank = world_size, rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.megabatch_steps = megabatch_steps
        self.epoch, self.step = 0, 0
        self._plan: tuple[int, np.ndarray] | None = None
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"an epoch has {self.epoch_size} samples, fewer than one global batch of {self.global_batch}"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def epoch_size(self) -> int:
        return sum(int(w) * n + round((w % 1) * n) for _, n, w in self.spans)

    @property
    def steps_per_epoch(self) -> int:
        return self.epoch_size // self.global_batch

    def plan(self, epoch: int) -> np.ndarray:
        """[steps, grad_accum * world_size, batch_size] sample indices of one epoch."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for start, count, weight in self.spans:
            indices = np.arange(start, start + count)
            parts += [indices] * int(weight)
            extra = round((weight % 1) * count)
            if extra:
                parts.append(np.sort(rng.choice(indices, extra, replace=False)))
        order = rng.permutation(np.concatenate(parts) if parts else np.zeros(0, np.int64))
        order = order[: self.steps_per_epoch * self.global_batch]
        if self.group_by_length:
            size = self.global_batch * self.megabatch_steps
            chunks = [order[i : i + size] for i in range(0, len(order), size)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        plan = order.reshape(self.steps_per_epoch, self.grad_accum * self.world_size, self.batch_size)
        self._plan = (epoch, plan)
        return plan

    def set_position(self, epoch: int, step: int) -> None:
        """Start the next iteration at optimizer step ``step`` of ``epoch``."""
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step {step} outside an epoch of {self.steps_per_epoch} steps")
        self.epoch, self.step = epoch, step

    def __iter__(self):
        plan, epoch = self.plan(self.epoch), self.epoch
        for step in range(self.step, self.steps_per_epoch):
            for a in range(self.grad_accum):
                yield [(int(i), epoch) for i in plan[step, a * self.world_size + self.rank]]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.step) * self.grad_accum

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "micro_batches_per_step": self.grad_accum * self.world_size,
            "group_by_length": self.group_by_length,
            "megabatch_steps": self.megabatch_steps,
            "epoch_size": self.epoch_size,
        }

    def check_compatible(self, state: dict[str, Any]) -> None:
        """Resuming reproduces the data order only if the plan's inputs are the same."""
        mine = self.state_dict()
        different = {
            k: (v, mine[k]) for k, v in state.items() if k not in ("epoch", "step") and mine.get(k) != v
        }
        if different:
            raise ValueError(
                "cannot resume exactly: the data plan changed (saved, now): "
                + ", ".join(f"{k}={a}->{b}" for k, (a, b) in different.items())
                + ". Keep batch_size, batch_size*grad_accum*world_size, seed and the data, or start a new run."
            )
