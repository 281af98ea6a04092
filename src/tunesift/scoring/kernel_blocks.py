"""Scoring the DELIFT kernel's pieces: the no-example arm of some targets, and column blocks.

Work goes column by column (sparse pairs are grouped by column, so one prefix serves all its
targets); consecutive columns with few targets are scored together as a "wave" of at least
``token_budget`` continuation tokens so that their rows fill batches, and at most
``BANK_TOKENS * token_budget`` padded prefix tokens so that the wave's bank of KV caches stays
bounded. :func:`column_spans` cuts the columns into blocks, the unit of caching and of remote work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .kernel_job import KernelJob, fit_prefix
from .logprobs import BANK_TOKENS, ResponseScorer

# a sparse column block holds at least this many pairs per column of ``block_size`` (see column_spans)
BLOCK_PAIRS = 4
# BANK_TOKENS: a wave's prefix bank holds at most this many padded tokens per ``token_budget`` (KV
# memory: 23 kB a token for SmolLM2-135M in bfloat16, so 4 x 4096 tokens is about 380 MB); one
# column that alone would overfill it is split by ResponseScorer.score_groups


def work_counts() -> dict[str, int]:
    """Work counters of a kernel run (summed over its pieces, wherever they ran)."""
    return {"forwards": 0, "mixed_batches": 0, "prefixes": 0, "cut_prefixes": 0, "empty_prefixes": 0}


def add_counts(info: dict, counts: dict) -> None:
    """Add the work ``counts`` of one piece to a run's ``info`` (see :func:`work_counts`)."""
    for name, v in counts.items():
        info[name] += v


def block_shape(job: KernelJob, c0: int, c1: int) -> tuple[int, ...]:
    """A stored column block: ``(2, entries)`` (sparse, CSC order) or ``(2, n_t, c1 - c0)``."""
    if job.pattern is not None:
        return (2, int(job.pattern.indptr[c1]) - int(job.pattern.indptr[c0]))
    return (2, job.n_t, c1 - c0)


