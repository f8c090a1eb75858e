"""Answer extraction on strings models really produce; unreadable or ambiguous ones must be None."""

from __future__ import annotations

import pytest

from tcllava.eval.extract import EXTRACTION_RULE, EXTRACTION_VERSION, extract_choice

OPTIONS = ["running", "walking the dog", "sitting on a bench", "a man riding a bike"]

CASES = [
    # letter forms
    ("(B)", "B"),
    ("B", "B"),
    ("B.", "B"),
    ("B) walking the dog", "B"),
    ("B. walking the dog", "B"),
    ("C: sitting on a bench", "C"),
    ("b", "B"),
    ("b) walking the dog", "B"),
    ("  \n\n(A) running", "A"),
    ("**D**", "D"),
    ("C\nExplanation: the man sits down at the end.", "C"),
    # primed continuations after "Best option:("
    ("B) walking the dog", "B"),
    ("A)", "A"),
    ("d) a man riding a bike</s>", "D"),
    # phrases
    ("Best option: (B) walking the dog", "B"),
    ("Best option:(C)", "C"),
    ("The answer is B", "B"),
    ("The answer is B.", "B"),
    ("the answer is c", "C"),
    ("Answer: B", "B"),
    ("answer: b", "B"),
    ("option B", "B"),
    ("Option (D) is correct.", "D"),
    ("The best answer is: D", "D"),
    ("I think it's A.", "A"),
    ("In the video the correct option is (C) sitting on a bench.", "C"),
    # option text
    ("walking the dog", "B"),
    ("Walking the dog.", "B"),
    ("He is walking the dog.", "B"),
    ("the dog", "B"),
    ("A man is sitting on a bench", "C"),  # the leading "A" is an article, not option A
    ("The answer is a man riding a bike", "D"),  # lowercase "a" + word: an article
    # unreadable or ambiguous -> None
    ("", None),
    ("   \n", None),
    ("I don't know.", None),
    ("None of the above", None),
    ("A or B", None),
    ("(A) or (B)", None),
    ("The answer is A, or option B", None),
    ("E", None),  # beyond the four options
    ("Answer: F", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, OPTIONS) == expected


def test_substring_answer_unique_to_one_option_is_taken() -> None:
    # "a man" appears only in option D's text, so it reads as D; "bench" too.
    assert extract_choice("a man", OPTIONS) == "D"
    assert extract_choice("bench", OPTIONS) == "C"


def test_ambiguous_option_text_is_none() -> None:
    options = ["red car", "red bike", "blue car"]
    assert extract_choice("red", options) is None  # inside two options
    assert extract_choice("the red car", options) == "A"
    assert extract_choice("red car or blue car", options) is None


def test_longer_option_wins_over_its_own_substring() -> None:
    options = ["the man is running", "the man is running fast"]
    assert extract_choice("The man is running fast.", options) == "B"
    assert extract_choice("the man is running", options) == "A"


def test_none_input_and_rule_is_versioned() -> None:
    assert extract_choice(None, OPTIONS) is None
    assert EXTRACTION_RULE.startswith(EXTRACTION_VERSION)
    assert len(CASES) >= 25
