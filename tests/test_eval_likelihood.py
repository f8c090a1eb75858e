"""Likelihood scoring from one pass over the shared prompt (`ModelPredictor.rank`, `option_logprobs` and the
lmms-eval plugin's loglikelihood) against an independent reference: one unpadded full forward pass per
option, without a cache, over prompt + option. A random tiny model (its output layer random, so options
get different scores) runs in float64, so any difference beyond rounding is a wrong position or mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hf_checkpoints import WORDS, save_tiny_tcllava
from tcllava.eval.model_predictor import ModelPredictor, option_ids, option_logprobs
from tcllava.eval.predictor import Prompt
from tcllava.model import Message, TCLlavaForConditionalGeneration, TCLlavaProcessor, load
from tcllava.model.factory import build_word_tokenizer
from tcllava.model.processing import IGNORE_INDEX
from tcllava.video import Clip, read_video, write_video

PREFIX = "Best option:("
SETTINGS = {  # TC-LLaVA, vanilla, and a non-prefix mask with the other reading of text after video
    "tc": {"gamma": 1.0, "mask": "frame_block_causal"},
    "vanilla": {"gamma": 0.0, "mask": "causal"},
    "frame_block_next": {"gamma": 0.5, "mask": "frame_block", "text_after_video": "next"},
}
# (frames, system, user, options): prompts of different lengths, 3, 2 and 5 options
SAMPLES = [
    (
        4,
        "Carefully watch the video .",
        "<video>\nQuestion: what happens first ?\nOptions:\n(A) red ball\n(B) green cup\n(C) blue\n"
        "Only give the best option.",
        ["A) red ball", "B) green cup", "C) blue"],
    ),
    (2, None, "what happens then ? <video>", ["A) yes", "B) no"]),
    (
        3,
        None,
        "<video>\nQuestion: the ball ?",
        ["A) left", "B) right", "C) red green blue ball cup", "D) the video", "E) no"],
    ),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [" ".join(WORDS), "USER : ASSISTANT ? . , \n", PREFIX, "Question: Options: (A) (B) (C) (D) (E)"]
    texts.append("Carefully watch the video . Only give the best option. A) B) C) D) E)")
    tok = build_word_tokenizer(texts, extra_tokens=["<video>"])

    def random_head(model, tok) -> None:
        model.language_model.lm_head.weight.normal_(std=0.5)

    path = tmp_path_factory.mktemp("tiny_likelihood")
    return save_tiny_tcllava(path, tok, pool_shape=(0, 2, 2), seed=3, edit=random_head)


def load_double(
    checkpoint: Path, **settings: Any
) -> tuple[TCLlavaForConditionalGeneration, TCLlavaProcessor]:
    model, processor = load(checkpoint, **settings)
    return model.double(), processor


def clips() -> list[Clip]:
    rng = np.random.default_rng(0)
    return [
        Clip(torch.from_numpy(rng.integers(0, 256, (n, 32, 40, 3), np.uint8)), torch.arange(n).float())
        for n, *_ in SAMPLES
    ]


def full_pass(model, ids: list[int], pixels: list[torch.Tensor], start: int) -> tuple[float, int, bool]:
    """(summed log-prob, count, all greedy) of ids[start:] from one forward over the whole unpadded row."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), pixel_values_videos=pixels, use_cache=False).logits
    logprobs = torch.log_softmax(logits[0, start - 1 : -1], dim=-1)
    targets = torch.tensor(ids[start:])
    picked = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    return float(picked.sum()), len(targets), bool((logprobs.argmax(-1) == targets).all())


