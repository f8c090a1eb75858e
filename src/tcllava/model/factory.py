"""Small models built from scratch: a word-level tokenizer, an image processor and a tiny config.

Used by the demo (which trains on the synthetic benchmark on a CPU) and by the tests, which need real
checkpoints in published layouts but cannot download any.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tcllava.model.config import TCLlavaConfig

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|im_start|>", "<|im_end|>"]


def build_word_tokenizer(texts: Iterable[str], extra_tokens: Iterable[str] = ()):
    """A fast word-level tokenizer whose vocabulary is every word and punctuation mark in ``texts``, each
    with and without a leading space (as GPT-2's byte-level BPE marks words).

    A token is a word or punctuation mark with the space before it, or a lone whitespace character, so
    decoding gives back the text exactly ("Best option:(B) red"), which answer extraction and
    log-likelihood scoring rely on. Plenty for the synthetic benchmark's closed vocabulary, and a real
    ``tokenizer.json`` that saves and loads.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Split(Regex(r" ?\w+| ?[^\w\s]|\s"), behavior="isolated")
    bare = {piece.lstrip(" ") for text in texts for piece, _ in pre.pre_tokenize_str(text)} - {""}
    pieces = bare | {" " + piece for piece in bare if not piece.isspace()} | {" ", "\n"}
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(pieces | set(extra_tokens)):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>", "<|im_start|>", "<|im_end|>"],
    )


def build_image_processor(image_size: int):
    """CLIP preprocessing (resize the short side, centre crop, normalise) at ``image_size``."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def tiny_config(
    vocab_size: int,
    media_token_id: int,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    text_hidden: int = 128,
    text_layers: int = 4,
    heads: int = 4,
    pool_shape: tuple[int, int, int] = (0, 4, 4),
    text_model_type: str = "llama",
    **fields: Any,
) -> TCLlavaConfig:
    """A LLaVA small enough to train on two CPU cores (head_dim 32: see docs/method.md 6 on flex NaNs)."""
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden // 32),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = dict(
        model_type=text_model_type,
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=text_hidden // heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return TCLlavaConfig(
        vision_config=vision, text_config=text, media_token_id=media_token_id, pool_shape=pool_shape, **fields
    )
