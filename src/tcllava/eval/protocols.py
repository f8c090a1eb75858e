"""Evaluation protocols: the exact prompts, frame sampling and scoring denominator behind a number.

The same checkpoint scores several points apart under different protocols, so every results.json
records the protocol's name and its full text (see `EvalProtocol.describe`).

Sources: MVBench `official` is VideoChat2's MVBench evaluation (system prompt, "(A) text" options,
"Only give the best option.", answer primed with "Best option:(", 16 frames, segment-middle sampling
inside the bound with the reference's own index formula: tcllava.video's "mvbench" sampling).
`lmms-eval` follows lmms-eval 0.7.3's mvbench task files (read from the released wheel): user text "Question:{q}\\nOption:\\n(A) ...\\n" + "Only give the best option.\\n", no system prompt,
no priming, and its aggregation drops empty generations from the denominator (unparseable non-empty
answers stay in it, scored wrong). lmms-eval reads pre-cut segments for the bounded tasks; with the
official layout the bound plays that role here. Video-MME `official` is the prompt of the Video-MME
README; its `lmms-eval` variant is lmms-eval 0.7.3's videomme task text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tcllava.data.conversations import MVBENCH_SYSTEM
from tcllava.eval.benchmarks import Sample
from tcllava.eval.predictor import VIDEO_PLACEHOLDER, Prompt

VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
VIDEOMME_INSTRUCTION_SUBS = (
    "Select the best answer to the following multiple-choice question based on the video and the "
    "subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
)
NO_SUBTITLES = "No subtitles available"


def _letter_options(sample: Sample) -> str:
    return "\n".join(f"({chr(ord('A') + i)}) {text}" for i, text in enumerate(sample.options))


def _videomme_options(sample: Sample) -> str:
    return "\n".join(
        sample.meta.get("option_lines") or [f"{chr(ord('A') + i)}. {t}" for i, t in enumerate(sample.options)]
    )


@dataclass(frozen=True)
class EvalProtocol:
    """How samples become prompts and how answers are counted.

    `denominator`: "all" = every sample whose video decoded (unparseable answers count as wrong);
    "non-empty" = additionally drops samples whose generation is empty (lmms-eval's MVBench rule).
    """

    name: str
    system: str | None
    user_template: str  # documentation of `build`, recorded verbatim in results
    assistant_prefix: str
    sampling: str
    denominator: str
    build_user: Callable[[Sample, str | None], str]
    subtitles: bool = False
    # The answer a model trained in this format writes after `assistant_prefix`, per option; used by
    # likelihood scoring. None: the protocol has no options to rank (open-ended).
    answer_format: str | None = None
    # "generate": greedy answer, then answer extraction. "likelihood": the option whose whole answer
    # (`answer_format`) has the highest summed log-probability after the prompt (lm-eval-harness's
    # multiple-choice rule): it measures what the model knows without asking it to emit the letter.
    scoring: str = "generate"

    def prompt(self, sample: Sample, subtitles: str | None = None) -> Prompt:
        return Prompt(self.system, self.build_user(sample, subtitles), self.assistant_prefix)

    def continuation(self, index: int, option: str) -> str:
        """The answer to option `index` (0 = A) as the model would write it after the prefix."""
        if self.answer_format is None:
            raise ValueError(f"protocol {self.name!r} has no option answers to score")
        return self.answer_format.format(letter=chr(ord("A") + index), option=option)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "system": self.system,
            "user_template": self.user_template,
            "assistant_prefix": self.assistant_prefix,
            "sampling": self.sampling,
            "denominator": self.denominator,
            "subtitles": self.subtitles,
            "answer_format": self.answer_format,
            "scoring": self.scoring,
        }


V = VIDEO_PLACEHOLDER

MVBENCH_OFFICIAL = EvalProtocol(
    name="official",
    system=MVBENCH_SYSTEM,
    user_template=f"{V}\nQuestion: {{question}}\nOptions:\n(A) {{option A}}\n(B) ...\nOnly give the best option.",
    assistant_prefix="Best option:(",
    sampling="mvbench",
    denominator="all",
    build_user=lambda s, _subs: (
        f"{V}\nQuestion: {s.question}\nOptions:\n{_letter_options(s)}\nOnly give the best option."
    ),
    answer_format="{letter}) {option}",  # after "Best option:(", as VideoChat2's training answers
)

MVBENCH_LMMS_EVAL = EvalProtocol(
    name="lmms-eval",
    system=None,
    user_template=f"{V}\nQuestion:{{question}}\nOption:\n(A) {{option A}}\n(B) ...\nOnly give the best option.\n",
    assistant_prefix="",
    sampling="uniform",
    denominator="non-empty",
    build_user=lambda s, _subs: (
        f"{V}\nQuestion:{s.question}\nOption:\n{_letter_options(s)}\nOnly give the best option.\n"
    ),
    answer_format="({letter}) {option}",
)


def _videomme_official(subs: bool) -> EvalProtocol:
    if subs:
        template = (
            f"{V}\nThis video's subtitles are listed below:\n{{subtitles}}\n{VIDEOMME_INSTRUCTION_SUBS}\n"
            "{question}\n{options 'A. ...' lines}\nThe best answer is:"
        )
        build = lambda s, t: (
            f"{V}\nThis video's subtitles are listed below:\n{NO_SUBTITLES if t is None else t}\n"
            f"{VIDEOMME_INSTRUCTION_SUBS}\n{s.question}\n{_videomme_options(s)}\nThe best answer is:"
        )
    else:
        template = (
            f"{V}\n{VIDEOMME_INSTRUCTION}\n{{question}}\n{{options 'A. ...' lines}}\nThe best answer is:"
        )
        build = lambda s, _t: (
            f"{V}\n{VIDEOMME_INSTRUCTION}\n{s.question}\n{_videomme_options(s)}\nThe best answer is:"
        )
    return EvalProtocol("official", None, template, "", "middle", "all", build, subs, "{letter}")


def _videomme_lmms_eval(subs: bool) -> EvalProtocol:
    if subs:
        template = (
            f"{V}\nThis video's subtitles are listed below: \n{{subtitles}}\n{VIDEOMME_INSTRUCTION_SUBS}\n"
            "{question}\n{options 'A. ...' lines}\nThe best answer is:"
        )
        build = lambda s, t: (
            f"{V}\nThis video's subtitles are listed below: \n{NO_SUBTITLES if t is None else t}\n"
            f"{VIDEOMME_INSTRUCTION_SUBS}\n{s.question}\n{_videomme_options(s)}\nThe best answer is:"
        )
    else:  # lmms-eval keeps "and the subtitles" in the instruction even without them
        suffix = "\n\nAnswer with the option's letter from the given choices directly."
        template = f"{V}\n{VIDEOMME_INSTRUCTION_SUBS}\n{{question}}\n{{options 'A. ...' lines}}{suffix}"
        build = lambda s, _t: (
            f"{V}\n{VIDEOMME_INSTRUCTION_SUBS}\n{s.question}\n{_videomme_options(s)}{suffix}"
        )
    return EvalProtocol("lmms-eval", None, template, "", "uniform", "all", build, subs, "{letter}")


OPEN_ENDED = EvalProtocol(
    name="open-ended",
    system=None,
    user_template=f"{V}\n{{question}}",
    assistant_prefix="",
    sampling="middle",
    denominator="judged",
    build_user=lambda s, _subs: f"{V}\n{s.question}",
)

PROTOCOL_NAMES = ("official", "lmms-eval")
SCORINGS = ("generate", "likelihood")


def get_protocol(
    benchmark: str,
    name: str | None = None,
    subtitles: bool = False,
    sampling: str | None = None,
    scoring: str | None = None,
) -> EvalProtocol:
    """The protocol for `benchmark`; `name` None means the benchmark's default ("official").

    The synthetic benchmark samples at plain segment middles ("middle"): MVBench's reference formula
    spans the last index instead of the frame count, which drops the final frame of short clips, and
    there are no published numbers to reproduce there. `sampling` overrides any protocol's sampling
    (the override is recorded with the protocol); `scoring` None means "generate".
    """
    name = name or "official"
    if name not in PROTOCOL_NAMES:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOL_NAMES)}")
    if subtitles and benchmark != "videomme":
        raise ValueError("subtitles exist only for videomme")
    if benchmark in ("mvbench", "synthetic"):
        protocol = MVBENCH_OFFICIAL if name == "official" else MVBENCH_LMMS_EVAL
        if benchmark == "synthetic" and name == "official":
            protocol = replace(protocol, sampling="middle")
    elif benchmark == "videomme":
        protocol = _videomme_official(subtitles) if name == "official" else _videomme_lmms_eval(subtitles)
    elif name != "official":
        raise ValueError(f"{benchmark} has a single protocol (question as asked, LLM judge)")
    else:
        protocol = OPEN_ENDED
    if scoring not in (None, *SCORINGS):
        raise ValueError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
    if scoring == "likelihood":
        if protocol.answer_format is None:
            raise ValueError(f"{benchmark} is open-ended: there are no options to score by likelihood")
        protocol = replace(protocol, scoring=scoring)
    return protocol if sampling is None else replace(protocol, sampling=sampling)
