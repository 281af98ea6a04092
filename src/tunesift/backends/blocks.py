"""One block of a per-record scorer, with error rows, and its on-disk form in the score cache.

Every backend (the local loop, Ray workers) scores a block the same way:
:func:`score_block_checked` first asks the renderer about each record on its own
(:func:`record_errors`), scores the records that pass with :func:`score_block`
in one call, and returns rows ``(len(records), width)`` float64 where a record that cannot be
scored has an all-NaN row and its reason in ``errors``. A block without failed records is scored
by exactly the call the local loop makes, so its rows are identical to the local ones.

A block is stored in an :class:`~tunesift.store.ArrayStore` as ``<key>.npy`` (the rows, the
format the local loop has always written) and, only when some records failed, ``<key>.errors.npy``
beside it: a ``(len(records),)`` unicode array holding each failed record's reason and ``""`` for
the others. The errors file is written first, so whenever the rows exist the errors are complete.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import numpy as np

from ..errors import TunesiftError
from ..store import ArrayStore, content_key

# Per-record scorers computed in cached blocks: kind -> (columns, cache version, records per block).
# Bump a version when the same model and tokens would score differently (donod-v2: the terms
# follow the model's logit scaling since 2026-11-23; v1 blocks of Granite/Cohere models ignored it).
BLOCK_SCORERS = {
    "donod": (("r_dot_z", "grad_norm_sq", "n_tokens"), "donod-v2", 16),  # eta-free terms, see donod.score_batch
    "loss": (("loss", "perplexity", "n_tokens"), "loss-v1", 64),
    "ifd": (("loss", "loss_alone", "ifd", "n_tokens"), "ifd-v1", 64),
    "selectit": (("selectit", "selectit_mean", "selectit_std", "selectit_digit_mass"), "selectit-v1", 64),
}


def score_block(kind: str, lm, renderer, records: list, opt) -> np.ndarray:
    """Rows (len(records), width) of one block of a per-record scorer; the same function serves the
    local loop and remote workers. ``opt``: the selection's Options (token budget, SelectIT alpha)."""
    if kind == "donod":
        from ..scoring.donod import gradient_stats

        return gradient_stats(lm.model, [renderer.sequence(r) for r in records],
                              pad_id=lm.tokenizer.pad_token_id, token_budget=opt.token_budget)
    from ..scoring import baselines as bl

    kw = {"token_budget": opt.token_budget}
    if kind == "selectit":
        kw["alpha"] = opt.selectit_alpha
    cols = getattr(bl, f"{kind}_scores")(lm, renderer, records, **kw)
    return np.stack([cols[c] for c in BLOCK_SCORERS[kind][0]], axis=1)


def block_extra(kind: str, opt) -> tuple:
    """Settings besides the token sequences that change a block's scores (part of its cache key)."""
    if kind == "selectit":
        from ..scoring.baselines import DEFAULT_PROMPTS

        # the rating prompt is cut to max_length by its own rule, not the zero-shot sequence's
        return (DEFAULT_PROMPTS, opt.selectit_alpha, opt.max_length)
    return ()


def block_key(kind: str, lm, renderer, records: list, opt) -> str:
    """The cache key of one block of ``kind``: its cache version, the model's fingerprint and
    dtype, the records' token sequences and :func:`block_extra`. The driver keys blocks with it and
    every worker computes it again from what it rendered, so a worker that tokenises differently
    (another tokenizer, chat template, transformers or tunesift) is caught before its scores land
    under the driver's key. Raises :class:`TunesiftError` for a record that does not render."""
    seqs = [renderer.sequence(r) for r in records]
    if kind == "selectit":  # its rating prompts keep more of a long prompt than the sequence does
        from ..scoring.baselines import DEFAULT_PROMPTS, rating_ids

        seqs += [(rating_ids(renderer, r, pr), []) for r in records for pr in DEFAULT_PROMPTS]
    return content_key(BLOCK_SCORERS[kind][1], lm.fingerprint, lm.dtype, seqs, *block_extra(kind, opt))


@dataclass
class BlockResult:
    """The scores of one block of records.

    ``rows``: ``(len(records), width)`` float64, the columns ``BLOCK_SCORERS[kind][0]`` in order;
    the row of a failed record is all NaN. ``errors``: ``{index within the block: reason}`` for
    the failed records (empty for a clean block). ``computed``: False when the block was read back
    from the cache. ``worker``: ``host:pid`` of the process that computed it (None if cached).
    ``key``: the :func:`block_key` of the block as the computing process rendered it (None when
    cached, or when a record did not render there).
    """

    rows: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    computed: bool = True
    worker: str | None = None
    key: str | None = None


