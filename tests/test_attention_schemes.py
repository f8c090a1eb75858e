"""Position schemes (docs/method.md 1.6): every formula against a restatement written with loops, the rotary
frequency layouts, and the invariants every scheme keeps with every mask (vanilla = the unmodified model;
prefill + step-by-step decode = one full pass, with left padding, two videos in a prompt and a KV cache),
on a tiny Llama through enable_tc_attention and on a tiny TC-LLaVA."""

from __future__ import annotations

import argparse
import copy
import json
import math
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding, Qwen2VLTextConfig

from hf_checkpoints import save_tiny_tcllava
from tcllava.attention import (
    MASK_KINDS,
    POSITION_SCHEMES,
    TCAttentionConfig,
    dense_mask,
    enable_tc_attention,
    frequency_axes,
    install_multi_axis_rotary,
    per_frequency,
    rope_positions,
    scheme_positions,
    token_positions,
)
from tcllava.attention.settings import add_arguments, overrides_from

from conftest import pad_rows

SIZES = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,  # head_dim >= 32: FlexAttention gives NaN with 16 and grouped heads (docs/method.md 6)
    max_position_embeddings=512,
)
GRID = (2, 2)
# The worked example of docs/method.md 1.6: 3 text tokens, a video of 2 frames of 2 x 3 tokens, 2 text tokens.
WORKED = [("text", 3), ("video", 2), ("text", 2)]
WORKED_GRID = (2, 3)


# -- the restatement: each published rule written out with loops --------------------------------------------


def frame_row(segments, grid) -> list[int]:
    """frame_ids of one prompt, frames numbered along the row as the processor numbers them."""
    row, frame = [], 0
    for kind, n in segments:
        if kind == "text":
            row += [-1] * n
        else:
            for _ in range(n):
                row += [frame] * (grid[0] * grid[1])
                frame += 1
    return row


def reference(scheme: str, segments, grid, delta: float = 2.0) -> list[tuple[float, float, float]]:
    """(t, h, w) of every token. Text: (p, p, p), p + 1. A video starting at s, frame k, row r, column c:
    M-RoPE (Qwen2-VL get_rope_index): (s + k, s + r, s + c), text after it at the largest position + 1.
    VideoRoPE: t = s + delta k, (t, t + r - (H - 1) // 2, t + c - (W - 1) // 2), text after it at
    s + delta * frames."""
    height, width = grid
    out: list[tuple[float, float, float]] = []
    p = 0.0
    for kind, n in segments:
        if kind == "text":
            for _ in range(n):
                out.append((p, p, p))
                p += 1
            continue
        video = []
        for k in range(n):
            for r in range(height):
                for c in range(width):
                    if scheme == "mrope":
                        video.append((p + k, p + r, p + c))
                    else:
                        t = p + delta * k
                        video.append((t, t + r - (height - 1) // 2, t + c - (width - 1) // 2))
        out += video
        p = max(max(token) for token in video) + 1 if scheme == "mrope" else p + delta * n
    return out


def reference_axes(scheme: str, pairs: int) -> list[int]:
    """Axis (0 t, 1 h, 2 w) per frequency pair, highest first. M-RoPE: mrope_section (p/4, 3p/8, 3p/8) in
    order t, h, w. VideoRoPE: h, w, h, w, ... then the last quarter (lowest frequencies) t."""
    quarter = pairs // 4
    axes = []
    for i in range(pairs):
        if scheme == "mrope":
            axes.append(0 if i < quarter else 1 if i < quarter + (pairs - quarter) // 2 else 2)
        else:
            axes.append(0 if i >= pairs - quarter else 1 if i % 2 == 0 else 2)
    return axes


def random_segments(rng: random.Random, videos: int) -> list[tuple[str, int]]:
    segments = [("text", rng.randint(1, 4))]
    for _ in range(videos):
        segments += [("video", rng.randint(1, 3)), ("text", rng.randint(1, 3))]
    return segments


def batch_of(segment_rows, grid, side="left"):
    """(frame_ids, mask) of prompts padded to one length."""
    rows = [frame_row(s, grid) for s in segment_rows]
    frame_ids, mask = pad_rows(rows, side)
    return frame_ids, mask


def padded_reference(scheme, segment_rows, mask, grid, delta=2.0) -> torch.Tensor:
    out = torch.zeros(*mask.shape, 3)
    for b, segments in enumerate(segment_rows):
        out[b, mask[b].bool()] = torch.tensor(reference(scheme, segments, grid, delta))
    return out


# -- formulas ----------------------------------------------------------------------------------------------


def test_worked_example_of_the_docs():
    frame_ids = torch.tensor([frame_row(WORKED, WORKED_GRID)])
    mrope = scheme_positions(TCAttentionConfig(position_scheme="mrope"), frame_ids, None, WORKED_GRID)[0]
    assert mrope.T.tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 6, 7],
        [0, 1, 2, 3, 3, 3, 4, 4, 4, 3, 3, 3, 4, 4, 4, 6, 7],
        [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7],
    ]
    video = scheme_positions(TCAttentionConfig(position_scheme="videorope"), frame_ids, None, WORKED_GRID)[0]
    assert video.T.tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 5, 5, 7, 8],
        [0, 1, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 8],
        [0, 1, 2, 2, 3, 4, 2, 3, 4, 4, 5, 6, 4, 5, 6, 7, 8],
    ]
    for scheme, got in (("mrope", mrope), ("videorope", video)):
        assert got.tolist() == [list(p) for p in reference(scheme, WORKED, WORKED_GRID)]
    vanilla = scheme_positions(TCAttentionConfig(position_scheme="vanilla"), frame_ids)[0]
    assert vanilla.tolist() == list(range(17))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("grid", [(2, 2), (2, 3), (3, 1), (1, 4)])
