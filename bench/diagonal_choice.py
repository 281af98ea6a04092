"""Which diagonal should DELIFT's pool kernel carry? Picks under four rules on one kernel.

The pair (i, i) is never scored (the model would copy the answer), so facility location needs a
rule for how well a pick covers itself. This script reads a kernel that ``tunesift kernel``
wrote (rows and columns: the same pool), min-max scales it as ``select`` does, and picks the
budget with facility location under each rule:

* ``0``: the scaled excluded pairs as they are (a pick does not cover itself; up to session 12);
* ``1``: every record covers itself fully (sessions 13-14);
* ``row mean``: the mean of the row's scored similarities;
* ``row max``: the row's largest similarity, what ``select`` ships (``methods.delift.self_covering``).

For each it prints how many picks carry a label the selectors never read (``--label``, e.g.
``meta.corrupted`` in the demo set or ``meta.swapped`` in the evidence grid's noise pool) and, with
``--duplicates``, how many picks are near-duplicates (``meta.duplicate_of`` set), next to what a
random pick keeps on average. Run from the repository root (seconds once the kernel is cached;
prints figures, not a test)::

    .venv/bin/tunesift kernel out/demo/demo.jsonl --knn 8 --out /tmp/demo-kernel
    .venv/bin/python bench/diagonal_choice.py /tmp/demo-kernel out/demo/demo.jsonl \\
        --label meta.corrupted --duplicates --budget 0.3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tunesift.machine import banner
from tunesift.methods.delift import clipping, self_covering
from tunesift.scoring.utility import to_similarity
from tunesift.selection.submodular import facility_location


def load_kernel(folder: Path) -> tuple[sp.csr_matrix | np.ndarray, list[str]]:
    """The kernel ``tunesift kernel`` wrote (utility.npz or utility.npy) and its row ids."""
    ids = (folder / "rows.txt").read_text(encoding="utf-8").split("\n")
    ids = [i for i in ids if i]
    if (folder / "utility.npz").exists():
        return sp.load_npz(folder / "utility.npz").tocsr(), ids
    return np.load(folder / "utility.npy"), ids


def with_diagonal(sim, values: np.ndarray):
    """``sim`` (float32) with ``values`` (n,) on its diagonal."""
    if sp.issparse(sim):
        m = sim.tolil(copy=True)
        m.setdiag(values)
        return m.tocsr().astype(np.float32)
    m = np.array(sim, dtype=np.float32)
    np.fill_diagonal(m, values)
    return m


def rules(sim) -> dict:
    """The four diagonal rules on one scaled kernel (n, n)."""
    n = sim.shape[0]
    if sp.issparse(sim):
        off = sim.tocsr().copy()
        off.setdiag(0.0)
        off.eliminate_zeros()
        counts = np.maximum(np.diff(off.indptr), 1)
        mean = np.asarray(off.sum(axis=1)).ravel() / counts
    else:
        off = np.array(sim, dtype=np.float32)
        np.fill_diagonal(off, 0.0)
        mean = off.sum(axis=1) / max(n - 1, 1)
    return {"0": with_diagonal(sim, np.zeros(n)), "1": with_diagonal(sim, np.ones(n)),
            "row mean": with_diagonal(sim, mean), "row max": self_covering(sim)}


def field(row: dict, path: str):
    for part in path.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel", type=Path, help="a folder tunesift kernel wrote (pool x pool)")
    ap.add_argument("data", type=Path, help="the pool's JSONL, with the label field")
    ap.add_argument("--label", default="meta.corrupted", help="a true/false field the selectors never read")
    ap.add_argument("--duplicates", action="store_true", help="also count picks with meta.duplicate_of set")
    ap.add_argument("--budget", type=float, default=0.3)
    a = ap.parse_args()
    print(banner())
    uf, ids = load_kernel(a.kernel)
    rows = {r["id"]: r for r in map(json.loads, a.data.read_text(encoding="utf-8").splitlines()) if "id" in r}
    flag = np.array([bool(field(rows[i], a.label)) for i in ids])
    dup = np.array([field(rows[i], "meta.duplicate_of") is not None for i in ids])
    n, k = len(ids), round(a.budget * len(ids))
    sim = to_similarity(uf, clip_negative=clipping([uf], False)).astype(np.float32)  # as select scales it
    off = sim.data if sp.issparse(sim) else sim[~np.eye(n, dtype=bool)]
    print(f"{n} records, budget {k}; {a.label} true for {flag.sum()} ({flag.mean():.0%}); "
          f"scaled similarities: mean {off.mean():.3f}, std {off.std():.3f}\n")
    print(f"| diagonal | {a.label} kept | share |" + (" near-duplicates kept |" if a.duplicates else ""))
    print("|---|---|---|" + ("---|" if a.duplicates else ""))
    for name, kern in rules(sim).items():
        picks = np.asarray(facility_location(kern, k).order)
        line = f"| {name} | {flag[picks].sum()} | {flag[picks].mean():.0%} |"
        print(line + (f" {dup[picks].sum()} |" if a.duplicates else ""))
    print(f"| random (expected) | {flag.mean() * k:.1f} | {flag.mean():.0%} |"
          + (f" {dup.mean() * k:.1f} |" if a.duplicates else ""))


if __name__ == "__main__":
    main()
