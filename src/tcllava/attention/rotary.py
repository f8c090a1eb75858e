"""Multi-axis positions through a LLaMA-family model's own rotary embedding (docs/method.md 1.6).

A LLaMA-family decoder computes ``cos, sin = model.rotary_emb(x, position_ids)`` once per forward and hands
them to every layer; frequency pair ``i`` turns by ``position * inv_freq[i]``. Multi-axis schemes (M-RoPE,
VideoRoPE) give each frequency the position of its own axis. Instead of forking the model, the rotary
module's forward is extended in place: ``position_ids`` of shape [B, Q] run the model's own code unchanged,
and [B, Q, F] *per-frequency* positions (F = ``inv_freq.numel()``) turn pair ``i`` by
``positions[..., i] * inv_freq[i]``, with the module's own ``inv_freq`` and ``attention_scaling``. The module,
its buffers and their names stay as they were.
"""

from __future__ import annotations

import types

import torch
from torch import nn

# RoPE types whose forward changes inv_freq with the sequence length: per-frequency positions bypass that code.
_LENGTH_DEPENDENT = ("dynamic", "longrope")


def find_rotary(model: nn.Module) -> nn.Module | None:
    """The decoder's one rotary embedding (a module named ``rotary_emb`` with an ``inv_freq`` buffer)."""
    found = [
        module
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "rotary_emb"
        and isinstance(getattr(module, "inv_freq", None), torch.Tensor)
    ]
    return found[0] if len(found) == 1 else None


def install_multi_axis_rotary(model: nn.Module) -> int | None:
    """Let the model's rotary embedding take per-frequency positions [B, Q, F] as well; returns F, or None
    when the model has no single rotary embedding to extend (multi-axis schemes are then refused)."""
    rotary = find_rotary(model)
    if rotary is None:
        return None
    if not getattr(rotary, "_tc_multi_axis", False):
        rotary._tc_plain_forward = rotary.forward
        rotary.forward = types.MethodType(_forward, rotary)
        rotary._tc_multi_axis = True
        rotary._tc_layout_checked = False
    return int(rotary.inv_freq.numel())


def _forward(
    self: nn.Module, x: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if position_ids.ndim != 3:
        return self._tc_plain_forward(x, position_ids)
    if getattr(self, "rope_type", "default") in _LENGTH_DEPENDENT:
        raise ValueError(
            f"multi-axis position schemes do not support rope_type {self.rope_type!r}, whose frequencies change "
            "with the sequence length; use position_scheme tc or vanilla"
        )
    if position_ids.shape[-1] != self.inv_freq.numel():
        raise ValueError(
            f"per-frequency positions have {position_ids.shape[-1]} frequencies, the rotary embedding "
            f"{self.inv_freq.numel()}"
        )
    if not self._tc_layout_checked:
        _check_layout(self, x, position_ids)
    return _cos_sin(self, x, position_ids)


@torch.no_grad()
def _cos_sin(
    rotary: nn.Module, x: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    angles = positions.float() * rotary.inv_freq.to(device=x.device, dtype=torch.float)
    emb = torch.cat((angles, angles), dim=-1)
    scale = getattr(rotary, "attention_scaling", 1.0)
    return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)


@torch.no_grad()
def _check_layout(rotary: nn.Module, x: torch.Tensor, positions: torch.Tensor) -> None:
    """Once per module: on 1-D positions the per-frequency path must give what the model's own code gives,
    or the model lays out its rotary channels differently and a multi-axis scheme would silently be wrong."""
    probe = positions[:1, :8, 0].float()
    x = x.new_empty(0, dtype=torch.float32)
    want = rotary._tc_plain_forward(x, probe)
    got = _cos_sin(rotary, x, probe[..., None].expand(*probe.shape, positions.shape[-1]))
    if not all(
        w.shape == g.shape and torch.allclose(w, g, rtol=0, atol=1e-5) for w, g in zip(want, got, strict=True)
    ):
        raise ValueError(
            f"{type(rotary).__name__} does not lay out its rotary frequencies as LLaMA does (cat(freqs, freqs)); "
            "multi-axis position schemes cannot be used with this model"
        )
    rotary._tc_layout_checked = True