@pytest.mark.parametrize("scheme,delta", [("mrope", 2.0), ("videorope", 2.0), ("videorope", 0.5)])
def test_random_prompts_with_several_videos_match_the_restatement(scheme, delta, grid, side):
    rng = random.Random(f"{scheme} {delta} {grid} {side}")
    segment_rows = [random_segments(rng, rng.randint(0, 3)) for _ in range(5)]
    frame_ids, mask = batch_of(segment_rows, grid, side)
    config = TCAttentionConfig(position_scheme=scheme, videorope_delta=delta)
    got = scheme_positions(config, frame_ids, mask, grid)
    assert torch.equal(got, padded_reference(scheme, segment_rows, mask, grid, delta))


def test_one_dimensional_schemes_are_the_existing_positions():
    rng = random.Random(0)
    segment_rows = [random_segments(rng, 2) for _ in range(3)]
    frame_ids, mask = batch_of(segment_rows, GRID)
    vanilla = TCAttentionConfig(position_scheme="vanilla", gamma=0.5)  # gamma is tc's: not read here
    assert torch.equal(scheme_positions(vanilla, frame_ids, mask), token_positions(mask).float())
    tc = TCAttentionConfig(gamma=0.5, text_after_video="next")
    assert torch.equal(scheme_positions(tc, frame_ids, mask), rope_positions(frame_ids, 0.5, mask, "next"))


def test_media_with_no_text_between_are_one_video():
    # An image right after a video continues its temporal axis (one run of visual tokens).
    together = [("text", 1), ("video", 3), ("text", 1)]
    frame_ids = torch.tensor([frame_row([("text", 1), ("video", 2), ("video", 1), ("text", 1)], GRID)])
    for scheme in ("mrope", "videorope"):
        got = scheme_positions(TCAttentionConfig(position_scheme=scheme), frame_ids, None, GRID)[0]
        assert got.tolist() == [list(p) for p in reference(scheme, together, GRID)]


def test_text_only_prompts_are_plain_positions_on_every_axis():
    ids, mask = pad_rows([[-1] * 5, [-1] * 3], "left")
    for scheme in ("mrope", "videorope"):
        got = scheme_positions(TCAttentionConfig(position_scheme=scheme), ids, mask)  # no grid needed
        assert torch.equal(got, token_positions(mask).float()[..., None].expand(-1, -1, 3))


# -- rotary frequencies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [64, 16, 20])
@pytest.mark.parametrize("scheme", ["mrope", "videorope"])
def test_frequency_axes_match_the_restatement(scheme, pairs):
    assert frequency_axes(scheme, pairs).tolist() == reference_axes(scheme, pairs)


