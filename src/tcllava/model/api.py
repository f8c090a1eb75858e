"""The user-facing entry points: ``load`` a checkpoint directory (tcllava, llava-hf or a LoRA adapter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tcllava.model.config import CheckpointError, TCLlavaConfig, read_config
from tcllava.model.llava_hf import SUPPORTED, check_weights
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
ADAPTER_CONFIG = "adapter_config.json"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """fp32 on CPU (bf16 is emulated and slow there, docs/method.md 6), bf16 on GPU, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def check_device(device: str) -> torch.device:
    """The device, or a clear error when this build of torch cannot use it."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch build or machine has no CUDA GPU; use --device cpu")
    return parsed


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, **overrides: Any
) -> TCLlavaForConditionalGeneration:
    """A tcllava checkpoint, loaded strictly (every key present, none unknown), or a llava-hf one mapped
    on the fly. ``overrides``: TC settings (the fields of ``TCAttentionConfig``: ``gamma``, ``mask``, ...) and the
    config fields of :data:`~tcllava.model.config.OVERRIDABLE`; any other name is an error."""
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        return load_adapter(path, dtype, **overrides)
    kind = read_config(path).get("model_type")
    if kind in SUPPORTED:
        return TCLlavaForConditionalGeneration.from_llava_hf(path, dtype=dtype, **overrides)
    if kind != TCLlavaConfig.model_type:
        raise CheckpointError(
            f"{path}: model_type {kind!r} is neither tcllava nor a llava-hf layout ({', '.join(SUPPORTED)})"
        )
    try:
        config = TCLlavaConfig.from_pretrained(path)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path / 'config.json'}: not a valid tcllava config ({e})") from None
    config.apply_overrides(**overrides)
    check_weights(path)
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


def adapter_base(path: Path) -> Path:
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: not a valid adapter config ({e})") from None
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
    """``model, processor = tcllava.load(path)``; the processor is also attached as ``model.processor``.
    ``overrides`` as for :func:`load_model` (``gamma=0.0, mask="causal"`` loads the vanilla variant)."""
    target = check_device(device)
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    model = load_model(path, resolve_dtype(dtype, target.type), **overrides).to(target)
    path = Path(path)
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    source = adapter_base(path) if (path / ADAPTER_CONFIG).is_file() and not has_tokenizer else path
    processor = TCLlavaProcessor.from_pretrained(source, config=model.config)
    if num_frames is not None:
        processor.num_frames = num_frames
    model.processor = processor
    return model, processor
