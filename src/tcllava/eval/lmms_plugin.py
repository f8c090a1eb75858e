"""tcllava as an lmms-eval model: ``lmms-eval --model tcllava --model_args pretrained=DIR,num_frames=16``.

Install. lmms-eval 0.7.3 declares torch, torchvision, timm and ``av<16`` as dependencies: a plain install
would replace the CPU torch with a CUDA build, add a torchvision that cannot load beside it, and downgrade
PyAV below the version tcllava.video uses. Its core (model API, registry, evaluator, CLI) needs none of
them, so install it without its dependencies, after the subset that core imports (the ``lmms`` extra)::

    pip install -e ".[lmms]"                    # pytz loguru tenacity sacrebleu evaluate datasets pytablewriter
    pip install --no-deps lmms-eval==0.7.3

Individual lmms-eval tasks may import more in their ``utils.py``; install those as they come up.

Registration. The ``lmms_eval.models`` entry point in pyproject.toml names :func:`lmms_manifest`, not the
class: lmms-eval 0.7.3 calls a callable entry point and expects a ``ModelManifest`` back (a class there
would be instantiated without arguments and break the loading of every plugin).

Requests. Visuals from a task's ``doc_to_visual`` may be video paths (sampled to ``num_frames`` frames),
image paths or PIL images (one frame each), uint8 arrays ([H, W, 3] image or [T, H, W, 3] frames), lists
of those, or None (text only). When the context names no ``<video>``/``<image>`` placeholder, one per
visual is put before it. Generation is greedy unless a task asks for ``do_sample`` with a positive
temperature; ``until`` strings stop generation and are cut from the answer.

Log-likelihood. ``loglikelihood`` scores the continuation's tokens after the rendered prompt (the
assistant turn opened, as for generation) and says whether greedy decoding gives exactly those tokens.
The score is, by default (``loglikelihood_score=mean_nll``), the mean negative log-likelihood per token:
the base class's docstring asks for a log-probability, but lmms-eval 0.7.3's built-in LLaVA models
return their loss and its ``multiple_choice`` scoring (and tasks such as egoschema_mcppl) pick the
*smallest* value, so a log-probability would silently choose the least likely option.
``loglikelihood_score=sum_logprob`` gives the summed log-probability (lm-eval's convention) for tasks
that expect it. Known upstream bug: lmms-eval 0.7.3's evaluator passes every result through
``unwrap_generation_output``, which turns a (score, is_greedy) pair into its string, so loglikelihood and
multiple_choice tasks fail in ``process_results`` for every model; until that is fixed, these scores are
usable only through this class's API, not ``lmms-eval --tasks``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "tcllava's lmms-eval model needs lmms-eval 0.7.3 without its CUDA dependencies: "
        'pip install "tcllava[lmms]" && pip install --no-deps lmms-eval==0.7.3'
    ) from e

from tcllava.eval.model_predictor import option_ids, option_logprobs, row_chunks
from tcllava.model import load
from tcllava.model.processing import Encoded
from tcllava.model.templates import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Message
from tcllava.video import read_video
from tcllava.video.images import IMAGE_SUFFIXES

MODEL_NAME = "tcllava"
SCORES = ("mean_nll", "sum_logprob")


def lmms_manifest():
    """The entry point's payload: lmms-eval's registry imports the class from this path when asked."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.TCLlava")


class _StopOnStrings(StoppingCriteria):
    """Stops a row once its decoded continuation contains a stop string. Checked on the text, not on
    token strings, so it agrees with the final cut whatever the tokenizer's word pieces look like."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_length = prompt_length

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the earliest stop string."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def _batch_size(value: int | str) -> int:
    """lmms-eval's CLI passes ``--batch_size`` as text and allows "auto"; tcllava takes a fixed size."""
    if isinstance(value, str) and value.startswith("auto"):
        return 1
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value!r}")
    return size


