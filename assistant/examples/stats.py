"""Small statistics helpers, with holes for ``remask fill`` to fill (try: remask fill --all-holes stats.py)."""

from __future__ import annotations

import math


def mean(xs: list[float]) -> float:
    """Arithmetic mean of a non-empty list."""
    if not xs:
        raise ValueError("mean of an empty list")
    return sum(xs) / len(xs)


def variance(xs: list[float]) -> float:
    """Population variance."""
    pass


def stdev(xs: list[float]) -> float:
    """Population standard deviation."""
    # <FILL>


def median(xs: list[float]) -> float:
    """Middle value of the sorted list (mean of the two middle values for an even length)."""
    ...


def zscores(xs: list[float]) -> list[float]:
    m, s = mean(xs), stdev(xs)
    return [(x - m) / s for x in xs]


def describe(xs: list[float]) -> dict[str, float]:
    return {"mean": mean(xs), "stdev": stdev(xs), "median": median(xs), "max": max(xs), "min": min(xs),
            "range": max(xs) - min(xs), "n": float(len(xs)), "log_n": math.log(len(xs))}
