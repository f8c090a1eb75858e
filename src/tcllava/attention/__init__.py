"""TC attention: temporal ids, dual-RoPE positions, the four frame masks, exact kernels and the dispatcher.

Knows nothing about LLaVA: usable on any LLaMA-family decoder from transformers.
"""

from tcllava.attention.hf import (
    ATTN_IMPLEMENTATION,
    cached_length,
    enable_tc_attention,
    prepare_tc_inputs,
    record_attention,
)
from tcllava.attention.kernels import KERNELS, attend, choose_kernel
from tcllava.attention.layout import FrameLayout
from tcllava.attention.masks import MASK_KINDS, PREFIX_KINDS, dense_mask
from tcllava.attention.positions import block_ids, rope_positions, temporal_ids, token_positions
from tcllava.attention.settings import SETTINGS, TCAttentionConfig

__all__ = [
    "ATTN_IMPLEMENTATION",
    "KERNELS",
    "MASK_KINDS",
    "PREFIX_KINDS",
    "SETTINGS",
    "FrameLayout",
    "TCAttentionConfig",
    "attend",
    "block_ids",
    "cached_length",
    "choose_kernel",
    "dense_mask",
    "enable_tc_attention",
    "prepare_tc_inputs",
    "record_attention",
    "rope_positions",
    "temporal_ids",
    "token_positions",
]
