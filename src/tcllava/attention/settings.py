"""`TCAttentionConfig`: the one object that holds the TC settings, spelled the same everywhere.

The same names travel unchanged from the CLI flags (``--gamma``, ``--mask``, ``--text-after-video``,
``--kernel``, ``--position-scheme``, ``--videorope-delta``) through training configs (``attention: {gamma: 1, mask: causal}``) and a checkpoint's
``config.json`` (``"tc_attention": {...}``) down to the kernel. None of the settings adds a parameter: they
change only the rotary positions and the attention mask. A new setting is added here, once.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from tcllava.attention.kernels import KERNELS
from tcllava.attention.masks import MASK_KINDS, check_kind
from tcllava.attention.positions import TEXT_AFTER_VIDEO_READINGS
from tcllava.attention.schemes import POSITION_SCHEMES


@dataclass(frozen=True)
class TCAttentionConfig:
    """``gamma``: temporal RoPE ratio (positions n + gamma * temporal id; 0 = vanilla RoPE).
    ``mask``: one of the four masks of the paper's Figure 3 (docs/method.md 1.2).
    ``text_after_video``: the temporal-id step after a video, ``paper`` (0) or ``next`` (+1) (1.1).
    ``kernel``: the attention kernel, ``auto`` lets the dispatcher choose (1.3).
    ``position_scheme``: how rotary positions are assigned, ``tc``, ``vanilla``, ``mrope`` or ``videorope``
    (1.6). ``gamma`` and ``text_after_video`` belong to ``tc`` and ``videorope_delta`` (VideoRoPE's
    temporal spacing) to ``videorope``; the other schemes keep them but do not read them, so switching the
    scheme and back restores a configuration."""

    gamma: float = 1.0
    mask: str = "frame_block_causal"
    text_after_video: str = "paper"
    kernel: str = "auto"
    position_scheme: str = "tc"
    videorope_delta: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, int | float):
            raise ValueError(f"gamma must be a number >= 0, got {self.gamma!r}")
        if not self.gamma >= 0:  # also refuses NaN
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        object.__setattr__(self, "gamma", float(self.gamma))
        delta = self.videorope_delta
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < float("inf"):
            raise ValueError(f"videorope_delta must be a number > 0, got {delta!r}")
        object.__setattr__(self, "videorope_delta", float(delta))
        if self.position_scheme not in POSITION_SCHEMES:
            raise ValueError(
                f"position_scheme must be one of {POSITION_SCHEMES}, got {self.position_scheme!r}"
            )
        check_kind(self.mask)
        if self.text_after_video not in TEXT_AFTER_VIDEO_READINGS:
            raise ValueError(
                f"text_after_video must be one of {TEXT_AFTER_VIDEO_READINGS}, got {self.text_after_video!r}"
            )
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}: kernel must be one of {KERNELS}")

    @classmethod
    def vanilla(cls) -> TCAttentionConfig:
        """Plain RoPE and the causal mask: exactly the unmodified model."""
        return cls(gamma=0.0, mask="causal")

    @property
    def is_vanilla(self) -> bool:
        """The unmodified model: 1-D positions n (``vanilla``, or ``tc`` with gamma 0) and the causal mask."""
        plain = self.position_scheme == "vanilla" or (self.position_scheme == "tc" and self.gamma == 0)
        return plain and self.mask == "causal"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TCAttentionConfig:
        return cls().replace(**values)

    def replace(self, **changes: Any) -> TCAttentionConfig:
        """A copy with ``changes`` applied; an unknown name is an error that lists the known ones."""
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise ValueError(
                f"unknown TC attention setting {unknown[0]!r}; the settings are {', '.join(SETTINGS)}"
            )
        return dataclasses.replace(self, **changes)


SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TCAttentionConfig))

_FLAGS: dict[str, dict[str, Any]] = {
    "gamma": {"type": float, "help": "temporal RoPE ratio (0 = vanilla RoPE; tc scheme only)"},
    "mask": {"choices": MASK_KINDS, "help": "attention mask kind"},
    "text_after_video": {
        "choices": TEXT_AFTER_VIDEO_READINGS,
        "help": "temporal-id step after a video (tc only)",
    },
    "kernel": {"choices": KERNELS, "help": "attention kernel (auto: the dispatcher chooses)"},
    "position_scheme": {"choices": POSITION_SCHEMES, "help": "rotary position scheme"},
    "videorope_delta": {"type": float, "help": "VideoRoPE temporal spacing between frames (videorope only)"},
}


def add_arguments(parser: argparse.ArgumentParser, defaults: TCAttentionConfig | None = None) -> None:
    """One ``--flag`` per setting. Without ``defaults`` a flag left out keeps the checkpoint's value."""
    group = parser.add_argument_group("TC attention settings")
    for name in SETTINGS:
        default = None if defaults is None else getattr(defaults, name)
        keep = "the checkpoint's" if defaults is None else repr(default)
        spec = _FLAGS[name]
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=default,
            **{**spec, "help": f"{spec['help']} (default: {keep})"},
        )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, as keyword overrides."""
    return {name: getattr(args, name) for name in SETTINGS if getattr(args, name, None) is not None}
