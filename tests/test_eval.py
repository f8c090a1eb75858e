"""Evaluation end to end on tiny fixture datasets in the published layouts, with scripted predictors
whose answers (and so whose accuracies) are known."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcllava.eval import EvalRun, evaluate, merge
from tcllava.eval.benchmarks import EvalError, EvalInputError, load_benchmark
from tcllava.eval.predictor import Prompt
from tcllava.eval.protocols import MVBENCH_SYSTEM
from tcllava.eval.subtitles import parse_srt, select_subtitles
from tcllava.video import write_video

FPS = 8


def frames(n: int, size: int = 32) -> np.ndarray:
    return np.stack([np.full((size, size, 3), (7 * i) % 256, np.uint8) for i in range(n)])


class TablePredictor:
    """Answers by looking the question up in a table; records what it was given."""

    def __init__(self, answers: dict[str, str], fail_after: int | None = None) -> None:
        self.answers = answers
        self.fail_after = fail_after
        self.seen: list[tuple[Prompt, tuple[int, ...], list[float]]] = []

    def generate(self, clips, prompts):
        if self.fail_after is not None and len(self.seen) + len(prompts) > self.fail_after:
            raise RuntimeError("simulated crash")
        out = []
        for clip, prompt in zip(clips, prompts, strict=True):
            self.seen.append((prompt, tuple(clip.frames.shape), clip.timestamps.tolist()))
            key = next(q for q in self.answers if q in prompt.user)
            out.append(self.answers[key])
        return out

    def describe(self):
        return {"name": "table", "n_answers": len(self.answers)}


# (question, candidates, answer text, reply). Accuracies per task are fixed by the replies.
ACTION_SEQUENCE = [  # bounded mp4, 3/4 correct -> 75
    ("AS-0 what happened first?", ["opened door", "sat down", "ate"], "sat down", "B) sat down"),
    ("AS-1 what happened next?", ["opened door", "sat down", "ate"], "ate", "Best option: (C) ate"),
    ("AS-2 what then?", ["opened door", "sat down"], "opened door", "A"),
    ("AS-3 and finally?", ["opened door", "sat down", "ate", "slept"], "slept", "(A) opened door"),
]
EPISODIC = [  # frame folder, bounded, 1/3 correct, 1 unparseable -> 33.33
    ("ER-0 why did he laugh?", ["joke", "fell", "won"], "joke", "A) joke"),
    ("ER-1 who spoke?", ["Ross", "Rachel", "Joey"], "Joey", "Rachel"),
    ("ER-2 where were they?", ["cafe", "office", "park"], "park", "I cannot tell from the video."),
]
OBJECT_SHUFFLE = [  # webm, 2/4 correct, 1 wrong, 1 empty -> official 50, lmms-eval 2/3
    ("OS-0 where is the ball?", ["left", "middle", "right"], "left", "A"),
    ("OS-1 where is the cup?", ["left", "middle", "right"], "right", "The answer is C."),
    ("OS-2 where is the key?", ["left", "middle", "right"], "middle", "left"),
    ("OS-3 where is the coin?", ["left", "middle", "right"], "left", ""),
]


def make_mvbench(root: Path) -> dict[str, str]:
    """MVBench layout (json/ + video/{prefix}) with three tasks; returns question -> reply."""
    (root / "json").mkdir(parents=True)
    star = root / "video" / "star" / "Charades_v1_480"
    star.mkdir(parents=True)
    write_video(star / "A1B2C.mp4", frames(4 * FPS), FPS)  # 4 s
    rows = [
        {"video": "A1B2C.mp4", "question": q, "candidates": c, "answer": a, "start": 1.0, "end": 3.0}
        for q, c, a, _ in ACTION_SEQUENCE
    ]
    (root / "json" / "action_sequence.json").write_text(json.dumps(rows))

    folder = root / "video" / "tvqa" / "frames_fps3_hq" / "friends_s01e01_seg01_clip_00"
    folder.mkdir(parents=True)
    for i in range(1, 31):  # 10 s at 3 fps, named like the published frames
        Image.fromarray(frames(1)[0] + i).save(folder / f"{i:05d}.jpg")
    rows = [
        {"video": folder.name, "question": q, "candidates": c, "answer": a, "start": 2.0, "end": 8.0}
        for q, c, a, _ in EPISODIC
    ]
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps(rows))

    perception = root / "video" / "perception" / "videos"
    perception.mkdir(parents=True)
    write_video(perception / "video_1.webm", frames(2 * FPS), FPS)
    rows = [
        {"video": "video_1.webm", "question": q, "candidates": c, "answer": a}
        for q, c, a, _ in OBJECT_SHUFFLE
    ]
    (root / "json" / "object_shuffle.json").write_text(json.dumps(rows))
    return {q: r for q, _, _, r in ACTION_SEQUENCE + EPISODIC + OBJECT_SHUFFLE}


@pytest.fixture(scope="module")
def mvbench_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mvbench")
    return root, make_mvbench(root)


def test_mvbench_official_exact_scores_prompts_and_frames(mvbench_dir, tmp_path) -> None:
    root, answers = mvbench_dir
    predictor = TablePredictor(answers)
    res = evaluate(predictor, EvalRun("mvbench", root, tmp_path, num_frames=16, batch_size=3, num_workers=2))

    tasks = res["metrics"]["tasks"]
    assert list(tasks) == ["Action Sequence", "Object Shuffle", "Episodic Reasoning"]  # official table order
    assert tasks["Action Sequence"]["accuracy"] == pytest.approx(75.0)
    assert tasks["Episodic Reasoning"]["accuracy"] == pytest.approx(100 / 3)
    assert tasks["Episodic Reasoning"]["unparseable"] == 1
    assert tasks["Object Shuffle"]["accuracy"] == pytest.approx(50.0)
    assert tasks["Object Shuffle"]["empty"] == 1 and tasks["Object Shuffle"]["denominator"] == 4
    assert res["metrics"]["average"] == pytest.approx((75 + 100 / 3 + 50) / 3)
    assert res["metrics"]["overall"]["accuracy"] == pytest.approx(100 * 6 / 11)
    assert res["tasks_found"] == ["Action Sequence", "Object Shuffle", "Episodic Reasoning"]
    assert len(res["tasks_missing"]) == 17

    # The official prompt, verbatim.
    prompt = next(p for p, _, _ in predictor.seen if "AS-0" in p.user)
    assert prompt.system == MVBENCH_SYSTEM
    assert prompt.user == (
        "<video>\nQuestion: AS-0 what happened first?\nOptions:\n(A) opened door\n(B) sat down\n(C) ate\n"
        "Only give the best option."
    )
    assert prompt.assistant_prefix == "Best option:("
    # 16 frames everywhere; bounded tasks sample inside their bound (frame folders at 3 fps).
    for p, shape, stamps in predictor.seen:
        assert shape == (16, 32, 32, 3)
        if p.user.startswith("<video>\nQuestion: AS-"):
            assert min(stamps) >= 1.0 - 1e-6 and max(stamps) <= 3.0 + 1e-6
        if p.user.startswith("<video>\nQuestion: ER-"):
            assert min(stamps) >= 2.0 - 0.34 and max(stamps) <= 8.0 + 0.34
    assert len(predictor.seen) == 11

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["protocol"]["name"] == "official" and saved["protocol"]["sampling"] == "mvbench"
    assert saved["model"]["class"].endswith("TablePredictor")
    assert saved["model"]["name"] == "table" and saved["model"]["n_answers"] == 11
    assert saved["extraction_rule"].startswith("tcllava-extract-v1")
    assert set(saved["data"]["sha256"]) == {
        "json/action_sequence.json",
        "json/episodic_reasoning.json",
        "json/object_shuffle.json",
    }
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in saved["data"]["sha256"].values())
    assert saved["world_size"] == 1 and saved["num_frames"] == 16 and saved["tcllava_version"]
    assert "| Action Sequence | 75.00 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 11 and len({x["id"] for x in lines}) == 11
    first = next(x for x in lines if x["id"] == "action_sequence/0")
    assert first == {
        "id": "action_sequence/0",
        "task": "Action Sequence",
        "prediction": "B) sat down",
        "extracted": "B",
        "truth": "B",
        "correct": True,
        "error": None,
    }


def test_mvbench_lmms_eval_protocol_differs_visibly(mvbench_dir, tmp_path) -> None:
    root, answers = mvbench_dir
    predictor = TablePredictor(answers)
    res = evaluate(
        predictor, EvalRun("mvbench", root, tmp_path, protocol="lmms-eval", num_workers=0, batch_size=4)
    )
    tasks = res["metrics"]["tasks"]
    # The empty answer leaves lmms-eval's denominator; the unparseable one stays (scored wrong).
    assert tasks["Object Shuffle"]["accuracy"] == pytest.approx(200 / 3)
    assert tasks["Object Shuffle"]["excluded"] == 1 and tasks["Object Shuffle"][
        "accuracy_all"
    ] == pytest.approx(50.0)
    assert tasks["Episodic Reasoning"]["accuracy"] == pytest.approx(100 / 3)
    assert res["metrics"]["average"] == pytest.approx((75 + 100 / 3 + 200 / 3) / 3)
    assert res["metrics"]["overall"]["accuracy"] == pytest.approx(60.0)
    assert res["protocol"]["name"] == "lmms-eval" and res["protocol"]["denominator"] == "non-empty"
    prompt = next(p for p, _, _ in predictor.seen if "OS-0" in p.user)
    assert prompt == Prompt(
        None,
        "<video>\nQuestion:OS-0 where is the ball?\nOption:\n(A) left\n(B) middle\n"
        "(C) right\nOnly give the best option.\n",
        "",
    )


def test_missing_and_corrupt_videos_are_counted_not_scored(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "json").mkdir(parents=True)
    videos = root / "video" / "clevrer" / "video_validation"
    videos.mkdir(parents=True)
    write_video(videos / "good.mp4", frames(16), FPS)
    (videos / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 50)
    rows = [
        {"video": v, "question": f"ME-{i}?", "candidates": ["yes", "no"], "answer": "yes"}
        for i, v in enumerate(["good.mp4", "missing.mp4", "corrupt.mp4", "good.mp4"])
    ]
    (root / "json" / "object_existence.json").write_text(json.dumps(rows))
    predictor = TablePredictor({"ME-0": "A", "ME-3": "B"})
    res = evaluate(predictor, EvalRun("mvbench", root, tmp_path / "out", num_workers=0))
    stats = res["metrics"]["tasks"]["Object Existence"]
    assert stats == {
        "n": 4,
        "errors": 2,
        "unparseable": 0,
        "empty": 0,
        "excluded": 0,
        "denominator": 2,
        "correct": 1,
        "accuracy": 50.0,
        "accuracy_all": 50.0,
    }
    assert len(predictor.seen) == 2
    lines = {
        x["id"]: x for x in map(json.loads, (tmp_path / "out" / "predictions.jsonl").read_text().splitlines())
    }
    assert "missing.mp4" in lines["object_existence/1"]["error"]
    assert "corrupt.mp4" in lines["object_existence/2"]["error"]
    assert lines["object_existence/2"]["correct"] is None
    assert (
        "| Object Existence | 50.00 | 50.00 | 4 | 2 | 2 | 0 | 0 |"
        in (tmp_path / "out" / "results.md").read_text()
    )


def test_resume_after_crash_does_no_duplicate_work(mvbench_dir, tmp_path) -> None:
    root, answers = mvbench_dir
    reference = evaluate(TablePredictor(answers), EvalRun("mvbench", root, tmp_path / "ref", num_workers=0))

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(
            TablePredictor(answers, fail_after=4), EvalRun("mvbench", root, out, batch_size=2, num_workers=2)
        )
    shard = out / "predictions.rank0-of1.jsonl"
    assert len(shard.read_text().splitlines()) == 1 + 4  # header + the 4 answered before the crash
    assert not (out / "results.json").exists()

    second = TablePredictor(answers)
    res = evaluate(second, EvalRun("mvbench", root, out, batch_size=2, num_workers=2))
    assert len(second.seen) == 11 - 4
    assert res["metrics"] == reference["metrics"]
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "ref" / "predictions.jsonl").read_text()

    # A torn last line (killed mid-write) is dropped and only that sample is redone.
    text = shard.read_text()
    shard.write_text(text[: len(text) - 20])
    third = TablePredictor(answers)
    res = evaluate(third, EvalRun("mvbench", root, out, num_workers=0))
    assert len(third.seen) == 1 and res["metrics"] == reference["metrics"]

    # A rerun with a different protocol is refused rather than mixed into the same files.
    with pytest.raises(EvalError, match="different run"):
        evaluate(TablePredictor(answers), EvalRun("mvbench", root, out, protocol="lmms-eval", num_workers=0))


def test_shards_merge_to_the_single_process_result(mvbench_dir, tmp_path, monkeypatch) -> None:
    root, answers = mvbench_dir
    single = evaluate(TablePredictor(answers), EvalRun("mvbench", root, tmp_path / "single", num_workers=0))

    out = tmp_path / "sharded"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    first = evaluate(TablePredictor(answers), EvalRun("mvbench", root, out, num_workers=0))
    assert first == {"status": "partial", "rank": 0, "world_size": 2, "incomplete_shards": [1]}
    monkeypatch.setenv("RANK", "1")
    p1 = TablePredictor(answers)
    res = evaluate(p1, EvalRun("mvbench", root, out, num_workers=0))
    assert len(p1.seen) == 5  # strided shard: 11 samples -> 6 + 5

    assert res["metrics"] == single["metrics"] and res["world_size"] == 2
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "single" / "predictions.jsonl").read_text()
    ids = [
        json.loads(x)["id"]
        for r in (0, 1)
        for x in (out / f"predictions.rank{r}-of2.jsonl").read_text().splitlines()[1:]
    ]
    assert sorted(ids) == sorted(
        json.loads(x)["id"] for x in (out / "predictions.jsonl").read_text().splitlines()
    )

    # An explicit merge step after all ranks gives the same numbers.
    (out / "results.json").unlink()
    assert merge(EvalRun("mvbench", root, out))["metrics"] == single["metrics"]


def test_synthetic_layout_uses_the_same_path(tmp_path) -> None:
    test = tmp_path / "syn" / "test"
    (test / "videos" / "count").mkdir(parents=True)
    write_video(test / "videos" / "count" / "0.mp4", frames(12), FPS)
    for task in ("count", "order"):
        rows = [
            {
                "video": "videos/count/0.mp4",
                "question": f"{task}-{i}?",
                "candidates": ["first", "second"],
                "answer": "second" if task == "count" else "first",
            }
            for i in range(2)
        ]
        (test / f"{task}.json").write_text(json.dumps(rows))
    predictor = TablePredictor({"count-0": "B", "count-1": "A", "order-0": "(A) first", "order-1": "A"})
    res = evaluate(
        predictor, EvalRun("synthetic", tmp_path / "syn", tmp_path / "out", num_frames=4, num_workers=0)
    )
    assert res["protocol"]["name"] == "official" and res["protocol"]["sampling"] == "middle"
    assert {k: v["accuracy"] for k, v in res["metrics"]["tasks"].items()} == {"count": 50.0, "order": 100.0}
    assert res["metrics"]["average"] == 75.0 and res["num_frames"] == 4
    assert predictor.seen[0][1] == (4, 32, 32, 3)


def test_limit_takes_first_rows_per_task(mvbench_dir) -> None:
    root, _ = mvbench_dir
    bench = load_benchmark("mvbench", root, limit=2)
    assert [s.id for s in bench.samples] == [
        "action_sequence/0",
        "action_sequence/1",
        "object_shuffle/0",
        "object_shuffle/1",
        "episodic_reasoning/0",
        "episodic_reasoning/1",
    ]


def test_bad_annotation_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "action_count.json").write_text(
        json.dumps([{"video": "x.mp4", "question": "q", "candidates": ["1", "2"], "answer": "3"}])
    )
    with pytest.raises(EvalError, match=r"action_count.json\[0\].*not one of the candidates"):
        load_benchmark("mvbench", tmp_path)


# ---------------------------------------------------------------- Video-MME

SRT = """1
00:00:00,000 --> 00:00:01,000
<font color="white" size=".72c">hello there</font>

