"""Methods that read no model: ``random`` (the baseline every method must beat) and
``balanced-random`` (random with an equal share per value of a field, ``--by``)."""

from __future__ import annotations

import numpy as np

from ..rowfields import category, field_value
from .registry import Job, Picked


def run_random(job: Job) -> Picked:
    """A seeded uniform permutation: the first k are kept."""
    return Picked({}, np.random.default_rng(job.opt.seed).permutation(len(job.records)))


def run_balanced_random(job: Job) -> Picked:
    """Equal shares per value of the field ``--by`` (e.g. ``meta.source``), random within each.

    Each group is shuffled (seeded), the group order is shuffled, then the groups are interleaved
    one record at a time, skipping groups that ran out: the first k of that order give every group
    ``floor(k / groups)`` or one more, and a group smaller than its share gives its whole size with
    the rest spread over the larger groups. Records without the field form their own group,
    ``(missing)``. Column ``group``: each record's group name.
    """
    by = job.opt.by
    rng = np.random.default_rng(job.opt.seed)
    names = np.array([category(field_value(r.row, by)) for r in job.records], dtype=object)
    groups = [rng.permutation(np.flatnonzero(names == g)) for g in sorted(set(names))]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    order = [int(g[i]) for i in range(max(len(g) for g in groups)) for g in groups if i < len(g)]
    return Picked({"group": names}, np.asarray(order, dtype=np.int64), {"groups": len(groups)})
