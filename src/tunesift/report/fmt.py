"""Text formatting shared by the report's modules: numbers, ordinals, percentiles, clipping."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CLIP = 200  # characters of prompt / response shown


def one_line(exc: BaseException | str) -> str:
    """An exception's message on one line (runs of whitespace collapsed)."""
    return " ".join(str(exc).split())


def fmt(x: Any) -> str:
    """A value as shown on the page: integers plainly, floats to 4 significant digits (scientific
    below 1e-3 or from 1e5), booleans yes / no, infinities as inf / -inf (a score that overflowed
    is shown as such), None and NaN as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != x:
            return "—"
        if float(x).is_integer() and abs(x) < 1e6:
            return str(int(x))
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3e}"
        return f"{x:.4g}"
    return str(x)


def fmt_apart(x: float, ref: float) -> tuple[str, str]:
    """:func:`fmt` of ``x`` and of the threshold ``ref`` it is compared with, with more significant
    digits where the two would print alike though they differ (a kept IFD of 0.99996 read
    "IFD 1 < 1"; a dropped closeness read "below the last kept" with the same digits)."""
    a, b = fmt(x), fmt(ref)
    if a != b or x == ref or not (math.isfinite(x) and math.isfinite(ref)):
        return a, b
    for digits in range(5, 18):
        a, b = f"{x:.{digits}g}", f"{ref:.{digits}g}"
        if a != b:
            break
    return a, b


def ordinal(p: float) -> str:
    """A percentile (clipped to 0-100, rounded) as an English ordinal: 1st, 22nd, 93rd, 11th; "—"
    for NaN (no percentile)."""
    if p != p:
        return "—"
    n = int(round(min(max(p, 0.0), 100.0)))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def percentiles(x: np.ndarray) -> np.ndarray:
    """Mid-rank percentile (0-100) of each value among the values that are not NaN (an infinite
    score, exp(loss) overflowing, ranks at its end); NaN where the value is NaN.

    For value ``v``: ``100 * (#{x < v} + #{x <= v}) / 2 / #not NaN``, shape of ``x``."""
    x = np.asarray(x, dtype=float)
    out = np.full(x.shape, np.nan)
    ok = ~np.isnan(x)
    if ok.any():
        v = np.sort(x[ok])
        lo = np.searchsorted(v, x[ok], "left")
        hi = np.searchsorted(v, x[ok], "right")
        out[ok] = (lo + hi) / 2 / v.size * 100
    return out


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` stripped and cut to ``limit`` characters, the last one an ellipsis when cut."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
