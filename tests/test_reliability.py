"""Hostile and careless inputs to loading, converting and chatting: each reproduces a failure users met
(docs/reliability.md lists them all) and checks the clear refusal that replaced it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from hf_checkpoints import GRID, build, save_tiny_tcllava
from tcllava.attention import TCAttentionConfig
from tcllava.cli import main as cli_main
from tcllava.model import (
    CheckpointError,
    PromptTooLong,
    TCLlavaForConditionalGeneration,
    convert_llava_hf,
    load,
    load_model,
)
from tcllava.model.storage import DestinationExists
from tcllava.train import TrainConfig
from tcllava.video import write_video


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # No temporal pooling (frames 0), so that every requested frame costs visual tokens.
    return save_tiny_tcllava(tmp_path_factory.mktemp("tiny"), pool_shape=(0, 2, 2))


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llava") / "llava"
    build("llava", path)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    frames = torch.randint(
        0, 256, (12, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    write_video(path, frames, fps=4)
    return path


def _prompt(processor, frames: int = 3):
    return processor(
        processor.question("what happens first ?"), [torch.zeros(frames, 32, 32, 3, dtype=torch.uint8)]
    )


def test_tc_settings_given_at_load_are_the_ones_that_run(tiny):
    """load_model(path, gamma=0.0, mask="causal") once returned a model still running its saved TC mask."""
    saved = load_model(tiny)
    assert saved.config.tc_attention.mask == "frame_block_causal" and saved.config.tc_attention.gamma == 1.0
    vanilla = load_model(tiny, gamma=0.0, mask="causal")
    assert vanilla.config.tc_attention == TCAttentionConfig.vanilla()
    _, processor = load(tiny)
    batch = _prompt(processor)
    with torch.no_grad():
        got = vanilla(**batch).logits
        # The same weights with the settings switched by hand: the independent route to vanilla.
        saved.config.tc_attention = TCAttentionConfig.vanilla()
        want = saved(**batch).logits
        saved.config.tc_attention = TCAttentionConfig()
        tc = saved(**batch).logits
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, tc, atol=1e-4)  # the settings really change the computation
    again = TCLlavaForConditionalGeneration.from_pretrained(tiny, gamma=0.0, mask="causal")
    assert again.config.tc_attention == TCAttentionConfig.vanilla()


@pytest.mark.parametrize("bad", [{"bogus_setting": 123}, {"attention_mask_kind": "causal"}, {"gama": 1.0}])
def test_an_unknown_setting_is_refused_naming_the_known_ones(tiny, bad):
    with pytest.raises(ValueError, match=r"unknown setting .*gamma, mask, text_after_video, kernel"):
        load_model(tiny, **bad)
    with pytest.raises(ValueError, match="gamma, mask"):
        load(tiny, **bad)
    with pytest.raises(ValueError, match="gamma, mask"):
        TCLlavaForConditionalGeneration.from_pretrained(tiny, **bad)


def test_bad_setting_values_are_refused_where_declared(tiny):
    for bad, message in [
        ({"gamma": -1.0}, "gamma must be >= 0"),
        ({"gamma": float("nan")}, "gamma must be >= 0"),
        ({"mask": "diagonal"}, "mask must be one of"),
        ({"kernel": "fast"}, "kernel must be one of"),
        ({"text_after_video": "later"}, "text_after_video must be one of"),
        ({"pool_shape": (0, 0, 2)}, "pool_shape must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_model(tiny, **bad)


def test_convert_never_writes_over_its_own_input(llava, tmp_path):
    """`tcllava convert X X` once rewrote X's config.json and died, leaving neither model usable."""
    before = tree_digest(llava)
    assert cli_main(["convert", str(llava), str(llava)]) == 2
    assert cli_main(["convert", str(llava), str(llava / "inside")]) == 2
    assert tree_digest(llava) == before
    assert not (llava / "inside").exists()


