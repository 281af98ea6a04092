"""Greedy maximisation of facility-location objectives (DELIFT's selection step), numpy only.

Conventions
-----------
A kernel ``S`` has shape ``(n, m)``: rows are *targets* ``i`` (records to be represented), columns
are *candidates* ``j`` (records that may be selected). It is a dense ``np.ndarray`` or a
``scipy.sparse`` matrix (used as CSR; entries not stored are 0). Entries must be finite and
non-negative; callers scale kernels to [0, 1]. A float32 kernel is used as is (no copy); float64
is used as is; other dtypes are converted to float64. Gains and objectives are float64.

Objectives (``A`` is the selected set of candidate columns, max over the empty set is 0)
--------------------------------------------------------------------------------------
* Facility location (FL)::

      f(A) = sum_i max_{j in A} S[i, j]

  With ``init`` (a per-target starting maximum ``c``, shape ``(n,)``) the maximised function is
  the gain over ``c``: ``f_c(A) = sum_i max(0, max_{j in A} S[i, j] - c_i)``.
* FL mutual information, ``form="min"`` (submodlib's FL1MI)::

      I(A; Q) = sum_i min(max_{j in A} S[i, j], eta * max_q Q[i, q])      Q: (n, n_query)

  ``form="additive"`` (the DELIFT paper's printed form; ``S`` square, rows = columns = pool)::

      f(A) = sum_i max_{j in A} S[i, j] + eta * sum_{j in A} max_q Q[j, q]

* FL conditional gain (FLCG)::

      f(A | E) = sum_i max(0, max_{j in A} S[i, j] - nu * max_k E[i, k])  E: (n, n_existing)

All three are one engine: FL over ``S' = min(S, cap[:, None])`` (``cap_i = eta * max_q Q[i, q]``
for FL1MI, else +inf; never materialised) starting from a per-row current maximum ``cur = c``
(``c_i = nu * max_k E[i, k]`` for FLCG, else 0), plus a modular bonus per candidate
(``eta * max_q Q[j, q]`` for the additive form). The gain of candidate ``j`` is
``sum_i max(0, S'[i, j] - cur_i) + bonus_j``.

Optimisers
----------
* ``"naive"``: every step recomputes the gain of every remaining candidate from scratch
  (vectorised), O(k n m).
* ``"lazy"``: exact and pick-for-pick identical to ``"naive"``, much faster. It keeps every
  candidate's gain ``g`` in a float64 vector and updates it incrementally: after picking ``j*``
  only the rows ``R = {i : S'[i, j*] > cur_i}`` change, by
  ``delta_j = sum_{i in R} (clip(S'[i, j], cur_i, S'[i, j*]) - cur_i)``. Entries
  ``S'[i, j] <= cur_i`` can never contribute again, so a dense row whose live fraction (estimated
  on 256 probe columns) falls to 1/32 moves to a compact per-row store of its live entries,
  which shrinks every time the row is touched; CSR kernels live in that store from the start.
  The engine tracks a worst-case bound ``err`` on the rounding error of every incremental gain
  (standard sequential-summation bounds); all candidates within ``2 * err`` of the best are
  re-evaluated from scratch with the routine ``"naive"`` uses (bit-identical values), so
  rounding never changes a pick and exact ties go to the lowest index. The current maximum is
  found through per-block upper bounds (gains only decrease), so a step costs far less than
  O(m) when few gains change (sparse kernels).
* ``"stochastic"``: stochastic greedy (Mirzasoleiman et al., 2015): each step draws a uniform
  random sample of ``ceil(m / k * ln(1 / epsilon))`` remaining candidates (``numpy`` Generator
  seeded with ``seed``; deterministic for a seed) and picks the sample's best. It reuses the
  incremental gains, so it is not faster than ``"lazy"`` here; it exists for parity with the
  paper and submodlib.

Ties: among candidates with equal gain the lowest column index is picked. Each candidate is
picked at most once. With ``stop_if_zero_gain`` the run stops as soon as the best gain (the
sample's best, for ``"stochastic"``) is ``<= 0``, so fewer than ``budget`` picks may return.

Memory (lazy, dense ``n x m`` kernel): the kernel itself (not copied when C-contiguous
float32/float64), O(n + m) float64 vectors, ~1 MB chunk buffers and the live-entry store (12 bytes
per entry; rows convert at <= m/32 live entries, so at most ~0.4 * n * m bytes, doubled while it
grows). CSR: the CSR input, a CSC copy for column access and the store (12 bytes per entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tunesift.errors import OptionError

__all__ = [
    "GreedyResult",
    "facility_location",
    "fl_conditional_gain",
    "fl_mutual_information",
]

_F64 = np.float64
_EPS = float(np.finfo(np.float64).eps)
_OPTIMIZERS = ("naive", "lazy", "stochastic")
# A dense row whose estimated live fraction (entries above its current maximum) is at most this
# moves to the compact live-entry store.
_CONVERT_FRACTION = 1.0 / 32.0
_CHUNK_BYTES = 1 << 20
_EVAL_BYTES = 1 << 25


@dataclass(frozen=True)
class GreedyResult:
    """Outcome of a greedy run.

    ``order``: (k,) int64 candidate (column) indices in pick order. ``gains``: (k,) float64
    marginal gain of each pick. ``objective``: the objective of the final set (FL: f(A); FLCG:
    the conditional gain f(A | E); FLMI: the mutual-information value; equals ``gains.sum()`` up
    to rounding).
    """

    order: np.ndarray
    gains: np.ndarray
    objective: float


# --------------------------------------------------------------------------------------------
# validation


def _check_values(values: np.ndarray, name: str) -> None:
    if values.size == 0:
        return
    lo, hi = values.min(), values.max()
    if np.isnan(lo) or np.isnan(hi):
        raise OptionError(f"{name} contains NaN")
    if not np.isfinite(hi) or not np.isfinite(lo):
        raise OptionError(f"{name} contains an infinite value")
    if lo < 0:
        raise OptionError(f"{name} has a negative entry ({float(lo):g}); kernels must be >= 0")


def _as_kernel(
    M: object, name: str, want_colsum: bool = False
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray | None]:
    """Validate a kernel: (C-contiguous float32/float64 array or canonical CSR matrix, column sums
    as float64 (m,) when ``want_colsum`` and the kernel is dense, else None)."""
    if sp.issparse(M):
        csr = sp.csr_matrix(M)
        if csr.ndim != 2:
            raise OptionError(f"{name} must be 2-D, got shape {csr.shape}")
        if csr.dtype not in (np.float32, np.float64):
            if not (np.issubdtype(csr.dtype, np.number) and not np.iscomplexobj(csr.data)):
                raise OptionError(f"{name} must hold real numbers, got dtype {csr.dtype}")
            csr = csr.astype(_F64)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        _check_values(csr.data, name)
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
        _check_values(chunk, name)
        if colsum is not None:
            colsum += np.add.reduce(chunk, axis=0, dtype=_F64)
    return arr, colsum


def _row_max(M: object, n: int, name: str) -> np.ndarray:
    """max over columns of each row (0 for rows with no columns / no stored entries), (n,)."""
    K, _ = _as_kernel(M, name)
    if K.shape[0] != n:
        raise OptionError(f"{name} must have {n} rows (one per target of S), got {K.shape[0]}")
    if K.shape[1] == 0:
        return np.zeros(n, dtype=_F64)
    if sp.issparse(K):
        return np.asarray(K.max(axis=1).toarray(), dtype=_F64).reshape(n)
    return K.max(axis=1).astype(_F64)


def _check_budget(budget: object, m: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise OptionError(f"budget must be an integer, got {budget!r}")
    k = int(budget)
    if k < 1 or k > m:
        raise OptionError(f"budget must be between 1 and the number of candidates ({m}), got {k}")
    return k


def _check_scalar(value: object, name: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise OptionError(f"{name} must be finite and >= 0, got {value!r}")
    return x


def _check_options(optimizer: object, epsilon: object, seed: object) -> tuple[str, float, int]:
    if optimizer not in _OPTIMIZERS:
        raise OptionError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}; got {optimizer!r}")
    try:
        eps = float(epsilon)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OptionError(f"epsilon must be a number in (0, 1), got {epsilon!r}") from None
    if not 0.0 < eps < 1.0:
        raise OptionError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    return str(optimizer), eps, int(seed)


# --------------------------------------------------------------------------------------------
# the problem: S' = min(S, cap), starting maxima, modular bonus


class _Problem:
    """Read-only view of ``S' = min(S, cap[:, None])`` plus ``init`` (n,) and ``bonus`` (m,)."""

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
            step = max(1, _EVAL_BYTES // (8 * n))
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
                out[a : a + step] = _segment_sums(v, offs, lens)
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
                step = max(1, _CHUNK_BYTES * 4 // (8 * self.m))
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


def _segment_sums(v: np.ndarray, offs: np.ndarray, lens: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# naive greedy


def _take(prob, j: int, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Picking j: the rows whose current max rises, their new values, and j's exact gain."""
    rows, nw = prob.column(j, cur)
    gain = float(np.sum(nw - cur[rows]))
    if prob.bonus is not None:
        gain += float(prob.bonus[j])
    return rows, nw, gain


def _run_naive(prob: _Problem, k: int, stop: bool) -> tuple[list[int], list[float], np.ndarray]:
    cur = prob.init.copy()
    remaining = np.ones(prob.m, dtype=bool)
    order: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        cols = np.flatnonzero(remaining)
        vals = prob.exact_gains(cols, cur)
        i = int(np.argmax(vals))
        j = int(cols[i])
        rows, nw, gain = _take(prob, j, cur)
        if stop and gain <= 0:
            break
        order.append(j)
        gains.append(gain)
        remaining[j] = False
        cur[rows] = nw
    return order, gains, cur


# --------------------------------------------------------------------------------------------
# incremental engine (lazy and stochastic)


class _Engine:
    """Incremental gains ``g`` (m,), current maxima ``cur`` (n,) and the live-entry store."""

    def __init__(self, prob: _Problem) -> None:
        self.p = prob
        n, m = prob.n, prob.m
        self.cur = prob.init.copy()
        # block upper bounds for the running maximum of g
        self.B = max(64, math.isqrt(m))
        self.nb = -(-m // self.B)
        self.gp = np.full(self.nb * self.B, -np.inf, dtype=_F64)
        self.g = self.gp[:m]
        self.exact = np.zeros(m, dtype=bool)
        # live-entry store: row i's entries are pc/pv[pstart[i] : pstart[i] + plen[i]];
        # invariant: every stored value is > cur[i].
        self.in_store = np.zeros(n, dtype=bool)
        self.pstart = np.zeros(n, dtype=np.int64)
        self.plen = np.zeros(n, dtype=np.int64)
        self.pused = 0
        if prob.sparse:
            self._store_from_csr()
        else:
            self.g[:] = prob.initial_gains()
            self.pc = np.empty(max(1024, 4 * n), dtype=np.int32)
            self.pv = np.empty(len(self.pc), dtype=_F64)
            itemsize = prob.dense.itemsize
            self.rc = int(min(256, max(1, _CHUNK_BYTES // (m * itemsize))))
            rng = np.random.default_rng(12345)
            self.probe = np.sort(rng.choice(m, size=min(m, 256), replace=False))
        # Rounding-error bound on every incremental gain (standard bounds for sequential sums,
        # |fl(sum x) - sum x| <= (len - 1) u sum|x|, with u taken as eps = 2u for slack).
        # Candidates within 2 * err of the best are re-evaluated exactly before a pick.
        finite = self.g[np.isfinite(self.g)]
        self.gscale = float(finite.max()) if finite.size else 0.0
        if prob.sparse:
            terms = int(np.diff(prob.csc_indptr).max()) if prob.m else 0
        else:
            terms = n
        self.err = _EPS * (terms + 2) * self.gscale
        self.bmax = self.gp.reshape(self.nb, self.B).max(axis=1)

    # -- construction -------------------------------------------------------------------------
    def _store_from_csr(self) -> None:
        p = self.p
        csr = p.csr
        indptr = csr.indptr.astype(np.int64)
        v = csr.data.astype(_F64)
        rows = None
        if p.cap is not None or p.init.any():
            rows = np.repeat(np.arange(p.n, dtype=np.int64), np.diff(indptr))
            if p.cap is not None:
                np.minimum(v, p.cap[rows], out=v)
            keep = v > p.init[rows]
        else:
            keep = v > 0
        cs = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
        counts = cs[indptr[1:]] - cs[indptr[:-1]]
        self.pc = csr.indices[keep].astype(np.int32)
        self.pv = v[keep]
        del v
        self.plen[:] = counts
        self.pstart[:] = np.cumsum(counts) - counts
        self.pused = len(self.pc)
        self.in_store[:] = True
        w = self.pv if rows is None else self.pv - p.init[rows[keep]]
        g = np.bincount(self.pc, weights=w, minlength=p.m).astype(_F64)
        if p.bonus is not None:
            g += p.bonus
        self.g[:] = g

    # -- updates --------------------------------------------------------------------------------
    def update(self, rows: np.ndarray, nw: np.ndarray) -> None:
        """Rows ``rows`` raise their current maximum to ``nw`` (> cur[rows])."""
        if len(rows) == 0:
            return
        old = self.cur[rows]
        if self.p.sparse:
            self._update_store(rows, old, nw)
        else:
            st = self.in_store[rows]
            if st.any():
                self._update_store(rows[st], old[st], nw[st])
            if not st.all():
                d = ~st
                self._update_dense(rows[d], old[d], nw[d])
                self.bmax = self.gp.reshape(self.nb, self.B).max(axis=1)
        self.cur[rows] = nw

    def _update_store(self, rows: np.ndarray, old: np.ndarray, nw: np.ndarray) -> None:
        # Every row in ``rows`` holds at least one live entry (the picked column's), so L >= 1.
        L = self.plen[rows]
        ends = L.cumsum()
        tot = int(ends[-1])
        offs = ends - L
        starts = self.pstart[rows]
        pos = (starts - offs).repeat(L)
        pos += np.arange(tot)
        cols = self.pc[pos]
        v = self.pv[pos]
        n_rep = nw.repeat(L)
        d = np.minimum(v, n_rep)
        d -= old.repeat(L)  # > 0 by the store invariant (stored values exceed cur)
        self.err += _EPS * ((len(rows) + 2) * (float(nw.sum()) + self.gscale))
        if tot * 8 > self.p.m:
            self.g -= np.bincount(cols, weights=d, minlength=self.p.m)
        else:
            np.subtract.at(self.g, cols, d)
        self.exact[cols] = False
        keep = v > n_rep
        newL = np.add.reduceat(keep, offs, dtype=np.int64)
        nk = int(newL.sum())
        if nk:
            dest = (starts - (newL.cumsum() - newL)).repeat(newL)
            dest += np.arange(nk)
            self.pc[dest] = cols[keep]
            self.pv[dest] = v[keep]
        self.plen[rows] = newL

    def _update_dense(self, rows: np.ndarray, old: np.ndarray, nw: np.ndarray) -> None:
        S = self.p.dense
        cap = self.p.cap
        rc = self.rc
        total = np.zeros(self.p.m, dtype=_F64)
        for a in range(0, len(rows), rc):
            rr, oo, nn = rows[a : a + rc], old[a : a + rc], nw[a : a + rc]
            blk = S[rr]  # (r, m) copy
            # rows with few live entries (S' > new maximum) move to the live-entry store
            frac = np.count_nonzero(blk[:, self.probe] > nn[:, None], axis=1)
            conv = frac <= _CONVERT_FRACTION * len(self.probe)
            if cap is not None:
                conv |= cap[rr] <= nn
            if conv.any():
                self._to_store(rr[conv], blk[conv], nn[conv])
            # delta_j = sum_r clip(S[r, j], old_r, new_r) - old_r. The clip is exact when the
            # bounds are representable in the kernel's dtype (always for plain FL on float32).
            if blk.dtype == np.float32:
                lo, hi = oo.astype(np.float32), nn.astype(np.float32)
                if not (np.array_equal(lo, oo) and np.array_equal(hi, nn)):
                    blk = blk.astype(_F64)
                    lo, hi = oo, nn
            else:
                lo, hi = oo, nn
            np.clip(blk, lo[:, None], hi[:, None], out=blk)
            part = np.add.reduce(blk, axis=0, dtype=_F64)
            # Column sums run sequentially over rows, like cumsum, so a column with no entry
            # above its row's old maximum gives exactly 0 here.
            part -= np.cumsum(oo)[-1]
            total += part
        self.exact[total != 0] = False
        np.maximum(total, 0.0, out=total)  # rounding must never raise a gain
        self.g -= total
        chunks = -(-len(rows) // rc)
        self.err += _EPS * ((2 * rc + chunks + 2) * float(nw.sum()) + 2 * self.gscale)

    def _to_store(self, rows: np.ndarray, blk: np.ndarray, nw: np.ndarray) -> None:
        cap = self.p.cap
        m = blk.shape[1]
        mask = blk > nw[:, None]
        if cap is not None:
            mask &= (cap[rows] > nw)[:, None]
        flat = np.flatnonzero(mask)
        ci = flat % m
        vals = blk.ravel()[flat].astype(_F64)
        if cap is not None:
            np.minimum(vals, cap[rows][flat // m], out=vals)
        cnt = np.count_nonzero(mask, axis=1)
        need = self.pused + len(ci)
        if need > len(self.pc):
            size = max(need, 2 * len(self.pc))
            pc = np.empty(size, dtype=np.int32)
            pv = np.empty(size, dtype=_F64)
            pc[: self.pused] = self.pc[: self.pused]
            pv[: self.pused] = self.pv[: self.pused]
            self.pc, self.pv = pc, pv
        self.pc[self.pused : need] = ci
        self.pv[self.pused : need] = vals
        self.pstart[rows] = self.pused + np.cumsum(cnt) - cnt
        self.plen[rows] = cnt
        self.in_store[rows] = True
        self.pused = need

    # -- selection ------------------------------------------------------------------------------
    def _refresh(self, cols: np.ndarray) -> None:
        """Replace g[cols] by exact values (bit-identical to what naive computes)."""
        vals = self.p.exact_gains(cols, self.cur)
        self.g[cols] = vals
        self.exact[cols] = True
        np.maximum.at(self.bmax, cols // self.B, vals)

    def best_all(self) -> int:
        """Index of the exact best remaining candidate (lowest index among equal gains)."""
        B, gp, bmax = self.B, self.gp, self.bmax
        while True:
            b = int(bmax.argmax())
            top = bmax[b]
            seg = gp[b * B : (b + 1) * B]
            i = int(seg.argmax())
            if seg[i] < top:  # stale upper bound
                bmax[b] = seg[i]
                continue
            # top is the maximum of g; collect every candidate within the window below it
            thr = top - 2.0 * self.err
            near = seg >= thr
            if np.count_nonzero(bmax >= thr) == 1:
                if np.count_nonzero(near) == 1:
                    return b * B + i
                cand = b * B + np.flatnonzero(near)
            else:
                blocks = np.flatnonzero(bmax >= thr)
                sub = gp.reshape(self.nb, B)[blocks]
                bmax[blocks] = sub.max(axis=1)
                ri, ci = np.nonzero(sub >= thr)
                cand = blocks[ri] * B + ci
                if len(cand) == 1:
                    return int(cand[0])
            stale = cand[~self.exact[cand]]
            if len(stale) == 0:
                return int(cand[self.g[cand].argmax()])
            self._refresh(stale)

    def best_of(self, sample: np.ndarray) -> int:
        """Exact best of the sorted candidate indices ``sample`` (lowest index among ties)."""
        while True:
            vals = self.g[sample]
            thr = vals.max() - 2.0 * self.err
            cand = sample[vals >= thr]
            if len(cand) == 1:
                return int(cand[0])
            stale = cand[~self.exact[cand]]
            if len(stale) == 0:
                return int(cand[np.argmax(self.g[cand])])
            self._refresh(stale)


def _draw(rng: np.random.Generator, picked: np.ndarray, s: int) -> np.ndarray:
    """Uniform random ``s``-subset of the unpicked candidates (``picked`` is (m,) bool), sorted."""
    m = len(picked)
    free = m - int(np.count_nonzero(picked))
    if 4 * s >= free or 2 * free < m:
        idx = np.flatnonzero(~picked)
        if s >= len(idx):
            return idx
        return np.sort(rng.choice(idx, size=s, replace=False))
    # rejection sampling (acceptance >= 1/2): the union of uniform draws restricted to unpicked
    # candidates is exchangeable, so a random s-subset of it is a uniform s-subset.
    pool = np.zeros(0, dtype=np.int64)
    while len(pool) < s:
        draw = rng.integers(0, m, size=2 * s + 16)
        pool = np.union1d(pool, draw[~picked[draw]])
    if len(pool) > s:
        pool = np.sort(rng.choice(pool, size=s, replace=False))
    return pool


def _run_engine(
    prob: _Problem, k: int, optimizer: str, epsilon: float, seed: int, stop: bool
) -> tuple[list[int], list[float], np.ndarray]:
    eng = _Engine(prob)
    picked = np.zeros(prob.m, dtype=bool)
    rng = np.random.default_rng(seed)
    s = max(1, math.ceil(prob.m / k * math.log(1.0 / epsilon)))
    order: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        if optimizer == "lazy":
            j = eng.best_all()
        else:
            j = eng.best_of(_draw(rng, picked, s))
        rows, nw, gain = _take(prob, j, eng.cur)
        if stop and gain <= 0:
            break
        order.append(j)
        gains.append(gain)
        picked[j] = True
        eng.g[j] = -np.inf
        eng.update(rows, nw)
    return order, gains, eng.cur


# --------------------------------------------------------------------------------------------
# public API


def _solve(prob: _Problem, k: int, opts: tuple[str, float, int], stop: bool) -> GreedyResult:
    opt, eps, seed = opts
    if opt == "naive":
        order, gains, cur = _run_naive(prob, k, bool(stop))
    else:
        order, gains, cur = _run_engine(prob, k, opt, eps, seed, bool(stop))
    order_a = np.asarray(order, dtype=np.int64)
    objective = float(np.sum(cur - prob.init))
    if prob.bonus is not None and len(order_a):
        objective += float(np.sum(prob.bonus[order_a]))
    return GreedyResult(order=order_a, gains=np.asarray(gains, dtype=_F64), objective=objective)


def facility_location(
    S: np.ndarray | sp.spmatrix,
    budget: int,
    *,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    init: np.ndarray | None = None,
    stop_if_zero_gain: bool = False,
) -> GreedyResult:
    """Greedily maximise ``f(A) = sum_i max_{j in A} S[i, j]`` with ``|A| <= budget``.

    ``S``: (n_targets, n_candidates) non-negative kernel, dense or sparse (CSR; missing = 0).
    ``init``: optional (n_targets,) non-negative starting maxima ``c``; the maximised function is
    then ``sum_i max(0, max_{j in A} S[i, j] - c_i)``, which is also the reported objective.
    ``optimizer``: "lazy" (exact, fast), "naive" (exact, from scratch) or "stochastic"
    (``epsilon`` and ``seed`` apply). Ties go to the lowest candidate index.
    """
    opts = _check_options(optimizer, epsilon, seed)
    K, colsum = _as_kernel(S, "S", want_colsum=init is None)
    k = _check_budget(budget, K.shape[1])
    c = None
    if init is not None:
        c = np.array(init, dtype=_F64, copy=True)
        if c.shape != (K.shape[0],):
            raise OptionError(f"init must have shape ({K.shape[0]},), got {c.shape}")
        _check_values(c, "init")
    return _solve(_Problem(K, init=c, colsum=colsum), k, opts, stop_if_zero_gain)


def fl_mutual_information(
    S: np.ndarray | sp.spmatrix,
    Q: np.ndarray | sp.spmatrix,
    budget: int,
    *,
    eta: float = 1.0,
    form: str = "min",
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    stop_if_zero_gain: bool = False,
) -> GreedyResult:
    """Greedily maximise facility-location mutual information with a query set.

    ``form="min"`` (submodlib's FL1MI): ``I(A; Q) = sum_i min(max_{j in A} S[i, j], eta * q_i)``
    with ``q_i = max_q Q[i, q]``; ``S``: (n, m), ``Q``: (n, n_query).
    ``form="additive"`` (DELIFT's printed form): ``f(A) = sum_i max_{j in A} S[i, j] + eta *
    sum_{j in A} q_j``; ``S`` must be square (n, n) with rows and columns the same pool and
    ``Q``: (n, n_query). The objective reported is ``I(A; Q)`` resp. ``f(A)``.
    """
    opts = _check_options(optimizer, epsilon, seed)
    if form not in ("min", "additive"):
        raise OptionError(f"form must be 'min' or 'additive', got {form!r}")
    K, colsum = _as_kernel(S, "S", want_colsum=form == "additive")
    n, m = K.shape
    k = _check_budget(budget, m)
    eta_f = _check_scalar(eta, "eta")
    q = _row_max(Q, n, "Q")
    if form == "min":
        prob = _Problem(K, cap=eta_f * q)
    else:
        if n != m:
            raise OptionError(f"form='additive' needs a square S (pool x pool), got {n}x{m}")
        prob = _Problem(K, bonus=eta_f * q, colsum=colsum)
    return _solve(prob, k, opts, stop_if_zero_gain)


def fl_conditional_gain(
    S: np.ndarray | sp.spmatrix,
    E: np.ndarray | sp.spmatrix,
    budget: int,
    *,
    nu: float = 1.0,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    stop_if_zero_gain: bool = False,
) -> GreedyResult:
    """Greedily maximise the FL conditional gain ``f(A | E)`` (submodlib's FLCG).

    ``f(A | E) = sum_i max(0, max_{j in A} S[i, j] - nu * max_k E[i, k])``; ``S``: (n, m),
    ``E``: (n, n_existing) similarities of each target to the already-held data (n_existing may
    be 0). The objective reported is ``f(A | E)``.
    """
    opts = _check_options(optimizer, epsilon, seed)
    K, _ = _as_kernel(S, "S")
    k = _check_budget(budget, K.shape[1])
    nu_f = _check_scalar(nu, "nu")
    c = nu_f * _row_max(E, K.shape[0], "E")
    return _solve(_Problem(K, init=c), k, opts, stop_if_zero_gain)
