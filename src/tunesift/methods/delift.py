"""DELIFT (model utility kernel) and DELIFT (SE) (embedding kernel) with submodular selection,
and DONOD + DELIFT. The kernels come from :mod:`tunesift.scoring`, the objectives and greedy
optimisers from :mod:`tunesift.selection`; this module wires them per stage:

- ``instruction``: Facility Location on the pool kernel;
- ``task``: FL mutual information against the target set (``cross``: pool x target);
- ``continual``: FL conditional gain against the existing data (``cross``: pool x existing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from ..render import renderer_for
from .per_record import run_donod
from .registry import Job, Picked, Progress, spread_column

log = logging.getLogger("tunesift")


def run_delift(job: Job) -> Picked:
    """DELIFT: the in-context utility kernel of the model, then the stage's objective."""
    return Picked(*delift_pick(job.records, job.k, job.opt, job.lm, job.progress, job.other, embed_kernel=False))


def run_delift_se(job: Job) -> Picked:
    """DELIFT (SE): the same objectives on the all-MiniLM-L6-v2 cosine kernel ((cos + 1) / 2)."""
    return Picked(*delift_pick(job.records, job.k, job.opt, job.lm, job.progress, job.other, embed_kernel=True))


def stage_objective(sim, cross, opt, budget: int | None = None):
    """The objective DELIFT maximises at ``opt.stage`` (a :class:`~tunesift.selection.objectives.
    FLObjective`): instruction, facility location of ``sim`` (n, n); task, FL mutual information
    with the target kernel ``cross`` ((n, n_target), or (n_target, n) for ``--mi-form additive``);
    continual, FL conditional gain against the existing data's ``cross`` (n, n_existing)."""
    from ..selection import objectives as ob

    if opt.stage == "instruction":
        return ob.fl_objective(sim, budget=budget)
    if opt.stage == "task":
        return ob.flmi_objective(sim, cross, eta=opt.mi_eta, form=opt.mi_form, budget=budget)
    return ob.flcg_objective(sim, cross, nu=opt.nu, budget=budget)


def submodular_pick(sim, cross, k: int, opt):
    """Greedy maximisation of :func:`stage_objective` with ``k`` picks (``opt.optimizer``)."""
    from ..selection.optimizers import maximize

    return maximize(stage_objective(sim, cross, opt, budget=k), k, optimizer=opt.optimizer, epsilon=opt.epsilon,
                    seed=opt.seed)


def scaled(kernels: list, opt) -> list:
    """UF kernels -> similarities in [0, 1] (float32): one min-max over all of them (``--scale joint``:
    FLCG's ``max S - nu max E`` and FLMI compare like numbers) or one per kernel (``separate``, as the
    reference code); ``--clip-negative``, and every kNN kernel (``--knn`` > 0), scale ``max(UF, 0) / max``
    instead (:func:`clipping` says why)."""
    from ..scoring.utility import similarity_bounds, to_similarity

    clip = clipping(kernels, opt.clip_negative, opt.knn)  # asked, or a kNN kernel
    bounds = similarity_bounds(kernels, clip_negative=clip) if opt.scale == "joint" else None
    return [to_similarity(k, clip_negative=clip, bounds=bounds).astype(np.float32) for k in kernels]


def clipping(kernels: list, clip_negative: bool, knn: int | bool | None = None) -> bool:
    """Whether kernels are scaled with harmful UF set to 0: when asked (``--clip-negative``), and
    when one is a sparse kNN kernel (``knn`` > 0; None, for kernels computed elsewhere such as a
    benchmark's: any sparse kernel is one; a learned kernel over every pair is sparse too, and with
    ``knn`` 0 is min-maxed like a dense one). A pair a kNN kernel does not hold is taken as
    "no effect" (UF 0); under the paper's min-max it would be similarity 0, the value of the
    *most harmful* scored pair, and every scored pair would carry a baseline over it, so the
    greedy favoured records that sit in many targets' neighbour lists whatever their utility
    (and a dense kernel and its sparse form picked differently). Clipped, 0 is "no effect" for
    scored and unscored pairs alike; a dense kernel keeps the paper's min-max."""
    import scipy.sparse as sp

    return clip_negative or ((knn is None or bool(knn)) and any(sp.issparse(k) for k in kernels))


