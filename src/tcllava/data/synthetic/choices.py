"""Random choices shared by the task generators and the stills: picks, positions, lengths, candidates.

Underscore names are internal to `tcllava.data.synthetic`.
"""

from __future__ import annotations

import numpy as np


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str], k: int) -> list[str]:
    """k distinct items in random order."""
    return [items[i] for i in rng.permutation(len(items))[:k]]


def _pos(rng: np.random.Generator, size: int, margin: float) -> tuple[float, float]:
    x, y = rng.uniform(margin, size - margin, 2)
    return float(x), float(y)


def _split(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    """Uniformly random composition of `total` into `parts` positive integers (exchangeable parts)."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
    return np.diff([0, *cuts.tolist(), total]).tolist()


def _options(
    rng: np.random.Generator, answer: str, pool: list[str] | tuple[str, ...], k: int = 0
) -> list[str]:
    """The answer plus `k` (default: all) other items of `pool`, shuffled."""
    others = [o for o in pool if o != answer]
    chosen = [answer, *_pick(rng, others, k or len(others))]
    return _pick(rng, chosen, len(chosen))
