"""`TrainConfig`: one recipe as data. Read from YAML, overridden by ``key=value`` strings, validated,
saved with every run and checkpoint. Unknown keys are errors, so a typo never silently trains the
default."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tcllava.data.dataset import DataSource

LLM_MODES = ("full", "lora", "frozen")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DISTRIBUTED = ("auto", "none", "ddp", "fsdp", "deepspeed")


@dataclass
class LoraSettings:
    """peft LoRA on the LLM's linear layers named in ``target_modules`` (PLLaVA: r=128, alpha=32, q/v)."""

    r: int = 128
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.r < 1 or not self.target_modules:
            raise ValueError("lora.r must be >= 1 and lora.target_modules non-empty")
        if self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"lora.alpha must be > 0 and lora.dropout in [0, 1), got {self.alpha}, {self.dropout}"
            )


@dataclass
class TrainConfig:
    """Every knob of a run. ``None`` means "derive it" (see ``__post_init__``) or "keep the checkpoint's"."""

    # what to start from and where to write
    model: str = ""  # a tcllava or llava-hf checkpoint directory
    output_dir: str = ""  # the run directory: config, metrics, checkpoints, final model
    data: list[DataSource] = field(default_factory=list)
    # samples
    num_frames: int = 16
    frame_sampling: str = "random"  # training-time jitter; "middle" / "uniform" for deterministic frames
    max_length: int = 4096  # tokens; a sample that cannot fit without cutting visual tokens is skipped
    group_by_length: bool = True
    # length of the run: max_steps wins over epochs
    max_steps: int | None = None
    epochs: float | None = None
    # batch: global = batch_size * grad_accum * world_size; global_batch_size, if set, derives grad_accum
    batch_size: int = 1
    grad_accum: int = 1
    global_batch_size: int | None = None
    # optimisation
    lr: float = 2e-5
    projector_lr: float | None = None  # None: lr
    vision_lr: float | None = None  # None: lr
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    # what trains
    llm: Literal["full", "lora", "frozen"] = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    vision: Literal["frozen", "full"] = "frozen"
    projector: Literal["full", "frozen"] = "full"
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # TC attention settings to change (tcllava.attention.TCAttentionConfig's names: gamma, mask,
    # text_after_video, kernel); a setting left out keeps the checkpoint's
    attention: dict[str, Any] = field(default_factory=dict)
    # run control
    seed: int = 0
    num_workers: int = 2
    sample_timeout: float = 60.0  # seconds to decode one sample's media
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    save_final: Literal["merged", "adapter"] = "merged"  # LoRA: merge into the weights, or keep the adapter
    distributed: Literal["auto", "none", "ddp", "fsdp", "deepspeed"] = "auto"
    resume: str = "auto"  # "auto": latest checkpoint in output_dir, "never", or a checkpoint directory
    progress: bool = True
    tensorboard: bool = True  # also log to TensorBoard when it is installed

    def __post_init__(self) -> None:
        self.data = [
            d if isinstance(d, DataSource) else DataSource(**_known(DataSource, d, "data")) for d in self.data
        ]
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**_known(LoraSettings, self.lora, "lora"))
        if not self.model:
            raise ValueError("model (the checkpoint directory to start from) is required")
        if not self.output_dir:
            raise ValueError("output_dir is required")
        if not self.data:
            raise ValueError("data needs at least one source ({path, media_root, weight})")
        for name, allowed in (("llm", LLM_MODES), ("precision", PRECISIONS), ("distributed", DISTRIBUTED)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, allowed in (
            ("vision", ("frozen", "full")),
            ("projector", ("full", "frozen")),
            ("save_final", ("merged", "adapter")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        positive = [
            "num_frames",
            "max_length",
            "batch_size",
            "grad_accum",
            "log_every",
            "save_every",
            "keep_last",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.max_steps is not None and self.max_steps < 1) or (
            self.epochs is not None and self.epochs <= 0
        ):
            raise ValueError("max_steps must be >= 1 and epochs > 0")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0 or self.num_workers < 0:
            raise ValueError("lr must be > 0; weight_decay, max_grad_norm and num_workers >= 0")
        if self.llm == "frozen" and self.projector == "frozen" and self.vision == "frozen":
            raise ValueError("nothing to train: llm, projector and vision are all frozen")
        from tcllava.video import SAMPLINGS

        if self.frame_sampling not in SAMPLINGS:
            raise ValueError(f"frame_sampling must be one of {SAMPLINGS}")
        if not isinstance(self.attention, dict):
            raise ValueError(f"attention must be a mapping of TC settings, got {self.attention!r}")
        from tcllava.attention import TCAttentionConfig

        TCAttentionConfig().replace(**self.attention)  # the one validation of the TC settings
        for name in ("projector_lr", "vision_lr", "adam_eps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.sample_timeout <= 0:
            raise ValueError(f"sample_timeout must be > 0, got {self.sample_timeout}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        # derived
        self.projector_lr = self.lr if self.projector_lr is None else self.projector_lr
        self.vision_lr = self.lr if self.vision_lr is None else self.vision_lr
        if self.global_batch_size is not None:
            if self.global_batch_size < 1:
                raise ValueError("global_batch_size must be >= 1")
            per_step = self.batch_size * self.world_size
            if self.global_batch_size % per_step:
                raise ValueError(
                    f"global_batch_size {self.global_batch_size} is not a multiple of batch_size * world_size "
                    f"= {self.batch_size} * {self.world_size}"
                )
            self.grad_accum = self.global_batch_size // per_step

    @property
    def world_size(self) -> int:
        """Processes in this run, from the launcher's environment (torchrun, accelerate)."""
        return int(os.environ.get("WORLD_SIZE", "1"))

    # -- serialisation --
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**_known(cls, values, ""))

    @classmethod
    def from_yaml(
        cls,
        path: str | Path | None,
        overrides: list[str] | tuple[str, ...] = (),
        values: dict[str, Any] | None = None,
    ) -> TrainConfig:
        """Load ``path`` (None: start empty), replace its top-level keys by ``values`` (Python objects, for
        recipes), then apply ``key=value`` overrides whose values are YAML (``lr=1e-4``, ``llm=lora``,
        ``lora.r=16``, ``data.0.weight=2``, ``attention.gamma=0``, ``data=[{path: a.json}]``)."""
        loaded: dict[str, Any] = {}
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: a config is a mapping of keys to values")
        loaded.update(values or {})
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r} is not key=value")
            _set(loaded, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
        return cls.from_dict(loaded)

    def to_yaml(self, header: str = "") -> str:
        comment = "".join(f"# {line}\n" for line in header.splitlines())
        return comment + yaml.safe_dump(self.to_dict(), sort_keys=False)


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = values
    for i, part in enumerate(parts[:-1]):
        if isinstance(target, list):
            target = target[int(part)]
            continue
        nxt = parts[i + 1]
        target = target.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def _known(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Reject unknown keys (suggesting the closest) and coerce values to the field types."""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise ValueError(
                f"unknown config key {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            )
        out[key] = _coerce(value, hints[key], name)
    return out


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """YAML gives ints for floats and strings for "1e-5"; accept those, reject real type mistakes."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if hint is float:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return str(value)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return value if not args else [_coerce(v, args[0], f"{name}.{i}") for i, v in enumerate(value)]
    return value