2
00:00:01,500 --> 00:00:02,000
<font color="white" size=".72c">in the middle</font>

3
00:00:10,000 --> 00:00:12,000
<font color="white" size=".72c">much later</font>
"""


def make_videomme(root: Path) -> dict[str, str]:
    (root / "data").mkdir(parents=True)
    (root / "subtitle").mkdir()
    write_video(root / "data" / "fFjv93ACGo8.mp4", frames(3 * FPS), FPS)
    write_video(root / "data" / "JNmOsdx0ZGE.mp4", frames(2 * FPS), FPS)
    (root / "subtitle" / "fFjv93ACGo8.srt").write_text(SRT)
    opts = ["A. red", "B. green", "C. blue", "D. black"]
    spec = [  # (video_id, videoID, duration, domain, task_type, answer, reply)
        ("001", "fFjv93ACGo8", "short", "Knowledge", "OCR Problems", "A", "A"),
        ("001", "fFjv93ACGo8", "short", "Knowledge", "Counting Problem", "B", "The best answer is B."),
        ("001", "fFjv93ACGo8", "short", "Knowledge", "OCR Problems", "C", "D"),
        ("002", "JNmOsdx0ZGE", "medium", "Sports Competition", "Counting Problem", "D", "black"),
        ("002", "JNmOsdx0ZGE", "medium", "Sports Competition", "OCR Problems", "A", "no idea"),
    ]
    rows, answers = [], {}
    for k, (vid, yt, dur, dom, tt, ans, reply) in enumerate(spec):
        q = f"MME-{k} what colour is it?"
        rows.append(
            {
                "video_id": vid,
                "duration": dur,
                "domain": dom,
                "sub_category": "Other",
                "url": "",
                "videoID": yt,
                "question_id": f"{vid}-{k}",
                "task_type": tt,
                "question": q,
                "options": opts,
                "answer": ans,
            }
        )
        answers[q] = reply
    (root / "videomme.json").write_text(json.dumps(rows))
    return answers


def test_videomme_groups_and_subtitles(tmp_path) -> None:
    answers = make_videomme(tmp_path / "mme")
    predictor = TablePredictor(answers)
    run = EvalRun("videomme", tmp_path / "mme", tmp_path / "out", num_frames=4, num_workers=0, subtitles=True)
    res = evaluate(predictor, run)
    m = res["metrics"]
    assert m["overall"]["accuracy"] == pytest.approx(60.0) and m["overall"]["unparseable"] == 1
    groups = {f: {k: v["accuracy"] for k, v in g.items()} for f, g in m["groups"].items()}
    assert groups["duration"] == {"medium": 50.0, "short": pytest.approx(200 / 3)}
    assert groups["domain"] == {"Knowledge": pytest.approx(200 / 3), "Sports Competition": 50.0}
    assert groups["task_type"] == {"Counting Problem": 100.0, "OCR Problems": pytest.approx(100 / 3)}
    assert res["protocol"]["subtitles"] and res["subtitle_mode"] == "frames"

    by_q = {p.user.split("\n")[-6]: p for p, _, _ in predictor.seen}
    # 4 frames of a 3 s video at segment middles: t = 0.375, 1.125, 1.875, 2.625 s -> cues 1 and 2.
    p0 = by_q["MME-0 what colour is it?"]
    assert p0.user == (
        "<video>\nThis video's subtitles are listed below:\nhello there\nin the middle\n"
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\nMME-0 what colour is it?\n"
        "A. red\nB. green\nC. blue\nD. black\nThe best answer is:"
    )
    assert "No subtitles available" in by_q["MME-3 what colour is it?"].user


def test_videomme_without_subtitles_prompt(tmp_path) -> None:
    answers = make_videomme(tmp_path / "mme")
    predictor = TablePredictor(answers)
    res = evaluate(
        predictor, EvalRun("videomme", tmp_path / "mme", tmp_path / "out", num_frames=4, num_workers=0)
    )
    assert res["metrics"]["overall"]["accuracy"] == pytest.approx(60.0)
    user = predictor.seen[0][0].user
    assert user.startswith(
        "<video>\nSelect the best answer to the following multiple-choice question based "
        "on the video. Respond"
    )
    assert "subtitles" not in user and user.endswith("D. black\nThe best answer is:")


def test_srt_parsing_and_selection() -> None:
    lines = parse_srt(SRT)
    assert [(ln.start, ln.end, ln.text) for ln in lines] == [
        (0.0, 1.0, "hello there"),
        (1.5, 2.0, "in the middle"),
        (10.0, 12.0, "much later"),
    ]
    assert select_subtitles(lines, [0.999, 1.0, 2.0]) == ["hello there"]  # end is exclusive
    assert select_subtitles(lines, [1.5, 11.0]) == ["in the middle", "much later"]
    assert select_subtitles(lines, [], mode="all") == ["hello there", "in the middle", "much later"]


# ---------------------------------------------------------------- CLI


def test_cli_eval_runs_model_predictor(mvbench_dir, tmp_path, monkeypatch, capsys) -> None:
    from tcllava.cli import main

    root, answers = mvbench_dir
    made = {}

    class FakeModelPredictor(TablePredictor):
        @classmethod
        def from_pretrained(cls, model_dir, device=None, dtype=None, **gen_kwargs):
            made.update(model_dir=model_dir, device=device, dtype=dtype, **gen_kwargs)
            return cls(answers)

    module = types.ModuleType("tcllava.eval.model_predictor")
    module.ModelPredictor = FakeModelPredictor
    monkeypatch.setitem(sys.modules, "tcllava.eval.model_predictor", module)
    code = main(
        [
            "eval",
            "mvbench",
            "--model",
            "/models/x",
            "--data",
            str(root),
            "--out",
            str(tmp_path),
            "--num-workers",
            "0",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--sampling",
            "uniform",
        ]
    )
    assert code == 0
    assert made == {"model_dir": "/models/x", "device": "cpu", "dtype": None, "max_new_tokens": 8}
    out = capsys.readouterr().out
    assert "mvbench (official): average" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["limit"] == 2 and saved["metrics"]["overall"]["n"] == 6
    assert saved["protocol"]["sampling"] == "uniform" and saved["protocol"]["name"] == "official"

    assert main(["eval", "mvbench", "--data", str(root), "--out", str(tmp_path / "x"), "--subtitles"]) == 2


def test_likelihood_scoring_needs_options_and_a_ranking_predictor(mvbench_dir, tmp_path) -> None:
    from tcllava.eval.protocols import get_protocol

    root, replies = mvbench_dir
    with pytest.raises(ValueError, match="open-ended"):
        get_protocol("msvd-qa", scoring="likelihood")
    with pytest.raises(ValueError, match="unknown scoring"):
        get_protocol("mvbench", scoring="vote")
    assert (
        get_protocol("mvbench", "lmms-eval", scoring="likelihood").continuation(1, "sat down")
        == "(B) sat down"
    )
    assert get_protocol("videomme", scoring="likelihood").continuation(2, "a dog") == "C"
    with pytest.raises(EvalError, match="TablePredictor has no rank"):
        evaluate(
            TablePredictor(replies), EvalRun("mvbench", root, tmp_path, scoring="likelihood", num_workers=0)
        )


# ---------------------------------------------------------------- hostile and careless inputs


@pytest.fixture
def fake_model(monkeypatch):
    """`tcllava eval --model X` builds a TablePredictor answering from `answers`; `made` lists them."""
    state: dict = {"answers": {}, "made": []}

    class FakeModelPredictor(TablePredictor):
        @classmethod
        def from_pretrained(cls, model_dir, device=None, dtype=None, **gen_kwargs):
            state["made"].append(cls(state["answers"]))
            return state["made"][-1]

    module = types.ModuleType("tcllava.eval.model_predictor")
    module.ModelPredictor = FakeModelPredictor
    monkeypatch.setitem(sys.modules, "tcllava.eval.model_predictor", module)
    return state


def cli_eval(bench: str, data: Path, out: Path, *flags: str) -> int:
    from tcllava.cli import main

    argv = ["eval", bench, "--model", "/models/fake", "--data", str(data), "--out", str(out)]
    return main([*argv, "--num-workers", "0", *flags])


def one_error_line(err: str) -> str:
    """The CLI's whole stderr: exactly one `tcllava eval: ...` line (so no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcllava eval: "), err
    return lines[0]


