"""Quantities the report derives from a selection's scores (shared by the plots and the why lines)."""

from __future__ import annotations

import numpy as np

from .hints import RANKED
from .read import Output

__all__ = ["closeness_function", "cut_value", "higher_first", "prefilter"]


def prefilter(res: Output) -> tuple[np.ndarray, float]:
    """donod+delift: the mask of records DONOD let through and the closeness cut between them and
    the rest (midway between the lowest passed and the highest cut; NaN when nothing was cut)."""
    pre = res.cols["prefiltered"] > 0.5
    close = res.cols["closeness"]
    lo, hi = close[pre & np.isfinite(close)], close[~pre & np.isfinite(close)]
    cut = (float(lo.min()) + float(hi.max())) / 2 if lo.size and hi.size else float("nan")
    return pre, cut


def closeness_function(res: Output):
    """TOPSIS closeness of any (DON, NOD) point against this pool (its column norms, ideal and
    anti-ideal; see :mod:`tunesift.selection.topsis`), or None when it does not reproduce the
    stored closeness (then no cut curve is drawn)."""
    c = res.cols
    w = (res.manifest.get("options") or {}).get("weights") or (0.5, 0.5)
    try:
        w = np.asarray(w, dtype=float).reshape(2)
    except (TypeError, ValueError):
        return None
    don, nod, close = c["don"], c["nod"], c["closeness"]
    ok = np.isfinite(don) & np.isfinite(nod) & np.isfinite(close)
    if ok.sum() < 2:
        return None
    x = np.stack([don[ok], nod[ok]], axis=1)
    norm = np.sqrt((x ** 2).sum(axis=0))
    norm[norm == 0] = 1.0  # a zero column stays zero, as in topsis()
    v = x / norm * w
    ideal = (v[:, 0].max(), v[:, 1].min())  # DON a benefit, NOD a cost
    anti = (v[:, 0].min(), v[:, 1].max())

    def closeness(a, b):
        va, vb = np.asarray(a) / norm[0] * w[0], np.asarray(b) / norm[1] * w[1]
        dp = np.hypot(va - ideal[0], vb - ideal[1])
        dm = np.hypot(va - anti[0], vb - anti[1])
        tot = dp + dm
        return np.divide(dm, tot, out=np.full(np.shape(tot), 0.5), where=tot > 0)

    if not np.allclose(closeness(don[ok], nod[ok]), close[ok], rtol=1e-6, atol=1e-9):
        return None
    return closeness


def higher_first(res: Output) -> bool:
    spec = RANKED[res.method]
    flip = "keep" in spec.options and (res.manifest.get("options") or {}).get("keep") == "hardest"
    return spec.higher_first != flip


def cut_value(res: Output, values: np.ndarray) -> float:
    """The score of the last record kept (rank = budget); NaN when nothing was dropped."""
    at = np.flatnonzero(res.cols["rank"] == res.k)
    return float(values[at[0]]) if at.size and res.k < res.n else float("nan")
