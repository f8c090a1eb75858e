"""The recipe: supervised fine-tuning of a TC-LLaVA checkpoint on conversation data, on one CPU or many
GPUs, resumable at any checkpoint with the same losses as a run that never stopped.

One optimizer step = one global batch of ``batch_size * grad_accum * world_size`` samples. The loss is
the mean over *all* answer tokens of the global batch (the token count is all-reduced first and every
micro-batch's summed loss is divided by it), so the update does not depend on how the batch is split
across processes and accumulation steps: one process with ``grad_accum=2`` and two with ``grad_accum=1``
give the same losses.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tcllava.data.dataset import (
    MAX_LISTED,
    ConversationDataset,
    GlobalBatchSampler,
    TrainCollator,
    TrainingData,
    load_training_data,
)
from tcllava.model.api import DTYPES
from tcllava.model.processing import IGNORE_INDEX, TCLlavaProcessor
from tcllava.train import checkpoint, distributed
from tcllava.train.config import TrainConfig
from tcllava.train.engines import DeepSpeedEngine, TorchEngine, make_engine
from tcllava.train.monitor import Monitor
from tcllava.train.provenance import header, run_info
from tcllava.train.trainable import build_model, build_scheduler, export_model

REPORT_FILE = "report.json"
FINAL_DIR = "final"


class NonFiniteLoss(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; nothing was updated with it."""


class Interrupted(Exception):
    """Raised by a second Ctrl-C while the first one's checkpoint is being written."""


