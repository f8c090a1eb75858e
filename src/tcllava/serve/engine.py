"""The batching worker: one thread per model runs every generate and every attention analysis.

Requests arrive already prepared (tokens and pixels, decoded on request threads). The worker takes the
first waiting request, waits ``batch_wait`` seconds for more (up to ``max_batch``), runs them as one
left-padded :func:`~tcllava.model.generation.generate_batch` and hands each request its own text as it is
generated, through a :class:`Stream` that a thread or an asyncio task reads. A greedy request gets the
same tokens in a batch as alone.

All engines of a server share one ``lock`` around model calls: ``tcllava.attention.record_attention``
collects from every model running at that moment, so two models must not run at once while one records.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tcllava.model.generation import RowOutput, RowSettings, generate_batch
from tcllava.model.processing import Encoded, TCLlavaProcessor

COMPUTE_LOCK = threading.Lock()


@dataclass
class Prepared:
    """A request ready for the model. ``clips`` (frames and timestamps, per video or image) are kept for
    the page; ``stop`` are stop strings (the text is cut before the first)."""

    encoded: Encoded
    settings: RowSettings
    stop: tuple[str, ...] = ()
    clips: list[Any] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return len(self.encoded.input_ids)

    @property
    def frames(self) -> int:
        return sum(int(clip.frames.shape[0]) for clip in self.clips)


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    """``finish_reason`` in OpenAI's words: ``stop`` (stop token or string) or ``length``."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens: list[int]
    batch_size: int
    seconds: float


@dataclass
class Failed:
    message: str


Event = Delta | Done | Failed


