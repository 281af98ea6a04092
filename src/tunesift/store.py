"""Atomic writes and the content-addressed score cache.

Expensive results (DONOD scores, DELIFT kernel blocks, embeddings) are stored under
``<cache_dir>/<kind>/<key>/`` where ``key`` is a hash of everything that determines them: the
records' token ids, the model fingerprint, the template, and the method's parameters. A changed
input can therefore never reuse a stale score, and an interrupted run finds the blocks it already
finished and computes only the rest. Every file is written to a temporary name in the same folder
and renamed into place, so a crash leaves either the old file or the new one, never half of one.

Integrity: every stored array carries its own checksum. A block file is the ``.npy`` bytes
followed by a 40-byte trailer, ``b"TSSHA256"`` + the SHA-256 of the ``.npy`` bytes (``np.load``
ignores the trailer). On read the checksum is verified; a block that is missing its trailer, fails
the check, cannot be parsed, or holds a non-finite value where the kind forbids one is never used:
it is logged as a warning and recomputed. Every failure to use the cache folder itself (a file
where the folder should be, no permission, a full disk, a folder where a block should be) is a
:class:`~tunesift.errors.CacheError`: one line naming the path and the reason.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import CacheError

log = logging.getLogger("tunesift")

#: Marks the checksum trailer of a stored array: MAGIC + sha256(npy bytes).
MAGIC = b"TSSHA256"


def _canonical(part: object) -> bytes:
    """A part as the cache keys hash it: compact JSON, keys sorted, anything else by ``str``."""
    return json.dumps(part, sort_keys=True, separators=(",", ":"), default=str).encode()


def content_key(*parts: object) -> str:
    """A 24-hex sha256 of JSON-serialisable parts (lists of ints, strings, dicts, numbers)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(_canonical(p))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def content_spans(items: Sequence, size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``items`` in order: cache blocks of ``size`` items on
    average whose boundaries follow the items' content, not their positions. A block ends after
    an item whose content hash is 0 mod ``size // 2`` once it holds ``size // 2`` items, and at
    ``2 * size`` items in any case; so inserting or removing an item changes the block it falls
    in (and the cut after it, at most to the next content boundary), never every later block as
    fixed slices did: a rerun on an edited input reads the other blocks from the cache.

    ``items``: one JSON-serialisable value per item (its token ids, say); the hash is sha256, the
    same in every process. Blocks are the unit of caching only: the scores never depend on them."""
    if size < 2:
        return [(i, i + 1) for i in range(len(items))]
    low, spans, start = max(2, size // 2), [], 0  # low 1 would end a block after every item
    for i, item in enumerate(items):
        n = i + 1 - start
        if n >= 2 * size or (n >= low and int.from_bytes(
                hashlib.sha256(_canonical(item)).digest()[:8], "big") % low == 0):
            spans.append((start, i + 1))
            start = i + 1
    if start < len(items):
        spans.append((start, len(items)))
    return spans


@functools.cache
def umask() -> int:
    """The process's file-creation mask, read once (reading it sets it to 0 for a moment, which
    other threads creating files would see)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.
    The file gets the permissions a plain write would (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:  # on disk before the name: a power cut leaves the old file or the new
            os.fsync(fh.fileno())
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


def cache_home() -> Path:
    """Root folder of tunesift's caches: ``$TUNESIFT_HOME`` or ``~/.cache/tunesift`` (an empty
    variable counts as unset; the home folder is looked up only then, so a container user with no
    home still runs with ``TUNESIFT_HOME`` set)."""
    if os.environ.get("TUNESIFT_HOME"):
        return Path(os.environ["TUNESIFT_HOME"])
    return Path.home() / ".cache" / "tunesift"


def default_cache_dir() -> Path:
    """``$TUNESIFT_CACHE`` or ``<cache_home()>/scores``."""
    if os.environ.get("TUNESIFT_CACHE"):
        return Path(os.environ["TUNESIFT_CACHE"])
    return cache_home() / "scores"


def cache_failure(path: str | Path, exc: OSError, doing: str = "write") -> CacheError:
    """One line for a cache folder that cannot be used (the OS reason, the path, what to do)."""
    why = exc.strerror or str(exc)
    return CacheError(f"score cache: cannot {doing} '{path}': {why}; free space, fix the permissions "
                      "or point --cache-dir at another folder")


def check_cache_dir(root: str | Path) -> Path:
    """Create the cache folder and probe-write a file in it (before any scoring), or raise
    :class:`~tunesift.errors.CacheError` in one line."""
    root = Path(root)
    try:  # exists() raises too (a name too long, a parent the user cannot enter)
        if root.exists() and not root.is_dir():
            raise CacheError(f"score cache: '{root}' exists and is not a folder; point --cache-dir at a folder")
        root.mkdir(parents=True, exist_ok=True)
        probe_write(root)
    except OSError as exc:
        raise cache_failure(root, exc) from None
    return root


def pack_array(array: np.ndarray) -> bytes:
    """``.npy`` bytes of ``array`` followed by the checksum trailer (MAGIC + sha256)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    body = buf.getvalue()
    return body + MAGIC + hashlib.sha256(body).digest()


def unpack_array(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """(array, None) when ``data`` is a block whose checksum holds, else (None, why)."""
    tail = len(MAGIC) + 32
    if len(data) < tail or data[-tail:-32] != MAGIC:
        return None, "it has no checksum (written by another version, or altered)"
    body = data[:-tail]
    if hashlib.sha256(body).digest() != data[-32:]:
        return None, "its checksum does not match its contents (altered or damaged)"
    try:
        return np.load(io.BytesIO(body), allow_pickle=False), None
    except (ValueError, OSError, EOFError) as exc:
        return None, f"it cannot be parsed ({exc})"


#: open :func:`counting_cache` tallies: ``[started (epoch s), {"cached": n, "written": n}]``
_TALLIES: list[list] = []


@contextmanager
def counting_cache() -> Iterator[dict]:
    """Count, while open, the score-cache blocks read that were there before it opened (``cached``:
    an earlier run computed them) and the blocks written (``written``). Yields the dict, filled
    on exit. A bench cell uses it to tell a cold selection from one that resumed."""
    tally = [time.time(), {"cached": 0, "written": 0}]
    _TALLIES.append(tally)
    try:
        yield tally[1]
    finally:
        _TALLIES.remove(tally)


def _count(kind: str, path: Path | None = None) -> None:
    for started, counts in _TALLIES:
        if kind == "written" or path.stat().st_mtime < started:
            counts[kind] += 1


STALE_TEMP_S = 3600  # a block's temporary file lives for the seconds of one write and fsync
_swept: set[Path] = set()


def sweep_stale_temps(folder: Path) -> None:
    """Remove the temporary files (:func:`atomic_path`'s ``.<name>.*.tmp``) a killed run left in
    ``folder``, once per process and folder, when older than :data:`STALE_TEMP_S` (a concurrent
    writer's are seconds old). A dense kernel block's is ~100 MB at 100,000 targets."""
    if folder in _swept:
        return
    _swept.add(folder)
    now = time.time()
    try:
        for p in folder.glob(".*.tmp"):
            try:
                if now - p.stat().st_mtime > STALE_TEMP_S:
                    p.unlink()
            except OSError:  # another process removed it, or it is not ours to remove: leave it
                pass
    except OSError:  # no folder yet, or unreadable: the store's reads and writes report that
        pass


class ArrayStore:
    """Named numpy arrays under one cache folder: ``store.get(name)`` / ``store.put(name, array)``.

    Writes are atomic, so a block is either complete on disk or absent; every block carries a
    checksum that :meth:`get` verifies (a bad block is reported and read as missing, so the
    caller recomputes it). ``finite=True``: a block holding NaN or infinity is bad too (for
    kinds whose values are always finite).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        sweep_stale_temps(self.root)

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.npy"

    def has(self, name: str) -> bool:
        return self._path(name).exists()

    def get(self, name: str, *, finite: bool = False) -> np.ndarray | None:
        """The stored array, or None when it is missing or fails its checks (then it is recomputed)."""
        p = self._path(name)
        try:
            if not p.exists():
                return None
            if p.is_dir():
                raise IsADirectoryError(21, "a folder is where a cache block should be", str(p))
            data = p.read_bytes()
        except OSError as exc:
            raise cache_failure(p, exc, "read") from None
        arr, why = unpack_array(data)
        if arr is None:
            log.warning("score cache: ignoring block %s: %s; recomputing it", p, why)
            return None
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            log.warning("score cache: ignoring block %s: it holds NaN or infinite values; recomputing it", p)
            return None
        if _TALLIES:
            _count("cached", p)
        return arr

    def remove(self, name: str) -> None:
        """Delete ``name`` if it is stored."""
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise cache_failure(self._path(name), exc, "remove") from None

    def put(self, name: str, array: np.ndarray) -> None:
        p = self._path(name)
        try:
            if p.is_dir():
                raise IsADirectoryError(21, "a folder is where a cache block should be", str(p))
            write_bytes(p, pack_array(array))
        except OSError as exc:
            raise cache_failure(p, exc) from None
        if _TALLIES:
            _count("written")


def probe_write(folder: Path) -> None:
    """Write, sync and delete a small file in ``folder`` (a real write: ``os.access`` says yes to
    root everywhere, even on a full disk or under /proc); raises the OSError when that fails."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".tunesift-probe-")
    try:
        os.write(fd, b"tunesift write probe\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)
