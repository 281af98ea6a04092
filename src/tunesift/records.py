"""Reading and validating an instruction fine-tuning set.

Every input becomes a list of :class:`Record`, or the whole read fails with one
:class:`~tunesift.errors.InputError` whose message is one line naming the file, the line (or
row) and the field. No record is ever dropped silently.

Formats, picked by the file name (``docs/input-formats.md`` has the full rules):

* ``.jsonl`` / ``.ndjson``: JSON Lines, one object per line. Blank lines are skipped but still
  counted, so ``Record.line`` is the line in the file.
* ``.json``: a JSON array of objects when the first non-space character is ``[``, else JSON Lines.
  ``Record.line`` is the 1-based element index.
* ``.csv``: a header row, then one record per row; every value is a string, an empty cell is
  ``""``. ``Record.line`` is the 1-based data row (the header is not a row; blank lines are not
  rows).
* ``.parquet``: read with pyarrow; ``Record.line`` is the 1-based row.
* a folder saved with ``datasets.Dataset.save_to_disk`` (it holds ``dataset_info.json``,
  ``state.json`` or, for a ``DatasetDict``, ``dataset_dict.json``; a ``DatasetDict`` gives its
  ``train`` split).
* ``.jsonl.gz`` / ``.json.gz`` / ``.csv.gz``: the same, gzip-compressed.

Text must be UTF-8 (a UTF-8 byte-order mark is allowed).

Schemas, detected from the first record, in this order of preference; every later record must
fit the same schema:

* ``messages``: a ``messages`` list of ``{"role", "content"}`` turns, or a ShareGPT
  ``conversations`` list of ``{"from", "value"}`` turns (``human`` is ``user``, ``gpt`` is
  ``assistant``). The last assistant turn is the response, the user turn right before it is the
  prompt, every earlier turn (system turns included) is the context.
* ``alpaca``: ``instruction``, optional ``input``, ``output``. The prompt is the instruction, then
  ``"\\n\\n"`` and the input when the input is not blank.
* ``prompt_completion``: ``prompt`` and ``completion`` (or ``response``).
* ``question_answer``: ``question`` and ``answer``.

A :class:`FieldMap` overrides detection. Ids come from an ``id`` field when the first record has
one (then every record needs a unique string or integer id), otherwise from a content hash; see
:func:`content_id`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tunesift.errors import InputError, OptionError

__all__ = [
    "SCHEMAS",
    "FieldMap",
    "Record",
    "content_id",
    "detect_schema",
    "input_checksum",
    "read_records",
    "records_from_rows",
]

#: Detectable schemas, in order of preference when a record fits several.
SCHEMAS = ("messages", "alpaca", "prompt_completion", "question_answer")

#: Chat roles accepted in a turn (case-insensitive) and what they mean.
ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "function",
    # ShareGPT
    "human": "user",
    "gpt": "assistant",
}

_EXPECTED = (
    "'messages' or 'conversations' (chat), 'instruction'+'output' (alpaca), "
    "'prompt'+'completion' (or 'response'), 'question'+'answer'"
)
_JSON_WS = re.compile(r"[ \t\n\r]*")
_ONE_LINE = re.compile(r"\s+")


@dataclass(frozen=True)
class Record:
    """One training example.

    ``prompt`` is the text the ``response`` answers; for a chat record it is the content of the
    user turn right before the last assistant turn, and ``context`` holds the earlier
    ``(role, content)`` turns (a system turn included), in order. ``context`` is ``()`` for
    non-chat records. ``row`` is the original row exactly as read (never modified). ``line`` is
    the 1-based line number for JSON Lines and the 1-based row / array element otherwise.
    """

    id: str
    prompt: str
    response: str
    context: tuple[tuple[str, str], ...]
    row: dict = field(hash=False)
    line: int
    error: str | None = None  # why the record cannot be used (only with on_error="skip"), else None


@dataclass(frozen=True)
class FieldMap:
    """A manual field mapping; every part is optional and overrides schema detection.

    * ``prompt``: a field name, or a comma-separated list of names (``"instruction,input"``).
      With several, the non-blank values are joined with ``"\\n\\n"``; the first field must be
      non-blank, the later ones may be blank or null (then they are left out). Every named field
      must exist in every record.
    * ``response``: one field name. When only one of ``prompt`` / ``response`` is given, the
      other comes from the detected schema.
    * ``messages``: the field holding the chat turns (cannot be combined with
      ``prompt`` / ``response``).
    * ``id``: the field holding the record id; every record must then have a unique one.

    Bad mappings raise :class:`~tunesift.errors.OptionError` when the map is made.
    """

    prompt: str | None = None
    response: str | None = None
    messages: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "response", "messages", "id"):
            value = getattr(self, name)
            if value is None:
                continue
            flag = f"--{name}-field"
            if not isinstance(value, str):
                raise OptionError(
                    f"{flag} must be a field name (a string), got {_type_name(value)}"
                )
            value = value.strip()
            if name == "prompt":
                parts = [p.strip() for p in value.split(",")]
                if not all(parts):
                    raise OptionError(f"{flag} has an empty field name: {value!r}")
                if len(set(parts)) != len(parts):
                    raise OptionError(f"{flag} names a field twice: {value!r}")
                value = ",".join(parts)
            elif not value:
                raise OptionError(f"{flag} is an empty field name")
            elif "," in value:
                raise OptionError(f"{flag} takes one field name, got {value!r}")
            object.__setattr__(self, name, value)
        if self.messages is not None and (self.prompt is not None or self.response is not None):
            raise OptionError(
                "--messages-field cannot be combined with --prompt-field/--response-field: "
                "map either the chat turns or the two texts"
            )

    @property
    def prompt_fields(self) -> tuple[str, ...]:
        """The prompt field names, in order (empty when ``prompt`` is not mapped)."""
        return tuple(self.prompt.split(",")) if self.prompt else ()


# --------------------------------------------------------------------------------------------
# Public API


def read_records(path: str | Path, fields: FieldMap | None = None, *, on_error: str = "fail",
                 digest: dict | None = None, hint: str = "") -> list[Record]:
    """Read and validate every record of an input file or ``datasets`` folder.

    Whole-file problems raise :class:`~tunesift.errors.InputError` (one line: file, line or row,
    field) at once: a missing or unreadable file, an unknown format or schema, invalid JSON or
    UTF-8, a malformed CSV, a bad or duplicated id. Per-record defects (a missing, null, mistyped
    or empty field, text that is not valid Unicode, a malformed chat) are all collected first:
    with ``on_error="fail"`` one InputError names the first, the count and the lines of the next
    few (``hint`` is appended); with ``on_error="skip"`` each becomes a Record whose ``error`` holds
    the reason (its prompt and response are empty) and the read goes on. Raises
    :class:`~tunesift.errors.OptionError` for a bad ``fields`` argument.

    ``digest``: a dict that receives ``"sha256"``, the checksum (:func:`input_checksum`) of the
    bytes that were parsed, computed as they are read (not re-read later).
    """
    fields = _check_fields(fields)
    source = str(path)
    try:
        rows, empty = _open(Path(path), source, digest)
    except OSError as e:  # a path too long, a loop of symlinks, ...
        raise InputError(source, f"cannot read the input: {e.strerror or _one_line(e)}") from None
    return _build(rows, fields, source, empty, on_error, hint)


def records_from_rows(
    rows: Iterable[dict], fields: FieldMap | None = None, *, source: str = "<rows>",
    on_error: str = "fail", hint: str = "",
) -> list[Record]:
    """Validate rows already in memory: a list of dicts, ``DataFrame.to_dict("records")``, a
    ``datasets.Dataset`` (a ``DatasetDict`` gives its ``train`` split) or a pandas DataFrame.

    The rules are those of :func:`read_records`; ``line`` is the 1-based row and errors name
    ``source``. The dicts are kept as ``Record.row`` without being copied or changed.
    """
    fields = _check_fields(fields)
    if type(rows).__name__ in ("DatasetDict", "IterableDatasetDict"):
        rows = _train_split(rows, source)  # type: ignore[arg-type]
    elif hasattr(rows, "to_dict") and hasattr(rows, "columns") and hasattr(rows, "iloc"):
        rows = rows.to_dict("records")  # a pandas DataFrame
    elif type(rows).__name__ == "Dataset" and hasattr(rows, "to_list"):
        rows = rows.to_list()  # datasets.Dataset: much faster than iterating it
    elif isinstance(rows, (Mapping, str, bytes)):
        raise InputError(
            source,
            f"expected an iterable of rows (dicts), got a single {_type_name(rows)}; "
            "pass a list of dicts",
        )
    return _build(_iter_rows(rows, source), fields, source, "no records: there are no rows", on_error, hint)


def detect_schema(row: dict, *, source: str = "<row>", line: int | None = None) -> str:
    """Return the schema a record fits: ``"messages"``, ``"alpaca"``, ``"prompt_completion"`` or
    ``"question_answer"``, preferring them in that order.

    A field counts as present when its key exists and its value is not null (so an all-null
    Parquet column does not count). Only the field names decide; types and contents are checked
    when the record is read. Raises :class:`~tunesift.errors.InputError` (naming ``source`` and
    ``line``) listing the fields found and expected when no schema fits.
    """

    def has(key: str) -> bool:
        return row.get(key) is not None

    if has("messages") or has("conversations"):
        return "messages"
    if has("instruction") and has("output"):
        return "alpaca"
    if has("prompt") and (has("completion") or has("response")):
        return "prompt_completion"
    if has("question") and has("answer"):
        return "question_answer"
    found = ", ".join(_show(k, 30) for k in row) or "none"
    nested = [k for k, v in row.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    hint = (
        f" ({_show(nested[0], 30)} holds a list of objects: are the records inside it?)"
        if nested
        else ""
    )
    raise InputError(
        source,
        f"unknown schema: fields found: {found}{hint}; expected {_EXPECTED}; "
        "or name the fields with --prompt-field and --response-field",
        line=line,
    )


def content_id(row: Mapping) -> str:
    """The content hash id of a row: the first 16 hex digits of the SHA-256 of
    ``json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)``
    encoded as UTF-8. Exact duplicate rows share it; :func:`read_records` appends ``-2``,
    ``-3``... to the later copies, in input order."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def input_checksum(path: str | Path) -> str:
    """SHA-256 (hex) of the input: of the file's bytes for a file.

    For a folder: the SHA-256 over its files sorted by their relative path (``/``-separated),
    each contributing ``relative_path + b"\\0" + sha256(file bytes)``. Dot-files and the
    ``cache-*.arrow`` files that ``datasets`` writes next to a loaded dataset are left out, as
    they are not part of the saved data.
    """
    p, source = Path(path), str(path)
    if p.is_file():
        return _file_sha256(p, source).hex()
    if p.is_dir():
        h = hashlib.sha256()
        files = []
        for f in p.rglob("*"):
            rel = f.relative_to(p).as_posix()
            if not f.is_file() or any(part.startswith(".") for part in rel.split("/")):
                continue
            if f.name.startswith("cache-") and f.name.endswith(".arrow"):
                continue
            files.append((rel, f))
        for rel, f in sorted(files):
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            h.update(_file_sha256(f, str(f)))
        return h.hexdigest()
    raise InputError(source, "no such file or directory")


