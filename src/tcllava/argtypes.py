"""argparse types that range-check a number where the flag is declared, so that a bad value is refused
with one line naming the flag (``--frames: must be >= 1, got 0``) before anything is loaded."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, low: float | None, high: float | None, low_open: bool) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if isinstance(value, float) and math.isnan(value):
            raise argparse.ArgumentTypeError("NaN is not allowed")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value

    return parse


positive_int = _number(int, 1, None, False)
non_negative_int = _number(int, 0, None, False)
non_negative_float = _number(float, 0, None, False)
positive_float = _number(float, 0, None, True)
probability = _number(float, 0, 1, True)  # (0, 1]: top-p
fraction = _number(float, 0, 1, False)  # [0, 1]