def kernel_base(job: KernelJob, scorer: ResponseScorer, r0: int = 0, r1: int | None = None,
                counts: dict | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """The no-example arm of targets ``r0:r1`` (default all), or of the targets ``rows``:
    ``(2, m)`` rows ``[sum (1-p)^2, sum log p]``; ``counts`` (see :func:`work_counts`) is
    increased by the work."""
    f0, m0 = scorer.forwards, scorer.mixed_batches
    header, conts = job.zero_shot
    todo = conts[r0:r1] if rows is None else [conts[int(i)] for i in rows]
    out = np.stack(scorer.score(header, todo)).reshape(2, -1)
    if counts is not None:
        counts["forwards"] += scorer.forwards - f0
        counts["mixed_batches"] += scorer.mixed_batches - m0
    return out


def kernel_block(job: KernelJob, scorer: ResponseScorer, base: np.ndarray, c0: int, c1: int,
                 counts: dict | None = None, report: Callable[[int], None] | None = None) -> np.ndarray:
    """Columns ``c0:c1`` of the kernel, in the stored block layout (:func:`block_shape`): row 0
    ``sum (1-p)^2``, row 1 ``sum log p`` of each pair; the excluded diagonal is NaN.

    ``counts`` (see :func:`work_counts`) is increased by the work done; ``report(pairs)`` is called
    with the pairs of this block finished so far (monotone) after every forward batch.
    """
    counts = counts if counts is not None else work_counts()
    f0, m0 = scorer.forwards, scorer.mixed_batches
    block = np.full(block_shape(job, c0, c1), np.nan)
    e0 = int(job.pattern.indptr[c0]) if job.pattern is not None else 0
    wave: list[_Column] = []
    wave_tokens = n_prefixes = widest = 0
    finished = 0
    # the wave's prefix KV caches are stacked right-padded into one bank: bound its padded tokens
    # too, or a thin pattern (one target per example) would bank dozens of long prefixes
    bank_cap = BANK_TOKENS * scorer.token_budget

    def run_wave() -> None:
        nonlocal wave, wave_tokens, n_prefixes, widest, finished
        _run_wave(job, scorer, wave, (lambda rows, f=finished: report(f + rows)) if report else None)
        for c in wave:
            if job.pattern is not None:
                off = int(job.pattern.indptr[c.j]) - e0
                block[0, off : off + len(c.sq)] = c.sq
                block[1, off : off + len(c.sq)] = c.lp
            else:
                block[0, :, c.j - c0] = c.sq
                block[1, :, c.j - c0] = c.lp
            finished += c.n_pairs
        wave, wave_tokens, n_prefixes, widest = [], 0, 0, 0
        if report:
            report(finished)

    for j in range(c0, c1):
        col = _plan_column(job, base, j, counts)
        col_widest = max((len(p) for p, _ in col.groups), default=0)
        if wave and (n_prefixes + len(col.groups)) * max(widest, col_widest) > bank_cap:
            run_wave()  # this column's prefixes would overfill the bank (a long one pads all): not in this wave
        wave.append(col)
        wave_tokens += col.tokens
        n_prefixes += len(col.groups)
        widest = max(widest, col_widest)
        if wave_tokens < scorer.token_budget and n_prefixes * widest < bank_cap and j < c1 - 1:
            continue  # gather more columns so their rows can share batches
        run_wave()
    counts["forwards"] += scorer.forwards - f0
    counts["mixed_batches"] += scorer.mixed_batches - m0
    return block


def column_spans(pattern: sp.csc_matrix | None, n_e: int, block_size: int) -> list[tuple[int, int]]:
    """The kernel's column blocks ``[(c0, c1), ...]`` (the unit of caching and of remote work).

    Dense: ``block_size`` columns each. Sparse: at least ``block_size`` columns, extended until a
    block holds at least ``BLOCK_PAIRS * block_size`` pattern entries (or the columns end). A thin
    pattern, such as a learned run's few labelled rows spread over 100,000 columns, would otherwise
    leave 64-column blocks with one or two pairs each: every block would run as its own
    near-empty forward batch. The spans depend only on the pattern, so a resumed run finds its blocks.
    """
    if pattern is None:
        return [(c0, min(n_e, c0 + block_size)) for c0 in range(0, n_e, block_size)]
    cum = np.asarray(pattern.indptr, dtype=np.int64)  # (n_e + 1,) entries before each column
    spans, c0, need = [], 0, BLOCK_PAIRS * block_size
    while c0 < n_e:
        c1 = min(n_e, c0 + block_size)
        if cum[c1] - cum[c0] < need:  # too thin: take columns until ``need`` entries
            c1 = min(n_e, max(c1, int(np.searchsorted(cum, cum[c0] + need, side="left"))))
        spans.append((c0, c1))
        c0 = c1
    return spans


@dataclass
class _Column:
    """One example's share of the work: its statistics (filled in place) and prefix groups."""

    j: int
    sq: np.ndarray  # (rows of column j,) NaN on the excluded diagonal
    lp: np.ndarray
    groups: list[tuple[list[int], list[int]]]  # (fitted prefix, positions in the column's rows)
    rows: np.ndarray
    n_pairs: int
    tokens: int  # continuation tokens still to score


def _plan_column(job: KernelJob, base: np.ndarray, j: int, info: dict) -> _Column:
    """Group column j's targets by how much of example j fits before them.

    Targets whose example is cut to nothing get the no-example statistics right away (UF = 0),
    unless the renderer words the arms apart (``per_arm``: ``--template paper``): then the
    example arm's own wording is scored with no example in it, so the pair carries the row's
    wording shift like every other pair of the row instead of standing out at exactly 0. The
    excluded diagonal stays NaN.
    """
    rows = job.column_rows(j)
    n_ids = job.conts.lengths()
    sq = np.full(len(rows), np.nan)
    lp = np.full(len(rows), np.nan)
    by_len: dict[int, list[int]] = {}
    full = int(job.prefixes.offsets[j + 1] - job.prefixes.offsets[j])
    h = len(job.header)
    n_pairs = 0
    for k, i in enumerate(rows.tolist()):
        if job.diag and i == j:
            continue
        n_pairs += 1
        over = full + int(n_ids[i]) - job.max_length
        by_len.setdefault(full if over <= 0 else max(h, full - over), []).append(k)
    groups = []
    tokens = 0
    for length, ks in sorted(by_len.items(), reverse=True):
        idx = rows[ks]
        if length == h:
            info["empty_prefixes"] += len(ks)
            if job.base_conts is None:  # cut to nothing: exactly the no-example arm
                sq[ks], lp[ks] = base[0, idx], base[1, idx]
                continue
        prefix = fit_prefix(job, job.prefixes[j], int(n_ids[idx[0]]))
        if len(prefix) != length:
            raise AssertionError("internal: prefix fit mismatch")  # pragma: no cover
        info["prefixes"] += 1
        if length < full:
            info["cut_prefixes"] += len(ks)
        groups.append((prefix, ks))
        tokens += int(n_ids[idx].sum())
    return _Column(j, sq, lp, groups, rows, n_pairs, tokens)


def _run_wave(job: KernelJob, scorer: ResponseScorer, wave: list[_Column],
              on_rows: Callable[[int], None] | None) -> None:
    """Score all prefix groups of a few columns together (their rows may share batches);
    ``on_rows(rows scored so far)`` after every forward batch."""
    flat = [(c, ks) for c in wave for _, ks in c.groups]
    groups = [
        (prefix, [job.conts[i] for i in c.rows[ks].tolist()])
        for c in wave
        for prefix, ks in c.groups
    ]
    ran = 0

    def on_batch(rows: int) -> None:
        nonlocal ran
        ran += rows
        if on_rows:
            on_rows(ran)

    results = scorer.score_groups(groups, on_batch=on_batch)
    for (c, ks), (s, l_) in zip(flat, results, strict=True):
        c.sq[ks], c.lp[ks] = s, l_
