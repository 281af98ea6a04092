"""Cosine similarity helpers shared by scoring (embedding kernels) and selection (GreeDi).

Sits below both: numpy only, no model. ``normalise`` makes rows unit-length; ``cos_to_unit`` maps
a cosine in [-1, 1] to a kernel value in [0, 1], ``(s + 1) / 2``.
"""

from __future__ import annotations

import numpy as np

from .errors import OptionError

__all__ = ["cos_to_unit", "normalise"]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (n, d) scaled to unit L2 norm, float32 (n, d); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise OptionError(f"embeddings must be a 2-d array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cos_to_unit(s: np.ndarray) -> np.ndarray:
    """(s + 1) / 2 clipped to [0, 1] as float32, in place (``s`` is a fresh float32 product
    here; no temporaries: a 20k x 20k kernel needs 1.6 GB, not 4 x that)."""
    s = np.asarray(s, dtype=np.float32)
    s += 1.0
    s *= 0.5
    return np.clip(s, 0.0, 1.0, out=s)
