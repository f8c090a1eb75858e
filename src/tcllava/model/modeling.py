"""`TCLlavaForConditionalGeneration`: vision tower -> projector + pooling -> LLM with TC attention.

Composed from transformers' own classes (the vision tower and the causal LM are built from their configs
with ``AutoModel``/``AutoModelForCausalLM``); what is new here is the PLLaVA pooling, the visual-token
scatter, and handing the LLM the TC positions and :class:`~tcllava.attention.FrameLayout` computed from the
whole sequence at every call, so generation needs no state beyond the padding mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.activations import ACT2FN

from tcllava.attention import (
    ATTN_IMPLEMENTATION,
    SETTINGS,
    cached_length,
    install_multi_axis_rotary,
    prepare_tc_inputs,
)
from tcllava.model import generation
from tcllava.model.config import OVERRIDABLE, TCLlavaConfig, read_config
from tcllava.model.llava_hf import convert_state_dict, is_llava_hf, load_state_dict, tcllava_config_from_llava
from tcllava.model.processing import frame_ids_from_tokens

# One media item: [frames, 3, H, W] pixels (an image is one frame). A batch passes a list of them in the
# order their placeholders appear (row by row), or one [N, T, 3, H, W] tensor when all have T frames.
PixelValues = torch.Tensor | Sequence[torch.Tensor]


class TCLlavaProjector(nn.Module):
    """LLaVA's 2-layer MLP (named as in llava-hf checkpoints so weights map one to one)."""

    def __init__(self, in_features: int, out_features: int, act: str, bias: bool) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TCLlavaPreTrainedModel(PreTrainedModel):
    config_class = TCLlavaConfig
    config: TCLlavaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _skip_keys_device_placement = "past_key_values"


