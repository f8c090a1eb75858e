"""The model side of evaluation, reduced to one batched call.

Benchmarks build `Prompt`s and decode `Clip`s; anything that turns them into text is a `Predictor`.
Keeping the model behind this protocol lets the whole evaluation path (prompts, decoding, extraction,
scoring, resume, sharding) be tested with scripted predictors and no weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tcllava.model.templates import VIDEO_PLACEHOLDER

if TYPE_CHECKING:  # the video module is only needed when clips are really decoded
    from tcllava.video import Clip


@dataclass(frozen=True)
class Prompt:
    """One chat turn: optional system text, a user text with one `<video>` placeholder where the frames
    go, and an assistant prefix that primes the answer (e.g. "Best option:(")."""

    system: str | None
    user: str
    assistant_prefix: str = ""

    def __post_init__(self) -> None:
        if self.user.count(VIDEO_PLACEHOLDER) != 1:
            raise ValueError(f"Prompt.user must contain exactly one {VIDEO_PLACEHOLDER!r}: {self.user!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Predictor(Protocol):
    """Batched generation: returns, per sample, the text generated after `assistant_prefix`.

    May also define `describe() -> dict` (model path, config hash, generation settings); whatever it
    returns is stored in results.json so a number can be traced to the model that produced it.
    """

    def generate(self, clips: list[Clip], prompts: list[Prompt]) -> list[str]: ...


def describe_predictor(predictor: Predictor) -> dict[str, Any]:
    """The predictor's own description, or at least its class name."""
    info: dict[str, Any] = {"class": f"{type(predictor).__module__}.{type(predictor).__qualname__}"}
    describe = getattr(predictor, "describe", None)
    if callable(describe):
        info.update(describe())
    return info
