"""Rows as the output formats hold them: JSON Lines values and Arrow columns.

JSON Lines keeps every value as it was read where JSON can hold it; values JSON cannot hold are
written in a documented, loss-free tagged form (docs/input-formats.md): ``{"$bytes": base64}``,
``{"$float": "NaN" | "Infinity" | "-Infinity"}``, ``{"$datetime": ISO 8601}``, ``{"$date": ...}``,
``{"$time": ...}``, ``{"$duration": ISO 8601 seconds}``; decimals are JSON numbers with their
exact digits (:mod:`tunesift.io.json_values`). Arrow holds one type per column
(:func:`column_array`); :func:`check_rows_writable` checks, before any scoring, that every record
fits the output format, and returns the column types the writer then uses
(:mod:`tunesift.outputs`).
"""

from __future__ import annotations

import decimal
import logging
import math

from .errors import InputError, TunesiftError
from .io.describe import clip, first_line
from .io.json_values import json_value

log = logging.getLogger(__name__)


def type_of(types, name):
    """Column ``name``'s type in ``types`` (a pyarrow Schema or None), or None."""
    if types is None:
        return None
    i = types.get_field_index(str(name))
    return types.field(i).type if i >= 0 else None


def arrow_column(name: str, values: list, type=None):
    """One column as Arrow infers it, or as ``type`` (:func:`column_array`), with a warning when
    its decimals were written as floats."""
    array, rounded = column_array(values, type)
    if rounded:
        log.warning("column %s holds numbers a double cannot hold exactly beside other values: written as "
                    "floats (rounded); --out-format jsonl keeps their digits", repr(name))
    return array


def column_array(values: list, type=None):
    """``(array, rounded)``: one column as Arrow infers it (or as ``type``). JSON numbers read as
    decimals (more digits than a double holds, or beyond its range: io.files.exact_number) that
    Arrow cannot fit in one type with the rest (beside floats or integers, inside lists or
    objects, past decimal128) become floats (``rounded``): Arrow holds one type per column, and
    selected.jsonl keeps their digits. Raises what ``pyarrow.array`` raises otherwise."""
    import pyarrow as pa

    try:
        return pa.array(values, type=type), False
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if not _has_decimal(values):
            raise
    return pa.array(_decimals_as_floats(values), type=type), True


def check_rows_writable(records: list, source: str = "<rows>", schema=None, *, out_format: str):
    """Refuse, before any scoring, input the kept-records file could not hold, whichever records
    are kept: one :class:`~tunesift.errors.InputError` naming the source, the record (its line in
    JSON Lines or in-memory rows; otherwise its position and id) and the field. Only records
    without a read defect count (the others are never kept).

    * ``jsonl``: a value JSON Lines has no form for (an object of an unknown type given in memory).
    * ``parquet`` / ``hf`` from rows without an Arrow schema (JSON Lines, CSV, dicts, a
      DataFrame): a field whose values Arrow cannot hold in one column (an integer beyond int64,
      a number in one record and text in another), one ``pyarrow.array`` per field over every
      record; the record named is found by bisection on the column's prefix, O(log n) more
      conversions of that field (a record that breaks a prefix that converted).
    * ``parquet``: a column type Parquet cannot store (an object that is ``{}`` in every record:
      a struct with no fields).
    * ``hf``: a column type ``datasets`` has no feature for (a Parquet map column).

    Returns the column types found over every record (a ``pyarrow.Schema``; None for ``jsonl``
    or rows read with an Arrow schema, which hold their schema's types): the writer converts the
    kept rows to these types (:func:`_write_selected`), so a column it would type differently
    from the kept rows alone (``{}`` in every kept record, integers that only a decimal column of
    all the records holds) is written as checked. Cost: about one conversion of the data to
    Arrow, column by column (the peak is one column), once per run."""
    rows = [r for r in records if r.error is None]
    if source.startswith("<"):  # rows given in memory: only they can have keys that are not text
        for r in rows:
            if (clash := _key_clash(r.row)) is not None:
                line, who = _record_at(source, r)
                raise InputError(source, f"{who}has the keys {str(clash)!r} and {clash!r}, one key once written "
                                 "as text: rename one", line=line, field=str(clash))
    if out_format == "jsonl":
        for r in rows:
            for name, v in r.row.items():
                try:
                    json_value(v)
                except TunesiftError as e:
                    line, who = _record_at(source, r)
                    raise InputError(source, who + str(e), line=line, field=str(name)) from None
        return None
    import pyarrow as pa

    arrow_errors = (OverflowError, UnicodeError, TypeError, ValueError, pa.ArrowInvalid, pa.ArrowTypeError,
                    pa.ArrowNotImplementedError)  # ArrowInvalid is a ValueError; TypeError: numpy times, int keys
    found = None
    if schema is None:
        fields = []
        names = list(dict.fromkeys(k for r in rows for k in r.row))
        for name in names:
            values = [r.row.get(name) for r in rows]
            try:
                array, _ = column_array(values)
                fields.append(pa.field(str(name), array.type))
            except arrow_errors as exc:
                line, who = _record_at(source, rows[_first_breaking(values)])
                raise InputError(source, f"{who}cannot be written as {out_format} ({_arrow_reason(exc)}); "
                                 "use --out-format jsonl", line=line, field=str(name)) from None
            del array
        schema = found = pa.schema(fields)
    if out_format == "parquet":  # types Arrow holds but Parquet does not (a struct with no fields: {})
        import pyarrow.parquet as pq

        for f in schema:
            try:
                pq.write_table(pa.schema([f]).empty_table(), pa.BufferOutputStream())
            except arrow_errors as exc:
                raise InputError(source, f"cannot be written as parquet ({clip_line(exc)}); "
                                 "use --out-format jsonl", field=f.name) from None
    if out_format == "hf":
        import datasets

        for f in schema:
            try:
                datasets.Features.from_arrow_schema(pa.schema([f]))
            except (ValueError, TypeError, NotImplementedError) as exc:
                raise InputError(source, f"cannot be written as hf ({clip_line(exc)}); "
                                 "use --out-format parquet or jsonl", field=f.name) from None
    return found