def train(config: TrainConfig, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the run ``config`` describes and return its summary (also in ``report.json``).

    ``on_step(record)`` is called on rank 0 after every optimizer step with that step's metrics.
    Launched by ``torchrun``/``accelerate``, every process calls this; each returns the same summary.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()  # transformers' own loading/saving bars
    rt = distributed.setup(config.distributed)
    try:
        return Trainer(config, rt, on_step).run()
    finally:
        distributed.teardown(rt)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"  # bf16 is emulated and slow on CPUs without AVX-512 (docs/method.md 6)
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a GPU; use fp32 on CPU")
    return precision


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(_: int) -> None:
    # The main process alone handles SIGTERM/SIGINT (and checkpoints); workers sent the same signal by a
    # scheduler must not die under it. One thread each: workers run in parallel already.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


class Trainer:
    """One run, in phases: ``setup_run_dir`` (which checkpoint to resume), ``setup_model``, ``setup_data``,
    ``setup_optimizer``, ``restore`` (the checkpoint, if any), ``train`` (the loop) and ``finish`` (final
    model and report). Every rank runs the same phases, so their collectives come in the same order."""

    def __init__(
        self,
        config: TrainConfig,
        rt: distributed.Runtime,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.rt = rt
        self.on_step = on_step
        self.run_dir = Path(config.output_dir)
        self.stop_requested = False  # set by our signal handler
        self.stopped = False  # the loop ended early because some rank was signalled
        self.started: float | None = None  # perf_counter at the start of run()
        self.resume_from: Path | None = None  # setup_run_dir
        # setup_model
        self.precision: str | None = None
        self.engine: TorchEngine | DeepSpeedEngine | None = None
        self.model: torch.nn.Module | None = None  # unwrapped; setup_optimizer hands it to the engine
        self.processor: TCLlavaProcessor | None = None
        # setup_data
        self.data: TrainingData | None = None
        self.sampler: GlobalBatchSampler | None = None
        self.dataset: ConversationDataset | None = None
        self.loader: torch.utils.data.DataLoader | None = None
        self.steps_per_epoch: int | None = None
        self.total: int | None = None
        # setup_optimizer
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        # restore
        self.files: dict[str, str] | None = None  # config.yaml and run_info.json, copied into checkpoints
        self.state: dict[str, Any] | None = None  # what a checkpoint's trainer_state.json holds
        self.monitor: Monitor | None = None
        # train: this session's skipped samples on this rank (earlier sessions' are in the state)
        self.local_skipped: Counter[str] = Counter()
        self.local_listed: dict[str, dict[str, Any]] = {}
        self.fallback_batch: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        self.started = time.perf_counter()
        self.setup_run_dir()
        self.setup_model()
        self.setup_data()
        self.setup_optimizer()
        self.restore()
        self.train()
        return self.finish()

    # ------------------------------------------------------------------ set-up
    def setup_run_dir(self) -> None:
        """Create the run directory, clear what killed saves left, and pick the checkpoint to resume,
        before anything slow: a wrong ``resume`` fails at once."""
        if self.rt.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.sweep(self.run_dir)
        self.rt.barrier()
        self.resume_from = self.resume_path()

    def resume_path(self) -> Path | None:
        latest = checkpoint.latest_checkpoint(self.run_dir)
        resume = self.config.resume
        if resume == "auto":
            if latest is not None:
                checkpoint.check_format(latest)
            return latest
        if resume == "never":
            if latest is not None:
                raise ValueError(
                    f"{self.run_dir} already holds checkpoints (latest {latest.name}); use resume=auto to "
                    "continue that run or choose another output_dir"
                )
            return None
        path = Path(resume)
        checkpoint.check_format(path)
        if not (path / checkpoint.STATE_FILE).is_file():
            raise FileNotFoundError(f"resume={resume}: not a complete checkpoint directory")
        return path

    def setup_model(self) -> None:
        """The engine first (DeepSpeed joins its process group there and, under ZeRO-3, makes
        transformers load the model partitioned), then the model with the same seed on every rank:
        identical LoRA init everywhere."""
        cfg, rt = self.config, self.rt
        self.precision = resolve_precision(cfg.precision, rt.device)
        self.engine = make_engine(cfg, rt, self.precision)
        seed_all(cfg.seed)
        self.model = build_model(cfg)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.processor = TCLlavaProcessor.from_pretrained(cfg.model, config=base.config)
        self.processor.num_frames = cfg.num_frames

    def setup_data(self) -> None:
        cfg, rt = self.config, self.rt
        media_config = self.processor.config
        self.data = load_training_data(
            cfg.data,
            media_config.media_tokens(cfg.num_frames),
            media_config.media_tokens(1),
            hash_files=rt.is_main,
        )
        if len(self.data) == 0:
            raise ValueError(f"no usable sample in the data ({len(self.data.invalid)} invalid records)")
        self.sampler = GlobalBatchSampler(
            self.data.lengths,
            self.data.spans,
            cfg.batch_size,
            cfg.grad_accum,
            rt.world_size,
            rt.rank,
            cfg.seed,
            cfg.group_by_length,
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if cfg.max_steps is not None:
            self.total = cfg.max_steps
        else:
            self.total = math.ceil(cfg.epochs * self.steps_per_epoch)
        self.dataset = ConversationDataset(
            self.data,
            self.processor,
            cfg.num_frames,
            cfg.frame_sampling,
            cfg.max_length,
            cfg.sample_timeout,
            cfg.seed,
        )
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=cfg.num_workers,
            collate_fn=TrainCollator(self.processor),
            pin_memory=rt.device.type == "cuda",
            worker_init_fn=_worker_init,
            prefetch_factor=4 if cfg.num_workers else None,
            generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
        )

    def setup_optimizer(self) -> None:
        """Wrap the model (DDP/FSDP/ZeRO) and build its optimizer, then the schedule over the run."""
        self.engine.prepare(self.model)
        self.scheduler = build_scheduler(self.engine.optimizer, self.total, self.config)

    def restore(self) -> None:
        """The run's provenance, then the checkpoint's state (parameters, optimizer, schedule, data
        position, counters; generators last, right before training), or a fresh state."""
        cfg, rt = self.config, self.rt
        info = self.describe()  # collective
        self.files = {"config.yaml": cfg.to_yaml(header(info)), "run_info.json": json.dumps(info, indent=1)}
        state = self.fresh_state()
        if self.resume_from is not None:
            state = checkpoint.load(self.resume_from, self.engine)
            checkpoint.restore_scheduler(self.scheduler, state.pop("scheduler"))
            self.sampler.check_compatible(state["sampler"])
            if state["total_steps"] != self.total:
                raise ValueError(
                    f"cannot resume exactly: the run had {state['total_steps']} steps, this config gives "
                    f"{self.total} (the learning-rate schedule depends on it)"
                )
        self.state = state
        if rt.is_main:
            self.write_run_files(info)
        self.monitor = Monitor(
            self.run_dir, self.total, state["step"], rt.is_main, cfg.progress, cfg.tensorboard
        )
        self.monitor.truncate(state["step"])
        if self.resume_from is not None:
            self.monitor.write(f"resumed from {self.resume_from} at step {state['step']}")
            if not checkpoint.load_rng(rt, self.resume_from):
                self.monitor.write(
                    "world size changed: random generators re-seeded (data order is unchanged)"
                )
                seed_all(cfg.seed + state["step"] + rt.rank)

    def describe(self) -> dict[str, Any]:
        """Versions, data hash (rank 0's, broadcast: a collective) and the run's shape."""
        rt = self.rt
        manifest_hash = rt.broadcast(self.data.manifest_hash() if rt.is_main else None)
        return run_info(
            manifest_hash,
            {
                "world_size": rt.world_size,
                "distributed": rt.mode,
                "device": str(rt.device),
                "precision": self.precision,
                "grad_accum": self.config.grad_accum,
                "global_batch_size": self.sampler.global_batch,
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total,
            },
        )

    def fresh_state(self) -> dict[str, Any]:
        return {
            "step": 0,
            "epoch": 0,
            "step_in_epoch": 0,
            "sampler": self.sampler.state_dict(),
            "losses": [],
            "skipped_counts": {},
            "skipped_listed": [],
            "tokens": 0,
            "samples": 0,
            "truncated": 0,
            "train_seconds": 0.0,
            "total_steps": None,
            "checkpoint": None,
        }

    def write_run_files(self, info: dict[str, Any]) -> None:
        state = self.state
        (self.run_dir / "data_manifest.json").write_text(json.dumps(self.data.manifest(), indent=1))
        info_path = self.run_dir / "run_info.json"
        if self.resume_from is not None and info_path.is_file():
            first = json.loads(info_path.read_text())
            first.setdefault("resumes", []).append(
                {
                    "checkpoint": str(self.resume_from),
                    "step": state["step"],
                    "at": info["started"],
                    "world_size": info["world_size"],
                }
            )
            info_path.write_text(json.dumps(first, indent=1))
            saved = self.run_dir / "config.yaml"
            if saved.is_file():
                before = yaml.safe_load(saved.read_text())
                now = self.config.to_dict()
                changed = sorted(k for k in now if before.get(k) != now[k])
                if changed:
                    print(f"[tcllava train] resumed with changed settings: {', '.join(changed)}", flush=True)
        else:
            for name, text in self.files.items():
                (self.run_dir / name).write_text(text)

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise Interrupted("second interrupt: stopping without a checkpoint")
            self.stop_requested = True

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        """The loop, under our SIGTERM/SIGINT handler. A non-finite loss is reported (report.json, on
        every rank: the summary is collective) before it propagates."""
        previous = self.install_signal_handlers()
        try:
            self.loop()
        except NonFiniteLoss as e:
            summary = self.summary(error=str(e))  # collective: every rank raises here
            if self.rt.is_main:
                self.write_report(summary)
            raise
        finally:
            self.restore_signal_handlers(previous)
            self.monitor.close()

    def loop(self) -> None:
        cfg, rt, state = self.config, self.rt, self.state
        sampler, total, steps_per_epoch = self.sampler, self.total, self.steps_per_epoch
        iterator = None
        window = {"tokens": 0.0, "samples": 0.0, "time": time.perf_counter()}
        while state["step"] < total:
            if iterator is None:
                sampler.set_position(state["epoch"], state["step_in_epoch"])
                iterator = iter(self.loader)
            micro = [next(iterator) for _ in range(cfg.grad_accum)]
            step_start = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
            loss, grad_norm, stats = self.train_step(micro)
            state["step"] += 1
            state["step_in_epoch"] += 1
            if state["step_in_epoch"] == steps_per_epoch:
                state["epoch"] += 1
                state["step_in_epoch"] = 0
                iterator = None
            state["losses"].append(loss)
            state["tokens"] += int(stats["tokens"])
            state["samples"] += int(stats["samples"])
            state["truncated"] += int(stats["truncated"])
            state["train_seconds"] += time.perf_counter() - step_start
            window["tokens"] += stats["tokens"]
            window["samples"] += stats["samples"]
            step = state["step"]
            log = step % cfg.log_every == 0 or step == total
            elapsed = max(1e-9, time.perf_counter() - window["time"])
            record = {
                "step": step,
                "epoch": round(state["epoch"] + state["step_in_epoch"] / steps_per_epoch, 4),
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": window["tokens"] / elapsed,
                "samples_per_s": window["samples"] / elapsed,
                "skipped": int(stats["skipped"]),
            }
            self.monitor.step(record, log)
            if log:
                window = {"tokens": 0.0, "samples": 0.0, "time": time.perf_counter()}
            stop = stats["stop"] > 0
            if step % cfg.save_every == 0 or step == total or stop:
                self.save()
            if self.on_step is not None and rt.is_main:
                self.on_step(record)
            if stop:
                self.stopped = True  # on every rank, whichever received the signal
                self.monitor.write(f"stop requested (SIGTERM/SIGINT): saved {state['checkpoint']}")
                break
        del iterator

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.rt.device
        keys = ("input_ids", "attention_mask", "labels", "frame_ids")
        out = {k: batch[k].to(device, non_blocking=True) for k in keys}
        out["pixel_values_videos"] = [p.to(device, non_blocking=True) for p in batch["pixel_values_videos"]]
        return out

    def fallback(self) -> dict[str, Any]:
        """Any encodable sample, used with weight 0 when a rank's whole step was skipped: every rank
        must run forward and backward so that the collective gradient reduction matches."""
        if self.fallback_batch is None:
            reasons: Counter[str] = Counter()
            for i in range(len(self.dataset)):
                item = self.dataset[(i, 0)]
                if not hasattr(item, "reason"):
                    self.fallback_batch = TrainCollator(self.processor)([item])
                    break
                reasons[item.reason] += 1
            else:
                sources = ", ".join(d.path for d in self.config.data)
                raise ValueError(
                    f"no sample of the data can be used ({sources}): all {len(self.dataset)} failed "
                    f"({', '.join(f'{n} {r}' for r, n in reasons.most_common())}); check media_root and the files"
                )
        return self.fallback_batch

    def train_step(self, micro: list[dict[str, Any]]) -> tuple[float | None, float | None, dict[str, float]]:
        rt, engine = self.rt, self.engine
        counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) if "labels" in b else 0 for b in micro]
        global_tokens = rt.all_sum([sum(counts)])[0]
        norm = torch.tensor(max(global_tokens, 1.0), dtype=torch.float32, device=rt.device)
        good = [b for b in micro if "input_ids" in b]
        losses: list[float] = []
        for a, batch in enumerate(micro):
            empty = "input_ids" not in batch
            feed = batch if not empty else (good[0] if good else self.fallback())
            with engine.accumulating(last=a == len(micro) - 1):
                out = engine.forward(**self.inputs(feed), num_items_in_batch=norm, use_cache=False)
                loss = out.loss * (0.0 if empty or global_tokens == 0 else 1.0)
                engine.backward(loss * rt.world_size)  # ranks average gradients; we want their sum
            losses.append(float(loss.detach()))
            self.track_skipped(batch)
        grad_norm = engine.grad_norm()
        local = [
            sum(losses),
            sum(float(b["attention_mask"].sum()) for b in good),
            sum(len(b["sample_ids"]) for b in good),
            sum(len(b["skipped"]) for b in micro),
            sum(b["truncated"] for b in micro),
            float(self.stop_requested),
        ]
        loss_sum, tokens, samples, skipped, truncated, stop = rt.all_sum(local)
        stats = {
            "tokens": tokens,
            "samples": samples,
            "skipped": skipped,
            "truncated": truncated,
            "stop": stop,
        }
        if global_tokens == 0:  # every sample of the global batch was skipped: no update, schedule goes on
            engine.discard()
            self.scheduler.step()
            return None, None, stats
        grad_ok = grad_norm is None or math.isfinite(grad_norm) or engine.tolerates_inf_grads()
        if not math.isfinite(loss_sum) or not grad_ok:
            self.raise_non_finite(micro, losses, loss_sum, grad_norm)
        engine.update()
        self.scheduler.step()
        return loss_sum, grad_norm, stats

    def raise_non_finite(self, micro, losses, loss_sum, grad_norm) -> None:
        rt, state = self.rt, self.state
        step = state["step"] + 1
        mine = [
            (rt.rank, a, value, b.get("sample_ids", []))
            for a, (b, value) in enumerate(zip(micro, losses, strict=True))
            if not math.isfinite(value)
        ]
        everyone = [x for part in rt.gather(mine) for x in part]
        if not everyone:  # finite loss, non-finite gradient: name the whole step
            ids = [
                i for part in rt.gather([sid for b in micro for sid in b.get("sample_ids", [])]) for i in part
            ]
            what = f"gradient norm is {grad_norm} (loss {loss_sum:.6g}); samples of the step: {ids}"
        else:
            parts = [f"rank {r} micro-batch {a} (loss {v}): samples {ids}" for r, a, v, ids in everyone]
            what = f"loss is {loss_sum} in " + "; ".join(parts)
        last = state.get("checkpoint") or "none yet"
        applied = (
            "It was applied in memory only (DeepSpeed steps inside backward)"
            if self.engine.updates_inside_backward
            else "Nothing was updated with it"
        )
        raise NonFiniteLoss(
            f"non-finite training at step {step} (epoch {state['epoch']}, batch {state['step_in_epoch']} of "
            f"the epoch): {what}. {applied}; the last good checkpoint is {last} (resume from it with a lower "
            "lr or without those samples)."
        )

    def track_skipped(self, batch: dict[str, Any]) -> None:
        for item in batch["skipped"]:
            self.local_skipped[item["reason"]] += 1
            key = f"{item['source']}::{item['id']}"
            if key not in self.local_listed and len(self.local_listed) < MAX_LISTED:
                self.local_listed[key] = item

    def skipped_totals(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Counts (occurrences by reason) and the listed samples over all ranks and earlier sessions.
        Collective."""
        counts = Counter(self.state["skipped_counts"])
        listed = {f"{x['source']}::{x['id']}": x for x in self.state["skipped_listed"]}
        for part_counts, part_listed in self.rt.gather((dict(self.local_skipped), self.local_listed)):
            counts.update(part_counts)
            for key, item in part_listed.items():
                if len(listed) < MAX_LISTED:
                    listed.setdefault(key, item)
        return dict(counts), list(listed.values())

    # ------------------------------------------------------------------ saving
    def save(self) -> None:
        state, sampler = self.state, self.sampler
        counts, listed = self.skipped_totals()
        sampler.set_position(state["epoch"], state["step_in_epoch"])
        to_save = {
            **state,
            "skipped_counts": counts,
            "skipped_listed": listed,
            "sampler": sampler.state_dict(),
            "scheduler": checkpoint.scheduler_state(self.scheduler),
            "total_steps": self.total,
        }
        path = checkpoint.save(
            self.rt, self.run_dir, state["step"], self.engine, to_save, self.files, self.config.keep_last
        )
        state["checkpoint"] = str(path)

    def export(self, out: Path) -> str:
        """The final model in the standard layout (collective: sharded weights are gathered first)."""
        cfg, rt = self.config, self.rt
        dtype = DTYPES[self.precision]
        full = self.engine.trained_state_dict()
        if full is not None and rt.is_main:
            with self.engine.plain_model_context():
                fresh = build_model(cfg)  # frozen weights from the base checkpoint, trained ones from the run
            result = fresh.load_state_dict(full, strict=False)
            if result.unexpected_keys:
                raise RuntimeError(f"export: unexpected keys {result.unexpected_keys[:5]}")
            export_model(fresh, cfg, out, dtype, self.processor)
        elif full is None and rt.is_main:
            export_model(self.engine.unwrapped().to("cpu"), cfg, out, dtype, self.processor)
        if rt.is_main:
            (out / "train_config.yaml").write_text(self.files["config.yaml"])
            info = json.loads(self.files["run_info.json"])
            info.update(
                steps=self.state["step"], final_loss=self.last_loss(), checkpoint=self.state["checkpoint"]
            )
            (out / "training_info.json").write_text(json.dumps(info, indent=1))
        rt.barrier()
        return str(out)

    # ------------------------------------------------------------------ report
    def last_loss(self) -> float | None:
        return next((x for x in reversed(self.state["losses"]) if x is not None), None)

    def finish(self) -> dict[str, Any]:
        """The final model once the run is complete (collective), then the summary, also in report.json."""
        final_model = None
        if self.state["step"] >= self.total:
            final_model = self.export(self.run_dir / FINAL_DIR)
        summary = self.summary(final_model=final_model)
        if self.rt.is_main:
            self.write_report(summary)
        return summary

    def summary(self, final_model: str | None = None, error: str | None = None) -> dict[str, Any]:
        """Collective (skipped samples are gathered from every rank)."""
        total = self.total
        counts, listed = self.skipped_totals()
        at_load = Counter(x.reason for x in self.data.invalid)
        state = self.state
        return {
            "run_dir": str(self.run_dir),
            "steps": state["step"],
            "total_steps": total,
            "finished": state["step"] >= total,
            "interrupted": self.stopped and state["step"] < total,
            "error": error,
            "final_loss": self.last_loss(),
            "losses": state["losses"],
            "metrics": str(self.run_dir / "metrics.jsonl"),
            "checkpoint": state["checkpoint"],
            "final_model_dir": final_model,
            "skipped": {
                "invalid_records": dict(at_load),
                "while_training": counts,
                "total": sum(at_load.values()) + sum(counts.values()),
                "samples": [vars(x) for x in self.data.invalid[:MAX_LISTED]] + listed,
            },
            "truncated_samples": state["truncated"],
            "tokens": state["tokens"],
            "samples": state["samples"],
            "world_size": self.rt.world_size,
            "distributed": self.rt.mode,
            "precision": self.precision,
            "train_seconds": round(state["train_seconds"], 3),
            "wall_seconds": round(time.perf_counter() - self.started, 3),
        }

    def write_report(self, summary: dict[str, Any]) -> None:
        (self.run_dir / REPORT_FILE).write_text(json.dumps(summary, indent=1))
