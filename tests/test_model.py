"""TCLlavaForConditionalGeneration against transformers' LLaVA models, and its own round trips."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from hf_checkpoints import GRID, IMAGE_SIZE, build, save_tiny_tcllava
from tcllava.cli import main as cli_main
from tcllava.model import (
    CheckpointError,
    SampleTooLong,
    TCLlavaConfig,
    TCLlavaForConditionalGeneration,
    load,
    load_model,
)
from tcllava.model.processing import IGNORE_INDEX
from tcllava.video import write_video

VANILLA = dict(gamma=0.0, mask="causal")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    kinds = ("llava", "llava_next", "llava_next_video", "llava_onevision")
    return {kind: (root / kind, build(kind, root / kind)) for kind in kinds}


def _frames(count: int, seed: int = 0, size: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, size, size + 8, 3), dtype=torch.uint8, generator=g)


def hub_layout(path, tmp_path):
    """The same checkpoint with the key names of the published llava-hf repositories."""
    state = load_file(str(path / "model.safetensors"))
    renamed = {re.sub(r"^vision_tower\.", "vision_tower.vision_model.", k): v for k, v in state.items()}
    assert any(k.startswith("vision_tower.vision_model.encoder.layers.") for k in renamed)
    for name in path.iterdir():
        if name.suffix != ".safetensors":
            (tmp_path / name.name).write_bytes(name.read_bytes())
    save_file(renamed, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("layout", ["transformers5", "hub"])
def test_llava_15_logits_equal_transformers_with_vanilla_settings(checkpoints, layout, tmp_path):
    path, hf = checkpoints["llava"]
    if layout == "hub":
        path = hub_layout(path, tmp_path)
    ours = load_model(path, pool_shape=(0, GRID, GRID), **VANILLA)
    image_id = hf.config.image_token_index
    ids = torch.tensor(
        [[2, 20, 21] + [image_id] * GRID**2 + [22, 23], [0, 0, 2, 24] + [image_id] * GRID**2 + [25]]
    )
    mask = torch.tensor([[1] * ids.shape[1], [0, 0] + [1] * (ids.shape[1] - 2)])
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        got = ours(input_ids=ids, attention_mask=mask, pixel_values_videos=list(pixels[:, None])).logits
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1, 2:], want[1, 2:], rtol=1e-5, atol=1e-5)


def test_llava_next_video_logits_equal_transformers_where_pooling_matches(checkpoints):
    path, hf = checkpoints["llava_next_video"]
    ours = load_model(path, **VANILLA)  # LLaVA-NeXT-Video pooling: stride 2 before the projector
    assert ours.config.pool_position == "before_projector" and ours.config.pool_shape == [
        0,
        GRID // 2,
        GRID // 2,
    ]
    frames = 3
    ids = torch.tensor([[2, 20, 21] + [hf.config.video_token_index] * (frames * (GRID // 2) ** 2) + [22, 23]])
    pixels = torch.randn(1, frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values_videos=pixels).logits
        got = ours(input_ids=ids, pixel_values_videos=pixels).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    tc = load_model(path, gamma=1.0, mask="frame_block_causal")
    with torch.no_grad():
        assert (tc(input_ids=ids, pixel_values_videos=pixels).logits - want).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["llava_next", "llava_onevision"])
def test_every_weight_of_other_layouts_is_mapped(checkpoints, kind):
    path, hf = checkpoints[kind]
    ours = TCLlavaForConditionalGeneration.from_pretrained(path, **VANILLA)
    state = hf.state_dict()
    mine = ours.state_dict()
    assert torch.equal(
        mine["multi_modal_projector.linear_1.weight"], state["model.multi_modal_projector.linear_1.weight"]
    )
    assert torch.equal(mine["language_model.lm_head.weight"], state["lm_head.weight"])
    ids = torch.tensor([[2, 20, 21, 22, 23]])
    with torch.no_grad():  # text only: the LLM and its embedding are the same network
        torch.testing.assert_close(ours(input_ids=ids).logits, hf(input_ids=ids).logits, rtol=0, atol=0)


def test_unknown_missing_and_misshapen_keys_are_listed(checkpoints, tmp_path):
    path, _ = checkpoints["llava"]
    state = load_file(str(path / "model.safetensors"))
    for case in ("unknown", "missing", "shape"):
        broken = dict(state)
        if case == "unknown":
            broken["mystery_adapter.weight"] = torch.zeros(2)
        elif case == "missing":
            broken.pop("multi_modal_projector.linear_2.bias")
        else:
            broken["multi_modal_projector.linear_2.bias"] = torch.zeros(3)
        target = tmp_path / case
        target.mkdir()
        (target / "config.json").write_text((path / "config.json").read_text())
        save_file(broken, str(target / "model.safetensors"))
        expected = {"unknown": "mystery_adapter", "missing": "linear_2.bias", "shape": "(3,)"}[case]
        with pytest.raises(CheckpointError, match=expected):
            load_model(target)


def test_convert_cli_writes_a_loadable_tcllava_checkpoint(checkpoints, tmp_path):
    path, _ = checkpoints["llava"]
    assert (
        cli_main(["convert", str(path), str(tmp_path / "tc"), "--gamma", "0.5", "--pool", "4", "2", "2"]) == 0
    )
    assert json.loads((tmp_path / "tc" / "config.json").read_text())["model_type"] == "tcllava"
    model, _ = load(tmp_path / "tc")
    assert model.config.tc_attention.gamma == 0.5 and model.config.pool_shape == [4, 2, 2]
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "tc"), TCLlavaConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "tc"), TCLlavaForConditionalGeneration)
    answer = model.chat(_frames(5), "what happens first ?", max_new_tokens=3)
    assert isinstance(answer, str)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_tcllava(tmp_path_factory.mktemp("tiny"))


def test_save_load_round_trip_is_exact(tiny, tmp_path):
    model, processor = load(tiny)
    batch = processor(processor.question("what happens first ?"), [_frames(4)])
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, _ = load(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    assert again.config.to_dict()["tc_attention"]["gamma"] == 1.0


def test_batched_generation_equals_one_by_one(tiny):
    model, processor = load(tiny)
    questions = ["what happens first ?", "describe the video . what happens then ?"]
    clips = [[_frames(4, seed=1)], [_frames(2, seed=2), _frames(1, seed=3)]]
    conversations = [
        processor.question(questions[0]),
        [{"role": "user", "content": "<video>\n<image>\n" + questions[1]}],  # two clips in one prompt
    ]
    batch = processor(conversations, clips)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # left padding in row 0
    kwargs = dict(
        max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id, eos_token_id=None
    )
    together = model.generate(**batch, **kwargs)
    for b in range(2):
        single = processor([conversations[b]], [clips[b]])
        alone = model.generate(**single, **kwargs)
        assert torch.equal(alone[0, -6:], together[b, -6:])


def test_processor_expands_placeholders_to_exact_token_counts_and_frames(tiny):
    _, processor = load(tiny)
    config = processor.config
    conversation = [
        {"role": "user", "content": "<video>\nwhat happens first ?"},
        {"role": "assistant", "content": "red ball"},
        {"role": "user", "content": "<image>\nand then ?"},
        {"role": "assistant", "content": "blue cup"},
    ]
    batch = processor(
        [conversation], [[_frames(5), _frames(1)]], add_generation_prompt=False, padding_side="right"
    )
    ids, labels, frame_ids = batch["input_ids"][0], batch["labels"][0], batch["frame_ids"][0]
    media = ids == config.media_token_id
    assert int(media.sum()) == config.media_tokens(5) + config.media_tokens(1) == 3 * 4 + 1 * 4
    assert frame_ids[media].tolist() == [f for f in range(4) for _ in range(4)]
    answer_tokens = processor.tokenizer.decode(ids[labels != IGNORE_INDEX])
    assert answer_tokens.split() == ["red", "ball", "</s>", "blue", "cup", "</s>"]
    with pytest.raises(ValueError, match="placeholders"):
        processor([conversation], [[_frames(5)]])
    with pytest.raises(SampleTooLong):
        processor([conversation], [[_frames(5), _frames(1)]], max_length=10)


def test_placeholder_and_feature_counts_must_match(tiny):
    model, processor = load(tiny)
    batch = processor(processor.question("what happens first ?"), [_frames(4)])
    ids = batch["input_ids"]
    first_media = int((ids[0] == model.config.media_token_id).nonzero()[0])
    one_short = torch.cat([ids[:, :first_media], ids[:, first_media + 1 :]], 1)  # a truncated prompt
    with pytest.raises(ValueError, match="differ"):
        model(input_ids=one_short, pixel_values_videos=batch["pixel_values_videos"])


@pytest.mark.parametrize("freeze", [True, False])
def test_every_trainable_parameter_gets_a_gradient_and_a_frozen_tower_none(tiny, freeze):
    model = load_model(tiny, freeze_vision_tower=freeze)
    model.train()
    _, processor = load(tiny)
    conversation = [
        {"role": "user", "content": "<video>\nwhat happens first ?"},
        {"role": "assistant", "content": "red"},
    ]
    batch = processor([conversation], [[_frames(4)]], add_generation_prompt=False, padding_side="right")
    model(**batch).loss.backward()
    last = model.config.vision_config.num_hidden_layers - 1  # features come from the penultimate layer
    off_path = re.compile(rf"^vision_tower\.(vision_model\.)?(encoder\.layers\.{last}\.|post_layernorm)")
    for name, p in model.named_parameters():
        if name.startswith("vision_tower") and (freeze or off_path.match(name)):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_chat_on_a_real_encoded_video_and_cli(tiny, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    write_video(video, _frames(12, size=48).numpy(), fps=6)
    model, _ = load(tiny)
    answer = model.chat(video, "what happens first ?", max_new_tokens=4, do_sample=False)
    assert answer == model.chat(video, "what happens first ?", max_new_tokens=4, do_sample=False)
    code = cli_main(
        ["chat", "--model", str(tiny), "--video", str(video), "--max-new-tokens", "4", "what happens first ?"]
    )
    out = capsys.readouterr()
    assert code == 0 and answer.split()[0] in out.out and "prefill" in out.err
    assert cli_main(["chat", "--model", str(tiny), "--video", str(tmp_path / "missing.mp4"), "q"]) == 2
    assert "missing.mp4" in capsys.readouterr().err


def test_viz_attention_compares_vanilla_and_tc_maps(tiny, tmp_path):
    from tcllava.viz.maps import attention_map

    video = tmp_path / "clip.mp4"
    write_video(video, _frames(8, size=48).numpy(), fps=4)
    out = tmp_path / "attention.png"
    assert cli_main(["viz", "attention", "--model", str(tiny), "--video", str(video), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    model, processor = load(tiny)
    batch = processor(processor.question("what happens first ?"), [_frames(4)])
    weights = attention_map(model, batch, layer=-1)
    frame = (batch["frame_ids"][0] == 0).nonzero()[:, 0]
    assert weights[frame[0], frame[-1]] > 0  # TC: a frame's first token sees its last
    vanilla, _ = load(tiny, gamma=0.0, mask="causal")
    assert attention_map(vanilla, batch, layer=-1)[frame[0], frame[-1]] == 0
