"""TOPSIS: rank alternatives by closeness to the ideal point (Hwang & Yoon, 1981).

Given a decision matrix X (n alternatives x m criteria), weights w (m,) and, per criterion,
whether it is a benefit (larger is better) or a cost:

    r_ij = x_ij / sqrt(sum_k x_kj^2)                      vector normalisation
    v_ij = w_j r_ij
    A+_j = max_i v_ij (benefit) or min_i v_ij (cost)      ideal
    A-_j = min_i v_ij (benefit) or max_i v_ij (cost)      anti-ideal
    C_i  = d(v_i, A-) / (d(v_i, A+) + d(v_i, A-))          closeness in [0, 1], higher is better

DONOD uses X = [DON, NOD], DON a benefit and NOD a cost, w = (0.5, 0.5).
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError


def topsis(x: np.ndarray, weights, benefit) -> np.ndarray:
    """Closeness C (n,) of each row of ``x`` (n, m) to the ideal solution.

    A column of zeros normalises to zeros; a row equidistant from both points (including the
    degenerate case where ideal == anti-ideal) gets C = 0.5. Rows with NaN get C = NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    b = np.asarray(benefit, dtype=bool)
    if x.ndim != 2 or x.shape[1] != len(w) or len(w) != len(b):
        raise OptionError(f"TOPSIS needs an (n, m) matrix with m weights and m directions, got {x.shape}")
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise OptionError(f"TOPSIS weights must be non-negative and not all zero, got {w.tolist()}")
    ok = np.isfinite(x).all(axis=1)
    out = np.full(len(x), np.nan)
    if not ok.any():
        return out
    xv = x[ok]
    # r = x / ||x||, each column first divided by its largest |x|: squares of 1e-170 or 1e170
    # would underflow to 0 or overflow to inf and silently drop the criterion
    big = np.abs(xv).max(axis=0)
    xs = np.divide(xv, big, out=np.zeros_like(xv), where=big > 0)
    norm = np.sqrt((xs**2).sum(axis=0))
    r = np.divide(xs, norm, out=np.zeros_like(xs), where=norm > 0)
    v = r * w
    ideal = np.where(b, v.max(axis=0), v.min(axis=0))
    anti = np.where(b, v.min(axis=0), v.max(axis=0))
    d_plus = np.sqrt(((v - ideal) ** 2).sum(axis=1))
    d_minus = np.sqrt(((v - anti) ** 2).sum(axis=1))
    tot = d_plus + d_minus
    out[ok] = np.divide(d_minus, tot, out=np.full_like(tot, 0.5), where=tot > 0)
    return out


def rank_desc(score: np.ndarray) -> np.ndarray:
    """1-based rank (1 = best) by descending score, ties broken by index; NaN ranks last."""
    key = np.where(np.isnan(score), -np.inf, score)
    order = np.lexsort((np.arange(len(score)), -key))
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return rank
