"""TC attention on real transformers decoders (Llama, Qwen2, Mistral): equivalence, decoding, behaviour."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tcllava.attention import TCAttentionConfig, cached_length, enable_tc_attention, rope_positions

from conftest import pad_rows, video_layout

SIZES = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,  # head_dim >= 32: FlexAttention gives NaN with 16 and grouped heads (docs/method.md 6)
    max_position_embeddings=512,
)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
}


def make_pair(family: str = "llama", seed: int = 0):
    """The same random weights twice: an unmodified sdpa model and one to switch to TC attention."""
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(**SIZES, **extra)
    torch.manual_seed(seed)
    base = model_cls._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    tc = model_cls._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    tc.load_state_dict(base.state_dict())
    return base, tc


def prompts(lengths=((3, 4, 5, 4), (6, 4, 5, 2)), seed=0):
    rows = [video_layout(*shape) for shape in lengths]
    frame_ids, mask = pad_rows(rows, "left")
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, SIZES["vocab_size"], frame_ids.shape, generator=g)
    return input_ids, mask, frame_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_vanilla_settings_equal_unmodified_model(family):
    base, tc = make_pair(family)
    enable_tc_attention(tc, gamma=0.0, mask="causal")
    input_ids, mask, frame_ids = prompts()
    with torch.no_grad():
        unpadded = input_ids[:1]
        assert torch.equal(base(unpadded).logits, tc(unpadded, frame_ids=frame_ids[:1]).logits)
        want = base(input_ids, attention_mask=mask).logits
        got = tc(input_ids, attention_mask=mask, frame_ids=frame_ids).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=2e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_tc_changes_the_model_only_through_positions_and_mask(family):
    base, tc = make_pair(family)
    enable_tc_attention(tc, gamma=1.0, mask="frame_block_causal")
    input_ids, mask, frame_ids = prompts()
    with torch.no_grad():
        got = tc(input_ids, attention_mask=mask, frame_ids=frame_ids).logits
        # The reference: the unmodified model given the TC positions and the dense TC mask as a 4D mask.
        from tcllava.attention import dense_mask

        positions = rope_positions(frame_ids, 1.0, mask)
        dense = dense_mask(frame_ids, "frame_block_causal", mask)
        dense = dense | torch.eye(dense.shape[-1], dtype=torch.bool)  # padding rows attend themselves
        want = base(input_ids, attention_mask=dense[:, None], position_ids=positions).logits
        vanilla = base(input_ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    assert (got[real] - vanilla[real]).abs().max() > 1e-3


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_prefill_then_step_by_step_decode_equals_one_full_pass(gamma, family):
    _, tc = make_pair(family)
    enable_tc_attention(tc, gamma=gamma, mask="frame_block_causal")
    input_ids, mask, frame_ids = prompts()
    steps = 5
    g = torch.Generator().manual_seed(1)
    continuation = torch.randint(3, SIZES["vocab_size"], (2, steps), generator=g)
    full_ids = torch.cat([input_ids, continuation], 1)
    full_mask = torch.cat([mask, torch.ones_like(continuation)], 1)
    with torch.no_grad():
        full = tc(full_ids, attention_mask=full_mask, frame_ids=frame_ids).logits
        out = tc(input_ids, attention_mask=mask, frame_ids=frame_ids, use_cache=True)
        logits, cache = [out.logits[:, -1]], out.past_key_values
        for t in range(steps - 1):
            step_mask = full_mask[:, : input_ids.shape[1] + t + 1]
            out = tc(
                continuation[:, t : t + 1],
                attention_mask=step_mask,
                frame_ids=frame_ids,
                past_key_values=cache,
                use_cache=True,
            )
            logits.append(out.logits[:, -1])
    want = full[:, input_ids.shape[1] - 1 : -1]
    torch.testing.assert_close(torch.stack(logits, 1), want, rtol=1e-5, atol=1e-5)


def test_generated_positions_advance_by_one_plus_gamma_per_sample():
    _, tc = make_pair("llama")
    gamma = 0.5
    enable_tc_attention(tc, gamma=gamma)
    input_ids, mask, frame_ids = prompts()
    seen = []
    tc.model.rotary_emb.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    tc.generate(input_ids, attention_mask=mask, frame_ids=frame_ids, max_new_tokens=4, do_sample=False)
    prompt_positions = rope_positions(frame_ids, gamma, mask)
    assert torch.equal(seen[0], prompt_positions)
    last = prompt_positions[:, -1]
    for step, positions in enumerate(seen[1:], start=1):
        assert torch.allclose(positions[:, -1], last + step * (1 + gamma))


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_batched_generate_with_left_padding_equals_greedy_full_passes_and_repeats(gamma):
    _, tc = make_pair("llama", seed=3)
    enable_tc_attention(tc, gamma=gamma)
    input_ids, mask, frame_ids = prompts()
    new = 6
    first = tc.generate(
        input_ids, attention_mask=mask, frame_ids=frame_ids, max_new_tokens=new, do_sample=False
    )
    again = tc.generate(
        input_ids, attention_mask=mask, frame_ids=frame_ids, max_new_tokens=new, do_sample=False
    )
    assert torch.equal(first, again)
    # Greedy decoding by full forward passes, one sample at a time without padding.
    for b in range(2):
        real = mask[b].bool()
        ids, fids = input_ids[b : b + 1, real], frame_ids[b : b + 1, real]
        with torch.no_grad():
            for _ in range(new):
                nxt = tc(ids, frame_ids=fids).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], 1)
        assert torch.equal(ids[0, -new:], first[b, -new:])


def _hidden(model, embeds, mask, frame_ids):
    with torch.no_grad():
        out = model(inputs_embeds=embeds, attention_mask=mask, frame_ids=frame_ids, output_hidden_states=True)
    return out.hidden_states[-1]


def test_later_frames_never_reach_earlier_frames_but_frame_peers_do():
    _, tc = make_pair("llama")
    enable_tc_attention(tc, gamma=1.0, mask="frame_block_causal")
    frame_ids = torch.tensor([video_layout(2, 3, 4, 2)])  # frames at 2-5, 6-9, 10-13
    mask = torch.ones_like(frame_ids)
    embeds = torch.randn(
        1, frame_ids.shape[1], SIZES["hidden_size"], generator=torch.Generator().manual_seed(0)
    )
    base = _hidden(tc, embeds, mask, frame_ids)

    later_frame = embeds.clone()
    later_frame[:, 10:14] += 1.0
    changed = _hidden(tc, later_frame, mask, frame_ids)
    assert torch.equal(changed[:, :10], base[:, :10]), "a later frame changed an earlier position"
    assert not torch.allclose(changed[:, 10:], base[:, 10:])

    last_of_frame = embeds.clone()
    last_of_frame[:, 9] += 1.0  # last token of the middle frame
    changed = _hidden(tc, last_of_frame, mask, frame_ids)
    assert (changed[:, 6:9] - base[:, 6:9]).abs().amax(-1).min() > 1e-4, "frame peers must see each other"
    assert torch.equal(changed[:, :6], base[:, :6])


def test_missing_padding_mask_never_triggers_packed_sequence_attention():
    # Positions jump by 1 + gamma; without a mask transformers would cut attention at each jump.
    _, tc = make_pair("llama")
    enable_tc_attention(tc, gamma=2.0)
    input_ids, _, frame_ids = prompts(((3, 4, 5, 4),))
    with torch.no_grad():
        implicit = tc(input_ids, frame_ids=frame_ids).logits
        explicit = tc(input_ids, attention_mask=torch.ones_like(input_ids), frame_ids=frame_ids).logits
    assert torch.equal(implicit, explicit)


def test_flash_attention_is_routed_around_and_forward_without_hook_is_refused():
    _, tc = make_pair("llama")
    tc.config._attn_implementation = "flash_attention_2"  # as a user's checkpoint config may say
    enable_tc_attention(tc)
    assert tc.config._attn_implementation == "tcllava"
    input_ids, mask, _ = prompts()
    with pytest.raises(RuntimeError, match="without a TC layout"):
        tc.forward(input_ids, attention_mask=mask)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown mask kind"):
        TCAttentionConfig(mask="diagonal")
    with pytest.raises(ValueError, match="gamma"):
        TCAttentionConfig(gamma=-1)
    assert TCAttentionConfig(gamma=0, mask="causal").is_vanilla


def test_the_cache_is_found_under_either_transformers_name():
    """transformers <= 5.23 passes the KV cache as `past_key_values`, 5.24 as `cache`: positions of new
    tokens start after the cached ones either way."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    assert cached_length({"past_key_values": cache}) == cached_length({"cache": cache}) == 5
    assert cached_length({"cache": None, "past_key_values": cache}) == 5
    assert cached_length({}) == cached_length({"cache": None}) == 0
