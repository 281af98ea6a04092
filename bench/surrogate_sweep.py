"""Does the learned DELIFT utility earn its place? The label-budget sweep of issue 14.

Reference: the exact kNN utility kernel (k = --k, default 32) of a pool, computed once through the
library with a cache (``tunesift select --method delift --knn 32 --cache-dir DIR`` fills it; this
script reads it back with the same options and computes only what is missing). Every labelled
kernel below takes its labels from that exact kernel: the values the scorer would compute for those
pairs (each pair's value does not depend on which other pairs are scored).

A pick A is judged by the share of the random-to-exact gap it closes on the exact kernel's FL
objective, ``(f(A) - f(random)) / (f(A_exact) - f(random))``, random averaged over 200 draws.
Rivals at each label fraction (share of the k candidate pairs scored exactly):

- ``learned``: what ``--utility learned`` ships (``--labels nearest``): each target's nearest
  candidates labelled round by round (``nearest_pairs``), the additive surrogate with offset,
  helpfulness and features (``surrogate.DEFAULT_PARTS``) filling the rest;
- ``rows``: ``--labels rows``, whole candidate rows of sampled targets (``row_pairs``), fidelity
  on whole held-out rows;
- ablations (on the shipped nearest labels): ``free effects`` (offset + helpfulness, no features), ``+ pair``
  (plus the cosine pair term); ``uniform labels`` (pairs drawn uniformly, NN-CIFT's sampling,
  ``uniform_pairs``), ``balanced labels`` (labels spread over the examples first, ``balanced_pairs``);
- ``nearest``: the same exact pairs as ``learned`` (each target's nearest neighbours: a kNN
  kernel with k' = fraction * k), no prediction;
- ``constant``: the same labels, every other candidate pair filled with the labels' mean;
- ``delift-se``: the cosine kernel on the same candidate pattern (no labels at all);
- ``pick-aware`` (with ``--pick-aware``): 70% of the labels nearest, a tentative pick on their
  fill, the other 30% on the pairs that pick is decided on (:func:`pick_aware_labels`), refit.

    tunesift select ../shared/datasets/alpaca_random_9k/random_9k.json --limit 1000 --method delift \
        --knn 10 --budget 100 --dtype bfloat16 --cache-dir DIR --out OUT     # the exact kernel, cached
    python bench/surrogate_sweep.py --data ../shared/datasets/alpaca_random_9k/random_9k.json --limit 1000 \
        --cache-dir DIR --dtype bfloat16 --k 10

``--kernel FOLDER`` reads the reference from what ``tunesift kernel --knn K`` wrote instead (its
pattern is the candidate pattern, its options the model's, max_length and template): nothing is
scored, so a kernel whose cache keys another run made (the evidence grid's) is reused as it is::

    tunesift kernel bench/work/evidence/data/gsm8k_noisy.jsonl --knn 16 --max-length 1024 \
        --cache-dir bench/work/evidence/cache/noise/delift --out /tmp/noise-kernel
    python bench/surrogate_sweep.py --data bench/work/evidence/data/gsm8k_noisy.jsonl \
        --kernel /tmp/noise-kernel --cache-dir bench/work/evidence/cache/noise/delift --k 16
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp

from tunesift.machine import banner
from tunesift.methods.delift import selection_kernel
from tunesift.methods.utility_kernels import candidate_pattern
from tunesift.scoring import embedding as emb
from tunesift.scoring import surrogate as sg
from tunesift.scoring.utility import utility_kernel
from tunesift.selection.objectives import fl_assignment
from tunesift.selection.submodular import facility_location

FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)


def objective(S, picks) -> float:
    return float(fl_assignment(S, np.asarray(picks))[1].sum())


def pick(uf, budget: int) -> np.ndarray:
    return facility_location(selection_kernel(uf), budget).order  # as select picks (its diagonal rule)


def exact_on(uf: sp.csr_matrix, lab: sp.csr_matrix) -> sp.csr_matrix:
    """The exact kernel restricted to the labelled pattern (values kept, zeros included)."""
    lab = lab.tocsr().astype(bool)
    lab.sort_indices()
    c = lab.tocoo()
    vals = np.asarray(uf[c.row, c.col]).ravel()
    return sp.csr_matrix((vals, lab.indices.copy(), lab.indptr.copy()), shape=uf.shape)


def pick_aware_labels(cand: sp.csr_matrix, lab: sp.csr_matrix, filled, picks: np.ndarray, m_add: int) -> sp.csr_matrix:
    """``lab`` plus up to ``m_add`` more labels where a tentative pick ``picks`` (made on the
    ``filled`` kernel) is decided: the unlabelled candidate pairs (i, j) with j in the pick, by
    rounds over the rows, each row's in the order of their predicted value (its likely facility
    location argmax first). The ``--pick-aware`` rival: labels spent on the pick's own columns."""
    n = cand.shape[0]
    inpick = np.zeros(cand.shape[1], dtype=bool)
    inpick[picks] = True
    C, F, L = cand.tocsr(), sp.csr_matrix(filled), lab.tocsr().astype(bool)
    per_row = []
    for i in range(n):
        cols = C.indices[C.indptr[i]:C.indptr[i + 1]]
        cols = np.setdiff1d(cols[inpick[cols]], L.indices[L.indptr[i]:L.indptr[i + 1]])
        vals = np.asarray(F[i, cols].todense()).ravel() if len(cols) else np.zeros(0)
        per_row.append(cols[np.argsort(-vals, kind="stable")])
    rows, cols = [], []
    for r in range(max(map(len, per_row), default=0)):
        for i in range(n):
            if r < len(per_row[i]) and len(rows) < m_add:
                rows.append(i)
                cols.append(per_row[i][r])
    extra = sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=cand.shape)
    return (L + extra).astype(bool).tocsr()


