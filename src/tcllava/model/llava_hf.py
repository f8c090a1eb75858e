"""The published llava-hf layouts (LLaVA-1.5, LLaVA-NeXT, LLaVA-NeXT-Video, LLaVA-OneVision), mapped onto tcllava.

Every source weight is either mapped to a tcllava weight of the same shape or dropped for a stated
reason; anything unknown, missing or of the wrong shape is an error listing the keys. The layout of the
published hub checkpoints (``vision_tower.vision_model.*``, ``language_model.model.*``,
``language_model.lm_head.*``, ``multi_modal_projector.*``) and the variants transformers 5 writes
(``vision_tower.*``, ``model.language_model.*``, ``lm_head.*``) are all understood.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from tcllava.model.config import CheckpointError, TCLlavaConfig, read_config

SUPPORTED = ("llava", "llava_next", "llava_next_video", "llava_onevision")

# (pattern, replacement); replacement None drops the weight (the reason is in the comment).
KEY_RULES: list[tuple[str, str | None]] = [
    # Hub checkpoints keep the tower's own "vision_model." level; transformers 5 drops it.
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$", r"vision_tower.\1"),
    (r"^(?:model\.)?multi_modal_projector\.(.+)$", r"multi_modal_projector.\1"),
    (r"^model\.language_model\.(.+)$", r"language_model.model.\1"),
    (r"^language_model\.model\.(.+)$", r"language_model.model.\1"),
    (r"^(?:language_model\.)?lm_head\.(.+)$", r"language_model.lm_head.\1"),
    # LLaVA-NeXT's row separator for any-resolution image tiles: tcllava feeds frames at the base
    # resolution, where LLaVA-NeXT-Video does not use it either.
    (r"^(?:model\.)?image_newline$", None),
]


def weight_files(path: Path) -> list[str]:
    """The safetensors files of a (possibly sharded) checkpoint directory."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e!r})") from None
    return [p.name for p in sorted(path.glob("*.safetensors"))]


def check_weights(path: Path) -> None:
    """Open every weight file's header (cheap, memory-mapped): a truncated or corrupt file is named here
    instead of failing deep inside a loader."""
    for name in weight_files(path):
        try:
            with safe_open(str(path / name), "pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path / name}: unreadable weights ({e}); the file is corrupt or truncated"
            ) from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint directory."""
    files = weight_files(path)
    if not files:
        raise CheckpointError(f"{path}: no .safetensors weights found")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state.update(load_file(str(path / name)))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path / name}: unreadable weights ({e}); the file is corrupt or truncated"
            ) from None
    return state


def map_key(key: str) -> str | None:
    for pattern, replacement in KEY_RULES:
        if re.match(pattern, key):
            return None if replacement is None else re.sub(pattern, replacement, key)
    raise KeyError(key)


def tcllava_config_from_llava(source: dict[str, Any], **overrides: Any) -> TCLlavaConfig:
    """A TCLlavaConfig equivalent to a llava-hf config; pooling follows the source family unless
    overridden (LLaVA-NeXT-Video pools stride x stride before the projector; the others take PLLaVA's
    (16, 12, 12) after it, the TC-LLaVA recipe). ``overrides`` are those of
    :meth:`TCLlavaConfig.apply_overrides`."""
    kind = source.get("model_type")
    if kind not in SUPPORTED:
        raise CheckpointError(f"model_type {kind!r} is not a supported LLaVA layout ({', '.join(SUPPORTED)})")
    vision = dict(source["vision_config"])
    layer = source.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"vision_feature_layer {layer!r}: only a single feature layer is supported")
    fields: dict[str, Any] = {
        "vision_config": vision,
        "text_config": source["text_config"],
        "media_token_id": source.get(
            "video_token_index" if kind == "llava_next_video" else "image_token_index"
        )
        or source.get("video_token_id")
        or source.get("image_token_id"),
        "vision_feature_layer": layer,
        "vision_feature_select_strategy": source.get("vision_feature_select_strategy", "default"),
        "projector_hidden_act": source.get("projector_hidden_act", "gelu"),
        "multimodal_projector_bias": source.get("multimodal_projector_bias", True),
        "tie_word_embeddings": source.get("tie_word_embeddings", False),
    }
    grid = vision.get("image_size", 336) // vision.get("patch_size", 14)
    if kind == "llava_next_video":
        if source.get("spatial_pool_mode", "average") != "average":
            raise CheckpointError(f"spatial_pool_mode {source['spatial_pool_mode']!r}: only 'average' maps")
        stride = source.get("spatial_pool_stride", 2)
        fields.update(pool_shape=(0, grid // stride, grid // stride), pool_position="before_projector")
    else:
        side = min(12, grid)
        fields.update(pool_shape=(16, side, side), pool_position="after_projector")
    config = TCLlavaConfig(**fields)
    config.apply_overrides(**overrides)
    return config


def convert_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str) -> dict:
    """Map source keys onto the target model's keys; every key and shape is checked."""
    mapped: dict[str, torch.Tensor] = {}
    unknown, mismatched = [], []
    for key, value in source.items():
        try:
            new = map_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            continue
        if new not in target:
            unknown.append(key)
        elif tuple(target[new].shape) != tuple(value.shape):
            mismatched.append(f"{key}: {tuple(value.shape)} vs {new}: {tuple(target[new].shape)}")
        else:
            mapped[new] = value
    missing = sorted(set(target) - set(mapped))
    # A tied output head is stored once, as the input embedding.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and _tied(target, k))]
    problems = []
    if unknown:
        problems.append(f"unknown keys ({len(unknown)}): {sorted(unknown)[:20]}")
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing[:20]}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched[:20]}")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    return mapped


def _tied(target: dict[str, torch.Tensor], key: str) -> bool:
    embed = key.replace("lm_head.weight", "model.embed_tokens.weight")
    return embed in target and target[embed].data_ptr() == target[key].data_ptr()


def is_llava_hf(path: str | Path) -> bool:
    """Whether ``path`` holds a checkpoint in one of the llava-hf layouts."""
    path = Path(path)
    return (path / "config.json").is_file() and read_config(path).get("model_type") in SUPPORTED
