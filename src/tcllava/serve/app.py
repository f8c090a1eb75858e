"""The FastAPI app: ``/health``, the OpenAI-compatible ``/v1`` API and, mounted at ``/``, the page.

Both the API and the page prepare requests with :class:`~tcllava.serve.service.Service` and answer them
through the same engines. Every refusal is OpenAI's error object with a 4xx status; one line per request
goes to the log (stderr).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tcllava.serve.engine import Delta, Done, Failed, Stream
from tcllava.serve.schema import DONE, APIError, chunk, completion, completion_id, parse_chat_request, usage
from tcllava.serve.service import Service

CHUNK_INTERVAL = 0.02  # seconds between the text chunks of one stream, at least


def stderr_log(line: str) -> None:
    print(f"tcllava serve: {line}", file=sys.stderr, flush=True)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it passes ``limit`` bytes (also without Content-Length)."""
    declared = request.headers.get("content-length")
    too_large = APIError(
        413,
        f"the request body is larger than the server's limit of {limit / 2**20:.0f} MB",
        None,
        "too_large",
    )
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return bytes(body)


def request_line(
    kind: str,
    model: str,
    status: int,
    seconds: float,
    frames: int = 0,
    done: Done | None = None,
    error: str = "",
) -> str:
    """The log line of one request: model, frames, prompt tokens, new tokens, batch size, seconds."""
    parts = [kind, f"model={model or '-'}", f"status={status}"]
    if done is not None:
        parts += [
            f"frames={frames}",
            f"prompt_tokens={done.prompt_tokens}",
            f"new_tokens={done.completion_tokens}",
            f"batch={done.batch_size}",
        ]
    parts.append(f"seconds={seconds:.3f}")
    if error:
        parts.append(f"error={error!r}")
    return " ".join(parts)


def create_app(
    service: Service,
    api_key: str | None = None,
    page: bool = True,
    log: Callable[[str], None] = stderr_log,
) -> FastAPI:
    app = FastAPI(title="tcllava serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                error = APIError(
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                    None,
                    "invalid_api_key",
                )
                log(f"{request.method} {request.url.path} status=401 error='invalid api key'")
                return error_response(error)
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(APIError(error.status_code, str(error.detail)))

    @app.get("/health")
    async def health() -> JSONResponse:
        down = [name for name, engine in service.engines.items() if not engine.alive]
        if down or not service.engines:
            return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
        return JSONResponse({"status": "ok", "models": service.names})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name) for name in service.names]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        service.engine(name)
        return _model_card(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        start = time.perf_counter()
        name = ""
        try:
            body = await read_body(request, service.limits.max_body_bytes)
            parsed = parse_chat_request(body)
            name = parsed.model
            loop = asyncio.get_running_loop()
            prepared, stream = await anyio.to_thread.run_sync(lambda: service.start(parsed, loop))
        except APIError as e:
            seconds = time.perf_counter() - start
            log(request_line("POST /v1/chat/completions", name, e.status, seconds, error=e.message))
            return error_response(e)
        except Exception as e:  # a fault of the server, not of the request: an error object all the same
            message = f"internal error: {type(e).__name__}: {e}"
            log(
                request_line(
                    "POST /v1/chat/completions", name, 500, time.perf_counter() - start, error=message
                )
            )
            return error_response(APIError(500, message, code="internal_error"))
        ident = completion_id()
        kind = "POST /v1/chat/completions" + (" stream" if parsed.stream else "")

        def finished(status: int, error: str = "") -> None:
            seconds = time.perf_counter() - start
            log(request_line(kind, name, status, seconds, prepared.frames, stream.result, error))

        if parsed.stream:
            events = _sse(stream, ident, name, parsed.include_usage, finished)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            async for event in stream:
                if isinstance(event, Failed):
                    finished(500, event.message)
                    return error_response(APIError(500, event.message, code="generation_failed"))
        finally:
            stream.cancel()  # the client went away before the answer: stop generating it
        done = stream.result
        assert done is not None
        finished(200)
        return JSONResponse(
            completion(ident, name, done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens)
        )

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(rest: str) -> JSONResponse:
        return error_response(
            APIError(404, f"no such endpoint /v1/{rest}; this server has /v1/models and /v1/chat/completions")
        )

    if page:
        from tcllava.serve.ui import mount_page

        mount_page(app, service, api_key, log)
    return app


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tcllava"}


async def _sse(
    stream: Stream, ident: str, model: str, include_usage: bool, finished: Callable[..., None]
) -> AsyncIterator[str]:
    """OpenAI's stream: a role chunk, text chunks, the finish reason, usage if asked, [DONE]. A text chunk
    is sent at most every ``CHUNK_INTERVAL`` s, with the tokens that came meanwhile: with many streams
    open, a chunk per token per stream would cost the event loop (and the GIL it shares with the model's
    thread) more than the tokens."""
    status, error = 499, "client went away"
    try:
        yield chunk(ident, model, {"role": "assistant", "content": ""})
        async for event in stream:
            if isinstance(event, Delta):
                yield chunk(ident, model, {"content": event.text})
                await asyncio.sleep(CHUNK_INTERVAL)
            elif isinstance(event, Done):
                yield chunk(ident, model, {}, event.finish_reason)
                if include_usage:
                    yield chunk(ident, model, usage_=usage(event.prompt_tokens, event.completion_tokens))
                status, error = 200, ""
            elif isinstance(event, Failed):
                yield f"data: {json.dumps(APIError(500, event.message, code='generation_failed').body())}\n\n"
                status, error = 500, event.message
        yield DONE
    finally:
        stream.cancel()
        finished(status, error)
