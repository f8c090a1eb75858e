"""Attention kernels for TC masks and the one dispatcher that picks among them.

All take q [B, Hq, Q, D], k and v [B, Hkv, T, D] (the queries are the last Q of the T tokens described by a
:class:`FrameLayout`) and return [B, Hq, Q, D].

- ``prefix``: exact, with no N x N mask. Under the prefix kinds every query's keys are a prefix
  [start, e(i)) of its sample, and all tokens of a frame share e(i) = end of the frame. So queries cut
  between frames see every earlier key: groups of queries make one *unmasked* call over their past, and
  small pieces of a group one call over the group's keys up to their end, masked by a small shared
  block-causal mask (none for a single frame, top-left causal for text). Samples of one layout share the
  calls, and a batch of short sequences is one masked call. Memory is linear in T. On CPU the forward and
  backward call PyTorch's fused flash kernels per call and merge the parts by log-sum-exp (the plan is
  built once per forward, :meth:`FrameLayout.prefix_plan`).
- ``flex``: FlexAttention with a block mask (compiled on GPU; uncompiled it is an O(T^2) reference).
- ``sdpa``: SDPA with the dense [B, 1, Q, T] boolean mask (what transformers does by default).
- ``eager``: softmax(q k^T + additive float mask) v, the textbook reference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tcllava.attention.layout import FrameLayout, PrefixPlan, PrefixSegment

KERNELS = ("auto", "prefix", "flex", "sdpa", "eager")

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_cpu_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _merge_into(out: torch.Tensor, lse: torch.Tensor, first: tuple, second: tuple) -> None:
    """Write the attention over the union of two disjoint key sets into ``out`` and ``lse``: lse is the
    logaddexp of theirs and out the weighted sum o1 * w1 + o2 * w2 with w = exp(lse_part - lse), which is
    lerp(o1, o2, w2) since w1 + w2 = 1 (one pass over the outputs)."""
    (o1, l1), (o2, l2) = first, second
    torch.logaddexp(l1, l2, out=lse)
    torch.lerp(o1, o2, torch.exp(l2 - lse)[..., None].to(o1.dtype), out=out)


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, D] laid out as [B, L, H, D] in memory, the layout the CPU flash kernels read and write
    (a no-op for their outputs and for what transformers passes in)."""
    return x if x.transpose(1, 2).is_contiguous() else x.transpose(1, 2).contiguous().transpose(1, 2)


def _zeros_token_major(x: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like x [B, H, L, D], laid out as the flash kernels' outputs (so that adding them is a
    contiguous add)."""
    b, h, length, d = x.shape
    return x.new_zeros(b, length, h, d).transpose(1, 2)


class _OnDemand:
    """Results of the plan's calls, computed when a segment first needs them and dropped after their last
    use, so that only about one group's results are alive at a time."""

    def __init__(self, plan: PrefixPlan, run: Callable[[int], tuple]):
        self.run, self.cache = run, {}
        self.uses = Counter(i for segment in plan.segments for i, _ in segment.parts)

    def parts(self, segment: PrefixSegment) -> list[tuple]:
        out = []
        for i, rows in segment.parts:
            if i not in self.cache:
                self.cache[i] = self.run(i)
            out.append(tuple(x[:, :, rows] for x in self.cache[i]))
            self.uses[i] -= 1
            if not self.uses[i]:
                del self.cache[i]
        return out


