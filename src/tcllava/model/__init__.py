"""TC-LLaVA: config, model, processor, llava-hf mapping, loading and answering.

Modules, each importing only those above it: ``config`` -> ``templates``, ``processing`` -> ``llava_hf``
-> ``generation`` -> ``modeling`` -> ``convert``, ``api``. Names are imported lazily, so that a light
module (``tcllava.model.templates``) costs no transformers import.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TCLlavaConfig": "tcllava.model.config",
    "CheckpointError": "tcllava.model.config",
    "TEMPLATES": "tcllava.model.templates",
    "Message": "tcllava.model.templates",
    "TCLlavaProcessor": "tcllava.model.processing",
    "SampleTooLong": "tcllava.model.processing",
    "PromptTooLong": "tcllava.model.processing",
    "frame_ids_from_tokens": "tcllava.model.processing",
    "TCLlavaForConditionalGeneration": "tcllava.model.modeling",
    "chat": "tcllava.model.generation",
    "convert_llava_hf": "tcllava.model.convert",
    "load": "tcllava.model.api",
    "load_model": "tcllava.model.api",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcllava.model' has no attribute {name!r}")
