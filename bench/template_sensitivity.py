"""How much does DELIFT's utility kernel depend on the prompt format? (issue 14, part 3)

Scores the same short records' n x n utility kernel (diagonal excluded, rmse distance) under
``--template paper`` (the reference code's two wordings), ``chat`` (the model's chat template) and
``plain``, then compares every pair of templates on the off-diagonal UF:

* Pearson r of all off-diagonal entries;
* row-centred r: each row minus its mean first, so a constant shift per target (the reference's
  different instruction sentence between the arms) does not count, only the ranking of examples
  within a row (what facility location reads);
* FL pick overlap: greedy facility location at budget k on each template's min-max similarity.

Run from the repository root (prints figures; not a test; SmolLM2-135M on ~10 records takes about a
minute on 2 CPU cores)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/template_sensitivity.py --n 10 --draws 0,1
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from tunesift.io.records import read_records  # noqa: E402
from tunesift.machine import banner  # noqa: E402
from tunesift.methods.delift import selection_kernel  # noqa: E402
from tunesift.models import load_lm  # noqa: E402
from tunesift.render import renderer_for  # noqa: E402
from tunesift.scoring.utility import utility_kernel  # noqa: E402
from tunesift.selection.submodular import facility_location  # noqa: E402

DATA = "../shared/datasets/alpaca_random_9k/random_9k.json"


def short_records(path: str, n: int, seed: int, max_chars: int) -> list:
    """A seeded sample of ``n`` records whose prompt + response is at most ``max_chars`` long."""
    recs = [r for r in read_records(path, on_error="skip")
            if r.error is None and len(r.prompt) + len(r.response) <= max_chars]
    pick = np.sort(np.random.default_rng(seed).choice(len(recs), n, replace=False))
    return [recs[i] for i in pick]


def off_diagonal(uf: np.ndarray) -> np.ndarray:
    return uf[~np.eye(len(uf), dtype=bool)]


def row_centred(uf: np.ndarray) -> np.ndarray:
    return off_diagonal(uf - np.nanmean(uf, axis=1, keepdims=True))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--draws", default="0,1", help="comma list of sampling seeds")
    ap.add_argument("--budget", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=400, help="only records this short (prompt + response)")
    ap.add_argument("--templates", default="paper,chat,plain")
    ap.add_argument("--model", default="default")
    a = ap.parse_args()
    print(banner(), flush=True)
    lm = load_lm(a.model, device="cpu", dtype="float32")
    templates = a.templates.split(",")
    print(f"model {lm.source} ({lm.dtype}), data {a.data}, n {a.n}, budget {a.budget}, rmse distance, "
          f"diagonal excluded\n")
    rows = []
    for seed in (int(s) for s in a.draws.split(",")):
        recs = short_records(a.data, a.n, seed, a.max_chars)
        uf, picks = {}, {}
        for t in templates:
            t0 = time.perf_counter()
            uf[t] = utility_kernel(lm, renderer_for(lm, t, 2048), recs, recs, cache_dir=False).values("rmse")
            picks[t] = set(facility_location(selection_kernel(uf[t]), a.budget).order.tolist())
            off = off_diagonal(uf[t])
            print(f"draw {seed} {t:>5}: off-diagonal UF mean {off.mean():+.4f} std {off.std():.4f}, "
                  f"FL picks {sorted(picks[t])}, {time.perf_counter() - t0:.1f} s", flush=True)
        for x, y in itertools.combinations(templates, 2):
            rows.append((seed, f"{x} vs {y}", pearson(off_diagonal(uf[x]), off_diagonal(uf[y])),
                         pearson(row_centred(uf[x]), row_centred(uf[y])), len(picks[x] & picks[y])))
    print(f"\n| draw | templates | Pearson r | row-centred r | FL picks shared (of {a.budget}) |")
    print("|---|---|---|---|---|")
    for seed, pair, r, rc, shared in rows:
        print(f"| {seed} | {pair} | {r:.2f} | {rc:.2f} | {shared} |")


if __name__ == "__main__":
    main()
