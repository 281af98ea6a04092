"""Atomic writes and the content-addressed score cache.

Expensive results (DONOD scores, DELIFT kernel blocks, embeddings) are stored under
``<cache_dir>/<kind>/<key>/`` where ``key`` is a hash of everything that determines them: the
records' token ids, the model fingerprint, the template, and the method's parameters. A changed
input can therefore never reuse a stale score, and an interrupted run finds the blocks it already
finished and computes only the rest. Every file is written to a temporary name in the same folder
and renamed into place, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def content_key(*parts: object) -> str:
    """A 24-hex sha256 of JSON-serialisable parts (lists of ints, strings, dicts, numbers)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, separators=(",", ":"), default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def default_cache_dir() -> Path:
    """``$TUNESIFT_CACHE`` or ``<TUNESIFT_HOME or ~/.cache/tunesift>/scores``."""
    if os.environ.get("TUNESIFT_CACHE"):
        return Path(os.environ["TUNESIFT_CACHE"])
    home = Path(os.environ.get("TUNESIFT_HOME", Path.home() / ".cache" / "tunesift"))
    return home / "scores"


class ArrayStore:
    """Named numpy arrays under one cache folder: ``store.get(name)`` / ``store.put(name, array)``.

    Writes are atomic, so a block is either complete on disk or absent.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.npy"

    def has(self, name: str) -> bool:
        return self._path(name).exists()

    def get(self, name: str) -> np.ndarray | None:
        p = self._path(name)
        if not p.exists():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError):  # a corrupt file (disk full mid-write elsewhere): recompute
            return None

    def remove(self, name: str) -> None:
        """Delete ``name`` if it is stored."""
        self._path(name).unlink(missing_ok=True)

    def put(self, name: str, array: np.ndarray) -> None:
        with atomic_path(self._path(name)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
