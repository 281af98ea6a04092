"""Opening an input: the file formats, each read into ``(row, Loc)`` pairs, and the input checksum.

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

Text must be UTF-8 (a UTF-8 byte-order mark is allowed). Whole-file problems raise one
:class:`~tunesift.errors.InputError` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from tunesift.errors import InputError

from .describe import Loc, one_line, show, type_name, with_article

__all__ = ["input_checksum", "iter_rows", "open_rows", "train_split"]

_JSON_WS = re.compile(r"[ \t\n\r]*")

#: What a reader yields: each row with where it is.
Rows = Iterator[tuple[Any, Loc]]


def input_checksum(path: str | Path, *, every_file: bool = False) -> str:
    """SHA-256 (hex) of the input: of the file's bytes for a file.

    For a folder: the SHA-256 over its files sorted by their relative path (``/``-separated),
    each contributing ``relative_path + b"\\0" + sha256(file bytes)``. Dot-files and the
    ``cache-*.arrow`` files that ``datasets`` writes next to a loaded dataset are left out, as
    they are not part of the saved data, unless ``every_file`` (an output folder's checksum: a
    file a user put there, dot-file or not, must change it). A folder without such files has
    the same checksum either way.
    """
    p, source = Path(path), str(path)
    if p.is_file():
        return _file_sha256(p, source).hex()
    if p.is_dir():
        h = hashlib.sha256()
        files = []
        for f in p.rglob("*"):
            rel = f.relative_to(p).as_posix()
            if not f.is_file():
                continue
            if not every_file and (any(part.startswith(".") for part in rel.split("/"))
                                   or (f.name.startswith("cache-") and f.name.endswith(".arrow"))):
                continue
            files.append((rel, f))
        for rel, f in sorted(files):
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            h.update(_file_sha256(f, str(f)))
        return h.hexdigest()
    raise InputError(source, "no such file or directory")


def open_rows(p: Path, source: str, digest: dict | None = None) -> tuple[Rows, str]:
    """Pick the reader for a path; returns the ``(row, Loc)`` iterator and the text of the error
    to raise when it yields no row. ``digest["sha256"]`` gets the checksum of the bytes read;
    ``digest["schema"]`` the Arrow schema of a Parquet file or ``datasets`` folder."""
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
            raise InputError(source, f"not a valid gzip file: {one_line(e)}") from None
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
        raise InputError(source, f"cannot read the file: {e.strerror or one_line(e)}") from None


def _file_sha256(p: Path, source: str) -> bytes:
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise InputError(source, f"cannot read the file: {e.strerror or one_line(e)}") from None
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
        begin = data.rfind(b"\n", 0, e.start) + 1
        col = len(data[begin : e.start].decode("utf-8")) + 1  # in characters, as JSON errors count
        raise InputError(
            source,
            f"not valid UTF-8: byte 0x{data[e.start]:02x} at column {col} "
            "(the file must be UTF-8 text)",
            line=line,
        ) from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: a JSON object as a dict, or :class:`_DuplicateKey` when it names a key
    twice (``json`` would silently keep the last value, losing the others)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def exact_number(text: str) -> float | Decimal:
    """A JSON number with a fraction or exponent as a float when the float holds it to the digits
    written, else as a Decimal with those digits (``3.14159265358979323846``, ``1e400``): the
    writers give a Decimal back digit for digit, so no value read is rounded or turned into
    infinity. Up to 15 significant digits a double always holds them (the fast path);
    ``0.10000000000000001`` (17 digits, as ``%.17g`` writes 0.1) is that double too."""
    f = float(text)
    digits = text.lstrip("+-").split("e")[0].split("E")[0].replace(".", "").lstrip("0")
    if math.isfinite(f) and (f != 0.0 or not digits.strip("0")):  # no overflow, no underflow to 0
        if len(digits) <= 15 or Decimal(format(f, f".{len(digits) - 1}e")) == Decimal(text):
            return f
    return Decimal(text)


def _twice(key: str) -> str:
    return f"a JSON object names the key {show(key)} twice; only its last value would be read"


def _read_jsonl(text: str, source: str, ext: str) -> Rows:
    raw_lines = text.split("\n")
    for n, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw, object_pairs_hook=_unique_keys, parse_float=exact_number)
        except _DuplicateKey as e:
            raise InputError(source, _twice(e.key), line=n) from None
        except RecursionError:
            raise InputError(source, "invalid JSON: nested too deeply", line=n) from None
        except json.JSONDecodeError as e:  # (before ValueError: it is one)
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
        except ValueError as e:  # an integer of more than 4,300 digits (Python's limit)
            raise InputError(source, f"invalid JSON: {one_line(e)}", line=n) from None
        if not isinstance(obj, dict):
            reason = f"expected a JSON object, got {with_article(type_name(obj))}"
            if isinstance(obj, list) and ext != ".json":
                reason += " (a file holding one JSON array must be named .json)"
            raise InputError(source, reason, line=n)
        yield obj, Loc(n, None, "line")


def _whole_json_hint(text: str) -> str | None:
    """For a .json file that is not JSON Lines: say so when it is one JSON object or value."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, or an integer past Python's digit limit
        return None
    if isinstance(obj, dict):
        keys = ", ".join(show(k, 30) for k in list(obj)[:8]) or "none"
        return (
            f"the file holds a single JSON object (top-level keys: {keys}), not a JSON array "
            "of records or JSON Lines"
        )
    return f"the file holds a single JSON {type_name(obj)}, not a JSON array of records"