class Stream:
    """The events of one request, read by a thread (``for event in stream``) or, given the event loop
    (or made inside it), by a task (``async for``); the worker pushes them from its own thread. A reader
    that falls behind gets the text of several tokens as one delta (one wake-up, one chunk) instead of a
    backlog. ``cancel()`` ends the request at its next token."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        self._loop = loop
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._ready = threading.Event()  # for a thread that reads
        self._waiter: asyncio.Future | None = None  # for a task that reads
        self._wake_scheduled = False
        self.cancelled = False
        self.result: Done | None = None

    def push(self, event: Event) -> None:
        if isinstance(event, Done):
            self.result = event
        with self._lock:
            self._events.append(event)
            if self._loop is None:
                self._ready.set()
                return
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is reading any more
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take(self) -> list[Event]:
        """The events so far, consecutive deltas joined into one."""
        with self._lock:
            events, self._events = self._events, []
            self._ready.clear()
        merged: list[Event] = []
        for event in events:
            if merged and isinstance(event, Delta) and isinstance(merged[-1], Delta):
                merged[-1] = Delta(merged[-1].text + event.text)
            else:
                merged.append(event)
        return merged

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[Event]:
        while True:
            self._ready.wait()
            for event in self._take():
                yield event
                if not isinstance(event, Delta):
                    return

    async def __aiter__(self):
        if self._loop is None:
            raise RuntimeError("this stream was made outside an event loop: iterate it with a for loop")
        while True:
            events = self._take()
            if not events:
                self._waiter = self._loop.create_future()
                await self._waiter
                continue
            for event in events:
                yield event
                if not isinstance(event, Delta):
                    return


class TextTracker:
    """The visible text of a row while it is generated: decoded as ``processor.decode`` decodes the
    answer (special tokens skipped, whitespace stripped), cut before the first stop string. Deltas hold
    back trailing whitespace, half of a multi-byte character and anything that may begin a stop string,
    so the deltas always add up to the final answer."""

    def __init__(self, processor: TCLlavaProcessor, stop: tuple[str, ...] = ()) -> None:
        self.processor = processor
        self.stop = stop
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped = False

    def _text(self) -> str:
        text = self.processor.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.stop:
            at = text.find(stop)
            if at >= 0:
                text, self.stopped = text[:at], True
        return text.lstrip()

    def add(self, token: int) -> str:
        """The new visible text after ``token`` (maybe empty); ``stopped`` tells if a stop string came."""
        self.tokens.append(token)
        text = self._text()
        if not self.stopped:
            hold = max(
                (k for stop in self.stop for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0
            )
            text = text[: len(text) - hold].rstrip().removesuffix("\ufffd")
        return self._advance(text.rstrip() if self.stopped else text)

    def finish(self) -> str:
        """The rest of the text once the row has ended."""
        return self._advance(self.final)

    @property
    def final(self) -> str:
        return self._text().strip()

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):  # a decoder that rewrote earlier text: wait for the end
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


@dataclass
class _Job:
    prepared: Prepared
    stream: Stream
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Call:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


_STOP = object()


class Engine:
    """One loaded model, its processor and its worker thread.

    A batch starts ``batch_wait`` seconds after its first request or, while other requests for this model
    are still being decoded (:meth:`incoming`), once they arrive: ``max_wait`` seconds at most."""

    def __init__(
        self,
        name: str,
        model: Any,
        processor: TCLlavaProcessor,
        max_batch: int = 16,
        batch_wait: float = 0.005,
        max_wait: float = 0.25,
        lock: threading.Lock = COMPUTE_LOCK,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.name = name
        self.model = model
        self.processor = processor
        self.max_batch = max_batch
        self.batch_wait = batch_wait
        self.max_wait = max_wait
        self.lock = lock
        self._incoming = 0
        self._incoming_lock = threading.Lock()
        self._resumed = threading.Event()
        self._resumed.set()
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batches, for logs and tests
        self.cancelled = 0  # requests ended early because their reader went away
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"tcllava-serve:{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def pending(self) -> int:
        return self._queue.qsize()

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Marks a request for this model as being decoded: the next batch may wait for it."""
        with self._incoming_lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._incoming_lock:
                self._incoming -= 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Requests queue up but no batch starts inside the block; then they run together (up to
        ``max_batch``): a deterministic way to batch them, for tests."""
        self._resumed.clear()
        try:
            yield
        finally:
            self._resumed.set()

    def submit(self, prepared: Prepared, loop: asyncio.AbstractEventLoop | None = None) -> Stream:
        stream = Stream(loop)
        self._queue.put(_Job(prepared, stream))
        return stream

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the worker thread, between batches, and return its result (or raise its error)."""
        if not self.alive:
            raise RuntimeError(f"the worker of model {self.name!r} has stopped")
        job = _Call(fn)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.value

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the worker thread --
    def _loop(self) -> None:
        later: list[Any] = []  # calls and the stop signal met while collecting a batch
        while True:
            item = later.pop(0) if later else self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Call):
                with self.lock:
                    self._run_call(item)
                continue
            self._resumed.wait()
            batch = [item]
            start = time.monotonic()
            while len(batch) < self.max_batch and not later:
                wait = self.max_wait if self._incoming else self.batch_wait
                remaining = start + wait - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(queue.Empty):  # short polls: the wait ends once nothing is decoded
                    self._take(self._queue.get(timeout=min(remaining, 0.002)), batch, later)
            with self.lock:  # another model may be running: what arrives meanwhile joins this batch
                while len(batch) < self.max_batch and not later:
                    try:
                        self._take(self._queue.get_nowait(), batch, later)
                    except queue.Empty:
                        break
                gone = [job for job in batch if job.stream.cancelled]
                self.cancelled += len(gone)
                self._run_batch([job for job in batch if not job.stream.cancelled])

    @staticmethod
    def _take(item: Any, batch: list[_Job], later: list[Any]) -> None:
        (batch if isinstance(item, _Job) else later).append(item)

    def _run_call(self, job: _Call) -> None:
        try:
            job.value = job.fn()
        except BaseException as e:  # handed to the caller's thread
            job.error = e
        job.done.set()

    def _run_batch(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        self.batch_sizes.append(len(jobs))
        trackers = [TextTracker(self.processor, job.prepared.stop) for job in jobs]

        def on_token(row: int, token: int) -> bool:
            delta = trackers[row].add(token)
            if delta:
                jobs[row].stream.push(Delta(delta))
            return trackers[row].stopped or jobs[row].stream.cancelled

        def on_finish(row: int, output: RowOutput) -> None:
            tracker, job = trackers[row], jobs[row]
            if output.finish_reason == "caller" and job.stream.cancelled:
                self.cancelled += 1
            rest = tracker.finish()
            if rest:
                job.stream.push(Delta(rest))
            reason = "length" if output.finish_reason == "length" else "stop"
            job.stream.push(
                Done(
                    tracker.final,
                    reason,
                    job.prepared.prompt_tokens,
                    len(output.tokens),
                    list(output.tokens),
                    len(jobs),
                    time.perf_counter() - job.submitted,
                )
            )

        try:
            generate_batch(
                self.model,
                self.processor,
                [job.prepared.encoded for job in jobs],
                [job.prepared.settings for job in jobs],
                on_token,
                on_finish,
            )
        except Exception as e:  # e.g. out of memory: these requests fail, the server goes on
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            for job in jobs:
                if job.stream.result is None:
                    job.stream.push(Failed(f"generation failed: {type(e).__name__}: {e}"))
