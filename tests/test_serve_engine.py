"""The serving core without HTTP: batched generation, streamed text, the batching worker, request checks."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from serve_fixtures import QUESTIONS, data_url, tiny_pair, write_clip
from tcllava.model import load
from tcllava.model.generation import RowSettings, generate_batch
from tcllava.model.templates import VIDEO_PLACEHOLDER
from tcllava.serve.engine import Done, Engine, TextTracker
from tcllava.serve.media import MediaSource
from tcllava.serve.schema import APIError, parse_chat_request
from tcllava.serve.service import ChatJob, Limits, Service, Turn
from tcllava.video import read_video


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp("serve_engine"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return [write_clip(root / f"clip{i}.mp4", seed=i) for i in range(4)]


def _encode(processor, clip, question, frames):
    pieces = processor.render(processor.question(question, VIDEO_PLACEHOLDER))
    return processor.encode(pieces, [read_video(clip, frames).frames])


@pytest.mark.parametrize("name", ["tc", "vanilla"])
def test_generate_batch_greedy_rows_equal_chat_alone(models, clips, name):
    model, processor = load(models[name])
    frames = [4, 2, 4, 3]
    lengths = [6, 6, 2, 5]
    encoded = [_encode(processor, c, q, f) for c, q, f in zip(clips, QUESTIONS, frames, strict=True)]
    rows = generate_batch(model, processor, encoded, [RowSettings(max_new_tokens=n) for n in lengths])
    for i, row in enumerate(rows):
        alone = model.chat(
            clips[i], QUESTIONS[i], num_frames=frames[i], max_new_tokens=lengths[i], do_sample=False
        )
        assert processor.decode(torch.tensor(row.tokens)) == alone
        assert row.finish_reason == ("length" if len(row.tokens) == lengths[i] else "stop")
    assert {len(r.tokens) for r in rows} == {2, 5, 6}  # each row stopped at its own length


def test_sampled_row_depends_on_its_seed_not_on_its_neighbours(models, clips):
    model, processor = load(models["tc"])
    encoded = [_encode(processor, c, q, 4) for c, q in zip(clips, QUESTIONS, strict=True)]
    sampled = RowSettings(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    alone = generate_batch(model, processor, encoded[:1], [sampled])[0].tokens
    others = [RowSettings(max_new_tokens=4), RowSettings(8, 1.0, 1.0, 3), RowSettings(12, 0.7, 0.5, None)]
    together = generate_batch(model, processor, encoded, [sampled, *others])[0].tokens
    assert together == alone
    reseeded = generate_batch(model, processor, encoded[:1], [RowSettings(12, 1.5, 0.95, 8)])[0].tokens
    greedy = generate_batch(model, processor, encoded[:1], [RowSettings(12)])[0].tokens
    assert reseeded != alone and greedy != alone  # the seed and the temperature do matter


def test_generate_batch_calls_back_per_row_and_stops_a_row_on_request(models, clips):
    model, processor = load(models["tc"])
    encoded = [_encode(processor, c, q, 4) for c, q in zip(clips[:2], QUESTIONS[:2], strict=True)]
    seen: dict[int, list[int]] = {0: [], 1: []}
    finished = {}

    def on_token(row, token):
        seen[row].append(token)
        return row == 1 and len(seen[1]) == 3  # the caller ends row 1 after 3 tokens

    rows = generate_batch(
        model,
        processor,
        encoded,
        [RowSettings(7), RowSettings(7)],
        on_token,
        lambda r, o: finished.setdefault(r, o),
    )
    assert seen[0] == rows[0].tokens and len(rows[0].tokens) == 7 and rows[0].finish_reason == "length"
    assert seen[1] == rows[1].tokens and len(rows[1].tokens) == 3 and rows[1].finish_reason == "caller"
    assert finished == {0: rows[0], 1: rows[1]}


class WordProcessor:
    """A stand-in processor whose tokens are the words of a list (decoding joins them)."""

    def __init__(self, words):
        self.words = words
        self.tokenizer = self

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.words[i] for i in ids if self.words[i] != "</s>")


@pytest.mark.parametrize(
    ("words", "stop", "final"),
    [
        ([" red", " ball", " then", "  ", " cup", "</s>"], (), "red ball then   cup"),
        ([" red", " ST", "OP", " cup"], ("STOP",), "red"),
        ([" red", " ST", "ay", " cup"], ("STOP",), "red STay cup"),  # a held-back prefix that was no stop
        ([" a", " b", " c"], ("b c", "x"), "a"),
    ],
)
def test_text_tracker_deltas_add_up_to_the_final_text_and_cut_stops(words, stop, final):
    tracker = TextTracker(WordProcessor(words), stop)
    streamed = ""
    for token in range(len(words)):
        streamed += tracker.add(token)
        if tracker.stopped:
            break
    streamed += tracker.finish()
    assert tracker.final == final and streamed == final


def test_engine_batches_waiting_requests_and_each_answer_equals_its_own(models, clips):
    model, processor = load(models["tc"])
    engine = Engine("tc", model, processor, max_batch=3, lock=threading.Lock())
    service = Service({"tc": engine}, Limits())
    try:
        jobs = [
            ChatJob("tc", [Turn("user", [MediaSource("video", "v", path=c), q])], frames=4, max_tokens=5)
            for c, q in zip(clips, QUESTIONS, strict=True)
        ]
        prepared = [service.prepare(job) for job in jobs]
        with engine.paused():  # the worker holds the first request; the rest queue up
            streams = [engine.submit(p) for p in prepared]
            deadline = time.monotonic() + 30
            while engine.pending() < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        results = [list(s)[-1] for s in streams]
        assert list(engine.batch_sizes) == [3, 1]  # max_batch 3: the fourth waits for the next batch
        for result, clip, question in zip(results, clips, QUESTIONS, strict=True):
            assert isinstance(result, Done)
            assert result.text == model.chat(clip, question, num_frames=4, max_new_tokens=5, do_sample=False)
        assert engine.call(lambda: 41 + 1) == 42
    finally:
        engine.close()
    assert not engine.alive


def test_service_refuses_bad_requests_before_decoding(models, clips, tmp_path):
    model, processor = load(models["tc"])
    engine = Engine("tc", model, processor, lock=threading.Lock())
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(clips[0].read_bytes())
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(clips[1].read_bytes())
    (media / "link.mp4").symlink_to(outside)
    service = Service({"tc": engine}, Limits(max_frames=6, max_video_mb=0.5, media_dir=media))

    def prepare(content, **fields):
        body = {"model": "tc", "messages": [{"role": "user", "content": content}], **fields}
        return service.prepare(service.job_from_request(parse_chat_request(json.dumps(body).encode())))

    def refused(content, status, words, **fields):
        with pytest.raises(APIError) as error:
            prepare(content, **fields)
        assert error.value.status == status and words in error.value.message, error.value.message

    def video(url):
        return [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "what ?"}]

    try:
        good = video((media / "clip.mp4").as_uri())
        refused(good, 400, "at most 6", frames=7)
        refused(good + video((media / "clip.mp4").as_uri()), 400, "8 frames over 2", frames=4)
        (media / "notes.mp4").write_text("not a video")  # the context is checked before any decoding:
        refused(video((media / "notes.mp4").as_uri()), 400, "reaches RoPE position", max_tokens=2100)
        refused(video((media / "notes.mp4").as_uri()), 400, "not a readable video")
        refused(video((media / "link.mp4").as_uri()), 403, "outside the media directory")
        refused(video(f"file://{media}/../secret.mp4"), 403, "outside the media directory")
        refused(video((media / "none.mp4").as_uri()), 400, "no such file")
        refused(video("http://example.com/a.mp4"), 400, "fetches nothing")
        refused(video("data:video/mp4;base64,@@@"), 400, "not valid base64")
        refused(video("data:video/mp4;base64," + "A" * 800_000), 413, "larger than")
        text = tmp_path / "notes.txt"
        text.write_text("not a video")
        refused(video(data_url(text)), 400, "not a readable video")
        refused("hello <video>", 400, "placeholders")
        prepared = prepare(good, frames=3)
        assert prepared.frames == 3 and prepared.clips[0].frames.shape[0] == 3
    finally:
        engine.close()
