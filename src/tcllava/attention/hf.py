"""Run any transformers LLaMA-family decoder (Llama, Mistral, Qwen2, ...) with TC attention.

Nothing is forked. Two pieces of transformers' own machinery carry it:
- an attention function registered in its ``AttentionInterface`` under the name ``"tcllava"``; every
  layer calls it with the layer's q, k, v and our ``tc_layout`` keyword, and it asks the dispatcher;
- a forward pre-hook on the model that turns ``frame_ids`` (plus the 2D padding mask) into the rotary
  positions of the position scheme and a :class:`FrameLayout` for the *whole* sequence seen so far. Because
  it re-derives them from the full padding mask at every call, generation with a KV cache, left padding and
  repeated ``generate`` calls stay correct with no state: generated tokens are text, so under ``tc`` each
  step's position grows by ``1 + gamma`` per sample.

Multi-axis schemes (M-RoPE, VideoRoPE) pass per-frequency positions [B, Q, F] as ``position_ids``, which
the model's rotary embedding, extended in place by :mod:`tcllava.attention.rotary`, turns into cos/sin.

Since ``"tcllava"`` is not in transformers' mask registry, transformers builds no N x N mask at all: the
layout replaces it, and FlashAttention backends are routed around instead of silently dropping the mask.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

from tcllava.attention.kernels import attend, attention_weights
from tcllava.attention.layout import FrameLayout
from tcllava.attention.rotary import install_multi_axis_rotary
from tcllava.attention.schemes import check_frame_grid, frequency_axes, per_frequency, scheme_positions
from tcllava.attention.settings import TCAttentionConfig

ATTN_IMPLEMENTATION = "tcllava"
# Keywords the pre-hook takes out of a call (the model's forward does not know them).
TC_CALL_KEYWORDS = ("frame_ids", "frame_grid")


def tc_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    tc_layout: FrameLayout | None = None,
    tc_kernel: str = "auto",
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface entry: [B, H, Q, D] in, [B, Q, H, D] out."""
    if tc_layout is None:
        raise RuntimeError(
            "a model with attn_implementation='tcllava' was called without a TC layout: call the model "
            "(model(...) or model.generate(...)), not model.forward, after tcllava.attention.enable_tc_attention"
        )
    out = attend(query, key, value, tc_layout, scale=scaling, kernel=tc_kernel, dropout=dropout)
    if _recorders:
        layer = getattr(module, "layer_idx", None)
        for layers, maps in _recorders:
            if layers is None or layer in layers:
                scale = scaling if scaling is not None else query.shape[-1] ** -0.5
                maps[layer] = attention_weights(query, key, tc_layout, scale).detach().cpu()
    return out.transpose(1, 2).contiguous(), None


_recorders: list[tuple[set[int] | None, dict[int, torch.Tensor]]] = []