# --------------------------------------------------------------------------------------------
# Opening files: each reader yields (row, _Loc) pairs


class _Loc(NamedTuple):
    line: int  # Record.line: the JSONL line, or the 1-based row / element
    note: str | None  # how to find it, for formats where `line` is not the file line
    unit: str  # "line", "row" or "element": names a second location in messages


def _open(p: Path, source: str, digest: dict | None = None) -> tuple[Iterator[tuple[Any, _Loc]], str]:
    """Pick the reader for a path; returns the (row, loc) iterator and the 'no records' text.
    ``digest["sha256"]`` gets the checksum of the bytes read."""
    digest = {} if digest is None else digest
    if p.is_dir():
        digest["sha256"] = input_checksum(p)
        return _read_dataset_dir(p, source, digest)
    if not p.exists():
        raise InputError(source, "no such file or directory")
    if not p.is_file():
        raise InputError(source, "not a regular file")
    name = p.name.lower()
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    ext = Path(base).suffix
    if ext not in (".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
        shown = Path(name).suffix or "no extension"
        raise InputError(
            source,
            f"unsupported file type ({shown}): expected .jsonl, .json, .csv or .parquet "
            "(.jsonl, .json and .csv may be .gz), or a folder saved with datasets' save_to_disk",
        )
    if ext == ".parquet":
        if gz:
            raise InputError(
                source, "a gzip-compressed Parquet file is not supported: gunzip it first"
            )
        data = _read_bytes(p, source)
        digest["sha256"] = hashlib.sha256(data).hexdigest()
        return _read_parquet(data, source, digest)
    data = _read_bytes(p, source)
    digest["sha256"] = hashlib.sha256(data).hexdigest()
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(source, f"not a valid gzip file: {_one_line(e)}") from None
    text = _decode(data, source)
    if not text:
        return iter(()), "no records: the file is empty"
    if not text.strip():
        return iter(()), "no records: the file has only blank lines"
    if ext == ".csv":
        return _read_csv(text, source), "no records: the CSV has a header but no data rows"
    if ext == ".json" and text.lstrip(" \t\r\n")[:1] == "[":
        return _read_json_array(text, source), "no records: the JSON array is empty"
    return _read_jsonl(text, source, ext), "no records: the file has only blank lines"


def _read_bytes(p: Path, source: str) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise InputError(source, f"cannot read the file: {e.strerror or _one_line(e)}") from None


def _file_sha256(p: Path, source: str) -> bytes:
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise InputError(source, f"cannot read the file: {e.strerror or _one_line(e)}") from None
    return h.digest()


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text, or an error naming the line and column of the first bad byte."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(
            source,
            "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8",
            line=1,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(
            source,
            f"not valid UTF-8: byte 0x{data[e.start]:02x} at column {col} "
            "(the file must be UTF-8 text)",
            line=line,
        ) from None


def _read_jsonl(text: str, source: str, ext: str) -> Iterator[tuple[Any, _Loc]]:
    raw_lines = text.split("\n")
    for n, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except RecursionError:
            raise InputError(source, "invalid JSON: nested too deeply", line=n) from None
        except json.JSONDecodeError as e:
            reason = f"invalid JSON: {e.msg} (column {e.colno})"
            if raw.strip() in ("{", "[", "}", "]", "},", "],"):
                reason += (
                    "; this looks like pretty-printed JSON, but JSON Lines needs "
                    "one whole object per line"
                )
            whole = _whole_json_hint(text) if ext == ".json" else None
            if whole:
                raise InputError(source, whole) from None
            raise InputError(source, reason, line=n) from None
        if not isinstance(obj, dict):
            reason = f"expected a JSON object, got {_a(_type_name(obj))}"
            if isinstance(obj, list) and ext != ".json":
                reason += " (a file holding one JSON array must be named .json)"
            raise InputError(source, reason, line=n)
        yield obj, _Loc(n, None, "line")


def _whole_json_hint(text: str) -> str | None:
    """For a .json file that is not JSON Lines: say so when it is one JSON object or value."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if isinstance(obj, dict):
        keys = ", ".join(_show(k, 30) for k in list(obj)[:8]) or "none"
        return (
            f"the file holds a single JSON object (top-level keys: {keys}), not a JSON array "
            "of records or JSON Lines"
        )
    return f"the file holds a single JSON {_type_name(obj)}, not a JSON array of records"


def _read_json_array(text: str, source: str) -> Iterator[tuple[Any, _Loc]]:
    decoder = json.JSONDecoder()
    skip = _JSON_WS.match
    end = len(text)
    pos = skip(text, 0).end() + 1  # past "["
    line_at, counted_to = 1, 0  # file line at offset `counted_to`

    def fail(msg: str, at: int) -> InputError:
        line = text.count("\n", 0, at) + 1
        col = at - (text.rfind("\n", 0, at) + 1) + 1
        return InputError(source, f"invalid JSON: {msg} (column {col})", line=line)

    pos = skip(text, pos).end()
    if pos < end and text[pos] == "]":
        pos = skip(text, pos + 1).end()
        if pos < end:
            raise fail("Extra data after the JSON array", pos)
        return
    index = 0
    while True:
        start = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InputError(
                source, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno
            ) from None
        except RecursionError:
            raise fail("nested too deeply", start) from None
        index += 1
        line_at += text.count("\n", counted_to, start)
        counted_to = start
        loc = _Loc(index, f"array element {index}, starting on file line {line_at}", "element")
        if not isinstance(obj, dict):
            raise InputError(
                source,
                f"expected a JSON object, got {_a(_type_name(obj))} ({loc.note})",
                line=index,
            )
        yield obj, loc
        pos = skip(text, pos).end()
        if pos >= end:
            raise fail("unterminated array: expected ',' or ']'", end)
        if text[pos] == ",":
            pos = skip(text, pos + 1).end()
            continue
        if text[pos] != "]":
            raise fail("Expecting ',' delimiter", pos)
        pos = skip(text, pos + 1).end()
        if pos < end:
            raise fail("Extra data after the JSON array", pos)
        return


def _read_csv(text: str, source: str) -> Iterator[tuple[Any, _Loc]]:
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) is too small for long responses
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader)
        except csv.Error as e:
            raise InputError(source, f"malformed CSV header: {_one_line(e)}", line=1) from None
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise InputError(source, f"the CSV header names column {_show(name)} twice", line=1)
            seen.add(name)
        row_no = 0
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                hint = "; a quoted cell is never closed" if "end of data" in str(e) else ""
                raise InputError(
                    source,
                    f"malformed CSV: {_one_line(e)}{hint} (row {row_no + 1}, "
                    f"starting on file line {start})",
                    line=row_no + 1,
                ) from None
            if not cells:
                continue  # a blank line
            row_no += 1
            loc = _Loc(row_no, f"row {row_no}, file line {start}", "row")
            if len(cells) != len(header):
                raise InputError(
                    source,
                    f"ragged CSV row: {len(cells)} cell{'s' * (len(cells) != 1)} but the header has {len(header)} "
                    f"({loc.note})",
                    line=row_no,
                )
            yield dict(zip(header, cells, strict=True)), loc
    finally:
        csv.field_size_limit(old_limit)


def _read_parquet(data: bytes, source: str, digest: dict) -> tuple[Iterator[tuple[Any, _Loc]], str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
        digest["schema"] = table.schema
        rows = table.to_pylist()
    except OSError as e:
        raise InputError(source, f"cannot read the Parquet file: {_one_line(e)}") from None
    except Exception as e:  # pyarrow.ArrowInvalid and friends
        raise InputError(source, f"not a valid Parquet file: {_one_line(e)}") from None
    return _iter_rows(rows, source), "no records: the Parquet file has no rows"


def _read_dataset_dir(p: Path, source: str, digest: dict) -> tuple[Iterator[tuple[Any, _Loc]], str]:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((p / m).is_file() for m in markers):
        raise InputError(
            source,
            "a folder that is not a Hugging Face dataset saved with save_to_disk "
            "(no dataset_info.json, state.json or dataset_dict.json in it)",
        )
    try:
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
    except Exception as e:
        raise InputError(source, f"cannot load the Hugging Face dataset: {_one_line(e)}") from None
    if type(ds).__name__ == "DatasetDict":
        ds = _train_split(ds, source)
    digest["schema"] = getattr(getattr(ds, "data", None), "schema", None)
    try:
        rows = ds.to_list()
    except Exception as e:
        raise InputError(source, f"cannot read the dataset rows: {_one_line(e)}") from None
    return _iter_rows(rows, source), "no records: the dataset has no rows"


def _train_split(dd: Mapping, source: str) -> Any:
    if "train" in dd:
        return dd["train"]
    splits = ", ".join(_show(s, 30) for s in dd) or "none"
    raise InputError(
        source,
        f"a DatasetDict without a 'train' split (splits: {splits}); select the split to use, "
        f"e.g. dataset_dict[{next(iter(dd), 'name')!r}], and pass or save that",
    )


def _iter_rows(rows: Iterable[Any], source: str) -> Iterator[tuple[Any, _Loc]]:
    for i, row in enumerate(rows, 1):
        loc = _Loc(i, f"row {i}", "row")
        if not isinstance(row, dict):
            if isinstance(row, Mapping):
                row = dict(row)
            else:
                raise InputError(
                    source, f"expected a row (dict), got {_a(_type_name(row))} (row {i})", line=i
                )
        yield row, loc


# --------------------------------------------------------------------------------------------
# Building records


@dataclass(frozen=True)
class _Spec:
    kind: str  # "messages" or "fields"
    desc: str  # for messages about missing fields
    messages: str = ""
    prompt: tuple[tuple[str, bool], ...] = ()  # (field, must be present)
    response: str = ""


def _default_spec(schema: str, first: dict, loc: _Loc) -> _Spec:
    where = f"detected from the first record ({loc.unit} {loc.line})"
    if schema == "messages":
        key = "messages" if first.get("messages") is not None else "conversations"
        return _Spec("messages", f"the chat schema {where}", messages=key)
    if schema == "alpaca":
        return _Spec(
            "fields",
            f"the alpaca schema (instruction, optional input, output) {where}",
            prompt=(("instruction", True), ("input", False)),
            response="output",
        )
    if schema == "prompt_completion":
        resp = "completion" if first.get("completion") is not None else "response"
        return _Spec(
            "fields",
            f"the prompt/{resp} schema {where}",
            prompt=(("prompt", True),),
            response=resp,
        )
    return _Spec(
        "fields",
        f"the question/answer schema {where}",
        prompt=(("question", True),),
        response="answer",
    )


def _resolve(first: dict, loc: _Loc, fm: FieldMap, source: str) -> _Spec:
    if fm.messages:
        return _Spec("messages", "the chat field given by --messages-field", messages=fm.messages)
    if not fm.prompt and not fm.response:
        return _default_spec(detect_schema(first, source=source, line=loc.line), first, loc)
    base = None
    if not (fm.prompt and fm.response):
        given, missing = (
            ("--prompt-field", "--response-field")
            if fm.prompt
            else ("--response-field", "--prompt-field")
        )
        try:
            schema = detect_schema(first, source=source, line=loc.line)
        except InputError as e:
            found = e.reason.split("; expected", 1)[0].removeprefix("unknown schema: ")
            raise InputError(
                source,
                f"{given} was given without {missing}, and no known schema fits to supply "
                f"the other field ({found}); give {missing} too",
                line=loc.line,
            ) from None
        if schema == "messages":
            raise OptionError(
                f"{given} was given without {missing}, but {source} is a chat file "
                "(messages); give both, or neither"
            )
        base = _default_spec(schema, first, loc)
    prompt = tuple((f, True) for f in fm.prompt_fields) if fm.prompt else base.prompt
    response = fm.response or base.response
    return _Spec(
        "fields",
        "the field mapping (--prompt-field/--response-field)",
        prompt=prompt,
        response=response,
    )


def _check_fields(fields: FieldMap | None) -> FieldMap:
    if fields is None:
        return FieldMap()
    if not isinstance(fields, FieldMap):
        raise OptionError(f"fields must be a FieldMap, got {type(fields).__name__}")
    return fields


#: How many per-record defects an error message lists besides the first.
SHOW_DEFECTS = 3


def _build(rows: Iterator[tuple[Any, _Loc]], fm: FieldMap, source: str, empty: str,
           on_error: str = "fail", hint: str = "") -> list[Record]:
    if on_error not in ("fail", "skip"):
        raise OptionError(f"unknown on-error '{on_error}': use fail or skip")
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        raise InputError(source, empty)
    first_row, first_loc = first
    spec = _resolve(first_row, first_loc, fm, source)

    id_field = fm.id or ("id" if first_row.get("id") is not None else None)
    id_why = (
        "--id-field is given, so every record needs one"
        if fm.id
        else f"the first record ({first_loc.unit} {first_loc.line}) has an 'id', "
        "so every record needs one"
    )
    seen_ids: dict[str, int] = {}
    hash_counts: dict[str, int] = {}

    out: list[Record] = []
    defects: list[InputError] = []
    for row, loc in _chain(first, rows):
        error = None
        try:
            if spec.kind == "messages":
                prompt, response, context = _chat(row, spec, loc, source)
            else:
                (prompt, response), context = _texts(row, spec, loc, source), ()
        except InputError as e:  # a defect of this record alone: collected, the read goes on
            defects.append(e)
            prompt, response, context, error = "", "", (), str(e)
        if id_field:
            rid = _field_id(row, id_field, id_why, loc, source)
            if rid in seen_ids:
                raise _err(
                    source,
                    loc,
                    f"duplicate id {_show(rid)}, already used on {loc.unit} {seen_ids[rid]}",
                    id_field,
                )
            seen_ids[rid] = loc.line
        else:
            try:
                h = content_id(row)
            except (TypeError, ValueError) as e:  # non-string keys, a cycle
                raise _err(source, loc, f"cannot hash the row for its id: {_one_line(e)}") from None
            n = hash_counts.get(h, 0) + 1
            hash_counts[h] = n
            rid = h if n == 1 else f"{h}-{n}"
        out.append(Record(rid, prompt, response, context, row, loc.line, error))
    if defects and on_error == "fail":
        raise _defects_error(source, defects, len(out), hint)
    return out


def _defects_error(source: str, defects: list[InputError], n: int, hint: str) -> InputError:
    """One line for every per-record defect: the first in full, then the count and the next few."""
    first = defects[0]
    reason = first.reason
    if len(defects) > 1:
        more = [
            f"{d.line}" + (f" '{d.field}'" if d.field else "") + f" ({_clip(d.reason, 60)})"
            for d in defects[1 : 1 + SHOW_DEFECTS]
        ]
        rest = len(defects) - 1 - len(more)
        reason += (
            f"; {len(defects)} of {n} records cannot be used, also at {', '.join(more)}"
            + (f" and {rest} more" if rest else "")
        )
    return InputError(source, reason + hint, line=first.line, field=first.field)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _err(source: str, loc: _Loc, reason: str, fld: str | None = None) -> InputError:
    if loc.note:
        reason += f" ({loc.note})"
    return InputError(source, reason, line=loc.line, field=fld)


def _missing(source: str, loc: _Loc, row: dict, name: str, why: str) -> InputError:
    keys = list(row)
    found = ", ".join(_show(k, 30) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    return _err(
        source,
        loc,
        f"missing field (fields found: {found or 'none'}); every record must fit {why}",
        name,
    )


def _text_value(row: dict, name: str, loc: _Loc, source: str, why: str) -> str:
    """The string value of a required field."""
    if name not in row:
        raise _missing(source, loc, row, name, why)
    value = row[name]
    if value is None:
        raise _err(source, loc, "is null, expected a string", name)
    if not isinstance(value, str):
        raise _err(
            source, loc, f"expected a string, got {_a(_type_name(value))} ({_show(value)})", name
        )
    return _valid_text(value, loc, source, name)


def _valid_text(value: str, loc: _Loc, source: str, at: str) -> str:
    """``value``, if it is valid Unicode text (no lone surrogate such as a JSON ``\\ud800``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _err(
            source,
            loc,
            f"not valid Unicode text: a lone surrogate {value[e.start]!r} at character {e.start + 1}",
            at,
        ) from None
    return value


def _texts(row: dict, spec: _Spec, loc: _Loc, source: str) -> tuple[str, str]:
    parts = []
    for i, (name, required) in enumerate(spec.prompt):
        if i == 0:
            value = _text_value(row, name, loc, source, spec.desc)
            if not value.strip():
                raise _err(source, loc, "the prompt is empty", name)
            parts.append(value)
            continue
        if name not in row and required:
            raise _missing(source, loc, row, name, spec.desc)
        if row.get(name) is None:
            continue  # a later part may be null (or, for alpaca's input, absent)
        value = _text_value(row, name, loc, source, spec.desc)
        if value.strip():
            parts.append(value)
    response = _text_value(row, spec.response, loc, source, spec.desc)
    if not response.strip():
        raise _err(source, loc, "the response is empty or whitespace-only", spec.response)
    return "\n\n".join(parts), response


def _chat(
    row: dict, spec: _Spec, loc: _Loc, source: str
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    key = spec.messages
    if key not in row:
        raise _missing(source, loc, row, key, spec.desc)
    turns = row[key]
    if turns is None:
        raise _err(source, loc, "is null, expected a list of chat turns", key)
    if not isinstance(turns, (list, tuple)):
        raise _err(source, loc, f"expected a list of chat turns, got {_a(_type_name(turns))}", key)
    if not turns:
        raise _err(source, loc, "the chat has no turns", key)
    chat: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        at = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _err(
                source,
                loc,
                f"expected a turn object with 'role' and 'content', got {_a(_type_name(turn))}",
                at,
            )
        if turn.get("role") is not None:
            role_key, content_key = "role", "content"
        elif turn.get("from") is not None:
            role_key, content_key = "from", "value"
        else:
            raise _err(source, loc, "the turn has no 'role' (nor ShareGPT 'from')", at)
        role = turn[role_key]
        if not isinstance(role, str):
            raise _err(
                source, loc, f"expected a string, got {_a(_type_name(role))}", f"{at}.{role_key}"
            )
        canon = ROLES.get(role.strip().lower())
        if canon is None:
            raise _err(
                source,
                loc,
                f"unknown role {_show(role)}; expected one of {', '.join(ROLES)}",
                f"{at}.{role_key}",
            )
        if content_key not in turn:
            raise _err(source, loc, "the turn has no content", f"{at}.{content_key}")
        chat.append((canon, _turn_text(turn[content_key], loc, source, f"{at}.{content_key}")))

    last = max((i for i, (r, _) in enumerate(chat) if r == "assistant"), default=None)
    if last is None:
        raise _err(source, loc, "the chat has no assistant turn (the response)", key)
    if last != len(chat) - 1:
        raise _err(
            source,
            loc,
            f"a {chat[last + 1][0]!r} turn comes after the last assistant turn; "
            "the chat must end with the assistant's response",
            f"{key}[{last + 1}]",
        )
    if last == 0:
        raise _err(
            source, loc, "the assistant turn has no user turn before it (the prompt)", f"{key}[0]"
        )
    if chat[last - 1][0] != "user":
        raise _err(
            source,
            loc,
            f"the turn before the last assistant turn is {chat[last - 1][0]!r}; "
            "it must be the user turn (the prompt)",
            f"{key}[{last - 1}]",
        )
    prompt, response = chat[last - 1][1], chat[last][1]
    if not prompt.strip():
        raise _err(
            source,
            loc,
            "the prompt (the user turn before the last assistant turn) is empty",
            f"{key}[{last - 1}]",
        )
    if not response.strip():
        raise _err(
            source,
            loc,
            "the response (the last assistant turn) is empty or whitespace-only",
            f"{key}[{last}]",
        )
    return prompt, response, tuple(chat[: last - 1])


def _turn_text(content: Any, loc: _Loc, source: str, at: str) -> str:
    """A turn's content: a string, or a list of OpenAI text parts joined with blank lines."""
    if isinstance(content, str):
        return _valid_text(content, loc, source, at)
    if isinstance(content, list) and not content:
        raise _err(
            source, loc, "the content is an empty list; expected a string or a list of text parts", at
        )
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    got = "no 'text'" if "text" not in part else _a(_type_name(text))
                    raise _err(
                        source,
                        loc,
                        f"a text content part needs a 'text' string, got {got}",
                        f"{at}[{j}].text",
                    )
                texts.append(_valid_text(text, loc, source, f"{at}[{j}].text"))
                continue
            kind = part.get("type") if isinstance(part, dict) else _type_name(part)
            raise _err(
                source,
                loc,
                f"only text content parts are supported, got {_show(kind)}",
                f"{at}[{j}]",
            )
        return "\n\n".join(texts)
    if content is None:
        raise _err(source, loc, "is null, expected a string", at)
    raise _err(
        source,
        loc,
        f"expected a string or a list of text parts, got {_a(_type_name(content))}",
        at,
    )


def _field_id(row: dict, name: str, why: str, loc: _Loc, source: str) -> str:
    value = row.get(name)
    if value is None:
        raise _err(source, loc, f"missing id; {why}", name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _err(
            source,
            loc,
            f"expected a string or integer id, got {_a(_type_name(value))} ({_show(value)})",
            name,
        )
    rid = str(value)
    if not rid.strip():
        raise _err(source, loc, "the id is empty", name)
    return rid


# --------------------------------------------------------------------------------------------
# Small helpers


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _show(value: Any, limit: int = 40) -> str:
    """A short one-line repr of a user value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: BaseException | str) -> str:
    text = _ONE_LINE.sub(" ", str(error)).strip()
    return text if len(text) <= 300 else text[:297] + "..."