def self_covering(sim, twins: np.ndarray | None = None):
    """The pool kernel (n, n) with each record covering itself as well as its best example does:
    ``sim[i, i] = max_{j != i} sim[i, j]`` (float32, dense or CSR).

    The excluded diagonal (a record as its own example would copy its answer) holds 0 after
    scaling, so a pick did not cover itself: the next pick earned ``sim[j, j']`` just for covering
    the previous one, and near-duplicates won over the rest of the pool. A constant 1 on the
    diagonal fixed that but made each pick's own term dominate its gain (the off-diagonal
    utilities are small after scaling): the greedy then favoured the records the others help
    least, corrupted ones first (make demo: 39% corrupted kept, random 20%). The row maximum keeps
    "a pick covers itself" on the row's own scale: a record no example helps earns little for
    itself, and a pick's near-duplicate earns nothing for covering it (docs/delift-kernel.md).

    ``twins`` (n,): group ids of repeated records (``utility_kernels.twin_groups``); their pairs
    were not scored (each would be "copy the answer") and get the diagonal's value too: a pick
    covers its copies exactly as well as itself."""
    import scipy.sparse as sp

    from .utility_kernels import twin_links

    n = sim.shape[0]
    rows, cols = np.arange(n), np.arange(n)
    if twins is not None:  # each copy <-> its group's first record, at the row's diagonal value
        r, c = twin_links(twins).nonzero()
        rows, cols = np.concatenate([rows, r]), np.concatenate([cols, c])
    if sp.issparse(sim):
        sim = sim.tocsr().astype(np.float32)
        own = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=sim.shape)
        sim = (sim - sim.multiply(own.astype(bool))).tocsr()  # the self pairs' values, if any, out first
        sim.eliminate_zeros()
        best = sim.max(axis=1).toarray().ravel().astype(np.float32)  # similarities are >= 0: implicit zeros never win
        return (sim + sp.diags(best, format="csr") @ own).tocsr().astype(np.float32)
    sim = np.array(sim, dtype=np.float32)  # a copy: the caller's kernel stays as it was
    sim[rows, cols] = 0.0
    best = sim.max(axis=1) if sim.size else np.zeros(0, dtype=np.float32)
    sim[rows, cols] = best[rows]
    return sim


def selection_kernel(uf, *, knn: bool | None = None, clip_negative: bool = False,
                     twins: np.ndarray | None = None):
    """One pool kernel UF (n, n) as the instruction stage selects on it: scaled to [0, 1] (min-max;
    harmful UF at 0 for a kNN kernel or ``clip_negative``, as :func:`scaled`) and
    :func:`self_covering` (float32, dense or CSR). ``knn``: whether the kernel came from
    ``--knn`` > 0 (None: a sparse kernel did; pass False for a learned kernel over every pair,
    which is sparse but min-maxed like a dense one). For benchmarks that pick on a kernel they
    computed, so that they measure what ``select`` ships."""
    from ..scoring.utility import to_similarity

    sim = to_similarity(uf, clip_negative=clipping([uf], clip_negative, knn))
    return self_covering(sim.astype(np.float32), twins)


def pair_progress(progress: Progress, label: str) -> Callable[[int, int], None]:
    """Adapt progress(done, total) calls (kernel, embeddings) to a progress bar."""
    state = {"advance": None, "done": 0}

    def update(done: int, total: int) -> None:
        if state["advance"] is None:
            state["advance"] = progress(label, total)
        state["advance"](done - state["done"])
        state["done"] = done

    return update


def delift_pick(records, k, opt, lm, progress: Progress, other, embed_kernel: bool):
    if opt.backend != "ray":
        return _delift_on(records, k, opt, lm, progress, other, embed_kernel, None)
    from ..backends.ray_backend import LazyPool, model_spec

    # one pool for the embeddings and the kernel, started only if something is not cached;
    # DELIFT (SE) needs no language model on the workers
    with LazyPool(None if embed_kernel else model_spec(lm), address=opt.ray_address,
                  num_workers=opt.ray_workers, num_gpus=opt.ray_gpus) as pool:
        return _delift_on(records, k, opt, lm, progress, other, embed_kernel, pool)


