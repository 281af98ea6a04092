"""Methods that read no model: ``random`` (the baseline every method must beat; ``--within``
restricts it to one value of a field) and ``balanced-random`` (random with an equal share per value
of a field, ``--by``)."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import OptionError
from ..rowfields import category, field_value
from .registry import Job, Picked

log = logging.getLogger(__name__)


def run_random(job: Job) -> Picked:
    """A seeded uniform permutation: the first k are kept.

    With ``--within FIELD=VALUE`` the records whose field has that value (as
    :func:`~tunesift.rowfields.category` names it: ``meta.swapped=false`` matches JSON false; when
    no value is named so, a text as typed, so ``split=1`` matches a CSV cell ``1``) come
    first, in the same permutation's order, then the others: the k kept are a uniform sample of the
    matching records. With fewer matches than k, all of them are kept and the rest of the budget is
    a uniform sample of the others (logged as a warning; the manifest counts the matches).
    Column ``within``: whether each record matches.
    """
    order = np.random.default_rng(job.opt.seed).permutation(len(job.records))
    if job.opt.within is None:
        return Picked({}, order)
    name, _, wanted = job.opt.within.partition("=")
    name, wanted = name.strip(), wanted.strip()  # "meta.source = dolly" means dolly
    raw = [field_value(r.row, name) for r in job.records]
    values = [category(v) for v in raw]
    match = np.array([v == wanted for v in values], dtype=bool)
    if not match.any():  # a text as typed: a CSV cell "1" is the text 1, which category() shows quoted
        match = np.array([isinstance(x, str) and x == wanted for x in raw], dtype=bool)
    n_match = int(match.sum())
    if n_match == 0:
        seen = ", ".join(sorted(set(values))[:8])
        raise OptionError(f"--within {job.opt.within}: no record matches (values of {name}: {seen})")
    if n_match < job.k:
        log.warning("--within %s: %d of %d records match, fewer than the budget %d: all of them are kept, and "
                    "%d others at random", job.opt.within, n_match, len(values), job.k, job.k - n_match)
    order = np.concatenate([order[match[order]], order[~match[order]]])
    return Picked({"within": match}, order, {"counts": {"within": n_match}})


def run_balanced_random(job: Job) -> Picked:
    """Equal shares per value of the field ``--by`` (e.g. ``meta.source``), random within each.

    Each group is shuffled (seeded), the group order is shuffled, then the groups are interleaved
    one record at a time, skipping groups that ran out: the first k of that order give every group
    ``floor(k / groups)`` or one more, and a group smaller than its share gives its whole size with
    the rest spread over the larger groups. Records without the field form their own group,
    ``(missing)``; no record with the field at all is an error (a misspelt field would otherwise
    quietly give plain random), and a single group is logged as a warning. Column ``group``: each
    record's group name; the manifest counts the groups (``counts.groups``).
    """
    by = job.opt.by.strip()
    rng = np.random.default_rng(job.opt.seed)
    names = np.array([category(field_value(r.row, by)) for r in job.records], dtype=object)
    kinds, inverse, sizes = np.unique(names, return_inverse=True, return_counts=True)  # sorted names
    if kinds.tolist() == ["(missing)"]:
        raise OptionError(_no_field(by, job.records[0].row))
    if len(kinds) == 1:
        log.warning("--by %s: every record has the value %s, so this is plain random", by, kinds[0])
    # each group's records shuffled, the groups in a shuffled order, then one record of each group
    # in turn (round-robin): sorted by (place in its group, the group's turn); O(n log n) for any
    # number of groups
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(sizes)[:-1])
    members = [rng.permutation(m) for m in members]
    turn = np.empty(len(kinds), dtype=np.int64)
    turn[rng.permutation(len(kinds))] = np.arange(len(kinds))
    idx = np.concatenate(members)
    place = np.concatenate([np.arange(len(m)) for m in members])
    group_turn = np.repeat(turn, sizes)
    order = idx[np.lexsort((group_turn, place))]
    return Picked({"group": names}, order.astype(np.int64), {"counts": {"groups": len(kinds)}})


def _no_field(by: str, first) -> str:
    """Why no record has field ``by``: the first record's fields, or that the dotted path's head is
    text (a JSON object stored as a string, as in a CSV column) rather than an object."""
    head = by.split(".")[0]
    if "." in by and isinstance(first, dict) and isinstance(first.get(head), str):
        return (f"--by {by}: field {head!r} is text, not an object (a JSON object stored as a string, "
                "as in a CSV column?), so its parts cannot be read with dots")
    shown = ", ".join(sorted(map(str, first))[:12]) if isinstance(first, dict) else type(first).__name__
    return (f"--by {by}: no record has this field (the first record's fields: {shown}); "
            "a nested field is written with dots, e.g. meta.source")