class TCLlava(lmms):
    """A tcllava checkpoint behind lmms-eval's ``lmms`` API (single process; requests batched)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str = "cpu",
        dtype: str = "auto",
        num_frames: int = 16,
        sampling: str = "middle",
        batch_size: int | str = 1,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        loglikelihood_score: str = "mean_nll",
        max_batch_size: int | None = None,  # passed by lmms-eval's evaluator; unused (no "auto" batching)
        **overrides: Any,
    ) -> None:
        """``overrides`` replace config fields of the checkpoint, e.g. ``gamma=0.0,mask=causal``.
        ``loglikelihood_score``: see the module docstring."""
        super().__init__()
        if loglikelihood_score not in SCORES:
            raise ValueError(f"loglikelihood_score must be one of {SCORES}, got {loglikelihood_score!r}")
        self.loglikelihood_score = loglikelihood_score
        self._device = torch.device(str(device))
        self.model, self.processor = load(
            str(pretrained), device=str(device), dtype=str(dtype), num_frames=int(num_frames), **overrides
        )
        self.tokenizer = self.processor.tokenizer
        self.num_frames = int(num_frames)
        self.sampling = str(sampling)
        self.batch_size = _batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = self._resolve_system_prompt(str(system_prompt)) if system_prompt else None

    @property
    def device(self) -> torch.device:
        return self._device

    # -- inputs --
    def _clip(self, visual: Any) -> tuple[str, torch.Tensor]:
        """(placeholder, uint8 frames [T, H, W, 3]) for one visual."""
        if isinstance(visual, str | Path):
            path = Path(visual)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                return IMAGE_PLACEHOLDER, read_video(path, num_frames=1).frames
            return VIDEO_PLACEHOLDER, read_video(path, self.num_frames, self.sampling).frames
        if isinstance(visual, Image.Image):
            return IMAGE_PLACEHOLDER, torch.from_numpy(np.asarray(visual.convert("RGB")).copy())[None]
        if isinstance(visual, np.ndarray | torch.Tensor):
            frames = torch.as_tensor(np.asarray(visual))
            if frames.ndim == 3:
                return IMAGE_PLACEHOLDER, frames[None]
            return (IMAGE_PLACEHOLDER if frames.shape[0] == 1 else VIDEO_PLACEHOLDER), frames
        raise TypeError(
            f"tcllava takes video paths, image paths, PIL images or uint8 frames as visuals, not "
            f"{type(visual).__name__} (audio and other modalities are not supported)"
        )

    def _clips(self, visuals: Any) -> list[tuple[str, torch.Tensor]]:
        if visuals is None:
            return []
        items = visuals if isinstance(visuals, list | tuple) else [visuals]
        return [self._clip(v) for v in items if v is not None]

    def _visuals(self, doc_to_visual: Callable[[Any], Any] | None, doc_id: Any, task: str, split: str) -> Any:
        if doc_to_visual is None:
            return None
        return doc_to_visual(self.task_dict[task][split][doc_id])

    def _pieces(self, context: str, clips: list[tuple[str, torch.Tensor]]) -> list[tuple[str, bool]]:
        """The rendered prompt, the assistant turn opened; placeholders go first unless the task placed them."""
        if clips and VIDEO_PLACEHOLDER not in context and IMAGE_PLACEHOLDER not in context:
            context = "".join(f"{placeholder}\n" for placeholder, _ in clips) + context
        messages = [Message("system", self.system_prompt)] if self.system_prompt else []
        return self.processor.render([*messages, Message("user", context)], add_generation_prompt=True)

    def _encode(self, context: str, visuals: Any) -> Encoded:
        """Tokens and pixel values of the rendered prompt."""
        clips = self._clips(visuals)
        return self.processor.encode(self._pieces(context, clips), [frames for _, frames in clips])

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Token tensors to the model's device; pixel values are moved and cast by the model itself."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # -- generation --
    def _generation_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            "do_sample": do_sample,
            "eos_token_id": self.processor.stop_token_ids(),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0))
        if int(gen_kwargs.get("num_beams") or 1) > 1:
            kwargs["num_beams"] = int(gen_kwargs["num_beams"])
        return kwargs

    def _generate(self, args: list[tuple]) -> list[str]:
        """One batch of generate_until requests that share their generation kwargs."""
        gen_kwargs = dict(args[0][1])
        stops = gen_kwargs.pop("until", None) or []
        stops = [s for s in ([stops] if isinstance(stops, str) else stops) if s]
        encoded = [
            self._encode(ctx, self._visuals(d2v, doc_id, task, split))
            for ctx, _, d2v, doc_id, task, split in args
        ]
        batch = self.processor.collate(encoded, padding_side="left")
        batch.pop("labels")
        inputs = self._to_device(batch)
        prompt_length = inputs["input_ids"].shape[1]
        kwargs = self._generation_kwargs(gen_kwargs)
        if stops:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_StopOnStrings(self.tokenizer, stops, prompt_length)]
            )
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, prompt_length:], skip_special_tokens=True)
        return [cut_at_stops(text, stops).strip() for text in texts]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order; requests with equal generation kwargs are batched together."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        results: list[str] = [""] * len(requests)
        progress = tqdm(
            total=len(requests), desc="tcllava generate", disable=None if self.rank == 0 else True
        )
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                texts = self._generate([requests[i].args for i in chunk])
                for i, text in zip(chunk, texts, strict=True):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], text)
                progress.update(len(chunk))
        progress.close()
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "the tcllava lmms-eval model does not implement generate_until_multi_round; "
            "multi-round tasks are not supported (single-turn generate_until and loglikelihood are)"
        )

    # -- scoring --
    def _as_score(self, logprob_sum: float, tokens: int) -> float:
        if self.loglikelihood_score == "sum_logprob":
            return logprob_sum
        return -logprob_sum / tokens if tokens else 0.0

    def _scored(self, args: tuple) -> tuple[str, str, Any]:
        """(context, continuation, visuals) of a loglikelihood request; lmms-eval also sends bare
        (context, continuation) pairs for unconditional scores."""
        if len(args) == 2:
            return args[0], args[1], None
        context, target, doc_to_visual, doc_id, task, split = args
        doc = self.task_dict[task][split][doc_id]
        continuation = target if isinstance(target, str) else target(doc)
        return context, str(continuation), doc_to_visual(doc) if doc_to_visual else None

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(score, is_greedy) per request, in order; the score is set by ``loglikelihood_score``.

        Requests with the same context and visuals (the options of one multiple-choice question) share
        one prompt: its video is read and its prompt run once, and every continuation is scored from its
        KV cache; ``batch_size`` continuations per forward."""
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):  # (context, doc_to_visual, doc_id, task, split) or (context,)
            groups.setdefault((request.args[0], *request.args[2:]), []).append(i)
        indices = list(groups.values())
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        progress = tqdm(
            total=len(requests), desc="tcllava loglikelihood", disable=None if self.rank == 0 else True
        )
        for chunk in row_chunks([len(group) for group in indices], self.batch_size):
            scored = [[self._scored(requests[i].args) for i in indices[g]] for g in chunk]
            prompts = [self._encode(group[0][0], group[0][2]) for group in scored]
            options = [[option_ids(self.processor, cont) for _, cont, _ in group] for group in scored]
            sums = option_logprobs(self.model, self.processor, prompts, options, self.batch_size)
            for g, group, group_sums in zip(chunk, scored, sums, strict=True):
                for i, (context, cont, _), (total, count, greedy) in zip(
                    indices[g], group, group_sums, strict=True
                ):
                    results[i] = (self._as_score(total, count), greedy)
                    self.cache_hook.add_partial("loglikelihood", (context, cont), results[i])
                progress.update(len(group))
        progress.close()
        return results
