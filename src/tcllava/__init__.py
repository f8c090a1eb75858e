"""tcllava: TC-LLaVA video understanding (temporal dual RoPE + frame-wise block causal attention)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "tcllava.model",
    "chat": "tcllava.model",
    "TCLlavaConfig": "tcllava.model",
    "TCLlavaForConditionalGeneration": "tcllava.model",
    "TCLlavaProcessor": "tcllava.model",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import tcllava` (and the CLI's start-up) does not pay for torch/transformers.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcllava' has no attribute {name!r}")
