"""Process group set-up and model wrapping with PyTorch's own engines (DDP, FSDP2 ``fully_shard``).

Launchers (``torchrun``, ``accelerate launch``, SLURM via torchrun) set RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR; this module only reads them. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mode: str = "none"  # "none" | "ddp" | "fsdp" | "deepspeed"
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum floats over ranks (fp64, so the sum is exact for counts and bitwise-stable for losses)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(mode: str) -> Runtime:
    """Join the process group the launcher describes; ``mode`` "auto" picks FSDP2 when there is more
    than one process, DeepSpeed when accelerate launched us with a DeepSpeed config."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if mode == "auto":
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            mode = "deepspeed"
        else:
            mode = "fsdp" if world > 1 else "none"
    if mode in ("ddp", "fsdp") and world == 1:
        mode = "none"  # a single process needs no wrapper; same numbers
    if mode == "none" and world > 1:
        raise ValueError(f"distributed=none but the launcher started {world} processes")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and mode != "deepspeed" and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
        owns = True
    return Runtime(rank, world, local_rank, device, mode, owns)


def teardown(rt: Runtime) -> None:
    # ZeRO-3 and NCCL runs exit non-zero unless the group is destroyed (docs/method.md 6).
    if dist.is_initialized() and (rt.owns_group or rt.mode == "deepspeed"):
        # Free the finished run's sharded model, optimizer and collective work objects first: left to
        # interpreter shutdown, gloo's worker threads can outlive them and abort the process.
        gc.collect()
        dist.destroy_process_group()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers (the units FSDP shards and activation checkpointing wraps)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = inner.language_model.model.layers
    return list(layers)


def wrap(model: nn.Module, rt: Runtime) -> nn.Module:
    """DDP, or FSDP2 with one shard group per decoder layer and one for the rest (vision tower,
    projector, embeddings, head). Parameters stay fp32; autocast handles bf16/fp16 compute."""
    if rt.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if rt.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(rt.device.type, (rt.world_size,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    return model


def grad_sync(model: nn.Module, rt: Runtime, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step (same result, less traffic)."""
    if enabled or rt.mode not in ("ddp", "fsdp"):
        return contextlib.nullcontext()
    if rt.mode == "ddp":
        return model.no_sync()

    @contextlib.contextmanager
    def fsdp_no_sync():
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    return fsdp_no_sync()


def unwrap(model: nn.Module) -> nn.Module:
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel)
        else model
    )
