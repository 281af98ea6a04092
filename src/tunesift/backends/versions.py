"""What a Ray worker must share with its driver to compute the driver's blocks: tunesift's own
source and the versions of the libraries that tokenise and compute.

Kept here, below :mod:`tunesift.bench` (whose ``code_fingerprint`` hashes the source the same
way), so that the backends never import the benchmark layer.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

#: libraries whose version changes tokens or scores
LIBRARIES = ("transformers", "tokenizers", "torch")


@functools.cache
def source_digest() -> str:
    """The first 16 hex digits of the SHA-256 of tunesift's own source files (names and bytes),
    the hashing of ``tunesift.bench.code_fingerprint``: which code a process runs, where the
    version number does not change between commits."""
    root = Path(__file__).parent.parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _version(name: str) -> str:
    """``name``'s release without its local part: torch ``2.5.1+cu124`` on a GPU node and
    ``2.5.1+cpu`` on a CPU driver are the same code."""
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return "missing"


@functools.cache
def stack_versions() -> dict[str, str]:
    """``{"tunesift source": digest, "transformers": ..., "tokenizers": ..., "torch": ...}`` of
    this process."""
    return {"tunesift source": source_digest(), **{n: _version(n) for n in LIBRARIES}}


def version_mismatch(worker: dict, driver: dict) -> str | None:
    """``"NAME THEIRS, the driver's OURS"`` for the first entry of ``driver`` that ``worker``
    (its :func:`stack_versions`; ``{}`` from a worker that reports none) does not share, or None."""
    for name, ours in driver.items():
        theirs = worker.get(name, "unknown")
        if theirs != ours:
            return f"{name} {theirs}, the driver's {ours}"
    return None


def version_error(worker: object, why: str) -> str:
    """The one line for a worker on other code (``why``: :func:`version_mismatch`'s answer), as the
    driver reports it at start-up and a restarted worker answers its tasks."""
    return (f"Ray worker {worker} runs {why}; install the same tunesift, transformers, tokenizers and torch "
            "on every node")
