"""The user-facing entry points: ``load`` a checkpoint directory, ``chat`` about a video."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tcllava.model.config import TCLlavaConfig
from tcllava.model.convert import SUPPORTED, CheckpointError, load_llava_hf, read_config
from tcllava.model.modeling import TCLlavaForConditionalGeneration
from tcllava.model.processing import TCLlavaProcessor

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """fp32 on CPU (bf16 is emulated and slow there, method.md 6), bf16 on GPU, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, **overrides: Any
) -> TCLlavaForConditionalGeneration:
    """A tcllava checkpoint, loaded strictly (every key present, none unknown), or a llava-hf one mapped
    on the fly. ``overrides`` replace config fields (e.g. ``gamma``, ``attention_mask_kind``)."""
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        return load_adapter(path, dtype, **overrides)
    kind = read_config(path).get("model_type")
    if kind in SUPPORTED:
        return load_llava_hf(path, dtype=dtype, **overrides)
    if kind != TCLlavaConfig.model_type:
        raise CheckpointError(
            f"{path}: model_type {kind!r} is neither tcllava nor a llava-hf layout ({', '.join(SUPPORTED)})"
        )
    config = TCLlavaConfig.from_pretrained(path)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"unknown config field {key!r}")
        setattr(config, key, value)
    config.tc_attention  # noqa: B018  (validate overrides)
    model, info = TCLlavaForConditionalGeneration.from_pretrained(
        path, config=config, dtype=dtype, output_loading_info=True
    )
    problems = {
        k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if problems:
        raise CheckpointError(f"{path}: weights do not match the config: {problems}")
    model.set_vision_trainable(not config.freeze_vision_tower)  # loading recreates the parameters
    return model.eval()


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: Path) -> Path:
    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise CheckpointError(f"{path}: LoRA adapter whose base model {base!r} is not a local directory")
    return Path(base)


def load_adapter(path: Path, dtype: torch.dtype, **overrides: Any) -> TCLlavaForConditionalGeneration:
    """A peft LoRA adapter directory (``save_final: adapter``): its base model with the adapter merged in."""
    from peft import PeftModel

    model = load_model(adapter_base(path), dtype, **overrides)
    return PeftModel.from_pretrained(model, path).merge_and_unload().eval()


def load(
    path: str | Path,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    num_frames: int | None = None,
    **overrides: Any,
) -> tuple[TCLlavaForConditionalGeneration, TCLlavaProcessor]:
    """``model, processor = tcllava.load(path)``; the processor is also attached as ``model.processor``."""
    model = load_model(path, resolve_dtype(dtype, device), **overrides).to(device)
    path = Path(path)
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    source = adapter_base(path) if (path / ADAPTER_CONFIG).is_file() and not has_tokenizer else path
    processor = TCLlavaProcessor.from_pretrained(source, config=model.config)
    if num_frames is not None:
        processor.num_frames = num_frames
    model.processor = processor
    return model, processor


def chat(
    model: TCLlavaForConditionalGeneration,
    video: str | Path | torch.Tensor,
    question: str,
    processor: TCLlavaProcessor | None = None,
    num_frames: int | None = None,
    system: str | None = None,
    answer_prefix: str = "",
    streamer: Any = None,
    on_progress: Callable[[str], None] | None = None,
    **generate_kwargs: Any,
) -> str:
    """Answer one question about a video file, an image file (one frame, as in training), or frames
    [T, H, W, 3]."""
    from tcllava.video import read_video
    from tcllava.video.images import IMAGE_SUFFIXES

    processor = processor or getattr(model, "processor", None)
    if processor is None:
        raise ValueError("no processor: load the model with tcllava.load(path) or pass processor=")
    frames = video
    if not isinstance(video, torch.Tensor):
        if on_progress:
            on_progress(f"decoding {video}")
        if num_frames is None:
            num_frames = 1 if Path(video).suffix.lower() in IMAGE_SUFFIXES else processor.num_frames
        frames = read_video(video, num_frames).frames
    placeholder = "<image>" if frames.ndim == 3 or frames.shape[0] == 1 else "<video>"
    batch = processor(
        processor.question(question, placeholder, system), [frames], answer_prefix=answer_prefix
    )
    if on_progress:
        on_progress(f"prefill of {batch['input_ids'].shape[1]} tokens")
    inputs = {k: (v.to(model.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    generate_kwargs.setdefault("max_new_tokens", 256)
    generate_kwargs.setdefault("eos_token_id", processor.stop_token_ids())
    generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    with torch.inference_mode():
        out = model.generate(**inputs, streamer=streamer, **generate_kwargs)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :])


def config_summary(config: TCLlavaConfig) -> dict[str, Any]:
    return {"tc_attention": dataclasses.asdict(config.tc_attention), "pool_shape": config.pool_shape}
