"""LLM judge for open-ended answers, behind any OpenAI-compatible `/v1/chat/completions` endpoint.

Standard library only (urllib), so scoring adds no dependency. Configure with `TCLLAVA_JUDGE_URL`
(base like `http://host:8000/v1` or the full `.../chat/completions` URL), `TCLLAVA_JUDGE_MODEL` and
`TCLLAVA_JUDGE_API_KEY`, or pass them explicitly. The prompts are those of Video-ChatGPT's
quantitative evaluation (the metric is defined by them); they are recorded with every score together
with the judge's URL and model. Differences from the original scripts, on purpose: temperature 0
(reproducible; the scripts used the API default) and the consistency prompt gets Q2 as question 2
(the original script passes Q1 twice).
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

_DICT_TAIL = (
    "Please generate the response in the form of a Python dictionary string with keys 'score', where its "
    "value is {value} in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. "
    "Only provide the Python dictionary string. For example, your response should look like this: "
    "{''score': 4.8}."
)
_QA_USER = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {prediction}\n\n"
)


def _scored(role: str, instructions: str, what: str, scale: str, value: str | None = None) -> dict[str, str]:
    return {
        "system": (
            f"You are an intelligent chatbot designed for evaluating the {role} of generative outputs for "
            f"video-based question-answer pairs. {instructions}"
        ),
        "user": _QA_USER + f"Provide your evaluation only as a {what} score where the {what} score is an "
        f"integer value between 0 and 5, with 5 indicating the highest level of {scale}. "
        + _DICT_TAIL.replace("{value}", value or f"the {what} score"),
    }


JUDGE_PROMPTS: dict[str, dict[str, str]] = {
    "qa": {
        "system": (
            "You are an intelligent chatbot designed for evaluating the correctness of generative outputs "
            "for question-answer pairs. Your task is to compare the predicted answer with the correct answer "
            "and determine if they match meaningfully. Here's how you can accomplish the task:------"
            "##INSTRUCTIONS: - Focus on the meaningful match between the predicted answer and the correct "
            "answer.\n- Consider synonyms or paraphrases as valid matches.\n- Evaluate the correctness of the "
            "prediction compared to the answer."
        ),
        "user": _QA_USER + "Provide your evaluation only as a yes/no and score where the score is an integer "
        "value between 0 and 5, with 5 indicating the highest meaningful match. Please generate the response "
        "in the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a "
        "string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER "
        "OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. For example, your response "
        "should look like this: {'pred': 'yes', 'score': 4.8}.",
    },
    "correctness": _scored(
        "factual accuracy",
        "Your task is to compare the predicted answer with the correct answer and determine if they are "
        "factually consistent. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the "
        "factual consistency between the predicted answer and the correct answer. The predicted answer should "
        "not contain any misinterpretations or misinformation.\n- The predicted answer must be factually "
        "accurate and align with the video content.\n- Consider synonyms or paraphrases as valid matches.\n"
        "- Evaluate the factual accuracy of the prediction compared to the answer.",
        "factual accuracy",
        "factual consistency",
    ),
    "detail": _scored(
        "detail orientation",
        "Your task is to compare the predicted answer with the correct answer and determine its level of "
        "detail, considering both completeness and specificity. Here's how you can accomplish the task:------"
        "##INSTRUCTIONS: - Check if the predicted answer covers all major points from the video. The response "
        "should not leave out any key aspects.\n- Evaluate whether the predicted answer includes specific "
        "details rather than just generic points. It should provide comprehensive information that is tied "
        "to specific elements of the video.\n- Consider synonyms or paraphrases as valid matches.\n- Provide a "
        "single evaluation score that reflects the level of detail orientation of the prediction, considering "
        "both completeness and specificity.",
        "detail orientation",
        "detail orientation",
    ),
    "context": _scored(
        "contextual understanding",
        "Your task is to compare the predicted answer with the correct answer and determine if the generated "
        "response aligns with the overall context of the video content. Here's how you can accomplish the "
        "task:------##INSTRUCTIONS: - Evaluate whether the predicted answer aligns with the overall context "
        "of the video content. It should not provide information that is out of context or misaligned.\n- The "
        "predicted answer must capture the main themes and sentiments of the video.\n- Consider synonyms or "
        "paraphrases as valid matches.\n- Provide your evaluation of the contextual understanding of the "
        "prediction compared to the answer.",
        "contextual understanding",
        "contextual understanding",
        "contextual understanding score",  # sic: the original has no "the" here
    ),
    "temporal": _scored(
        "temporal understanding",
        "Your task is to compare the predicted answer with the correct answer and determine if they correctly "
        "reflect the temporal sequence of events in the video content. Here's how you can accomplish the "
        "task:------##INSTRUCTIONS: - Focus on the temporal consistency between the predicted answer and the "
        "correct answer. The predicted answer should correctly reflect the sequence of events or details as "
        "they are presented in the video content.\n- Consider synonyms or paraphrases as valid matches, but "
        "only if the temporal order is maintained.\n- Evaluate the temporal accuracy of the prediction "
        "compared to the answer.",
        "temporal accuracy",
        "temporal consistency",
    ),
    "consistency": {
        "system": (
            "You are an intelligent chatbot designed for evaluating the consistency of generative outputs for "
            "similar video-based question-answer pairs. You will be given two very similar questions, a common "
            "answer common to both the questions and predicted answers for the two questions .Your task is to "
            "compare the predicted answers for two very similar question, with a common correct answer and "
            "determine if they are consistent. Here's how you can accomplish the task:------##INSTRUCTIONS: - "
            "Focus on the consistency between the two predicted answers and the correct answer. Both predicted "
            "answers should correspond to the correct answer and to each other, and should not contain any "
            "contradictions or significant differences in the conveyed information.\n- Both predicted answers "
            "must be consistent with each other and the correct answer, in terms of the information they "
            "provide about the video content.\n- Consider synonyms or paraphrases as valid matches, but only if "
            "they maintain the consistency in the conveyed information.\n- Evaluate the consistency of the two "
            "predicted answers compared to the correct answer."
        ),
        "user": (
            "Please evaluate the following video-based question-answer pair:\n\n"
            "Question 1: {question}\nQuestion 2: {question2}\nCorrect Answer: {answer}\n"
            "Predicted Answer to Question 1: {prediction}\nPredicted Answer to Question 2: {prediction2}\n\n"
            "Provide your evaluation only as a consistency score where the consistency score is an integer value "
            "between 0 and 5, with 5 indicating the highest level of consistency. "
        )
        + _DICT_TAIL.replace("{value}", "the consistency score"),
    },
}

SCORE_RULE = "score = int(judge's 'score') as in Video-ChatGPT's scripts; QA verdict: 'yes' in pred -> yes, else 'no' in pred -> no"


def fill(template: str, **fields: str) -> str:
    """Substitute {name} fields; str.format would trip over the literal dict braces in the prompts."""
    for name, value in fields.items():
        template = template.replace("{" + name + "}", value)
    return template


class JudgeError(RuntimeError):
    """The judge could not be reached or kept answering in an unreadable form."""


class JudgeConfigError(JudgeError):
    """No judge configured, or a URL that cannot be one: the user's setting to fix."""


