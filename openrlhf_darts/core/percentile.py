"""The nearest-rank percentile, the one definition every figure uses (step metrics, the local mode's step records and
the benchmarks' length summaries). Standard library only."""

from __future__ import annotations

import math
from collections.abc import Iterable


def nearest_rank(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (``q`` in [0, 100]) of a non-empty collection of numbers.

    The value at rank ``ceil(N q / 100)`` (at least 1) of the ``N`` values in ascending order: always one of the values,
    p0 the minimum, p100 the maximum.
    """
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
        raise ValueError(f"q={q!r} is not a percentile; pass a number in [0, 100]")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("values is empty; a percentile needs at least one value")
    rank = max(1, math.ceil(len(ordered) * q / 100))
    return float(ordered[rank - 1])