def reference_score(model, processor, clip: Clip, system, user: str, text: str) -> tuple[float, int, bool]:
    """The option as training writes it: prompt + answer encoded as one sequence, its labels the answer."""
    messages = ([Message("system", system)] if system else []) + [Message("user", user)]
    pieces = processor.render(messages, answer_prefix=PREFIX)
    encoded = processor.encode([*pieces, (text, True)], [clip.frames])
    start = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert all(label != IGNORE_INDEX for label in encoded.labels[start:])
    return full_pass(model, encoded.input_ids, encoded.pixel_values, start)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_rank_equals_one_full_pass_per_option(checkpoint: Path, setting: str) -> None:
    model, processor = load_double(checkpoint, **SETTINGS[setting])
    frames = clips()
    prompts = [Prompt(system, user, PREFIX) for _, system, user, _ in SAMPLES]
    options = [texts for *_, texts in SAMPLES]
    expected = [
        [reference_score(model, processor, clip, system, user, text)[0] for text in texts]
        for clip, (_, system, user, texts) in zip(frames, SAMPLES, strict=True)
    ]
    # Several prompts per prefill (left-padded), options spilling over batches, one option per batch.
    for batch_rows in (64, 4, 1):
        scores = ModelPredictor(model, processor, batch_rows=batch_rows).rank(frames, prompts, options)
        assert [len(s) for s in scores] == [len(t) for t in options]
        for got, want in zip(scores, expected, strict=True):
            assert got == pytest.approx(want, abs=1e-8)
            assert int(np.argmax(got)) == int(np.argmax(want))
    assert len({int(np.argmax(s)) for s in expected}) > 1  # the model's preferences vary between samples
    assert all(len(set(np.round(s, 3))) == len(s) for s in expected)  # and between options


def test_each_prompt_and_clip_runs_once(checkpoint: Path) -> None:
    """The vision tower sees each clip's frames once, and the LLM runs the prompts once (one prefill);
    the other forwards carry option tokens only."""
    model, processor = load_double(checkpoint)
    frames = clips()
    seen_frames: list[int] = []
    query_lengths: list[int] = []
    hooks = [
        model.vision_tower.register_forward_hook(lambda m, args, out: seen_frames.append(args[0].shape[0])),
        model.language_model.register_forward_pre_hook(
            lambda m, args, kwargs: query_lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
        ),
    ]
    prompts = [Prompt(system, user, PREFIX) for _, system, user, _ in SAMPLES]
    ModelPredictor(model, processor, batch_rows=64).rank(frames, prompts, [t for *_, t in SAMPLES])
    for hook in hooks:
        hook.remove()
    assert sum(seen_frames) == sum(n for n, *_ in SAMPLES)
    longest_option = max(len(option_ids(processor, t)) for *_, texts in SAMPLES for t in texts)
    assert len(query_lengths) == 2 and query_lengths[1] == longest_option - 1


def test_option_logprobs_counts_and_greedy_flags(checkpoint: Path) -> None:
    """Greedy flags and counts agree with the reference, for the model's own greedy answer, another
    answer and an empty continuation, mixed in one batch."""
    model, processor = load_double(checkpoint, **SETTINGS["tc"])
    clip = clips()[0]
    _, system, user, _ = SAMPLES[0]
    pieces = processor.render([Message("system", system), Message("user", user)], answer_prefix=PREFIX)
    prompt = processor.encode(pieces, [clip.frames])
    ids = list(prompt.input_ids)
    for _ in range(3):  # the greedy continuation, by argmax over full passes
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), pixel_values_videos=prompt.pixel_values).logits
        ids.append(int(logits[0, -1].argmax()))
    greedy = ids[len(prompt.input_ids) :]
    other = [*greedy[:-1], (greedy[-1] + 1) % model.config.text_config.vocab_size]
    options = [greedy, other, [], option_ids(processor, "B) green cup")]
    expected = [
        full_pass(model, prompt.input_ids + o, prompt.pixel_values, len(prompt.input_ids))
        for o in options[:2]
    ]
    expected += [(0.0, 0, True), reference_score(model, processor, clip, system, user, "B) green cup")]
    short = processor.encode(
        processor.render([Message("user", "<video> yes")], answer_prefix=PREFIX), [clip.frames[:2]]
    )
    scores, short_scores = option_logprobs(
        model, processor, [prompt, short], [options, [greedy]], batch_rows=3
    )
    assert [s[1:] for s in scores] == [e[1:] for e in expected]
    assert [s[1:] for s in expected[:2]] == [(3, True), (3, False)]
    assert [s[0] for s in scores] == pytest.approx([e[0] for e in expected], abs=1e-8)
    ref_short = full_pass(model, short.input_ids + greedy, short.pixel_values, len(short.input_ids))
    assert (
        short_scores[0][0] == pytest.approx(ref_short[0], abs=1e-8) and short_scores[0][1:] == ref_short[1:]
    )