def _read_json_array(text: str, source: str) -> Rows:
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=exact_number)
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
        except _DuplicateKey as e:
            line = text.count("\n", 0, start) + 1
            raise InputError(source, f"{_twice(e.key)} (array element {index + 1})", line=line) from None
        except json.JSONDecodeError as e:
            raise InputError(
                source, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno
            ) from None
        except RecursionError:
            raise fail("nested too deeply", start) from None
        except ValueError as e:  # an integer of more than 4,300 digits (Python's limit)
            raise fail(one_line(e), start) from None
        index += 1
        line_at += text.count("\n", counted_to, start)
        counted_to = start
        loc = Loc(index, f"array element {index}, starting on file line {line_at}", "element")
        if not isinstance(obj, dict):
            raise InputError(
                source,
                f"expected a JSON object, got {with_article(type_name(obj))} ({loc.note})",
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


def _read_csv(text: str, source: str) -> Rows:
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) is too small for long responses
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader)
        except csv.Error as e:
            raise InputError(source, f"malformed CSV header: {one_line(e)}", line=1) from None
        if not any(name.strip() for name in header):
            raise InputError(source, "the first line is blank: a CSV file starts with its header, the column "
                             "names", line=1)
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise InputError(source, f"the CSV header names column {show(name)} twice", line=1)
            seen.add(name)
        row_no = 0
        split: list[str] = []

        def physical_lines(first: int, last: int) -> str:
            """File lines first..last (1-based) as written; split once, and only if a row needs it."""
            if not split:
                split.extend(re.split(r"\r\n|\r|\n", text))
            return "\n".join(split[first - 1:last])

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
                    f"malformed CSV: {one_line(e)}{hint} (row {row_no + 1}, "
                    f"starting on file line {start})",
                    line=row_no + 1,
                ) from None
            if not cells or (len(cells) == 1 and not cells[0].strip()
                             and '"' not in physical_lines(start, reader.line_num)):
                continue  # a blank line (spaces only, too, as in JSON Lines); a quoted "  " is data
            row_no += 1
            loc = Loc(row_no, f"row {row_no}, file line {start}", "row")
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


def _read_parquet(data: bytes, source: str, digest: dict) -> tuple[Rows, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # Arrow's own copy of the bytes: a buffer wrapping the Python ``bytes`` may be released on
        # one of Arrow's scanner threads while the interpreter exits, which takes the GIL there and
        # aborts the process (exit 134 instead of the CLI's own code; seen with torch imported)
        buf = pa.allocate_buffer(len(data))
        memoryview(buf).cast("B")[:] = data
        names = pq.read_schema(pa.BufferReader(buf)).names
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # Arrow would fail with a message about field refs; a row could keep only one
            raise InputError(source, f"the Parquet file names column {show(twice[0])} twice; only one would be read")
        table = pq.read_table(pa.BufferReader(buf))
        digest["schema"] = table.schema
        rows = table.to_pylist()
    except InputError:
        raise
    except OSError as e:
        raise InputError(source, f"cannot read the Parquet file: {one_line(e)}") from None
    except Exception as e:  # pyarrow.ArrowInvalid and friends
        raise InputError(source, f"not a valid Parquet file: {one_line(e)}") from None
    return iter_rows(rows, source), "no records: the Parquet file has no rows"


def _read_dataset_dir(p: Path, source: str, digest: dict) -> tuple[Rows, str]:
    kept = [n for n in ("selected.jsonl", "selected.parquet", "selected") if (p / n).exists()]
    if (p / "manifest.json").is_file() and kept:  # its dataset_info.json is LLaMA-Factory's, not datasets'
        raise InputError(source, f"a tunesift output folder: select from its kept records, {p / kept[0]}")
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
        raise InputError(source, f"cannot load the Hugging Face dataset: {one_line(e)}") from None
    if type(ds).__name__ == "DatasetDict":
        ds = train_split(ds, source)
    digest["schema"] = getattr(getattr(ds, "data", None), "schema", None)
    try:
        rows = ds.to_list()
    except Exception as e:
        raise InputError(source, f"cannot read the dataset rows: {one_line(e)}") from None
    return iter_rows(rows, source), "no records: the dataset has no rows"


def train_split(dd: Mapping, source: str) -> Any:
    """The ``train`` split of a ``DatasetDict``, or an error listing its splits."""
    if "train" in dd:
        return dd["train"]
    splits = ", ".join(show(s, 30) for s in dd) or "none"
    raise InputError(
        source,
        f"a DatasetDict without a 'train' split (splits: {splits}); select the split to use, "
        f"e.g. dataset_dict[{next(iter(dd), 'name')!r}], and pass or save that",
    )


def iter_rows(rows: Iterable[Any], source: str) -> Rows:
    """Rows already in memory as ``(row, Loc)`` pairs (``line`` is the 1-based row); a mapping
    that is not a dict is copied into one, anything else is an error."""
    for i, row in enumerate(rows, 1):
        loc = Loc(i, f"row {i}", "row")
        if not isinstance(row, dict):
            if isinstance(row, Mapping):
                row = dict(row)
            else:
                raise InputError(
                    source, f"expected a row (dict), got {with_article(type_name(row))} (row {i})", line=i
                )
        yield row, loc
