"""Tiny random checkpoints in the published llava-hf layouts, written with transformers' save_pretrained."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

from tcllava.model.factory import build_image_processor, build_word_tokenizer

IMAGE_SIZE, PATCH = 28, 7  # a 4 x 4 patch grid
GRID = IMAGE_SIZE // PATCH
WORDS = [
    "describe",
    "the",
    "video",
    "what",
    "happens",
    "first",
    "then",
    "red",
    "green",
    "blue",
    "ball",
    "cup",
    "left",
    "right",
    "yes",
    "no",
]


def tokenizer():
    return build_word_tokenizer([" ".join(WORDS), "USER : ASSISTANT ? . , \n"], extra_tokens=["<video>"])


def _vision(kind: str = "clip"):
    sizes = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    if kind == "siglip":
        return SiglipVisionConfig(**sizes, vision_use_head=False)
    return CLIPVisionConfig(**sizes, projection_dim=16)


def _text(vocab: int, kind: str = "llama"):
    sizes = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
    )
    return Qwen2Config(**sizes) if kind == "qwen2" else LlamaConfig(**sizes)


def build(kind: str, path: Path, seed: int = 0):
    """Write a tiny checkpoint of ``kind`` (llava, llava_next, llava_next_video, llava_onevision) with a
    tokenizer and an image processor; returns the transformers model (eval mode, sdpa attention)."""
    tok = tokenizer()
    image_id, video_id = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<video>")
    common = dict(vision_feature_select_strategy="default", vision_feature_layer=-2)
    if kind == "llava":
        cls, cfg = (
            LlavaForConditionalGeneration,
            LlavaConfig(
                vision_config=_vision(),
                text_config=_text(len(tok)),
                image_token_index=image_id,
                image_seq_length=GRID * GRID,
                **common,
            ),
        )
    elif kind == "llava_next":
        cls, cfg = (
            LlavaNextForConditionalGeneration,
            LlavaNextConfig(
                vision_config=_vision(),
                text_config=_text(len(tok)),
                image_token_index=image_id,
                image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
                **common,
            ),
        )
    elif kind == "llava_next_video":
        cls, cfg = (
            LlavaNextVideoForConditionalGeneration,
            LlavaNextVideoConfig(
                vision_config=_vision(),
                text_config=_text(len(tok)),
                image_token_index=image_id,
                video_token_index=video_id,
                image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
                spatial_pool_stride=2,
                **common,
            ),
        )
    elif kind == "llava_onevision":
        cls, cfg = (
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionConfig(
                vision_config=_vision("siglip"),
                text_config=_text(len(tok), "qwen2"),
                image_token_index=image_id,
                video_token_index=video_id,
                image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
                vision_feature_select_strategy="full",
                vision_feature_layer=-1,
            ),
        )
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model = cls._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    with torch.no_grad():  # random init leaves some biases at zero; make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    build_image_processor(IMAGE_SIZE).save_pretrained(path)
    return model


def save_tiny_tcllava(
    path: Path, tok=None, pool_shape=(3, 2, 2), num_frames: int = 4, seed: int = 0, edit=None
) -> Path:
    """A small tcllava checkpoint made from scratch (TC attention on), saved with its processor.

    ``edit(model, tokenizer)`` may change weights before saving (e.g. to steer the output head)."""
    from tcllava.model import TCLlavaForConditionalGeneration, TCLlavaProcessor
    from tcllava.model.factory import tiny_config

    tok = tok or tokenizer()
    config = tiny_config(
        len(tok),
        tok.convert_tokens_to_ids("<image>"),
        image_size=32,
        patch_size=8,
        text_layers=2,
        text_hidden=64,
        heads=2,
        pool_shape=pool_shape,
        chat_template="plain",
        tc_attention={"gamma": 1.0},
    )
    torch.manual_seed(seed)
    model = TCLlavaForConditionalGeneration(config).eval()
    if edit is not None:
        with torch.no_grad():
            edit(model, tok)
    model.save_pretrained(path)
    TCLlavaProcessor(tok, build_image_processor(32), config, num_frames=num_frames).save_pretrained(path)
    return path
