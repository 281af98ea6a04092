"""Write a selection: ``selected.jsonl``, ``scores.parquet`` and ``manifest.json``.

All three files are first written into a temporary folder beside the output folder and only
then moved into place, so a failed or killed run leaves no partial output: either the previous
files or the complete new set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OptionError
from .pipeline import Selection, options_dict, versions

FILES = ("selected.jsonl", "scores.parquet", "manifest.json")


def check_writable(out_dir: str | Path) -> Path:
    """Fail early (before any scoring) when the output folder cannot be created or written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OptionError(f"output '{out}' exists and is not a folder")
    parent = out if out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"output folder '{out}' is not writable")
    return out


def manifest(sel: Selection, inputs: dict[str, dict]) -> dict:
    """What was run, on what, with which model and versions, what came out, and how long it took."""
    n = len(sel.records)
    kept = int(sel.kept.sum())
    return {
        "tool": "tunesift",
        "method": sel.method,
        "options": options_dict(sel.options),
        "budget": sel.budget,
        "model": sel.model,
        "inputs": inputs,
        "counts": {"input": n, "kept": kept, "dropped": n - kept, "errors": int(sel.extra.get("errors", 0))},
        "objective": sel.extra.get("objective"),
        "versions": versions(),
        "timings": {k: round(v, 3) for k, v in sel.timings.items()},
    }


def write_selection(sel: Selection, out_dir: str | Path, inputs: dict[str, dict] | None = None) -> Path:
    """Write the three output files into ``out_dir`` atomically; returns the folder."""
    import pyarrow.parquet as pq

    out = check_writable(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with open(tmp / "selected.jsonl", "w", encoding="utf-8") as fh:
            for row in sel.subset:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        pq.write_table(sel.table(), tmp / "scores.parquet")
        (tmp / "manifest.json").write_text(json.dumps(manifest(sel, inputs or {}), indent=2, default=str) + "\n",
                                           encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        stale = out / "report.html"  # a report of an earlier selection must not outlive it
        if stale.exists():
            stale.unlink()
        for name in FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