def read_kernel(folder: str, recs) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix]:
    """``(uf, n_tokens, pattern)`` from a ``tunesift kernel --knn K`` folder: UF (n, n) CSR on its
    kNN pattern, each target's scored response tokens (n,) as the kernel's renderer counts them,
    and the pattern itself. The folder's rows must be ``recs``, in order."""
    from pathlib import Path

    from tunesift.models import load_lm
    from tunesift.render import renderer_for

    f = Path(folder)
    about = json.loads((f / "kernel.json").read_text(encoding="utf-8"))
    ids = [i for i in (f / "rows.txt").read_text(encoding="utf-8").split("\n") if i]
    if ids != [r.id for r in recs] or not about.get("sparse"):
        raise SystemExit(f"{folder}: not a sparse kernel over these records in this order")
    opts = about["options"]
    # the reference must be exact: a learned kernel's labels would be its own predictions
    if opts.get("utility", "exact") != "exact" or (f / "labelled.npz").exists() or opts.get("keep_diagonal"):
        raise SystemExit(f"{folder}: not an exact kernel without its diagonal (utility {opts.get('utility')}, "
                         f"keep_diagonal {opts.get('keep_diagonal')})")
    if (f / "cols.txt").read_text(encoding="utf-8") != (f / "rows.txt").read_text(encoding="utf-8"):
        raise SystemExit(f"{folder}: its columns are not the pool (another --examples set)")
    uf = sp.load_npz(f / "utility.npz").tocsr()
    lm = load_lm(opts["model"], device="cpu", dtype=about["model"]["dtype"])
    renderer = renderer_for(lm, about.get("template") or opts["template"], opts["max_length"])
    n_tokens = np.array([len(renderer.query(r).response) for r in recs], dtype=np.int64)
    print(f"exact kNN-{opts['knn']} kernel read from {folder}: {uf.shape[0]} x {uf.shape[1]}, {uf.nnz} pairs "
          f"({about['model']['dtype']}, max_length {opts['max_length']}, template {about.get('template')})")
    return uf, n_tokens, uf.astype(bool)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=None, help="the first N records")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default="default")
    ap.add_argument("--budgets", default="0.1,0.3")
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    ap.add_argument("--kernel", default=None, help="a `tunesift kernel --knn K` folder: the reference, read as is")
    ap.add_argument("--pick-aware", action="store_true",
                    help="also the pick-aware rival: 70%% of the labels nearest, a tentative pick on their fill, "
                         "the rest on the pairs that pick is decided on (pick_aware_labels)")
    a = ap.parse_args()
    print(banner())
    from tunesift.io.records import read_records
    from tunesift.models import load_lm
    from tunesift.render import renderer_for

    recs = read_records(a.data, None, limit=a.limit, on_error="skip")
    recs = [r for r in recs if not r.error]
    n = len(recs)
    e = emb.embed_records(recs, cache_dir=a.cache_dir)
    if a.kernel:
        uf, n_tokens, pattern = read_kernel(a.kernel, recs)
    else:
        pattern = emb.ann_knn_pattern(e, e, a.k, exclude_self=True, method="auto", seed=0)
        lm = load_lm(a.model, device="cpu", dtype=a.dtype)
        t = time.perf_counter()
        kern = utility_kernel(lm, renderer_for(lm, "auto", 2048), recs, recs, pairs=pattern, cache_dir=a.cache_dir)
        print(f"exact kNN-{a.k} kernel: {n} x {n}, {pattern.nnz} pairs ({kern.info['blocks_loaded']} blocks from "
              f"the cache, {kern.info['blocks_computed']} computed) in {time.perf_counter() - t:.0f} s")
        uf, n_tokens = kern.values("rmse").tocsr(), kern.n_tokens
    S = selection_kernel(uf)  # the objective select maximises
    feats, _ = sg.shipped_features(e, n_tokens)  # the features `--utility learned` uses
    cos = sp.csr_matrix(emb.cosine_similarity_kernel(e, e, pattern))
    # DELIFT (SE) as `select --method delift-se --knn K` builds it: its kNN pattern keeps each
    # record's own pair (every record covers itself at 1.0), unlike the DELIFT kernel's
    se = sp.csr_matrix(emb.cosine_similarity_kernel(e, e, emb.ann_knn_pattern(e, e, a.k, method="auto", seed=0)))
    cand = candidate_pattern(n, n, pattern, exclude_diagonal=True)

    def pair_fn(rows, cols):
        return sg.pair_cosine(e, e, rows, cols)[:, None]

    rows = []
    for b in (float(x) for x in a.budgets.split(",")):
        budget = int(round(b * n))
        a_exact = pick(uf, budget)
        f_exact = objective(S, a_exact)
        rng = np.random.default_rng(0)
        f_rand = float(np.mean([objective(S, rng.choice(n, budget, replace=False)) for _ in range(200)]))
        f_se = objective(S, facility_location(se.astype(np.float32), budget).order)

        def gap(picks, f_rand=f_rand, f_exact=f_exact) -> float:
            return (objective(S, picks) - f_rand) / (f_exact - f_rand)

        print(f"\nbudget {budget} of {n}: f(exact) {f_exact:.2f}, f(random) {f_rand:.2f}; "
              f"delift-se closes {(f_se - f_rand) / (f_exact - f_rand):.3f}")
        for frac in (float(x) for x in a.fractions.split(",")):
            m = int(round(frac * cand.nnz))
            res: dict[str, list] = {}
            fid = []
            for seed in range(a.seeds):
                whole = exact_on(uf, sg.row_pairs(cand, m, seed=seed))
                near = exact_on(uf, sg.nearest_pairs(cand, cos, m, seed=seed))
                uni = exact_on(uf, sg.uniform_pairs(cand, m, seed=seed))
                bal = exact_on(uf, sg.balanced_pairs(cand, m, seed=seed))
                variants = {  # "learned": what --utility learned ships (nearest labels, DEFAULT_PARTS)
                    "learned": dict(parts=sg.DEFAULT_PARTS, lab=near),
                    "rows": dict(parts=sg.DEFAULT_PARTS, lab=whole),
                    "free effects": dict(parts=("offset", "helpfulness"), lab=near),
                    "+ pair": dict(parts=sg.PARTS, lab=near),
                    "uniform labels": dict(parts=sg.DEFAULT_PARTS, lab=uni),
                    "balanced labels": dict(parts=sg.DEFAULT_PARTS, lab=bal),
                    "constant": dict(parts=(), lab=near),
                }
                for name, v in variants.items():
                    filled = sg.fill_kernel(cand, v["lab"], row_feats=feats, col_feats=feats, pair_fn=pair_fn,
                                            parts=v["parts"], holdout_rows=v["lab"] is whole, seed=seed)
                    res.setdefault(name, []).append(gap(pick(filled.values, budget)))
                    if name == "learned":
                        fid.append(filled.report)
                res.setdefault("nearest", []).append(gap(pick(near, budget)))
                if a.pick_aware:
                    first = sg.nearest_pairs(cand, cos, int(round(0.7 * m)), seed=seed)
                    tentative = sg.fill_kernel(cand, exact_on(uf, first), row_feats=feats, col_feats=feats,
                                               pair_fn=pair_fn, parts=sg.DEFAULT_PARTS, seed=seed).values
                    both = pick_aware_labels(cand, first, tentative, pick(tentative, budget), m - first.nnz)
                    refit = sg.fill_kernel(cand, exact_on(uf, both), row_feats=feats, col_feats=feats,
                                           pair_fn=pair_fn, parts=sg.DEFAULT_PARTS, seed=seed).values
                    res.setdefault("pick-aware", []).append(gap(pick(refit, budget)))
            row = {"budget": budget, "fraction": frac, "labels": m, "se": (f_se - f_rand) / (f_exact - f_rand),
                   **{k: float(np.mean(v)) for k, v in res.items()},
                   **{f"{k}_sd": float(np.std(v)) for k, v in res.items()},
                   "spearman": float(np.mean([r["spearman"] for r in fid])),
                   "r2": float(np.mean([r["r2"] for r in fid])),
                   "within_row": float(np.mean([r["within_row_spearman"] or np.nan for r in fid]))}
            rows.append(row)
            print(f"  labels {frac:>5.0%} ({m:>6} pairs): learned {row['learned']:.3f}±{row['learned_sd']:.3f}  "
                  f"rows {row['rows']:.3f}±{row['rows_sd']:.3f}  "
                  f"free {row['free effects']:.3f}  +pair {row['+ pair']:.3f}  uniform {row['uniform labels']:.3f}  "
                  f"balanced {row['balanced labels']:.3f}  nearest {row['nearest']:.3f}  constant {row['constant']:.3f}  "
                  + (f"pick-aware {row['pick-aware']:.3f}  " if a.pick_aware else "") +
                  f"| held-out Spearman {row['spearman']:.3f} R2 {row['r2']:.3f} within-row {row['within_row']:.3f}",
                  flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
