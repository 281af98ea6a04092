"""Partitioned greedy facility location (GreeDi) for pools whose kernel does not fit in memory.

GreeDi (Mirzasoleiman, Karbasi, Sarkar and Krause, "Distributed Submodular Maximization",
NeurIPS 2013) runs in two rounds:

1. the pool of ``n`` records is split into ``m`` random parts (seeded); on each part ``P`` the
   greedy of :func:`tunesift.selection.submodular.facility_location` picks ``kappa`` records
   (``local_budget``, default the global budget ``k``) using only the kernel of ``P`` with
   itself, ``K[P, P]``;
2. the picks are pooled into the union ``U`` (at most ``m * kappa`` records) and the greedy
   picks ``k`` records from ``U`` on ``K[U, U]``.

The answer is the better, by the facility-location value on the union
``f_U(A) = sum_{i in U} max_{j in A} K[i, j]``, of the round-2 set and the best round-1 set
(its first ``k`` picks; round-1 sets of fewer than ``k`` picks do not compete). With ``m = 1`` the only part is the whole pool and its greedy result is
returned as is (identical to the full greedy).

``weighted=True`` (an option, not in the paper) weights each union record ``u`` by ``w_u``,
the number of records of its part whose most similar round-1 pick is ``u``, and maximises
``f_U^w(A) = sum_{i in U} w_i max_{j in A} K[i, j]`` in round 2 (and for the comparison): the
union then stands for the whole pool instead of counting each representative once, and
``f_U^w`` estimates the pool's objective. It helps most when the local budget is small.

The full ``n x n`` kernel is never formed: every kernel is built on the fly for one index set,
from a callable ``kernel_fn(rows, cols)`` (global indices) or from embeddings, either dense
``(cos + 1) / 2`` or sparse at the ``knn`` (approximate) nearest neighbours within the set
(:func:`tunesift.scoring.embedding.ann_knn_pattern`, the record itself included). Peak memory is
that of the largest of those kernels: ``(n / m)^2`` or ``|U|^2`` dense entries, ``n / m * knn``
sparse ones.

No worst-case guarantee: GreeDi's bounds (``(1 - 1/e)^2 / min(m, k)``; ``(1 - 1/e) / 2`` in
expectation for random parts, Barbosa et al., ICML 2015) assume each round evaluates ``f`` on the
whole pool, and here a part sees ``K[P, P]`` and the merge round ``K[U, U]`` (local evaluation: the
full kernel is never formed), so a record covering the whole pool can lose the merge round
(docs/selection.md gives a kernel where the answer covers 5% of the best one's value). On
embedding kernels the measured ratio to the full greedy is far better (docs/scaling.md). Note
that the reported ``objective`` is ``f_U``, the value on the union's records; the value on the
whole pool is :func:`fl_value_blocked` (embeddings) or :func:`fl_value` (a kernel).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tunesift.errors import OptionError
from tunesift.selection.objectives import fl_assignment
from tunesift.selection.optimizers import check_options
from tunesift.selection.submodular import GreedyResult, facility_location
from tunesift.similarity import cos_to_unit, normalise

__all__ = [
    "KernelFn",
    "PartitionedResult",
    "fl_value",
    "fl_value_blocked",
    "partitioned_facility_location",
]

log = logging.getLogger("tunesift")

KernelFn = Callable[[np.ndarray, np.ndarray], "np.ndarray | sp.spmatrix"]
"""``kernel_fn(rows, cols)``: (len(rows), len(cols)) non-negative kernel (dense or sparse) between
the records with global indices ``rows`` (targets) and ``cols`` (candidates); int64 arrays."""

_F64 = np.float64
_GATHER_BYTES = 1 << 25  # dense row chunks when evaluating f on a set of columns


@dataclass(frozen=True)
class PartitionedResult(GreedyResult):
    """A :class:`GreedyResult` with global indices, plus how GreeDi got it.

    ``order``: (k,) int64 global record indices in pick order; ``gains``: (k,) float64 marginal gains on ``K[U, U]``
    (row-weighted with ``weighted``; on the whole pool when ``m = 1``); ``objective``: ``f_U``
    (``f_U^w``) of the set.
    ``union``: (u,) int64 sorted global indices of the round-1 picks. ``winner``: -1 when the
    round-2 greedy won, else the index of the part whose round-1 set won.
    ``part_objectives``: (m,) float64 ``f_U`` of each part's round-1 set (its first k picks;
    reported even for sets of fewer than k picks, which do not compete).
    ``final_objective``: ``f_U`` of the round-2 set. ``parts``: (n,) int32 part of each record.
    """

    union: np.ndarray
    winner: int
    part_objectives: np.ndarray
    final_objective: float
    parts: np.ndarray


def fl_value(S: np.ndarray | sp.spmatrix, cols: np.ndarray) -> float:
    """``f(A) = sum_i max_{j in A} S[i, j]`` for columns ``cols`` (A) of a kernel ``S`` (n, m).

    Dense or sparse (missing entries are 0; entries must be >= 0); float64 sum.
    """
    cols = np.asarray(cols, dtype=np.int64)
    if len(cols) == 0 or S.shape[0] == 0:
        return 0.0
    if sp.issparse(S):
        sub = sp.csc_matrix(S)[:, cols]
        return float(np.asarray(sub.max(axis=1).toarray(), dtype=_F64).sum())
    step = max(1, _GATHER_BYTES // (8 * len(cols)))
    total = 0.0
    for r0 in range(0, S.shape[0], step):
        total += float(S[r0 : r0 + step][:, cols].max(axis=1).astype(_F64).sum())
    return total


def fl_value_blocked(
    embeddings: np.ndarray,
    cols: np.ndarray,
    *,
    targets: np.ndarray | None = None,
    block_rows: int | None = None,
) -> float:
    """``f(A) = sum_i max_{j in A} (cos(e_i, e_j) + 1) / 2`` with the dense embedding kernel.

    ``embeddings``: (n, d); ``cols``: indices of the selected rows A; ``targets``: indices of
    the rows i summed over (default all n; a random sample gives an unbiased estimate of the
    mean). Row blocks of ~16M similarities: O(|targets| |A| d) time, never n x n memory.
    """
    cols = np.asarray(cols, dtype=np.int64)
    if len(cols) == 0:
        return 0.0
    sel_t = np.ascontiguousarray(normalise(embeddings[cols]).T)  # (d, |A|), normalised once
    rows = np.arange(len(embeddings)) if targets is None else np.asarray(targets, dtype=np.int64)
    step = block_rows or max(1, (1 << 24) // len(cols))
    total = 0.0
    for r0 in range(0, len(rows), step):
        K = cos_to_unit(normalise(embeddings[rows[r0 : r0 + step]]) @ sel_t)
        total += float(K.max(axis=1).astype(_F64).sum())
    return total


def _gains_along(S: np.ndarray | sp.spmatrix, cols: np.ndarray) -> np.ndarray:
    """Marginal FL gains (len(cols),) float64 of adding ``cols`` to the empty set in order."""
    cur = np.zeros(S.shape[0], dtype=_F64)
    out = np.empty(len(cols), dtype=_F64)
    if sp.issparse(S):
        C = sp.csc_matrix(S)[:, cols]
        for t in range(len(cols)):
            rows = C.indices[C.indptr[t] : C.indptr[t + 1]]
            v = C.data[C.indptr[t] : C.indptr[t + 1]].astype(_F64)
            out[t] = np.maximum(v - cur[rows], 0.0).sum()
            cur[rows] = np.maximum(cur[rows], v)
        return out
    for t, j in enumerate(cols):
        col = S[:, j].astype(_F64)
        out[t] = np.maximum(col - cur, 0.0).sum()
        np.maximum(cur, col, out=cur)
    return out


def _assign(S: np.ndarray | sp.spmatrix, cols: np.ndarray) -> np.ndarray:
    """(n,) int64: for each row of ``S`` the position in ``cols`` of its most similar column
    (lowest position among ties), -1 where the row has no positive entry in ``cols``."""
    return fl_assignment(S, cols)[0]


def _scale_rows(S: np.ndarray | sp.spmatrix, w: np.ndarray, *, inplace: bool = False) -> np.ndarray | sp.spmatrix:
    """``diag(w) @ S`` (rows scaled by the non-negative weights ``w``), same format, float32.

    ``inplace``: a dense float32 ``S`` the caller built and no longer needs unscaled is scaled
    in place; a copy would hold two |U| x |U| kernels at the merge round, twice the peak the
    partitioning promises (a user's ``kernel_fn`` may return its own array: never in place)."""
    w32 = w.astype(np.float32)
    if sp.issparse(S):
        csr = sp.csr_matrix(S, dtype=np.float32, copy=True)
        csr.data *= np.repeat(w32, np.diff(csr.indptr))
        return csr
    if inplace and isinstance(S, np.ndarray) and S.dtype == np.float32 and S.flags.writeable:
        S *= w32[:, None]
        return S
    return np.asarray(S, dtype=np.float32) * w32[:, None]


def _int_option(value: object, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OptionError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise OptionError(f"{name} must be {rng}, got {v}")
    return v


def check_partitions(n_pool: int, budget: object, partitions: object,
                     local_budget: object = None) -> tuple[int, int, int]:
    """``(k, m, kappa)`` for GreeDi over ``n_pool`` records, or a one-line OptionError: budget and
    partitions within the pool, and the m parts' local picks (``kappa`` each, at most a part's
    size) holding at least k records. Cheap: callers check before embedding anything."""
    k = _int_option(budget, "budget", 1, n_pool)
    m = _int_option(partitions, "partitions", 1, n_pool)
    kappa = k if local_budget is None else _int_option(local_budget, "local_budget", 1)
    sizes = n_pool // m + (np.arange(m) < n_pool % m)  # the parts' sizes (np.array_split's)
    if np.minimum(kappa, sizes).sum() < k:  # m = 1 included: a local_budget is never ignored
        raise OptionError(
            f"the union of {m} parts x local_budget {kappa} holds fewer than budget {k} records; "
            "raise local_budget or use fewer partitions"
        )
    return k, m, kappa


def _square_kernel_maker(
    data: np.ndarray | KernelFn, knn: int | None, ann_method: str, seed: int
) -> Callable[[np.ndarray], np.ndarray | sp.spmatrix]:
    """``make(idx)`` -> the (len(idx), len(idx)) kernel among the records ``idx`` (global)."""
    if callable(data):
        if knn is not None:
            raise OptionError("knn applies to embeddings; a kernel_fn builds its own kernel")
        return lambda idx: data(idx, idx)
    from tunesift.scoring.embedding import ann_knn_pattern, cosine_similarity_kernel

    def make(idx: np.ndarray) -> np.ndarray | sp.spmatrix:
        sub = data[idx]
        if knn is None:
            return cosine_similarity_kernel(sub, sub)
        pattern = ann_knn_pattern(sub, sub, knn, method=ann_method, seed=seed)
        return cosine_similarity_kernel(sub, sub, pattern)

    return make


def partitioned_facility_location(
    data: np.ndarray | KernelFn,
    budget: int,
    *,
    partitions: int,
    n: int | None = None,
    local_budget: int | None = None,
    knn: int | None = None,
    ann_method: str = "auto",
    seed: int = 0,
    weighted: bool = False,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
) -> PartitionedResult:
    """GreeDi: greedy facility location per random part, then over the union of the picks.

    ``data``: either (n, d) embeddings (the kernel is ``(cos + 1) / 2``: dense per index set, or
    with ``knn`` only at each record's ``knn`` nearest neighbours in the set, found by
    ``ann_knn_pattern(method=ann_method)``), or a callable ``kernel_fn(rows, cols)`` returning the
    (len(rows), len(cols)) kernel for global int64 indices; ``n`` (the pool size) is then
    required. ``budget``: k, 1 <= k <= n. ``partitions``: m >= 1 random parts of near-equal size
    (``numpy`` Generator(seed) permutation; each part is kept in ascending index order).
    ``local_budget``: kappa, picks per part (default k; capped at the part's size); the union
    holds at most ``m * kappa`` records and must hold at least k. With ``m * kappa >= n`` the
    union is the whole pool and round 2 is the full greedy: for large budgets pass a smaller
    kappa (e.g. ``ceil(2 k / m)``). ``weighted``: weight the union's rows by the number of
    records each represents (module docstring). ``optimizer``/``epsilon`` are passed to
    :func:`facility_location` (``seed`` too).

    Returns a :class:`PartitionedResult` with global indices (see the module docstring for the
    objective). Deterministic for a seed (given a deterministic kernel).
    """
    if callable(data):
        if n is None:
            raise OptionError("n (the pool size) is required with a kernel_fn")
        n_pool = _int_option(n, "n", 1)
    else:
        data = np.asarray(data)
        if data.ndim != 2:
            raise OptionError(f"embeddings must be a 2-d array, got shape {data.shape}")
        if n is not None and n != len(data):
            raise OptionError(f"n ({n}) does not match the {len(data)} embeddings")
        n_pool = len(data)
        if n_pool == 0:
            raise OptionError("no records to select from")
    if knn is not None:
        knn = _int_option(knn, "knn", 1)
    k, m, kappa = check_partitions(n_pool, budget, partitions, local_budget)
    check_options(optimizer, epsilon, seed)  # before the permutation reads the seed
    make = _square_kernel_maker(data, knn, ann_method, seed)
    fl_opts = {"optimizer": optimizer, "epsilon": epsilon, "seed": seed}
    if m == 1:  # the only part is the pool itself: its greedy result is the answer
        everyone = np.arange(n_pool, dtype=np.int64)
        res = facility_location(make(everyone), k, **fl_opts)
        return PartitionedResult(
            order=res.order,
            gains=res.gains,
            objective=res.objective,
            union=np.sort(res.order),
            winner=0,
            part_objectives=np.array([res.objective]),
            final_objective=res.objective,
            parts=np.zeros(n_pool, dtype=np.int32),
        )

    perm = np.random.default_rng(seed).permutation(n_pool)
    chunks = [np.sort(c) for c in np.array_split(perm, m)]
    parts = np.empty(n_pool, dtype=np.int32)
    for p, idx in enumerate(chunks):
        parts[idx] = p

    picks: list[np.ndarray] = []
    weight = np.zeros(n_pool, dtype=_F64) if weighted else None
    for p, idx in enumerate(chunks):
        kp = min(kappa, len(idx))
        Kp = make(idx)
        res = facility_location(Kp, kp, **fl_opts)
        picks.append(idx[res.order])  # global indices, pick order
        if weight is not None:
            got = _assign(Kp, res.order)
            weight[idx[res.order]] = np.bincount(got[got >= 0], minlength=kp)
        del Kp
        log.debug("GreeDi part %d/%d: %d records, %d picked", p + 1, m, len(idx), kp)

    union = np.unique(np.concatenate(picks))
    KU = make(union)
    if weight is not None:
        KU = _scale_rows(KU, weight[union], inplace=not callable(data))
    final = facility_location(KU, k, **fl_opts)
    final_obj = float(final.objective)
    KU_cols = KU.tocsc() if sp.issparse(KU) else KU  # column access, converted once
    part_obj = np.array(
        [fl_value(KU_cols, np.searchsorted(union, pk[:k])) for pk in picks], dtype=_F64
    )
    # round-1 sets compete only when they are full-sized (kappa >= k and a part that large)
    full_sized = np.array([len(pk) >= k for pk in picks])
    best = int(np.argmax(np.where(full_sized, part_obj, -np.inf)))
    if full_sized[best] and part_obj[best] > final_obj:  # ties go to the round-2 set
        pos = np.searchsorted(union, picks[best][:k])
        gains = _gains_along(KU_cols, pos)
        order, objective, winner = picks[best][:k], float(part_obj[best]), best
    else:
        order, gains, objective, winner = union[final.order], final.gains, final_obj, -1
    return PartitionedResult(
        order=np.asarray(order, dtype=np.int64),
        gains=np.asarray(gains, dtype=_F64),
        objective=objective,
        union=union,
        winner=winner,
        part_objectives=part_obj,
        final_objective=final_obj,
        parts=parts,
    )