def test_mrope_sections_for_head_dim_128_are_qwen2_vls():
    assert frequency_axes("mrope", 64).tolist() == [0] * 16 + [1] * 24 + [2] * 24
    assert frequency_axes("videorope", 64).tolist() == [1, 2] * 24 + [0] * 16


def _llama_rotary(head_dim: int = 128, **rope) -> LlamaRotaryEmbedding:
    config = LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, **rope},
    )
    return LlamaRotaryEmbedding(config)


def _holder(rotary) -> torch.nn.Module:
    holder = torch.nn.Module()
    holder.rotary_emb = rotary
    return holder


def test_llama_rotary_with_mrope_positions_equals_transformers_qwen2_vl_rotary():
    """An independent implementation of M-RoPE's frequency sections: transformers' Qwen2-VL rotary."""
    qwen = Qwen2VLRotaryEmbedding(
        Qwen2VLTextConfig(
            hidden_size=256,
            num_attention_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [16, 24, 24]},
        )
    )
    llama = _llama_rotary()
    assert install_multi_axis_rotary(_holder(llama)) == 64
    positions = torch.randint(0, 300, (3, 2, 9))  # Qwen2-VL's [axis, batch, length]
    want = qwen(torch.zeros(1), positions)
    got = llama(
        torch.zeros(1), per_frequency(positions.permute(1, 2, 0).float(), frequency_axes("mrope", 64))
    )
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w, g)


def test_per_frequency_rotary_against_a_loop_and_plain_positions_unchanged():
    rotary, untouched = _llama_rotary(64), _llama_rotary(64)
    install_multi_axis_rotary(_holder(rotary))
    plain = torch.arange(12.0).reshape(2, 6)
    for w, g in zip(untouched(torch.zeros(1), plain), rotary(torch.zeros(1), plain), strict=True):
        assert torch.equal(w, g)
    positions = torch.rand(2, 6, 32) * 100
    cos, sin = rotary(torch.zeros(1), positions)
    inv_freq = rotary.inv_freq.tolist()
    for b in range(2):
        for q in range(6):
            for i in range(32):
                angle = float(positions[b, q, i]) * inv_freq[i]
                for channel in (i, i + 32):  # rotate_half pairs channel i with i + F
                    assert math.isclose(cos[b, q, channel], math.cos(angle), abs_tol=2e-5)
                    assert math.isclose(sin[b, q, channel], math.sin(angle), abs_tol=2e-5)


def test_rotaries_that_multi_axis_positions_cannot_serve_are_refused():
    dynamic = _llama_rotary(64, rope_type="dynamic", factor=2.0)
    install_multi_axis_rotary(_holder(dynamic))
    with pytest.raises(ValueError, match="rope_type 'dynamic'"):
        dynamic(torch.zeros(1), torch.zeros(1, 3, 32))

    class Interleaved(torch.nn.Module):  # GPT-J layout: channel pairs (2i, 2i + 1)
        def __init__(self):
            super().__init__()
            self.register_buffer("inv_freq", _llama_rotary(64).inv_freq.clone(), persistent=False)

        def forward(self, x, position_ids):
            emb = (position_ids[..., None] * self.inv_freq).repeat_interleave(2, -1)
            return emb.cos(), emb.sin()

    other = Interleaved()
    install_multi_axis_rotary(_holder(other))
    with pytest.raises(ValueError, match="does not lay out its rotary frequencies"):
        other(torch.zeros(1), torch.arange(1.0, 4.0)[None, :, None].expand(1, 3, 32))


# -- equivalences on a tiny Llama --------------------------------------------------------------------------


def make_pair(seed: int = 0):
    config = LlamaConfig(**SIZES)
    torch.manual_seed(seed)
    base = LlamaForCausalLM._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    tc = LlamaForCausalLM._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    tc.load_state_dict(base.state_dict())
    return base, tc


TWO_VIDEOS = [
    [("text", 3), ("video", 3), ("text", 2), ("video", 1), ("text", 2)],  # a video and an image
    [("text", 2), ("video", 2), ("text", 3)],
]


