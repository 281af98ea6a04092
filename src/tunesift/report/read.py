"""Reading a ``tunesift select`` output folder (and, for dropped records, its input) for the report."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TunesiftError
from ..io.files import exact_number
from .fmt import clip, one_line
from .hints import GREEDY, RELEVANT, SCORE_COLUMNS

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
    mpath, spath, jpath = out / "manifest.json", out / "scores.parquet", out / "selected.jsonl"
    try:
        if out.exists() and not out.is_dir():
            raise TunesiftError(f"{out}: not a folder; name the output folder of tunesift select")
        if not out.is_dir():
            raise TunesiftError(f"{out}: no such output folder (write one with tunesift select --out {out})")
        for p in (mpath, spath, jpath):
            if p.is_dir():
                raise TunesiftError(f"{p}: a folder, expected a file; is '{out}' a tunesift select output folder?")
            if not p.is_file():
                if p is jpath and ((out / "selected.parquet").is_file() or (out / "selected").is_dir()):
                    raise TunesiftError(f"{out}: the report reads selected.jsonl, and this selection was written "
                                        "with --out-format parquet or hf; select again with --out-format jsonl "
                                        "(the default)")
                raise TunesiftError(f"{p}: missing; is '{out}' a tunesift select output folder?")
    except OSError as exc:  # no permission to look inside
        raise TunesiftError(f"{out}: cannot read the output folder: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TunesiftError(f"{mpath}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TunesiftError(f"{mpath}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    check_manifest(manifest, mpath)
    method = manifest["method"]
    try:  # one read: the bytes checked are the bytes parsed, even if select runs again meanwhile
        sdata = spath.read_bytes()
    except OSError as exc:
        raise TunesiftError(f"{spath}: cannot read: {exc.strerror or exc}") from None
    check_unchanged(out, manifest, spath, hashlib.sha256(sdata).hexdigest())
    try:
        table = pq.read_table(pa.BufferReader(sdata))
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise TunesiftError(f"{spath}: cannot read scores: {one_line(exc)}") from None
    need = {"id", "kept", "rank"} | set(SCORE_COLUMNS[method])
    missing = sorted(need - set(table.column_names))
    if missing:
        raise TunesiftError(f"{spath}: missing column(s) {', '.join(missing)} for method {method}")
    check_columns(table, need, spath, greedy=method in GREEDY)
    cols: dict[str, np.ndarray] = {}
    bools = set()
    for name in table.column_names:
        col = table.column(name)
        if name == "id":
            continue
        if name == "kept":
            cols[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=bool)
        elif (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
              or pa.types.is_null(col.type)):  # an all-null column: NaN throughout
            cols[name] = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
            if pa.types.is_boolean(col.type):
                bools.add(name)
    ids = [str(x) for x in table.column("id").to_pylist()]
    selected = read_selected(out, manifest, jpath)
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
    if isinstance(counts.get("prompts_cut"), int) and counts["prompts_cut"] > 0:
        max_length = (manifest.get("options") or {}).get("max_length")
        res.notes.append(f"{counts['prompts_cut']} record(s) had prompts longer than max_length {max_length}: "
                         "each was scored on its prompt's last tokens (raise --max-length to score them whole)")
    for name, why in (("target", "if the target set is what the model is evaluated on, this is a leak"),
                      ("existing", "the model was trained on them already")):
        n_kept = counts.get(f"{name}_prompts_kept")
        if isinstance(n_kept, int) and n_kept > 0:
            res.notes.append(f"{n_kept} kept record(s) ask a prompt of the {name} set "
                             f"({counts.get(f'{name}_copies_kept')} with its response too): {why}")
        n_near = counts.get(f"{name}_near_prompts_kept")
        if isinstance(n_near, int) and n_near > 0:
            res.notes.append(f"{n_near} kept record(s) ask a near copy of a prompt of the {name} set "
                             f"(half or more of their 8-word sequences shared): {why}")
    if counts and (counts.get("input"), counts.get("kept")) != (res.n, res.k):
        res.notes.append(f"manifest.json counts ({counts.get('kept')} of {counts.get('input')}) differ from "
                         f"scores.parquet ({res.k} of {res.n}); the page uses scores.parquet")
    return res


# manifest.json fields the report reads, and the JSON type each must have where present
MANIFEST_FIELDS = {"options": dict, "inputs": dict, "counts": dict, "timings": dict, "versions": dict, "files": dict,
                   "fields": dict}
#: the keys of manifest.json's ``fields`` (the field map the input was read with: io.schema.FieldMap)
FIELD_KEYS = {"prompt", "response", "messages", "id"}
#: the surrogate report's numbers, formatted by the page (``:.2f``, ``:,``)
SURROGATE_NUMBERS = {"spearman", "r2", "within_row_spearman", "labelled_pairs", "candidate_pairs", "heldout_pairs"}
TEXT_COLUMNS = {"group"}  # score columns that hold text (balanced-random's group); the rest are numbers


def check_manifest(manifest, mpath: Path) -> None:
    """One-line TunesiftError unless ``manifest`` is a tunesift select manifest whose fields have the
    types the report reads (a hand-edited or foreign file must not end in a traceback)."""
    if not isinstance(manifest, dict) or manifest.get("tool") != "tunesift":
        raise TunesiftError(f"{mpath}: not a tunesift manifest (a JSON object with \"tool\": \"tunesift\")")
    method = manifest.get("method")
    if not isinstance(method, str) or method not in RELEVANT:
        raise TunesiftError(f"{mpath}: field 'method': unknown method {method!r}; expected one of {', '.join(RELEVANT)}")
    for name, kind in MANIFEST_FIELDS.items():
        if manifest.get(name) is not None and not isinstance(manifest[name], kind):
            raise TunesiftError(f"{mpath}: field '{name}' must be a JSON object, got {type(manifest[name]).__name__}")
    for name, digest in (manifest.get("files") or {}).items():
        if not isinstance(digest, str):
            raise TunesiftError(f"{mpath}: field 'files.{name}' must be a sha256 string, got {type(digest).__name__}")
    surrogate = manifest.get("surrogate")
    if surrogate is not None and not (isinstance(surrogate, dict) and all(isinstance(v, dict) for v in surrogate.values())):
        raise TunesiftError(f"{mpath}: field 'surrogate' must be a JSON object of JSON objects")
    for kernel, rep in (surrogate or {}).items():
        for key, v in rep.items():
            if key in SURROGATE_NUMBERS and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TunesiftError(f"{mpath}: field 'surrogate.{kernel}.{key}' must be a number, got "
                                    f"{type(v).__name__}")
    for key, v in (manifest.get("fields") or {}).items():
        if key not in FIELD_KEYS or not isinstance(v, str):
            raise TunesiftError(f"{mpath}: field 'fields.{key}' is not a field mapping (expected "
                                f"{', '.join(sorted(FIELD_KEYS))} naming input fields as strings)")
    for name, entry in (manifest.get("inputs") or {}).items():
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise TunesiftError(f"{mpath}: field 'inputs.{name}' must be a JSON object, got {type(entry).__name__}")
        for key in ("path", "sha256"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise TunesiftError(f"{mpath}: field 'inputs.{name}.{key}' must be a string, got "
                                    f"{type(entry[key]).__name__}")


def check_unchanged(out: Path, manifest: dict, path: Path, digest: str) -> None:
    """One-line TunesiftError when ``digest``, the SHA-256 of the bytes read from ``path``, is not
    the one the manifest lists for it: the file changed since select wrote it (a ``selected.jsonl``
    from another selection would put one record's text beside another's id). Outputs from before
    the checksums carry no ``files`` and are not checked; one with ``files`` must list ``path``."""
    files = manifest.get("files")
    if files and path.name not in files:  # dropping the key must not skip the check
        raise TunesiftError(f"{out / 'manifest.json'}: field 'files' lists no sha256 for {path.name}; rerun select")
    want = (files or {}).get(path.name)
    if isinstance(want, str) and digest != want:
        raise TunesiftError(f"{path}: changed since tunesift select wrote it (its sha256 is not the one "
                            f"{out / 'manifest.json'} lists); rerun select, or restore the file")


def read_selected(out: Path, manifest: dict, jpath: Path) -> list[dict]:
    """The rows of ``selected.jsonl``, hashed as they are parsed (one open, no second read to race
    with a rewrite); a changed file is refused before a damaged line is reported."""
    selected: list[dict] = []
    digest = hashlib.sha256()
    problem = None  # the first damaged line, raised once the checksum has been compared
    try:
        with open(jpath, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                digest.update(raw)
                if problem is None and raw.strip():
                    try:
                        # numbers as the input reader reads them (exact decimals kept): a kept row's
                        # category must be its dropped twin's
                        selected.append(json.loads(raw.decode("utf-8"), parse_float=exact_number))
                    except UnicodeDecodeError as exc:
                        problem = f"{jpath}:{lineno}: cannot read: {exc}"
                    except json.JSONDecodeError as exc:
                        problem = f"{jpath}:{lineno}: invalid JSON: {exc.msg}"
    except OSError as exc:
        raise TunesiftError(f"{jpath}: cannot read: {exc.strerror or exc}") from None
    check_unchanged(out, manifest, jpath, digest.hexdigest())
    if problem:
        raise TunesiftError(problem)
    return selected


def check_columns(table, need: set[str], spath: Path, greedy: bool) -> None:
    """One-line TunesiftError unless the columns the report reads have usable types: ``id`` text,
    unique and never null; ``kept`` boolean and never null; ``rank`` and the method's score columns
    numbers, ``rank`` null only on error rows and, for a ``greedy`` method, records it did not pick."""
    import pyarrow as pa

    def bad(name: str, why: str) -> TunesiftError:
        return TunesiftError(f"{spath}: column '{name}' {why}")

    col = table.column("id")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise bad("id", f"must hold text, got {col.type}")
    ids = col.to_pylist()
    if col.null_count:
        raise bad("id", f"is null in row {ids.index(None)}")
    seen: set[str] = set()
    for row, rid in enumerate(ids):
        if rid in seen:
            raise bad("id", f"repeats '{rid}' (row {row}): every record must have one row")
        seen.add(rid)
    col = table.column("kept")
    if not pa.types.is_boolean(col.type) or col.null_count:
        raise bad("kept", f"must be true or false in every row, got {col.type} with {col.null_count} null(s)")
    for name in sorted(need - {"id", "kept"} - TEXT_COLUMNS):
        t = table.column(name).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
            raise bad(name, f"must hold numbers, got {t}")
    # a rank for every scored record; a greedy method ranks only its picks
    errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * table.num_rows
    kept = table.column("kept").to_pylist()
    for row, (r, e, k) in enumerate(zip(table.column("rank").to_pylist(), errors, kept)):
        if r is None and not e and (k or not greedy):  # an error row has a non-empty reason (as read below)
            raise bad("rank", f"is null in row {row} ('{ids[row]}'), a {'kept' if k else 'scored'} record")


def check_same_input(data: str | Path, sha: str | None) -> None:
    """``--data``: one-line TunesiftError unless the file exists and, where the manifest records the
    input's checksum, has it (another file with the same ids would show other texts as this
    selection's)."""
    from ..io.files import input_checksum

    try:
        found = Path(data).exists()
    except OSError as exc:
        raise TunesiftError(f"--data {data}: {exc.strerror or exc}") from None
    if not found:
        raise TunesiftError(f"--data {data}: no such file")
    if sha and input_checksum(data) != sha:
        raise TunesiftError(f"--data {data}: not the input this selection read (its sha256 differs from the "
                            "manifest's); pass the file that was selected from")


