"""Retention by category: how much of each value of a field of the original rows was kept."""

from __future__ import annotations

import json
from typing import Any

from ..errors import TunesiftError
from .read import Input, Output

__all__ = ["MISSING", "field_value", "retention"]

MISSING = object()  # field_value's answer for a row without the field


def field_value(row: Any, name: str) -> Any:
    """``row[name]``, or with a dotted name the nested value (``meta.family``); ``MISSING`` if absent."""
    if isinstance(row, dict) and name in row:
        return row[name]
    cur = row
    for part in name.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return MISSING
    return cur


def category(value: Any) -> str:
    """A field value as a category name: strings as is, other values as JSON, absent as (missing)."""
    if value is MISSING:
        return "(missing)"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


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