def prompts(seed: int = 0):
    frame_ids, mask = batch_of(TWO_VIDEOS, GRID, "left")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, SIZES["vocab_size"], frame_ids.shape, generator=g), mask, frame_ids


def test_vanilla_scheme_equals_unmodified_model_and_multi_axis_on_text_too():
    base, tc = make_pair()
    input_ids, mask, frame_ids = prompts()
    with torch.no_grad():
        want = base(input_ids, attention_mask=mask).logits
        enable_tc_attention(tc, position_scheme="vanilla", mask="causal")  # gamma 1.0 is tc's, not read
        unpadded = input_ids[1:, mask[1].bool()]
        assert torch.equal(
            base(unpadded).logits, tc(unpadded, frame_ids=frame_ids[1:, mask[1].bool()]).logits
        )
        got = tc(input_ids, attention_mask=mask, frame_ids=frame_ids).logits
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], rtol=0, atol=2e-6)
        for scheme in ("mrope", "videorope"):  # text only: every axis is n, so the model is unchanged
            enable_tc_attention(tc, position_scheme=scheme, mask="causal")
            text = tc(input_ids, attention_mask=mask).logits
            torch.testing.assert_close(text[real], want[real], rtol=0, atol=2e-6)


def reference_rotary(positions: torch.Tensor, scheme: str, inv_freq: torch.Tensor):
    """cos/sin [B, L, D] of (t, h, w) positions, frequency i on axis reference_axes(i)."""
    axes = reference_axes(scheme, inv_freq.numel())
    angles = torch.stack([positions[..., a] * f for a, f in zip(axes, inv_freq.tolist(), strict=True)], -1)
    emb = torch.cat([angles, angles], -1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("scheme", ["mrope", "videorope"])
def test_multi_axis_changes_the_model_only_through_positions_and_mask(scheme):
    base, tc = make_pair()
    enable_tc_attention(tc, position_scheme=scheme, mask="frame_block_causal", frame_grid=GRID)
    input_ids, mask, frame_ids = prompts()
    # The unmodified model, given the dense mask and the restated rotary angles in place of its own.
    positions = padded_reference(scheme, TWO_VIDEOS, mask, GRID)
    cos_sin = reference_rotary(positions, scheme, base.model.rotary_emb.inv_freq)
    base.model.rotary_emb.register_forward_hook(lambda module, args, out: cos_sin)
    dense = dense_mask(frame_ids, "frame_block_causal", mask) | torch.eye(
        frame_ids.shape[1], dtype=torch.bool
    )
    with torch.no_grad():
        got = tc(input_ids, attention_mask=mask, frame_ids=frame_ids).logits
        want = base(input_ids, attention_mask=dense[:, None]).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


def _decode_equals_full(
    model, input_ids, mask, frame_ids, steps=4, vocab=SIZES["vocab_size"], avoid=-1, **extra
):
    """Logits of prefill + ``steps`` cached one-token steps equal one full pass (and are returned)."""
    g = torch.Generator().manual_seed(1)
    continuation = torch.randint(3, vocab, (input_ids.shape[0], steps), generator=g)
    continuation[continuation == avoid] = 3  # generated text never holds the media token
    full_ids = torch.cat([input_ids, continuation], 1)
    full_mask = torch.cat([mask, torch.ones_like(continuation)], 1)
    with torch.no_grad():
        full = model(input_ids=full_ids, attention_mask=full_mask, frame_ids=frame_ids, **extra).logits
        out = model(input_ids=input_ids, attention_mask=mask, frame_ids=frame_ids, use_cache=True, **extra)
        logits, cache = [out.logits[:, -1]], out.past_key_values
        for t in range(steps - 1):
            out = model(
                input_ids=continuation[:, t : t + 1],
                attention_mask=full_mask[:, : input_ids.shape[1] + t + 1],
                frame_ids=frame_ids,
                past_key_values=cache,
                use_cache=True,
            )
            logits.append(out.logits[:, -1])
    torch.testing.assert_close(
        torch.stack(logits, 1), full[:, input_ids.shape[1] - 1 : -1], rtol=1e-5, atol=1e-5
    )
    return full


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("scheme", POSITION_SCHEMES)
def test_prefill_then_decode_equals_one_full_pass_for_every_scheme_and_mask(scheme, mask_kind):
    _, tc = make_pair()
    enable_tc_attention(tc, position_scheme=scheme, mask=mask_kind, gamma=0.5, frame_grid=GRID)
    _decode_equals_full(tc, *prompts())


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_multi_axis_schemes_run_on_other_llama_family_decoders(family):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_cls._from_config(
        config_cls(**SIZES, sliding_window=None), attn_implementation="sdpa"
    ).eval()
    input_ids, mask, frame_ids = prompts()
    with torch.no_grad():
        plain = model(input_ids, attention_mask=mask).logits
    for scheme in ("mrope", "videorope"):
        enable_tc_attention(model, position_scheme=scheme, frame_grid=GRID)
        with torch.no_grad():
            text = model(input_ids, attention_mask=mask).logits
        torch.testing.assert_close(text[mask.bool()], plain[mask.bool()], rtol=0, atol=2e-6)
        _decode_equals_full(model, input_ids, mask, frame_ids)


@pytest.mark.parametrize("scheme", ["mrope", "videorope"])
def test_generated_tokens_continue_the_positions_exactly(scheme):
    _, tc = make_pair()
    enable_tc_attention(tc, position_scheme=scheme, frame_grid=GRID)
    input_ids, mask, frame_ids = prompts()
    seen = []
    tc.model.rotary_emb.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    tc.generate(input_ids, attention_mask=mask, frame_ids=frame_ids, max_new_tokens=4, do_sample=False)
    prompt = per_frequency(padded_reference(scheme, TWO_VIDEOS, mask, GRID), frequency_axes(scheme, 16))
    assert torch.equal(seen[0], prompt)
    for step, positions in enumerate(seen[1:], start=1):  # text after text: +1 on every axis
        assert torch.equal(positions[:, -1], prompt[:, -1] + step)


def test_batched_generate_with_left_padding_equals_one_by_one_for_each_scheme():
    _, tc = make_pair(seed=3)
    input_ids, mask, frame_ids = prompts()
    for scheme in POSITION_SCHEMES:
        enable_tc_attention(tc, position_scheme=scheme, frame_grid=GRID)
        together = tc.generate(
            input_ids, attention_mask=mask, frame_ids=frame_ids, max_new_tokens=4, do_sample=False
        )
        for b in range(2):
            real = mask[b].bool()
            alone = tc.generate(
                input_ids[b : b + 1, real],
                frame_ids=frame_ids[b : b + 1, real],
                max_new_tokens=4,
                do_sample=False,
            )
            assert torch.equal(alone[0, -4:], together[b, -4:]), scheme


def test_the_grid_is_required_checked_and_may_come_with_the_call():
    _, tc = make_pair()
    input_ids, mask, frame_ids = prompts()
    enable_tc_attention(tc, position_scheme="mrope")
    with torch.no_grad(), pytest.raises(ValueError, match="needs the frame grid"):
        tc(input_ids, attention_mask=mask, frame_ids=frame_ids)
    with torch.no_grad(), pytest.raises(ValueError, match=r"2 x 3 = 6 visual tokens, but some frames have 4"):
        tc(input_ids, attention_mask=mask, frame_ids=frame_ids, frame_grid=(2, 3))
    with pytest.raises(ValueError, match="frame_grid must be"):
        enable_tc_attention(tc, frame_grid=(2, 0))
    with torch.no_grad():
        per_call = tc(input_ids, attention_mask=mask, frame_ids=frame_ids, frame_grid=GRID).logits
        enable_tc_attention(tc, position_scheme="mrope", frame_grid=GRID)
        assert torch.equal(per_call, tc(input_ids, attention_mask=mask, frame_ids=frame_ids).logits)
        generated = tc.generate(
            input_ids, attention_mask=mask, frame_ids=frame_ids, max_new_tokens=2, do_sample=False
        )
        enable_tc_attention(tc, position_scheme="mrope")  # the grid stays
        again = tc.generate(
            input_ids, attention_mask=mask, frame_ids=frame_ids, max_new_tokens=2, do_sample=False
        )
        assert torch.equal(again, generated)
    _, fresh = make_pair()
    enable_tc_attention(fresh, position_scheme="mrope")  # no grid but the one each call brings
    per_call = fresh.generate(
        input_ids,
        attention_mask=mask,
        frame_ids=frame_ids,
        frame_grid=GRID,
        max_new_tokens=2,
        do_sample=False,
    )
    assert torch.equal(per_call, generated)


# -- settings ------------------------------------------------------------------------------------------------


def test_settings_validate_round_trip_and_come_as_flags():
    for bad, message in [
        ({"position_scheme": "rope3d"}, "position_scheme must be one of"),
        ({"videorope_delta": 0}, "videorope_delta must be a number > 0"),
        ({"videorope_delta": float("nan")}, "videorope_delta must be a number > 0"),
        ({"videorope_delta": True}, "videorope_delta must be a number > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            TCAttentionConfig(**bad)
    config = TCAttentionConfig(position_scheme="videorope", videorope_delta=1)
    assert config.videorope_delta == 1.0 and TCAttentionConfig.from_dict(config.to_dict()) == config
    assert TCAttentionConfig.from_dict({"gamma": 0.5}).position_scheme == "tc"  # checkpoints from before
    assert TCAttentionConfig(position_scheme="vanilla", mask="causal").is_vanilla
    assert not TCAttentionConfig(position_scheme="mrope", gamma=0, mask="causal").is_vanilla
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--position-scheme", "mrope", "--videorope-delta", "1.5"])
    assert overrides_from(args) == {"position_scheme": "mrope", "videorope_delta": 1.5}


# -- the tiny TC-LLaVA -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_tcllava(tmp_path_factory.mktemp("tiny_schemes"))


def _frames(count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 40, 48, 3), dtype=torch.uint8, generator=g)


def _batch(processor):
    conversations = [
        [{"role": "user", "content": "<video>\nwhat happens first ?"}],
        [{"role": "user", "content": "<video>\n<image>\ndescribe the video . what happens then ?"}],
    ]
    clips = [[_frames(4, 1)], [_frames(2, 2), _frames(1, 3)]]
    return conversations, clips, processor(conversations, clips)


@pytest.mark.parametrize("scheme", POSITION_SCHEMES)
def test_tcllava_decode_equals_full_pass_under_every_mask_and_generates_batched_as_alone(
    tiny, scheme, tmp_path
):
    from tcllava.model import load

    model, processor = load(tiny, position_scheme=scheme)
    conversations, clips, batch = _batch(processor)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # left padding in row 0
    pixels = batch.pop("pixel_values_videos")
    vocab = model.config.text_config.vocab_size
    fulls = []
    for mask_kind in MASK_KINDS:
        model.config.tc_attention = model.config.tc_attention.replace(mask=mask_kind)
        fulls.append(
            _decode_equals_full(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                batch["frame_ids"],
                vocab=vocab,
                avoid=model.config.media_token_id,
                pixel_values_videos=pixels,
            )
        )
    assert (fulls[0] - fulls[-1]).abs().max() > 1e-4  # the masks really differ under this scheme
    model.config.tc_attention = model.config.tc_attention.replace(mask="frame_block_causal")
    kwargs = dict(
        max_new_tokens=4, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=None
    )
    together = model.generate(**processor(conversations, clips), **kwargs)
    for b in range(2):
        alone = model.generate(**processor([conversations[b]], [clips[b]]), **kwargs)
        assert torch.equal(alone[0, -4:], together[b, -4:])
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tc_attention"]["position_scheme"] == scheme


def test_tcllava_schemes_differ_and_the_context_check_counts_their_positions(tiny):
    from tcllava.model import PromptTooLong, load

    logits = {}
    for scheme in POSITION_SCHEMES:
        model, processor = load(tiny, position_scheme=scheme, gamma=1.0)
        _, _, batch = _batch(processor)
        with torch.no_grad():
            logits[scheme] = model(**batch).logits
        ids = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
        processor.check_context(ids, max_new_tokens=8)
        with pytest.raises(PromptTooLong):
            processor.check_context(ids, max_new_tokens=model.config.max_positions)
    for a in POSITION_SCHEMES:
        for b in POSITION_SCHEMES:
            if a < b:
                assert (logits[a] - logits[b]).abs().max() > 1e-4, (a, b)