def _delift_on(records, k, opt, lm, progress: Progress, other, embed_kernel: bool, pool):
    """DELIFT / DELIFT (SE) selection; ``pool``: a Ray worker pool (LazyPool) or None (local)."""
    from ..scoring import embedding as emb

    embed_runner = kernel_runner = None
    if pool is not None:
        from ..backends.ray_backend import RayEmbedRunner, RayKernelRunner

        embed_runner, kernel_runner = RayEmbedRunner(pool), RayKernelRunner(pool)

    t0 = time.perf_counter()
    timings = {}
    pattern = cross_pattern = None
    if embed_kernel and opt.partitions > 1:  # before any embedding: the pool left after error rows may be too small
        from ..selection.partitioned import check_partitions

        check_partitions(len(records), k, opt.partitions, opt.local_budget or k)
    need_emb = embed_kernel or opt.knn > 0 or opt.utility == "learned"
    # additive FLMI's term is how much each pool record helps the target set: a targets x pool kernel
    additive = bool(other) and opt.stage == "task" and opt.mi_form == "additive"
    surrogate = None
    if need_emb:
        precision = emb.embed_precision(opt.dtype, opt.device)
        log.info("embedding %d records with all-MiniLM-L6-v2 (%s)", len(records) + len(other or []), precision)
        e_pool = emb.embed_records(records, cache_dir=opt.cache_dir, device=opt.device, runner=embed_runner,
                                   progress=pair_progress(progress, "embedding the pool"), precision=precision)
        e_other = (emb.embed_records(other, cache_dir=opt.cache_dir, device=opt.device, runner=embed_runner,
                                     progress=pair_progress(progress, f"embedding the {opt.stage} set"),
                                     precision=precision)
                   if other else None)
        timings["embed_s"] = time.perf_counter() - t0
    def knn(a: np.ndarray, b: np.ndarray, kk: int, exclude_self: bool = False):  # exact or faiss (--ann)
        return emb.ann_knn_pattern(a, b, kk, exclude_self=exclude_self, method=opt.ann, seed=opt.seed)

    if embed_kernel and opt.partitions > 1:  # GreeDi: kernels of the parts and of their picks' union
        from ..selection.partitioned import partitioned_facility_location

        t2 = time.perf_counter()
        kappa = opt.local_budget or k
        union = min(len(records), opt.partitions * kappa)
        log.info("GreeDi over %d partitions, budget %d, %d per part", opt.partitions, k, kappa)
        if not opt.knn and 2 * union >= len(records):  # the merge kernel holds a quarter of n x n or more
            log.warning("GreeDi: the merge round forms a dense kernel over up to %d records (%d parts x %d "
                        "each, of %d): pass --knn K for sparse kernels or a smaller --local-budget",
                        union, opt.partitions, kappa, len(records))
        res = partitioned_facility_location(e_pool, k, partitions=opt.partitions, knn=opt.knn or None,
                                            ann_method=opt.ann, seed=opt.seed, optimizer=opt.optimizer, weighted=True,
                                            epsilon=opt.epsilon, local_budget=opt.local_budget)
        timings["select_s"] = time.perf_counter() - t2
        return greedy_columns(res, len(records)), np.asarray(res.order), {"timings": timings,
                                                                           "objective": res.objective}
    if embed_kernel:
        def se_kernel(b: np.ndarray):  # dense, or only at the k nearest (the pattern caps k)
            return emb.cosine_similarity_kernel(e_pool, b, knn(e_pool, b, opt.knn) if opt.knn else None)

        sim = se_kernel(e_pool)
        if additive:
            cross = emb.cosine_similarity_kernel(e_other, e_pool, knn(e_other, e_pool, opt.knn) if opt.knn else None)
        else:
            cross = se_kernel(e_other) if other else None
    else:
        from .utility_kernels import knn_candidates, stage_kernels, twin_groups

        # a repeated record as another's example would be scored as "copy the answer", like the
        # excluded diagonal: such pairs are left out and get the diagonal's value (self_covering)
        twins = None if opt.keep_diagonal else twin_groups(records)
        if twins is not None:
            log.info("delift: %d records repeat another exactly; their pairs are treated as the diagonal",
                     len(twins) - len(np.unique(twins)))
        if opt.knn:
            pattern = knn_candidates(e_pool, e_pool, opt, same=True, twins=twins)
        if opt.knn:
            if other:
                cross_pattern = (knn_candidates(e_other, e_pool, opt, same=False) if additive
                                 else knn_candidates(e_pool, e_other, opt, same=False))
        renderer = renderer_for(lm, opt.template, opt.max_length)
        t1 = time.perf_counter()
        kerns = stage_kernels(lm, renderer, records, None if additive else other, opt, pattern=pattern,
                              cross_pattern=None if additive else cross_pattern,
                              e_pool=e_pool if need_emb else None, e_other=e_other if need_emb else None,
                              runner=kernel_runner, progress=lambda label: pair_progress(progress, label),
                              twins=twins)
        uf, uf_cross = kerns.pool, kerns.cross
        if additive:  # how much each pool record helps the targets: m x n pairs (m x knn), exact or learned
            from .utility_kernels import one_kernel

            k_tp = one_kernel(lm, renderer, other, records, opt, same=False, pattern=cross_pattern,
                              e_t=e_other if need_emb else None, e_e=e_pool if need_emb else None,
                              runner=kernel_runner, progress=lambda label: pair_progress(progress, label),
                              label="task x pool")
            uf_cross = k_tp.values
            if k_tp.report:
                kerns.surrogate["cross"] = k_tp.report
        if kerns.surrogate:
            surrogate = kerns.surrogate
        timings["kernel_s"] = time.perf_counter() - t1
        sim, *rest = scaled([uf] + ([uf_cross] if other else []), opt)
        if not opt.keep_diagonal:  # every record covers itself (the scaled kernel's diagonal was 0)
            sim = self_covering(sim, twins)
        cross = rest[0] if rest else None
    t2 = time.perf_counter()
    log.info("greedy %s maximisation (%s stage), budget %d", opt.optimizer, opt.stage, k)
    res = submodular_pick(sim, cross, k, opt)
    timings["select_s"] = time.perf_counter() - t2
    flat = int(np.sum(np.asarray(res.gains) <= 0))
    if flat:  # nothing left to gain: the greedy's ties fall to the lowest index, i.e. file order
        log.warning("delift: %d of %d picks gained nothing (the pool is covered%s%s); among equal gains the "
                    "greedy takes the earliest record, so they follow the input's order", flat, len(res.order),
                    "" if opt.stage == "instruction"
                    else " or capped by the target set" if opt.stage == "task" else " or by the existing data",
                    ", or no candidate left helps the records not yet covered: a kNN kernel's harmful and "
                    "unscored pairs are 0" if opt.knn else "")
    cols = greedy_columns(res, len(records))
    cols.update(coverage_columns(sim, res.order, records))
    if not embed_kernel:
        cols["helped_by"] = nanmean(uf, axis=1)  # mean UF of this record as a target: how much examples help it
        cols["helpfulness"] = nanmean(uf, axis=0)  # mean UF of this record as an example: how much it helps others
    extra = {"timings": timings, "objective": res.objective}
    if surrogate:
        extra["surrogate"] = surrogate
    return cols, np.asarray(res.order), extra


