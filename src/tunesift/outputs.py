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

JSON Lines output keeps every value as it was read where JSON can hold it, in the tagged forms of
:mod:`tunesift.row_values` where it cannot; Parquet and hf output convert the kept rows to the
column types :func:`tunesift.row_values.check_rows_writable` found over every record before any
scoring.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from .errors import OptionError, TunesiftError
from .folders import check_earlier_set, digests, publish
from .io.chat import chat_tags
from .io.describe import first_line
from .io.json_values import json_line, json_value
from .io.records import schema_of
from .io.trainers import DATASET_NAME, dataset_info, unreadable_tools, unreadable_turn
from .pipeline import Selection, options_dict, type_label, versions
from .row_values import MixedColumns, arrow_column, type_of
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


def mount_point(path: Path) -> bool:
    """Whether ``path`` (resolved) is a mount point: :func:`os.path.ismount` (another device than
    its parent), or, on Linux, listed in ``/proc/self/mountinfo`` (a bind mount of a folder of the
    same device, as ``docker run -v`` makes)."""
    if os.path.ismount(path):
        return True
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    # field 5 is the mount point, with space, tab, newline and backslash as octal escapes
    unescape = re.compile(r"\\([0-7]{3})")
    points = {unescape.sub(lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
              for line in text.splitlines() if line.count(" ") >= 4}
    return str(path) in points


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
    if out.is_dir() and mount_point(out):  # renaming over it fails (EBUSY), after all the work
        raise OptionError(f"output folder '{out_dir}' is a mount point (a container volume?): the output is swapped "
                          f"in by renaming, which a mount point refuses; name a folder inside it, e.g. --out "
                          f"{Path(out_dir) / 'run1'}")
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


def check_cache(out_dir: str | Path | None, cache_dir: str | Path | None) -> None:
    """The score cache's checks before any work, one line each: apart from the output folder
    (:func:`check_cache_apart`, when there is one) and writable (``store.check_cache_dir``).
    ``cache_dir`` None: the default cache."""
    from .store import check_cache_dir, default_cache_dir

    root = cache_dir or default_cache_dir()
    if out_dir is not None:
        check_cache_apart(out_dir, root)
    check_cache_dir(root)


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
            table = pa.table({str(k): arrow_column(k, [row.get(k) for row in rows],
                                               type_of(types, k)) for k in names}) if names \
                else pa.Table.from_pylist(rows)
        if out_format == "parquet":
            pq.write_table(table, tmp / "selected.parquet")
        else:
            _save_to_disk(table, tmp / "selected")
    # OverflowError: an integer beyond int64; ValueError / TypeError: a type datasets cannot hold (a map)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeError, OverflowError,
            ValueError, TypeError) as exc:
        raise TunesiftError(f"cannot write the kept records as {out_format}: {first_line(exc)}; "
                            "use --out-format jsonl") from None


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
        pq.write_table(sel.table(), tmp / "scores.parquet")
        files = digests(tmp)
        text = json.dumps(json_value(manifest(sel, inputs or {}, files, out_format)), indent=2, allow_nan=False)
        (tmp / "manifest.json").write_text(text + "\n", encoding="utf-8")
        if report:  # last: it reads the set back; recognised by its title, not a checksum
            from .report import REPORT_FILE, render_report

            (tmp / REPORT_FILE).write_text(render_report(tmp, shown_as=out), encoding="utf-8")

    publish(out, fill, "the output", out_dir)
    return out


# ----------------------------------------------------------------------------- one entry point


def selection_fields(data: str | Path):
    """The field map ``select`` read its input with (manifest.json's ``fields``), when ``data`` is
    a selection it wrote (``OUT/selected.jsonl``, ``.parquet`` or ``selected/`` beside a tunesift
    manifest) and the map is not empty; else None. Kept rows are the input's rows as read, so they
    must be read back the same way: with ``--prompt-field question,context`` select scored both
    fields, and detection alone would train on ``question`` only."""
    from .io.schema import FieldMap

    path = Path(data)
    mpath = path.parent / "manifest.json"
    if path.name not in SELECTED.values() or not mpath.is_file():
        return None
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a manifest we can read: the data is read as any other input
    if not isinstance(meta, dict) or meta.get("tool") != "tunesift" or not meta.get("fields"):
        return None
    fields = meta["fields"]
    if not isinstance(fields, dict) or any(k not in ("prompt", "response", "messages", "id") or not isinstance(v, str)
                                           for k, v in fields.items()):
        raise TunesiftError(f"{mpath}: field 'fields' is not a field mapping (prompt, response, messages, id "
                            "naming input fields as strings)")
    return FieldMap(**fields)


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
    if out_format in ("parquet", "hf") and "row_types" not in sel.extra:
        # selected without out= (sel.save afterwards): the column types over every record, as
        # select --out checks them before scoring, so the file is typed the same either way
        from dataclasses import replace

        from .row_values import check_rows_writable

        types = check_rows_writable(sel.records, sel.sources.get("data", "<rows>"), sel.extra.get("input_schema"),
                                    out_format=out_format)
        sel = replace(sel, extra={**sel.extra, "row_types": types})
    return write_selection(sel, out_dir, input_info(sel), out_format=out_format, input_paths=inputs, report=report)
