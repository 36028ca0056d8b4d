"""Percentiles and the few number formats the report uses."""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, like numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(value: Optional[float]) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def rate(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.1f}/s"


def ratio(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "n/a"
    return f"{value:.2f}x" if value < 100 else f"{value:,.0f}x"


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.1f}%"
