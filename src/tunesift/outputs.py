"""Write a selection: the kept records, ``scores.parquet`` and ``manifest.json`` (and, asked for, ``report.html``), as one unit.

:func:`save_selection` is what ``tunesift select --out`` and ``Selection.save`` /
``tunesift.select(..., out=)`` both call, so the two write the same files under the same rules.

The kept records are ``selected.jsonl`` (``--out-format jsonl``, the default),
``selected.parquet`` (``parquet``: native types kept) or the ``selected/`` folder of
``datasets.Dataset.save_to_disk`` (``hf``). Beside them, ``dataset_info.json`` registers the kept
records for LLaMA-Factory (``dataset: selection``; :func:`tunesift.io.trainers.dataset_info`) when
the input's schema has a LLaMA-Factory form.

Safety rules (docs/errors.md):

* The output folder holds tunesift's files only. It must be new, empty, or the output of an
  earlier selection as tunesift wrote it (only the files this module writes, plus
  ``report.html``; each with the SHA-256 its ``manifest.json`` lists: a user's file under one of
  these names, or a selection edited by hand, is never replaced); it must not be the
  current folder (``--out ''`` or ``--out .``), a folder above it, a folder holding an input, or
  a folder inside an input folder. A dangling symlink is refused; any other symlink is followed.
* The whole set is written into a new folder beside the output folder and then swapped into place
  in one step (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, with the previous
  set kept beside it as ``.NAME.old-*`` until the new one is in place). Readers therefore see the
  previous set or the complete new one. A killed run's staging folder is removed by the next
  run (:func:`tunesift.folders.sweep_stale`). ``manifest.json`` also lists the SHA-256 of every other
  file of the set (``files``), so a reader can check that the files belong together.
* Writability is checked up front with a real probe write where the new set is staged, beside the
  folder (``os.access`` is always true for root and knows nothing of full disks or read-only
  pseudo file systems such as ``/proc``). A failed write leaves no staging or new parent folder.

JSON Lines output keeps every value as it was read where JSON can hold it. Values JSON cannot
hold are written in a documented, loss-free tagged form (docs/input-formats.md):
``{"$bytes": base64}``, ``{"$float": "NaN" | "Infinity" | "-Infinity"}``,
``{"$datetime": ISO 8601}``, ``{"$date": ...}``, ``{"$time": ...}``,
``{"$duration": ISO 8601 seconds}``; decimals are JSON numbers with their exact digits. The output
is strict JSON (no bare ``NaN``); a lone surrogate in a string is written as its ``\\uXXXX``
escape, exactly as it was read.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from .errors import InputError, OptionError, TunesiftError
from .folders import check_earlier_set, digests, publish
from .io.chat import chat_tags
from .io.records import schema_of
from .io.trainers import DATASET_NAME, dataset_info, unreadable_tools, unreadable_turn
from .pipeline import Selection, options_dict, type_label, versions
from .store import probe_write

log = logging.getLogger(__name__)

OUT_FORMATS = ("jsonl", "parquet", "hf")
SELECTED = {"jsonl": "selected.jsonl", "parquet": "selected.parquet", "hf": "selected"}
#: Every name an output folder of tunesift may hold.
OWN = frozenset(set(SELECTED.values()) | {"scores.parquet", "manifest.json", "report.html", "dataset_info.json"})
FILES = ("selected.jsonl", "scores.parquet", "manifest.json")  # the default set
REPORT_MARKER = "<title>tunesift report"  # how a report.html tunesift wrote is told from a user's page


def _probe(folder: Path, what: str) -> None:
    """Write, sync and delete a small file in ``folder``; an OptionError in one line if that fails."""
    try:
        probe_write(folder)
    except OSError as exc:
        raise OptionError(f"cannot write in {what}: {exc.strerror or exc}") from None


def existing_parent(p: Path) -> Path:
    """``p`` or the nearest folder above it that exists (where a new folder would be created)."""
    parent = p
    while True:
        try:
            if parent.exists():
                return parent
        except OSError:
            pass
        if parent == parent.parent:
            return parent
        parent = parent.parent


def check_writable(out_dir: str | Path) -> Path:
    """Fail early (before any scoring) when the output folder cannot be created or replaced: the
    nearest existing folder above it, where the new set is staged, gets a real probe write.
    Returns the path (symlinks resolved)."""
    raw = str(out_dir)
    if not raw.strip():
        raise OptionError("--out is empty: name the output folder")
    out = Path(out_dir)
    try:
        if out.is_symlink() and not out.exists():
            raise OptionError(f"output '{out}' is a symlink to a missing folder ({os.readlink(out)})")
        out = Path(os.path.realpath(out))
        if out.exists() and not out.is_dir():
            raise OptionError(f"output '{out_dir}' exists and is not a folder")
    except OSError as exc:
        raise OptionError(f"output '{out_dir}': {exc.strerror or exc}") from None
    # the new set is staged in a folder beside ``out`` and swapped in: its parent is what must be writable
    parent = existing_parent(out.parent)
    if not parent.is_dir():
        raise OptionError(f"output '{out_dir}': '{parent}' is not a folder")
    _probe(parent, f"'{parent}' (where output '{out_dir}' " + ("is replaced as a whole)" if out.exists()
                                                               else "would be created)"))
    return out


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_apart(out: Path, out_dir: str | Path, inputs: list[str | Path | None], why: str) -> None:
    """A one-line OptionError when an input lies inside the output folder ``out`` (resolved; shown
    as ``out_dir``) or the output folder inside an input folder: writing the output must never touch
    what the user gave. ``why``: what the command does to the folder, for the message."""
    for given in inputs:
        if given is None:
            continue
        try:
            src = Path(os.path.realpath(given))
            src_is_dir = src.is_dir()
        except OSError as exc:
            raise OptionError(f"input '{given}': {exc.strerror or exc}") from None
        if _inside(src, out):
            raise OptionError(f"input '{given}' is inside the output folder '{out_dir}', {why}: "
                              "write the output to another folder")
        if src_is_dir and _inside(out, src):
            raise OptionError(f"output folder '{out_dir}' is inside the input folder '{given}': "
                              "write the output elsewhere")


def check_cache_apart(out_dir: str | Path, cache_dir: str | Path) -> None:
    """A one-line OptionError when the score cache lies inside the output folder: the folder is
    replaced as a whole, so the cache would be refused (a folder tunesift did not write) only after
    all the scoring, or lost with it. Checked before any work."""
    out, cache = Path(os.path.realpath(out_dir)), Path(os.path.realpath(cache_dir))
    if _inside(cache, out):
        raise OptionError(f"the score cache '{cache_dir}' is inside the output folder '{out_dir}', which is "
                          "replaced as a whole: keep --cache-dir elsewhere")


def check_output_folder(out_dir: str | Path, inputs: list[str | Path] = (), own: frozenset[str] | None = OWN,
                        manifest: str = "manifest.json", unlisted: dict[str, str] | None = None,
                        ours: Callable[[dict], bool] | None = None) -> Path:
    """The checks of :func:`check_writable`, and that the folder is one tunesift may replace as a
    whole: not the current folder or above it, holding no input and not inside an input folder,
    and holding nothing but an earlier output's files (``own``; None: any names), each as tunesift
    wrote it (:func:`tunesift.folders.check_earlier_set`: ``manifest``, tunesift's by ``ours``, names
    them and their checksums; ``unlisted``, default ``report.html``, are recognised by a marker)."""
    unlisted = {"report.html": REPORT_MARKER} if unlisted is None else unlisted
    out = check_writable(out_dir)
    cwd = Path(os.path.realpath(Path.cwd()))
    if _inside(cwd, out):
        raise OptionError(f"--out '{out_dir}' is the current folder (or a folder above it); the output "
                          "folder is replaced as a whole: name a new folder, e.g. --out out/")
    check_apart(out, out_dir, inputs, "which is replaced as a whole")
    if out.is_dir():
        try:
            foreign = sorted(p.name for p in out.iterdir() if own is not None and p.name not in own)
        except OSError as exc:
            raise OptionError(f"output folder '{out_dir}' cannot be listed: {exc.strerror}") from None
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise OptionError(f"output folder '{out_dir}' holds files tunesift did not write ({shown}); "
                              "it is replaced as a whole: choose a new or empty folder")
        try:
            check_earlier_set(out, out_dir, manifest, unlisted, ours, names_checked=own is not None)
        except OSError as exc:
            raise OptionError(f"output folder '{out_dir}' cannot be read: {exc.strerror or exc}") from None
    return out


# ----------------------------------------------------------------------------- values


def json_value(v):
    """A value as strict JSON can hold it (see the module docstring for the tagged forms)."""
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {"$float": "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")}
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, str) else k: json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(v)).decode("ascii")}
    if type(v).__name__ in ("NaTType", "NAType"):  # pandas' missing time / value: null, as from_pandas reads it
        return None
    if isinstance(v, decimal.Decimal):
        if v.is_finite():
            return _decimal_marker(v)
        return {"$decimal": str(v)}
    if type(v).__name__ == "Timestamp" and hasattr(v, "isoformat"):  # pandas, nanoseconds kept
        return {"$datetime": v.isoformat()}
    if isinstance(v, dt.datetime):
        return {"$datetime": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$time": v.isoformat()}
    if isinstance(v, dt.timedelta):
        ns = v.value if type(v).__name__ == "Timedelta" else (v // dt.timedelta(microseconds=1)) * 1000
        return _duration(ns)
    kind = getattr(getattr(v, "dtype", None), "kind", None)
    if kind in ("M", "m"):  # numpy datetime64 / timedelta64, scalar or array: .item() may give bare ns
        return _numpy_time(v)
    if getattr(v, "ndim", 0) and hasattr(v, "tolist"):  # a numpy array (it has .item too): a list
        return json_value(v.tolist())
    if hasattr(v, "item") and callable(v.item):  # numpy scalar (a 0-d array too)
        return json_value(v.item())
    if isinstance(v, (set, frozenset)):
        return [json_value(x) for x in sorted(v, key=repr)]
    raise TunesiftError(f"cannot write a value of type {type(v).__name__} to JSON Lines; use --out-format parquet")


def _duration(ns: int) -> dict:
    """``{"$duration": "PT<seconds>S"}`` from integer nanoseconds, in plain digits (ISO 8601 has no
    exponents; a float would write 1 microsecond as 1e-06)."""
    secs = decimal.Decimal(int(ns)).scaleb(-9)
    return {"$duration": f"PT{format(secs.normalize(), 'f')}S"}


def _numpy_time(v):
    """numpy datetime64 / timedelta64 values (an array: a list of them) in the tagged forms; NaT: null."""
    import numpy as np

    if getattr(v, "ndim", 0):
        return [_numpy_time(x) for x in v]
    if np.isnat(v):
        return None
    if v.dtype.kind == "m":
        return _duration(int(v.astype("timedelta64[ns]").astype(np.int64)))
    text = str(np.datetime_as_string(v, unit="auto"))
    return {"$date": text} if v.dtype == np.dtype("datetime64[D]") else {"$datetime": text}


# Marks a Decimal's digits until the JSON text is made. The per-process nonce keeps a user's string
# that happens to spell the marker from being written as a number.
_NONCE = secrets.token_hex(8)
_DEC = f"\x00tunesift-decimal-{_NONCE}:"
_DEC_RE = re.compile(rf'"\\u0000tunesift-decimal-{_NONCE}:([-+0-9.eE]+)"')


def _decimal_marker(d: decimal.Decimal) -> str:
    return _DEC + (format(d, "f") if abs(d.adjusted()) < 30 else str(d).replace("E", "e"))


def json_line(row: dict) -> str:
    """One strict-JSON line for ``row``: UTF-8 text, with a lone surrogate kept as its escape."""
    value = json_value(row)
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return _DEC_RE.sub(r"\1", text) if _NONCE in text else text


# ----------------------------------------------------------------------------- the set


def counts(sel: Selection) -> dict:
    """The manifest's ``counts``: every input record accounted for. ``input`` records were selected
    from (one row each in scores.parquet): ``kept`` + ``dropped``, ``errors`` of them error rows.
    With ``--limit`` / ``--sample`` also: ``read`` records read from the input, ``not_sampled``
    of them left out by ``--sample``, ``not_read`` after the first ``--limit`` (null when not
    counted: the rest of a file is not parsed). Then any counts the method adds
    (``Picked.extra["counts"]``; ``random --within``: ``within``, the records that match)."""
    n = len(sel.records)
    kept = int(sel.kept.sum())
    out = {"input": n, "kept": kept, "dropped": n - kept, "errors": int(sel.extra.get("errors", 0))}
    part = sel.extra.get("read") or {}
    if part.get("limit") is not None or part.get("sample") is not None:
        out.update({k: part.get(k) for k in ("read", "not_sampled", "not_read")})
    out.update(sel.extra.get("counts") or {})
    return out


def manifest(sel: Selection, inputs: dict[str, dict], files: dict[str, str] | None = None,
             out_format: str = "jsonl") -> dict:
    """What was run, on what, with which model and versions, what came out, and how long it took."""
    return {
        "tool": "tunesift",
        "method": sel.method,
        "options": options_dict(sel.options),
        "budget": sel.budget,
        "model": sel.model,
        "inputs": inputs,
        "counts": counts(sel),
        "objective": sel.extra.get("objective"),
        "schema": sel.extra.get("schema"),  # how the input was read (alpaca, sharegpt, messages, ...)
        "fields": sel.extra.get("fields") or {},  # --prompt-field, --id-field ... (FieldMap), as given
        "template": sel.extra.get("template"),  # how records were rendered for the model (chat | plain)
        # --utility learned: labelled / held-out pairs and the held-out fidelity, per kernel
        **({"surrogate": sel.extra["surrogate"]} if sel.extra.get("surrogate") else {}),
        "versions": versions(),
        "timings": {k: round(v, 3) for k, v in sel.timings.items()},
        "out_format": out_format,
        "files": files or {},
    }


def _scores_table(sel: Selection):
    """scores.parquet; a string that is not valid Unicode (a lone surrogate in an id or an error
    reason) is written as its ``\\uXXXX`` escape."""
    try:
        return sel.table()
    except (UnicodeError, ValueError):
        pass
    import dataclasses

    import numpy as np

    def esc(x):
        if not isinstance(x, str):
            return x
        try:
            x.encode("utf-8")
            return x
        except UnicodeEncodeError:
            return x.encode("utf-8", "backslashreplace").decode("utf-8")

    records = [dataclasses.replace(r, id=esc(r.id)) for r in sel.records]
    cols = {k: (np.array([esc(x) for x in v], dtype=object) if np.asarray(v).dtype == object else v)
            for k, v in sel.columns.items()}
    return dataclasses.replace(sel, records=records, columns=cols).table()


def _write_selected(sel: Selection, tmp: Path, out_format: str) -> None:
    """The kept rows; Parquet and hf use the input's Arrow schema when it had one (native types)."""
    rows = sel.rows
    if out_format == "jsonl":
        mixed = MixedColumns()
        with open(tmp / "selected.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json_line(row) + "\n")
                mixed.add(row)
        mixed.warn()
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = sel.extra.get("input_schema")
    try:
        table = None
        if schema is not None:
            try:
                table = pa.Table.from_pylist(rows, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError):
                table = None
        if table is None:
            # every field any kept row has, in first-seen order (null where a row lacks it):
            # from_pylist alone takes the columns of the first row only
            # as checked before scoring over every record (check_rows_writable), where it was
            types = sel.extra.get("row_types")
            names = list(dict.fromkeys(k for row in rows for k in row))
            table = pa.table({str(k): _arrow_column(k, [row.get(k) for row in rows],
                                               _type_of(types, k)) for k in names}) if names \
                else pa.Table.from_pylist(rows)
        if out_format == "parquet":
            pq.write_table(table, tmp / "selected.parquet")
        else:
            _save_to_disk(table, tmp / "selected")
    # OverflowError: an integer beyond int64; ValueError / TypeError: a type datasets cannot hold (a map)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeError, OverflowError,
            ValueError, TypeError) as exc:
        raise TunesiftError(f"cannot write the kept records as {out_format}: {str(exc).splitlines()[0]}; "
                            "use --out-format jsonl") from None


