"""Writing a tcllava checkpoint (config, safetensors, tokenizer, image processor) from a llava-hf one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tcllava.model.modeling import TCLlavaForConditionalGeneration
from tcllava.model.storage import atomic_directory, same_place

PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)


def convert_llava_hf(
    source: str | Path, destination: str | Path, overwrite: bool = False, **overrides: Any
) -> Path:
    """Convert ``source`` into a new folder ``destination``, written atomically. The source is never
    written to; an existing model at ``destination`` is replaced only with ``overwrite``."""
    source, destination = Path(source), Path(destination)
    if same_place(source, destination):
        raise ValueError(
            f"{destination}: the destination is (or contains, or lies inside) the source {source}; "
            "converting there would overwrite the checkpoint being read: choose another folder"
        )
    model = TCLlavaForConditionalGeneration.from_llava_hf(source, **overrides)
    with atomic_directory(destination, overwrite) as tmp:
        model.save_pretrained(tmp)
        for name in PROCESSOR_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
    return destination