class TCLlavaForConditionalGeneration(TCLlavaPreTrainedModel, GenerationMixin):
    def __init__(self, config: TCLlavaConfig, **unknown) -> None:
        if unknown:  # what from_pretrained could not place: a misspelt setting must not load silently
            config.apply_overrides(**unknown)
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = TCLlavaProjector(
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
            config.projector_hidden_act,
            config.multimodal_projector_bias,
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        self.language_model.set_attn_implementation(ATTN_IMPLEMENTATION)
        # Multi-axis position schemes (docs/method.md 1.6) reach the LLM's own rotary embedding.
        self.tc_rotary_pairs = install_multi_axis_rotary(self.language_model)
        self.set_vision_trainable(not config.freeze_vision_tower)

    def set_vision_trainable(self, trainable: bool) -> None:
        """Train or freeze the vision tower. Its layers after the feature layer (and its final norm or
        pooling head) never reach the LLM, get no gradient, and stay frozen either way."""
        self.vision_tower.requires_grad_(trainable)
        if not trainable:
            return
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        layers = tower.encoder.layers
        first_unused = self.config.vision_feature_layer % (len(layers) + 1)
        for module in [
            *layers[first_unused:],
            getattr(tower, "post_layernorm", None),
            getattr(tower, "head", None),
        ]:
            if module is not None:
                module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A tcllava directory, or a llava-hf one (LLaVA-1.5, -NeXT, -NeXT-Video, -OneVision) whose weights
        are mapped strictly. TC settings (``gamma=0.0, mask="causal"``) and the fields of
        :data:`~tcllava.model.config.OVERRIDABLE` given as keywords change the loaded config."""
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in SETTINGS or k in OVERRIDABLE}
        path = Path(str(pretrained_model_name_or_path))
        if is_llava_hf(path):
            dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
            if args or kwargs:
                raise ValueError(
                    f"a llava-hf directory takes TC settings and dtype only, not {sorted(kwargs)}"
                )
            return cls.from_llava_hf(path, dtype=dtype, **overrides)
        if overrides:
            config = kwargs.pop("config", None) or TCLlavaConfig.from_pretrained(
                pretrained_model_name_or_path
            )
            config.apply_overrides(**overrides)
            kwargs["config"] = config
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_llava_hf(
        cls, path: str | Path, dtype: torch.dtype | None = None, **overrides
    ) -> TCLlavaForConditionalGeneration:
        """A llava-hf checkpoint's weights in a tcllava model, every key and shape checked."""
        config = tcllava_config_from_llava(read_config(path), **overrides)
        # Built in the target dtype, as transformers' own loading does: a model.to(bf16) afterwards would
        # also round the fp32 RoPE inv_freq buffers, which moves every rotary angle at long positions.
        model = cls._from_config(config, dtype=dtype)
        target = model.state_dict(keep_vars=True)
        model.load_state_dict(
            convert_state_dict(load_state_dict(Path(path)), target, str(path)), strict=False
        )
        if config.tie_word_embeddings:
            model.language_model.tie_weights()
        return model.eval()

    # -- embeddings plumbing expected by transformers (resize_token_embeddings, peft, generation) --
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # -- vision --
    def _pool(self, features: torch.Tensor, frames: int) -> torch.Tensor:
        """[N*T, P, D] patch features -> [N, T' * h * w, D] by adaptive average pooling over (T, H, W)."""
        grid = self.config.grid_size
        n = features.shape[0] // frames
        x = features.reshape(n, frames, grid, grid, -1).permute(0, 4, 1, 2, 3)  # [N, D, T, H, W]
        out_t = self.config.pooled_frames(frames)
        out_h, out_w = self.config.pool_shape[1:]
        if (out_t, out_h, out_w) != (frames, grid, grid):
            # Averaged in fp32 and rounded once, as transformers' LLaVA-NeXT-Video pools: bf16 pooling on the
            # CPU accumulates in bf16, one ulp off the exact mean.
            x = F.adaptive_avg_pool3d(x.float(), (out_t, out_h, out_w)).to(x.dtype)
        return x.permute(0, 2, 3, 4, 1).reshape(n, -1, x.shape[1])

    def encode_media(self, pixel_values: PixelValues) -> list[torch.Tensor]:
        """Visual tokens per media item, in input order: a list of [T' * h * w, d_llm] tensors."""
        items = list(pixel_values)
        out: list[torch.Tensor | None] = [None] * len(items)
        by_frames: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            if item.ndim == 3:
                item = items[i] = item[None]
            by_frames.setdefault(tuple(item.shape), []).append(i)
        frozen = not any(p.requires_grad for p in self.vision_tower.parameters())
        for shape, index in by_frames.items():
            frames = shape[0]
            pixels = torch.stack([items[i] for i in index]).flatten(0, 1)
            pixels = pixels.to(device=self.device, dtype=self.vision_tower.dtype)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                hidden = self.vision_tower(pixels, output_hidden_states=True).hidden_states
            features = hidden[self.config.vision_feature_layer]
            if self.config.vision_feature_select_strategy == "default":
                features = features[:, 1:]  # drop CLS
            if features.shape[1] != self.config.grid_size**2:
                raise ValueError(
                    f"vision tower gave {features.shape[1]} patches per frame, expected "
                    f"{self.config.grid_size**2} (check vision_feature_select_strategy and image size)"
                )
            if self.config.pool_position == "before_projector":
                tokens = self.multi_modal_projector(self._pool(features, frames))
            else:
                tokens = self._pool(self.multi_modal_projector(features), frames)
            for j, i in enumerate(index):
                out[i] = tokens[j]
        return out  # type: ignore[return-value]

    def frame_ids_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Frame ids from the placeholder tokens (media items are whole multiples of a frame)."""
        return frame_ids_from_tokens(input_ids, self.config.media_token_id, self.config.tokens_per_frame)

    def embed(self, input_ids: torch.Tensor, pixel_values: PixelValues | None) -> torch.Tensor:
        """Token embeddings with the visual tokens scattered in; counts must match exactly."""
        embeds = self.get_input_embeddings()(input_ids)
        media = input_ids == self.config.media_token_id
        placeholders = int(media.sum())
        if pixel_values is None or len(pixel_values) == 0:
            if placeholders:
                raise ValueError(f"input has {placeholders} media placeholder tokens but no pixel values")
            return embeds
        features = torch.cat(self.encode_media(pixel_values)).to(embeds.dtype)
        if features.shape[0] != placeholders:
            raise ValueError(
                f"visual tokens and placeholders differ: {features.shape[0]} features for {placeholders} "
                "placeholder tokens (a truncated prompt, or frames that do not match the processor's count)"
            )
        return embeds.masked_scatter(media[..., None], features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: PixelValues | None = None,
        attention_mask: torch.Tensor | None = None,
        frame_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """``frame_ids`` (-1 text) may cover only the prompt; tokens beyond it are text. Without it they are
        derived from ``input_ids``, which must then be the whole sequence (no cache)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.embed(input_ids, pixel_values_videos)
        if past_key_values is not None:  # transformers <= 5.23's name; 5.24 passes `cache` in kwargs
            kwargs["past_key_values"] = past_key_values
        past = cached_length(kwargs)
        if frame_ids is None:
            if past or input_ids is None:
                raise ValueError(
                    "pass frame_ids (from the processor) with inputs_embeds or when continuing from a cache: "
                    "the positions of new tokens depend on the frames of the whole prompt"
                )
            frame_ids = self.frame_ids_for(input_ids)
        batch, query_length = inputs_embeds.shape[:2]
        attention_mask, positions, layout = prepare_tc_inputs(
            self.config.tc_attention,
            frame_ids,
            attention_mask,
            batch,
            query_length,
            past + query_length,
            inputs_embeds.device,
            frame_grid=tuple(self.config.pool_shape[1:]),
            rotary_pairs=self.tc_rotary_pairs,
        )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            tc_layout=layout,
            tc_kernel=self.config.tc_attention.kernel,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: PixelValues | None = None,
        frame_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        # generate() hands us the whole sequence so far: derive frame ids from it at every step (generated
        # tokens are text), and send pixels only with the prefill. The cache stays in kwargs under the name
        # this transformers version uses (`past_key_values`, or `cache` from 5.24).
        if frame_ids is None:
            frame_ids = self.frame_ids_for(input_ids)
        prefill = cached_length(kwargs) == 0
        inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, frame_ids=frame_ids, **kwargs
        )
        inputs["pixel_values_videos"] = pixel_values_videos if prefill else None
        return inputs

    def chat(self, video, question: str, **kwargs) -> str:
        """Answer a question about a video (see :func:`tcllava.model.generation.chat`)."""
        return generation.chat(self, video, question, **kwargs)


AutoConfig.register(TCLlavaConfig.model_type, TCLlavaConfig, exist_ok=True)
AutoModel.register(TCLlavaConfig, TCLlavaForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(TCLlavaConfig, TCLlavaForConditionalGeneration, exist_ok=True)
