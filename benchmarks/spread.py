"""Summary of a benchmark's per-round ratios: min, median, max and a 95% interval for the median.

The interval is distribution-free (order statistics of the sorted ratios, binomial with p = 1/2): on a
shared machine the rounds are noisy and not normal, and it narrows as rounds are added, while min and max
only widen.
"""

from __future__ import annotations

import math
import statistics


def spread(values: list[float], confidence: float = 0.95) -> dict[str, float | list[float]]:
    ordered = sorted(values)
    n, tail, below, k = len(ordered), (1 - confidence) / 2, 0.0, 0
    while k < n and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    low, high = (ordered[k - 1], ordered[n - k]) if k else (ordered[0], ordered[-1])
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "max": ordered[-1],
        "median_ci95": [low, high],
    }
