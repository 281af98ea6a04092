"""Reading a ``tunesift select`` output folder (and, for dropped records, its input) for the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TunesiftError
from .fmt import clip, one_line
from .hints import RELEVANT, SCORE_COLUMNS

__all__ = ["Input", "Output", "read_input", "read_output"]


@dataclass
class Output:
    """One ``tunesift select`` output folder as the report reads it."""

    folder: Path
    manifest: dict
    cols: dict[str, np.ndarray]  # every scores.parquet column as a numpy array (nulls -> NaN)
    ids: list[str]
    kept: np.ndarray
    selected: list[dict]  # selected.jsonl rows, in file (= input) order
    method: str
    notes: list[str] = field(default_factory=list)
    bools: set[str] = field(default_factory=set)  # columns stored as booleans (shown yes / no)
    errors: list[str | None] = field(default_factory=list)  # why a record was not scored (error rows)
    # DELIFT: the id of the kept record that covers each record not picked (None: a pick, or no
    # pick covers it); empty when scores.parquet has no covered_by column (older outputs, GreeDi)
    covered_by: list[str | None] = field(default_factory=list)

    @property
    def unscored(self) -> np.ndarray:
        """Mask of the error rows (``select --on-error skip``): never scored, never kept."""
        if not self.errors:
            return np.zeros(self.n, dtype=bool)
        return np.array([e is not None for e in self.errors], dtype=bool)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return int(self.kept.sum())


def read_output(out_dir: str | Path) -> Output:
    """Read and cross-check ``manifest.json``, ``scores.parquet`` and ``selected.jsonl`` of ``out_dir``;
    a missing or damaged file raises :class:`TunesiftError` naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    if not out.is_dir():
        raise TunesiftError(f"{out}: no such output folder (write one with tunesift select --out {out})")
    mpath, spath, jpath = out / "manifest.json", out / "scores.parquet", out / "selected.jsonl"
    for p in (mpath, spath, jpath):
        if not p.is_file():
            raise TunesiftError(f"{p}: missing; is '{out}' a tunesift select output folder?")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TunesiftError(f"{mpath}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TunesiftError(f"{mpath}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(manifest, dict):
        raise TunesiftError(f"{mpath}: not a tunesift manifest (expected a JSON object)")
    method = manifest.get("method")
    if method not in RELEVANT:
        raise TunesiftError(f"{mpath}: unknown method {method!r}; expected one of {', '.join(RELEVANT)}")
    try:
        table = pq.read_table(spath)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise TunesiftError(f"{spath}: cannot read scores: {one_line(exc)}") from None
    need = {"id", "kept", "rank"} | set(SCORE_COLUMNS[method])
    missing = sorted(need - set(table.column_names))
    if missing:
        raise TunesiftError(f"{spath}: missing column(s) {', '.join(missing)} for method {method}")
    cols: dict[str, np.ndarray] = {}
    bools = set()
    for name in table.column_names:
        col = table.column(name)
        if name == "id":
            continue
        if name == "kept":
            cols[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=bool)
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            cols[name] = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
            if pa.types.is_boolean(col.type):
                bools.add(name)
    ids = [str(x) for x in table.column("id").to_pylist()]
    selected = []
    try:
        with open(jpath, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        selected.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise TunesiftError(f"{jpath}:{lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TunesiftError(f"{jpath}: cannot read: {exc}") from None
    res = Output(out, manifest, cols, ids, cols["kept"], selected, method, bools=bools)
    if "covered_by" in table.column_names:
        res.covered_by = [None if c is None else str(c) for c in table.column("covered_by").to_pylist()]
    if "error" in table.column_names:
        res.errors = [str(e) if e else None for e in table.column("error").to_pylist()]
        bad = [e for e in res.errors if e is not None]
        if bad:
            res.notes.append(f"{len(bad)} record(s) could not be scored and were never kept "
                             f"(select --on-error skip), e.g. {clip(bad[0], 300)}")
    if len(selected) != res.k:
        raise TunesiftError(f"{jpath}: {len(selected)} rows, but {spath.name} marks {res.k} records kept")
    counts = manifest.get("counts") or {}
    if counts and (counts.get("input"), counts.get("kept")) != (res.n, res.k):
        res.notes.append(f"manifest.json counts ({counts.get('kept')} of {counts.get('input')}) differ from "
                         f"scores.parquet ({res.k} of {res.n}); the page uses scores.parquet")
    return res


@dataclass
class Input:
    """The texts of the records shown and the original rows of the dropped ones."""

    texts: dict[str, tuple[str, str]]  # id -> (prompt, response)
    rows: dict[str, dict] | None  # id -> original row, for the dropped records (None: input not read)


def read_input(res: Output, data: str | Path | None, by: str | None) -> Input:
    """Texts of the shown records and, when possible, the rows of the dropped ones."""
    from ..io.records import read_records, records_from_rows

    texts: dict[str, tuple[str, str]] = {}
    kept_ids = [i for i, k in zip(res.ids, res.kept) if k]
    for rid, row in zip(kept_ids, res.selected):
        try:
            rec = records_from_rows([row], source="selected.jsonl")[0]
            texts[rid] = (rec.prompt, rec.response)
        except TunesiftError:  # a custom field mapping: show the raw row
            texts[rid] = (json.dumps(row, ensure_ascii=False, default=str), "")
    inputs = res.manifest.get("inputs") or {}
    recorded = (inputs.get("data") or {}).get("path") if isinstance(inputs, dict) else None
    path = data if data is not None else recorded
    if res.n == res.k:
        return Input(texts, {})
    if path is None:
        reason = "manifest.json records no input path"
        if by is not None:
            raise TunesiftError(f"--by {by} needs the dropped rows: {reason}; pass the input with --data FILE")
        res.notes.append(f"dropped records are shown without their text: {reason} (pass --data FILE)")
        return Input(texts, None)
    try:
        records = read_records(path)
    except TunesiftError as exc:
        if by is not None:
            hint = "" if data is not None else "; pass the input with --data FILE"
            raise TunesiftError(f"--by {by} needs the dropped rows from the input: {exc}{hint}") from None
        res.notes.append(f"dropped records are shown without their text: cannot read the input ({exc})")
        return Input(texts, None)
    by_id = {r.id: r for r in records}
    dropped = [i for i, k in zip(res.ids, res.kept) if not k]
    lost = [i for i in dropped if i not in by_id]
    if lost:
        msg = (f"{path}: does not match {res.folder / 'scores.parquet'}: {len(lost)} of the {len(dropped)} "
               f"dropped record ids are not in it (e.g. '{lost[0]}')")
        if by is not None:
            raise TunesiftError(msg + "; pass the input that was selected from with --data FILE")
        res.notes.append(msg + "; dropped records are shown without their text")
        return Input(texts, None)
    sha = (inputs.get("data") or {}).get("sha256")
    if sha and data is None:
        from ..io.files import input_checksum

        try:
            if input_checksum(path) != sha:
                res.notes.append(f"{path} changed since the selection (sha256 differs from the manifest)")
        except TunesiftError:
            pass
    for rid in dropped:
        texts[rid] = (by_id[rid].prompt, by_id[rid].response)
    return Input(texts, {rid: by_id[rid].row for rid in dropped})
