"""Turn a model's free-form answer into an option letter, or None when it cannot be read honestly.

Benchmark numbers drift with answer parsing, so the rule is versioned and stored in every results.json.
Unreadable or ambiguous answers return None and are counted as "unparseable"; they are never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

EXTRACTION_VERSION = "tcllava-extract-v1"
EXTRACTION_RULE = (
    f"{EXTRACTION_VERSION}: markdown/quotes stripped; (1) a leading letter: 'B', '(B)', 'B)', 'B.', 'B:' "
    "followed by anything, or a letter alone on the first line; a letter followed by plain text only if "
    "that text matches the letter's option; (2) a phrase: 'answer/option/choice/best option/best answer/"
    "correct answer/it is' + optional 'is' + optional ':' + letter ('The answer is B', 'Answer: b', "
    "'option B', 'Best option: (B)'); a lowercase letter followed by a word is an article, not a choice; "
    "(3) one '(X)' anywhere; (4) option text: exact match, else the single option whose text the answer "
    "contains (options contained in a longer matching option dropped), else the single option containing "
    "the answer (3+ characters). Case-insensitive. Conflicting letters, a letter beyond the options, or "
    "no match -> None (unparseable, counted and reported)."
)

_LEAD = re.compile(r"^[(\[]?([A-Za-z])([)\].:,]*)(.*)$", re.S)
_PHRASE = re.compile(
    r"\b(?:best\s+option|best\s+answer|correct\s+option|correct\s+answer|answer|option|choice|it'?s|it\s+is)"
    r"(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\-]?\s*[(\[]?\s*([A-Za-z])(?![A-Za-z'])([)\]]?)",
    re.I,
)
_PAREN = re.compile(r"\(([A-Za-z])\)")
_WORD_AFTER = re.compile(r"^[ \t]+[A-Za-z]")


def _norm(text: str) -> str:
    """Lowercase words only, so 'Walking the dog.' and 'walking  the dog' compare equal."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _phrase_letters(text: str) -> list[str]:
    letters = []
    for m in _PHRASE.finditer(text):
        letter, closed = m.group(1), m.group(2)
        # "the answer is a man ..." : a lowercase letter followed by a word is an article.
        if letter.islower() and not closed and _WORD_AFTER.match(text[m.end() :]):
            continue
        letters.append(letter.upper())
    return letters


def _by_text(text: str, options: Sequence[str]) -> int | None:
    answer = _norm(text)
    if not answer:
        return None
    normed = [_norm(o) for o in options]
    exact = [i for i, o in enumerate(normed) if o and o == answer]
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None
    padded = f" {answer} "
    inside = [i for i, o in enumerate(normed) if o and f" {o} " in padded]
    # "red car" beats "red" when the answer says "the red car".
    inside = [i for i in inside if not any(j != i and f" {normed[i]} " in f" {normed[j]} " for j in inside)]
    if len(inside) == 1:
        return inside[0]
    if inside:
        return None
    if len(answer) >= 3:
        containing = [i for i, o in enumerate(normed) if padded in f" {o} "]
        if len(containing) == 1:
            return containing[0]
    return None


def extract_choice(text: str | None, options: Sequence[str]) -> str | None:
    """The option letter ('A', 'B', ...) `text` answers among `options`, or None if unreadable/ambiguous.

    `options` are the option texts without their letters, in order ('A' is options[0]).
    """
    if text is None:
        return None
    s = text.replace("**", "").replace("`", "").strip().strip("\"'").strip()
    if not s:
        return None
    valid = {chr(ord("A") + i) for i in range(len(options))}

    def single(letters: list[str]) -> str | None:
        found = set(letters)
        return found.pop() if len(found) == 1 and found <= valid else None

    lead = _LEAD.match(s)
    if lead:
        letter, delim, rest = lead.group(1).upper(), lead.group(2), lead.group(3)
        alone = rest == "" or rest.startswith(("\n", "\r"))
        if delim or alone:
            if letter not in valid:
                return None
            others = {x.upper() for x in _PAREN.findall(rest)} | set(_phrase_letters(rest))
            return letter if others <= {letter} else None
        if rest[:1].isspace() and letter in valid:
            option = _norm(options[ord(letter) - ord("A")])
            said = _norm(rest)
            if said and option and (option.startswith(said) or said.startswith(option)):
                return letter

    phrase = _phrase_letters(s)
    if phrase:
        return single(phrase)
    parens = [x.upper() for x in _PAREN.findall(s)]
    if parens:
        return single(parens)
    index = _by_text(s, options)
    return None if index is None else chr(ord("A") + index)