def _type_of(types, name):
    """Column ``name``'s type in ``types`` (a pyarrow Schema or None), or None."""
    if types is None:
        return None
    i = types.get_field_index(str(name))
    return types.field(i).type if i >= 0 else None


def _arrow_column(name: str, values: list, type=None):
    """One column as Arrow infers it, or as ``type`` (:func:`_column_array`), with a warning when
    its decimals were written as floats."""
    array, rounded = _column_array(values, type)
    if rounded:
        log.warning("column %s holds numbers a double cannot hold exactly beside other values: written as "
                    "floats (rounded); --out-format jsonl keeps their digits", repr(name))
    return array


def _column_array(values: list, type=None):
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
                array, _ = _column_array(values)
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


def _record_at(source: str, r) -> tuple[int | None, str]:
    """Where record ``r`` is, for an InputError: its line for JSON Lines and in-memory rows
    (``<rows>:N``), else (a JSON array's element, a CSV or Parquet row) its position and id."""
    if source == "<rows>" or source.lower().endswith(".jsonl"):
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
    text = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
    return text if len(text) <= width else text[:width - 3] + "..."


def _first_breaking(values: list) -> int:
    """The smallest m such that ``values[:m + 1]`` cannot be one Arrow column (a prefix that
    fails stays failing as it grows): the record that breaks the column."""
    lo, hi = 0, len(values) - 1  # values[:hi + 1] fails
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            _column_array(values[:mid + 1])
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
            log.warning("selected.jsonl: %s mix%s numbers with tagged values (NaN, Infinity or a non-finite "
                        "decimal as {\"$float\": ...}); JSON loaders that infer one type per column may refuse "
                        "it: --out-format parquet keeps the column's type", ", ".join(cols),
                        "es" if len(cols) == 1 else "")