def make_existence_task(root: Path, videos: list[str]) -> Path:
    """An MVBench Object Existence task asking `ME-i?` about each video (answer A); returns the video dir."""
    (root / "json").mkdir(parents=True)
    folder = root / "video" / "clevrer" / "video_validation"
    folder.mkdir(parents=True)
    rows = [
        {"video": v, "question": f"ME-{i}?", "candidates": ["yes", "no"], "answer": "yes"}
        for i, v in enumerate(videos)
    ]
    (root / "json" / "object_existence.json").write_text(json.dumps(rows))
    return folder


def test_failed_samples_are_retried_once_the_data_is_fixed(tmp_path, fake_model, capsys) -> None:
    folder = make_existence_task(tmp_path / "data", ["good.mp4", "late.mp4"])
    write_video(folder / "good.mp4", frames(16), FPS)
    fake_model["answers"] = {"ME-0": "A", "ME-1": "A"}
    out = tmp_path / "out"

    # late.mp4 is missing: 1 of 2 failed is over the default 5%, so the run fails, results still written.
    assert cli_eval("mvbench", tmp_path / "data", out) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "1 of 2 samples failed" in line and str(out / "predictions.jsonl") in line
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["overall"]["errors"] == 1
    assert results["failures"]["samples_failed"] == 1 and results["failures"]["message"]
    # A higher threshold accepts the same state (the failed sample is tried again, still missing).
    assert cli_eval("mvbench", tmp_path / "data", out, "--max-error-rate", "0.5") == 0
    assert "retrying 1 samples that failed before" in capsys.readouterr().err
    assert fake_model["made"][-1].seen == []

    write_video(folder / "late.mp4", frames(16), FPS)
    assert cli_eval("mvbench", tmp_path / "data", out) == 0
    assert "retrying 1 samples that failed before" in capsys.readouterr().err
    assert [p.user.split("\n")[1] for p, _, _ in fake_model["made"][-1].seen] == ["Question: ME-1?"]
    merged = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["error"], r["correct"]) for r in merged] == [
        ("object_existence/0", None, True),
        ("object_existence/1", None, True),
    ]
    shard = (out / "predictions.rank0-of1.jsonl").read_text().splitlines()
    assert len(shard) == 1 + 2 + 1 + 1  # header, first run, the retry that failed again, the good retry
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["overall"]["errors"] == 0 and results["metrics"]["overall"]["accuracy"] == 100.0


