"""DELIFT's in-context utility kernel UF, computed with prefix KV-cache reuse.

For target records i (rows) and candidate examples j (columns)::

    UF[i, j] = d(i | no example) - d(i | example j)

Sequences (token ids from :class:`tunesift.render.Renderer`; the target's tokens are identical
in both arms, so only the example differs)::

    no-example arm:  header | prompt_i user_end | response_i end
    example arm:     fit(header | prompt_j user_end | response_j between) | prompt_i user_end | response_i end

A renderer with ``per_arm`` (``--template paper``: the reference code's two wordings) gives each
arm its own target tokens: ``renderer.header | renderer.encode(i)`` without an example and
``fit(renderer.example_prefix(j)) | renderer.query(i)`` after one (the scored response tokens are
the same in both; an example is cut down to ``renderer.example_header``).

``fit`` is :func:`tunesift.render.fit_example`: when the sequence is longer than ``max_length`` the example is
cut from the start of its body; the scored response is never cut. An example cut to nothing
leaves exactly the no-example arm, and the pair gets the baseline's statistics, so UF = 0
(never the reference code's spurious "distance 0 = maximally helpful"). Under a ``per_arm``
renderer the example arm's wording is scored with no example in it instead: the pair then carries
the row's wording shift like the row's other pairs (a UF of exactly 0 could be the row's largest).

With p_t the teacher-forced probability of response token t (t = 1..T_i, end token included):

    rmse:  d = sqrt( (1/T_i) sum_t (1 - p_t)^2 )      (the paper's Eq. 2; UF in [-1, 1])
    pmi:   d = -(1/T_i) sum_t log p_t                  (so UF = mean log-prob gain, the paper's theory)

The kernel keeps the sufficient statistics per pair (``sq_err = sum (1-p)^2``, ``logp = sum log p``)
and per target (``n_tokens = T_i`` and the no-example ``base_sq_err``, ``base_logp``), so
:meth:`UtilityKernel.values` switches distance without rescoring.

Speed: each example prefix runs once (``use_cache=True``) and its KV cache serves every target
scored against it (:class:`tunesift.scoring.logprobs.ResponseScorer`); logits are formed only at
response positions; columns are scored in waves (:mod:`tunesift.scoring.kernel_blocks`).
:func:`plain_utility_kernel` recomputes every full sequence (the reference and the benchmark
baseline).

Caching: results are written per block of ``block_size`` columns (sparse: widened until a block
holds ``BLOCK_PAIRS * block_size`` pairs, :func:`~tunesift.scoring.kernel_blocks.column_spans`) under
``<cache_dir>/delift-utility/<key>/`` (``key`` = :func:`tunesift.store.content_key` of all token
ids, the model fingerprint and dtype, ``max_length``, the sparse pattern and the diagonal rule);
a rerun loads the finished blocks and computes only the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from ..errors import OptionError, TunesiftError
from ..store import ArrayStore, default_cache_dir
from .kernel_blocks import (
    add_counts,
    block_shape,
    column_spans,
    kernel_base,
    kernel_block,
    work_counts,
)
from .kernel_job import CACHE_KIND, KernelJob, cache_key, fit_prefix, pattern_views, prepare_job
from .logprobs import ResponseScorer, plain_logprob_stats

log = logging.getLogger("tunesift")
# the remaining-time estimate is logged once this much scoring has been timed
WARMUP_S = 20.0

DISTANCES = ("rmse", "pmi")
DEFAULT_DISTANCE = "rmse"
# targets per no-example batch run (a Ray task each): the same split everywhere keeps local and
# Ray kernels bit-identical (the rows of a forward batch change float rounding slightly)
BASE_ROWS = 4096

Kernel = np.ndarray | sp.csr_matrix
ProgressFn = Callable[[int, int], None]


@dataclass
class UtilityKernel:
    """Sufficient statistics of a DELIFT utility kernel over n_t targets x n_e examples.

    Dense kernels hold (n_t, n_e) float64 arrays; sparse ones hold ``csr_matrix`` objects with the
    requested pattern (same ``indptr``/``indices`` for both). Entries not computed (the excluded
    diagonal) are NaN.

    * ``sq_err[i, j] = sum_t (1 - p_t)^2`` and ``logp[i, j] = sum_t log p_t`` over target i's
      response tokens with example j in context (``sq_err`` is None when built with
      ``distance_stats=False``);
    * ``n_tokens[i] = T_i`` (n_t,), ``base_sq_err[i]``, ``base_logp[i]`` (n_t,): the no-example arm;
    * ``info``: counts of the run (pairs, blocks computed and loaded, forward calls, cut prefixes).
    """

    sq_err: Kernel | None
    logp: Kernel
    n_tokens: np.ndarray
    base_sq_err: np.ndarray
    base_logp: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.logp.shape

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self.logp)

    def base_distance(self, distance: str = DEFAULT_DISTANCE) -> np.ndarray:
        """d(i | no example), (n_t,)."""
        n = self.n_tokens.astype(np.float64)
        if distance == "rmse":
            return np.sqrt(self._need_sq(self.base_sq_err) / n)
        if distance == "pmi":
            return -self.base_logp / n
        raise OptionError(f"unknown distance '{distance}': use {' or '.join(DISTANCES)}")

    def _need_sq(self, x):
        if x is None:
            raise OptionError(
                "this kernel was built with distance_stats=False: only 'pmi' is available"
            )
        return x

    def values(self, distance: str = DEFAULT_DISTANCE) -> Kernel:
        """UF (n_t, n_e): ``d(i | no example) - d(i | example j)`` under ``distance``.

        ``rmse``: UF = sqrt(base_sq/T_i) - sqrt(sq_err/T_i), in [-1, 1];
        ``pmi``:  UF = (logp - base_logp) / T_i (mean log-prob gain per response token).
        Dense: float64 array with NaN on the excluded diagonal; sparse: CSR with the same pattern.
        """
        base = self.base_distance(distance)
        n = self.n_tokens.astype(np.float64)
        stat = self._need_sq(self.sq_err) if distance == "rmse" else self.logp
        if sp.issparse(stat):
            rows = np.repeat(np.arange(stat.shape[0]), np.diff(stat.indptr))
            data = self._uf(stat.data, base[rows], n[rows], self.base_logp[rows], distance)
            return sp.csr_matrix((data, stat.indices.copy(), stat.indptr.copy()), shape=stat.shape)
        return self._uf(stat, base[:, None], n[:, None], self.base_logp[:, None], distance)

    @staticmethod
    def _uf(stat, base_d, n, base_logp, distance: str):
        if distance == "rmse":
            return base_d - np.sqrt(stat / n)
        return (stat - base_logp) / n


def similarity_bounds(kernels: Sequence[Kernel], *, clip_negative: bool = False) -> tuple[float, float]:
    """(min, max) of UF over the defined entries of all ``kernels``; with ``clip_negative``
    (0, max): UF 0, "as good as no example", is the bottom of the scale, so the least helpful
    example that helps at all keeps a positive similarity.

    Kernels that enter one objective together (FLMI's pool and target kernels, FLCG's pool and
    existing kernels) must share one scale, or ``max S - nu max E`` compares unlike numbers.
    """
    vals = []
    for k in kernels:
        x = k.data if sp.issparse(k) else np.asarray(k)
        vals.append(x[~np.isnan(x)])
    allv = np.concatenate(vals) if vals else np.zeros(0)
    if not allv.size:
        return (0.0, 0.0)
    if clip_negative:
        return (0.0, max(float(allv.max()), 0.0))
    return (float(allv.min()), float(allv.max()))


def to_similarity(uf: Kernel, *, clip_negative: bool = False,
                  bounds: tuple[float, float] | None = None) -> Kernel:
    """The paper's transform: one global min-max of UF to [0, 1] over the defined entries.

    ``s = (UF - min) / (max - min)`` with min/max over non-NaN entries (dense) or stored entries
    (CSR), or the given ``bounds`` (see :func:`similarity_bounds`); ``clip_negative`` scales
    ``max(UF, 0) / max`` instead (harmful examples get similarity 0, as no example does, instead
    of a small positive value; an example that helps at all keeps a positive one). NaN (the
    excluded diagonal) becomes 0. For CSR only stored entries are scaled, the pattern is kept and
    missing entries mean similarity 0: with the min-max that is the *least* helpful pair's value,
    so a kNN kernel is selected on with ``clip_negative`` (:func:`tunesift.methods.delift.scaled`),
    where 0 is "no effect". If all defined entries are equal they map to 1 when positive, else 0.
    Returns float64 of the same type and shape.
    """
    if bounds is None:
        bounds = similarity_bounds([uf], clip_negative=clip_negative)
    if sp.issparse(uf):
        m = uf.tocsr(copy=True).astype(np.float64)
        m.data = _minmax(m.data, clip_negative, bounds)
        return m
    return _minmax(np.asarray(uf, dtype=np.float64).copy(), clip_negative, bounds)


def _minmax(x: np.ndarray, clip_negative: bool, bounds: tuple[float, float]) -> np.ndarray:
    ok = ~np.isnan(x)
    if clip_negative:
        x[ok & (x < 0)] = 0.0
    lo, hi = bounds
    if hi > lo:
        x[ok] = np.clip((x[ok] - lo) / (hi - lo), 0.0, 1.0)
    else:
        x[ok] = 1.0 if hi > 0 else 0.0
    x[~ok] = 0.0
    return x


def _assemble(
    job: KernelJob,
    sq_cols: np.ndarray,
    lp_cols: np.ndarray,
    base: np.ndarray,
    distance_stats: bool,
    info: dict,
) -> UtilityKernel:
    """sq_cols/lp_cols: dense (n_t, n_e) or CSC-ordered entry arrays (nnz,)."""
    if job.pattern is not None:

        def to_csr(data):
            return sp.csr_matrix(
                (data[job.csr_perm], job.csr.indices.copy(), job.csr.indptr.copy()),
                shape=job.csr.shape,
            )

        sq, lp = to_csr(sq_cols), to_csr(lp_cols)
    else:
        sq, lp = sq_cols, lp_cols
    n_tok = job.conts.n_response.copy()
    return UtilityKernel(
        sq if distance_stats else None, lp, n_tok, base[0].copy(), base[1].copy(), info
    )


# -- the fast scorer --------------------------------------------------------------------------


class KernelRunner(Protocol):
    """Computes a kernel's missing pieces somewhere else (e.g. on Ray workers, see
    :class:`tunesift.backends.ray_backend.RayKernelRunner`); :func:`utility_kernel` keeps the
    cache, the assembly and the progress. The job (``KernelJob``: token ids, pattern, ``max_length``)
    holds everything a piece depends on besides the model; ``token_budget`` sets the batching.
    Both methods must return what :func:`kernel_base` and :func:`kernel_block` return for the
    same job, model, device and thread count."""

    def base(self, job, token_budget: int, rows: np.ndarray | None = None,
             on_part: Callable[[np.ndarray, np.ndarray], None] | None = None) -> tuple[np.ndarray, dict]:
        """The no-example statistics ``(2, n_t)`` of the targets ``rows`` (default all; NaN
        elsewhere), computed in parts of ``BASE_ROWS`` of them, and the work counts (see
        :func:`work_counts`). ``on_part(part rows, (2, len(part)) statistics)`` as each part
        arrives, so the caller can save it."""
        ...

    def blocks(self, job, base: np.ndarray, spans: list[tuple[int, int]], token_budget: int,
               on_block: Callable[[int, int, np.ndarray, dict], None]) -> None:
        """Compute every column block ``(c0, c1)`` of ``spans``; call ``on_block(c0, c1, block,
        counts)`` as each one arrives (any order, each once)."""
        ...


def utility_kernel(
    lm,
    renderer,
    targets: Sequence,
    examples: Sequence,
    *,
    pairs=None,
    exclude_diagonal: bool = True,
    same: bool | None = None,
    distance_stats: bool = True,
    token_budget: int = 4096,
    block_size: int = 64,
    cache_dir: str | Path | None | bool = None,
    progress: ProgressFn | None = None,
    runner: KernelRunner | None = None,
) -> UtilityKernel:
    """DELIFT utility statistics for ``targets`` (rows) x ``examples`` (columns), fast.

    Args:
        lm: a :class:`tunesift.models.LoadedModel`.
        renderer: the :class:`tunesift.render.Renderer` that defines the sequences.
        targets, examples: records (``.id``, ``.prompt``, ``.response``, ``.context``).
        pairs: optional boolean (n_t, n_e) pattern (scipy sparse or array) of the pairs to score;
            the result is then sparse (CSR) with exactly this pattern. None: all pairs, dense.
        exclude_diagonal: when targets and examples are the same records (``same=True``, or by
            default when their ids and texts are identical in order: ``kernel_job.is_same``), pairs
            (i, i) are not computed and hold NaN.
        same: force or forbid the "same records" rule; None detects it from the ids and texts.
        distance_stats: keep both statistics (True) or only the log-prob sums (False: halves the
            kernel's memory; only the ``pmi`` distance is then available).
        token_budget: padded continuation tokens per forward batch.
        block_size: examples (columns) per persisted cache block.
        cache_dir: cache root (default :func:`tunesift.store.default_cache_dir`); False disables
            caching.
        progress: ``progress(done_pairs, total_pairs)``, called at the start, after every
            forward batch (local runs) and after each finished group of columns (monotone; pairs
            from cached blocks count at once). An exception raised in it stops the run; finished
            blocks stay in the cache.
        runner: where the missing base and column blocks are computed (None: here, with ``lm``;
            a :class:`KernelRunner` such as Ray workers). Blocks land in the same cache either way.

    Returns:
        a :class:`UtilityKernel`; ``.values(distance)`` gives UF.
    """
    if token_budget < 1 or block_size < 1:
        raise OptionError("token_budget and block_size must be positive")
    job = prepare_job(renderer, targets, examples, pairs, exclude_diagonal, same)
    root = None
    if cache_dir is not False:
        root = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
    if root is None or job.pattern is None:
        sq_all, lp_all, base, info = _compute(job, lm, root, token_budget, block_size, progress, runner)
        return _assemble(job, sq_all, lp_all, base, distance_stats, info)
    # sparse: pairs scored by any earlier sparse run with the same records and model (an exact kNN
    # kernel, a learned run's labels) are read from the shared pair store, only the rest is scored
    shared = ArrayStore(root / CACHE_KIND / f"pairs-{cache_key(job, lm, pattern=False)}")
    keys = _entry_keys(job)  # (nnz,) CSC order; -1 on the excluded diagonal
    known_keys, known = _load_pairs(shared)
    have = np.zeros(len(keys), dtype=bool)
    sq_all = np.full(len(keys), np.nan)
    lp_all = np.full(len(keys), np.nan)
    if len(known_keys):
        pos = np.searchsorted(known_keys, keys).clip(0, len(known_keys) - 1)
        have = (keys >= 0) & (known_keys[pos] == keys)
        sq_all[have], lp_all[have] = known[0, pos[have]], known[1, pos[have]]
    need = (keys >= 0) & ~have
    n_have, total = int(have.sum()), job.n_pairs()
    base = shared.get("base")
    rows = _rows_with_pairs(job)
    if base is not None and base.shape != (2, job.n_t):
        base = None
    if need.any() or base is None or np.isnan(base[0, rows]).any():
        sub = _with_entries(job, need)

        def shifted(d: int, t: int) -> None:
            progress(d + n_have, total)

        sq_s, lp_s, new_base, info = _compute(sub, lm, root, token_budget, block_size,
                                              shifted if progress else None, runner, known_base=base, base_rows=rows)
        sq_all[need], lp_all[need] = sq_s, lp_s  # the sub-job's entries are the needed ones, CSC order
        base = new_base if base is None else np.where(np.isnan(base), new_base, base)
        shared.put("base", base)
        if need.any():
            shared.put(f"chunk-{cache_key(sub, lm)[:24]}", np.stack([keys[need].astype(np.float64), sq_s, lp_s]))
    else:
        info = {**_new_info(total), "cache": str(shared.root)}
        if progress:
            progress(total, total)
    info["pairs"], info["pairs_shared"] = total, n_have
    return _assemble(job, sq_all, lp_all, base, distance_stats, info)


def _rows_with_pairs(job: KernelJob) -> np.ndarray:
    """Targets with at least one pair to score (sorted): all (dense) or the pattern's rows (sparse)."""
    if job.pattern is None:
        return np.arange(job.n_t)
    keys = _entry_keys(job)
    return np.unique(keys[keys >= 0] // job.n_e)


def _entry_cols(pattern: sp.csc_matrix) -> np.ndarray:
    """The column of each entry of a CSC pattern, in storage order (nnz,)."""
    return np.repeat(np.arange(pattern.shape[1], dtype=np.int64), np.diff(pattern.indptr))


def _entry_keys(job: KernelJob) -> np.ndarray:
    """``row * n_e + col`` of each pattern entry in CSC order; -1 for an excluded diagonal pair."""
    cols = _entry_cols(job.pattern)
    rows = job.pattern.indices.astype(np.int64)
    keys = rows * job.n_e + cols
    if job.diag:
        keys[rows == cols] = -1
    return keys


def _load_pairs(shared: ArrayStore) -> tuple[np.ndarray, np.ndarray]:
    """The shared store's scored pairs: sorted unique keys (m,) and their ``[sq_err, logp]`` (2, m)."""
    chunks = []
    if shared.root.is_dir():
        for path in sorted(shared.root.glob("chunk-*.npy")):
            arr = shared.get(path.stem)
            if arr is not None and arr.ndim == 2 and arr.shape[0] == 3:
                chunks.append(arr)
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros((2, 0))
    allc = np.concatenate(chunks, axis=1)
    allc = allc[:, np.isfinite(allc).all(axis=0)]  # a pair stored NaN (before overflow was checked): rescored
    keys, first = np.unique(allc[0].astype(np.int64), return_index=True)
    return keys, allc[1:, first]


def _with_entries(job: KernelJob, mask: np.ndarray) -> KernelJob:
    """The same job restricted to the pattern entries where ``mask`` (CSC order) is True."""
    p = job.pattern
    cols = _entry_cols(p)
    sub = sp.csr_matrix((np.ones(int(mask.sum()), dtype=bool), (p.indices[mask], cols[mask])), shape=p.shape)
    pattern, perm, csr = pattern_views(sub, p.shape)
    return replace(job, pattern=pattern, csr_perm=perm, csr=csr)


def _part_saver(base: np.ndarray, store: ArrayStore | None, n_missing: int) -> Callable:
    """``on_part(rows, stats)`` for :meth:`KernelRunner.base`: place each part of the no-example
    statistics in ``base`` and save it, as the local loop does after each part (an interrupted
    pass resumes from the parts that arrived), except after the last (the caller saves it)."""
    left = [n_missing]

    def on_part(part: np.ndarray, stats: np.ndarray) -> None:
        base[:, part] = stats
        left[0] -= len(part)
        if store and left[0] > 0:
            store.put("base", base)

    return on_part


def _compute(job: KernelJob, lm, root: Path | None, token_budget: int, block_size: int, progress, runner,
             known_base: np.ndarray | None = None, base_rows: np.ndarray | None = None):
    """Score ``job`` (base and column blocks, resuming from the per-job cache under ``root``):
    returns ``(sq_all, lp_all, base, info)`` with the entries in CSC order (sparse) or (n_t, n_e).
    ``known_base``: the no-example statistics (2, n_t) another run already has (NaN rows: not
    computed); ``base_rows``: the targets whose base is needed (default: those with a pair)."""
    n_t, n_e = job.n_t, job.n_e
    store = ArrayStore(root / CACHE_KIND / cache_key(job, lm)) if root is not None else None
    scorer = ResponseScorer(lm, token_budget=token_budget) if runner is None else None
    info = _new_info(job.n_pairs())
    # counts cover the work of this run only (pieces read from the cache count nothing)
    total = job.n_pairs()
    done = 0
    if progress:
        progress(0, total)

    # the no-example arm only for targets with a pair to score (a learned run labels a few rows);
    # NaN marks a target whose base was never needed
    rows = base_rows if base_rows is not None else _rows_with_pairs(job)
    base = store.get("base") if store else None
    if base is None or base.shape != (2, n_t):
        base = known_base.copy() if known_base is not None and known_base.shape == (2, n_t) else None
    missing = rows if base is None else rows[np.isnan(base[0, rows])]
    if len(missing):
        if base is None:
            base = np.full((2, n_t), np.nan)
        if runner is not None:  # workers compute the missing rows, in the local loop's parts
            full, counts = runner.base(job, token_budget, rows=missing, on_part=_part_saver(base, store, len(missing)))
            if full.shape != (2, n_t):
                raise RuntimeError(f"kernel base has shape {full.shape}, expected {(2, n_t)}")
            base[:, missing] = full[:, missing]
        else:
            counts = work_counts()
            for r in range(0, len(missing), BASE_ROWS):
                part = missing[r:r + BASE_ROWS]
                base[:, part] = kernel_base(job, scorer, counts=counts, rows=part)
                if store and r + BASE_ROWS < len(missing):  # an interrupted pass resumes from this part
                    store.put("base", base)
        add_counts(info, counts)
        if len(bad := missing[~np.isfinite(base[:, missing]).all(axis=0)]):
            raise _overflow(np.stack([bad, np.full(len(bad), -1)], axis=1), lm)
        if store:
            store.put("base", base)
    elif base is None:
        base = np.full((2, n_t), np.nan)

    sparse = job.pattern is not None
    sq_all = np.full(job.pattern.nnz if sparse else (n_t, n_e), np.nan)
    lp_all = np.full_like(sq_all, np.nan)
    todo = []
    for c0, c1 in column_spans(job.pattern, n_e, block_size):
        got = store.get(_block_name(c0, c1)) if store else None
        if got is not None and got.shape == block_shape(job, c0, c1) and not len(_overflowed(job, c0, c1, got)):
            info["blocks_loaded"] += 1
            _place(job, sq_all, lp_all, c0, c1, got)
            done += job.span_pairs(c0, c1)
            if progress:
                progress(done, total)
        else:
            todo.append((c0, c1))

    def finished(c0: int, c1: int, block: np.ndarray, counts: dict) -> None:
        nonlocal done
        if block.shape != block_shape(job, c0, c1):
            raise RuntimeError(f"kernel block {c0}-{c1} has shape {block.shape}, "
                               f"expected {block_shape(job, c0, c1)}")
        if len(bad := _overflowed(job, c0, c1, block)):  # never cached: NaN would read as an unscored pair
            raise _overflow(bad, lm)
        if store:
            store.put(_block_name(c0, c1), block)
        info["blocks_computed"] += 1
        add_counts(info, counts)
        _place(job, sq_all, lp_all, c0, c1, block)
        done += job.span_pairs(c0, c1)
        if progress:
            progress(done, total)

    todo_pairs = sum(job.span_pairs(c0, c1) for c0, c1 in todo)
    if todo_pairs:
        log.info("DELIFT kernel: %d targets x %d examples, %d pairs, %d to score (the rest cached)%s",
                 n_t, n_e, total, todo_pairs, f"; an interrupted run resumes from {store.root}" if store else "")
    eta = _Estimate(todo_pairs, done)

    def finished_timed(c0: int, c1: int, block: np.ndarray, counts: dict) -> None:
        finished(c0, c1, block, counts)
        eta.update(done)

    if runner is not None:
        runner.blocks(job, base, todo, token_budget, finished_timed)
    else:
        for c0, c1 in todo:
            counts = work_counts()

            def report(k, d=done):
                eta.update(d + k)
                if progress:
                    progress(d + k, total)

            block = kernel_block(job, scorer, base, c0, c1, counts, report)
            finished_timed(c0, c1, block, counts)
    info["cache"] = str(store.root) if store else None
    return sq_all, lp_all, base, info


class _Estimate:
    """Logs the kernel's remaining time once, measured on this device over the first pairs
    scored (at least ``WARMUP_S`` seconds, or the first finished block of a remote runner)."""

    def __init__(self, todo: int, done0: int):
        self.todo, self.done0, self.t0, self.logged = todo, done0, time.perf_counter(), todo == 0

    def update(self, done: int) -> None:
        scored = done - self.done0
        elapsed = time.perf_counter() - self.t0
        if self.logged or scored <= 0 or (elapsed < WARMUP_S and scored < self.todo):
            return
        self.logged = True
        left = elapsed / scored * max(self.todo - scored, 0)
        log.info("DELIFT kernel: %.1f pairs/s on this device over the first %d pairs: about %s left",
                 scored / elapsed, scored, _duration(left))


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _new_info(pairs: int) -> dict:
    """A kernel run's ``info`` before any work: its pairs, no blocks, zero work counts."""
    return {"pairs": pairs, "blocks_computed": 0, "blocks_loaded": 0, **work_counts()}


def _overflowed(job: KernelJob, c0: int, c1: int, block: np.ndarray) -> np.ndarray:
    """(m, 2) (target, example) positions of the block's scored pairs that are NaN or infinite
    (an overflowing forward pass); the excluded diagonal, NaN by design, is not among them.
    ``block``: (2, n_t, c1 - c0) dense or (2, entries of columns c0:c1) sparse."""
    bad = ~np.isfinite(block).all(axis=0)
    if job.pattern is None:
        rows, cols = np.nonzero(bad)
        cols = cols + c0
    else:
        ptr = job.pattern.indptr
        rows = job.pattern.indices[ptr[c0]:ptr[c1]][bad]
        cols = np.repeat(np.arange(c0, c1), np.diff(ptr[c0:c1 + 1]))[bad]
    keep = rows != cols if job.diag else np.ones(len(rows), dtype=bool)
    return np.stack([rows[keep], cols[keep]], axis=1)


def _overflow(bad: np.ndarray, lm) -> TunesiftError:
    """The one-line error for kernel pairs (or no-example rows: example -1) that scored NaN or
    infinity: they are never cached, where they would read as unscored pairs on every rerun."""
    i, j = (int(x) for x in bad[0])
    first = f"target {i} with example {j}" if j >= 0 else f"target {i} without an example"
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return TunesiftError(f"DELIFT kernel: {first} (positions from 0){more} scored NaN or infinity in "
                         f"{getattr(lm, 'dtype', 'this dtype')}: the forward pass overflowed; use --dtype float32 "
                         "or bfloat16")


def _block_name(c0: int, c1: int) -> str:
    return f"cols-{c0:07d}-{c1:07d}"


def _place(job: KernelJob, sq_all, lp_all, c0: int, c1: int, block: np.ndarray) -> None:
    if job.pattern is not None:
        e0, e1 = int(job.pattern.indptr[c0]), int(job.pattern.indptr[c1])
        sq_all[e0:e1] = block[0]
        lp_all[e0:e1] = block[1]
    else:
        sq_all[:, c0:c1] = block[0]
        lp_all[:, c0:c1] = block[1]


# -- the reference scorer ---------------------------------------------------------------------


def plain_utility_kernel(
    lm,
    renderer,
    targets: Sequence,
    examples: Sequence,
    *,
    pairs=None,
    exclude_diagonal: bool = True,
    same: bool | None = None,
    token_budget: int = 2048,
) -> UtilityKernel:
    """Reference implementation: every pair's full sequence, ``model(...).logits`` everywhere.

    Same arguments and result as :func:`utility_kernel` (no caching, no prefix reuse, logits at
    all positions, exactly what the original DELIFT code does). Pairs whose example is cut to
    nothing are scored like any other pair (their sequence is the no-example arm).
    """
    job = prepare_job(renderer, targets, examples, pairs, exclude_diagonal, same)
    header, base_conts = job.zero_shot
    seqs: list[tuple[list[int], int]] = [
        (header + list(c.ids), c.n_response) for c in base_conts
    ]
    slots: list[tuple[int, int]] = []  # (column, position in that column's rows)
    for j in range(job.n_e):
        for k, i in enumerate(job.column_rows(j).tolist()):
            if job.diag and i == j:
                continue
            c = job.conts[i]
            prefix = fit_prefix(job, job.prefixes[j], len(c.ids))
            # cut to nothing: the no-example arm, unless the renderer words the arms apart (per-arm)
            empty = len(prefix) == len(job.header) and job.base_conts is None
            seqs.append(seqs[i] if empty else (prefix + list(c.ids), c.n_response))
            slots.append((j, k))
    sq, lp = plain_logprob_stats(lm, seqs, token_budget=token_budget)
    n_t = job.n_t
    base = np.stack([sq[:n_t], lp[:n_t]])
    sparse = job.pattern is not None
    sq_all = np.full(job.pattern.nnz if sparse else (n_t, job.n_e), np.nan)
    lp_all = np.full_like(sq_all, np.nan)
    for (j, k), s, l_ in zip(slots, sq[n_t:], lp[n_t:], strict=True):
        if sparse:
            e = int(job.pattern.indptr[j]) + k
            sq_all[e], lp_all[e] = s, l_
        else:
            sq_all[k, j], lp_all[k, j] = s, l_
    info = {"pairs": job.n_pairs(), "sequences": len(seqs)}
    return _assemble(job, sq_all, lp_all, base, True, info)
