"""Recall and cost of the approximate kNN pattern (faiss IVF-Flat / HNSW) vs exact kNN.

Vectors: the real MiniLM embeddings of the offline datasets (``bench_million``'s loader; from
tunesift's embedding cache after the first run), and the same replicated to ``--n`` rows with
Gaussian noise (``bench_million.replicate``). For each set the full self-join pattern
(``ann_knn_pattern(x, x, k)``, the record itself included) is built per configuration; recall
is measured on ``--queries`` random rows against :func:`knn_pattern` (exact, blocked), whose
cost on all rows is projected from those rows (labelled). Times are CPU seconds of this process
(``time.process_time``, all threads) and wall seconds::

    OMP_WAIT_POLICY=PASSIVE nice -n 19 .venv/bin/python bench/bench_ann.py \\
        --n 100000 --knn 16 --nprobe 4,8,16,32,64 --ivf-faiss --hnsw
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_million import DEFAULT_DATA, load_real_records, replicate  # noqa: E402

from tunesift.machine import banner  # noqa: E402


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def selection_impact(x: np.ndarray, knn: int, frac: float, seed: int) -> None:
    """FL on the exact vs the approximate kNN kernel of ``x``, both scored on the exact sparse
    kernel and on the dense (cos + 1) / 2 objective (all rows), next to a random subset."""
    from tunesift.scoring.embedding import ann_knn_pattern, cosine_similarity_kernel, knn_pattern
    from tunesift.selection.partitioned import fl_value, fl_value_blocked
    from tunesift.selection.submodular import facility_location

    n = len(x)
    k = max(1, int(round(frac * n)))
    exact_p, _, c_exact = timed(lambda: knn_pattern(x, x, knn))
    ann_p, _, c_ann = timed(lambda: ann_knn_pattern(x, x, knn, method="ivf", seed=seed))
    K_exact = cosine_similarity_kernel(x, x, exact_p)
    K_ann = cosine_similarity_kernel(x, x, ann_p)
    sel_exact = facility_location(K_exact, k).order
    sel_ann = facility_location(K_ann, k).order
    sel_rand = np.random.default_rng(seed).choice(n, size=k, replace=False)
    print(
        f"\nselection impact, real set, n = {n:,}, k = {k:,}, knn = {knn}: exact pattern "
        f"{c_exact:.1f} s CPU, IVF pattern {c_ann:.1f} s CPU, overlap of the two selections "
        f"{len(np.intersect1d(sel_exact, sel_ann)) / k:.3f}"
    )
    print("| selection | f on the exact kNN kernel | dense f (all rows) / n |")
    print("|---|---|---|")
    for name, sel in (
        ("FL on the exact kNN kernel", sel_exact),
        ("FL on the IVF kNN kernel", sel_ann),
        ("random", sel_rand),
    ):
        print(
            f"| {name} | {fl_value(K_exact, sel):.1f} | {fl_value_blocked(x, sel) / n:.5f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="rows of the replicated set")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--knn", type=int, default=16)
    ap.add_argument("--nprobe", default="4,8,16,32,64")
    ap.add_argument("--hnsw", action="store_true", help="also HNSW (M = 32)")
    ap.add_argument(
        "--ivf-faiss",
        action="store_true",
        help="also faiss's own IVF-Flat search at the default nprobe",
    )
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument(
        "--selection-budget",
        type=float,
        default=0.0,
        help="> 0: on the real set, also compare FL selections on the exact and on "
        "the approximate (default IVF) kNN kernels at this budget fraction",
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from

    from tunesift.scoring.embedding import (
        ann_knn_pattern,
        default_ivf_params,
        embed_records,
        knn_pattern,
    )

    real = embed_records(load_real_records(a.data))
    sets = {f"real MiniLM ({len(real):,})": real}
    if a.n > 0:
        sets[f"replicated ({a.n:,}, noise {a.noise})"] = replicate(real, a.n, a.noise, a.seed)
    rng = np.random.default_rng(a.seed)
    table = []
    for name, x in sets.items():
        n = len(x)
        q = np.sort(rng.choice(n, size=min(a.queries, n), replace=False))
        exact, w, c = timed(lambda x=x, q=q: knn_pattern(x[q], x, a.knn))
        table.append(
            (
                name,
                "exact (projected from the sampled rows)",
                "",
                1.0,
                w * n / len(q),
                c * n / len(q),
            )
        )
        print(f"# {name}: exact on {len(q)} rows {w:.1f} s wall, {c:.1f} s CPU", flush=True)
        nlist, _ = default_ivf_params(n)
        configs = [("ivf", int(p)) for p in a.nprobe.split(",")]
        if a.ivf_faiss:
            configs.append(("ivf-faiss", default_ivf_params(n)[1]))
        if a.hnsw:
            configs.append(("hnsw", 0))
        for method, nprobe in configs:
            kw = {"nprobe": nprobe} if method.startswith("ivf") else {"hnsw_m": 32}
            p, w, c = timed(
                lambda x=x, method=method, kw=kw: ann_knn_pattern(
                    x, x, a.knn, method=method, seed=a.seed, **kw
                )
            )
            rec = p[q].multiply(exact).nnz / exact.nnz
            params = (
                f"nlist {nlist}, nprobe {nprobe}"
                if method.startswith("ivf")
                else "M 32, efSearch 64"
            )
            table.append((name, method, params, rec, w, c))
            print(
                f"# {name}: {method} {params}: recall {rec:.4f}, {w:.1f} s wall, {c:.1f} s CPU",
                flush=True,
            )
    if a.selection_budget > 0:
        selection_impact(real, a.knn, a.selection_budget, a.seed)
    print()
    print(f"k = {a.knn} (the record itself included), recall on {a.queries} random rows")
    print("| vectors | method | parameters | recall@k | wall s | CPU s |")
    print("|---|---|---|---|---|---|")
    for name, method, params, rec, w, c in table:
        print(f"| {name} | {method} | {params} | {rec:.4f} | {w:.1f} | {c:.1f} |")


if __name__ == "__main__":
    main()