@dataclass
class Input:
    """The texts of the records shown and the original rows of the dropped ones."""

    texts: dict[str, tuple[str, str]]  # id -> (prompt, response)
    rows: dict[str, dict] | None  # id -> original row, for the dropped records (None: input not read)


def read_input(res: Output, data: str | Path | None, by: str | None) -> Input:
    """Texts of the shown records and, when possible, the rows of the dropped ones."""
    from ..io.records import read_records, records_from_rows
    from ..io.schema import FieldMap

    try:  # the field map the input was read with: kept and dropped records are read the same way
        fields = FieldMap(**(res.manifest.get("fields") or {}))
    except TunesiftError as exc:
        raise TunesiftError(f"{res.folder / 'manifest.json'}: field 'fields': {exc}") from None
    texts: dict[str, tuple[str, str]] = {}
    kept_ids = [i for i, k in zip(res.ids, res.kept) if k]
    for rid, row in zip(kept_ids, res.selected):
        try:
            rec = records_from_rows([row], fields, source="selected.jsonl")[0]
            texts[rid] = (rec.prompt, rec.response)
        except TunesiftError:  # a custom field mapping: show the raw row
            texts[rid] = (json.dumps(row, ensure_ascii=False, default=str), "")
    inputs = res.manifest.get("inputs") or {}
    recorded = (inputs.get("data") or {}).get("path") if isinstance(inputs, dict) else None
    path = data if data is not None else recorded
    sha = (inputs.get("data") or {}).get("sha256")
    if data is not None:  # the file the user names must be the one selected from (moved, not another)
        check_same_input(data, sha)
    if res.n == res.k:
        return Input(texts, {})
    if path is None:
        reason = "manifest.json records no input path"
        if by is not None:
            raise TunesiftError(f"--by {by} needs the dropped rows: {reason}; pass the input with --data FILE")
        res.notes.append(f"dropped records are shown without their text: {reason} (pass --data FILE)")
        return Input(texts, None)
    options = res.manifest.get("options") or {}
    limit = options.get("limit") if isinstance(options.get("limit"), int) else None
    try:  # as the selection read it: its field map and --limit; a record with a defect is an error row there
        records = read_records(path, fields, on_error="skip", limit=limit)
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
    if sha and data is None:
        from ..io.files import input_checksum

        try:
            changed = input_checksum(path) != sha
        except TunesiftError:
            changed = False
        if changed:  # the same ids may hold other texts now: none of them is shown as this selection's
            msg = f"{path} changed since the selection (sha256 differs from the manifest)"
            if by is not None:
                raise TunesiftError(msg + "; --by needs the input that was selected from: pass it with --data FILE")
            res.notes.append(msg + "; dropped records are shown without their text")
            return Input(texts, None)
    extra = len(by_id.keys() - set(res.ids))
    if extra:
        res.notes.append(f"{path} holds {extra} record(s) that are not in scores.parquet (the selection read "
                         "part of it: --limit or --sample)")
    for rid in dropped:
        texts[rid] = (by_id[rid].prompt, by_id[rid].response)
    return Input(texts, {rid: by_id[rid].row for rid in dropped})