class _PrefixAttentionCPU(torch.autograd.Function):
    """The plan's fused flash calls, merged by log-sum-exp per output segment.

    The backward calls the fused backward of each call with the *merged* output and log-sum-exp, which is
    exact (the softmax normaliser is the merged one). Autograd through the forward op's log-sum-exp would
    not be: PyTorch ignores gradients flowing into it.
    """

    @staticmethod
    def forward(ctx, q, k, v, plan: PrefixPlan, scale: float):
        def run(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            c = plan.calls[i]
            q_, k_, v_ = q[c.batch, :, c.queries], k[c.batch, :, c.keys], v[c.batch, :, c.keys]
            return _flash_cpu(q_, k_, v_, 0.0, c.causal, attn_mask=c.bias, scale=scale)

        if _single(plan, q, k):
            out, lse = run(0)  # one call for everything: nothing to merge or copy
        else:
            batch, heads, queries, dim = q.shape
            empty = torch.empty if plan.complete else torch.zeros
            out = empty(batch, queries, heads, dim, dtype=q.dtype).transpose(1, 2)
            lse = empty(
                batch, heads, queries, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32
            )
            results = _OnDemand(plan, run)
            for segment in plan.segments:
                rows = (segment.batch, slice(None), segment.queries)
                parts = results.parts(segment)
                if len(parts) == 1:
                    out[rows], lse[rows] = parts[0]
                else:
                    _merge_into(out[rows], lse[rows], *parts)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        plan, grad_out = ctx.plan, _token_major(grad_out)

        def grads(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            c = plan.calls[i]
            rows = (c.batch, slice(None), c.queries)
            k_, v_ = k[c.batch, :, c.keys], v[c.batch, :, c.keys]
            return _flash_cpu_backward(
                grad_out[rows],
                q[rows],
                k_,
                v_,
                out[rows],
                lse[rows],
                0.0,
                c.causal,
                attn_mask=c.bias,
                scale=ctx.scale,
            )

        if _single(plan, q, k):
            return *grads(0), None, None
        dk, dv = _zeros_token_major(k), _zeros_token_major(v)

        def query_grad(i: int) -> tuple[torch.Tensor]:
            """Adds call i's key and value gradients in place, keeps its query gradient for the segments."""
            gq, gk, gv = grads(i)
            keys = (plan.calls[i].batch, slice(None), plan.calls[i].keys)
            dk[keys] += gk
            dv[keys] += gv
            return (gq,)

        # Every query row is in one segment: its gradient is the sum of its parts' (one or two).
        dq = (torch.empty_like if plan.complete else _zeros_token_major)(out)
        results = _OnDemand(plan, query_grad)
        for segment in plan.segments:
            rows = (segment.batch, slice(None), segment.queries)
            parts = [gq for (gq,) in results.parts(segment)]
            if len(parts) == 1:
                dq[rows] = parts[0]
            else:
                torch.add(*parts, out=dq[rows])
        return dq, dk, dv, None, None


def _single(plan: PrefixPlan, q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the plan is one call over every sample, query and key."""
    if len(plan.calls) != 1 or not plan.complete:
        return False
    call = plan.calls[0]
    return (
        call.batch.indices(q.shape[0]) == (0, q.shape[0], 1)
        and call.queries.indices(q.shape[2]) == (0, q.shape[2], 1)
        and call.keys.indices(k.shape[2]) == (0, k.shape[2], 1)
    )


def _groups_generic(q, k, v, layout: FrameLayout, scale: float) -> torch.Tensor:
    """The same query groups through autograd-aware SDPA with a [group, prefix] mask, for devices without
    the CPU fused ops (memory stays linear in T: one group's mask at a time)."""
    out = q.new_zeros(q.shape)
    for group in layout.groups:
        batch = slice(group.batch, group.batch + group.batches)
        queries = slice(group.q0 - layout.query_start, group.q1 - layout.query_start)
        keys = slice(group.key_start, group.q1)
        allowed = ~layout.blocked(group, group.q0, group.q1, keys).to(q.device)
        # Padding queries (of padded groups) see no key; SDPA would give NaN: let them see all, then zero them.
        blind = ~allowed.any(dim=2, keepdim=True)
        part = F.scaled_dot_product_attention(
            q[batch, :, queries],
            k[batch, :, keys],
            v[batch, :, keys],
            attn_mask=(allowed | blind)[:, None],
            scale=scale,
        )
        out[batch, :, queries] = part.masked_fill(blind[:, None], 0.0)
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
        return _PrefixAttentionCPU.apply(q, k, v, layout.prefix_plan(q.dtype, q.device), scale)
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
