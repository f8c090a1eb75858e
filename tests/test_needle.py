"""The needle in a video haystack: the generator's videos read back as specified, the evaluator reads every
frame and groups by depth, the token reductions do what they claim, and the study writes its report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tcllava.attention import TCAttentionConfig
from tcllava.cli import main
from tcllava.data.synthetic import COLORS, SHAPES, generate_needle, make_needle_samples, needle_index
from tcllava.data.synthetic.needle import DISTRACTORS, GREYS
from tcllava.eval import EvalRun, Prompt, evaluate
from tcllava.eval.benchmarks import load_synthetic
from tcllava.eval.scoring import score_mcq
from tcllava.video import Clip, keep_distinct, merge_similar_frames, read_video

PALETTE = np.array(list(COLORS.values()), dtype=float)
QUESTION = "One object in the video is coloured. What colour is it?"


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def coloured(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] pixels of a colour: the haystack is black and grey (equal channels)."""
    f = frames.astype(int)
    return f.max(-1) - f.min(-1) > 60


def colour_of(pixels: np.ndarray) -> str:
    median = np.median(pixels.reshape(-1, 3).astype(float), axis=0)
    return list(COLORS)[int(np.argmin(((PALETTE - median) ** 2).sum(1)))]


def shape_of(mask: np.ndarray) -> str:
    """A shape from its pixels alone: how full its bounding box is, and how wide its bottom row is."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill, base = box.mean(), box[-1].mean()
    return "square" if fill > 0.9 else "circle" if fill > 0.7 else "triangle" if base > 0.7 else "cross"


def flashes(frames: np.ndarray) -> dict[int, tuple[str, str]]:
    """Frames holding a coloured object -> (its colour, its shape)."""
    masks = coloured(frames)
    return {
        int(t): (colour_of(frames[t][masks[t]]), shape_of(masks[t]))
        for t in np.nonzero(masks.sum((1, 2)) > 20)[0]
    }


def look_alikes(frames: np.ndarray) -> dict[int, str]:
    """Frames holding a white object (brighter than any haystack grey, not a colour) -> its shape."""
    masks = (frames.astype(int).min(-1) > 230) & ~coloured(frames)
    return {int(t): shape_of(masks[t]) for t in np.nonzero(masks.sum((1, 2)) > 20)[0]}


NEEDLE_ARGS = dict(lengths=(16, 64), depths=(0.0, 0.25, 0.5, 0.75, 1.0), seed=3)
# Depth d puts the needle at frame d * (F - 1), halves rounded up: 15 * (0, .25, .5, .75, 1) and 63 * (...).
NEEDLE_FRAMES = {16: [0, 4, 8, 11, 15], 64: [0, 16, 32, 47, 63]}


@pytest.fixture(scope="module")
def needle_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("needle")
    generate_needle(out, 8, 1, **NEEDLE_ARGS)
    return out


def test_generator_is_deterministic_and_puts_the_needle_at_the_requested_depth(needle_data, tmp_path):
    again = generate_needle(tmp_path, 8, 1, **NEEDLE_ARGS)
    for name in ["needle.manifest.json", *again["sha256"]]:
        assert (needle_data / name).read_bytes() == (tmp_path / name).read_bytes(), name
    for frames in (16, 64):
        rows = json.loads((needle_data / f"L{frames}" / "test" / "needle.json").read_text())
        assert [r["depth"] for r in rows] == list(NEEDLE_ARGS["depths"])
        made = make_needle_samples(1, frames, "test", NEEDLE_ARGS["depths"], seed=3)
        seen: list[int] = []
        for row, sample in zip(rows, made, strict=True):
            video = decode(needle_data / f"L{frames}" / "test" / row["video"])
            assert video.shape == (frames, 64, 64, 3) and row["frames"] == frames
            assert np.abs(video.astype(int) - sample.frames).mean() < 2
            assert (
                row["needle_frame"] == needle_index(row["depth"], frames) == NEEDLE_FRAMES[frames][len(seen)]
            )
            seen.append(row["needle_frame"])
            found = flashes(video)  # the one frame that differs from the haystack, in the decoded video
            assert list(found) == [row["needle_frame"]] and not look_alikes(video)
            colour, shape = found[row["needle_frame"]]
            assert row["question"] == QUESTION and colour == row["answer"] and shape == sample.shape
            assert len(set(row["candidates"])) == 4 and set(row["candidates"]) <= set(COLORS)
            assert row["candidates"].count(row["answer"]) == 1
            # The answer's colour exists in the needle frame only, and is its only colour (exactly, before
            # encoding); the haystack is grey or black.
            exact = (sample.frames == COLORS[colour]).all(-1)
            assert np.nonzero(exact.sum((1, 2)))[0].tolist() == [row["needle_frame"]]
            assert np.array_equal(coloured(sample.frames)[row["needle_frame"]], exact[row["needle_frame"]])
            haystack = np.delete(sample.frames, row["needle_frame"], axis=0).astype(int)
            assert (haystack.max(-1) == haystack.min(-1)).all() and haystack.max() < GREYS[1]
    train = json.loads((needle_data / "train" / "needle.json").read_text())
    assert sorted(r["needle_frame"] for r in train) == list(range(8))  # every index once in 8 videos
    assert all(r["frames"] == 8 and r["depth"] == r["needle_frame"] / 7 for r in train)


def test_answers_and_answer_positions_are_balanced():
    samples = make_needle_samples(8, 32, "test", (0.0, 0.5, 1.0), seed=1)
    answers = [s.answer for s in samples]
    assert {answers.count(c) for c in COLORS} == {4}  # 24 needles, 6 colours
    assert {[s.candidates.index(s.answer) for s in samples].count(k) for k in range(4)} == {6}
    assert all(flashes(s.frames) == {s.needle_frame: (s.answer, s.shape)} for s in samples)
    assert {s.shape for s in samples} == set(SHAPES)  # the needle's shape varies (it is not asked)
    assert [s.depth for s in samples[:3]] == [0.0, 0.5, 1.0] and samples[2].needle_frame == 31
    other = make_needle_samples(8, 32, "test", (0.0, 0.5, 1.0), seed=2)
    assert not np.array_equal(samples[0].frames, other[0].frames)


def test_distractors_look_alike_but_the_question_stays_unambiguous(tmp_path):
    for frames in (8, 40):
        for s in make_needle_samples(4, frames, "test", (0.0, 0.5, 1.0), distractors=True):
            assert s.question == QUESTION and s.candidates.count(s.answer) == 1
            assert len(s.candidates) == 4 and set(s.candidates) <= set(COLORS)
            # Colour only in the needle frame: the look-alikes are white, of the needle's shape.
            assert flashes(s.frames) == {s.needle_frame: (s.answer, s.shape)}
            outside = np.delete(s.frames, s.needle_frame, axis=0).astype(int)
            assert (outside.max(-1) == outside.min(-1)).all()
            white = (s.frames == 255).all(-1).sum((1, 2))
            assert len(s.distractor_frames) == DISTRACTORS and s.needle_frame not in s.distractor_frames
            assert np.nonzero(white)[0].tolist() == s.distractor_frames
            assert look_alikes(s.frames) == dict.fromkeys(s.distractor_frames, s.shape)
    # So it stays in the decoded video the model reads.
    generate_needle(tmp_path, 0, 1, lengths=(16,), depths=(0.0, 0.5, 1.0), seed=4, distractors=True)
    rows = json.loads((tmp_path / "L16" / "test" / "needle_distractor.json").read_text())
    made = make_needle_samples(1, 16, "test", (0.0, 0.5, 1.0), seed=4, distractors=True)
    for row, s in zip(rows, made, strict=True):
        video = decode(tmp_path / "L16" / "test" / row["video"])
        assert flashes(video) == {row["needle_frame"]: (row["answer"], s.shape)}
        assert look_alikes(video) == dict.fromkeys(s.distractor_frames, s.shape)


def test_bad_settings_are_refused_in_one_line(tmp_path, capsys):
    for kwargs in (
        dict(lengths=(1,)),
        dict(lengths=(3,), distractors=True),
        dict(lengths=(2000,)),
        dict(depths=(1.5,)),
        dict(depths=(0.5, 0.5)),
        dict(size=63),
    ):
        with pytest.raises(ValueError):
            generate_needle(tmp_path, 1, 1, **kwargs)
    with pytest.raises(ValueError, match="not both 0"):
        generate_needle(tmp_path, 0, 0)
    assert main(["needle", "data", "--out", str(tmp_path), "--lengths", "1"]) == 2
    assert capsys.readouterr().err.strip() == "tcllava needle: frames must be integers in 2..1024, got 1"
    assert (
        main(["needle", "eval", "--model", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path)])
        == 2
    )
    assert "no L{frames}/test folders" in capsys.readouterr().err


class NeedleFinder:
    """A scripted predictor that reads the needle's colour from the clip, and answers right only when the
    needle is in the first half of the video (wrong otherwise), so accuracy by depth is known."""

    def __init__(self) -> None:
        self.frames_seen: list[int] = []

    def generate(self, clips: list[Clip], prompts: list[Prompt]) -> list[str]:
        replies = []
        for clip, prompt in zip(clips, prompts, strict=True):
            frames = clip.frames.numpy()
            self.frames_seen.append(len(frames))
            [(index, (colour, _))] = flashes(frames).items()
            options = dict(re.findall(r"\(([A-D])\) (\w+)", prompt.user))
            assert sorted(options) == ["A", "B", "C", "D"] and colour in options.values()
            pick = next(k for k, v in options.items() if (v == colour) == (index < len(frames) / 2))
            replies.append(pick)
        return replies


def test_the_evaluator_reads_every_frame_once_and_groups_by_depth(needle_data, tmp_path):
    for frames in (16, 64):
        video = needle_data / f"L{frames}" / "test" / "videos" / "needle" / "0002.mp4"
        for sampling in ("middle", "uniform"):
            stats: dict = {}
            clip = read_video(video, num_frames=frames, sampling=sampling, stats=stats)
            assert stats["indices"] == list(range(frames)) and stats["num_frames_total"] == frames
            assert np.array_equal(clip.frames.numpy(), decode(video))
    bench = load_synthetic(needle_data / "L16")
    assert [s.meta for s in bench.samples] == [{"depth": d} for d in NEEDLE_ARGS["depths"]]
    finder = NeedleFinder()
    run = EvalRun("synthetic", needle_data / "L16", tmp_path, num_frames=16, num_workers=0)
    results = evaluate(finder, run)
    assert finder.frames_seen == [16] * 5
    by_depth = {d: g["accuracy"] for d, g in results["metrics"]["groups"]["depth"].items()}
    # Needle frames 0, 4, 8, 11, 15 of 16: the first two are in the first half.
    assert by_depth == {"0.0": 100.0, "0.25": 100.0, "0.5": 0.0, "0.75": 0.0, "1.0": 0.0}
    assert "| depth | accuracy |" in (tmp_path / "results.md").read_text()


def test_grouping_leaves_out_records_without_the_field():
    records = [
        {"task": "needle", "correct": True, "extracted": "A", "prediction": "A", "meta": {"depth": 0.5}},
        {"task": "needle", "correct": False, "extracted": "B", "prediction": "B", "meta": {"depth": 0.5}},
        {"task": "object_color", "correct": True, "extracted": "A", "prediction": "A"},
        {"task": "videomme", "correct": True, "extracted": "A", "prediction": "A", "meta": {"depth": None}},
    ]
    groups = score_mcq(records, "all", ["needle"], ("depth",))["groups"]["depth"]
    assert {k: (g["n"], g["correct"]) for k, g in groups.items()} == {"0.5": (2, 1), "None": (1, 1)}


def test_merging_drops_near_duplicates_and_keeps_the_needle(needle_data):
    ramp = np.repeat(np.arange(10, dtype=np.uint8), 12).reshape(10, 2, 2, 3)  # one level brighter per frame
    assert keep_distinct(ramp, 2.5) == [0, 3, 6, 9]  # against the last kept frame, not the neighbour
    assert keep_distinct(ramp, 0) == list(range(10))
    assert keep_distinct(np.repeat(ramp[:1], 4, axis=0), 0) == [0]
    for bad in (-1, float("nan"), "2"):
        with pytest.raises(ValueError, match="threshold"):
            keep_distinct(ramp, bad)
    rows = json.loads((needle_data / "L64" / "test" / "needle.json").read_text())
    counts = []
    for row in rows:
        clip = read_video(needle_data / "L64" / "test" / row["video"], num_frames=64)
        merged = merge_similar_frames(clip, 2.0)
        kept = keep_distinct(clip.frames, 2.0)
        assert row["needle_frame"] in kept and len(kept) < 64
        assert torch.equal(merged.frames, clip.frames[kept]) and torch.equal(
            merged.timestamps, clip.timestamps[kept]
        )
        assert [colour for colour, _ in flashes(merged.frames.numpy()).values()] == [row["answer"]]
        counts.append(len(kept))
    # How many frames a haystack keeps depends on how fast its shapes drift; on average, under half.
    assert sum(counts) < 64 // 2 * len(rows)


# ----------------------------------------------------------------------------------------------- the study


def test_run_keys_ignore_the_needle_test_settings():
    from tcllava.recipes.image_llava import recipe
    from tcllava.recipes.needle import NeedleConfig, Reduction

    settings = TCAttentionConfig()
    base = NeedleConfig.quick().run_key(settings)
    same = NeedleConfig.quick(
        lengths=[32, 64], depths=[0.5], needle_test=3, reductions=[Reduction("x", (0, 1, 1))]
    )
    assert same.run_key(settings) == base
    assert NeedleConfig.quick(needle_train=20).run_key(settings) != base
    assert NeedleConfig.quick(distractors=True).run_key(settings) != base
    cfg, variants = NeedleConfig.from_yaml(recipe("needle_cpu.yaml"))  # the shipped study
    assert [r.name for r in cfg.reductions] == ["full", "pool2x2", "merge2"] and cfg.lengths[0] == cfg.frames
    assert cfg.reductions[1].pool_shape == (0, 2, 2) and list(variants) == ["vanilla", "tc-llava"]
    assert variants["vanilla"] == TCAttentionConfig.vanilla()
    with pytest.raises(ValueError, match="pool_shape"):
        NeedleConfig.quick(reductions=[{"name": "bad", "pool_shape": [0, 0, 2]}])
    with pytest.raises(ValueError, match="merge_threshold"):
        NeedleConfig.quick(reductions=[{"name": "bad", "merge_threshold": -1}])


def test_the_image_bases_words_cover_the_needle_questions():
    """The base's tokenizer is built from benchmark_texts: a needle study's start must know every word."""
    from tcllava.model.factory import build_word_tokenizer
    from tcllava.recipes.image_llava import benchmark_texts

    tokenizer = build_word_tokenizer(benchmark_texts(0, 6))
    for distractors in (False, True):
        texts = [
            t
            for s in make_needle_samples(2, 16, "test", seed=5, distractors=distractors)
            for t in (s.question, *s.candidates)
        ]
        assert QUESTION in texts and set(COLORS) <= set(texts)
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            assert tokenizer.unk_token_id not in ids


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from tcllava.recipes.needle import NeedleConfig, Reduction, needle_study

    out = tmp_path_factory.mktemp("needle_study")
    reductions = [Reduction(), Reduction("pool2", (0, 2, 2))]
    cfg = NeedleConfig.quick(out=str(out), lengths=[16, 24], reductions=reductions)
    return out, needle_study(cfg, {"tc": TCAttentionConfig()})


def test_the_study_writes_heat_maps_from_the_evaluators_results(study):
    out, report = study
    assert json.loads((out / "needle.json").read_text())["cells"] == json.loads(json.dumps(report["cells"]))
    cells = {c["reduction"]["name"]: c for c in report["cells"]}
    assert list(cells) == ["full", "pool2"] and all(c["variant"] == "tc" for c in cells.values())
    # The demo model pools every frame to 4 x 4 tokens; pool2 to 2 x 2.
    assert {f: t["mean"] for f, t in cells["full"]["visual_tokens"].items()} == {"16": 256, "24": 384}
    assert {f: t["mean"] for f, t in cells["pool2"]["visual_tokens"].items()} == {"16": 64, "24": 96}
    model = Path(report["models"]["tc"]["0"])
    evaluations = out / "needle" / model.parent.name / "full" / "likelihood"
    for frames in (16, 24):
        results = json.loads((evaluations / f"L{frames}" / "results.json").read_text())
        assert results["num_frames"] == frames and results["protocol"]["scoring"] == "likelihood"
        for depth, stats in results["metrics"]["groups"]["depth"].items():
            assert cells["full"]["accuracy"][depth][str(frames)] == stats["accuracy"]
    pooled = json.loads(
        (out / "needle" / model.parent.name / "pool2" / "likelihood" / "L16" / "results.json").read_text()
    )
    assert pooled["model"]["pool_shape"] == [0, 2, 2]
    text = (out / "needle.md").read_text()
    assert (
        text.count("| depth \\ frames | 16 | 24 |") == 2 and "| visual tokens per video | 64 | 96 |" in text
    )
    assert (out / "needle.png").read_bytes()[:4] == b"\x89PNG"
    train = json.loads((Path(report["data"]) / "train" / "needle.json").read_text())
    assert len(train) == 16 and {r["frames"] for r in train} == {8}
    # The study is the ablation grid with a needle section: its table has the variant's task accuracy and
    # the needle's at each length and reduction (one seed: the heat map's all-depths row).
    table = (out / "ablation.md").read_text()
    assert "| needle 16, full | needle 24, full | needle 16, pool2 | needle 24, pool2 |" in table
    needle = [f"{cells[r]['by_length'][f]:.1f}" for r in ("full", "pool2") for f in ("16", "24")]
    assert table.rstrip().endswith(" | " + " | ".join(needle) + " |")
    assert "| needle | tc | tc | frame_block_causal | 1 | paper |" in table


def test_a_checkpoint_pooled_4x4_runs_pooled_2x2(study):
    from tcllava.model import load

    _, report = study
    model, processor = load(report["models"]["tc"]["0"], pool_shape=(0, 2, 2))
    assert model.config.tokens_per_frame == 4
    frames = torch.randint(0, 255, (24, 64, 64, 3), dtype=torch.uint8)
    batch = processor([{"role": "user", "content": "<video>\n" + QUESTION}], [frames])
    assert int((batch["input_ids"] == model.config.media_token_id).sum()) == 24 * 4
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_the_cli_evaluates_one_model_with_a_reduction(study, tmp_path, capsys):
    _, report = study
    model = report["models"]["tc"]["0"]
    argv = ["needle", "eval", "--model", model, "--data", report["tests"], "--out", str(tmp_path)]
    assert main([*argv, "--lengths", "16", "--pool", "2", "2", "--merge-threshold", "1.5"]) == 0
    assert "## final, pool2x2-merge1.5" in capsys.readouterr().out
    cell = json.loads((tmp_path / "needle.json").read_text())["cells"][0]
    assert cell["reduction"] == {"name": "pool2x2-merge1.5", "pool_shape": [0, 2, 2], "merge_threshold": 1.5}
    results = json.loads((tmp_path / "pool2x2-merge1.5" / "likelihood" / "L16" / "results.json").read_text())
    assert results["model"]["merge_threshold"] == 1.5 and results["model"]["pool_shape"] == [0, 2, 2]
    # The merge's frames, counted on the evaluator's decoding: fewer than 16 on some video, never more.
    tests = Path(report["tests"]) / "L16" / "test"
    kept = [
        len(keep_distinct(decode(tests / r["video"]), 1.5))
        for r in json.loads((tests / "needle.json").read_text())
    ]
    tokens = cell["visual_tokens"]["16"]
    assert (tokens["min"], tokens["max"], tokens["mean"]) == (
        4 * min(kept),
        4 * max(kept),
        4 * sum(kept) / len(kept),
    )
    config = tmp_path / "study.yaml"
    config.write_text("grid: [{name: tc, gamma: 1}]\nlenghts: [16]\n")
    assert main(["needle", "study", str(config)]) == 2
    assert "unknown keys ['lenghts']" in capsys.readouterr().err
