"""DELIFT's utility kernels for a stage, exact or learned.

``exact``: every candidate pair (the kNN graph with ``--knn k``, else all pairs) is scored by the
model (:func:`tunesift.scoring.utility.utility_kernel`). ``learned``: a share ``label_fraction``
of the candidate pairs is scored (``labels``: each target's nearest candidates, round by round,
or whole candidate rows of a seeded sample of targets) and the rest is predicted by the additive
surrogate of :mod:`tunesift.scoring.surrogate`; the labels land in the same shared pair store as
exact runs' pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

log = logging.getLogger("tunesift")


@dataclass
class Kernel:
    """One UF kernel (rows = targets, columns = examples): ``values`` dense (NaN where not
    computed) or CSR on the candidate pattern; for ``learned``, ``labelled`` (bool CSR, the exact
    entries) and ``report`` (the surrogate's fidelity, see :func:`tunesift.scoring.surrogate.fill_kernel`);
    ``base`` (n_t,) the targets' no-example distance d0 (NaN for targets with no pair scored)."""

    values: object
    base: np.ndarray
    labelled: sp.csr_matrix | None = None
    report: dict | None = None


@dataclass
class StageKernels:
    """UF kernels of a stage: ``pool`` (n, n) and ``cross`` (n, m: pool x target/existing set)
    or None; ``surrogate``: the learned kernels' fidelity reports ({"pool": ..., "cross": ...})."""

    pool: object
    cross: object | None
    surrogate: dict = field(default_factory=dict)


def candidate_pattern(n_t: int, n_e: int, knn: sp.csr_matrix | None, exclude_diagonal: bool) -> sp.csr_matrix:
    """The pairs a kernel covers: the kNN pattern, or all (n_t, n_e) pairs minus the diagonal."""
    if knn is not None:
        return knn.tocsr().astype(bool)
    full = np.ones((n_t, n_e), dtype=bool)
    if exclude_diagonal:
        np.fill_diagonal(full, False)
    return sp.csr_matrix(full)


def twin_groups(records) -> np.ndarray | None:
    """A group id per record (n,) int64, equal for records that are the same example (prompt, its
    role, response and context identical: a repeated row); None when every record differs."""
    seen: dict = {}
    groups = np.array([seen.setdefault((r.prompt, r.prompt_role, r.response, r.context), len(seen))
                       for r in records], dtype=np.int64)
    return groups if len(seen) < len(records) else None


def twin_links(groups: np.ndarray) -> sp.csr_matrix:
    """(n, n) bool CSR: each repeated record linked both ways to its group's first record,
    2 (m - 1) entries for a group of m (not m^2): enough for a pick of the first to cover every
    copy, and the greedy prefers the first (it covers the most)."""
    n = len(groups)
    _, first_of, group_of = np.unique(groups, return_index=True, return_inverse=True)
    first = first_of[group_of]  # (n,) each record's group's first record
    copies = np.flatnonzero(first != np.arange(n))
    rows, cols = np.concatenate([copies, first[copies]]), np.concatenate([first[copies], copies])
    return sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, n))


def drop_twins(pattern: sp.csr_matrix, groups: np.ndarray, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """``pattern`` without the pairs of one group (the diagonal included). ``rows``: the record
    behind each pattern row (default: row i is record i)."""
    p = pattern.tocoo()
    r = p.row if rows is None else rows[p.row]
    keep = groups[r] != groups[p.col]
    return sp.csr_matrix((np.ones(int(keep.sum()), dtype=bool), (p.row[keep], p.col[keep])), shape=pattern.shape)


def knn_candidates(e_t: np.ndarray, e_e: np.ndarray, opt, *, same: bool,
                   twins: np.ndarray | None = None) -> sp.csr_matrix | None:
    """The ``--knn`` candidate pattern (n_t, n_e): each target's k most similar examples (None:
    ``--knn 0``, all pairs). For the same records a target is never its own candidate, unless
    ``--keep-diagonal``, where it takes one extra slot so that k others are still scored
    (``ann_knn_pattern`` caps k at the columns available); nor is a copy of it (``twins``:
    :func:`twin_groups`), which would be scored as "copy the answer" like the diagonal: the rows
    of repeated records are searched again with spare slots, and their copies dropped."""
    if not opt.knn:
        return None
    from ..scoring.embedding import ann_knn_pattern, cosine_similarity_kernel

    keep_self = same and opt.keep_diagonal
    pattern = ann_knn_pattern(e_t, e_e, opt.knn + 1 if keep_self else opt.knn, exclude_self=same and not keep_self,
                              method=opt.ann, seed=opt.seed).tocsr()
    if twins is None or not same or keep_self:
        return pattern
    size = np.bincount(twins)
    rows = np.flatnonzero(size[twins] > 1)  # the records with copies: only they need spare slots
    wide = ann_knn_pattern(e_t[rows], e_e, opt.knn + int(size.max()), method=opt.ann, seed=opt.seed)
    wide = drop_twins(wide, twins, rows)  # itself and its copies out
    cos = cosine_similarity_kernel(e_t[rows], e_e, wide).tocsr()
    r_new, c_new = [], []
    for i in range(len(rows)):  # each such row keeps its k nearest of the rest
        lo, hi = cos.indptr[i], cos.indptr[i + 1]
        top = np.argsort(-cos.data[lo:hi], kind="stable")[:opt.knn]
        r_new.append(np.full(len(top), rows[i]))
        c_new.append(cos.indices[lo:hi][top])
    p = pattern.tocoo()
    keep = size[twins[p.row]] == 1
    r = np.concatenate([p.row[keep], *r_new])
    c = np.concatenate([p.col[keep], *c_new])
    return sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=pattern.shape)