def _save_to_disk(table, folder: Path) -> None:
    import datasets

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # its "Saving the dataset" bar would print even under -q
    try:
        datasets.Dataset(table).save_to_disk(str(folder))
    finally:
        if shown:
            datasets.enable_progress_bars()


def _write_dataset_info(sel: Selection, tmp: Path, out_format: str) -> None:
    """LLaMA-Factory's ``dataset_info.json`` beside the kept records (docs/trainers.md), when the
    input's schema has a LLaMA-Factory form; for ``hf`` it names the folder's one Arrow file."""
    schema = schema_of(sel.records)
    if schema is None:
        return
    file_name = SELECTED[out_format]
    if out_format == "hf":
        shards = sorted(p.name for p in (tmp / file_name).glob("*.arrow"))
        if len(shards) != 1:  # LLaMA-Factory reads one file, or a folder of files of one type only
            log.warning("no dataset_info.json for LLaMA-Factory: the hf output has %d Arrow files; "
                        "use --out-format jsonl or parquet", len(shards))
            return
        file_name += "/" + shards[0]
    present = {k for row in sel.rows for k in row}
    if schema.kind == "chat" and "tools" in present and (why := unreadable_tools(sel.rows)):
        log.warning("dataset_info.json leaves tools unmapped: %s (tunesift does not score them)", why)
        present.discard("tools")
    entry = dataset_info(schema, file_name, present=present)
    if entry is not None and entry["formatting"] == "sharegpt" and sel.rows:
        # spelled as the kept rows spell their turns: the first input row (the schema's) may be dropped
        entry["tags"] = chat_tags(sel.rows[0].get(schema.messages))
    why = entry and entry["formatting"] == "sharegpt" and unreadable_turn(sel.rows, schema.messages, entry["tags"])
    if why:
        log.warning("no dataset_info.json for LLaMA-Factory: %s", why)
        return
    if entry is not None:
        text = json.dumps({DATASET_NAME: entry}, indent=2, ensure_ascii=False)
        (tmp / "dataset_info.json").write_text(text + "\n", encoding="utf-8")


