"""Two tiny checkpoints (TC and vanilla), clips and a server on a free local port, for the serve tests."""

from __future__ import annotations

import base64
from contextlib import contextmanager
from pathlib import Path

import torch

from hf_checkpoints import save_tiny_tcllava
from tcllava.video import write_video

QUESTIONS = ["what happens first ?", "describe the video .", "what happens then ?", "the red ball ?"]


def tiny_pair(root: Path) -> dict[str, Path]:
    """``tc``: a tiny TC-LLaVA (gamma 1, frame-wise block causal); ``vanilla``: another one (other random
    weights, so that the two answer differently) loaded with gamma 0 and the causal mask and saved."""
    from tcllava.model import load

    tc = save_tiny_tcllava(root / "tc")
    model, processor = load(save_tiny_tcllava(root / "vanilla_start", seed=1), gamma=0.0, mask="causal")
    model.save_pretrained(root / "vanilla")
    processor.save_pretrained(root / "vanilla")
    return {"tc": tc, "vanilla": root / "vanilla"}


def write_clip(path: Path, seed: int, frames: int = 12, size: int = 48) -> Path:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (frames, size, size + 8, 3), dtype=torch.uint8, generator=g)
    write_video(path, pixels.numpy(), fps=6)
    return path


def data_url(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def video_message(url: str, question: str) -> dict:
    return {
        "role": "user",
        "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
    }


@contextmanager
def serving(models: dict[str, Path], page: bool = False, api_key: str | None = None, **limits):
    """A server on a free port of 127.0.0.1 (uvicorn on a thread): yields (url, service, log lines)."""
    from tcllava.serve.app import create_app
    from tcllava.serve.server import BackgroundServer
    from tcllava.serve.service import Limits, Service, load_engines

    lines: list[str] = []
    limits = Limits(**limits)
    service = Service(load_engines(list(models.items()), max_batch=limits.max_batch), limits)
    if page:
        from tcllava.serve.examples import make_examples

        service.examples = make_examples(next(iter(models.values())).parent / "examples")
    app = create_app(service, api_key=api_key, page=page, log=lines.append)
    try:
        with BackgroundServer(app) as url:
            yield url, service, lines
    finally:
        service.close()


def reference_answer(model, conversation: list[dict], media: list, max_new_tokens: int) -> str:
    """What the model answers to a conversation (placeholders in its text, one clip per placeholder),
    computed with the processor and ``model.generate`` directly, without tcllava.serve."""
    processor = model.processor
    batch = processor([conversation], [media])
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=processor.stop_token_ids(),
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    return processor.decode(out[0, batch["input_ids"].shape[1] :])
