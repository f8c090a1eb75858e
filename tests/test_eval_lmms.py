"""The lmms-eval plugin against lmms-eval 0.7.3's own registry, Instance class and evaluator, on a tiny
tcllava checkpoint; answers and scores are compared with tcllava's own chat/predictor and with a plain
log-softmax over one unpadded forward pass. No task data is downloaded: the evaluator runs local tasks."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance

from hf_checkpoints import save_tiny_tcllava
from tcllava.eval.lmms_plugin import TCLlava
from tcllava.eval.model_predictor import ModelPredictor
from tcllava.eval.predictor import Prompt
from tcllava.model import Message, TCLlavaForConditionalGeneration, TCLlavaProcessor, chat, load
from tcllava.video import read_video, write_video

TASK, SPLIT = "tiny_task", "test"
VIDEO_CONTEXT = "describe the video ."  # the fixture model answers it with several words
GREEDY = {"do_sample": False, "temperature": 0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_tcllava(tmp_path_factory.mktemp("tiny_lmms"))


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Documents as a task holds them: a video path, a PIL image, a second video, text only, the image
    as a PNG path, and a video with an image."""
    rng = np.random.default_rng(0)
    media = tmp_path_factory.mktemp("media")
    write_video(media / "clip.mp4", rng.integers(0, 256, (16, 32, 40, 3), np.uint8), 8)
    image = Image.fromarray(rng.integers(0, 256, (36, 30, 3), np.uint8))
    image.save(media / "image.png")
    video = str(media / "clip.mp4")
    return [
        {"video": video},
        {"image": image},
        {"video": video},
        {},
        {"image": str(media / "image.png")},
        {"video": video, "image": image},
    ]


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    return [doc[k] for k in ("video", "image") if k in doc]


@pytest.fixture
def lm(checkpoint: Path, docs: list[dict[str, Any]]) -> TCLlava:
    """Built the way lmms-eval's evaluator builds it: from the --model_args string plus its own config."""
    model = TCLlava.create_from_arg_string(
        f"pretrained={checkpoint},num_frames=4", {"batch_size": 2, "device": "cpu"}
    )
    model.task_dict = {TASK: {SPLIT: docs}}
    return model


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> tuple[TCLlavaForConditionalGeneration, TCLlavaProcessor]:
    return load(checkpoint, num_frames=4)


def generate_request(context: str, doc_id: int, **gen_kwargs: Any) -> Instance:
    args = (context, {**GREEDY, **gen_kwargs}, doc_to_visual, doc_id, TASK, SPLIT)
    return Instance("generate_until", args, idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def loglikelihood_request(context: str, continuation: Any, doc_id: int | None) -> Instance:
    args = (
        (context, continuation)
        if doc_id is None
        else (context, continuation, doc_to_visual, doc_id, TASK, SPLIT)
    )
    return Instance(
        "loglikelihood", args, idx=0, metadata={"task": TASK, "doc_id": doc_id or 0, "repeats": 1}
    )


def frames_of(doc: dict[str, Any]) -> tuple[str, torch.Tensor] | None:
    if "video" in doc:
        return "<video>", read_video(doc["video"], 4).frames
    if "image" in doc:
        return "<image>", torch.from_numpy(np.array(doc["image"]))[None]
    return None


def manual_logprobs(
    model, processor, context: str, doc: dict[str, Any], continuation: str
) -> tuple[float, int, bool]:
    """Batch of one, no padding, logits of every position: (sum of the continuation's log-probs, its
    token count, whether each of its tokens is the argmax)."""
    clip = frames_of(doc)
    user = f"{clip[0]}\n{context}" if clip else context
    prompt = processor([Message("user", user)], [clip[1]] if clip else None)
    cont = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor([cont])], dim=1)
    with torch.no_grad():
        logprobs = (
            model(input_ids=ids, pixel_values_videos=prompt["pixel_values_videos"]).logits[0].log_softmax(-1)
        )
    start = prompt["input_ids"].shape[1] - 1
    rows = logprobs[start : start + len(cont)]
    picked = rows[torch.arange(len(cont)), torch.tensor(cont)]
    return float(picked.sum()), len(cont), bool((rows.argmax(-1) == torch.tensor(cont)).all())


def test_lmms_eval_registry_finds_tcllava_through_the_entry_point() -> None:
    from lmms_eval.models import get_model, list_available_models

    (entry,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "tcllava"]
    assert entry.value == "tcllava.eval.lmms_plugin:lmms_manifest"
    assert "tcllava" in list_available_models()
    assert get_model("tcllava") is TCLlava


