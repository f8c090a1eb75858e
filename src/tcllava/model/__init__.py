"""TC-LLaVA: config, model, processor, llava-hf mapping, loading and answering.

Modules, each importing only those above it: ``config`` -> ``templates``, ``processing`` -> ``llava_hf``
-> ``generation`` -> ``modeling`` -> ``convert``, ``api``. Names are imported lazily, so that a light
module (``tcllava.model.templates``) costs no transformers import.
"""

from __future__ import annotations

from tcllava import lazy_exports

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
__getattr__ = lazy_exports(__name__, _LAZY)
