"""Reading and validating an instruction fine-tuning set into :class:`Record` objects.

Every input becomes a list of :class:`Record`, or the whole read fails with one
:class:`~tunesift.errors.InputError` whose message is one line naming the file, the line (or
row) and the field. No record is ever dropped silently. The formats are in
:mod:`tunesift.io.files`, the schemas in :mod:`tunesift.io.schema`, the chat rules in
:mod:`tunesift.io.chat`.

Ids come from an ``id`` field when the first record has one (then every record needs a unique
string or integer id), otherwise from a content hash; see :func:`content_id`.

``limit`` / ``sample`` read part of an input: the first ``limit`` records (the rest of the file
is not parsed), and/or a seeded uniform sample of ``sample`` records kept in input order,
``sorted(random.Random(seed).sample(range(n), sample))`` over the ``n`` records read. Ids and
``line`` are those of the full read, and the schema is detected from the input's first record.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesift.errors import InputError, OptionError, RecordsError, located

from .chat import history_turns, parse_turns, split_chat, system_text
from .describe import (
    Loc,
    clip,
    located_error,
    missing_field,
    one_line,
    show,
    text_value,
    type_name,
    with_article,
)
from .files import Rows, iter_rows, open_rows, train_split
from .json_values import utf8_text
from .schema import NO_ID, FieldMap, Schema, check_fields, resolve_schema

__all__ = [
    "SHOW_DEFECTS",
    "Record",
    "build_records",
    "content_id",
    "read_records",
    "records_from_rows",
    "schema_of",
]

log = logging.getLogger("tunesift")

#: How many per-record defects an error message lists besides the first.
SHOW_DEFECTS = 3


@dataclass(frozen=True)
class Record:
    """One training example.

    ``prompt`` is the text the ``response`` answers; for a chat record it is the content of the
    turn right before the last assistant turn (a user turn, or a tool result: ``prompt_role``
    says which), and ``context`` holds the earlier ``(role, content)`` turns (system turns and an
    alpaca record's ``system`` / ``history`` included), in order; ``()`` when there are none.
    ``row`` is the original row exactly as read (never modified). ``line`` is the 1-based line
    number for JSON Lines (any file read as JSON Lines: ``unit`` ``"line"``) and the 1-based row
    / array element otherwise (``unit`` ``"row"`` / ``"element"``). ``schema`` is how the
    input was read (the same object for every record of an input; see :func:`schema_of`).
    """

    id: str
    prompt: str
    response: str
    context: tuple[tuple[str, str], ...]
    row: dict = field(hash=False)
    line: int
    error: str | None = None  # why the record cannot be used (only with on_error="skip"), else None
    prompt_role: str = "user"  # the role of the prompt turn: "user" or "tool"
    schema: Schema | None = field(default=None, compare=False, repr=False)
    unit: str = field(default="line", compare=False, repr=False)  # what ``line`` counts: line, row or element


def schema_of(records: Sequence[Record]) -> Schema | None:
    """The schema the records were read with (``schema_of(records).name`` is e.g. ``"alpaca"``;
    see :data:`~tunesift.io.schema.SCHEMAS`), or None for no records or records made by hand."""
    return records[0].schema if records else None


def read_records(path: str | Path, fields: FieldMap | None = None, *, limit: int | None = None,
                 sample: int | None = None, seed: int = 0, on_error: str = "fail",
                 digest: dict | None = None, hint: str = "") -> list[Record]:
    """Read and validate the records of an input file or ``datasets`` folder.

    Whole-file problems raise :class:`~tunesift.errors.InputError` (one line: file, line or row,
    field) at once: a missing or unreadable file, an unknown format or schema, invalid JSON or
    UTF-8, a malformed CSV, a bad or duplicated id. Per-record defects (a missing, null, mistyped
    or empty field, text that is not valid Unicode, a malformed chat) are all collected first:
    with ``on_error="fail"`` one InputError names the first, the count and the lines of the next
    few (``hint`` is appended); with ``on_error="skip"`` each becomes a Record whose ``error`` holds
    the reason (its prompt and response are empty) and the read goes on. Raises
    :class:`~tunesift.errors.OptionError` for a bad ``fields``, ``limit``, ``sample`` or ``seed``,
    and for a ``sample`` larger than the records read.

    ``limit``: read only the first ``limit`` records. ``sample``: keep a seeded uniform sample of
    that many records, in input order (of the first ``limit`` when both are given); only the
    kept records' defects count.

    ``digest``: a dict that receives ``"sha256"``, the checksum
    (:func:`~tunesift.io.files.input_checksum`) of the bytes that were parsed, computed as they
    are read (not re-read later).
    """
    fields = check_fields(fields)
    _check_part(limit, sample, seed)
    source = str(path)
    try:
        rows, empty = open_rows(Path(path), source, digest)
    except OSError as e:  # a path too long, a loop of symlinks, ...
        raise InputError(source, f"cannot read the input: {e.strerror or one_line(e)}") from None
    return build_records(rows, fields, source, empty, on_error, hint, limit=limit, sample=sample,
                         seed=seed)


def records_from_rows(
    rows: Iterable[dict], fields: FieldMap | None = None, *, source: str = "<rows>",
    limit: int | None = None, sample: int | None = None, seed: int = 0,
    on_error: str = "fail", hint: str = "",
) -> list[Record]:
    """Validate rows already in memory: a list of dicts, ``DataFrame.to_dict("records")``, a
    ``datasets.Dataset`` (a ``DatasetDict`` gives its ``train`` split) or a pandas DataFrame.

    The rules (and ``limit`` / ``sample`` / ``seed``) are those of :func:`read_records`; ``line``
    is the 1-based row and errors name ``source``. The dicts are kept as ``Record.row`` without
    being copied or changed.
    """
    fields = check_fields(fields)
    _check_part(limit, sample, seed)
    if type(rows).__name__ in ("DatasetDict", "IterableDatasetDict"):
        rows = train_split(rows, source)  # type: ignore[arg-type]
    elif hasattr(rows, "to_dict") and hasattr(rows, "columns") and hasattr(rows, "iloc"):  # a pandas DataFrame
        names = [str(c) for c in rows.columns]  # as the rows will name them: 0 and "0" are one name
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(source, f"the DataFrame has duplicate column names ({', '.join(dup)}); "
                                     "only one of each would be read")
        part = rows if limit is None else rows.iloc[:limit]  # limit: the rest is never converted
        rows = [{k if isinstance(k, str) else str(k): v for k, v in ((k, from_pandas(v)) for k, v in r.items())
                if v is not None} for r in part.to_dict("records")]  # a missing cell: no such field
    elif type(rows).__name__ == "Dataset" and hasattr(rows, "to_list"):
        if limit is not None and limit < len(rows):
            rows = rows.select(range(limit))  # the rest is never converted
        rows = rows.to_list()  # datasets.Dataset: much faster than iterating it
    elif rows is None or not isinstance(rows, Iterable):
        raise InputError(source, f"expected rows (a list of dicts, a DataFrame, a Dataset) or a path, "
                                 f"got {type_name(rows)}")
    elif isinstance(rows, (Mapping, str, bytes)):
        raise InputError(
            source,
            f"expected an iterable of rows (dicts), got a single {type_name(rows)}; "
            "pass a list of dicts",
        )
    return build_records(iter_rows(rows, source), fields, source, "no records: there are no rows",
                         on_error, hint, limit=limit, sample=sample, seed=seed)


def from_pandas(value, *, top: bool = True):
    """A DataFrame cell as a JSON file would give it: a missing cell (NaN, None, ``pd.NA``,
    ``NaT``; pandas' marks for "no value" in a column) as None, numpy arrays (list columns of
    ``read_parquet`` or ``Dataset.to_pandas``) as lists. Inside a list or dict a float NaN is a
    value and is kept (``[1.0, nan]`` stays so); ``pd.NA`` / ``NaT`` there become None."""
    if isinstance(value, float):
        return None if top and value != value else value
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, dict):
        return {k: from_pandas(v, top=False) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (type(value).__name__ == "ndarray" and value.ndim > 0):
        return [from_pandas(v, top=False) for v in value]
    return value


def content_id(row: Mapping) -> str:
    """The content hash id of a row: the first 16 hex digits of the SHA-256 of
    ``json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)``
    encoded as UTF-8. Exact duplicate rows share it; :func:`read_records` appends ``-2``,
    ``-3``... to the later copies, in input order."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _check_part(limit: int | None, sample: int | None, seed: int) -> None:
    for flag, value in (("--limit", limit), ("--sample", sample)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise OptionError(f"{flag} must be a whole number of records, at least 1; got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f"--seed must be a whole number, got {seed!r}")


MAX_NESTING = 100  # container levels in a row: the JSON Lines writer recurses two frames per level


def nesting(value: Any) -> int:
    """How many dict/list levels deep ``value`` goes (a flat row: 1), counted without recursion."""
    depth, level = 0, [value]
    while boxes := [v for v in level if isinstance(v, (dict, list, tuple))]:
        depth += 1
        level = [x for box in boxes for x in (box.values() if isinstance(box, dict) else box)]
    return depth


def build_records(rows: Rows, fm: FieldMap, source: str, empty: str, on_error: str = "fail",
                  hint: str = "", *, limit: int | None = None, sample: int | None = None,
                  seed: int = 0) -> list[Record]:
    """Records from ``(row, Loc)`` pairs (see :func:`read_records`); ``empty`` is the error text
    when there is no row."""
    if on_error not in ("fail", "skip"):
        raise OptionError(f"unknown on-error '{on_error}': use fail or skip")
    rows = iter(rows) if limit is None else itertools.islice(rows, limit)
    first = next(rows, None)
    if first is None:
        raise InputError(source, empty)
    first_row, first_loc = first
    schema = resolve_schema(first_row, first_loc, fm, source)

    # --id-field none: no id field, even where the records have an "id" (content ids instead)
    id_field = None if fm.id == NO_ID else fm.id or ("id" if first_row.get("id") is not None else None)
    id_why = (
        "--id-field is given, so every record needs one"
        if fm.id
        else f"the first record ({first_loc.unit} {first_loc.line}) has an 'id', "
        "so every record needs one (--id-field none: ids from the content)"
    )
    seen_ids: dict[str, tuple[int, str]] = {}
    hash_counts: dict[str, int] = {}
    unused_id: Loc | None = None  # a later record's id, not used because the first record has none

    out: list[Record] = []
    defects: dict[int, InputError] = {}  # index in `out` -> its defect
    for row, loc in itertools.chain([first], rows):
        if (deep := nesting(row)) > MAX_NESTING:  # readable, but not writable back out
            raise located_error(source, loc, f"the row is nested {deep} levels deep; tunesift reads at most "
                                f"{MAX_NESTING} (lists and objects inside each other)")
        error = None
        try:
            prompt, response, context, role = record_texts(row, schema, loc, source)
        except InputError as e:  # a defect of this record alone: collected, the read goes on
            defects[len(out)] = e
            prompt, response, context, role, error = "", "", (), "user", str(e)
        if id_field:
            rid = _field_id(row, id_field, id_why, loc, source)
            # as the outputs write it: a lone surrogate becomes its \uXXXX escape, which must not
            # meet the same text written out by hand in another id
            key = utf8_text(rid)
            if key in seen_ids:
                line, first = seen_ids[key]
                raise located_error(
                    source,
                    loc,
                    f"duplicate id {show(rid)}, already used on {loc.unit} {line}"
                    + ("" if first == rid else " (the same once a lone surrogate is written as its escape)")
                    + ("" if fm.id else "; --id-field none gives every record an id from its content instead"),
                    id_field,
                )
            seen_ids[key] = (loc.line, rid)
        else:
            if unused_id is None and fm.id != NO_ID and row.get("id") is not None:
                unused_id = loc
            try:
                h = content_id(row)
            except (TypeError, ValueError) as e:  # non-string keys, a cycle
                raise located_error(source, loc, f"cannot hash the row for its id: {one_line(e)}") from None
            n = hash_counts.get(h, 0) + 1
            hash_counts[h] = n
            rid = h if n == 1 else f"{h}-{n}"
        out.append(Record(rid, prompt, response, context, row, loc.line, error, role, schema, loc.unit))
    if unused_id is not None:
        log.warning("%s: %s %d has an 'id' but the first record (%s %d) has none, so every record gets an id "
                    "from its content; give --id-field id to use the file's ids", source, unused_id.unit,
                    unused_id.line, first_loc.unit, first_loc.line)
    if sample is not None:
        out, defects = _sample(out, defects, sample, seed, source)
    if defects and on_error == "fail":
        raise _defects_error(source, list(defects.values()), len(out), hint)
    part = (f", the first {limit}" if limit is not None else "") + (
        f", a sample of {sample} (seed {seed})" if sample is not None else "")
    log.info("%s: %d records%s, schema %s", source, len(out), part, schema.name)
    return out


def _sample(out: list[Record], defects: dict[int, InputError], k: int, seed: int,
            source: str) -> tuple[list[Record], dict[int, InputError]]:
    """A seeded uniform sample of ``k`` records, in input order, with their defects."""
    if k > len(out):
        raise OptionError(
            f"--sample {k} is more than the {len(out)} records of {source}; "
            "give a smaller sample, or leave --sample out to read them all"
        )
    keep = sorted(random.Random(seed).sample(range(len(out)), k))
    return [out[i] for i in keep], {j: defects[i] for j, i in enumerate(keep) if i in defects}


def record_texts(row: dict, schema: Schema, loc: Loc, source: str
                 ) -> tuple[str, str, tuple[tuple[str, str], ...], str]:
    """``(prompt, response, context, prompt_role)`` of one row under ``schema``; a defect of the
    row raises a located InputError."""
    # "completion wins if both" holds for the first record, which set the schema: a later record
    # holding a completion the schema does not read would lose it without a word
    read = schema.response if schema.kind == "fields" else schema.completion
    if read == "response" and schema.name in ("prompt_completion", "conversational_prompt_completion") \
            and row.get("completion") is not None:
        raise located_error(source, loc, "the record holds both 'completion' and 'response', but the schema "
                            f"({schema.desc}) reads 'response'; keep one of them", "completion")
    if schema.kind == "fields":
        prompt, response = _texts(row, schema, loc, source)
        earlier = history_turns(row.get(schema.history), schema.history, loc, source) if schema.history else []
        context = tuple((t.role, t.text) for t in earlier)
        system = system_text(row, schema.system, loc, source) if schema.system else None
        return prompt, response, ((("system", system),) if system else ()) + context, "user"
    key = schema.messages
    if key not in row:
        raise missing_field(source, loc, row, key, schema.desc)
    turns = parse_turns(row[key], key, loc, source, allow_empty=schema.kind == "chat_pair")
    if schema.kind == "chat_pair":
        done = schema.completion
        if done not in row:
            raise missing_field(source, loc, row, done, schema.desc)
        if isinstance(row[done], str):  # a completion given as the assistant's text
            turns += parse_turns([{"role": "assistant", "content": row[done]}], done, loc, source)
        else:
            turns += parse_turns(row[done], done, loc, source)
        if not any(t.role == "assistant" for t in turns[len(turns) - _count(row[done]):]):
            raise located_error(source, loc, "the completion has no assistant turn (the response)", done)
    parts = split_chat(turns, key, loc, source)
    context = parts.context
    system = system_text(row, schema.system, loc, source) if schema.system else None
    if system and not (context and context[0][0] == "system"):  # the chat's own system turn wins
        context = (("system", system),) + context
    return parts.prompt, parts.response, context, parts.prompt_role


def _count(completion: Any) -> int:
    return 1 if isinstance(completion, str) else len(completion)


def _texts(row: dict, schema: Schema, loc: Loc, source: str) -> tuple[str, str]:
    parts = []
    for i, (name, required) in enumerate(schema.prompt):
        if i == 0:
            value = text_value(row, name, loc, source, schema.desc)
            if not value.strip():
                raise located_error(source, loc, "the prompt is empty", name)
            parts.append(value)
            continue
        if name not in row and required:
            raise missing_field(source, loc, row, name, schema.desc)
        if row.get(name) is None:
            continue  # a later part may be null (or, for alpaca's input, absent)
        value = text_value(row, name, loc, source, schema.desc)
        if value.strip():
            parts.append(value)
    response = text_value(row, schema.response, loc, source, schema.desc)
    if not response.strip():
        raise located_error(source, loc, "the response is empty or whitespace-only", schema.response)
    return "\n\n".join(parts), response


def _defects_error(source: str, defects: list[InputError], n: int, hint: str) -> RecordsError:
    """One line for every per-record defect: the first in full, then the count and the next few
    (a :class:`RecordsError`, an InputError with the first defect's file, line and field)."""
    first = defects[0]
    reason = first.reason
    if len(defects) > 1:
        more = [
            f"{d.line}" + (f" '{d.field}'" if d.field else "") + f" ({clip(d.reason, 60)})"
            for d in defects[1 : 1 + SHOW_DEFECTS]
        ]
        rest = len(defects) - 1 - len(more)
        reason += (
            f"; {len(defects)} of {n} records cannot be used, also at {', '.join(more)}"
            + (f" and {rest} more" if rest else "")
        )
    reason += hint
    return RecordsError(located(source, reason, first.line, first.field), path=str(source), line=first.line,
                        field=first.field, reason=reason)


def _field_id(row: dict, name: str, why: str, loc: Loc, source: str) -> str:
    value = row.get(name)
    if value is None:
        raise located_error(source, loc, f"missing id; {why}", name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise located_error(
            source,
            loc,
            f"expected a string or integer id, got {with_article(type_name(value))} ({show(value)})",
            name,
        )
    rid = str(value)
    if not rid.strip():
        raise located_error(source, loc, f"the id is empty; {why}", name)
    return rid
