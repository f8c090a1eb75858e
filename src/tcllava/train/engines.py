"""The two ways a step's arithmetic is distributed, behind one small interface the loop uses.

- :class:`TorchEngine`: one process, DDP or FSDP2 (``torchrun``); fp32 master weights with bf16/fp16
  autocast on GPU; checkpoints with ``torch.distributed.checkpoint`` (sharded under FSDP).
- :class:`DeepSpeedEngine`: DeepSpeed ZeRO-2/3 set up by ``accelerate`` (``accelerate launch
  --config_file configs/accelerate/zero2.yaml -m tcllava train ...``); DeepSpeed owns precision,
  accumulation, clipping and the optimizer step, and writes its own checkpoint shards.

Both receive a loss that is already "sum over the global batch / global answer tokens" times the world
size, so that their gradient averaging over ranks yields the gradient of the global-batch mean.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tcllava.train import distributed
from tcllava.train.config import TrainConfig
from tcllava.train.trainable import build_optimizer

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchEngine:
    updates_inside_backward = False  # the loop checks the loss before the update

    def __init__(self, config: TrainConfig, rt: distributed.Runtime, precision: str) -> None:
        if precision == "fp16" and rt.mode == "fsdp":
            raise ValueError("fp16 with FSDP is not supported; use bf16 (or ddp)")
        self.rt, self.config, self.precision = rt, config, precision

    def prepare(self, model: nn.Module) -> None:
        """Wrap the model and build its optimizer (after wrapping: FSDP replaces the parameters)."""
        rt, config, precision = self.rt, self.config, self.precision
        if rt.mode != "fsdp":
            model.to(rt.device)  # FSDP moves each shard to the device itself
        self.module = distributed.wrap(model, rt)
        self.optimizer = build_optimizer(self.module, config)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def accumulating(self, last: bool):
        """Gradient all-reduce only on the last micro-batch of a step (same result, less traffic)."""
        return distributed.grad_sync(self.module, self.rt, enabled=last)

    def forward(self, **inputs: Any):
        dtype = AUTOCAST.get(self.precision)
        ctx = torch.autocast(self.rt.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def grad_norm(self) -> float:
        """Clip (unless max_grad_norm is 0) and return the norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.module.parameters() if p.requires_grad]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    def tolerates_inf_grads(self) -> bool:
        return self.scaler is not None  # fp16: the scaler skips overflowing steps by design

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoints: trainable parameters + optimizer state, each rank its own shards --
    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.module, self.optimizer, options=_options())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single-process DCP warns that it assumes no process group
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory)

    def load(self, directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from tcllava.train.safe_load import load_dcp

        model_state, optim_state = get_state_dict(self.module, self.optimizer, options=_options())
        state = {"model": model_state, "optim": optim_state}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dcp(state, directory)  # never unpickles anything but DCP metadata and plain values
        set_state_dict(
            self.module,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=_options(strict=False),
        )

    @staticmethod
    def pickled_files(directory: Path) -> list[Path]:
        """Files :meth:`load` unpickles (allowlisted): their digests are recorded in the trainer state."""
        return [directory / ".metadata"]

    def trained_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective. Full trainable weights on rank 0 (None elsewhere), or None when the local
        module is already whole (then the caller exports it directly)."""
        if self.rt.mode != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.module, options=_options(full_state_dict=True, cpu_offload=True))
        return full if self.rt.is_main else {}

    def unwrapped(self) -> nn.Module:
        return distributed.unwrap(self.module)

    def plain_model_context(self):
        """Where a whole, unsharded model may be built (for the final export)."""
        return contextlib.nullcontext()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, **kw)


class DeepSpeedEngine:
    """ZeRO through accelerate. The launcher's DeepSpeed config gives the ZeRO stage and offload; the
    recipe fills in what it owns (micro-batch, accumulation, clipping, precision) so the two cannot
    disagree. Used when ``accelerate launch`` sets ACCELERATE_USE_DEEPSPEED (or distributed=deepspeed)."""

    updates_inside_backward = True  # DeepSpeed steps at the accumulation boundary itself
    TAG = "deepspeed"

    def __init__(self, config: TrainConfig, rt: distributed.Runtime, precision: str) -> None:
        """Before the model is built: with ``zero3_init_flag`` transformers then loads it partitioned."""
        from accelerate import Accelerator

        self.rt, self.config, self.precision = rt, config, precision
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
        self.accelerator = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=config.grad_accum)
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            raise ValueError(
                "distributed=deepspeed needs `accelerate launch --config_file configs/accelerate/zero2.yaml` "
                "(a DeepSpeed accelerate config; see docs/training.md)"
            )
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = config.batch_size
        ds["gradient_accumulation_steps"] = config.grad_accum
        ds["train_batch_size"] = config.batch_size * config.grad_accum * rt.world_size
        ds["gradient_clipping"] = config.max_grad_norm
        ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
        ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
        self.stage = int(ds.get("zero_optimization", {}).get("stage", 0))

    def prepare(self, model: nn.Module) -> None:
        self.optimizer = build_optimizer(model, self.config)
        self.module, self.wrapped_optimizer = self.accelerator.prepare(model, self.optimizer)

    def accumulating(self, last: bool):
        return contextlib.nullcontext()

    def forward(self, **inputs: Any):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by the accumulation steps and averages over ranks: undo the first here.
        self.module.backward(loss * self.config.grad_accum)
        self.module.step()  # a no-op except at the accumulation boundary

    def grad_norm(self) -> float | None:
        norm = self.module.get_global_grad_norm()
        return None if norm is None else float(norm)

    def tolerates_inf_grads(self) -> bool:
        return self.precision == "fp16"

    def update(self) -> None:
        pass  # done by DeepSpeed at the boundary

    def discard(self) -> None:
        pass

    def save(self, directory: Path) -> None:
        self.module.save_checkpoint(str(directory), tag=self.TAG, exclude_frozen_parameters=True)

    def load(self, directory: Path) -> None:
        from tcllava.train.safe_load import deepspeed_weights_only

        with deepspeed_weights_only(self.module):
            self.module.load_checkpoint(
                str(directory),
                tag=self.TAG,
                load_module_strict=False,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )

    @classmethod
    def pickled_files(cls, directory: Path) -> list[Path]:
        """DeepSpeed's shards (read with weights_only=True): their digests are recorded in the trainer state."""
        return sorted(p for p in (directory / cls.TAG).rglob("*") if p.is_file())

    def trained_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.stage < 3:
            return None  # ZeRO-2 keeps whole weights on every rank
        full = self.accelerator.get_state_dict(self.module)  # gathers ZeRO-3 partitions on rank 0
        return full if self.rt.is_main else {}

    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.module)

    @contextlib.contextmanager
    def plain_model_context(self):
        # Under ZeRO-3, transformers builds every model partitioned (a collective), which rank 0 alone
        # must not do: hide the DeepSpeed config from transformers meanwhile.
        from transformers.integrations import deepspeed as hf_deepspeed

        saved = hf_deepspeed._hf_deepspeed_config_weak_ref
        hf_deepspeed.unset_hf_deepspeed_config()
        try:
            yield
        finally:
            hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def make_engine(config: TrainConfig, rt: distributed.Runtime, precision: str):
    """Created before the model is built; ``engine.prepare(model)`` then wraps it."""
    cls = DeepSpeedEngine if rt.mode == "deepspeed" else TorchEngine
    return cls(config, rt, precision)
