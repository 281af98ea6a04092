"""Output folders written as one unit: filled in a temporary sibling, then swapped in.

A reader sees the previous complete set or the new complete set, never a mix; a failure leaves
the folder as it was; an existing folder is replaced only when tunesift wrote it and nothing in it
changed since (:func:`check_earlier_set`). Used by ``select --out`` (:mod:`tunesift.outputs`),
``tunesift kernel``, ``tunesift finetune`` and ``tunesift evaluate``.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .errors import OptionError, TunesiftError
from .io.files import input_checksum
from .signals import signals_held
from .store import umask

log = logging.getLogger(__name__)


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


def entry_digest(path: Path) -> str:
    """The SHA-256 of one entry of an output folder (a sub-folder's over every file in it,
    dot-files and caches included: :func:`tunesift.io.files.input_checksum`)."""
    return input_checksum(path, every_file=True)


def digests(folder: Path) -> dict[str, str]:
    """The SHA-256 of each entry of ``folder`` by name (:func:`entry_digest`): what a manifest's
    ``files`` lists."""
    return {p.name: entry_digest(p) for p in sorted(folder.iterdir())}


def has_marker(path: Path, marker: str) -> bool:
    """Whether the first 4 KiB of file ``path`` hold ``marker`` (how a file tunesift wrote without a
    checksum, ``report.html``, is told from a user's). An unreadable file is a one-line OptionError."""
    try:
        with open(path, "rb") as fh:
            return marker.encode() in fh.read(4096)
    except OSError as exc:
        raise OptionError(f"{path}: cannot read: {exc.strerror or exc}") from None


def check_earlier_set(out: Path, shown: str | Path, manifest: str, unlisted: dict[str, str] | None = None,
                      ours: Callable[[dict], bool] | None = None, names_checked: bool = True) -> None:
    """Refuse to replace a non-empty folder ``out`` unless tunesift wrote it and nothing in it changed
    since: ``manifest`` (``manifest.json``, ``kernel.json``, ``tunesift_train.json``) must be
    tunesift's (``ours(meta)``, default ``meta["tool"] == "tunesift"``), and every other entry must
    have the SHA-256 the manifest lists for it (``files``). A manifest from before the checksums is
    trusted by the entries' names alone, and only when the caller checked them (``names_checked``).
    ``unlisted``: entries written after the manifest (``report.html``), each recognised by a marker
    in its first 4 KiB.

    A file a user put there or edited by hand under one of tunesift's names (their own
    ``manifest.json``, a curated ``selected.jsonl``, a note inside ``selected/``) is thereby never
    deleted by the swap."""
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    unlisted = unlisted or {}
    advice = "it is replaced as a whole: choose a new or empty folder, or move it away"
    try:
        meta = json.loads((out / manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not (ours(meta) if ours else meta.get("tool") == "tunesift"):
        raise OptionError(f"output folder '{shown}' is not an earlier tunesift output ({manifest} is missing or "
                          f"was not written by tunesift); {advice}")
    files = meta.get("files")
    if not isinstance(files, dict) and not names_checked:
        raise OptionError(f"output folder '{shown}': its {manifest} lists no checksums (an older tunesift), so "
                          f"its files cannot be told from a user's; {advice}")
    for p in entries:
        if p.name == manifest:
            continue
        if p.name in unlisted:
            same = has_marker(p, unlisted[p.name])
        else:
            same = not isinstance(files, dict) or files.get(p.name) == entry_digest(p)
        if not same:
            raise OptionError(f"output folder '{shown}': {p.name} is not as tunesift wrote it (changed since, or "
                              f"put there by hand); {advice}")


#: a staging folder younger than this is never swept, whatever its owner's process id says: a
#: live run in another PID namespace (a container sharing the host name and the disk) could look dead
STALE_AFTER_S = 3600


def _owner() -> str:
    """``HOST-PID`` of this process, the host as 8 hex digits of its name's hash (a name of up to
    63 characters would push a long output name past the 255-byte file name limit)."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def staging_folder(out: Path) -> Path:
    """A new empty folder beside ``out`` (same file system, so the swap is a rename), named
    ``.NAME.staging-HOST-PID-*`` so that a later run can tell when its maker is gone
    (:func:`sweep_stale`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{_owner()}-", dir=out.parent))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (EPERM): it runs
        return True
    return True


def sweep_stale(out: Path, *, older_than_s: float = STALE_AFTER_S) -> None:
    """Remove the staging folders a killed run left beside ``out`` (SIGKILL, the OOM killer and power
    loss skip every cleanup): those made on this host by a process that no longer runs and left
    untouched for ``older_than_s``. They hold a partial new set, or, if the kill came between the
    swap and the removal of the previous set, that previous set, which the run was replacing. A
    folder of another host, of a running process, or a recent one is left alone, and so is a
    ``.NAME.old-*`` folder: it can hold the previous set, moved aside by a run killed before the
    new one took its place, and a warning names it when ``out`` is missing."""
    owner_host, lead = _owner().split("-")[0], f".{out.name}.staging-"
    now = time.time()
    for p in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if p.name.startswith(lead):
            host, _, rest = p.name[len(lead):].partition("-")
            pid = rest.partition("-")[0]
            try:
                old = now - p.lstat().st_mtime >= older_than_s
            except OSError:  # gone meanwhile
                continue
            if host == owner_host and pid.isdigit() and old and not p.is_symlink() and not _running(int(pid)):
                trash = p.with_name(f"{p.name}.removing")
                try:
                    os.replace(p, trash)  # first out of the staging name, then deleted
                except OSError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
                log.info("removed '%s', left by a run that was killed", p)
        elif p.name.startswith(f".{out.name}.old-") and (p / "set").is_dir() and not out.exists():
            log.warning("'%s' is missing, but '%s' holds a previous set that an interrupted run moved "
                        "aside: move it back if you want it", out, p / "set")


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``: what tells whether a
    folder changed between two moments without reading it."""
    found = {}
    for p in folder.rglob("*"):
        st = p.lstat()
        found[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


def retire(previous: Path, out: Path, before: dict[str, tuple[int, int]] | None) -> Path | None:
    """Delete the previous set, now at ``previous``, unless it changed since ``before`` was taken
    (a file added or edited while the new set was being written, after the check that allowed
    the replacement): then it is kept beside ``out``, a warning says where, and that place is
    returned (None: deleted)."""
    if before is None or listing(previous) == before:
        shutil.rmtree(previous, ignore_errors=True)
        return None
    keep = Path(tempfile.mkdtemp(prefix=f"{out.name}.previous-", dir=out.parent))
    os.replace(previous, keep / out.name)
    log.warning("'%s' changed while the new set was written: the previous folder is kept at '%s'",
                out, keep / out.name)
    return keep / out.name


def folder_mode(out: Path) -> int:
    """The permissions the new set gets: the previous ``out``'s (a folder the user made private stays
    private), else what a plain ``mkdir`` would give (the umask, and the parent's setgid bit in a
    shared group folder)."""
    if out.is_dir():
        return stat.S_IMODE(out.stat().st_mode)
    return (0o777 & ~umask()) | (out.parent.stat().st_mode & stat.S_ISGID)


def _keep_previous(previous: Path, out: Path, exc: BaseException | None = None) -> Path:
    """Move the previous set (if still there) beside ``out`` as ``NAME.previous-PID``, saying so.
    ``exc``: the interrupt in flight, given ``swapped = (out, kept at)`` so the CLI's one line says
    that the new set is in place and where the previous one went (not "outputs unchanged")."""
    keep = out.parent / f"{out.name}.previous-{os.getpid()}"
    if previous.exists():
        os.replace(previous, keep)
        log.warning("the previous '%s' is kept at '%s'", out, keep)
        if exc is not None:
            exc.swapped = (out, keep)
    return keep


def _retire_or_keep(previous: Path, out: Path, before: dict[str, tuple[int, int]] | None) -> None:
    """:func:`retire` once the new set is in place; if that fails (a full disk, an interrupt), the
    previous set is kept beside ``out`` (never deleted with the staging folder) and the error says so."""
    kept = None
    try:
        with signals_held():  # the removal runs whole: an interrupt waits for it, then says what it found
            kept = retire(previous, out, before)
    except BaseException as exc:
        keep = _keep_previous(previous, out, exc)
        if isinstance(exc, OSError):
            raise TunesiftError(f"'{out}' holds the new set, but the previous one could not be removed "
                                f"({exc.strerror or exc}); it is kept at '{keep}'") from None
        if not hasattr(exc, "swapped"):  # the previous set is gone, or where retire kept it
            exc.swapped = (out, kept)
        raise


def swap_in(tmp: Path, out: Path, before: dict[str, tuple[int, int]] | None = None,
            consumed: list | None = None) -> None:
    """Make the filled folder ``tmp`` the folder ``out``: files synced first, the folder given
    :func:`folder_mode`, the previous ``out`` (if any) exchanged out and removed (:func:`retire`:
    kept when it changed since ``before``). Where no atomic exchange exists the previous set is
    moved aside first and moved back if the new one cannot take its place (an interrupt included).
    ``consumed`` (a list) gets True once ``tmp`` no longer holds the staging set: the caller must not
    delete it then."""
    for p in tmp.rglob("*"):  # durable before the swap
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    os.chmod(tmp, folder_mode(out))
    consumed = [] if consumed is None else consumed
    if not out.exists():
        with signals_held():
            os.replace(tmp, out)
            consumed.append(True)
        return
    swapped = False
    try:
        with signals_held():  # an interrupt waits until tmp's contents are accounted for
            swapped = exchange(tmp, out)  # tmp now holds the previous set
            if swapped:
                consumed.append(True)
    except BaseException as exc:  # interrupted right after the swap: the new set is in, the previous kept
        if swapped:
            _keep_previous(tmp, out, exc)
        raise
    if swapped:
        _retire_or_keep(tmp, out, before)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    moved = False
    try:
        with signals_held():
            try:
                os.replace(out, old / "set")
            except OSError:
                old.rmdir()
                raise
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "set", out)  # the previous set back in place: nothing changed
                old.rmdir()
                raise
            moved = True
            consumed.append(True)
    except BaseException as exc:  # interrupted right after the swap: the new set is in, the previous kept
        if moved:
            _keep_previous(old / "set", out, exc)
            shutil.rmtree(old, ignore_errors=True)
        raise
    _retire_or_keep(old / "set", out, before)
    shutil.rmtree(old, ignore_errors=True)


def publish(out: Path, fill: Callable[[Path], None], what: str, shown: str | Path) -> None:
    """Fill a staging folder with ``fill(tmp)`` and swap it in as ``out``. On any failure nothing of
    ``out`` changes and the staging folder (and any parent folder made for it) is removed; an OS
    error becomes a one-line ``TunesiftError`` naming ``what`` (e.g. "the output") and the folder
    as the user gave it (``shown``)."""
    if out.is_symlink():  # the folder it points to is replaced, not the link by a folder beside it
        out = out.resolve()
    if out.exists() and not out.is_dir():  # a user's file is never swapped for a folder (the API has no CLI check)
        raise TunesiftError(f"cannot write {what} to '{shown}': it exists and is not a folder; "
                            "nothing was changed there")
    made = [p for p in out.parents if not p.exists()]  # folders the staging creates, deepest first
    tmp = None
    consumed: list = []
    try:
        before = listing(out) if out.is_dir() else None  # the set the caller's checks allowed to replace
        tmp = staging_folder(out)
        fill(tmp)
        swap_in(tmp, out, before, consumed)
        tmp = made = None
    except OSError as exc:
        raise TunesiftError(f"cannot write {what} to '{shown}': {exc.strerror or exc}; "
                            "nothing was changed there") from None
    finally:
        if tmp is not None and not consumed:  # failed or interrupted: no staging folder left
            shutil.rmtree(tmp, ignore_errors=True)
        for p in made or ():  # nor the empty parents it made
            try:
                p.rmdir()
            except OSError:
                break
