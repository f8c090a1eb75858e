"""`tcllava eval mvbench` end to end with a real tiny tcllava checkpoint (not a scripted predictor): the
CLI loads it through ModelPredictor, decodes fixture videos, generates in batches, extracts, scores and
resumes. Answers are checked against the model's own one-by-one `chat`, scores against a recount."""

from __future__ import annotations

import json
import shutil
import string
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hf_checkpoints import save_tiny_tcllava
from tcllava.cli import main
from tcllava.eval.model_predictor import ModelPredictor
from tcllava.eval.protocols import MVBENCH_SYSTEM
from tcllava.model import TCLlavaForConditionalGeneration, chat, load
from tcllava.model.factory import build_word_tokenizer
from tcllava.video import read_video, write_video

FPS = 8
FRAMES = 4
MAX_NEW_TOKENS = 3
# MVBench task file -> (its video folder in the published layout, [start, end] bound in seconds or None)
TASKS = {
    "action_sequence": ("star/Charades_v1_480", (1.0, 3.0)),
    "object_shuffle": ("perception/videos", None),
    "scene_transition": ("scene_qa/video", None),
}
TASK_NAMES = {
    "action_sequence": "Action Sequence",
    "object_shuffle": "Object Shuffle",
    "scene_transition": "Scene Transition",
}
ROWS = [  # (question, candidates, index of the answer)
    ("what colour was the ball first ?", ["red", "green", "blue"], 0),
    ("which cup moved ?", ["green", "blue"], 1),
    ("what colour was the cup last ?", ["red", "green", "blue"], 2),
]
# The output layer reaches only "A", "B" and ")" (every other logit is 0, and their logits sum
# to 0): the untrained model answers with letters and ")", some parseable ("A)A"), some not ("ABA").
HEAD_WORDS = ["A", "B", ")"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [
        MVBENCH_SYSTEM,
        "USER: ASSISTANT: Question: Options: (A) (B) (C) Only give the best option. Best option:(",
    ]
    tok = build_word_tokenizer(texts + [q + " " + " ".join(c) for q, c, _ in ROWS], extra_tokens=["<video>"])

    def steer_head(model, tok) -> None:
        head = model.language_model.lm_head.weight
        directions = torch.randn(len(HEAD_WORDS), head.shape[1]) * 5
        directions[-1] = -directions[:-1].sum(0)  # the letter logits sum to 0: one is always above 0
        head.zero_()
        for word, direction in zip(HEAD_WORDS, directions, strict=True):
            head[tok.convert_tokens_to_ids(word)] = direction

    path = tmp_path_factory.mktemp("tiny_mvbench_model")
    return save_tiny_tcllava(path, tok, pool_shape=(0, 2, 2), num_frames=FRAMES, seed=5, edit=steer_head)


@pytest.fixture(scope="module")
def free_checkpoint(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model with its whole output layer random, so option texts get different scores."""
    model, processor = load(checkpoint)
    torch.manual_seed(1)
    with torch.no_grad():
        model.language_model.lm_head.weight.normal_(std=0.5)
    path = tmp_path_factory.mktemp("tiny_mvbench_free")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mvbench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """json/{task}.json + video/{prefix}/{file}: one 4 s random video per task, the ROWS about it."""
    root = tmp_path_factory.mktemp("mvbench_model")
    (root / "json").mkdir()
    rng = np.random.default_rng(0)
    for task, (prefix, bound) in TASKS.items():
        (root / "video" / prefix).mkdir(parents=True)
        write_video(
            root / "video" / prefix / f"{task}.mp4", rng.integers(0, 256, (4 * FPS, 32, 40, 3), np.uint8), FPS
        )
        rows = []
        for question, candidates, answer in ROWS:
            row: dict[str, Any] = {"video": f"{task}.mp4", "question": question, "candidates": candidates}
            row["answer"] = candidates[answer]
            if bound:
                row.update(start=bound[0], end=bound[1])
            rows.append(row)
        (root / "json" / f"{task}.json").write_text(json.dumps(rows))
    return root


def run_eval(model: Path, data: Path, out: Path, batch_size: int, workers: int = 2) -> None:
    argv = ["eval", "mvbench", "--model", str(model), "--data", str(data), "--out", str(out)]
    argv += ["--frames", str(FRAMES), "--batch-size", str(batch_size), "--num-workers", str(workers)]
    assert main([*argv, "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0


def predictions(out: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def batched_run(checkpoint: Path, mvbench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_batch2")
    run_eval(checkpoint, mvbench, out, batch_size=2)
    return out


def test_results_record_protocol_model_and_counts(checkpoint: Path, batched_run: Path) -> None:
    results = json.loads((batched_run / "results.json").read_text())
    protocol = results["protocol"]
    assert protocol["name"] == "official" and protocol["system"] == MVBENCH_SYSTEM
    assert protocol["assistant_prefix"] == "Best option:(" and protocol["sampling"] == "mvbench"
    assert results["num_frames"] == FRAMES
    expected_model = ModelPredictor.from_pretrained(checkpoint, max_new_tokens=MAX_NEW_TOKENS).describe()
    assert results["model"] == {
        "class": "tcllava.eval.model_predictor.ModelPredictor",
        **json.loads(json.dumps(expected_model)),
    }

    # Recount every number from the predictions and the fixture's own answers.
    records = predictions(batched_run)
    assert len(records) == len(TASKS) * len(ROWS)
    tasks = results["metrics"]["tasks"]
    assert list(tasks) == list(TASK_NAMES.values())
    parsed = 0
    for task, name in TASK_NAMES.items():
        rows = [records[f"{task}/{k}"] for k in range(len(ROWS))]
        truth = [string.ascii_uppercase[answer] for _, _, answer in ROWS]
        correct = sum(r["extracted"] == t for r, t in zip(rows, truth, strict=True))
        stats = tasks[name]
        assert stats["n"] == len(ROWS) and stats["errors"] == 0
        assert stats["unparseable"] == sum(r["extracted"] is None for r in rows)
        assert stats["empty"] == sum(not r["prediction"].strip() for r in rows)
        assert stats["correct"] == correct
        assert stats["accuracy"] == pytest.approx(100 * correct / len(ROWS))
        parsed += len(ROWS) - stats["unparseable"]
    # The fixture model (seed 5) answers differently per video and question: some right, some wrong,
    # some unparseable. Without parsed answers the recount would prove little.
    assert parsed > 0
    accuracies = [t["accuracy"] for t in tasks.values()]
    assert results["metrics"]["average"] == pytest.approx(sum(accuracies) / len(accuracies))


def official_questions(mvbench: Path):
    """(task, clip as the official protocol samples it, row index, official user text, candidates, answer
    index) for every fixture question, with the prompt written out here rather than by the evaluator."""
    for task, (prefix, bound) in TASKS.items():
        start, end = bound or (None, None)
        clip = read_video(mvbench / "video" / prefix / f"{task}.mp4", FRAMES, "mvbench", start, end)
        for k, (question, candidates, answer) in enumerate(ROWS):
            options = "\n".join(f"({string.ascii_uppercase[i]}) {c}" for i, c in enumerate(candidates))
            user = f"Question: {question}\nOptions:\n{options}\nOnly give the best option."
            yield task, clip, k, user, candidates, answer


def test_predictions_are_the_models_own_greedy_answers(
    checkpoint: Path, mvbench: Path, batched_run: Path
) -> None:
    """Each batched prediction equals `chat` on the same frames with the official prompt written out here."""
    records = predictions(batched_run)
    model, processor = load(checkpoint)
    for task, clip, k, user, _candidates, _answer in official_questions(mvbench):
        answer = chat(
            model,
            clip.frames,
            user,
            processor,
            system=MVBENCH_SYSTEM,
            answer_prefix="Best option:(",
            max_new_tokens=MAX_NEW_TOKENS,
        )
        assert records[f"{task}/{k}"]["prediction"] == answer


def test_batch_size_does_not_change_predictions(
    checkpoint: Path, mvbench: Path, batched_run: Path, tmp_path: Path
) -> None:
    run_eval(checkpoint, mvbench, tmp_path, batch_size=1, workers=0)
    one_by_one = {k: r["prediction"] for k, r in predictions(tmp_path).items()}
    assert one_by_one == {k: r["prediction"] for k, r in predictions(batched_run).items()}


def test_rerun_resumes_without_generating(
    checkpoint: Path, mvbench: Path, batched_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(batched_run, out)
    calls = []
    original = TCLlavaForConditionalGeneration.generate

    def counting_generate(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TCLlavaForConditionalGeneration, "generate", counting_generate)
    run_eval(checkpoint, mvbench, out, batch_size=2, workers=0)
    assert calls == []
    again = json.loads((out / "results.json").read_text())
    first = json.loads((batched_run / "results.json").read_text())
    assert again["metrics"] == first["metrics"]
    assert (out / "predictions.jsonl").read_text() == (batched_run / "predictions.jsonl").read_text()

    (out / "predictions.rank0-of1.jsonl").write_text(
        "".join(line + "\n" for line in (out / "predictions.rank0-of1.jsonl").read_text().splitlines()[:-1])
    )
    run_eval(checkpoint, mvbench, out, batch_size=2, workers=0)  # the dropped last sample is redone
    assert len(calls) == 1
    assert (out / "predictions.jsonl").read_text() == (batched_run / "predictions.jsonl").read_text()


def manual_option_logprob(model, processor, frames, user: str, continuation: str) -> float:
    """Log-probability of `continuation` after the official prompt, from one unpadded full forward."""
    from tcllava.model import Message

    prompt = processor(
        [Message("system", MVBENCH_SYSTEM), Message("user", f"<video>\n{user}")],
        [frames],
        answer_prefix="Best option:(",
    )
    target = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor([target])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values_videos=prompt["pixel_values_videos"]).logits
    logprobs = torch.log_softmax(logits[0, -len(target) - 1 : -1], dim=-1)
    return float(logprobs.gather(-1, torch.tensor(target)[:, None]).sum())


def test_likelihood_scoring_ranks_whole_answers(free_checkpoint: Path, mvbench: Path, tmp_path: Path) -> None:
    """`--scoring likelihood`: every option's whole answer "B) green" is scored as a manual forward pass
    scores it; the best one is the prediction, and the protocol record says how it was chosen."""
    argv = [
        "eval",
        "mvbench",
        "--model",
        str(free_checkpoint),
        "--data",
        str(mvbench),
        "--out",
        str(tmp_path),
    ]
    argv += ["--frames", str(FRAMES), "--batch-size", "2", "--scoring", "likelihood"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["protocol"]["scoring"] == "likelihood"
    assert results["protocol"]["answer_format"] == "{letter}) {option}"
    records = predictions(tmp_path)
    model, processor = load(free_checkpoint)
    chosen = Counter()
    for task, clip, k, user, candidates, answer in official_questions(mvbench):
        expected = [
            manual_option_logprob(model, processor, clip.frames, user, f"{string.ascii_uppercase[i]}) {c}")
            for i, c in enumerate(candidates)
        ]
        record = records[f"{task}/{k}"]
        assert record["option_scores"] == pytest.approx(expected, abs=1e-4)
        best = int(np.argmax(expected))
        assert record["prediction"] == f"({string.ascii_uppercase[best]}) {candidates[best]}"
        assert record["correct"] == (best == answer)
        chosen[best] += 1
    assert len(chosen) > 1  # the fixture model prefers different options for different questions
    correct = sum(r["correct"] for r in records.values())
    assert results["metrics"]["overall"]["accuracy"] == pytest.approx(100 * correct / len(records))

    # Predictions made one way are never mixed with the other: generating into this folder is refused.
    assert main(argv[:-2]) == 1