def coverage_columns(sim, picks: np.ndarray, records) -> dict[str, np.ndarray]:
    """For each record not picked, the pick that covers it best in the selection kernel ``sim``
    (rows: records, columns: candidates) and by how much: ``covered_by`` (the pick's id; None for
    picks and for records no pick covers) and ``coverage`` (``max_{j in picks} sim[i, j]``, its
    term of the facility-location objective; in the task stage FL1MI caps that term at
    ``eta * max_q Q[i, q]`` and in the continual stage FLCG subtracts ``nu * max_k E[i, k]``, so
    there it is the similarity, not the objective's term; NaN for picks), (n,) each."""
    from ..selection.objectives import fl_assignment

    pos, value = fl_assignment(sim, picks)
    picked = np.zeros(len(records), dtype=bool)
    picked[picks] = True
    ids = [records[int(j)].id for j in picks]
    covered_by = np.array([None if p < 0 or picked[i] else ids[p] for i, p in enumerate(pos)], dtype=object)
    return {"covered_by": covered_by, "coverage": np.where(picked, np.nan, value)}


def greedy_columns(res, n: int) -> dict[str, np.ndarray]:
    """``order`` (1-based pick position, -1 if not picked) and ``gain`` (NaN if not picked), (n,)."""
    order_pos = np.full(n, -1, dtype=np.int64)
    order_pos[res.order] = np.arange(1, len(res.order) + 1)
    gain = np.full(n, np.nan)
    gain[res.order] = res.gains
    return {"order": order_pos, "gain": gain}


def donod_delift_pick(job: Job) -> Picked:
    """DONOD keeps the top max(k, round(prefilter * n)) records by closeness; DELIFT picks k of them.

    Columns: DONOD's (for every record), ``prefiltered`` (True where DONOD let the record through)
    and DELIFT's (order/gain; -1/NaN for records DONOD cut)."""
    records, k, opt = job.records, job.k, job.opt
    n = len(records)
    first = run_donod(job)
    m = max(k, int(round(opt.prefilter * n)))
    keep = np.sort(first.order[:m])
    log.info("DONOD prefilter kept %d of %d records; DELIFT selects %d of them", m, n, k)
    cols_s, order_s, extra = delift_pick([records[i] for i in keep], k, opt, job.lm, job.progress, job.other,
                                         embed_kernel=False)
    cols = dict(first.columns)
    cols["prefiltered"] = np.zeros(n, dtype=bool)
    cols["prefiltered"][keep] = True
    for name, arr in cols_s.items():
        cols[name] = spread_column(arr, keep, n)
    return Picked(cols, keep[np.asarray(order_s, dtype=np.int64)], extra)


def nanmean(m, axis: int) -> np.ndarray:
    """Mean over the defined entries (not NaN; for sparse kernels, stored entries) along ``axis``."""
    import scipy.sparse as sp

    if sp.issparse(m):
        c = m.tocoo()
        ok = ~np.isnan(c.data)
        idx = (c.row if axis == 1 else c.col)[ok]
        size = m.shape[0] if axis == 1 else m.shape[1]
        tot = np.bincount(idx, weights=c.data[ok], minlength=size)
        cnt = np.bincount(idx, minlength=size)
        return np.divide(tot, cnt, out=np.full(size, np.nan), where=cnt > 0)
    import warnings

    with warnings.catch_warnings():  # an all-NaN row (n = 1) is a NaN mean, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(m, axis=axis)
