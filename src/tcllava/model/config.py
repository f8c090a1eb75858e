"""`TCLlavaConfig`: the whole architecture as data, saved with every checkpoint.

A LLaVA (vision tower -> 2-layer MLP projector -> LLaMA-family LLM) with PLLaVA's adaptive pooling over
(frames, height, width) and the TC attention settings (one :class:`~tcllava.attention.TCAttentionConfig`,
saved as ``"tc_attention"``). Derived sizes (patch grid, tokens per frame) are properties so they can never
disagree with the fields they come from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from tcllava.attention import SETTINGS, TCAttentionConfig

# Config fields a user may change when loading a checkpoint (besides the TC settings): none of them
# changes the shape of a weight.
OVERRIDABLE = ("pool_shape", "pool_position", "freeze_vision_tower", "chat_template")
# The TC fields of checkpoints written before the settings became one object, and their names now.
_LEGACY_TC_FIELDS = {
    "gamma": "gamma",
    "attention_mask_kind": "mask",
    "text_after_video": "text_after_video",
    "attention_kernel": "kernel",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or mapped: the message names the directory and the problem."""


def read_config(path: Path) -> dict[str, Any]:
    """A model directory's ``config.json`` as a dict, or a :class:`CheckpointError` naming the file."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path}: no config.json (not a model directory)")
    try:
        values = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{file}: a config is a JSON object, got {type(values).__name__}")
    return values


@strict
class TCLlavaConfig(PreTrainedConfig):
    """Fields beyond LLaVA's own:

    - ``pool_shape`` (frames, height, width) of the adaptive average pooling; frames 0 keeps the input's
      frame count, and a video never gains frames (an image stays one frame). PLLaVA: (16, 12, 12).
    - ``pool_position``: ``"after_projector"`` (PLLaVA) or ``"before_projector"`` (LLaVA-NeXT-Video).
    - ``tc_attention``: the TC settings (``TCAttentionConfig.vanilla()`` is a vanilla LLaVA).
    - ``media_token_id``: the one placeholder token that marks every visual token (videos and images).
    """

    model_type = "tcllava"
    sub_configs_defaults = {  # noqa: RUF012  (transformers' class-level convention)
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    media_token_id: int = 32000
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    pool_shape: list[int] | tuple[int, ...] = (16, 12, 12)
    pool_position: Literal["after_projector", "before_projector"] = "after_projector"
    tc_attention: dict | TCAttentionConfig | None = None
    freeze_vision_tower: bool = True
    chat_template: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        legacy = {new: kwargs.pop(old) for old, new in _LEGACY_TC_FIELDS.items() if old in kwargs}
        super().__post_init__(**kwargs)
        if not isinstance(self.tc_attention, TCAttentionConfig):
            self.tc_attention = TCAttentionConfig.from_dict({**legacy, **(self.tc_attention or {})})
        self.check_pooling()
        if self.text_config.tie_word_embeddings:
            self.tie_word_embeddings = True

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["tc_attention"] = self.tc_attention.to_dict()
        return out

    def apply_overrides(self, **overrides: Any) -> None:
        """Change TC settings and the fields of :data:`OVERRIDABLE` in place, validated; any other name is
        an error that lists what may be changed (a misspelt setting never loads a different model)."""
        unknown = sorted(set(overrides) - set(SETTINGS) - set(OVERRIDABLE))
        if unknown:
            raise ValueError(
                f"unknown setting {unknown[0]!r}; a model accepts the TC settings {', '.join(SETTINGS)} "
                f"and {', '.join(OVERRIDABLE)}"
            )
        tc = {k: v for k, v in overrides.items() if k in SETTINGS}
        if tc:
            self.tc_attention = self.tc_attention.replace(**tc)
        for key in OVERRIDABLE:
            if key in overrides:
                setattr(self, key, overrides[key])
        self.check_pooling()

    def check_pooling(self) -> None:
        self.pool_shape = [int(x) for x in self.pool_shape]
        if len(self.pool_shape) != 3 or min(self.pool_shape) < 0 or min(self.pool_shape[1:]) < 1:
            raise ValueError(
                f"pool_shape must be (frames >= 0, height >= 1, width >= 1), got {self.pool_shape}"
            )
        if self.pool_position not in ("after_projector", "before_projector"):
            raise ValueError(
                f"pool_position must be after_projector or before_projector, got {self.pool_position!r}"
            )

    @property
    def grid_size(self) -> int:
        """Patches per side of the vision tower's feature map."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.pool_shape[1] * self.pool_shape[2]

    def pooled_frames(self, frames: int) -> int:
        """Frames left after temporal pooling for a clip of ``frames`` frames."""
        return frames if self.pool_shape[0] == 0 else min(frames, self.pool_shape[0])

    def media_tokens(self, frames: int) -> int:
        """Visual tokens a clip of ``frames`` frames becomes in the LLM's sequence."""
        return self.pooled_frames(frames) * self.tokens_per_frame

    @property
    def max_positions(self) -> int:
        """The LLM's trained context: the largest RoPE position it has seen is one less."""
        return int(self.text_config.max_position_embeddings)