def test_model_args_are_taken_as_lmms_eval_passes_them(checkpoint: Path) -> None:
    lm = TCLlava.create_from_arg_string(
        f"pretrained={checkpoint},num_frames=6,dtype=float32,gamma=0.0,mask=causal",
        {"batch_size": "auto", "max_batch_size": 8, "device": "cpu"},
    )
    assert lm.num_frames == 6 and lm.batch_size == 1 and lm.device == torch.device("cpu")
    assert lm.model.config.tc_attention.gamma == 0.0 and lm.model.config.tc_attention.mask == "causal"
    assert lm.model.dtype == torch.float32 and lm.rank == 0 and lm.world_size == 1
    with pytest.raises(ValueError, match="loglikelihood_score"):
        TCLlava(str(checkpoint), loglikelihood_score="mean")


def test_generate_until_equals_chat_and_the_batched_predictor(lm: TCLlava, docs, reference) -> None:
    contexts = [VIDEO_CONTEXT, "what happens first ?", "red ball left or right ?", "describe the video ."]
    contexts += ["what happens first ?", "what happens then ?"]
    answers = lm.generate_until([generate_request(c, i) for i, c in enumerate(contexts)])  # batches of 2

    model, processor = reference
    image = frames_of(docs[1])[1]
    assert answers[0] == chat(model, docs[0]["video"], contexts[0], processor, num_frames=4, max_new_tokens=8)
    assert answers[1] == chat(model, image, contexts[1], processor, max_new_tokens=8)
    batch = processor([Message("user", contexts[3])])
    out = model.generate(**batch, max_new_tokens=8, eos_token_id=processor.stop_token_ids(), do_sample=False)
    assert answers[3] == processor.decode(out[0, batch["input_ids"].shape[1] :])
    predictor = ModelPredictor(model, processor, max_new_tokens=8)
    clips = [read_video(docs[i]["video"], 4) for i in (0, 2)]
    prompts = [Prompt(None, f"<video>\n{contexts[i]}") for i in (0, 2)]
    assert predictor.generate(clips, prompts) == [answers[0], answers[2]]
    assert len(answers[0].split()) >= 3  # a real multi-word answer was compared
    assert answers[4] == answers[1]  # the image as a file: the same pixels, the same answer
    batch = processor(
        [Message("user", f"<video>\n<image>\n{contexts[5]}")], [read_video(docs[5]["video"], 4).frames, image]
    )
    out = model.generate(**batch, max_new_tokens=8, eos_token_id=processor.stop_token_ids(), do_sample=False)
    assert answers[5] == processor.decode(out[0, batch["input_ids"].shape[1] :])


def test_until_strings_stop_generation_and_are_cut(lm: TCLlava, monkeypatch: pytest.MonkeyPatch) -> None:
    new_tokens: list[int] = []
    original = TCLlavaForConditionalGeneration.generate

    def recording_generate(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        new_tokens.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(TCLlavaForConditionalGeneration, "generate", recording_generate)
    (free,) = lm.generate_until([generate_request(VIDEO_CONTEXT, 0, until=[])])
    stop = free.split()[1]
    (cut,) = lm.generate_until([generate_request(VIDEO_CONTEXT, 0, until=["never said", stop])])
    assert cut == free.split(stop)[0].strip() and cut != free
    assert new_tokens[1] < new_tokens[0]  # generation stopped at the stop string, not only the text


def test_loglikelihood_equals_a_manual_log_softmax_sum(lm: TCLlava, docs, reference) -> None:
    model, processor = reference
    tok = processor.tokenizer
    # The greedy continuation of the video prompt, found by argmax over full forward passes, and the
    # same with its last word changed.
    prompt = processor([Message("user", f"<video>\n{VIDEO_CONTEXT}")], [frames_of(docs[0])[1]])
    ids = prompt["input_ids"]
    with torch.no_grad():
        for _ in range(3):
            logits = model(input_ids=ids, pixel_values_videos=prompt["pixel_values_videos"]).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    best = ids[0, -3:].tolist()
    other = tok.convert_tokens_to_ids("cup" if tok.decode(best[-1]) != "cup" else "ball")
    greedy_text, other_text = tok.decode(best), tok.decode([*best[:-1], other])
    assert tok(greedy_text, add_special_tokens=False)["input_ids"] == best  # the text round-trips

    cases = [  # (context, continuation as the task gives it, doc id or None for a bare pair, its text)
        (VIDEO_CONTEXT, " red ball", 0, " red ball"),
        ("what happens first ?", lambda doc: "green cup", 1, "green cup"),
        ("describe the video .", "yes", None, "yes"),
        (VIDEO_CONTEXT, greedy_text, 0, greedy_text),
        (VIDEO_CONTEXT, other_text, 0, other_text),
    ]
    expected = [
        manual_logprobs(model, processor, c, docs[d] if d is not None else {}, t) for c, _, d, t in cases
    ]
    assert [is_greedy for _, _, is_greedy in expected[3:]] == [True, False]

    requests = [loglikelihood_request(c, cont, d) for c, cont, d, _ in cases]
    mean_nll = lm.loglikelihood(requests)  # batches of 2: rows of different lengths, left-padded
    lm.loglikelihood_score, lm.batch_size = "sum_logprob", 1
    sum_logprob = lm.loglikelihood(requests)
    for (total, count, is_greedy), nll, logprob in zip(expected, mean_nll, sum_logprob, strict=True):
        assert logprob == (pytest.approx(total, abs=1e-4), is_greedy)
        assert nll == (pytest.approx(-total / count, abs=1e-4), is_greedy)


def test_unsupported_requests_fail_clearly(lm: TCLlava) -> None:
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        lm.generate_until_multi_round([])
    lm.task_dict[TASK][SPLIT] = [{"audio": {"array": np.zeros(16000), "sampling_rate": 16000}}]
    audio = Instance(
        "generate_until",
        ("listen", GREEDY, lambda doc: [doc["audio"]], 0, TASK, SPLIT),
        idx=0,
        metadata={"task": TASK, "doc_id": 0, "repeats": 1},
    )
    with pytest.raises(TypeError, match="audio"):
        lm.generate_until([audio])


# ---------------------------------------------------------------- lmms-eval's evaluator, a local task

TASK_YAML = """
task: tcllava_tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs: {{max_new_tokens: 8, temperature: 0, do_sample: false, until: [":"]}}
process_results: !function utils.exact_match
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = """
def doc_to_visual(doc):
    return [doc["video"]]

def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]