def parse_judgement(text: str, want_verdict: bool) -> dict[str, Any]:
    """{'score': int, 'pred': 'yes'|'no'} from the judge's reply (a Python dict string, leniently)."""
    found: dict[str, Any] = {}
    m = re.search(r"\{.*\}", text, re.S)
    if m:
        try:
            value = ast.literal_eval(m.group(0))
            if isinstance(value, dict):
                found = {str(k).strip("'\" "): v for k, v in value.items()}
        except (ValueError, SyntaxError):
            pass
    if "score" not in found:
        s = re.search(r"score['\"]?\s*:\s*['\"]?(-?\d+(?:\.\d+)?)", text, re.I)
        if s:
            found["score"] = s.group(1)
    if want_verdict and "pred" not in found:
        p = re.search(r"pred['\"]?\s*:\s*['\"]?(yes|no)", text, re.I)
        if p:
            found["pred"] = p.group(1)
    if "score" not in found:
        raise ValueError(f"no score in judge reply {text!r}")
    try:
        score = int(float(found["score"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad score in judge reply {text!r}") from e
    out: dict[str, Any] = {"score": score}
    if want_verdict:
        verdict = str(found.get("pred", "")).lower()
        if "yes" in verdict:
            out["pred"] = "yes"
        elif "no" in verdict:
            out["pred"] = "no"
        else:
            raise ValueError(f"no yes/no verdict in judge reply {text!r}")
    return out


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


@dataclass
class Judge:
    url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 2.0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise JudgeConfigError(
                f"judge URL {self.url!r} is not an http(s) URL; expected e.g. http://host:8000/v1 "
                "(--judge-url or TCLLAVA_JUDGE_URL)"
            )
        self.url = _endpoint(self.url)

    @classmethod
    def from_env(
        cls, url: str | None = None, model: str | None = None, api_key: str | None = None, **kwargs: Any
    ) -> Judge:
        url = url or os.environ.get("TCLLAVA_JUDGE_URL")
        model = model or os.environ.get("TCLLAVA_JUDGE_MODEL")
        if not url or not model:
            raise JudgeConfigError(
                "an LLM judge is needed: set TCLLAVA_JUDGE_URL and TCLLAVA_JUDGE_MODEL "
                "(any OpenAI-compatible /v1/chat/completions endpoint), or pass url= and model="
            )
        return cls(url, model, api_key or os.environ.get("TCLLAVA_JUDGE_API_KEY"), **kwargs)

    def identity(self) -> dict[str, Any]:
        """What produced the scores (the key is never recorded)."""
        return {"url": self.url, "model": self.model, "temperature": self.temperature}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def check(self, timeout: float = 5.0) -> None:
        """One cheap request (GET {base}/models) before the real work, so that a dead endpoint fails
        at once instead of every question waiting out its retries. Any HTTP answer but 401 counts as
        up: not every OpenAI-compatible server lists its models."""
        base = self.url.removesuffix("/chat/completions")
        request = urllib.request.Request(base + "/models", headers=self._headers(), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=min(timeout, self.timeout)):
                return
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise JudgeError(
                    f"judge {base} refused the API key (HTTP 401); set TCLLAVA_JUDGE_API_KEY"
                ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise JudgeError(
                f"judge endpoint {self.url} is not reachable ({reason}); start the server or fix "
                "--judge-url / TCLLAVA_JUDGE_URL"
            ) from None

    def chat(self, system: str, user: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                "temperature": self.temperature,
            }
        ).encode()
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read().decode())
        return reply["choices"][0]["message"]["content"]

    def judge(self, criterion: str, **fields: str) -> dict[str, Any]:
        """Score one answer; retries (exponential backoff) on network errors, 429/5xx and unreadable
        replies. Returns {'score', 'pred'?, 'reply'}; raises JudgeError when retries run out."""
        prompt = JUDGE_PROMPTS[criterion]
        user = fill(prompt["user"], **fields)
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self.chat(prompt["system"], user)
                return {**parse_judgement(reply, want_verdict=criterion == "qa"), "reply": reply}
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200]!r}"
                if e.code not in (408, 409, 429) and e.code < 500:
                    break
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                KeyError,
                IndexError,
                json.JSONDecodeError,
                ValueError,
            ) as e:
                last = f"{type(e).__name__}: {e}"
        raise JudgeError(f"judge {self.url} ({self.model}) failed for {criterion}: {last}")
