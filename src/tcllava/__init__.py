"""tcllava: TC-LLaVA video understanding (temporal dual RoPE + frame-wise block causal attention)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``table[name]`` only when ``name`` is first used, so that a
    light import (the CLI's start-up, ``tcllava eval --help``) does not pay for torch and transformers."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


_LAZY = {
    "load": "tcllava.model",
    "chat": "tcllava.model",
    "TCLlavaConfig": "tcllava.model",
    "TCLlavaForConditionalGeneration": "tcllava.model",
    "TCLlavaProcessor": "tcllava.model",
}
__getattr__ = lazy_exports(__name__, _LAZY)
