"""`FrameLayout`: what one forward pass knows about its sequence, built once and shared by every layer.

It holds the frame ids and padding of the *whole* sequence seen so far (cache + new tokens) and which of
those tokens are the current queries (the last ``query_length``). Kernels read the derived views they
need: block ids, the per-sample query segments of the exact prefix kernel, a dense mask, a flex block mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import torch

from tcllava.attention.masks import PREFIX_KINDS, check_kind, dense_mask
from tcllava.attention.positions import block_ids

# Queries per call of the prefix kernel. PyTorch's CPU flash kernel tiles queries by 256 only from 768 queries
# on (by 32 or 64 below), so one call per 144-token frame would run at small-tile speed.
GROUP_SIZE = 768


class QueryGroup(NamedTuple):
    """Queries [q0, q1) of sample ``batch``, whose keys are the prefix [key_start, end of q0..q1's blocks).

    Groups hold whole frames, so every key before q0 is visible to every query of the group ("past", no
    mask) and only the keys inside [q0, q1) need the block-causal rule ("local"). Indices are absolute.
    """

    batch: int
    q0: int
    q1: int
    key_start: int


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
        for b, (real, blocks) in enumerate(zip(self.real.tolist(), self.blocks.tolist(), strict=True)):
            if True not in real:
                continue
            start = real.index(True)
            end = len(real) - real[::-1].index(True)
            if not all(real[start:end]):
                return None
            out.extend(_sample_groups(b, start, end, blocks, max(start, self.query_start)))
        return out

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
    """Cut the queries [first_query, end) into groups of about GROUP_SIZE tokens, only between blocks
    (a frame is one block, every text token its own), so frames stay whole."""
    groups: list[QueryGroup] = []
    q0 = first_query
    while q0 < end:
        q1 = min(q0 + GROUP_SIZE, end)
        while q1 < end and blocks[q1] == blocks[q1 - 1]:
            q1 += 1
        groups.append(QueryGroup(batch, q0, q1, start))
        q0 = q1
    return groups
