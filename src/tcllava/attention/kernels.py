"""Attention kernels for TC masks and the one dispatcher that picks among them.

All take q [B, Hq, Q, D], k and v [B, Hkv, T, D] (the queries are the last Q of the T tokens described by a
:class:`FrameLayout`) and return [B, Hq, Q, D].

- ``prefix``: exact and mask-free for frames. Under the prefix kinds every query's keys are a prefix
  [start, e(i)) of its sample, and all tokens of a frame share e(i) = end of the frame. So each frame is one
  *unmasked* attention call over its key prefix; text runs are causal calls. Memory is linear in T and the
  extra work over causal attention is only the upper triangles of the frames. On CPU the forward and
  backward call PyTorch's fused flash kernels per segment and accumulate key/value gradients in place.
- ``flex``: FlexAttention with a block mask (compiled on GPU; uncompiled it is an O(T^2) reference).
- ``sdpa``: SDPA with the dense [B, 1, Q, T] boolean mask (what transformers does by default).
- ``eager``: softmax(q k^T + additive float mask) v, the textbook reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tcllava.attention.layout import FrameLayout, QueryGroup

KERNELS = ("auto", "prefix", "flex", "sdpa", "eager")

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_cpu_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _local_rule(blocks: torch.Tensor, dtype: torch.dtype) -> tuple[bool, torch.Tensor | None]:
    """(is_causal, additive mask) for a group attending its own tokens under ``block(k) <= block(q)``.

    One frame needs no mask; pure text is SDPA's top-left causal; a mix gets a small float mask.
    """
    allowed = blocks[None, :] <= blocks[:, None]
    if bool(allowed.all()):
        return False, None
    if bool((blocks[1:] > blocks[:-1]).all()):
        return True, None
    bias = torch.zeros(allowed.shape, dtype=dtype, device=blocks.device)
    return False, bias.masked_fill_(~allowed, float("-inf"))


def _group_parts(group: QueryGroup, blocks: torch.Tensor, dtype: torch.dtype) -> list[tuple]:
    """Key ranges of one query group: the unmasked past [key_start, q0) and the local [q0, q1)."""
    is_causal, bias = _local_rule(blocks[group.batch, group.q0 : group.q1], dtype)
    parts = [(group.q0, group.q1, is_causal, bias)]
    if group.q0 > group.key_start:
        parts.insert(0, (group.key_start, group.q0, False, None))
    return parts


def _merge(o1, l1, o2, l2):
    """Combine two attention results over disjoint key sets by their log-sum-exp."""
    lse = torch.logaddexp(l1, l2)
    out = o1 * torch.exp(l1 - lse)[..., None].to(o1.dtype) + o2 * torch.exp(l2 - lse)[..., None].to(o2.dtype)
    return out, lse


class _PrefixAttentionCPU(torch.autograd.Function):
    """Per query group: fused flash attention over the past and local keys, merged by log-sum-exp.

    The backward calls the fused backward of each part with the *merged* output and log-sum-exp, which is
    exact (the softmax normaliser is the merged one). Autograd through the forward op's log-sum-exp would
    not be: PyTorch ignores gradients flowing into it.
    """

    @staticmethod
    def forward(ctx, q, k, v, groups: list[QueryGroup], blocks: torch.Tensor, query_start: int, scale: float):
        out = q.new_zeros(q.shape)
        lse = q.new_zeros(q.shape[:-1], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
        all_parts = []
        for group in groups:
            b, qs = slice(group.batch, group.batch + 1), slice(group.q0 - query_start, group.q1 - query_start)
            parts = _group_parts(group, blocks, q.dtype)
            merged = None
            for k0, k1, is_causal, bias in parts:
                o, part_lse = _flash_cpu(
                    q[b, :, qs], k[b, :, k0:k1], v[b, :, k0:k1], 0.0, is_causal, attn_mask=bias, scale=scale
                )
                merged = (o, part_lse) if merged is None else _merge(*merged, o, part_lse)
            out[b, :, qs], lse[b, :, qs] = merged
            all_parts.append(parts)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.groups, ctx.parts, ctx.query_start, ctx.scale = groups, all_parts, query_start, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for group, parts in zip(ctx.groups, ctx.parts, strict=True):
            b = slice(group.batch, group.batch + 1)
            qs = slice(group.q0 - ctx.query_start, group.q1 - ctx.query_start)
            for k0, k1, is_causal, bias in parts:
                gq, gk, gv = _flash_cpu_backward(
                    grad_out[b, :, qs],
                    q[b, :, qs],
                    k[b, :, k0:k1],
                    v[b, :, k0:k1],
                    out[b, :, qs],
                    lse[b, :, qs],
                    0.0,
                    is_causal,
                    attn_mask=bias,
                    scale=ctx.scale,
                )
                dq[b, :, qs] += gq
                dk[b, :, k0:k1] += gk
                dv[b, :, k0:k1] += gv
        return dq, dk, dv, None, None, None, None


def _groups_generic(q, k, v, layout: FrameLayout, scale: float) -> torch.Tensor:
    """The same query groups through autograd-aware SDPA with a [group, prefix] mask, for devices without
    the CPU fused ops (memory stays linear in T: one group's mask at a time)."""
    out = q.new_zeros(q.shape)
    for group in layout.groups:
        b, qs = group.batch, slice(group.q0 - layout.query_start, group.q1 - layout.query_start)
        blocks = layout.blocks[b].to(q.device)
        allowed = blocks[group.key_start : group.q1][None, :] <= blocks[group.q0 : group.q1][:, None]
        out[b, :, qs] = F.scaled_dot_product_attention(
            q[b : b + 1, :, qs],
            k[b : b + 1, :, group.key_start : group.q1],
            v[b : b + 1, :, group.key_start : group.q1],
            attn_mask=allowed,
            scale=scale,
        )[0]
    return out


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    if x.shape[1] == heads:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, heads // h, t, d).reshape(b, heads, t, d)


def prefix_attention(q, k, v, layout: FrameLayout, scale: float) -> torch.Tensor:
    if layout.groups is None:
        raise ValueError(
            f"the prefix kernel needs a prefix mask kind and contiguous padding (mask {layout.mask!r})"
        )
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    if q.device.type == "cpu":
        return _PrefixAttentionCPU.apply(q, k, v, layout.groups, layout.blocks, layout.query_start, scale)
    return _groups_generic(q, k, v, layout, scale)


_compiled_flex: Callable | None = None


def flex_attention(q, k, v, layout: FrameLayout, scale: float, compiled: bool | None = None) -> torch.Tensor:
    """FlexAttention over the layout's block mask. Compiled by default off CPU (where it is fast);
    uncompiled it materialises scores and serves as a CPU reference of the same mask logic."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention as flex

    if not layout.is_prefix:
        raise ValueError(f"the flex kernel implements the prefix kinds, not {layout.mask!r}")
    compiled = q.device.type != "cpu" if compiled is None else compiled
    if compiled and _compiled_flex is None:
        _compiled_flex = torch.compile(flex, dynamic=False)
    fn = _compiled_flex if compiled else flex
    return fn(
        q, k, v, block_mask=layout.block_mask(q.device), scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def sdpa_dense_attention(q, k, v, layout: FrameLayout, scale: float, dropout: float = 0.0) -> torch.Tensor:
    mask = layout.dense().to(q.device)[:, None]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def attention_weights(q, k, layout: FrameLayout, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) [B, Hq, Q, T]: the textbook weights (for references and plots)."""
    k = _repeat_kv(k, q.shape[1])
    allowed = layout.dense().to(q.device)[:, None]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    softmax_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    return torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(q.dtype)


def eager_dense_attention(q, k, v, layout: FrameLayout, scale: float, dropout: float = 0.0) -> torch.Tensor:
    weights = F.dropout(attention_weights(q, k, layout, scale), p=dropout, training=dropout > 0)
    return weights @ _repeat_kv(v, q.shape[1])


def _decode_attention(q, k, v, layout: FrameLayout, scale: float) -> torch.Tensor:
    """Text queries at the end of the sequence (decoding): causal over the cache is exact for every mask
    kind, since text rows are causal in all four. Only padding keys need masking."""
    mask = None
    if layout.has_padding:
        mask = layout.real.to(q.device)[:, None, None, :]
    if q.shape[2] > 1:
        causal = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(
            k.shape[2] - q.shape[2]
        )
        mask = causal if mask is None else mask & causal
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def choose_kernel(q: torch.Tensor, layout: FrameLayout, dropout: float = 0.0) -> str:
    """The one place that decides which kernel runs.

    Decoding text tokens -> plain SDPA over the cache. Non-prefix kinds or dropout -> SDPA + dense mask.
    Prefix kinds: FlexAttention compiled on CUDA, the exact prefix kernel elsewhere; without padding and with
    the causal kind, SDPA's own is_causal.
    """
    queries_are_text = bool((layout.frame_ids[:, layout.query_start :] < 0).all())
    if layout.query_start > 0 and queries_are_text:
        return "decode"
    if dropout > 0 or layout.groups is None:
        return "sdpa"
    if layout.mask == "causal" and not layout.has_padding and layout.query_start == 0:
        return "causal"
    if q.device.type == "cuda":
        return "flex"
    return "prefix"


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: FrameLayout,
    scale: float | None = None,
    kernel: str = "auto",
    dropout: float = 0.0,
) -> torch.Tensor:
    """TC attention: q [B, Hq, Q, D], k/v [B, Hkv, T, D] -> [B, Hq, Q, D]."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
    if k.shape[2] != layout.total_length or q.shape[2] != layout.query_length:
        raise ValueError(
            f"attention got {q.shape[2]} queries over {k.shape[2]} keys but the layout describes "
            f"{layout.query_length} queries over {layout.total_length} tokens (a sliding-window cache or a "
            "forward that bypassed the TC hook?)"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if kernel == "auto":
        kernel = choose_kernel(q, layout, dropout)
    if kernel == "decode":
        return _decode_attention(q, k, v, layout, scale)
    if kernel == "causal":
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    if kernel == "prefix":
        return prefix_attention(q, k, v, layout, scale)
    if kernel == "flex":
        return flex_attention(q, k, v, layout, scale)
    if kernel == "eager":
        return eager_dense_attention(q, k, v, layout, scale, dropout)
    return sdpa_dense_attention(q, k, v, layout, scale, dropout)
