"""Retention by category: how much of each value of a field of the original rows was kept."""

from __future__ import annotations

from ..errors import TunesiftError
from ..rowfields import MISSING, category, field_value
from .read import Input, Output

__all__ = ["MISSING", "field_value", "retention"]


def retention(res: Output, inp: Input, by: str) -> list[tuple[str, int, int]]:
    """(category, input count, kept count) per value of field ``by``, largest categories first."""
    counts: dict[str, list[int]] = {}
    for row in res.selected:
        counts.setdefault(category(field_value(row, by)), [0, 0])[1] += 1
    assert inp.rows is not None
    for row in inp.rows.values():
        counts.setdefault(category(field_value(row, by)), [0, 0])
    for row in list(res.selected) + list(inp.rows.values()):
        counts[category(field_value(row, by))][0] += 1
    if set(counts) == {"(missing)"}:
        raise TunesiftError(f"--by {by}: no record has the field '{by}' (use a dotted name like "
                            "meta.family for a nested field)")
    return sorted(((c, n, k) for c, (n, k) in counts.items()), key=lambda t: (-t[1], t[0]))