def test_convert_refuses_an_existing_model_unless_asked_and_replaces_it_whole(llava, tmp_path):
    """Converting into a folder that held a model once merged silently with its stale files."""
    dest = tmp_path / "tc"
    convert_llava_hf(llava, dest, gamma=0.5)
    (dest / "stale.safetensors").write_bytes(b"left over from another model")
    before = tree_digest(dest)
    assert cli_main(["convert", str(llava), str(dest), "--gamma", "1"]) == 2
    assert tree_digest(dest) == before
    assert cli_main(["convert", str(llava), str(dest), "--gamma", "1", "--overwrite"]) == 0
    assert not (dest / "stale.safetensors").exists()
    assert load_model(dest).config.tc_attention.gamma == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tc"]  # no temporary folder left


def test_a_failed_conversion_leaves_the_destination_as_it_was(llava, tmp_path, monkeypatch):
    dest = tmp_path / "tc"
    convert_llava_hf(llava, dest)
    before = tree_digest(dest)

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(TCLlavaForConditionalGeneration, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        convert_llava_hf(llava, dest, overwrite=True)
    assert tree_digest(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tc"]
    with pytest.raises(DestinationExists, match="--overwrite"):
        convert_llava_hf(llava, dest)


def test_broken_checkpoints_are_named_with_the_problem(tiny, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in tiny.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable weights .*truncated"):
        load_model(broken)
    (broken / "config.json").write_text('{"model_type": "tcllava", ')
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_model(broken)
    config = json.loads((tiny / "config.json").read_text())
    config["tc_attention"]["mask"] = "diagonal"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"config\.json: not a valid tcllava config .*mask must be one of"
    ):
        load_model(broken)
    assert cli_main(["chat", "--model", str(broken), "--video", "x.mp4", "q"]) == 2
    assert "config.json: not a valid tcllava config" in capsys.readouterr().err


def test_a_prompt_longer_than_the_context_is_refused_before_decoding(tiny, video, monkeypatch, capsys):
    """`tcllava chat --frames 10000` once built a 160k-token prompt for a 4k model and printed garbage."""
    import tcllava.video

    def no_decoding(*args, **kwargs):
        raise AssertionError("the video was decoded before the prompt was checked")

    monkeypatch.setattr(tcllava.video, "read_video", no_decoding)
    model, processor = load(tiny)
    limit = model.config.max_positions
    with pytest.raises(PromptTooLong, match=r"trained on 4096 positions; at most \d+ frames fit"):
        model.chat(video, "what happens first ?", num_frames=10000, max_new_tokens=4)
    code = cli_main(["chat", "--model", str(tiny), "--video", str(video), "--frames", "10000", "q"])
    assert code == 2 and "frames fit" in capsys.readouterr().err
    long_text = "what happens first ? " * 3000  # ~21k tokens of text
    with pytest.raises(PromptTooLong, match="shorten it by at least"):
        model.chat(video, long_text, num_frames=2, max_new_tokens=4)
    # The number of frames the message promises does fit.
    fit = int(str(_too_long(model, video, 10000)).split("at most ")[1].split(" frames")[0])
    monkeypatch.undo()
    assert fit * model.config.tokens_per_frame < limit
    assert isinstance(
        model.chat(video, "what happens first ?", num_frames=min(fit, 12), max_new_tokens=2), str
    )
    processor.check_context(_prompt(processor, fit)["input_ids"][0].tolist(), 4)
    with pytest.raises(PromptTooLong):
        processor.check_context(_prompt(processor, fit + 1)["input_ids"][0].tolist(), 4)


def _too_long(model, video, frames):
    with pytest.raises(PromptTooLong) as error:
        model.chat(video, "what happens first ?", num_frames=frames, max_new_tokens=4)
    return error.value


def test_chat_flags_are_range_checked_before_loading(tiny, video, capsys):
    for flag, value in [
        ("--frames", "0"),
        ("--temperature", "-1"),
        ("--top-p", "1.5"),
        ("--max-new-tokens", "0"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["chat", "--model", str(tiny), "--video", str(video), flag, value, "q"])
        assert exit_.value.code == 2
        assert flag in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main(["chat", "--model", str(tiny), "--video", str(video), "--device", "cuda", "q"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_training_settings_are_range_checked_where_declared(tmp_path):
    base = {"model": "m", "output_dir": str(tmp_path), "data": [{"path": "d.json"}], "max_steps": 1}
    for bad, message in [
        ({"projector_lr": -1e-4}, "projector_lr must be > 0"),
        ({"vision_lr": -1.0}, "vision_lr must be > 0"),
        ({"attention": {"gamma": -1}}, "gamma must be >= 0"),
        ({"attention": {"mask": "diagonal"}}, "mask must be one of"),
        ({"attention": {"gama": 1}}, "unknown TC attention setting 'gama'"),
        ({"lora": {"dropout": 1.5}}, "lora.dropout"),
        ({"adam_betas": [0.9, 1.2]}, "adam_betas"),
        ({"sample_timeout": 0}, "sample_timeout must be > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict({**base, **bad})


def test_grid_sized_llava_keeps_its_settings_through_conversion(llava, tmp_path):
    """The settings given to convert are the ones saved, and load back under the same names."""
    dest = convert_llava_hf(llava, tmp_path / "tc", gamma=2.0, mask="frame_block", pool_shape=(0, GRID, GRID))
    saved = json.loads((dest / "config.json").read_text())["tc_attention"]
    assert saved == {
        "gamma": 2.0,
        "mask": "frame_block",
        "text_after_video": "paper",
        "kernel": "auto",
        "position_scheme": "tc",
        "videorope_delta": 2.0,
    }


def test_a_malformed_jsonl_record_is_named_with_its_line(tmp_path):
    from tcllava.data.conversations import read_records

    path = tmp_path / "data.jsonl"
    path.write_text('{"video": "a.mp4"}\n\n{"video": "b.mp4"}\n{"video": oops}\n')
    with pytest.raises(ValueError, match=r"data\.jsonl:4: not a JSON record"):
        read_records(path)
    broken = tmp_path / "data.json"
    broken.write_text('[\n {"video": "a.mp4"},\n {"video": }\n]')
    with pytest.raises(ValueError, match=r"data\.json:3:\d+: not valid JSON"):
        read_records(broken)


def test_data_synthetic_refusals_are_one_line_not_a_traceback(tmp_path, capsys):
    out = str(tmp_path / "synthetic")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["data", "synthetic", "--out", out, "--train", "-1"])
    assert exit_.value.code == 2 and "--train" in capsys.readouterr().err
    assert cli_main(["data", "synthetic", "--out", out, "--frames", "40"]) == 2
    assert capsys.readouterr().err.strip() == "tcllava data: num_frames must be in 4..16"
    assert cli_main(["data", "synthetic", "--out", out, "--tasks", "juggling"]) == 2
    assert "unknown tasks ['juggling']" in capsys.readouterr().err


def test_training_on_a_set_whose_every_sample_is_missing_says_so(tmp_path, capsys):
    from train_fixtures import build_checkpoint

    model = build_checkpoint(tmp_path / "ck")
    records = [
        {
            "id": f"s{i}",
            "video": f"videos/{i}.mp4",
            "conversations": [
                {"from": "human", "value": "<video>\nwhat colour comes first ?"},
                {"from": "gpt", "value": "red"},
            ],
        }
        for i in range(3)
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    recipe = Path(__file__).resolve().parents[1] / "configs" / "cpu_demo.yaml"
    argv = ["train", str(recipe), f"model={model}", f"output_dir={tmp_path / 'run'}"]
    argv += [f"data=[{{path: {tmp_path / 'data.json'}}}]", "max_steps=1", "batch_size=2", "progress=false"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "no sample of the data can be used" in err and "3 missing_media" in err


def test_a_model_that_prefers_the_media_placeholder_never_generates_it(tiny, video):
    """A generated placeholder token was taken for a visual token at the next step and crashed it."""
    model, processor = load(tiny)
    media = model.config.media_token_id

    def prefer_media(module, args, output):
        output[..., media] = 1e4
        return output

    hook = model.language_model.lm_head.register_forward_hook(prefer_media)
    try:
        answer = model.chat(video, "what happens first ?", num_frames=2, max_new_tokens=3, do_sample=False)
        sampled = model.chat(video, "what happens first ?", num_frames=2, max_new_tokens=3, do_sample=True)
    finally:
        hook.remove()
    ids = processor.tokenizer(answer + sampled, add_special_tokens=False)["input_ids"]
    assert media not in ids