def write_selection(sel: Selection, out_dir: str | Path, inputs: dict[str, dict] | None = None, *,
                    out_format: str = "jsonl", input_paths: list[str | Path] = (), report: bool = False) -> Path:
    """Write the selection into ``out_dir`` as one unit (see the module docstring); returns the folder.
    ``report``: ``report.html`` is rendered in the staging folder too, so a report that fails
    leaves the earlier set (or no folder) as it was, not a new set without its report."""
    import pyarrow.parquet as pq

    check_save(out_format, report)
    out = check_output_folder(out_dir, input_paths)

    def fill(tmp: Path) -> None:
        _write_selected(sel, tmp, out_format)
        _write_dataset_info(sel, tmp, out_format)
        pq.write_table(_scores_table(sel), tmp / "scores.parquet")
        files = digests(tmp)
        text = json.dumps(json_value(manifest(sel, inputs or {}, files, out_format)), indent=2, allow_nan=False)
        (tmp / "manifest.json").write_text(text + "\n", encoding="utf-8")
        if report:  # last: it reads the set back; recognised by its title, not a checksum
            from .report import REPORT_FILE, render_report

            (tmp / REPORT_FILE).write_text(render_report(tmp, shown_as=out), encoding="utf-8")

    publish(out, fill, "the output", out_dir)
    return out


