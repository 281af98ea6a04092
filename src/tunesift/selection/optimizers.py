"""Greedy optimisers for the facility-location objectives of :mod:`tunesift.selection.objectives`.

Every optimiser works on an :class:`~tunesift.selection.objectives.FLObjective` (FL, FLMI or FLCG,
built by :func:`~tunesift.selection.objectives.fl_objective` and friends) through
:func:`maximize`; the objective knows nothing of how it is optimised.

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

from tunesift.errors import OptionError
from tunesift.selection.kernels import check_budget
from tunesift.selection.objectives import CHUNK_BYTES, FLObjective

__all__ = ["OPTIMIZERS", "GreedyResult", "check_options", "incremental_greedy", "maximize", "naive_greedy"]

_F64 = np.float64
_EPS = float(np.finfo(np.float64).eps)
OPTIMIZERS = ("naive", "lazy", "stochastic")
# A dense row whose estimated live fraction (entries above its current maximum) is at most this
# moves to the compact live-entry store.
CONVERT_FRACTION = 1.0 / 32.0


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


def check_options(optimizer: object, epsilon: object, seed: object) -> tuple[str, float, int]:
    """Validated (optimizer, epsilon, seed): one of :data:`OPTIMIZERS`, epsilon in (0, 1), an int seed."""
    if optimizer not in OPTIMIZERS:
        raise OptionError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    try:
        eps = float(epsilon)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OptionError(f"epsilon must be a number in (0, 1), got {epsilon!r}") from None
    if not 0.0 < eps < 1.0:
        raise OptionError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    if seed < 0:  # numpy's generators take none; the CLI refuses it too
        raise OptionError(f"seed must be >= 0, got {seed}")
    return str(optimizer), eps, int(seed)


# --------------------------------------------------------------------------------------------
# naive greedy


def naive_greedy(prob: FLObjective, k: int, stop: bool) -> tuple[list[int], list[float], np.ndarray]:
    """Greedy that recomputes every remaining candidate's gain from scratch each step, O(k n m):
    (picked columns, their gains, final per-row maxima (n,))."""
    cur = prob.init.copy()
    remaining = np.ones(prob.m, dtype=bool)
    order: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        cols = np.flatnonzero(remaining)
        vals = prob.exact_gains(cols, cur)
        i = int(np.argmax(vals))
        j = int(cols[i])
        rows, nw, gain = prob.take(j, cur)
        if stop and gain <= 0:
            break
        order.append(j)
        gains.append(gain)
        remaining[j] = False
        cur[rows] = nw
    return order, gains, cur


# --------------------------------------------------------------------------------------------
# incremental engine (lazy and stochastic)


class IncrementalGains:
    """Incremental gains ``g`` (m,), current maxima ``cur`` (n,) and the live-entry store."""

    def __init__(self, prob: FLObjective) -> None:
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
            self.rc = int(min(256, max(1, CHUNK_BYTES // (m * itemsize))))
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
            conv = frac <= CONVERT_FRACTION * len(self.probe)
            if cap is not None:
                conv |= cap[rr] <= nn
            if conv.any():
                self._to_store(rr[conv], blk[conv], nn[conv])
            # delta_j = sum_r clip(S[r, j], old_r, new_r) - old_r. The clip is exact when the
            # bounds are representable in the kernel's dtype (always for plain FL on float32); the
            # float32 subtraction when old_r = 0 or new_r <= 2 old_r (Sterbenz). Otherwise a term
            # could round by 2^-24 of its size, far outside the error window: float64 then.
            if blk.dtype == np.float32:
                lo, hi = oo.astype(np.float32), nn.astype(np.float32)
                if not (np.array_equal(lo, oo) and np.array_equal(hi, nn)) or np.any((lo > 0) & (hi > 2 * lo)):
                    blk = blk.astype(_F64)
                    lo, hi = oo, nn
            else:
                lo, hi = oo, nn
            np.clip(blk, lo[:, None], hi[:, None], out=blk)
            # Each term is subtracted before the sum: a term is 0 exactly when the entry is not
            # above its row's old maximum, and a sum of terms >= 0 with one > 0 is > 0. (Summing
            # first and subtracting sum(old) after could round a one-ulp change to 0 and leave a
            # too-high gain marked exact: lazy greedy then picked other than naive.)
            blk -= lo[:, None]
            total += np.add.reduce(blk, axis=0, dtype=_F64)
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


def draw_sample(rng: np.random.Generator, picked: np.ndarray, s: int) -> np.ndarray:
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


def incremental_greedy(
    prob: FLObjective, k: int, optimizer: str, epsilon: float, seed: int, stop: bool
) -> tuple[list[int], list[float], np.ndarray]:
    """Lazy (``optimizer="lazy"``) or stochastic greedy over incrementally updated gains: (picked
    columns, their gains, final per-row maxima (n,))."""
    eng = IncrementalGains(prob)
    picked = np.zeros(prob.m, dtype=bool)
    rng = np.random.default_rng(seed)
    s = max(1, math.ceil(prob.m / k * math.log(1.0 / epsilon)))
    order: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        if optimizer == "lazy":
            j = eng.best_all()
        else:
            j = eng.best_of(draw_sample(rng, picked, s))
        rows, nw, gain = prob.take(j, eng.cur)
        if stop and gain <= 0:
            break
        order.append(j)
        gains.append(gain)
        picked[j] = True
        eng.g[j] = -np.inf
        eng.update(rows, nw)
    return order, gains, eng.cur


# --------------------------------------------------------------------------------------------
# any optimiser


def maximize(
    objective: FLObjective,
    budget: int,
    *,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
    stop_if_zero_gain: bool = False,
) -> GreedyResult:
    """Greedily maximise ``objective`` (see :mod:`tunesift.selection.objectives`) with at most
    ``budget`` picks. ``optimizer``: "lazy" (exact, fast), "naive" (exact, from scratch) or
    "stochastic" (``epsilon`` and ``seed`` apply). Ties go to the lowest candidate index."""
    opt, eps, seed = check_options(optimizer, epsilon, seed)
    k = check_budget(budget, objective.m)
    stop = bool(stop_if_zero_gain)
    if opt == "naive":
        order, gains, cur = naive_greedy(objective, k, stop)
    else:
        order, gains, cur = incremental_greedy(objective, k, opt, eps, seed, stop)
    order_a = np.asarray(order, dtype=np.int64)
    return GreedyResult(order=order_a, gains=np.asarray(gains, dtype=_F64), objective=objective.value(cur, order_a))
