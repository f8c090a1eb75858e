"""Conversation formats, label masking, truncation, bad samples and the global-batch sampler."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from tcllava.data.conversations import InvalidRecord, Media, parse_record
from tcllava.data.dataset import (
    ConversationDataset,
    DataSource,
    Example,
    GlobalBatchSampler,
    Skipped,
    TrainCollator,
    load_training_data,
)
from tcllava.model import Message, TCLlavaProcessor
from tcllava.model.processing import IGNORE_INDEX
from train_fixtures import build_checkpoint, build_dataset

U, A, S = "user", "assistant", "system"


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = build_checkpoint(tmp_path_factory.mktemp("ck"))
    return TCLlavaProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_dataset(root, n=6, bad=True)
    return root


def roles(conv):
    return [(m.role, m.content) for m in conv.messages]


def test_llava_record_maps_roles_and_resolves_media(tmp_path):
    record = {
        "id": "x1",
        "video": "a/b.mp4",
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "<video>\nwhat happens ?"},
            {"from": "gpt", "value": "a ball rolls"},
            {"from": "human", "value": "then ?"},
            {"from": "gpt", "value": "it stops"},
        ],
        "start": 1.5,
        "end": 4.0,
    }
    conv = parse_record(record, tmp_path, "f:0")
    assert conv.id == "x1"
    assert roles(conv) == [
        (S, "be brief"),
        (U, "<video>\nwhat happens ?"),
        (A, "a ball rolls"),
        (U, "then ?"),
        (A, "it stops"),
    ]
    assert conv.media == [Media(str(tmp_path / "a/b.mp4"), "video", 1.5, 4.0)]


def test_missing_placeholders_are_inserted_per_clip_and_images_are_one_frame(tmp_path):
    record = {
        "image": ["p.png", "q.png"],
        "conversations": [{"from": "human", "value": "compare"}, {"from": "gpt", "value": "same"}],
    }
    conv = parse_record(record, tmp_path, "f:7")
    assert conv.id == "f:7"
    assert roles(conv)[0] == (U, "<image><image>\ncompare")
    assert [m.kind for m in conv.media] == ["image", "image"]


def test_videochat2_it_record_uses_the_instruction_as_system_prompt(tmp_path):
    record = {
        "video": "v.mp4",
        "QA": [
            {"i": "Watch carefully.", "q": "What is the man doing?", "a": "Cooking."},
            {"i": "", "q": "Where?", "a": "In a kitchen."},
        ],
    }
    conv = parse_record(record, tmp_path, "f:0")
    assert roles(conv) == [
        (S, "Watch carefully."),
        (U, "<video>\nWhat is the man doing?"),
        (A, "Cooking."),
        (U, "Where?"),
        (A, "In a kitchen."),
    ]


def test_multiple_choice_record_matches_the_mvbench_evaluation_prompt(tmp_path):
    from tcllava.eval.benchmarks import Sample
    from tcllava.eval.protocols import MVBENCH_OFFICIAL

    record = {
        "video": "v.mp4",
        "question": "What comes first?",
        "candidates": ["red", "blue", "green"],
        "answer": "blue",
    }
    conv = parse_record(record, tmp_path, "f:0")
    sample = Sample("s", "t", "v.mp4", "What comes first?", "B", ["red", "blue", "green"])
    assert roles(conv) == [
        (S, MVBENCH_OFFICIAL.system),
        (U, MVBENCH_OFFICIAL.build_user(sample, None)),
        (A, MVBENCH_OFFICIAL.assistant_prefix + "B) blue"),
    ]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            {
                "video": "v.mp4",
                "conversations": [
                    {"from": "human", "value": "<video><video> ?"},
                    {"from": "gpt", "value": "x"},
                ],
            },
            "placeholder_mismatch",
        ),
        (
            {"conversations": [{"from": "human", "value": "<video> ?"}, {"from": "gpt", "value": "x"}]},
            "placeholder_mismatch",
        ),
        (
            {"video": "v.mp4", "conversations": [{"from": "gpt", "value": "<video> x"}]},
            "placeholder_mismatch",
        ),
        ({"video": "v.mp4", "conversations": [{"from": "human", "value": "hi"}]}, "invalid_record"),
        ({"video": "v.mp4", "conversations": [{"from": "robot", "value": "hi"}]}, "invalid_record"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "no_media"),
        ({"video": "v.mp4", "question": "q", "candidates": ["a"], "answer": "b"}, "invalid_record"),
        (["not", "a", "dict"], "invalid_record"),
    ],
)
def test_invalid_records_say_why(tmp_path, record, reason):
    with pytest.raises(InvalidRecord) as info:
        parse_record(record, tmp_path, "f:0")
    assert info.value.reason == reason


def test_loss_only_on_assistant_tokens(processor):
    """Against a hand-made sample: the trainable tokens are exactly each answer plus its end marker."""
    messages = [
        Message(U, "<video>\nwhat colour comes first ?"),
        Message(A, "red"),
        Message(U, "which is last ?"),
        Message(A, "it is blue ."),
    ]
    frames = torch.zeros(4, 40, 40, 3, dtype=torch.uint8)
    encoded = processor.encode(processor.render(messages, add_generation_prompt=False), [frames])
    tok = processor.tokenizer
    ids, labels = encoded.input_ids, encoded.labels
    trainable = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    # The "plain" template ends an answer with " </s>\n"; each answer is tokenised on its own.
    answers = ["red </s>\n", "it is blue . </s>\n"]
    assert trainable == [i for text in answers for i in tok(text, add_special_tokens=False)["input_ids"]]
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels, strict=True))
    media = [i for i in ids if i == processor.config.media_token_id]
    assert len(media) == processor.config.media_tokens(4) == 16
    # every user and template token is masked
    prompt = [
        i
        for i, label in zip(ids, labels, strict=True)
        if label == IGNORE_INDEX and i != processor.config.media_token_id
    ]
    words = tok.convert_ids_to_tokens(prompt)
    assert {"USER", "ASSISTANT", "what", "which", "last"} <= {w.strip() for w in words}


def test_data_loading_globs_weights_and_invalid_records(tmp_path, data_dir):
    other = tmp_path / "more"
    build_dataset(other, n=4, seed=1)
    (other / "data.json").rename(other / "b.json")
    data = load_training_data(
        [DataSource(str(data_dir / "data.json")), DataSource(str(other / "*.json"), weight=2)], 16, 4
    )
    assert len(data) == 6 + 2 + 4  # the placeholder mismatch is rejected at parse time
    assert [x.id for x in data.invalid] == ["mismatch"]
    assert [s["weight"] for s in data.sources] == [1.0, 2.0]
    assert data.sources[1]["media_root"] == str(other)  # defaults to the JSON's folder
    assert data.conversations[9].media[0].path == str(other / "videos/001.mp4")
    assert len(data.manifest_hash()) == 64
    assert data.lengths.min() >= 16


def test_bad_samples_are_skipped_counted_and_listed(processor, data_dir):
    data = load_training_data([DataSource(str(data_dir / "data.json"))], 16, 4)
    dataset = ConversationDataset(data, processor, num_frames=4, sample_timeout=30)
    items = [dataset[(i, 0)] for i in range(len(data))]
    skipped = {x.id: x.reason for x in items if isinstance(x, Skipped)}
    assert skipped == {"missing": "missing_media", "corrupt": "decode_error"}
    batch = TrainCollator(processor)(items[:5])
    assert [s["id"] for s in batch["skipped"]] == ["missing"]
    assert batch["input_ids"].shape[0] == len(batch["sample_ids"]) == 4
    assert len(batch["pixel_values_videos"]) == 4
    empty = TrainCollator(processor)([x for x in items if isinstance(x, Skipped)])
    assert "input_ids" not in empty and len(empty["skipped"]) == 2


def test_decoding_past_the_sample_timeout_is_a_skipped_sample(processor, data_dir, monkeypatch):
    import tcllava.video.read as read

    real = read._open_reader

    def slow(*args, **kwargs):
        time.sleep(3)
        return real(*args, **kwargs)

    monkeypatch.setattr(read, "_open_reader", slow)
    data = load_training_data([DataSource(str(data_dir / "data.json"))], 16, 4)
    item = ConversationDataset(data, processor, num_frames=4, sample_timeout=0.3)[(0, 0)]
    assert isinstance(item, Skipped) and item.reason == "timeout"


def test_random_frames_are_a_function_of_seed_epoch_and_index(processor, data_dir):
    data = load_training_data([DataSource(str(data_dir / "data.json"))], 16, 4)
    ds = ConversationDataset(data, processor, num_frames=4, frame_sampling="random", seed=3)
    a, b = ds[(1, 0)], ds[(1, 0)]
    assert isinstance(a, Example)
    assert torch.equal(a.encoded.pixel_values[0], b.encoded.pixel_values[0])


def test_truncation_drops_trailing_turns_and_never_visual_tokens(processor, data_dir):
    records = json.loads((data_dir / "data.json").read_text())
    two_turns = next(
        i for i, r in enumerate(records) if len(r["conversations"]) == 4 and r["id"].startswith("s")
    )
    data = load_training_data([DataSource(str(data_dir / "data.json"))], 16, 4)
    index = next(i for i in range(len(data)) if data.conversations[i].id == records[two_turns]["id"])
    full = ConversationDataset(data, processor, num_frames=4)[(index, 0)]
    labels = full.encoded.labels
    first = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    end_of_first_answer = next(i for i in range(first, len(labels)) if labels[i] == IGNORE_INDEX)
    fits_one = ConversationDataset(data, processor, num_frames=4, max_length=end_of_first_answer + 2)[
        (index, 0)
    ]
    assert isinstance(fits_one, Example) and fits_one.truncated
    assert fits_one.encoded.input_ids == full.encoded.input_ids[:end_of_first_answer]
    assert fits_one.encoded.input_ids.count(processor.config.media_token_id) == 16
    too_short = ConversationDataset(data, processor, num_frames=4, max_length=12)[(index, 0)]
    assert isinstance(too_short, Skipped) and too_short.reason == "too_long"


def _keys(sampler: GlobalBatchSampler) -> list[list[int]]:
    return [[i for i, _ in mb] for mb in sampler]


def test_sampler_splits_one_global_batch_the_same_on_any_world_size():
    lengths = np.random.default_rng(0).integers(10, 100, 50)
    spans = [(0, 30, 1.0), (30, 20, 1.0)]
    one = _keys(GlobalBatchSampler(lengths, spans, batch_size=2, grad_accum=4, seed=1))
    ranks = [_keys(GlobalBatchSampler(lengths, spans, 2, 2, world_size=2, rank=r, seed=1)) for r in (0, 1)]
    four = [_keys(GlobalBatchSampler(lengths, spans, 2, 1, world_size=4, rank=r, seed=1)) for r in range(4)]
    steps = len(one) // 4
    assert steps == 50 // 8
    for s in range(steps):
        want = one[4 * s : 4 * s + 4]
        two = [ranks[j % 2][s * 2 + j // 2] for j in range(4)]
        assert two == want
        assert [four[j][s] for j in range(4)] == want


def test_sampler_groups_lengths_and_covers_each_sample_once_per_epoch():
    lengths = np.arange(64)
    sampler = GlobalBatchSampler(
        lengths, [(0, 64, 1.0)], batch_size=4, grad_accum=2, seed=0, megabatch_steps=4
    )
    plan = sampler.plan(0)
    assert sorted(plan.ravel().tolist()) == list(range(64))
    flat = plan.reshape(-1, 4 * 2 * 4)  # megabatches of 4 global batches of 8
    assert all((np.diff(lengths[m]) <= 0).all() for m in flat)  # longest first inside a megabatch
    assert not np.array_equal(sampler.plan(1), plan)


def test_sampler_weights_repeat_or_subsample_sources():
    spans = [(0, 10, 2.0), (10, 20, 0.5)]
    sampler = GlobalBatchSampler(np.ones(30), spans, batch_size=1, grad_accum=1, seed=0)
    assert sampler.epoch_size == 30
    counts = np.bincount(sampler.plan(0).ravel(), minlength=30)
    assert (counts[:10] == 2).all()
    assert counts[10:].sum() == 10 and counts[10:].max() == 1
    assert not np.array_equal(np.bincount(sampler.plan(1).ravel(), minlength=30)[10:], counts[10:])


def test_sampler_resumes_at_a_position_and_refuses_a_changed_plan():
    lengths = np.random.default_rng(1).integers(1, 50, 40)
    full = GlobalBatchSampler(lengths, [(0, 40, 1.0)], 2, 2, seed=5)
    everything = _keys(full)
    later = GlobalBatchSampler(lengths, [(0, 40, 1.0)], 2, 2, seed=5)
    later.set_position(0, 3)
    assert _keys(later) == everything[3 * 2 :]
    state = full.state_dict()
    later.check_compatible(state)
    with pytest.raises(ValueError, match="micro_batches_per_step"):
        GlobalBatchSampler(lengths, [(0, 40, 1.0)], 2, 1, seed=5).check_compatible(state)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(lengths[:3], [(0, 3, 1.0)], 2, 2)
