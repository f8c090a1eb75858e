"""`FrameLayout`: what one forward pass knows about its sequence, built once and shared by every layer.

It holds the frame ids and padding of the *whole* sequence seen so far (cache + new tokens) and which of
those tokens are the current queries (the last ``query_length``). Kernels read the derived views they
need: block ids, the query groups and call plan of the exact prefix kernel, a dense mask, a flex block mask.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from typing import NamedTuple

import torch

from tcllava.attention.masks import PREFIX_KINDS, check_kind, dense_mask
from tcllava.attention.positions import block_ids

# The exact prefix kernel cuts the queries, only between blocks, at two scales (sizes measured with
# benchmarks/attention.py, 512 to 16k tokens):
# - groups of at least GROUP_SIZE queries share one unmasked call over the keys before the group (their
#   "past"): PyTorch's CPU flash kernel uses its large query tiles only from 768 queries on;
# - pieces of about PIECE_SIZE queries of a group make one call over the group's keys up to their end: the
#   piece's own keys are a full masked square, twice the work they need, so pieces are small.
GROUP_SIZE = 768
PIECE_SIZE = 256


class QueryGroup(NamedTuple):
    """Queries [q0, q1) of samples [batch, batch + batches), whose keys are [key_start, end of q0..q1's blocks).

    Groups hold whole frames, so every key before q0 is visible to every query of the group ("past", no
    mask); ``cuts`` split the group into pieces [q0, c1), [c1, c2), ..., [ck, q1), again between blocks.
    Consecutive samples with identical layouts share their groups (one call for all of them). A ``padded``
    group is a whole batch of short sequences in one call: keys [key_start, q1) of every sample, padding
    masked. Indices are absolute.
    """

    batch: int
    q0: int
    q1: int
    key_start: int
    batches: int = 1
    padded: bool = False
    cuts: tuple[int, ...] = ()

    @property
    def pieces(self) -> list[tuple[int, int]]:
        bounds = [self.q0, *self.cuts, self.q1]
        return list(pairwise(bounds))


class PrefixCall(NamedTuple):
    """One fused attention call: ``queries`` (relative to the first query) of samples ``batch`` over ``keys``,
    with SDPA's top-left ``causal`` or an additive float ``bias``, or neither."""

    batch: slice
    queries: slice
    keys: slice
    causal: bool
    bias: torch.Tensor | None


class PrefixSegment(NamedTuple):
    """Output rows ``queries`` of samples ``batch``: the log-sum-exp merge of ``parts``, each (index of a
    call, its rows that belong here): a piece's own call, after its group's past call if there is one.
    The parts' keys are disjoint and together are the rows' keys."""

    batch: slice
    queries: slice
    parts: list[tuple[int, slice]]


class PrefixPlan(NamedTuple):
    """The fused calls of the prefix kernel and how their outputs combine. ``complete``: the segments cover
    every query row (no padding rows to zero)."""

    calls: list[PrefixCall]
    segments: list[PrefixSegment]
    complete: bool


@dataclass
class FrameLayout:
    """Frame ids [B, T] (-1 text), padding [B, T] (True = real token) and the mask kind for one forward.

    The queries are the last ``query_length`` tokens; keys are all T tokens (the KV cache holds the rest).
    """

    frame_ids: torch.Tensor
    real: torch.Tensor
    mask: str = "frame_block_causal"
    query_length: int | None = None
    _block_masks: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_kind(self.mask)
        if self.frame_ids.shape != self.real.shape:
            raise ValueError(
                f"frame_ids {tuple(self.frame_ids.shape)} and padding {tuple(self.real.shape)} differ"
            )
        self.real = self.real.bool()
        if self.mask == "causal":
            # Under the causal mask frames do not matter: every token is its own block.
            self.frame_ids = torch.full_like(self.frame_ids, -1)
        if self.query_length is None:
            self.query_length = self.total_length

    @property
    def total_length(self) -> int:
        return self.frame_ids.shape[1]

    @property
    def query_start(self) -> int:
        return self.total_length - self.query_length

    @property
    def is_prefix(self) -> bool:
        return self.mask in PREFIX_KINDS

    @cached_property
    def blocks(self) -> torch.Tensor:
        return block_ids(self.frame_ids, self.real)

    @cached_property
    def has_padding(self) -> bool:
        return not bool(self.real.all())

    @cached_property
    def groups(self) -> list[QueryGroup] | None:
        """Query groups of the exact prefix kernel, or None when it does not apply (a non-prefix mask
        kind, or padding that is not one contiguous run of real tokens per sample)."""
        if not self.is_prefix:
            return None
        out: list[QueryGroup] = []
        previous, count = None, 0  # layout (real run, its blocks) and group count of the last sample in out
        for b, (real, blocks) in enumerate(zip(self.real.tolist(), self.blocks.tolist(), strict=True)):
            if True not in real:
                previous = None
                continue
            start = real.index(True)
            end = len(real) - real[::-1].index(True)
            if not all(real[start:end]):
                return None
            sample = (start, end, blocks[start:end])
            if sample == previous:  # the same layout as the sample before: it joins that sample's groups
                out[-count:] = [g._replace(batches=g.batches + 1) for g in out[-count:]]
                continue
            groups = _sample_groups(b, start, end, blocks, max(start, self.query_start))
            out.extend(groups)
            previous, count = (sample, len(groups)) if groups else (None, 0)
        if len(out) > 1 and self.total_length <= min(GROUP_SIZE, PIECE_SIZE):
            # Short sequences that differ: one call for the whole batch, padding masked.
            return [QueryGroup(0, self.query_start, self.total_length, 0, len(self.real), padded=True)]
        return out

    def blocked(self, group: QueryGroup, q0: int, q1: int, keys: slice) -> torch.Tensor:
        """[samples or 1, q1 - q0, keys] bool, True where the block rule hides the key from the query
        (``block(key) > block(query)``) for queries [q0, q1) of the group. One sample stands for all unless
        the group is padded; then padding keys are hidden too."""
        rows = slice(group.batch, group.batch + (group.batches if group.padded else 1))
        blocks = self.blocks[rows]
        key_blocks = blocks[:, keys]
        if group.padded:
            key_blocks = key_blocks.masked_fill(~self.real[rows, keys], torch.iinfo(blocks.dtype).max)
        return key_blocks[:, None, :] > blocks[:, q0:q1, None]

    def prefix_plan(self, dtype: torch.dtype, device: torch.device) -> PrefixPlan:
        """The fused calls of the prefix kernel and their merge. Built once per layout, dtype and device:
        every layer of the forward shares it, masks included."""
        key = (dtype, str(device))
        if key not in self._plans:
            calls: list[PrefixCall] = []
            segments: list[PrefixSegment] = []
            masks: dict = {}
            for group in self.groups:
                self._plan_group(group, dtype, device, calls, segments, masks)
            complete = not self.has_padding or any(g.padded for g in self.groups)
            self._plans[key] = PrefixPlan(calls, segments, complete)
        return self._plans[key]

    def _plan_group(self, group: QueryGroup, dtype, device, calls: list, segments: list, masks: dict) -> None:
        """A group's calls: its queries over the past [key_start, q0) (one unmasked call); then per piece
        [a, b), one call over the group's keys up to it, [q0, b), under the block rule. Their masks are
        views of the group's [group, group] mask, shared by the groups of one pattern."""
        batch = slice(group.batch, group.batch + group.batches)

        def rows(q0: int, q1: int) -> slice:
            return slice(q0 - self.query_start, q1 - self.query_start)

        if group.padded:
            keys = slice(group.key_start, group.q1)
            calls.append(
                PrefixCall(batch, rows(group.q0, group.q1), keys, False, self._bias(group, dtype, device))
            )
            segments.append(PrefixSegment(batch, rows(group.q0, group.q1), [(len(calls) - 1, slice(None))]))
            return
        past = None
        if group.q0 > group.key_start:
            calls.append(
                PrefixCall(batch, rows(group.q0, group.q1), slice(group.key_start, group.q0), False, None)
            )
            past = len(calls) - 1
        blocks = self.blocks[group.batch, group.q0 : group.q1].tolist()
        for a, b in group.pieces:
            own = blocks[a - group.q0 : b - group.q0]
            causal, bias = False, None
            if own[0] == own[-1]:
                pass  # one frame: it sees the group's keys before it and all of its own
            elif a == group.q0 and len(set(own)) == len(own):
                causal = True  # pure text at the start of the group: SDPA's top-left causal
            else:
                pattern = (dtype, str(device), tuple(x - blocks[0] for x in blocks))
                if pattern not in masks:
                    masks[pattern] = self._bias(group, dtype, device)
                bias = masks[pattern][:, :, a - group.q0 : b - group.q0, : b - group.q0]
            calls.append(PrefixCall(batch, rows(a, b), slice(group.q0, b), causal, bias))
            parts = [] if past is None else [(past, slice(a - group.q0, b - group.q0))]
            segments.append(PrefixSegment(batch, rows(a, b), [*parts, (len(calls) - 1, slice(None))]))

    def _bias(self, group: QueryGroup, dtype, device) -> torch.Tensor:
        """[samples or 1, 1, queries, keys] additive float mask of the block rule over the group's own keys
        (all of its keys for a padded group)."""
        keys = slice(group.key_start, group.q1) if group.padded else slice(group.q0, group.q1)
        blocked = self.blocked(group, group.q0, group.q1, keys)
        inf, zero = torch.tensor(float("-inf"), dtype=dtype), torch.tensor(0.0, dtype=dtype)
        return torch.where(blocked, inf, zero)[:, None].to(device)

    def dense(self) -> torch.Tensor:
        """[B, Q, T] bool mask for the current queries. Padding queries may attend themselves only, so
        that no row is empty (an empty row is NaN in SDPA); their outputs are never used."""
        full = dense_mask(self.frame_ids, self.mask, self.real)
        index = torch.arange(self.total_length, device=full.device)
        full = full | ((~self.real)[:, :, None] & (index[:, None] == index[None, :]))
        return full[:, self.query_start :]

    def block_mask(self, device: torch.device):
        """FlexAttention ``BlockMask`` for ``block(key) <= block(query)`` over real keys (cached per device).

        Valid only for this layout's lengths, which is why it lives on the layout.
        """
        key = str(device)
        if key not in self._block_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            blocks = self.blocks.to(device)
            real = self.real.to(device)
            offset = self.query_start

            def mask_mod(b, h, q_idx, kv_idx):
                return real[b, kv_idx] & (blocks[b, kv_idx] <= blocks[b, q_idx + offset])

            batch = self.frame_ids.shape[0]
            self._block_masks[key] = create_block_mask(
                mask_mod, batch, None, self.query_length, self.total_length, device=device
            )
        return self._block_masks[key]


def _sample_groups(batch: int, start: int, end: int, blocks: list[int], first_query: int) -> list[QueryGroup]:
    """Cut the queries [first_query, end) into groups of about GROUP_SIZE tokens and those into pieces of
    about PIECE_SIZE, only between blocks (a frame is one block, every text token its own): frames stay
    whole."""
    piece = min(PIECE_SIZE, GROUP_SIZE)
    return [
        QueryGroup(batch, q0, q1, start, cuts=tuple(_cut(blocks, q0, q1, piece, at_least=False)[1:-1]))
        for q0, q1 in pairwise(_cut(blocks, first_query, end, GROUP_SIZE, at_least=True))
    ]


def _cut(blocks: list[int], q0: int, q1: int, size: int, at_least: bool) -> list[int]:
    """Bounds q0 < ... < q1, each the start of a block, that cut [q0, q1) into parts of about equal sizes
    near ``size`` (so no small remainder is left at the end): parts of at least ``size`` (one part if
    shorter) when ``at_least``, else cut at the block start nearest to each equal share."""
    starts = [i for i in range(q0 + 1, q1) if blocks[i] != blocks[i - 1]] + [q1]
    bounds = [q0]
    while bounds[-1] < q1:
        left = q1 - bounds[-1]
        target = bounds[-1] + left / max(1, left // size if at_least else round(left / size))
        i = bisect_left(starts, target)
        before = starts[i - 1] if i > 0 and starts[i - 1] > bounds[-1] else None
        near = not at_least and before is not None and target - before < starts[i] - target
        bounds.append(before if near else starts[i])
    return bounds
