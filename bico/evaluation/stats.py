"""Uncertainty of the numbers bico reports.

* :func:`wilson_interval`: a 95% interval for a proportion measured on n items (one run's exact
  match, say). The Wilson score interval, not the normal approximation: it stays inside [0, 1]
  and is not zero-width at 0 or 1, where the reversal numbers often are.
* :func:`mean_ci`: the mean of a few runs' values (seeds) and the half-width of its 95% Student t
  interval, as ``bico ablate`` reports across seeds.
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
    # At 0 and n the bound is exactly 0 (1) in exact arithmetic; do not let rounding move it.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def error_bars(values: list[float], intervals: list) -> list[list[float]]:
    """matplotlib's ``yerr`` (distances below, above) for ``values`` and their ``(low, high)``
    intervals; max(0, .) because a bound may sit a rounding error past its value."""
    return [
        [max(0.0, v - c[0]) for v, c in zip(values, intervals)],
        [max(0.0, c[1] - v) for v, c in zip(values, intervals)],
    ]


# Two-sided 97.5% Student t quantiles for 1..30 degrees of freedom (no scipy needed).
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964  # Cornish-Fisher step beyond the table (error < 1e-3 for df > 30)
    return z + (z**3 + z) / (4 * df)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (nan for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t975(n - 1) * sd / math.sqrt(n)
