"""`TCLlavaConfig`: the whole architecture as data, saved with every checkpoint.

A LLaVA (vision tower -> 2-layer MLP projector -> LLaMA-family LLM) with PLLaVA's adaptive pooling over
(frames, height, width) and the TC attention settings. Derived sizes (patch grid, tokens per frame) are
properties so they can never disagree with the fields they come from.
"""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from tcllava.attention import TCAttentionConfig


@strict
class TCLlavaConfig(PreTrainedConfig):
    """Fields beyond LLaVA's own:

    - ``pool_shape`` (frames, height, width) of the adaptive average pooling; frames 0 keeps the input's
      frame count, and a video never gains frames (an image stays one frame). PLLaVA: (16, 12, 12).
    - ``pool_position``: ``"after_projector"`` (PLLaVA) or ``"before_projector"`` (LLaVA-NeXT-Video).
    - ``gamma``, ``attention_mask_kind``, ``text_after_video``, ``attention_kernel``: TC attention;
      ``gamma=0`` with ``"causal"`` is a vanilla LLaVA.
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
    gamma: float = 1.0
    attention_mask_kind: str = "frame_block_causal"
    text_after_video: str = "paper"
    attention_kernel: str = "auto"
    freeze_vision_tower: bool = True
    chat_template: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.pool_shape = [int(x) for x in self.pool_shape]
        if len(self.pool_shape) != 3 or min(self.pool_shape) < 0 or min(self.pool_shape[1:]) < 1:
            raise ValueError(
                f"pool_shape must be (frames >= 0, height >= 1, width >= 1), got {self.pool_shape}"
            )
        if self.text_config.tie_word_embeddings:
            self.tie_word_embeddings = True
        self.tc_attention  # noqa: B018  (validates the TC fields)

    @property
    def tc_attention(self) -> TCAttentionConfig:
        return TCAttentionConfig(
            gamma=self.gamma,
            mask=self.attention_mask_kind,
            text_after_video=self.text_after_video,
            kernel=self.attention_kernel,
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