def test_a_run_where_every_sample_failed_exits_nonzero(tmp_path, fake_model, capsys) -> None:
    make_existence_task(tmp_path / "data", ["gone.mp4", "lost.mp4"])
    out = tmp_path / "out"
    assert cli_eval("mvbench", tmp_path / "data", out, "--max-error-rate", "1") == 1
    assert "2 of 2 samples failed" in one_error_line(capsys.readouterr().err)
    assert json.loads((out / "results.json").read_text())["metrics"]["overall"]["errors"] == 2


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--limit", "-1"], "limit (--limit) must be an integer >= 1, got -1"),
        (["--limit", "0"], "limit (--limit) must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
        (["--frames", "0"], "num_frames (--frames) must be an integer >= 1, got 0"),
        (["--num-workers", "-1"], "num_workers (--num-workers) must be an integer >= 0, got -1"),
        (["--judge-workers", "0"], "judge_workers (--judge-workers) must be an integer >= 1, got 0"),
        (["--max-error-rate", "1.5"], "max_error_rate (--max-error-rate) must be a fraction in [0, 1]"),
        (["--subtitles"], "subtitles exist only for videomme, not mvbench"),
    ],
)
def test_cli_refuses_out_of_range_settings(
    mvbench_dir, tmp_path, fake_model, capsys, flags: list[str], expected: str
) -> None:
    root, answers = mvbench_dir
    fake_model["answers"] = answers
    assert cli_eval("mvbench", root, tmp_path / "out", *flags) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert fake_model["made"] == [] and not (tmp_path / "out").exists()  # refused before any work


