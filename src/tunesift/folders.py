"""Output folders written as one unit: filled in a temporary sibling, then swapped in.

A reader sees the previous complete set or the new complete set, never a mix; a failure leaves
the folder as it was. Used by ``select --out`` (:mod:`tunesift.outputs`) and ``tunesift kernel``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import TunesiftError


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_folder(out: Path) -> Path:
    """A new empty folder beside ``out`` (same file system, so the swap is a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def swap_in(tmp: Path, out: Path) -> None:
    """Make the filled folder ``tmp`` the folder ``out``: files synced first, the folder given the
    user's default permissions, the previous ``out`` (if any) exchanged out and removed."""
    for p in tmp.rglob("*"):  # durable before the swap
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    os.chmod(tmp, 0o777 & ~umask())
    if out.exists():
        if exchange(tmp, out):  # tmp now holds the previous set
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "set")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def publish(out: Path, fill: Callable[[Path], None], what: str, shown: str | Path) -> None:
    """Fill a staging folder with ``fill(tmp)`` and swap it in as ``out``. On an OS error nothing
    of ``out`` changes and the staging folder is removed: one-line ``TunesiftError`` naming
    ``what`` (e.g. "the output") and the folder as the user gave it (``shown``)."""
    tmp = None
    try:
        tmp = staging_folder(out)
        fill(tmp)
        swap_in(tmp, out)
        tmp = None
    except OSError as exc:
        raise TunesiftError(f"cannot write {what} to '{shown}': {exc.strerror or exc}; "
                            "nothing was changed there") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