@contextmanager
def record_attention(layers: set[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Collect the attention weights [B, H, Q, T] of TC-attention layers run inside the block (all
    layers, or those in ``layers``), computed densely: meant for plots and analysis of short prompts."""
    maps: dict[int, torch.Tensor] = {}
    entry = (layers, maps)
    _recorders.append(entry)
    try:
        yield maps
    finally:
        _recorders.remove(entry)


AttentionInterface.register(ATTN_IMPLEMENTATION, tc_attention_forward)


def _sequence_lengths(kwargs: dict[str, Any]) -> tuple[int, int, int]:
    tokens = kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if tokens is None:
        raise ValueError("TC attention needs input_ids or inputs_embeds")
    batch, query_length = tokens.shape[:2]
    return batch, query_length, cached_length(kwargs) + query_length


def cached_length(kwargs: dict[str, Any]) -> int:
    """Tokens already in the KV cache of a call: transformers up to 5.23 names it ``past_key_values``,
    from 5.24 ``cache`` (the old name still works there, deprecated)."""
    cache = kwargs.get("cache")
    if cache is None:
        cache = kwargs.get("past_key_values")
    return cache.get_seq_length() if cache is not None else 0


def prepare_tc_inputs(
    config: TCAttentionConfig,
    frame_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    batch: int,
    query_length: int,
    total_length: int,
    device: torch.device,
    frame_grid: tuple[int, int] | None = None,
    rotary_pairs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, FrameLayout]:
    """(attention_mask, position_ids for the queries, layout) for a call that adds ``query_length`` tokens
    to a sequence of ``total_length``. ``frame_ids`` may be shorter than the sequence: tokens past its
    end (generated ones) are text. Multi-axis schemes need ``frame_grid`` (H, W) of the visual tokens and
    the rotary embedding's frequency count ``rotary_pairs``; their position_ids are [B, Q, rotary_pairs]."""
    if attention_mask is None:
        attention_mask = torch.ones(batch, total_length, dtype=torch.long, device=device)
    if attention_mask.ndim != 2 or attention_mask.shape != (batch, total_length):
        raise ValueError(
            f"TC attention needs a 2D padding mask of shape {(batch, total_length)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    if frame_ids is None:
        frame_ids = torch.full((batch, total_length), -1, dtype=torch.long, device=device)
    frame_ids = frame_ids.to(device)
    if frame_ids.shape[0] != batch or frame_ids.shape[1] > total_length:
        raise ValueError(
            f"frame_ids shape {tuple(frame_ids.shape)} does not fit a sequence of {(batch, total_length)}"
        )
    if frame_ids.shape[1] < total_length:
        frame_ids = torch.nn.functional.pad(frame_ids, (0, total_length - frame_ids.shape[1]), value=-1)
    positions = scheme_positions(config, frame_ids, attention_mask, frame_grid)
    positions = positions[:, total_length - query_length :]
    if positions.ndim == 3:
        if rotary_pairs is None:
            raise ValueError(
                f"position_scheme {config.position_scheme!r} needs the model's rotary embedding (a single "
                "module named rotary_emb with an inv_freq buffer), which this model does not have"
            )
        positions = per_frequency(positions, frequency_axes(config.position_scheme, rotary_pairs))
    layout = FrameLayout(frame_ids, attention_mask.bool(), config.mask, query_length=query_length)
    return attention_mask, positions, layout


def _tc_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    config: TCAttentionConfig = module.tc_attention_config
    if args:  # bind positional arguments by name so that the hook can rewrite them
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
        kwargs = dict(bound.arguments)
        kwargs.update(kwargs.pop("kwargs", {}))
    frame_ids = kwargs.pop("frame_ids", None)
    frame_grid = kwargs.pop("frame_grid", None)
    frame_grid = check_frame_grid(frame_grid) if frame_grid is not None else module.tc_frame_grid
    batch, query_length, total_length = _sequence_lengths(kwargs)
    device = (
        kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
    ).device
    attention_mask, positions, layout = prepare_tc_inputs(
        config,
        frame_ids,
        kwargs.get("attention_mask"),
        batch,
        query_length,
        total_length,
        device,
        frame_grid=frame_grid,
        rotary_pairs=module.tc_rotary_pairs,
    )
    kwargs.update(
        attention_mask=attention_mask, position_ids=positions, tc_layout=layout, tc_kernel=config.kernel
    )
    return (), kwargs


def _validate_without_frame_ids(self: nn.Module, model_kwargs: dict[str, Any]) -> None:
    # generate() rejects keywords its forward signature does not name; frame_ids and frame_grid are consumed
    # by our hook.
    model_kwargs = {k: v for k, v in model_kwargs.items() if k not in TC_CALL_KEYWORDS}
    type(self)._validate_model_kwargs(self, model_kwargs)


def enable_tc_attention(
    model: nn.Module,
    config: TCAttentionConfig | None = None,
    frame_grid: tuple[int, int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Switch a transformers decoder to TC attention in place and return it.

    Afterwards ``model(input_ids, attention_mask=..., frame_ids=...)`` and ``model.generate(...,
    frame_ids=...)`` use the positions of the position scheme and the mask; without ``frame_ids`` every
    token is text. ``frame_grid=(h, w)``: the row-major grid of every frame's visual tokens, which the
    multi-axis schemes (``mrope``, ``videorope``) need; a call may also pass its own ``frame_grid=``.
    Calling again keeps the grid unless a new one is given. With ``gamma=0`` (or
    ``position_scheme="vanilla"``) and ``mask="causal"`` the model computes exactly what it did before.
    """
    config = (config or TCAttentionConfig()).replace(**overrides)
    if frame_grid is not None or not hasattr(model, "tc_frame_grid"):
        model.tc_frame_grid = check_frame_grid(frame_grid)
    if getattr(model, "tc_attention_config", None) is None:
        model.register_forward_pre_hook(_tc_pre_hook, with_kwargs=True)
        if hasattr(model, "_validate_model_kwargs"):
            model._validate_model_kwargs = types.MethodType(_validate_without_frame_ids, model)
    if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
        window = model.config.sliding_window
        layer_types = getattr(model.config, "layer_types", None) or []
        if "sliding_attention" in layer_types:
            raise ValueError(
                f"{type(model).__name__} uses sliding-window attention (window {window}) in some layers; "
                "TC attention supports full-attention layers only"
            )
    model.tc_attention_config = config
    model.tc_rotary_pairs = install_multi_axis_rotary(model)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model