def nan_twins(uf: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """A dense pool kernel (n, n) with the pairs of each group of repeated records set to NaN,
    like the excluded diagonal (a copy of the answer is no example); a copy when any changes."""
    size = np.bincount(groups)
    if size.max() < 2:
        return uf
    uf = np.array(uf, dtype=np.float64)
    for g in np.flatnonzero(size > 1):
        members = np.flatnonzero(groups == g)
        uf[np.ix_(members, members)] = np.nan
    return uf


def one_kernel(lm, renderer, targets, examples, opt, *, same: bool, pattern=None, e_t=None, e_e=None, runner=None,
               progress=None, label: str = "pool x pool", twins: np.ndarray | None = None) -> Kernel:
    """UF for ``targets`` x ``examples`` under ``opt.utility`` (``exact`` or ``learned``).

    ``pattern``: the kNN candidates (None: all pairs); ``e_t`` (n_t, d) / ``e_e`` (n_e, d): unit
    embeddings (``learned`` needs them); ``same``: targets and examples are the same records (the
    diagonal rule applies); ``progress(label)`` returns a ``(done, total)`` callback; ``twins``:
    :func:`twin_groups` of the pool, whose pairs the diagonal rule covers too (a dense exact
    kernel holds NaN there, a sparse one leaves them out).
    """
    from ..scoring.utility import utility_kernel

    diag = not opt.keep_diagonal

    def kernel(pairs, what: str):
        return utility_kernel(lm, renderer, targets, examples, pairs=pairs, exclude_diagonal=diag, same=same,
                              token_budget=opt.token_budget, cache_dir=opt.cache_dir, runner=runner,
                              progress=progress(what) if progress else None)

    if opt.utility == "exact":
        k = kernel(pattern, f"DELIFT kernel ({label})")
        values = k.values(opt.distance)
        if twins is not None and same and diag and not sp.issparse(values):
            values = nan_twins(values, twins)  # scored (the dense batches are cheaper whole), not used
        return Kernel(values, k.base_distance(opt.distance))

    from ..scoring import surrogate as sg

    n_t, n_e = len(targets), len(examples)
    cand = candidate_pattern(n_t, n_e, pattern, exclude_diagonal=diag and same)
    if twins is not None and same and diag:  # no labels on copies of a record: they would teach "copy"
        cand = drop_twins(cand, twins)
    # nearest: each row's likely FL maximum exact, the fill for the rest (the best pick in the sweep);
    # rows: one no-example pass per labelled target (the cheapest at tiny label fractions). Uniform or
    # balanced labels did not pick better; the cosine pair term did not on Alpaca, was ahead on GSM8K
    # at a 30% budget with 2-5% labels (docs/results.md).
    m = _n_labels(cand, opt.label_fraction)
    if opt.labels == "nearest":
        from ..scoring.embedding import cosine_similarity_kernel

        labels = sg.nearest_pairs(cand, cosine_similarity_kernel(e_t, e_e, cand), m, seed=opt.seed)
    else:
        labels = sg.row_pairs(cand, m, seed=opt.seed)
    log.info("learned utility (%s): scoring %d of %d candidate pairs exactly (label fraction %g, %s), "
             "in %d of %d targets", label, labels.nnz, cand.nnz, opt.label_fraction, opt.labels,
             int(np.count_nonzero(labels.getnnz(axis=1))), n_t)
    k = kernel(labels, f"DELIFT labels ({label})")
    row_feats, col_feats = (sg.shipped_features(e_t, k.n_tokens) if same else
                            sg.shipped_features(e_t, k.n_tokens, e_e, _response_tokens(renderer, examples)))
    filled = sg.fill_kernel(cand, k.values(opt.distance), row_feats=row_feats, col_feats=col_feats,
                            parts=sg.DEFAULT_PARTS, holdout_rows=opt.labels == "rows", seed=opt.seed)
    _log_fidelity(label, filled.report)
    return Kernel(filled.values, k.base_distance(opt.distance), filled.labelled, filled.report)


def stage_kernels(lm, renderer, records, other, opt, *, pattern=None, cross_pattern=None, e_pool=None,
                  e_other=None, runner=None, progress=None, twins: np.ndarray | None = None) -> StageKernels:
    """The pool kernel and, with a second set, the cross kernel (pool x target/existing);
    ``twins``: :func:`twin_groups` of the pool."""
    kw = dict(runner=runner, progress=progress)
    pool = one_kernel(lm, renderer, records, records, opt, same=True, pattern=pattern, e_t=e_pool, e_e=e_pool,
                      label="pool x pool", twins=twins, **kw)
    cross = (one_kernel(lm, renderer, records, other, opt, same=False, pattern=cross_pattern, e_t=e_pool,
                        e_e=e_other, label=f"pool x {opt.stage}", **kw) if other else None)
    reports = {name: k.report for name, k in (("pool", pool), ("cross", cross)) if k is not None and k.report}
    return StageKernels(pool.values, cross.values if cross else None, reports)


def _response_tokens(renderer, records) -> np.ndarray:
    """Scored response tokens per record (n,), as the kernel counts them."""
    return np.array([len(renderer.encode(r).response) for r in records], dtype=np.int64)


def _n_labels(cand: sp.csr_matrix, fraction: float) -> int:
    return max(1, int(round(fraction * cand.nnz))) if cand.nnz else 0


def _log_fidelity(what: str, rep: dict) -> None:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    log.info("learned utility (%s): %d labelled, %d held out (by %s): Spearman %s, R^2 %s, within-row Spearman %s",
             what, rep["labelled_pairs"], rep["heldout_pairs"], rep.get("heldout_by", "pair"), f(rep["spearman"]), f(rep["r2"]),
             f(rep["within_row_spearman"]))