def test_eval_run_validates_for_the_python_api_too(tmp_path) -> None:
    with pytest.raises(EvalInputError, match=r"limit \(--limit\) must be an integer >= 1, got -1"):
        EvalRun("mvbench", tmp_path, tmp_path, limit=-1)
    with pytest.raises(EvalInputError, match="unknown value 'mvbnech'; choose from mvbench, videomme"):
        EvalRun("mvbnech", tmp_path, tmp_path)
    with pytest.raises(EvalInputError, match="msvd-qa has one protocol, official"):
        EvalRun("msvd-qa", tmp_path, tmp_path, protocol="lmms-eval")
    with pytest.raises(EvalInputError, match="msvd-qa is open-ended; likelihood scoring needs options"):
        EvalRun("msvd-qa", tmp_path, tmp_path, scoring="likelihood")
    with pytest.raises(EvalInputError, match=r"sampling \(--sampling\): unknown value 'random'"):
        EvalRun("mvbench", tmp_path, tmp_path, sampling="random")
    with pytest.raises(EvalInputError, match="timeout must be a number of seconds > 0"):
        EvalRun("mvbench", tmp_path, tmp_path, timeout=0)
    with pytest.raises(EvalInputError, match="rank must be below world_size"):
        EvalRun("mvbench", tmp_path, tmp_path, rank=2, world_size=2)
    run = EvalRun("videomme", str(tmp_path), str(tmp_path / "o"), subtitles=True, batch_size=4)
    assert run.out_dir == tmp_path / "o" and run.eval_protocol().subtitles and not run.judged


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


