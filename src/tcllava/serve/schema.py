"""The OpenAI chat-completions request as tcllava accepts it, its errors, and the response bodies.

Parsed by hand from the raw body (not by FastAPI's validation) so that every bad request gets OpenAI's
error object (``{"error": {"message", "type", "param", "code"}}``) with a message naming the field, never
FastAPI's own 422 format. Needs only pydantic.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SAMPLINGS = ("middle", "uniform", "random", "mvbench")  # tcllava.video.SAMPLINGS, without importing torch
MAX_STOP_SEQUENCES = 4


ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class APIError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # Unknown fields are ignored, as OpenAI's clients send new optional ones; those that would change the
    # answer and are not supported are refused explicitly below.
    model_config = ConfigDict(extra="ignore")


class MediaURL(_Strict):
    url: str


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: MediaURL


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: MediaURL


Part = Annotated[TextPart | VideoPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """``frames`` and ``sampling`` are tcllava's own fields (``extra_body`` in the openai client)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    frames: int | None = Field(None, ge=1)
    sampling: Literal[SAMPLINGS] = "middle"  # type: ignore[valid-type]
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | None = None
    tools: list[Any] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported (must be 0)")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tools are not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
            raise ValueError(f"up to {MAX_STOP_SEQUENCES} non-empty stop sequences")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _where(loc: tuple) -> str:
    """pydantic's error location as a field path: ``messages[0].content``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "str" or "[" in part or path.endswith(f".{part}"):
            continue  # which member of a union was tried (a tagged one repeats its tag): noise to a client
        else:
            path += f".{part}" if path else str(part)
    return path


def parse_chat_request(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        first = max(e.errors(), key=lambda error: len(error["loc"]))  # the most specific one
        field = _where(tuple(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{field}: {message}" if field else message, param=field or None) from None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    ident: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    ident: str,
    model: str,
    delta: dict[str, str] | None = None,
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> str:
    """One server-sent event in OpenAI's ``chat.completion.chunk`` format (no choices: the usage chunk)."""
    body: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if usage_ is not None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"
