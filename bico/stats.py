"""Uncertainty of the numbers bico reports.

* :func:`wilson_interval`: a 95% interval for a proportion measured on n items (one run's exact
  match, say). The Wilson score interval, not the normal approximation: it stays inside [0, 1]
  and is not zero-width at 0 or 1, where the reversal numbers often are.
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """``(low, high)`` of the Wilson score interval for ``successes`` out of ``n`` (``(nan, nan)`` if n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