def test_option_ids_continue_the_encoded_prompt(checkpoint: Path) -> None:
    _, processor = load(checkpoint)
    pieces = processor.render([Message("user", "what happens first ?")], answer_prefix=PREFIX)
    whole = processor.encode([*pieces, ("C) red green", True)])
    assert processor.encode(pieces).input_ids + option_ids(processor, "C) red green") == whole.input_ids
    with pytest.raises(ValueError, match="placeholders"):
        option_ids(processor, "A) <video>")


# -- the lmms-eval plugin --


def test_lmms_loglikelihood_equals_full_passes(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multiple-choice requests (interleaved across questions, one bare pair) give the full-pass scores in
    request order; each question's video is read once and its prompt run once."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    import tcllava.eval.lmms_plugin as plugin

    rng = np.random.default_rng(1)
    docs = []
    for k, frames in enumerate((8, 16)):
        write_video(tmp_path / f"clip{k}.mp4", rng.integers(0, 256, (frames, 32, 40, 3), np.uint8), 8)
        docs.append({"video": str(tmp_path / f"clip{k}.mp4")})
    lm = plugin.TCLlava.create_from_arg_string(f"pretrained={checkpoint},num_frames=4", {"batch_size": 3})
    lm.model.double()
    lm.task_dict = {"task": {"test": docs}}

    def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
        return [doc["video"]]

    questions = [("what happens first ?", 0), ("what happens first ?", 1), ("the ball ?", 0)]
    answers = [" red ball", " green cup", " blue cup", " yes no"]  # two tokens each
    cases = [(q, a, d) for a in answers for q, d in questions] + [("the cup ?", " no", None)]
    requests = [
        Instance(
            "loglikelihood",
            (ctx, cont) if d is None else (ctx, cont, doc_to_visual, d, "task", "test"),
            idx=0,
            metadata={"task": "task", "doc_id": d or 0, "repeats": 1},
        )
        for ctx, cont, d in cases
    ]
    reads: list[str] = []

    def counting_read(path, *args, **kwargs):
        reads.append(str(path))
        return read_video(path, *args, **kwargs)

    monkeypatch.setattr(plugin, "read_video", counting_read)
    lm.loglikelihood_score = "sum_logprob"
    got = lm.loglikelihood(requests)
    assert len(reads) == len(questions)
    lm.loglikelihood_score = "mean_nll"
    got_nll = lm.loglikelihood(requests)

    model, processor = lm.model, lm.processor
    for (ctx, cont, d), (logprob, is_greedy), (nll, nll_greedy) in zip(cases, got, got_nll, strict=True):
        frames = [read_video(docs[d]["video"], 4).frames] if d is not None else []
        user = f"<video>\n{ctx}" if frames else ctx
        prompt = processor.encode(processor.render([Message("user", user)]), frames)
        target = processor.tokenizer(cont, add_special_tokens=False)["input_ids"]
        total, count, greedy = full_pass(
            model, prompt.input_ids + target, prompt.pixel_values, len(prompt.input_ids)
        )
        assert (logprob, is_greedy) == (pytest.approx(total, abs=1e-8), greedy)
        assert (nll, nll_greedy) == (pytest.approx(-total / count, abs=1e-8), greedy)
    per_question = [[got[i][0] for i, (q, _, d) in enumerate(cases) if (q, d) == key] for key in questions]
    assert len({int(np.argmax(s)) for s in per_question}) > 1
