"""Where a record is, what a user value looks like, and the located one-line errors about them.

Every reader yields rows with a :class:`Loc`; every defect found in a row becomes an
:class:`~tunesift.errors.InputError` made by :func:`located_error`, whose message names the file,
the line (or row) and the field. The short descriptions (:func:`type_name`, :func:`show`) keep
those messages on one line whatever the value holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from tunesift.errors import InputError

__all__ = [
    "Loc",
    "clip",
    "located_error",
    "missing_field",
    "one_line",
    "show",
    "text_value",
    "type_name",
    "valid_text",
    "with_article",
]

_ONE_LINE = re.compile(r"\s+")


class Loc(NamedTuple):
    """Where a row is: ``line`` is ``Record.line`` (the JSONL line, or the 1-based row / array
    element); ``note`` says how to find it where ``line`` is not the file line; ``unit`` is
    ``"line"``, ``"row"`` or ``"element"`` (names a second location in messages)."""

    line: int
    note: str | None
    unit: str


def type_name(value: Any) -> str:
    """The JSON name of a value's type (``null``, ``boolean``, ``number``, ``string``, ``array``,
    ``object``), else the Python type name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, Decimal)):  # JSON numbers past float's range read as Decimal
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def with_article(noun: str) -> str:
    """``"an array"``, ``"a string"``."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def show(value: Any, limit: int = 40) -> str:
    """A short one-line repr of a user value (at most ``limit`` characters)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(error: BaseException | str) -> str:
    """An exception's text on one line, at most 300 characters."""
    text = _ONE_LINE.sub(" ", str(error)).strip()
    return text if len(text) <= 300 else text[:297] + "..."


def first_line(error: BaseException) -> str:
    """The first line of an exception's text (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending with ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def located_error(source: str, loc: Loc, reason: str, fld: str | None = None) -> InputError:
    """An InputError at ``loc``; the reason ends with where that is when ``line`` is not a file line."""
    if loc.note:
        reason += f" ({loc.note})"
    return InputError(source, reason, line=loc.line, field=fld)


def missing_field(source: str, loc: Loc, row: dict, name: str, why: str) -> InputError:
    """A missing required field, listing the fields the row has (``why``: the schema it must fit)."""
    keys = list(row)
    found = ", ".join(show(k, 30) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    return located_error(
        source,
        loc,
        f"missing field (fields found: {found or 'none'}); every record must fit {why}",
        name,
    )


def text_value(row: dict, name: str, loc: Loc, source: str, why: str) -> str:
    """The string value of a required field (missing, null, another type: a located error)."""
    if name not in row:
        raise missing_field(source, loc, row, name, why)
    value = row[name]
    if value is None:
        raise located_error(source, loc, "is null, expected a string", name)
    if not isinstance(value, str):
        raise located_error(
            source, loc, f"expected a string, got {with_article(type_name(value))} ({show(value)})", name
        )
    return valid_text(value, loc, source, name)


def valid_text(value: str, loc: Loc, source: str, at: str) -> str:
    """``value``, if it is valid Unicode text (no lone surrogate such as a JSON ``\\ud800``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise located_error(
            source,
            loc,
            f"not valid Unicode text: a lone surrogate {value[e.start]!r} at character {e.start + 1}",
            at,
        ) from None
    return value