MME_ROW = {"videoID": "v", "question": "q?", "options": ["A. x", "B. y"], "answer": "A"}


@pytest.mark.parametrize(
    ("bench", "file", "text", "expected"),
    [
        (  # row 1 (0-based, as in the JSON list) lacks the candidates
            "mvbench",
            "json/action_antonym.json",
            json.dumps(
                [
                    {"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x"},
                    {"video": "a.mp4", "question": "q", "answer": "x"},
                ]
            ),
            "action_antonym.json[1]: missing key 'candidates' (a MVBench row needs video, question, "
            "candidates, answer)",
        ),
        (
            "mvbench",
            "json/action_antonym.json",
            json.dumps([{"video": "a.mp4", "question": "q", "candidates": ["x", "y"]}]),
            "action_antonym.json[0]: missing key 'answer'",
        ),
        (  # malformed JSON: the line and column of the fault
            "mvbench",
            "json/action_antonym.json",
            '[\n  {"video": "a.mp4",\n   "question": "q" "candidates": []}\n]',
            "action_antonym.json:3:20: not valid JSON (Expecting ',' delimiter)",
        ),
        (
            "mvbench",
            "json/action_antonym.json",
            '["a.mp4"]',
            "action_antonym.json[0]: a row is a JSON object",
        ),
        (  # JSONL: 1-based file lines, blank lines counted
            "videomme",
            "videomme.jsonl",
            json.dumps(MME_ROW) + "\n\n" + '{"videoID": "v", "question": \n',
            "videomme.jsonl:3:30: not valid JSON (Expecting value)",
        ),
        (
            "videomme",
            "videomme.jsonl",
            json.dumps(MME_ROW) + "\n\n\n" + json.dumps({k: v for k, v in MME_ROW.items() if k != "options"}),
            "videomme.jsonl:4: missing key 'options'",
        ),
        (
            "msvd-qa",
            "qa.json",
            json.dumps([{"video": "v", "question": "q"}]),
            "qa.json[0]: none of the keys 'answer', 'A', 'answers', 'a' present",
        ),
        (
            "videochatgpt",
            "consistency_qa.json",
            json.dumps([{"video_name": "v", "Q1": "a?", "A": "b"}]),
            "consistency_qa.json[0]: missing key 'Q2'",
        ),
    ],
)
def test_bad_annotation_files_name_file_row_and_key(
    tmp_path, fake_model, capsys, monkeypatch, bench: str, file: str, text: str, expected: str
) -> None:
    monkeypatch.setenv("TCLLAVA_JUDGE_URL", "http://127.0.0.1:9/v1")  # never reached: loading fails first
    monkeypatch.setenv("TCLLAVA_JUDGE_MODEL", "j")
    path = _write(tmp_path / "data" / file, text)
    assert cli_eval(bench, tmp_path / "data", tmp_path / "out") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{path.parent}/{expected}" in line, line
    with pytest.raises(EvalInputError):
        load_benchmark(bench, tmp_path / "data")


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cuda", "--device cuda: this torch build sees no CUDA GPU"),
        ("cuda:0", "--device cuda:0: this torch build sees no CUDA GPU"),
        ("gpu", "--device 'gpu' is not a device"),
    ],
)
def test_cli_device_that_cannot_work_is_refused(
    mvbench_dir, tmp_path, fake_model, capsys, monkeypatch, device: str, expected: str
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root, _ = mvbench_dir
    assert cli_eval("mvbench", root, tmp_path / "out", "--device", device) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert fake_model["made"] == []
