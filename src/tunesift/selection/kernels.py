"""Validation of kernels and scalar options for the submodular objectives.

A kernel is a ``(n, m)`` non-negative matrix, dense (``np.ndarray``) or ``scipy.sparse`` (used as
canonical CSR; entries not stored are 0). A float32 or float64 kernel is used as is (no copy when
C-contiguous); other real dtypes are converted to float64. Every error is an
:class:`~tunesift.errors.OptionError` naming the argument.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from tunesift.errors import OptionError

__all__ = ["as_kernel", "check_budget", "check_scalar", "check_values", "row_max"]

_F64 = np.float64
MAX_ENTRY = 1e200  # far above any similarity; a gain sums up to n of them and its error bound more


def check_values(values: np.ndarray, name: str) -> None:
    if values.size == 0:
        return
    lo, hi = values.min(), values.max()
    if np.isnan(lo) or np.isnan(hi):
        raise OptionError(f"{name} contains NaN")
    if not np.isfinite(hi) or not np.isfinite(lo):
        raise OptionError(f"{name} contains an infinite value")
    if lo < 0:
        raise OptionError(f"{name} has a negative entry ({float(lo):g}); kernels must be >= 0")
    if float(hi) > MAX_ENTRY:  # sums over a row or column (and their rounding bounds) must stay finite
        raise OptionError(f"{name} has an entry of {float(hi):g}; kernels must be <= {MAX_ENTRY:g} (scale it down)")


def as_kernel(
    M: object, name: str, want_colsum: bool = False
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray | None]:
    """Validate a kernel: (C-contiguous float32/float64 array or canonical CSR matrix, column sums
    as float64 (m,) when ``want_colsum`` and the kernel is dense, else None)."""
    if sp.issparse(M):
        csr = sp.csr_matrix(M)
        if csr.ndim != 2:
            raise OptionError(f"{name} must be 2-D, got shape {csr.shape}")
        if csr.dtype not in (np.float32, np.float64):
            if not ((np.issubdtype(csr.dtype, np.number) or csr.dtype == np.bool_) and not np.iscomplexobj(csr.data)):
                raise OptionError(f"{name} must hold real numbers, got dtype {csr.dtype}")
            csr = csr.astype(_F64)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        check_values(csr.data, name)
        return csr, None
    try:
        arr = np.asarray(M)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise OptionError(f"{name} is not an array: {exc}") from None
    if arr.ndim != 2:
        raise OptionError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        elif arr.dtype == np.bool_ or (
            np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
        ):
            arr = arr.astype(_F64)
        else:
            raise OptionError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    # min, max (and column sums) per ~2 MB chunk: one pass over memory instead of three.
    colsum = np.zeros(arr.shape[1], dtype=_F64) if want_colsum else None
    step = max(1, (2 << 20) // max(1, arr.shape[1] * arr.itemsize))
    for a in range(0, arr.shape[0], step):
        chunk = arr[a : a + step]
        check_values(chunk, name)
        if colsum is not None:
            colsum += np.add.reduce(chunk, axis=0, dtype=_F64)
    return arr, colsum


def row_max(M: object, n: int, name: str) -> np.ndarray:
    """max over columns of each row (0 for rows with no columns / no stored entries), (n,)."""
    K, _ = as_kernel(M, name)
    if K.shape[0] != n:
        raise OptionError(f"{name} must have {n} rows (one per target of S), got {K.shape[0]}")
    if K.shape[1] == 0:
        return np.zeros(n, dtype=_F64)
    if sp.issparse(K):
        return np.asarray(K.max(axis=1).toarray(), dtype=_F64).reshape(n)
    return K.max(axis=1).astype(_F64)


def check_budget(budget: object, m: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise OptionError(f"budget must be an integer, got {budget!r}")
    k = int(budget)
    if k < 1 or k > m:
        raise OptionError(f"budget must be between 1 and the number of candidates ({m}), got {k}")
    return k


def check_scalar(value: object, name: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise OptionError(f"{name} must be finite and >= 0, got {value!r}")
    return x

