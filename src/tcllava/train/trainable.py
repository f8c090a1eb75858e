"""What trains and how: freezing, LoRA (peft), parameter groups with their own learning rates, AdamW,
cosine-with-warmup, and writing the final model in the standard ``from_pretrained`` layout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tcllava.model import TCLlavaForConditionalGeneration, TCLlavaProcessor, load_model
from tcllava.train.config import TrainConfig

GROUPS = ("projector", "llm", "vision")


def build_model(config: TrainConfig) -> nn.Module:
    """The checkpoint with the run's TC overrides, trainability applied, LoRA injected if asked.

    LoRA's random init depends on ``config.seed`` only, so it is the same in every run of a config."""
    model = load_model(
        config.model, dtype=torch.float32, freeze_vision_tower=config.vision == "frozen", **config.attention
    )
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(config.projector == "full")
    model.set_vision_trainable(config.vision == "full")
    model.language_model.requires_grad_(config.llm == "full")
    if config.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if config.llm == "lora":
        from peft import LoraConfig, get_peft_model

        targets = "|".join(config.lora.target_modules)
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            # only the LLM's layers: the vision tower has q_proj/v_proj too
            target_modules=rf".*language_model\..*\.({targets})",
            # trained non-LoRA parts travel with the adapter, so an adapter alone describes the run
            modules_to_save=[
                name
                for name, mode in (
                    ("multi_modal_projector", config.projector),
                    ("vision_tower", config.vision),
                )
                if mode == "full"
            ]
            or None,
        )
        torch.manual_seed(config.seed)  # the same adapter init however the base was loaded (ZeRO-3 or not)
        model = get_peft_model(model, lora)
    model.train()
    return model


def group_of(name: str) -> str:
    if "multi_modal_projector" in name:
        return "projector"
    if "vision_tower" in name:
        return "vision"
    return "llm"


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One group per (component, decay): biases, norms and LoRA factors get no weight decay."""
    lrs = {"projector": config.projector_lr, "llm": config.lr, "vision": config.vision_lr}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "lora_" not in name and "norm" not in name
        groups.setdefault((group_of(name), decay), []).append(p)
    return [
        {
            "params": ps,
            "lr": lrs[g],
            "weight_decay": config.weight_decay if decay else 0.0,
            "name": f"{g}{'' if decay else '_no_decay'}",
        }
        for (g, decay), ps in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config)
    if not groups:
        raise ValueError("no trainable parameters")
    return torch.optim.AdamW(groups, betas=tuple(config.adam_betas), eps=config.adam_eps)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup from 1/warmup to 1 over ``warmup`` steps, then cosine down to ``min_ratio``.
    ``step`` counts optimizer steps already taken, so the first step uses 1/warmup (not 0)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: TrainConfig):
    warmup = math.ceil(config.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, config.min_lr_ratio)
    )


def export_model(
    model: nn.Module, config: TrainConfig, out: Path, dtype: torch.dtype, processor: TCLlavaProcessor
) -> Path:
    """Write the final model: a full ``from_pretrained`` checkpoint (LoRA merged), or with
    ``save_final=adapter`` the peft adapter (with the projector) plus the processor. ``model`` is an
    unwrapped, full (not sharded) copy owned by the caller: merging changes it."""
    out.mkdir(parents=True, exist_ok=True)
    if config.llm == "lora" and config.save_final == "adapter":
        model.save_pretrained(out)  # peft: adapter_config.json + adapter_model.safetensors
    else:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        assert isinstance(model, TCLlavaForConditionalGeneration)
        if config.gradient_checkpointing:
            disable = (
                getattr(model, "activation_checkpointing_disable", None)
                or model.gradient_checkpointing_disable
            )
            disable()
        model.to(dtype).save_pretrained(out)
    processor.save_pretrained(out)
    return out
