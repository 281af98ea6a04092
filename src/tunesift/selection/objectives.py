"""Facility-location objectives (DELIFT's selection step): their gains and values, no optimiser.

Conventions
-----------
A kernel ``S`` has shape ``(n, m)``: rows are *targets* ``i`` (records to be represented), columns
are *candidates* ``j`` (records that may be selected). It is a dense ``np.ndarray`` or a
``scipy.sparse`` matrix (used as CSR; entries not stored are 0). Entries must be finite and
non-negative (see :mod:`tunesift.selection.kernels`); callers scale kernels to [0, 1]. Gains and
objectives are float64.

Objectives (``A`` is the selected set of candidate columns, max over the empty set is 0)
--------------------------------------------------------------------------------------
* Facility location (FL)::

      f(A) = sum_i max_{j in A} S[i, j]

  With ``init`` (a per-target starting maximum ``c``, shape ``(n,)``) the maximised function is
  the gain over ``c``: ``f_c(A) = sum_i max(0, max_{j in A} S[i, j] - c_i)``.
* FL mutual information, ``form="min"`` (submodlib's FL1MI)::

      I(A; Q) = sum_i min(max_{j in A} S[i, j], eta * max_q Q[i, q])      Q: (n, n_query)

  ``form="additive"`` (the DELIFT paper's printed form; ``S`` square, rows = columns = pool)::

      f(A) = sum_i max_{j in A} S[i, j] + eta * sum_{j in A} max_q T[q, j]     T: (n_query, n)

  Here the query set is the *target* side: ``T[q, j]`` is how much candidate ``j`` helps query
  ``q`` (the paper's ``max_{i in D_T} s_ij``, rows = targets as everywhere), not how much the
  query helps the candidate (``Q[j, q]``, FL1MI's orientation).

* FL conditional gain (FLCG)::

      f(A | E) = sum_i max(0, max_{j in A} S[i, j] - nu * max_k E[i, k])  E: (n, n_existing)

All three are one :class:`FLObjective`: FL over ``S' = min(S, cap[:, None])`` (``cap_i = eta *
max_q Q[i, q]`` for FL1MI, else +inf; never materialised) starting from a per-row current maximum
``cur = c`` (``c_i = nu * max_k E[i, k]`` for FLCG, else 0), plus a modular bonus per candidate
(``eta * max_q T[q, j]`` for the additive form). The gain of candidate ``j`` is
``sum_i max(0, S'[i, j] - cur_i) + bonus_j``. Build them with :func:`fl_objective`,
:func:`flmi_objective` and :func:`flcg_objective`; maximise them with
:func:`tunesift.selection.optimizers.maximize`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tunesift.errors import OptionError
from tunesift.selection.kernels import as_kernel, check_budget, check_scalar, check_values, row_max

__all__ = ["FLObjective", "fl_assignment", "fl_objective", "flcg_objective", "flmi_objective",
           "segment_sums", "set_value"]

_F64 = np.float64
CHUNK_BYTES = 1 << 20  # row blocks when computing the initial gains of a dense kernel
EVAL_BYTES = 1 << 25  # column blocks when computing exact gains of a dense kernel
GATHER_BYTES = 1 << 25  # row blocks when gathering the selected columns of a dense kernel


class FLObjective:
    """Read-only view of ``S' = min(S, cap[:, None])`` plus ``init`` (n,) and ``bonus`` (m,).

    The interface the optimisers use: ``n``, ``m``, ``init``, :meth:`exact_gains`, :meth:`take`
    and :meth:`value` (enough for naive greedy), plus the kernel views ``dense`` / ``csr`` /
    ``csc_*``, ``cap``, ``bonus``, :meth:`column` and :meth:`initial_gains` that the incremental
    engine of :mod:`tunesift.selection.optimizers` updates gains from.
    """

    def __init__(
        self,
        K: np.ndarray | sp.csr_matrix,
        *,
        cap: np.ndarray | None = None,
        init: np.ndarray | None = None,
        bonus: np.ndarray | None = None,
        colsum: np.ndarray | None = None,
    ) -> None:
        self.n, self.m = (int(x) for x in K.shape)
        self.colsum = colsum
        self.sparse = sp.issparse(K)
        self.cap = cap
        self.init = np.zeros(self.n, dtype=_F64) if init is None else init
        self.bonus = bonus
        if self.sparse:
            self.dense = None
            self.csr = K
            csc = K.tocsc()
            self.csc_indptr = csc.indptr.astype(np.int64)
            self.csc_indices = csc.indices
            self.csc_data = csc.data
        else:
            self.dense = K
            self.csr = None

    def column(self, j: int, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``R`` with ``S'[R, j] > cur[R]`` and those values as float64."""
        if self.dense is not None:
            col = self.dense[:, j].astype(_F64)
            if self.cap is not None:
                np.minimum(col, self.cap, out=col)
            rows = np.flatnonzero(col > cur)
            return rows, col[rows]
        a, b = self.csc_indptr[j], self.csc_indptr[j + 1]
        rows = self.csc_indices[a:b]
        vals = self.csc_data[a:b].astype(_F64)
        if self.cap is not None:
            np.minimum(vals, self.cap[rows], out=vals)
        keep = vals > cur[rows]
        return rows[keep], vals[keep]  # CSC row indices are sorted

    def exact_gains(self, cols: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """``sum_i max(0, S'[i, j] - cur_i) + bonus_j`` for each ``j`` in ``cols``, from scratch.

        The value for a column never depends on which other columns are evaluated with it (each
        column is reduced on its own), so lazy re-evaluations agree bit for bit with ``naive``.
        """
        cols = np.asarray(cols, dtype=np.int64)
        out = np.empty(len(cols), dtype=_F64)
        if self.dense is not None:
            n = self.n
            step = max(1, EVAL_BYTES // (8 * max(n, 1)))  # n = 0: no target rows, every gain 0
            for a in range(0, len(cols), step):
                c = cols[a : a + step]
                X = self.dense[:, c].T  # (len(c), n) view
                T = np.empty((len(c), n), dtype=_F64)
                if self.cap is not None:
                    np.minimum(X, self.cap, out=T)
                    T -= cur
                else:
                    np.subtract(X, cur, out=T)
                np.maximum(T, 0.0, out=T)
                out[a : a + step] = T.sum(axis=1)
        else:
            step = 1 << 16
            for a in range(0, len(cols), step):
                c = cols[a : a + step]
                starts = self.csc_indptr[c]
                lens = self.csc_indptr[c + 1] - starts
                offs = np.cumsum(lens) - lens
                pos = np.repeat(starts - offs, lens) + np.arange(int(lens.sum()))
                rows = self.csc_indices[pos]
                v = self.csc_data[pos].astype(_F64)
                if self.cap is not None:
                    np.minimum(v, self.cap[rows], out=v)
                v -= cur[rows]
                np.maximum(v, 0.0, out=v)
                out[a : a + step] = segment_sums(v, offs, lens)
        if self.bonus is not None:
            out += self.bonus[cols]
        return out

    def initial_gains(self) -> np.ndarray:
        """Gains of all candidates for the empty set (float64, (m,)); not bitwise exact."""
        cur, cap = self.init, self.cap
        if self.dense is not None:
            S = self.dense
            if cap is None and not cur.any():
                g = self.colsum if self.colsum is not None else np.add.reduce(S, 0, dtype=_F64)
                g = g.copy()
            else:
                g = np.zeros(self.m, dtype=_F64)
                step = max(1, CHUNK_BYTES * 4 // (8 * self.m))
                for a in range(0, self.n, step):
                    blk = S[a : a + step].astype(_F64)
                    if cap is not None:
                        np.minimum(blk, cap[a : a + step, None], out=blk)
                    blk -= cur[a : a + step, None]
                    np.maximum(blk, 0.0, out=blk)
                    g += blk.sum(axis=0)
        else:
            g = None  # computed while building the live-entry store
        if g is not None and self.bonus is not None:
            g += self.bonus
        return g

    def take(self, j: int, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Picking ``j`` with current maxima ``cur`` (n,): the rows whose maximum rises, their new
        values, and ``j``'s exact marginal gain (float64)."""
        rows, nw = self.column(j, cur)
        gain = float(np.sum(nw - cur[rows]))
        if self.bonus is not None:
            gain += float(self.bonus[j])
        return rows, nw, gain

    def value(self, cur: np.ndarray, order: np.ndarray) -> float:
        """The objective of the picks ``order`` whose per-row maxima are ``cur``:
        ``sum_i (cur_i - init_i) + sum_{j in order} bonus_j``."""
        objective = float(np.sum(cur - self.init))
        if self.bonus is not None and len(order):
            objective += float(np.sum(self.bonus[order]))
        return objective


def set_value(objective: FLObjective, cols: np.ndarray) -> float:
    """The objective of the set ``cols`` (k,) of candidate columns, in any order: FL's ``f(A)``,
    FLMI's or FLCG's ``f(A | E)``, as the greedy reports for its own picks. For scoring a pick
    made some other way (another method's, a random draw) on this objective; repeated columns
    count once."""
    cols = np.unique(np.asarray(cols, dtype=np.int64))
    if len(cols) and (cols[0] < 0 or cols[-1] >= objective.m):
        raise ValueError(f"set_value: columns must lie in [0, {objective.m}), got {cols[0]}..{cols[-1]}")
    cur = objective.init.copy()
    for j in cols:
        rows, values, _ = objective.take(int(j), cur)
        cur[rows] = values
    return objective.value(cur, cols)


def segment_sums(v: np.ndarray, offs: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Sum of ``v[offs[s] : offs[s] + lens[s]]`` per segment (0 for empty segments)."""
    if len(offs) == 0:
        return np.zeros(0, dtype=_F64)
    padded = np.concatenate([v, np.zeros(1, dtype=_F64)])
    idx = np.empty(2 * len(offs), dtype=np.int64)
    idx[0::2] = offs
    idx[1::2] = offs + lens
    sums = np.add.reduceat(padded, idx)[0::2]
    sums[lens == 0] = 0.0
    return sums


def fl_objective(S: np.ndarray | sp.spmatrix, init: np.ndarray | None = None, *,
                 budget: int | None = None) -> FLObjective:
    """Facility location ``f(A) = sum_i max_{j in A} S[i, j]`` (``S``: (n, m), validated), or with
    ``init`` (n,) non-negative starting maxima ``c``: ``sum_i max(0, max_{j in A} S[i, j] - c_i)``.

    ``budget`` (here and in the other builders): when given, checked against the number of
    candidates right after the kernel, so errors are raised in argument order."""
    K, colsum = as_kernel(S, "S", want_colsum=init is None)
    _budget(budget, K)
    c = None
    if init is not None:
        c = np.array(init, dtype=_F64, copy=True)
        if c.shape != (K.shape[0],):
            raise OptionError(f"init must have shape ({K.shape[0]},), got {c.shape}")
        check_values(c, "init")
    return FLObjective(K, init=c, colsum=colsum)


def flmi_objective(S: np.ndarray | sp.spmatrix, Q: np.ndarray | sp.spmatrix, *, eta: float = 1.0,
                   form: str = "min", budget: int | None = None) -> FLObjective:
    """FL mutual information with a query set.

    ``form="min"`` (FL1MI): ``S`` (n, m) capped at ``eta * max_q Q[i, q]``, ``Q``: (n, n_query)
    (pool rows as targets, queries as examples). ``form="additive"``: ``S`` square (n, n) plus the
    modular bonus ``eta * max_q Q[q, j]``, ``Q``: (n_query, n) (queries as targets, pool candidates
    as examples: how much candidate j helps query q)."""
    if form not in ("min", "additive"):
        raise OptionError(f"form must be 'min' or 'additive', got {form!r}")
    K, colsum = as_kernel(S, "S", want_colsum=form == "additive")
    n, m = K.shape
    _budget(budget, K)
    eta_f = check_scalar(eta, "eta")
    if form == "min":
        return FLObjective(K, cap=eta_f * row_max(Q, n, "Q"))
    if n != m:
        raise OptionError(f"form='additive' needs a square S (pool x pool), got {n}x{m}")
    return FLObjective(K, bonus=eta_f * column_max(Q, m, "Q"), colsum=colsum)


def column_max(T: np.ndarray | sp.spmatrix, m: int, name: str) -> np.ndarray:
    """max over rows of each column of ``T`` (n_query, m), float64 (m,); 0 for columns with no
    rows / no stored entries (missing sparse entries are 0, kernels are >= 0)."""
    K, _ = as_kernel(T, name)
    if K.shape[1] != m:
        raise OptionError(f"{name} must have {m} columns (queries x pool candidates, one per candidate of S), "
                          f"got {K.shape[1]}")
    if K.shape[0] == 0:
        return np.zeros(m, dtype=_F64)
    if sp.issparse(K):
        return np.asarray(K.max(axis=0).toarray(), dtype=_F64).reshape(m)
    return K.max(axis=0).astype(_F64)


def flcg_objective(S: np.ndarray | sp.spmatrix, E: np.ndarray | sp.spmatrix, *,
                   nu: float = 1.0, budget: int | None = None) -> FLObjective:
    """FL conditional gain ``f(A | E) = sum_i max(0, max_{j in A} S[i, j] - nu * max_k E[i, k])``;
    ``S``: (n, m), ``E``: (n, n_existing) (n_existing may be 0)."""
    K, _ = as_kernel(S, "S")
    _budget(budget, K)
    nu_f = check_scalar(nu, "nu")
    return FLObjective(K, init=nu_f * row_max(E, K.shape[0], "E"))


def _budget(budget: int | None, K: np.ndarray | sp.csr_matrix) -> None:
    if budget is not None:
        check_budget(budget, K.shape[1])


def fl_assignment(S: np.ndarray | sp.spmatrix, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which selected column covers each target in facility location, and by how much.

    ``S``: (n, m) kernel (dense or sparse; missing entries 0), ``cols``: (k,) selected columns A.
    Returns ``pos`` (n,) int64, the position in ``cols`` of ``argmax_{j in A} S[i, j]`` (lowest
    position among ties; -1 where the row has no positive entry in ``cols``), and ``value`` (n,)
    float64, ``max_{j in A} S[i, j]`` (0 where ``pos`` is -1): row i's term of ``f(A)``.
    Dense kernels are read in row blocks (never n x k at once)."""
    cols = np.asarray(cols, dtype=np.int64)
    n = S.shape[0]
    if len(cols) == 0:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=_F64)
    if sp.issparse(S):
        sub = sp.csr_matrix(S)[:, cols]
        pos = np.asarray(sub.argmax(axis=1)).reshape(n).astype(np.int64)
        val = np.asarray(sub.max(axis=1).toarray(), dtype=_F64).reshape(n)
    else:
        pos = np.empty(n, dtype=np.int64)
        val = np.empty(n, dtype=_F64)
        step = max(1, GATHER_BYTES // (8 * len(cols)))
        for r0 in range(0, n, step):
            sub = S[r0 : r0 + step][:, cols]
            pos[r0 : r0 + step] = sub.argmax(axis=1)
            val[r0 : r0 + step] = sub.max(axis=1)
    none = val <= 0
    pos[none] = -1
    val[none] = 0.0
    return pos, val
