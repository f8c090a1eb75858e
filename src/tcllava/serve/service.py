"""What the API and the page share: the served models, the server's limits, and turning a chat (turns of
text, videos and images) into a :class:`~tcllava.serve.engine.Prepared` request.

A chat is checked against the model's context (``processor.check_context``) before any video is decoded,
and decoded on the calling thread (a request thread, never the model's). Every refusal is an
:class:`~tcllava.serve.schema.APIError` whose message names the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcllava.serve.engine import Engine, Prepared, Stream
from tcllava.serve.media import MediaSource, from_url, read_media
from tcllava.serve.schema import APIError, ChatRequest, ImagePart, TextPart


@dataclass(frozen=True)
class Limits:
    """``max_frames``: frames one request may hold over all its videos and images. ``max_video_mb``: the
    largest video or image (and, with base64's overhead, request body) accepted."""

    max_frames: int = 32
    max_video_mb: float = 100.0
    max_batch: int = 16
    media_dir: Path | None = None
    decode_timeout: float = 60.0

    @property
    def max_bytes(self) -> int:
        return int(self.max_video_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_bytes * 4 / 3) + 2**20  # base64 and the JSON around it


@dataclass
class Turn:
    role: str  # system, developer (= system), user or assistant
    parts: list[str | MediaSource]


@dataclass
class ChatJob:
    """One answer to compute. ``frames`` None: the model's own default, capped at the server's limit."""

    model: str
    turns: list[Turn]
    frames: int | None = None
    sampling: str = "middle"
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Service:
    engines: dict[str, Engine]
    limits: Limits = field(default_factory=Limits)
    examples: list[Any] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.engines)

    def engine(self, name: str) -> Engine:
        if name not in self.engines:
            raise APIError(
                404,
                f"model {name!r} is not served here; the models are: {', '.join(self.engines)}",
                "model",
                "model_not_found",
            )
        return self.engines[name]

    def default_frames(self, name: str) -> int:
        return min(self.engine(name).processor.num_frames, self.limits.max_frames)

    def job_from_request(self, request: ChatRequest) -> ChatJob:
        """The API's request as a chat job; media URLs are resolved (and uploads decoded from base64)."""
        self.engine(request.model)
        turns = []
        for i, message in enumerate(request.messages):
            content = message.content
            parts: list[str | MediaSource] = []
            if isinstance(content, str):
                parts.append(content)
            for j, part in enumerate(content if isinstance(content, list) else []):
                label = f"messages[{i}].content[{j}]"
                if isinstance(part, TextPart):
                    parts.append(part.text)
                else:
                    kind = "image" if isinstance(part, ImagePart) else "video"
                    url = part.image_url.url if isinstance(part, ImagePart) else part.video_url.url
                    parts.append(from_url(url, kind, label, self.limits.media_dir, self.limits.max_bytes))
            turns.append(Turn(message.role, parts))
        return ChatJob(
            model=request.model,
            turns=turns,
            frames=request.frames,
            sampling=request.sampling,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.new_tokens,
            stop=request.stop_sequences,
            seed=request.seed,
        )

    def prepare(self, job: ChatJob) -> Prepared:
        """Check, decode and encode one chat job (blocking: call it off the event loop)."""
        from tcllava.model.generation import DEFAULT_MAX_NEW_TOKENS, RowSettings
        from tcllava.model.processing import PromptTooLong
        from tcllava.model.templates import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Message

        processor = self.engine(job.model).processor
        limit = self.limits.max_frames
        if job.frames is not None and job.frames > limit:
            raise APIError(
                400,
                f"frames: {job.frames} frames asked, the server allows at most {limit}",
                "frames",
                "too_many_frames",
            )
        frames = job.frames or self.default_frames(job.model)
        messages, sources, counts = [], [], []
        for i, turn in enumerate(job.turns):
            texts = []
            for part in turn.parts:
                if isinstance(part, str):
                    texts.append(part)
                    continue
                if turn.role != "user":
                    raise APIError(
                        400, f"{part.label}: only user messages may hold videos and images", part.label
                    )
                count = 1 if part.kind == "image" else frames
                texts.append(IMAGE_PLACEHOLDER if count == 1 else VIDEO_PLACEHOLDER)
                sources.append(part)
                counts.append(count)
            role = "system" if turn.role == "developer" else turn.role
            if role == "system" and i > 0:
                raise APIError(400, f"messages[{i}]: a system message must come first", f"messages[{i}]")
            messages.append(Message(role, "\n".join(texts)))
        if not job.turns or job.turns[-1].role != "user":
            raise APIError(400, "messages: the last message must be the user's", "messages")
        if sum(counts) > limit:
            raise APIError(
                400,
                f"messages: {sum(counts)} frames over {len(counts)} videos and images, the server allows at most {limit}",
                "messages",
                "too_many_frames",
            )
        max_new = job.max_tokens or DEFAULT_MAX_NEW_TOKENS
        seed = None if job.seed is None else job.seed % 2**63  # any integer, as a valid generator seed
        try:
            settings = RowSettings(max_new, job.temperature, job.top_p, seed)
            pieces = processor.render(messages)
            ids, _ = processor.token_ids(pieces, counts)
            processor.check_context(ids, max_new)
        except PromptTooLong as e:
            raise APIError(400, str(e), "messages", "context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, f"messages: {e}", "messages") from None
        clips = [
            read_media(source, count, job.sampling, seed, self.limits.decode_timeout)
            for source, count in zip(sources, counts, strict=True)
        ]
        encoded = processor.encode(pieces, [clip.frames for clip in clips])
        try:
            processor.check_context(encoded.input_ids, max_new)
        except PromptTooLong as e:
            raise APIError(400, str(e), "messages", "context_length_exceeded") from None
        return Prepared(encoded, settings, job.stop, clips)

    def start(
        self, job: ChatJob | ChatRequest, loop: asyncio.AbstractEventLoop | None = None
    ) -> tuple[Prepared, Stream]:
        """Prepare a job (or an API request) and submit it (blocking: call it off the event loop, giving
        the loop whose task reads the stream). While it is decoded, the model's next batch waits for it."""
        engine = self.engine(job.model)
        with engine.incoming():
            prepared = self.prepare(self.job_from_request(job) if isinstance(job, ChatRequest) else job)
            return prepared, engine.submit(prepared, loop)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def load_engines(
    models: Sequence[tuple[str, Path]],
    device: str = "cpu",
    dtype: str | None = None,
    max_batch: int = 16,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Engine]:
    """Load each ``(name, checkpoint directory)`` as ``tcllava chat`` does and start its worker."""
    from tcllava.model import load

    engines = {}
    for name, path in models:
        if progress:
            progress(f"loading {name} from {path}")
        model, processor = load(path, device=device, dtype=dtype)
        engines[name] = Engine(name, model, processor, max_batch=max_batch)
    return engines