def _key_clash(value):
    """The first key of ``value`` (a row, or any object or list inside it) that is not text and
    whose text is another key of the same object (``1`` beside ``"1"``: written as JSON or Arrow
    they are one key, and one value would be lost), else None."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            seen: set[str] = set()
            for k in sorted(value, key=lambda k: not isinstance(k, str)):  # the text keys first
                if str(k) in seen:
                    return k
                seen.add(str(k))
        value = value.values()
    elif not isinstance(value, (list, tuple)):
        return None
    for v in value:
        if isinstance(v, (dict, list, tuple)) and (k := _key_clash(v)) is not None:
            return k
    return None


def _record_at(source: str, r) -> tuple[int | None, str]:
    """Where record ``r`` is, for an InputError: its line for JSON Lines (``.jsonl``, ``.ndjson``,
    gzipped, or a ``.json`` file of lines) and in-memory rows (``<rows>:N``), else (a JSON array's
    element, a CSV or Parquet row) its position and id."""
    if source == "<rows>" or getattr(r, "unit", "line") == "line":
        return r.line, ""
    return None, f"record {r.line} (id {r.id}) "


def _arrow_reason(exc: BaseException) -> str:
    if isinstance(exc, OverflowError):
        return "an integer outside the 64-bit range"
    if isinstance(exc, UnicodeError):
        return "text that is not valid Unicode (a lone surrogate)"
    if "Could not convert" in str(exc) or "cannot mix" in str(exc):  # values of two types in one column
        return f"Arrow holds one type per column: {clip_line(exc)}"
    return f"Arrow cannot hold the value: {clip_line(exc)}"


def clip_line(exc: BaseException, width: int = 160) -> str:
    """The first line of an exception's message, without its final period, at most ``width``
    characters (Arrow quotes whole values)."""
    return clip(first_line(exc).rstrip("."), width)


def _first_breaking(values: list) -> int:
    """The smallest m such that ``values[:m + 1]`` cannot be one Arrow column (a prefix that
    fails stays failing as it grows): the record that breaks the column."""
    lo, hi = 0, len(values) - 1  # values[:hi + 1] fails
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            column_array(values[:mid + 1])
            lo = mid + 1
        except Exception:  # noqa: BLE001 - any failure of the prefix counts, as in the full column
            hi = mid
    return lo


def _has_decimal(v) -> bool:
    if isinstance(v, decimal.Decimal):
        return True
    if isinstance(v, dict):
        return any(_has_decimal(x) for x in v.values())
    return isinstance(v, (list, tuple)) and any(_has_decimal(x) for x in v)


def _decimals_as_floats(v):
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, dict):
        return {k: _decimals_as_floats(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_decimals_as_floats(x) for x in v]
    return v


class MixedColumns:
    """Top-level fields whose values are plain JSON numbers in some kept rows and a tagged form in
    others (``{"$float": "NaN"}`` among floats, say): loss-free, but a JSON loader that infers one
    type per column (``pyarrow.json``, ``datasets``' JSON builder in older versions, pandas) refuses
    or stringifies such a column. :meth:`warn` names them and the format that keeps their type."""

    def __init__(self) -> None:
        self.kinds: dict[str, set[str]] = {}

    def add(self, row: dict) -> None:
        for k, v in row.items():
            if v is None or isinstance(v, (bool, str, list, tuple, dict)):
                continue
            plain = isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))
            kind = "number" if plain or not isinstance(json_value(v), dict) else "tagged"  # a finite Decimal: a number
            self.kinds.setdefault(k, set()).add(kind)

    def columns(self) -> list[str]:
        return [k for k, kinds in self.kinds.items() if kinds == {"number", "tagged"}]

    def warn(self) -> None:
        if cols := self.columns():
            log.warning("selected.jsonl: %s mix%s numbers with tagged values (NaN or Infinity as {\"$float\": ...}, a "
                        "non-finite decimal as {\"$decimal\": ...}); JSON loaders that infer one type per column may refuse "
                        "it: --out-format parquet keeps the column's type", ", ".join(cols),
                        "es" if len(cols) == 1 else "")
