"""The main job end to end (`tcllava demo --quick`) and the ablation grid's resume, through the real
data generator, trainer and evaluator."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoModelForCausalLM

import tcllava.recipes.experiment as experiment
from tcllava.cli import main as cli_main
from tcllava.data.synthetic import TASKS
from tcllava.model import load
from tcllava.recipes.demo import DemoConfig
from tcllava.recipes.experiment import check_start
from tcllava.recipes.stats import mean_ci, t95
from tcllava.recipes.tiny_model import build_initial_checkpoint, smollm2_gguf

SMALL = dict(train_per_task=6, test_per_task=2, steps=4, batch_size=4, text_layers=1, progress=False)


def test_mean_ci_matches_the_t_interval():
    stats = mean_ci([0.5, 0.7, 0.6])
    assert stats["mean"] == pytest.approx(0.6)
    assert stats["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert math.isnan(mean_ci([0.4])["ci95"])
    assert t95(1000) == 1.96 and t95(3) == 3.182


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert (
        cli_main(["demo", "--quick", "--out", str(out), "--seeds", "0", "1", "--steps", "4", "--no-progress"])
        == 0
    )
    return out


def test_quick_demo_writes_results_in_the_documented_schema(demo):
    results = json.loads((demo / "results.json").read_text())
    assert set(results) >= {
        "demo",
        "protocol",
        "chance",
        "summary",
        "per_run",
        "models",
        "chat_example",
        "seconds",
    }
    # Both variants start from the image LLaVA, built on this first run into the (test session's) cache.
    assert results["demo"]["start"] == "base"
    start = results["start"]
    model = Path(start["models"]["0"])
    assert start["models"]["1"] == str(model) and model.name == "model"
    assert model.parent.parent == Path(os.environ["TCLLAVA_CACHE"]) / "image_llava"
    assert start["image_llava"] == json.loads((model / "base_report.json").read_text())
    assert start["image_llava"]["base"]["steps"] == DemoConfig.quick().base_steps
    assert sorted(p.name for p in model.parent.iterdir()) == ["model"]  # stills and checkpoints dropped
    assert list(results["summary"]) == ["likelihood", "generate"]
    for scoring, summary in results["summary"].items():
        assert list(summary) == ["vanilla", "tc-llava"]
        for variant, rows in summary.items():
            assert set(TASKS) | {"**mean temporal**", "**mean static**"} == set(rows)
            for task in TASKS:
                stats = rows[task]
                per_seed = [results["per_run"][scoring][variant][str(seed)][task] for seed in (0, 1)]
                assert stats["values"] == per_seed and stats["n"] == 2
                assert stats["mean"] == pytest.approx(sum(per_seed) / 2)
                assert 0 <= stats["mean"] <= 1
    assert all(0 < results["chance"][t] < 1 for t in TASKS)
    table = (demo / "results.md").read_text()
    assert f"Start: the tiny image LLaVA {model} ({DemoConfig.quick().base_steps} steps" in table
    assert table.count("| task | kind | vanilla | tc-llava | difference |") == 2
    assert "## Scored by likelihood" in table and "## Scored by the generated letter" in table
    assert all(table.count(f"| {task} |") == 2 for task in TASKS)
    assert (demo / "results.png").read_bytes()[:4] == b"\x89PNG"
    chat = results["chat_example"]
    assert set(chat["answers"]) == set(chat["likeliest"]) == {"vanilla", "tc-llava"}
    assert chat["truth"].startswith("(")
    # Each evaluation is the MVBench evaluator's own results file, protocol and scoring recorded, and the
    # demo's numbers are those files' numbers.
    for scoring in ("likelihood", "generate"):
        evaluation_dir = Path(results["evaluations"]["tc-llava"]["0"])
        evaluation = json.loads((evaluation_dir / scoring / "results.json").read_text())
        assert evaluation["protocol"]["name"] == "official" and evaluation["benchmark"] == "synthetic"
        assert evaluation["protocol"]["scoring"] == scoring
        for task, stats in evaluation["metrics"]["tasks"].items():
            assert results["per_run"][scoring]["tc-llava"]["0"][task] == pytest.approx(
                stats["accuracy"] / 100
            )
        assert chat["likeliest"]["tc-llava"].startswith("(")


def test_demo_variants_differ_only_in_tc_attention_and_chat_works_on_the_checkpoints(demo, capsys):
    results = json.loads((demo / "results.json").read_text())
    configs = {}
    for variant in ("vanilla", "tc-llava"):
        model_dir = results["models"][variant]["0"]
        configs[variant] = json.loads((Path(model_dir) / "config.json").read_text())
    different = {k for k in configs["vanilla"] if configs["vanilla"][k] != configs["tc-llava"].get(k)}
    assert different == {"tc_attention"}
    vanilla, tc = configs["vanilla"]["tc_attention"], configs["tc-llava"]["tc_attention"]
    assert {k for k in vanilla if vanilla[k] != tc[k]} == {"gamma", "mask"}
    assert (vanilla["gamma"], vanilla["mask"]) == (0.0, "causal")
    video = results["chat_example"]["video"]
    assert (
        cli_main(
            [
                "chat",
                "--model",
                results["models"]["tc-llava"]["0"],
                "--video",
                video,
                "--max-new-tokens",
                "3",
                "What happens first?",
            ]
        )
        == 0
    )
    assert "prefill" in capsys.readouterr().err


def test_ablation_grid_runs_and_resumes_without_retraining(tmp_path, monkeypatch, capsys):
    grid = {
        "out": str(tmp_path / "ablate"),
        "seeds": [0],
        "start": "scratch",
        "tasks": ["action_sequence", "object_color"],
        **SMALL,
        "grid": [
            {"study": "masks", "name": "causal", "gamma": 0, "mask": "causal"},
            {
                "study": "reading",
                "name": "tc-next",
                "gamma": 1,
                "mask": "frame_block_causal",
                "text_after_video": "next",
            },
        ],
    }
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(grid))
    assert cli_main(["ablate", str(config)]) == 0
    first = json.loads((tmp_path / "ablate" / "ablation.json").read_text())
    assert [r["name"] for r in first["rows"]] == ["causal", "tc-next"]
    trained = json.loads((Path(first["rows"][1]["models"]["0"]) / "config.json").read_text())
    assert trained["tc_attention"]["text_after_video"] == "next" and trained["tc_attention"]["gamma"] == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    real_training = experiment.train_variant
    monkeypatch.setattr(experiment, "train_variant", no_training)
    assert cli_main(["ablate", str(config)]) == 0
    again = json.loads((tmp_path / "ablate" / "ablation.json").read_text())
    assert [r["all"]["mean"] for r in again["rows"]] == [r["all"]["mean"] for r in first["rows"]]
    assert (
        "| reading | tc-next | tc | frame_block_causal | 1 | next |"
        in (tmp_path / "ablate" / "ablation.md").read_text()
    )
    config.write_text(yaml.safe_dump({**grid, "stepz": 3}))
    assert cli_main(["ablate", str(config)]) == 2
    assert "unknown keys ['stepz']" in capsys.readouterr().err
    # A grown grid trains only its new cell: the finished cells' runs are not keyed by the grid.
    grown = [*grid["grid"], {"study": "masks", "name": "frame_block", "gamma": 0, "mask": "frame_block"}]
    config.write_text(yaml.safe_dump({**grid, "grid": grown}))
    trained = []
    monkeypatch.setattr(
        experiment, "train_variant", lambda *args: trained.append(args[4]) or real_training(*args)
    )
    assert cli_main(["ablate", str(config)]) == 0
    assert [settings.mask for settings in trained] == ["frame_block"]


def test_schemes_grid_with_the_needle_trains_once_and_reports_both(tmp_path, monkeypatch, capsys):
    """A grid with a needle section: each cell trains once on the tasks plus the needle videos, and its row
    holds the tasks' accuracy and the needle's at each length, as the evaluator's results files say."""
    grid = {
        "out": str(tmp_path / "schemes"),
        "seeds": [0],
        "start": "scratch",
        "tasks": ["action_sequence", "object_color"],
        **{**SMALL, "train_per_task": 4, "steps": 2, "batch_size": 2},
        "size": 32,
        "frames": 4,
        "grid": [
            {"study": "schemes", "name": "mrope-causal", "position_scheme": "mrope", "mask": "causal"},
            {"study": "schemes", "name": "tc-fbc", "gamma": 1, "mask": "frame_block_causal"},
        ],
        "needle": {"needle_train": 8, "needle_test": 1, "lengths": [4, 8], "depths": [0.0, 1.0]},
    }
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(grid))
    assert cli_main(["ablate", str(config)]) == 0
    out = tmp_path / "schemes"
    report = json.loads((out / "ablation.json").read_text())
    table = (out / "ablation.md").read_text()
    assert (
        "| study | cell | scheme | mask | gamma | reading | temporal tasks | static tasks | all | "
        "all, generated letter | needle 4 | needle 8 |" in table
    )
    for row, (scheme, mask) in zip(
        report["rows"], [("mrope", "causal"), ("tc", "frame_block_causal")], strict=True
    ):
        model = Path(row["models"]["0"])
        trained = json.loads((model / "config.json").read_text())["tc_attention"]
        assert (trained["position_scheme"], trained["mask"]) == (scheme, mask)
        # One training set: the tasks' videos and the needle's, at the grid's frame count.
        data = yaml.safe_load((model.parent / "config.yaml").read_text())["data"][0]["path"]
        assert data == f"{report['data']}/train/*.json"
        assert len(json.loads((Path(report["data"]) / "train" / "needle.json").read_text())) == 8
        cells = [f"{100 * row[k]['mean']:.1f}" for k in ("temporal", "static", "all", "all_generated")]
        for frames in (4, 8):
            results = (
                out / "needle" / model.parent.name / "full" / "likelihood" / f"L{frames}" / "results.json"
            )
            evaluation = json.loads(results.read_text())
            assert evaluation["num_frames"] == frames and set(evaluation["metrics"]["groups"]["depth"]) == {
                "0.0",
                "1.0",
            }
            cells.append(f"{evaluation['metrics']['overall']['accuracy']:.1f}")
        gamma, reading = ("-", "-") if scheme == "mrope" else ("1", "paper")
        assert (
            f"| schemes | {row['name']} | {scheme} | {mask} | {gamma} | {reading} | "
            + " | ".join(cells)
            + " |"
            in table
        )
    needle = json.loads((out / "needle.json").read_text())
    assert [c["variant"] for c in needle["cells"]] == ["mrope-causal", "tc-fbc"]
    assert needle["models"] == {r["name"]: r["models"] for r in report["rows"]}
    for name in ("ablation.png", "needle.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(experiment, "train_variant", no_training)
    assert cli_main(["ablate", str(config), "needle.lengths=[8]"]) == 0  # fewer lengths: evaluation only
    assert "| needle 8 |" in (out / "ablation.md").read_text()
    assert "| needle 4 |" not in (out / "ablation.md").read_text()
    assert cli_main(["ablate", str(config), "needle.lengths=[1]"]) == 2
    assert "frames must be integers in 2..1024, got 1" in capsys.readouterr().err
    assert cli_main(["ablate", str(config), "needle.lenghts=[8]"]) == 2
    assert "the needle section may set needle_train, needle_test, lengths" in capsys.readouterr().err


def test_the_shipped_schemes_grid_is_every_scheme_with_both_masks():
    from tcllava.recipes.ablate import AblationConfig
    from tcllava.recipes.image_llava import recipe

    cfg = AblationConfig.from_yaml(recipe("ablate_schemes.yaml"))
    pairs = {(c.settings.position_scheme, c.settings.mask) for c in cfg.grid}
    assert pairs == {
        (s, m) for s in ("tc", "vanilla", "mrope", "videorope") for m in ("causal", "frame_block_causal")
    }
    assert len(cfg.grid) == 8 and {c.study for c in cfg.grid} == {"schemes"}
    assert all(c.settings.gamma == 1 for c in cfg.grid if c.settings.position_scheme == "tc")
    needle = cfg.experiment()
    assert (needle.needle_train, needle.needle_test, needle.lengths) == (240, 4, [8, 16, 32, 64])
    assert needle.depths == [0.0, 0.5, 1.0] and [r.name for r in needle.reductions] == ["full"]
    assert (cfg.steps, cfg.seeds, cfg.start) == (100, [0, 1], "base")


def test_smollm2_option_wraps_the_pretrained_llm_unchanged(tmp_path):
    """`tcllava demo --llm smollm2`: the packaged SmolLM2-135M-Instruct becomes the LLM of a LLaVA; with
    TC off its text logits equal transformers' own model read from the same GGUF file."""
    cfg = DemoConfig(llm="smollm2", frames=4, size=32, pool=2)
    path = build_initial_checkpoint(cfg, tmp_path, 0, tmp_path / "init")
    model, processor = load(path, gamma=0.0, mask="causal")
    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    text = processor.tokenizer("Water boils at a temperature of", return_tensors="pt")
    with torch.no_grad():
        ours = model(**text).logits
        want = reference(**text).logits
    vocab = want.shape[-1]  # ours adds the <image> token at the end of the vocabulary
    torch.testing.assert_close(ours[..., :vocab], want, rtol=1e-4, atol=1e-4)
    [image] = processor.tokenizer.encode("<image>", add_special_tokens=False)
    assert image == vocab and ours.shape[-1] == vocab + 1
    video = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    batch = processor([{"role": "user", "content": "<video>\nWhat happens?"}], [video])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_image_llava_base_builds_and_the_demo_starts_from_it(tmp_path):
    """`tcllava demo --build-base` trains a tiny LLaVA on stills through the real trainer and tests it on
    held-out stills; `--start DIR` fine-tunes both variants from it, and refuses one that cannot read the
    demo's videos."""
    from tcllava.recipes.image_llava import ImageLlavaConfig, build_image_llava

    cfg = ImageLlavaConfig(
        out=str(tmp_path / "base"), images=24, test_images=6, steps=3, batch_size=4, progress=False
    )
    model_dir = build_image_llava(cfg)
    report = json.loads((model_dir / "base_report.json").read_text())
    held_out = report["held_out_image_questions"]
    asked = [r["quiz"]["kind"] for r in json.loads((tmp_path / "base/test_images/images.json").read_text())]
    assert held_out["n"] == 6 and held_out["n_by_kind"] == {k: asked.count(k) for k in sorted(set(asked))}
    for scoring in ("likelihood", "generate"):
        by_kind = held_out[scoring]["by_kind"]
        assert set(by_kind) == set(asked)
        recount = sum(by_kind[k] * held_out["n_by_kind"][k] for k in by_kind) / 6
        assert held_out[scoring]["accuracy"] == pytest.approx(recount)
        assert all(round(by_kind[k] * held_out["n_by_kind"][k] / 100, 6).is_integer() for k in by_kind)
    trained = json.loads((tmp_path / "base" / "run" / "report.json").read_text())
    assert trained["steps"] == 3 and trained["finished"]
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["tc_attention"]["gamma"], config["tc_attention"]["mask"]) == (0.0, "causal")

    # An image file is one frame in chat, as in training (not a video of repeated frames).
    model, _ = load(model_dir)
    still = tmp_path / "base" / "test_images" / "images" / "00000.png"
    seen: list[str] = []
    model.chat(still, "Describe the image.", max_new_tokens=2, do_sample=False, on_progress=seen.append)
    frames = torch.from_numpy(np.array(Image.open(still)))[None]
    model.chat(frames, "Describe the image.", max_new_tokens=2, do_sample=False, on_progress=seen.append)
    prefills = [m for m in seen if m.startswith("prefill")]
    assert len(prefills) == 2 and prefills[0] == prefills[1]

    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--seeds", "0", "--steps", "2", "--no-progress"]
    assert cli_main([*argv, "--start", str(model_dir)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["demo"]["start"] == str(model_dir)
    run_config = yaml.safe_load((Path(results["models"]["tc-llava"]["0"]).parent / "config.yaml").read_text())
    assert run_config["model"] == str(model_dir)
    wrong = DemoConfig.quick(size=32)
    with pytest.raises(ValueError, match="64px"):
        check_start(model_dir, Path(results["data"]), wrong)
    questions = Path(results["data"]) / "test" / "object_count.json"
    rows = json.loads(questions.read_text())
    rows[0]["question"] = "How many zebras are there?"
    questions.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="does not know all of 'How many zebras are there\\?'"):
        check_start(model_dir, Path(results["data"]), DemoConfig.quick())


def test_image_llava_is_built_once_per_settings_and_benchmark_words(tmp_path, monkeypatch):
    """The demo's start is built at run time into the cache, reused by every later run, and rebuilt
    when what it would be differs: other settings, another build format or new benchmark words."""
    import tcllava.recipes.image_llava as base
    from tcllava.data.synthetic import generate

    monkeypatch.setenv("TCLLAVA_CACHE", str(tmp_path / "cache"))
    cfg = base.ImageLlavaConfig(
        images=16, test_images=4, steps=2, batch_size=4, text_layers=1, progress=False
    )
    said: list[str] = []
    model = base.image_llava(cfg, announce=said.append)
    assert model == tmp_path / "cache" / "image_llava" / base.build_key(cfg) / "model"
    assert said[-1].startswith("image LLaVA: building it once into")
    assert sorted(p.name for p in model.parent.iterdir()) == ["model"]
    report = json.loads((model / "base_report.json").read_text())
    assert report["base"]["steps"] == 2 and report["held_out_image_questions"]["n"] == 4
    generate(tmp_path / "videos", 2, 2)
    check_start(model, tmp_path / "videos", DemoConfig(text_layers=1))  # reads the frames, knows the words

    weights = (model / "model.safetensors").stat().st_mtime_ns
    assert base.image_llava(cfg, announce=said.append) == model
    assert said[-1] == f"image LLaVA: reusing {model}"
    assert (model / "model.safetensors").stat().st_mtime_ns == weights
    # Settings that do not change the model share the build.
    assert (
        base.build_key(base.ImageLlavaConfig(**{**vars(cfg), "num_workers": 0, "out": "x"}))
        == model.parent.name
    )

    keys = {model.parent.name, base.build_key(base.ImageLlavaConfig(**{**vars(cfg), "lr": 5e-3}))}
    monkeypatch.setattr(base, "BASE_FORMAT", base.BASE_FORMAT + 1)
    keys.add(base.build_key(cfg))
    monkeypatch.setattr(base, "BASE_FORMAT", base.BASE_FORMAT - 1)
    words = base.benchmark_texts
    monkeypatch.setattr(base, "benchmark_texts", lambda seed: (*words(seed), "How many zebras are there?"))
    keys.add(base.build_key(cfg))
    assert len(keys) == 4
    with pytest.raises(ValueError, match="steps, batch_size and test_images must be positive"):
        base.ImageLlavaConfig(steps=0)


def test_a_rerun_with_other_settings_keeps_both_configurations(tmp_path, monkeypatch):
    """A full demo then `tcllava demo --quick` into the same folder once died resuming the first
    configuration's checkpoints; now each configuration has its own runs, and a rerun of finished
    settings trains nothing."""
    out = tmp_path / "demo"
    base = ["demo", "--quick", "--out", str(out), "--seeds", "0", "--no-progress"]
    assert cli_main([*base, "--steps", "3"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert cli_main([*base, "--steps", "2"]) == 0
    second = json.loads((out / "results.json").read_text())
    assert second["demo"]["steps"] == 2
    for variant in ("vanilla", "tc-llava"):
        before, after = Path(first["models"][variant]["0"]), Path(second["models"][variant]["0"])
        assert before != after and (before / "config.json").is_file() and (after / "config.json").is_file()
        assert yaml.safe_load((after.parent / "config.yaml").read_text())["max_steps"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a finished configuration was trained again")

    monkeypatch.setattr(experiment, "train_variant", no_training)
    assert cli_main([*base, "--steps", "3"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["per_run"] == first["per_run"] and again["models"] == first["models"]
