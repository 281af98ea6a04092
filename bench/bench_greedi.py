"""GreeDi (partitioned greedy) vs the full greedy on pools where the full kernel fits.

Pools: random subsets of n real records of the offline datasets (``bench_million``'s loader),
embedded with the bundled all-MiniLM-L6-v2 (from tunesift's embedding cache after the first
run). For each n and budget k the full greedy runs on the dense (cos + 1) / 2 kernel (and on
the sparse kNN kernel with ``--knn``); then :func:`partitioned_facility_location` runs for each
number of parts m and variant:

* ``classic``: GreeDi as published, local budget kappa = k, unweighted union;
* ``weighted``: the same, each union record weighted by the number of records of its part it
  represents (rows of the union kernel scaled);
* ``os2-weighted``: kappa = ceil(2 k / m) (the union holds ~2k records), weighted;
* ``sample-merge`` / ``os2-sample-merge`` (not in the library; the fix a worst case suggests): the
  classic round 1 (kappa k or ceil(2 k / m)), then the merge round's greedy covers a uniform
  sample of 2 |U| pool records instead of the union itself (K[S, U]: an unbiased estimate of the
  pool's objective, the records a union misses included). Its CPU time includes the library's own
  merge round, which it replaces.

Every selection is scored on the *whole pool's* kernel, f(A) = sum_i max_{j in A} K[i, j], and
reported as a ratio to the full greedy's value, next to a uniform random subset's ratio and the
share of the greedy's gain over random that is kept, (f - f_rand) / (f_full - f_rand)::

    OMP_WAIT_POLICY=PASSIVE nice -n 19 .venv/bin/python bench/bench_greedi.py \\
        --sizes 5000,20000 --budgets 0.01,0.1 --parts 2,4,8,16
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_million import DEFAULT_DATA, load_real_records  # noqa: E402

from tunesift.machine import banner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000")
    ap.add_argument("--budgets", default="0.01,0.1", help="fractions of n")
    ap.add_argument("--parts", default="2,4,8,16")
    ap.add_argument("--variants", default="classic,weighted,os2-weighted")
    ap.add_argument("--knn", type=int, default=0, help="> 0: also the sparse kNN kernel case")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from

    from tunesift.scoring.embedding import cosine_similarity_kernel, embed_records, knn_pattern
    from tunesift.selection.partitioned import fl_value, partitioned_facility_location
    from tunesift.selection.submodular import facility_location

    recs = load_real_records(a.data)
    print(f"# {len(recs):,} real records; each pool's are embedded with MiniLM", flush=True)
    rng = np.random.default_rng(a.seed)
    variants = a.variants.split(",")
    kernels = ["dense"] + (["knn"] if a.knn > 0 else [])
    rows = []
    for n in [int(s) for s in a.sizes.split(",")]:
        # only the pool's records are embedded (the same draw as when every record was embedded first)
        x = embed_records([recs[i] for i in np.sort(rng.choice(len(recs), size=n, replace=False))])
        for kind in kernels:
            if kind == "dense":
                K = cosine_similarity_kernel(x, x)
            else:
                K = cosine_similarity_kernel(x, x, knn_pattern(x, x, a.knn))
            for frac in [float(s) for s in a.budgets.split(",")]:
                k = max(1, int(round(frac * n)))
                c0 = time.process_time()
                full = facility_location(K, k)
                t_full = time.process_time() - c0
                f_full = full.objective
                f_rand = fl_value(K, rng.choice(n, size=k, replace=False))
                for m in [int(s) for s in a.parts.split(",")]:
                    for v in variants:
                        if "sample-merge" in v and kind == "knn":
                            continue  # it would read the pool's kNN graph, which GreeDi never forms
                        kappa = math.ceil(2 * k / m) if v.startswith("os2") else k
                        c0 = time.process_time()
                        res = partitioned_facility_location(
                            x,
                            k,
                            partitions=m,
                            local_budget=kappa,
                            weighted="weighted" in v,
                            knn=a.knn if kind == "knn" else None,
                            ann_method="exact",
                            seed=a.seed,
                        )
                        order = res.order
                        if "sample-merge" in v:  # the merge round on a pool sample: K[S, U]
                            S = np.sort(np.random.default_rng(a.seed + 1).choice(
                                n, size=min(n, 2 * len(res.union)), replace=False))
                            KSU = K[S][:, res.union]
                            order = res.union[facility_location(KSU, k).order]
                            del KSU
                        t = time.process_time() - c0
                        f = fl_value(K, order)
                        row = {
                            "n": n,
                            "kernel": kind,
                            "k": k,
                            "m": m,
                            "variant": v,
                            "kappa": kappa,
                            "union": len(res.union),
                            "ratio": f / f_full,
                            "rand_ratio": f_rand / f_full,
                            "gain_kept": (f - f_rand) / (f_full - f_rand),
                            "winner": res.winner,
                            "cpu_s": t,
                            "full_cpu_s": t_full,
                        }
                        rows.append(row)
                        print(
                            f"n={n} {kind} k={k} m={m} {v:<13} kappa={kappa} |U|={len(res.union)}"
                            f" ratio={row['ratio']:.4f} (random {row['rand_ratio']:.4f}, gain kept"
                            f" {row['gain_kept']:.3f}) winner={res.winner} cpu {t:.1f}s"
                            f" (full {t_full:.1f}s)",
                            flush=True,
                        )
            del K
    print()
    print(
        "| n | kernel | k | m | variant | kappa | union | f / f_full | random | gain kept |"
        " CPU s (full greedy) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['kernel']} | {r['k']:,} | {r['m']} | {r['variant']} |"
            f" {r['kappa']:,} | {r['union']:,} | {r['ratio']:.4f} | {r['rand_ratio']:.4f} |"
            f" {r['gain_kept']:.3f} | {r['cpu_s']:.1f} ({r['full_cpu_s']:.1f}) |"
        )


if __name__ == "__main__":
    main()
