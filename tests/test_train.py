"""The training recipe end to end on CPU: config, a full run, exact resume, NaN and SIGTERM handling,
final model formats, two gloo processes against one, and checkpoints that never unpickle code."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tcllava.cli import main as cli_main
from tcllava.data.dataset import TrainCollator
from tcllava.model import CheckpointError, load, load_model
from tcllava.train import NonFiniteLoss, TrainConfig, checkpoint, train
from tcllava.train.checkpoint import list_checkpoints
from tcllava.train.trainable import build_model, build_optimizer, lr_factor
from train_fixtures import build_checkpoint, build_dataset, colour_frames

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["pllava_7b_lora.yaml", "pllava_7b_full.yaml", "small_1gpu.yaml", "cpu_demo.yaml"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"model": build_checkpoint(root / "ck"), "data": build_dataset(root / "data", n=24), "root": root}


def make_config(assets, out: Path, **overrides) -> TrainConfig:
    values = dict(
        model=str(assets["model"]),
        output_dir=str(out),
        data=[{"path": str(assets["data"])}],
        num_frames=4,
        max_steps=6,
        batch_size=2,
        grad_accum=2,
        lr=1e-3,
        num_workers=0,
        log_every=1,
        save_every=2,
        keep_last=2,
        progress=False,
        tensorboard=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def write_yaml(path: Path, config: TrainConfig) -> Path:
    path.write_text(config.to_yaml())
    return path


# ---------------------------------------------------------------------------------------- config


def test_config_yaml_overrides_and_validation(tmp_path):
    base = tmp_path / "c.yaml"
    base.write_text(
        "model: m\noutput_dir: o\ndata: [{path: a.json, weight: 2}]\nmax_steps: 10\nlr: 1e-5\nlora: {r: 8}\n"
    )
    config = TrainConfig.from_yaml(
        base, ["llm=lora", "lora.alpha=16", "data.0.media_root=/m", "batch_size=2", "global_batch_size=8"]
    )
    assert config.lr == 1e-5 and isinstance(config.lr, float)  # YAML reads "1e-5" as a string
    assert (config.lora.r, config.lora.alpha, config.llm) == (8, 16.0, "lora")
    assert (config.data[0].path, config.data[0].weight, config.data[0].media_root) == ("a.json", 2.0, "/m")
    assert config.grad_accum == 4  # derived from the global batch
    assert config.projector_lr == config.vision_lr == 1e-5  # derived from lr
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config
    for bad, message in [
        ("learning_rate=1", "unknown config key 'learning_rate'"),
        ("lora.rank=4", "unknown config key 'lora.rank'"),
        ("llm=half", "llm must be one of"),
        ("batch_size=two", "batch_size must be an integer"),
        ("max_steps=0", "max_steps must be >= 1"),
        ("batch_size=2 global_batch_size=7", "not a multiple"),
        ("attention.mask=diagonal", "mask must be one of"),
        ("frame_sampling=sometimes", "frame_sampling must be one of"),
        ("oops", "not key=value"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_yaml(base, bad.split())
    with pytest.raises(ValueError, match="did you mean 'num_frames'"):
        TrainConfig.from_yaml(base, ["num_frame=8"])


def test_shipped_configs_parse_and_show_their_command():
    for name in SHIPPED:
        path = REPO / "configs" / name
        config = TrainConfig.from_yaml(path)
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and "tcllava train configs/" + name in first, name
        assert config.data and config.num_frames in (8, 16)
    lora = TrainConfig.from_yaml(REPO / "configs" / "pllava_7b_lora.yaml")
    assert (lora.lora.r, lora.lora.alpha, lora.lora.target_modules) == (128, 32.0, ["q_proj", "v_proj"])
    assert lora.global_batch_size == 128 and lora.lr == 2e-5 and lora.warmup_ratio == 0.03
    assert TrainConfig.from_yaml(REPO / "configs" / "pllava_7b_full.yaml").llm == "full"


def test_trainability_param_groups_and_schedule(assets, tmp_path):
    config = make_config(assets, tmp_path, projector_lr=5e-3, weight_decay=0.1)
    model = build_model(config)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and not any(n.startswith("vision_tower") for n in names)  # frozen by default
    assert any(n.startswith("multi_modal_projector") for n in names)
    groups = {g["name"]: g for g in build_optimizer(model, config).param_groups}
    assert groups["projector"]["lr"] == 5e-3 and groups["llm"]["lr"] == 1e-3
    assert groups["llm"]["weight_decay"] == 0.1 and groups["llm_no_decay"]["weight_decay"] == 0.0
    lora = build_model(
        make_config(assets, tmp_path, llm="lora", lora={"r": 4, "alpha": 8, "target_modules": ["q_proj"]})
    )
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable) and not any("vision_tower" in n for n in trainable)
    # warmup 2 of 10 steps, then cosine to 10%
    factors = [lr_factor(s, 10, 2, 0.1) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


# ---------------------------------------------------------------------------------------- a run


def test_a_run_trains_reports_bad_samples_and_saves_a_loadable_model(assets, tmp_path):
    data = build_dataset(tmp_path / "data", n=12, bad=True)
    out = tmp_path / "run"
    summary = train(make_config(assets, out, data=[{"path": str(data)}], max_steps=4))
    assert summary["finished"] and summary["steps"] == 4 and len(summary["losses"]) == 4
    assert summary["losses"][-1] < summary["losses"][0]
    skipped = summary["skipped"]
    assert skipped["invalid_records"] == {"placeholder_mismatch": 1}
    assert skipped["while_training"] == {"missing_media": 1, "decode_error": 1}
    assert {s["id"] for s in skipped["samples"]} == {"missing", "corrupt", "mismatch"}
    assert json.loads((out / "report.json").read_text())["skipped"] == skipped
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert {"loss", "lr", "tokens_per_s", "grad_norm", "epoch"} <= set(metrics[0])
    # provenance: the resolved config with version, commit and data hash, in the run and each checkpoint
    info = json.loads((out / "run_info.json").read_text())
    assert info["tcllava_version"] and len(info["data_manifest_sha256"]) == 64 and "git_commit" in info
    checkpoints = list_checkpoints(out)
    assert [c.name for c in checkpoints] == ["step_00000002", "step_00000004"]
    header = (checkpoints[-1] / "config.yaml").read_text()
    assert (
        info["data_manifest_sha256"] in header
        and TrainConfig.from_dict(yaml.safe_load(header)).max_steps == 4
    )
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    # the final model is a standard checkpoint, loadable by tcllava.load, and it is the trained one
    model, _ = load(summary["final_model_dir"])
    assert isinstance(
        model.chat(
            torch.from_numpy(colour_frames(["red"] * 4)), "what colour comes first ?", max_new_tokens=2
        ),
        str,
    )
    start = load_model(assets["model"])
    trained = dict(model.named_parameters())
    assert not torch.equal(
        trained["multi_modal_projector.linear_1.weight"], start.multi_modal_projector.linear_1.weight
    )
    assert torch.equal(
        trained["vision_tower.embeddings.patch_embedding.weight"],
        start.vision_tower.embeddings.patch_embedding.weight,
    )


def test_killed_run_resumes_with_exactly_the_same_losses(assets, tmp_path):
    # LoRA with dropout (uses the RNG), random frame sampling, an epoch boundary (6 steps per epoch)
    settings = dict(
        max_steps=8, llm="lora", lora={"r": 4, "alpha": 8, "dropout": 0.1}, frame_sampling="random"
    )
    whole = train(make_config(assets, tmp_path / "whole", **settings))

    def crash(record):
        if record["step"] == 5:
            raise RuntimeError("simulated crash")

    out = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_config(assets, out, **settings), on_step=crash)
    assert [c.name for c in list_checkpoints(out)] == ["step_00000002", "step_00000004"]
    resumed = train(
        make_config(assets, out, num_workers=2, **settings)
    )  # resume=auto; workers change nothing
    assert resumed["steps"] == 8
    torch.testing.assert_close(resumed["losses"], whole["losses"], rtol=0, atol=1e-6)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))  # the dead run's step 5 was dropped
    assert json.loads((out / "run_info.json").read_text())["resumes"][0]["step"] == 4
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(make_config(assets, out, resume="never", **settings))


def test_nan_loss_stops_naming_the_step_and_batch_and_keeps_the_last_checkpoint(
    assets, tmp_path, monkeypatch
):
    real = TrainCollator.__call__
    seen: list[list[str]] = []

    def poisoned(self, items):
        batch = real(self, items)
        seen.append(batch["sample_ids"])
        if len(seen) == 5:  # step 3, first micro-batch
            batch["pixel_values_videos"] = [p * float("nan") for p in batch["pixel_values_videos"]]
        return batch

    monkeypatch.setattr(TrainCollator, "__call__", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss) as info:
        train(make_config(assets, out))
    message = str(info.value)
    assert "step 3" in message and "micro-batch 0" in message and str(seen[4]) in message
    assert "step_00000002" in message
    assert [c.name for c in list_checkpoints(out)] == ["step_00000002"]
    assert json.loads((out / "report.json").read_text())["error"] == message


def test_lora_final_model_merged_or_as_adapter(assets, tmp_path):
    from peft import PeftModel

    lora = dict(llm="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}, max_steps=2)
    merged = train(make_config(assets, tmp_path / "merged", **lora))
    adapter = train(make_config(assets, tmp_path / "adapter", save_final="adapter", **lora))
    assert (Path(adapter["final_model_dir"]) / "adapter_config.json").is_file()
    model, processor = load(merged["final_model_dir"])
    with_adapter = PeftModel.from_pretrained(load_model(assets["model"]), adapter["final_model_dir"]).eval()
    conversation = processor.question("what colour comes first ?")
    batch = processor(conversation, [torch.from_numpy(colour_frames(["red", "blue", "red", "green"]))])
    with torch.no_grad():
        want = with_adapter(**batch).logits
        got = model(**batch).logits
        base = load_model(assets["model"])(**batch).logits
        through_load = load(adapter["final_model_dir"])[0](**batch).logits  # the adapter merged on load
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(through_load, want, rtol=1e-5, atol=1e-5)
    assert (got - base).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    env.pop("WORLD_SIZE", None)
    return env


def test_sigterm_saves_a_checkpoint_before_exiting(assets, tmp_path):
    out = tmp_path / "term"
    config = write_yaml(tmp_path / "c.yaml", make_config(assets, out, max_steps=2000, save_every=1000))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcllava", "train", str(config)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-2000:]
    [saved] = list_checkpoints(out)
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["step"] >= 2 and saved.name == f"step_{state['step']:08d}"
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] and report["checkpoint"] == str(saved)


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_two_gloo_processes_give_the_losses_of_one(assets, tmp_path, mode):
    settings = dict(max_steps=4, batch_size=2, grad_accum=1, global_batch_size=4, frame_sampling="random")
    if mode == "fsdp":  # also: a trained vision tower and activation checkpointing under sharding
        settings.update(vision="full", gradient_checkpointing=True)
    one = train(make_config(assets, tmp_path / "one", **settings))
    config = write_yaml(
        tmp_path / "c.yaml", make_config(assets, tmp_path / "two", distributed=mode, **settings)
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*cmd, "-m", "tcllava", "train", str(config)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert (two["world_size"], two["distributed"]) == (2, mode)
    torch.testing.assert_close(two["losses"], one["losses"], rtol=0, atol=1e-5)
    model, _ = load(two["final_model_dir"])
    reference, _ = load(one["final_model_dir"])
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_through_accelerate_gives_the_losses_of_one_process(assets, tmp_path, stage):
    pytest.importorskip("deepspeed")  # optional extra: pip install tcllava[deepspeed]
    settings = dict(
        max_steps=3,
        batch_size=2,
        grad_accum=1,
        global_batch_size=4,
        llm="lora",
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
    )
    one = train(make_config(assets, tmp_path / "one", **settings))
    config = write_yaml(tmp_path / "c.yaml", make_config(assets, tmp_path / "ds", **settings))

    def launch(*overrides: str) -> dict:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            f"configs/accelerate/zero{stage}.yaml",
            "--main_process_port",
            str(free_port()),  # not the fixed default: a port still held by an earlier run fails the launch
        ]
        done = subprocess.run(
            [*command, "--num_processes", "2", "-m", "tcllava", "train", str(config), *overrides],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((tmp_path / "ds" / "report.json").read_text())

    report = launch()
    assert (report["world_size"], report["distributed"]) == (2, "deepspeed")
    torch.testing.assert_close(report["losses"], one["losses"], rtol=0, atol=1e-5)
    assert (Path(report["final_model_dir"]) / "model.safetensors").is_file()
    # resumed from step 2 (DeepSpeed's shards read weights_only, their digests checked): the same losses
    resumed = launch(f"resume={tmp_path / 'ds' / 'checkpoints' / 'step_00000002'}")
    torch.testing.assert_close(resumed["losses"], report["losses"], rtol=0, atol=1e-6)


def test_cli_prints_the_resolved_config_and_rejects_unknown_keys(assets, tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", make_config(assets, tmp_path / "o"))
    assert cli_main(["train", str(config), "lr=0.5", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["lr"] == 0.5
    assert cli_main(["train", str(config), "lr_rate=0.5"]) == 2
    assert "unknown config key 'lr_rate'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- checkpoint safety


class _Planted:
    """Unpickling this runs ``touch MARKER`` (what a tampered checkpoint could do with any command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def saved_run(assets):
    """A finished 2-step run with its checkpoint step_00000002, copied by the tests that tamper with it."""
    out = assets["root"] / "saved"
    train(make_config(assets, out, max_steps=2, save_every=2))
    return out


def _copy(saved_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    return out, out / "checkpoints" / "step_00000002"


def _record(step_dir: Path, **changes) -> None:
    state = json.loads((step_dir / "trainer_state.json").read_text())
    state.update(changes)
    (step_dir / "trainer_state.json").write_text(json.dumps(state))


def test_a_planted_pickle_never_runs_on_resume(assets, saved_run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Planted(tmp_path / "probe")))  # the payload does run when unpickled
    assert (tmp_path / "probe").exists()
    # an old-format checkpoint (or a planted one): trainer_state.pt and rng/rank_0.pt are pickles
    out, step = _copy(saved_run, tmp_path / "legacy")
    (step / "trainer_state.json").unlink(missing_ok=True)
    torch.save({"step": 2, "x": _Planted(marker)}, step / "trainer_state.pt")
    torch.save(_Planted(marker), step / "rng" / "rank_0.pt")
    config = write_yaml(tmp_path / "c.yaml", make_config(assets, out, max_steps=2, save_every=2))
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"tcllava train: {step}: written by an older tcllava")
        and "cannot be loaded safely" in err
    )
    assert len(err.splitlines()) == 1 and not marker.exists()
    with pytest.raises(CheckpointError, match="older tcllava"):
        train(make_config(assets, out, max_steps=2, save_every=2, resume=str(step)))
    # DCP's .metadata is a pickle: planted, with its digest rewritten to match (the whole folder forged)
    out, step = _copy(saved_run, tmp_path / "metadata")
    (step / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata: not a tcllava checkpoint state \(changed since"):
        train(make_config(assets, out, max_steps=2, save_every=2))
    _record(step, digests={".metadata": hashlib.sha256((step / ".metadata").read_bytes()).hexdigest()})
    with pytest.raises(
        CheckpointError, match=r"\.metadata: not a tcllava checkpoint state \(it refers to posix"
    ):
        train(make_config(assets, out, max_steps=2, save_every=2))
    assert not marker.exists()


def test_a_planted_value_inside_dcp_shards_is_not_unpickled(tmp_path):
    import torch.distributed.checkpoint as dcp

    from tcllava.train.safe_load import load_dcp

    marker = tmp_path / "PWNED"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-process DCP warns that it assumes no process group
        dcp.save({"w": torch.arange(3.0), "lr": 0.5}, checkpoint_id=tmp_path / "good")
        dcp.save({"w": torch.arange(3.0), "lr": _Planted(marker)}, checkpoint_id=tmp_path / "bad")
        state = {"w": torch.zeros(3), "lr": 0.0}
        load_dcp(state, tmp_path / "good")  # plain values and tensors load as before
        assert state["lr"] == 0.5 and torch.equal(state["w"], torch.arange(3.0))
        with pytest.raises(
            CheckpointError, match=r"bad: not a tcllava checkpoint state \(value lr: it holds posix"
        ):
            load_dcp({"w": torch.zeros(3), "lr": 0.0}, tmp_path / "bad")
    assert not marker.exists()


def test_deepspeed_shards_are_read_weights_only(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from tcllava.train.safe_load import deepspeed_weights_only

    class Engine:  # what deepspeed_weights_only uses of a DeepSpeed engine
        checkpoint_engine = TorchCheckpointEngine()

        def load_universal_checkpoint(self) -> bool:
            return False

    marker = tmp_path / "PWNED"
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients}, tmp_path / "good.pt")
    torch.save({"x": _Planted(marker)}, tmp_path / "bad.pt")
    engine = Engine()
    with deepspeed_weights_only(engine):
        good = engine.checkpoint_engine.load(str(tmp_path / "good.pt"))
        assert good["zero_stage"] == ZeroStageEnum.gradients and good["loss_scaler"].cur_scale == 1.0
        with pytest.raises(CheckpointError, match=r"bad.pt: not a tcllava checkpoint state \(it holds posix"):
            engine.checkpoint_engine.load(str(tmp_path / "bad.pt"))
    assert not marker.exists()
    assert "load" not in vars(engine.checkpoint_engine)  # DeepSpeed's own method is back


def test_a_tampered_json_state_is_refused_naming_the_file(assets, saved_run, tmp_path):
    from tcllava.train.distributed import Runtime

    out, step = _copy(saved_run, tmp_path)
    config = make_config(assets, out, max_steps=2, save_every=2)
    file, good = step / "trainer_state.json", (step / "trainer_state.json").read_text()
    _record(step, step="2")  # on resume: one clear error naming the file and the field
    with pytest.raises(
        CheckpointError, match=re.escape(f"{file}: not a tcllava checkpoint state ('step' must")
    ):
        train(config)
    for change, message in [
        ({"losses": {"a": 1}}, "'losses' must be a list of numbers or nulls"),
        ({"scheduler": {"last_epoch": 2}}, "'scheduler' must be an object with integers"),
        ({"digests": {".metadata": "x"}}, "'digests' must be sha256 digests"),
        ({"format": 1}, "format 1; this tcllava reads format 2"),
    ]:
        file.write_text(good)
        _record(step, **change)
        with pytest.raises(
            CheckpointError, match=re.escape(f"{file}: not a tcllava checkpoint state ({message}")
        ):
            checkpoint.read_state(step)
    file.write_text(good[:-20])
    with pytest.raises(CheckpointError, match=re.escape(f"{file}: not a tcllava checkpoint state (not JSON")):
        checkpoint.read_state(step)
    file.write_text(good)
    rng_file = step / "rng" / "rank_0.json"
    rng = json.loads(rng_file.read_text())
    for bad in ({"torch": rng["torch"][:-2]}, {"python": [3, "x", None]}, {"numpy": None}):
        rng_file.write_text(json.dumps({**rng, **bad}))
        with pytest.raises(
            CheckpointError, match=re.escape(f"{rng_file}: not a tcllava checkpoint state (bad ")
        ):
            checkpoint.load_rng(Runtime(), step)
    rng_file.write_text(json.dumps(rng))
    assert train(config)["steps"] == 2  # the untouched checkpoint loads


class _Shards:
    """A stand-in engine for checkpoint.save: writes one file that counts as a pickle."""

    def save(self, directory: Path) -> None:
        (directory / "shard.bin").write_bytes(b"weights")

    @staticmethod
    def pickled_files(directory: Path) -> list[Path]:
        return [directory / "shard.bin"]


def test_killed_rotations_and_saves_leave_nothing_behind(tmp_path, monkeypatch):
    from tcllava.train.distributed import Runtime

    rt, root = Runtime(), tmp_path / "checkpoints"

    def save(step: int) -> Path:
        state = {"step": step, "scheduler": {}}
        return checkpoint.save(rt, tmp_path, step, _Shards(), state, {"config.yaml": "x"}, keep_last=2)

    for step in (1, 2):
        save(step)
    # a rotation killed mid-deletion: only a .del- folder is left, never a half-deleted step_N
    real = shutil.rmtree

    def killed(path, ignore_errors=False):
        if Path(path).name.endswith("step_00000001") and Path(path).exists():
            for state in Path(path).glob("trainer_state.*"):
                state.unlink()  # the checkpoint now looks incomplete
            raise KeyboardInterrupt
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        save(3)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real)
    assert sorted(p.name for p in root.iterdir()) == [".del-step_00000001", "step_00000002", "step_00000003"]
    # leftovers of killed saves and of an older tcllava's deletion
    (root / ".tmp-step_00000004" / "rng").mkdir(parents=True)
    (root / "step_00000000").mkdir()  # half-deleted: no state file left
    (root / "step_00000000" / "shard.bin").write_bytes(b"")
    shutil.copytree(root / "step_00000003", root / ".old-step_00000003")  # step_00000003 exists: stale
    shutil.copytree(root / "step_00000002", root / ".old-step_00000005")  # the only copy of a step: kept
    save(6)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005", "step_00000006"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000005", "step_00000006"]
    state = json.loads((root / "step_00000006" / "trainer_state.json").read_text())
    assert state["digests"] == {"shard.bin": hashlib.sha256(b"weights").hexdigest()}
    # the same sweep runs when a run starts
    (root / ".del-step_00000001").mkdir()
    checkpoint.sweep(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005", "step_00000006"]
