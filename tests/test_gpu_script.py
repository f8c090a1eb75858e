"""benchmarks/gpu.py, the one-shot GPU run, kept from rotting: its --tiny mode runs the same code on the CPU.

The tiny run's figures are checked for their schema and for the correctness bounds (kernels against the
fp64 reference, cached decoding against a full forward pass, TC off against transformers' own model);
its speed ratios are only checked to be there (no timing assertions).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    """The script as a module (its sibling peak_memory on the path)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # main() sets one thread for the tiny CPU run
    sys.modules.pop(spec.name, None)


def _results_state() -> dict[str, float | None]:
    return {
        n: (RESULTS / n).stat().st_mtime if (RESULTS / n).exists() else None for n in ("gpu.json", "gpu.md")
    }


def test_tiny_run_writes_the_schema_within_bounds(tmp_path):
    before = _results_state()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _results_state() == before  # tiny figures never land in benchmarks/results
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert (tmp_path / "gpu.md").read_text().startswith("# tcllava on cpu")

    assert report["mode"] == "tiny" and report["device_type"] == "cpu"
    assert report["errors"] == {}
    assert {name: s["status"] for name, s in report["sections"].items()} == {
        "correctness": "ok",
        "attention": "ok",
        "model": "ok",
    }
    for key in ("torch", "transformers", "python"):
        assert report["versions"][key]
    assert report["wall_seconds"] > 0

    # Every kernel ran against the fp64 reference, within the bounds, and the dispatcher chose as documented.
    kernels = report["correctness"]["kernels"]
    assert all("error" not in r and "skipped" not in r and not r["nan"] for r in kernels), kernels
    chosen = {r["case"]: r["chosen"] for r in kernels if r["kernel"] == "auto"}
    assert chosen == {r["case"]: r["expected"] for r in kernels}
    assert set(chosen.values()) == {"prefix", "sdpa", "decode", "causal"}
    assert {r["runs"] for r in kernels} >= {
        "prefix",
        "prefix_generic",
        "flex",
        "sdpa",
        "eager",
        "decode",
        "causal",
    }
    with_grads = {r["runs"] for r in kernels if r["grad_err"] is not None}
    assert with_grads >= {"prefix", "prefix_generic", "sdpa", "eager", "decode", "causal"}
    assert {r["dtype"] for r in kernels} == {"float32", "bfloat16"}
    assert 0 < report["max_abs_err_fp32"] <= 1e-4
    assert 0 < report["max_abs_err_bf16"] <= 5e-2
    decode = report["correctness"]["decode"]
    assert decode["batch"] == 4 and len(set(decode["prompt_lengths"])) == 4
    assert decode["max_logit_diff"] <= 1e-4 and decode["mismatches_not_near_tie"] == 0

    attention = report["attention"]
    assert [r["tokens"] for r in attention] == [256, 512]
    for row in attention:
        assert row["tc_kernel"] == "prefix" and row["ratio_vs_causal"] > 0
        assert set(row["seconds"]) == {"tc", "causal_flash", "causal_default", "sdpa_dense"}
        assert set(row["peak_mib"]) == set(row["seconds"])

    model = report["model"]
    assert model["vanilla_tokens_identical"] is True and report["vanilla_tokens_identical"] is True
    assert model["vanilla_logit_max_diff"] <= 1e-5
    assert model["rope_inv_freq_dtype"] == {"transformers": "torch.float32", "tcllava": "torch.float32"}
    assert set(model["inference"]) == {"hf", "tc_off", "tc"}
    assert report["prefill_ratio"] > 0 and report["decode_ratio"] > 0
    assert set(report["train_step_ratio"]) == {"1", "2"}
    assert all(r["ratio"] > 0 for r in model["train"])

    targets = {t["name"]: t["pass"] for t in report["targets"]}
    assert len(targets) == 9 and all(isinstance(v, bool) for v in targets.values())


def test_tiny_needs_an_output_folder(gpu, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu.main(["--tiny"])
    assert exit_.value.code == 2
    assert "--tiny needs --out" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine may run the full mode")
def test_full_mode_without_cuda_is_one_clear_error(gpu, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu.main([])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err.strip() == "gpu.py: no CUDA device here; --tiny runs the same code on the CPU"
    )


def test_a_failing_section_is_recorded_and_the_next_one_runs(gpu, monkeypatch, tmp_path):
    def compile_failure(run):
        raise RuntimeError("flex compile failed")

    monkeypatch.setitem(gpu.SECTIONS, "correctness", compile_failure)
    assert gpu.main(["--tiny", "--out", str(tmp_path), "--sections", "correctness", "attention"]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["sections"]["correctness"]["status"] == "error"
    assert "RuntimeError: flex compile failed" in report["errors"]["correctness"]
    assert report["sections"]["attention"]["status"] == "ok"
    assert [r["tokens"] for r in report["attention"]] == [256, 512]
    assert "Error in correctness" in (tmp_path / "gpu.md").read_text()


def test_a_spent_budget_skips_cases_and_still_writes(gpu, tmp_path):
    assert gpu.main(["--tiny", "--out", str(tmp_path), "--sections", "attention", "--budget", "1e-9"]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["sections"]["attention"]["status"] == "ok"
    assert [r["skipped"] for r in report["attention"]] == [{"all": "section time budget"}] * 2
    target = next(t for t in report["targets"] if t["name"].startswith("TC attention"))
    assert target["value"] is None and target["pass"] is None


def test_bf16_loading_keeps_rope_in_fp32_and_matches_transformers(gpu, tmp_path):
    """What the GPU run's token comparison rests on: a llava-hf checkpoint loaded by tcllava in bf16 keeps
    RoPE's inv_freq in fp32, as transformers does (rounded to bf16 it moves every angle at long positions),
    and TC off then computes transformers' logits."""
    from transformers import LlavaNextVideoForConditionalGeneration

    from tcllava.model import load_model

    torch.manual_seed(0)
    config = gpu.llava_next_video_config("tiny")
    hf = LlavaNextVideoForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16, gamma=0.0, mask="causal")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ours = dict(model.named_buffers())["language_model.model.rotary_emb.inv_freq"]
    theirs = dict(hf.named_buffers())["model.language_model.rotary_emb.inv_freq"]
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    side = config.vision_config.image_size // config.vision_config.patch_size // 2
    ids = torch.tensor(
        [gpu.PROMPT_BEFORE + [config.video_token_index] * (2 * side * side) + gpu.PROMPT_AFTER]
    )
    pixels = torch.randn(1, 2, 3, config.vision_config.image_size, config.vision_config.image_size)
    inputs = {"input_ids": ids, "pixel_values_videos": pixels.bfloat16()}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, hf(**inputs).logits, rtol=0, atol=0)
