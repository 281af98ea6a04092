"""Methods that score each record on its own and rank: DONOD and the per-record baselines
(loss, perplexity, IFD, SelectIT), with their blockwise, cached, resumable scoring."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..backends.blocks import (
    BLOCK_SCORERS,
    BlockResult,
    block_key,
    get_block,
    inf_columns,
    overflowed_rows,
    put_block,
    score_block,
)
from ..errors import TunesiftError, overflow_error
from ..render import renderer_for
from ..store import ArrayStore, content_spans, default_cache_dir
from .registry import Job, Picked

log = logging.getLogger("tunesift")


def blocked_scores(kind: str, job: Job) -> np.ndarray:
    """Per-record score rows (n, width) of ``kind``, computed a block of records at a time and cached.

    Each block is stored under ``<cache>/<kind>`` keyed by its content (cache version, model
    fingerprint and dtype, the block's token sequences, other settings), so a rerun reads
    everything back and a killed run recomputes only the missing blocks (the unit of resume).
    Blocks are cut by the records' texts (:func:`~tunesift.store.content_spans`), so an input
    with records inserted, removed or set aside rescores only the blocks around them.
    With ``backend="ray"`` the missing blocks are scored on Ray workers (docs/ray.md), into the
    same cache."""
    lm, opt, records = job.lm, job.opt, job.records
    names, version, block = BLOCK_SCORERS[kind]
    renderer = renderer_for(lm, opt.template, opt.max_length)
    root = Path(opt.cache_dir or default_cache_dir()) / version.split("-v")[0]
    store = ArrayStore(root)
    # blocks cut where the records' texts say (an edited input rescores only the blocks it touched)
    spans = content_spans([(r.prompt, r.response, r.context) for r in records], block)
    keys = [block_key(kind, lm, renderer, records[s:e], opt) for s, e in spans]  # Ray workers check theirs
    advance = job.progress(f"{kind} scoring", len(records))
    if opt.backend == "ray":
        from ..backends.ray_backend import model_spec, score_blocks_ray

        behind: dict[str, int] = {}  # records behind each key: repeated blocks share one and are scored once
        for key, (s, e) in zip(keys, spans):
            behind[key] = behind.get(key, 0) + e - s
        results = score_blocks_ray(kind, model_spec(lm), [(k, records[s:e]) for k, (s, e) in zip(keys, spans)],
                                   opt, root, address=opt.ray_address, num_workers=opt.ray_workers,
                                   num_gpus=opt.ray_gpus, on_block=lambda key, res: advance(behind[key]))
    out = np.zeros((len(records), len(names)))
    cached = 0
    for key, (s, e) in zip(keys, spans):
        if opt.backend == "ray":
            got = results[key]
        else:
            got = get_block(store, key, e - s, len(names), inf_ok=inf_columns(kind))
            cached += got is not None
            if got is None:  # select() has set unscorable records aside: score the block as it is
                got = BlockResult(np.asarray(score_block(kind, lm, renderer, records[s:e], opt), dtype=np.float64), {})
            advance(e - s)
        if got.errors:  # select() sets unscorable records aside before scoring: a bug, not a record
            i, why = next(iter(got.errors.items()))
            raise TunesiftError(f"{kind}: record {records[s + i].id} could not be scored: {why}")
        check_finite(kind, got.rows, records[s:e], lm)  # an overflowed block stops the run, never cached
        if got.computed and opt.backend != "ray":  # (Ray's driver stores its finite blocks itself)
            put_block(store, key, got)
        out[s:e] = got.rows
    if opt.backend != "ray":
        log.info("%s: %d of %d blocks read from the cache %s", kind, cached, len(spans), root)
    return out


def check_finite(kind: str, rows: np.ndarray, records: list, lm) -> None:
    """:func:`~tunesift.errors.overflow_error` when a block has :func:`overflowed_rows`: an
    overflowing forward pass (float16 activations, say) would otherwise rank the record last,
    unnoticed, or, every record failing, leave a "selection" in input order."""
    bad = overflowed_rows(kind, rows)
    if len(bad):
        raise overflow_error(kind, records, bad, lm.dtype)


def run_donod(job: Job) -> Picked:
    """DON and NOD of the LM head after one simulated SGD step per record (closed form from the
    cached eta-free terms), ranked by TOPSIS: DON a benefit, NOD a cost."""
    from ..scoring.donod import (
        DonodParams,
        check_output_transform,
        don_nod_from_stats,
        lm_head_norm_sq,
        release_head_copy,
    )
    from ..selection.topsis import rank_desc, topsis

    opt = job.opt
    try:
        # here too, not only where a block is scored: cached blocks of a model the closed form
        # does not fit would otherwise be served unchecked
        check_output_transform(job.lm.model, *renderer_for(job.lm, opt.template, opt.max_length).sequence(job.records[0]))
        stats = blocked_scores("donod", job)
    finally:
        release_head_copy()
    dn = don_nod_from_stats(stats, lm_head_norm_sq(job.lm.model), DonodParams(opt.eta, opt.reduction))
    close = topsis(dn, opt.weights, [True, False])
    order = np.argsort(rank_desc(close), kind="stable")
    cols = {"don": dn[:, 0], "nod": dn[:, 1], "closeness": close, "n_tokens": stats[:, 2].astype(np.int64)}
    return Picked(cols, order)


def run_baseline(job: Job, kind: str) -> Picked:
    """Score every record with one of the baselines (blockwise, cached) and rank them."""
    from ..scoring import baselines as bl

    rows = blocked_scores(kind, job)
    cols = {c: rows[:, j] for j, c in enumerate(BLOCK_SCORERS[kind][0])}
    if "n_tokens" in cols:
        cols["n_tokens"] = cols["n_tokens"].astype(np.int64)
    if kind == "loss":
        order = bl.loss_order(cols["loss"], job.opt.keep)
    elif kind == "ifd":
        order = bl.ifd_order(cols["ifd"])
    else:  # selectit: highest first, NaN last
        order = np.argsort(np.where(np.isnan(cols["selectit"]), np.inf, -cols["selectit"]), kind="stable")
    return Picked(cols, order)