# ----------------------------------------------------------------------------- one entry point


def check_save(out_format: str, report: bool = False) -> None:
    """The output options' own checks (before any scoring): a known format, ``report`` with jsonl."""
    if out_format not in OUT_FORMATS:
        raise OptionError(f"unknown out-format '{out_format}': use one of {', '.join(OUT_FORMATS)}")
    if report and out_format != "jsonl":
        raise OptionError("--report reads selected.jsonl: use it with --out-format jsonl (the default)")


def input_info(sel: Selection) -> dict[str, dict]:
    """The manifest's ``inputs``: for each set read from a file (data, target, existing) its
    absolute path and SHA-256 (taken as it was read); data given in memory is named by its type.
    ``data`` also holds ``records``, the number selected from."""
    from .io.files import input_checksum

    sums = sel.extra.get("input_sha256", {})
    info: dict[str, dict] = {}
    for name in ("data", "target", "existing"):
        path = sel.sources.get(name)
        if path is not None:
            info[name] = {"path": str(Path(path).resolve()), "sha256": sums.get(name) or input_checksum(path)}
    if "data" not in info:
        data = sel.data
        info["data"] = {"in_memory": type_label(data) if data is not None else "records"}
    info["data"]["records"] = len(sel.records)
    for name, about in sel.extra.get("second_sets", {}).items():  # a target or existing set given in memory
        info.setdefault(name, dict(about))
    return info


def save_selection(sel: Selection, out_dir: str | Path, *, out_format: str = "jsonl", report: bool = False,
                   guard: list[str | Path] = ()) -> Path:
    """Write ``sel`` as ``tunesift select --out`` does: the output folder's checks (never an
    input, never the current folder, nothing foreign replaced), the kept records, scores.parquet
    and manifest.json (and ``report.html`` when ``report``) swapped in as one unit
    (:func:`write_selection`). ``guard``: further input files the folder must not hold (the CLI's ``--config``).
    Returns the folder."""
    inputs = [*sel.sources.values(), *guard]
    return write_selection(sel, out_dir, input_info(sel), out_format=out_format, input_paths=inputs, report=report)