def worker_id() -> str:
    """``host:pid`` of this process (which worker computed a block)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def record_errors(kind: str, renderer, records: list, *, in_context: bool = False,
                  counts: dict | None = None) -> dict[int, str]:
    """``{index: reason}`` of the records that ``kind`` cannot score, checked one record at a time
    with the renderer alone (no model call, tokenizer work only).

    Every kind needs the record's zero-shot encoding (its response must fit ``max_length``;
    this is the check ``pipeline.select`` makes before scoring); SelectIT also needs its rating
    prompts to fit. ``in_context`` (DELIFT): the record is also scored after an example and used
    as one; with a renderer whose target reads differently after an example (``--template
    paper``), its query must fit after the example header and its example text must tokenise
    cleanly at the cut. ``counts`` (when given) gets ``prompts_cut``: the records that pass whose
    zero-shot prompt lost tokens from its start to fit ``max_length`` (what every scorer sees).
    """
    out: dict[int, str] = {}
    cut = 0
    arms = in_context and getattr(renderer, "per_arm", False)
    for i, r in enumerate(records):
        try:
            e = renderer.encode(r)
            if arms:
                renderer.query(r)
                renderer.example_prefix(r)
            if kind == "selectit":
                from ..scoring.baselines import DEFAULT_PROMPTS, rating_ids

                for prompt in DEFAULT_PROMPTS:
                    rating_ids(renderer, r, prompt)
            cut += int(e.truncated > 0)
        except TunesiftError as exc:
            out[i] = str(exc)
    if counts is not None:
        counts["prompts_cut"] = counts.get("prompts_cut", 0) + cut
    return out


def score_block_checked(kind: str, lm, renderer, records: list, opt) -> BlockResult:
    """Score one block of ``kind`` (a key of ``BLOCK_SCORERS``) with error rows.

    Records for which :func:`record_errors` reports a reason get an all-NaN row and their reason
    in ``BlockResult.errors``; the others are scored together by one
    ``score_block(kind, lm, renderer, records, opt)`` call (all of ``records`` when none
    failed, so the rows equal the local loop's exactly). Any other exception propagates: it is a
    failure of the job, not of a record.
    """
    width = len(BLOCK_SCORERS[kind][0])
    errors = record_errors(kind, renderer, records)
    rows = np.full((len(records), width), np.nan)
    good = [i for i in range(len(records)) if i not in errors]
    if good:
        todo = records if not errors else [records[i] for i in good]
        got = np.asarray(score_block(kind, lm, renderer, todo, opt), dtype=np.float64)
        if got.shape != (len(good), width):
            raise RuntimeError(f"{kind} block: expected rows {(len(good), width)}, got {got.shape}")
        rows[good] = got
    return BlockResult(rows, errors, True, worker_id())


def errors_name(key: str) -> str:
    """Name of a block's errors array in the store."""
    return f"{key}.errors"


def put_block(store: ArrayStore, key: str, result: BlockResult) -> None:
    """Store a block: its errors array first (only when some records failed), then its rows."""
    if result.errors:
        n = len(result.rows)
        store.put(errors_name(key), np.array([result.errors.get(i, "") for i in range(n)], dtype=str))
    store.put(key, np.asarray(result.rows, dtype=np.float64))


#: columns whose +inf is a score, not a fault: IFD with a zero loss alone (certain without its prompt)
INF_COLUMNS = {"ifd": ("ifd",)}
#: the columns of each per-record scorer that a forward pass that overflowed leaves NaN or infinite
#: (IFD itself may be +inf: a response certain without its prompt; SelectIT's scores are finite
#: unless its logits were NaN, the digit probabilities being rescaled by their row's maximum)
MUST_BE_FINITE = {"donod": ("r_dot_z", "grad_norm_sq", "n_tokens"), "loss": ("loss",), "ifd": ("loss", "loss_alone"),
                  "selectit": ("selectit", "selectit_mean", "selectit_std", "selectit_digit_mass")}


def overflowed_rows(kind: str, rows: np.ndarray, errors=()) -> np.ndarray:
    """Indices of ``rows`` whose :data:`MUST_BE_FINITE` columns hold a NaN or infinity, other than
    the error rows ``errors`` (all NaN, with their reason): such a block is never cached (local or
    Ray), and the run stops on it."""
    names = BLOCK_SCORERS[kind][0]
    cols = [names.index(c) for c in MUST_BE_FINITE.get(kind, ())]
    bad = np.flatnonzero(~np.isfinite(rows[:, cols]).all(axis=1)) if cols else np.zeros(0, dtype=np.int64)
    return bad[~np.isin(bad, list(errors))] if len(errors) else bad


def inf_columns(kind: str) -> list[int]:
    """The positions of ``kind``'s :data:`INF_COLUMNS` in its rows."""
    return [BLOCK_SCORERS[kind][0].index(c) for c in INF_COLUMNS.get(kind, ())]


def get_block(store: ArrayStore, key: str, n: int, width: int, *, inf_ok: list[int] = ()) -> BlockResult | None:
    """A stored block of ``n`` records and ``width`` columns, or None when it is missing or bad
    (then it is recomputed). Bad: a failed checksum (:meth:`ArrayStore.get`), another shape, an
    infinite value (+inf allowed in the ``inf_ok`` columns: :func:`inf_columns`; an IFD block was
    otherwise rescored on every run), or an all-NaN row without a recorded reason (a score row is
    all NaN only for a record that failed). Errors are read only when a row is all NaN."""
    import logging

    rows = store.get(key)
    if rows is None:
        return None
    log = logging.getLogger("tunesift")
    if rows.shape != (n, width) or rows.dtype.kind != "f":
        log.warning("score cache: ignoring block %s: shape %s, expected %s; recomputing it",
                    store._path(key), rows.shape, (n, width))
        return None
    inf = np.isinf(rows)
    if len(inf_ok):
        inf[:, list(inf_ok)] = np.isneginf(rows[:, list(inf_ok)])
    if inf.any():
        log.warning("score cache: ignoring block %s: it holds infinite values; recomputing it", store._path(key))
        return None
    errors: dict[int, str] = {}
    nan_rows = np.isnan(rows).all(axis=1) if width else np.zeros(n, dtype=bool)
    if nan_rows.any():
        errs = store.get(errors_name(key))
        if errs is not None and errs.shape == (n,):
            errors = {i: str(s) for i, s in enumerate(errs) if s}
        if set(np.flatnonzero(nan_rows).tolist()) - set(errors):
            log.warning("score cache: ignoring block %s: a row is NaN without a recorded error; recomputing it",
                        store._path(key))
            return None
    return BlockResult(rows, errors, computed=False)
