"""TC attention: temporal ids, dual-RoPE positions, the position schemes it is compared with (vanilla, M-RoPE,
VideoRoPE), the four frame masks, exact kernels and the dispatcher.

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
from tcllava.attention.rotary import install_multi_axis_rotary
from tcllava.attention.schemes import (
    MULTI_AXIS_SCHEMES,
    POSITION_SCHEMES,
    frame_step,
    frequency_axes,
    per_frequency,
    scheme_positions,
    text_step,
)
from tcllava.attention.settings import SETTINGS, TCAttentionConfig

__all__ = [
    "ATTN_IMPLEMENTATION",
    "KERNELS",
    "MASK_KINDS",
    "MULTI_AXIS_SCHEMES",
    "POSITION_SCHEMES",
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
    "frame_step",
    "frequency_axes",
    "install_multi_axis_rotary",
    "per_frequency",
    "prepare_tc_inputs",
    "record_attention",
    "rope_positions",
    "scheme_positions",
    "temporal_ids",
    "text_step",
    "token_positions",
]
