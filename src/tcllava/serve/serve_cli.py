"""`tcllava serve --model [NAME=]DIR ...`: the page and an OpenAI-compatible API in one local server."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tcllava.argtypes import non_negative_int, positive_float, positive_int

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a checkpoint directory as `tcllava chat` takes it; repeat to serve several (NAME: the folder's name)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=non_negative_int, default=8000, help="0: any free port")
    parser.add_argument("--media-dir", type=Path, default=None, help="the folder file:// video URLs may read")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TCLLAVA_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (and KEY as the page's password); "
        "default: $TCLLAVA_API_KEY",
    )
    parser.add_argument("--max-frames", type=positive_int, default=32, help="frames one request may hold")
    parser.add_argument("--max-video-mb", type=positive_float, default=100.0, help="largest video accepted")
    parser.add_argument("--max-batch", type=positive_int, default=16, help="requests batched in one generate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch's CPU threads (default: torch's own choice)"
    )
    parser.add_argument("--no-page", action="store_true", help="serve the API only (no Gradio import)")


def parse_models(specs: list[str]) -> list[tuple[str, Path]]:
    """``NAME=DIR`` or ``DIR`` (named after its folder); every name once, every directory present."""
    models: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and NAME.fullmatch(name) and not Path(spec).is_dir():
            path = Path(rest)
        else:
            path, name = Path(spec), Path(spec).resolve().name
        if not path.is_dir():
            raise ValueError(f"--model {spec}: {path} is not a directory")
        if not NAME.fullmatch(name):
            raise ValueError(
                f"--model {spec}: name {name!r} must be letters, digits and . _ : - (give NAME=DIR)"
            )
        if name in dict(models):
            raise ValueError(f"--model {spec}: the name {name!r} is used twice (give NAME=DIR)")
        models.append((name, path))
    return models


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"tcllava serve: {message}", file=sys.stderr)
        return 2

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        if not args.no_page:
            import gradio  # noqa: F401
    except ImportError as e:
        return fail(f"needs the serve extra: pip install 'tcllava[serve]' ({e.name} is missing)")
    from tcllava.model import CheckpointError
    from tcllava.serve.app import create_app, stderr_log
    from tcllava.serve.server import bind, is_loopback, make_server, url_of
    from tcllava.serve.service import Limits, Service, load_engines

    try:
        models = parse_models(args.model)
    except ValueError as e:
        return fail(str(e))
    if args.media_dir is not None and not args.media_dir.is_dir():
        return fail(f"--media-dir {args.media_dir}: not a directory")
    if not is_loopback(args.host):
        advice = "" if args.api_key else "; --api-key (or $TCLLAVA_API_KEY) is recommended"
        stderr_log(f"warning: listening on {args.host}: anyone who can reach it can use the models{advice}")
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        return fail(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    limits = Limits(args.max_frames, args.max_video_mb, args.max_batch, args.media_dir)
    start = time.perf_counter()
    examples_dir = Path(tempfile.mkdtemp(prefix="tcllava-examples-"))
    service = None
    try:
        engines = load_engines(models, args.device, args.dtype, args.max_batch, stderr_log)
        examples = []
        if not args.no_page:
            from tcllava.serve.examples import make_examples

            examples = make_examples(examples_dir)
        service = Service(engines, limits, examples)
        app = create_app(service, args.api_key, page=not args.no_page)
        stderr_log(
            f"{len(engines)} model(s) loaded in {time.perf_counter() - start:.1f} s; listening on {url_of(sock)} "
            f"(page: /, API: /v1/chat/completions, health: /health)"
        )
        make_server(app).run(sockets=[sock])
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as e:
        return fail(str(e))
    finally:
        if service is not None:
            service.close()
        sock.close()
        shutil.rmtree(examples_dir, ignore_errors=True)
    return 0
