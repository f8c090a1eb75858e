"""Chat templates as code: each renders a conversation into text pieces marked trainable or not.

The same rendering serves inference (the prompt ends with the assistant's opening, optionally primed)
and training (loss only on the pieces marked trainable: the assistant's answers and their end marker),
so prompts can never drift between the two. Media placeholders (``<video>``, ``<image>``) stay in the
text; the processor expands them into visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_PLACEHOLDER = "<video>"
IMAGE_PLACEHOLDER = "<image>"

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    """``turn_prefix``/``turn_suffix`` wrap each user turn; the assistant's answer follows
    ``assistant_prefix`` and ends with ``assistant_suffix`` (``{eos}`` is the tokenizer's end token)."""

    name: str
    system_format: str  # "{system}" is replaced; "" means the template has no system slot
    user_format: str  # contains "{content}"
    assistant_prefix: str
    assistant_suffix: str
    default_system: str | None = None
    bos: bool = True  # prepend the tokenizer's BOS token
    stop_strings: tuple[str, ...] = ()

    def render(
        self, messages: list[Message], eos: str, add_generation_prompt: bool = True, answer_prefix: str = ""
    ) -> list[tuple[str, bool]]:
        """[(text, trainable)]; with ``add_generation_prompt`` the last piece opens an assistant turn
        (followed by ``answer_prefix``, e.g. MVBench's "Best option:(")."""
        pieces: list[tuple[str, bool]] = []
        system = self.default_system
        if messages and messages[0].role == "system":
            system, messages = messages[0].content, messages[1:]
        prompt = self.system_format.format(system=system) if system and self.system_format else ""
        for message in messages:
            if message.role == "user":
                prompt += self.user_format.format(content=message.content)
            elif message.role == "assistant":
                pieces.append((prompt + self.assistant_prefix, False))
                pieces.append((message.content + self.assistant_suffix.format(eos=eos), True))
                prompt = ""
            else:
                raise ValueError(f"unknown role {message.role!r} (system must come first)")
        if add_generation_prompt:
            pieces.append((prompt + self.assistant_prefix + answer_prefix, False))
        elif prompt:
            pieces.append((prompt, False))
        return pieces


TEMPLATES: dict[str, ChatTemplate] = {
    # LLaVA-1.5 / PLLaVA conversation format ("conv_vicuna_v1"), for Llama/Vicuna LLMs.
    "vicuna_v1": ChatTemplate(
        name="vicuna_v1",
        system_format="{system} ",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT:",
        assistant_suffix=" {eos}",
        default_system=VICUNA_SYSTEM,
    ),
    # Qwen2 / SmolLM2 style.
    "chatml": ChatTemplate(
        name="chatml",
        system_format="<|im_start|>system\n{system}<|im_end|>\n",
        user_format="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>\n",
        default_system="You are a helpful assistant.",
        bos=False,
        stop_strings=("<|im_end|>",),
    ),
    "mistral": ChatTemplate(
        name="mistral",
        system_format="{system}\n\n",
        user_format="[INST] {content} [/INST]",
        assistant_prefix="",
        assistant_suffix="{eos}",
    ),
    # A minimal format for tiny tokenizers trained from scratch (the demo).
    "plain": ChatTemplate(
        name="plain",
        system_format="{system}\n",
        user_format="USER: {content}\n",
        assistant_prefix="ASSISTANT:",
        assistant_suffix=" {eos}\n",
    ),
}

FAMILY_TEMPLATES = {"llama": "vicuna_v1", "qwen2": "chatml", "mistral": "mistral"}


def get_template(name: str | None, text_model_type: str = "llama") -> ChatTemplate:
    name = name or FAMILY_TEMPLATES.get(text_model_type, "vicuna_v1")
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
