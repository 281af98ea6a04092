"""RDS+ (representation-based data selection; docs/methods.md#rds): cosine between the model's
weighted-mean-pooled hidden states (:mod:`tunesift.scoring.rds`) of pool and target records.

Task stage (``--stage task --target T``), RDS+'s own rule: S = P T^T (n, m), the cosine of every
pool record to every target record; the targets take turns, in target order, and each turn adds
the target's most similar pool record not yet taken (round-robin over the target records, the
reference code's ``--selection_method max``), until k are picked. Instruction stage (no target):
the pool is its own target set, aggregated by the mean: score_i = mean_j cos(p_i, p_j) =
cos(p_i, c) |c| with c the mean pool vector, so the records closest to the pool's centroid come
first (see docs/methods.md for why this variant and what it costs in diversity).
"""

from __future__ import annotations

import numpy as np

from ..render import renderer_for
from .registry import Job, Picked

SIM_BLOCK = 1 << 24  # similarities formed at a time (128 MB of float64)


def ranked_by_target(pool: np.ndarray, targets: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each target's ``depth`` most similar pool records, best first, and each pool record's best target.

    ``pool`` (n, d) and ``targets`` (m, d) unit rows. Returns ``ranked`` (m, depth) int64 pool
    indices by decreasing cosine (ties: lower pool index first), ``best`` (n,) float64 the max
    cosine of each pool record to any target and ``nearest`` (n,) int64 that target's index
    (ties: the lower index). Similarities are formed in float64, a block of targets at a time
    (at most ``SIM_BLOCK`` values), so memory is O(m depth + n), never the whole n x m matrix.
    """
    n, m = len(pool), len(targets)
    depth = min(depth, n)
    p = pool.astype(np.float64)
    ranked = np.zeros((m, depth), dtype=np.int64)
    best = np.full(n, -np.inf)
    nearest = np.zeros(n, dtype=np.int64)
    step = max(1, SIM_BLOCK // max(1, n))
    for a in range(0, m, step):
        s = targets[a:a + step].astype(np.float64) @ p.T  # (b, n)
        for r, row in enumerate(s):
            # the depth largest (all ties at the cut included), then sorted: decreasing cosine, index
            cand = np.flatnonzero(row >= np.partition(row, n - depth)[n - depth]) if depth < n else np.arange(n)
            ranked[a + r] = cand[np.lexsort((cand, -row[cand]))][:depth]
        top = s.argmax(axis=0)  # first (lowest) target index among ties
        val = s[top, np.arange(n)]
        better = val > best
        best[better], nearest[better] = val[better], a + top[better]
    return ranked, best, nearest


def round_robin(ranked: np.ndarray, k: int) -> np.ndarray:
    """RDS+'s round-robin over targets: turns go to targets 0, 1, ..., m-1, 0, 1, ...; each turn
    takes the target's best pool record (row of ``ranked``, best first) that is not taken yet,
    until ``k`` records are taken or every list is used up. Returns the taken indices in order.

    ``ranked`` (m, depth) needs depth >= min(n, k) for k picks: before a target's turn fewer than
    k records are taken, so its best untaken record lies in its first k. (The reference code
    spends the turn of a target whose next record was already taken; here the turn moves on to
    the target's next record, so every round adds one record per target.)
    """
    m, depth = ranked.shape
    taken: set[int] = set()
    out: list[int] = []
    ptr = [0] * m
    while len(out) < k:
        moved = False
        for j in range(m):
            row = ranked[j]
            while ptr[j] < depth and int(row[ptr[j]]) in taken:
                ptr[j] += 1
            if ptr[j] == depth:
                continue
            i = int(row[ptr[j]])
            taken.add(i)
            out.append(i)
            moved = True
            if len(out) == k:
                break
        if not moved:
            break
    return np.asarray(out, dtype=np.int64)


def task_order(pool: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, best, nearest): the first k of ``order`` are the round-robin picks
    (:func:`round_robin`), the rest follow by decreasing max cosine to the target set (ties: input
    order); ``best`` / ``nearest`` as :func:`ranked_by_target`."""
    ranked, best, nearest = ranked_by_target(pool, targets, max(1, k))
    picks = round_robin(ranked, k)
    rest = np.setdiff1d(np.arange(len(pool)), picks)
    rest = rest[np.lexsort((rest, -best[rest]))]
    return np.concatenate([picks, rest]).astype(np.int64), best, nearest


def centroid_scores(pool: np.ndarray) -> np.ndarray:
    """Instruction stage (pool only): cos(p_i, c), c = mean_j p_j (n,) float64.

    With unit rows, mean_j cos(p_i, p_j) = p_i . c = |c| cos(p_i, c): RDS+'s mean aggregation
    with the pool as its own target set ranks exactly like this. A zero centroid gives zeros."""
    p = pool.astype(np.float64)
    c = p.mean(axis=0)
    norm = np.linalg.norm(c)
    return p @ (c / norm) if norm > 0 else np.zeros(len(p))


def run_rds(job: Job) -> Picked:
    """RDS+: round-robin over the target records (task stage) or closeness to the pool centroid
    (instruction stage). Columns: ``rds`` (max cosine to a target record; instruction stage: the
    cosine to the pool centroid) and, in the task stage, ``nearest_target`` (that target's id)."""
    from ..scoring.rds import rds_embeddings

    opt = job.opt
    renderer = renderer_for(job.lm, opt.template, opt.max_length)
    kw = {"token_budget": opt.token_budget or 4096, "cache_dir": opt.cache_dir}
    advance = job.progress("rds embeddings", len(job.records) + len(job.other or []))
    pool = rds_embeddings(job.lm, renderer, job.records, on_batch=advance, **kw)
    if opt.stage == "task":
        targets = rds_embeddings(job.lm, renderer, job.other, on_batch=advance, **kw)
        order, best, nearest = task_order(pool, targets, job.k)
        ids = np.array([job.other[j].id for j in nearest], dtype=object)
        return Picked({"rds": best, "nearest_target": ids}, order,
                      {"objective": "round-robin over target records (RDS+)", "targets": len(targets)})
    score = centroid_scores(pool)
    order = np.lexsort((np.arange(len(score)), -score)).astype(np.int64)
    return Picked({"rds": score}, order, {"objective": "cosine to the pool centroid (pool-only RDS+)"})
