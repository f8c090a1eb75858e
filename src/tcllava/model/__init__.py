"""TC-LLaVA: config, model, processor, llava-hf conversion and loading."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from tcllava.model.api import chat, load, load_model
from tcllava.model.config import TCLlavaConfig
from tcllava.model.convert import CheckpointError, convert_llava_hf, load_llava_hf
from tcllava.model.modeling import TCLlavaForConditionalGeneration
from tcllava.model.processing import SampleTooLong, TCLlavaProcessor, frame_ids_from_tokens
from tcllava.model.templates import TEMPLATES, Message

AutoConfig.register(TCLlavaConfig.model_type, TCLlavaConfig, exist_ok=True)
AutoModel.register(TCLlavaConfig, TCLlavaForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(TCLlavaConfig, TCLlavaForConditionalGeneration, exist_ok=True)

__all__ = [
    "TEMPLATES",
    "CheckpointError",
    "Message",
    "SampleTooLong",
    "TCLlavaConfig",
    "TCLlavaForConditionalGeneration",
    "TCLlavaProcessor",
    "chat",
    "convert_llava_hf",
    "frame_ids_from_tokens",
    "load",
    "load_llava_hf",
    "load_model",
]
