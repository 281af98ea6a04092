"""Values of a record's original row by (dotted) field name, and their category names: what
``balanced-random --by`` groups on and the report's retention table counts."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from .io.json_values import json_line

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
    """A field value as a category name: strings as is, other values as JSON, absent as (missing).
    One name per value: a string that would read as another value's name (``"3"`` beside the number
    3, ``"null"``, ``"(missing)"``, any text that parses as JSON) is shown as its JSON string."""
    if value is MISSING:
        return "(missing)"
    if isinstance(value, str):
        if value == "(missing)":
            return json.dumps(value, ensure_ascii=False)
        try:
            json.loads(value)
        except RecursionError:  # JSON nested past Python's limit: it reads as a value all the same
            pass
        except ValueError:
            return value
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal) and value.is_finite():
        if value.as_tuple().exponent >= 0 and value.adjusted() < 300:  # no fractional digits
            value = int(value)  # (decimal(p, 0)): JSON's 1, not 1.0; 1e5000 stays a tagged decimal
        elif Decimal(repr(float(value))) == value:
            value = float(value)  # Parquet's 1.50 and JSON's 1.5 are one value: one name
    # exact decimals as their digits, bytes and dates in the tagged forms of the JSON Lines output:
    # a Decimal and the text of its digits, or bytes and the text of their repr, never share a name
    return json_line(value, sort_keys=True)