def exact_match(doc, results):
    return {"exact_match": float(results[0] == doc["answer"])}
"""


def test_lmms_eval_simple_evaluate_runs_a_local_task(
    checkpoint: Path, docs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole lmms-eval path: a task YAML, its dataset loading (local JSON), request building, our
    model found by name, its scoring. Logged answers must be what the plugin gives when called directly."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [
        {"video": docs[0]["video"], "question": VIDEO_CONTEXT, "answer": "no"},
        {"video": docs[0]["video"], "question": "what happens first ?", "answer": "cup"},
    ]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "data.json").write_text(json.dumps(rows))
    (tasks / "utils.py").write_text(TASK_UTILS)
    (tasks / "tiny.yaml").write_text(TASK_YAML.format(data=tasks / "data.json"))

    out = simple_evaluate(
        model="tcllava",
        model_args=f"pretrained={checkpoint},num_frames=4",
        tasks=["tcllava_tiny_generate"],
        task_manager=TaskManager(include_path=str(tasks)),
        batch_size=2,
        device="cpu",
        log_samples=True,
    )

    direct = TCLlava(str(checkpoint), num_frames=4)
    direct.task_dict = {TASK: {SPLIT: rows}}
    until = {"max_new_tokens": 8, "temperature": 0, "do_sample": False, "until": [":"]}
    answers = direct.generate_until([generate_request(r["question"], i, **until) for i, r in enumerate(rows)])
    logged = {s["doc_id"]: s["resps"][0][0] for s in out["samples"]["tcllava_tiny_generate"]}
    assert [logged[i] for i in range(len(rows))] == answers
    # Cut at the task's stop string: each answer is the unconstrained answer up to its first ":".
    free = {**until, "until": []}
    uncut = direct.generate_until([generate_request(r["question"], i, **free) for i, r in enumerate(rows)])
    assert answers == [u.split(":")[0].strip() for u in uncut]
    matches = [float(a == r["answer"]) for a, r in zip(answers, rows, strict=True)]
    assert out["results"]["tcllava_tiny_generate"]["exact_match,none"] == pytest.approx(np.mean(matches))


@pytest.mark.xfail(
    strict=True,
    reason="lmms-eval 0.7.3 bug: its evaluator passes every result through unwrap_generation_output, which "
    "turns a (score, is_greedy) pair into a string, so loglikelihood/multiple_choice tasks fail in "
    "process_results for every model; loglikelihood is right when called through the model API",
)
def test_lmms_eval_evaluator_keeps_loglikelihood_pairs() -> None:
    from lmms_eval.api.instance import unwrap_generation_output

    assert unwrap_generation_output((0.5, True))[0] == (0.5, True)
