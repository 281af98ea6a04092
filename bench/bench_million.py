"""A 1,000,000-record Facility Location selection on this machine (embedding kernel).

Embedding a million texts with all-MiniLM-L6-v2 on 2 CPU cores takes hours, so the run is
split honestly into what is measured and what is projected:

1. ``load``: the real records of ``--data`` (the offline datasets beside the repository; see
   ``load_real_records`` for the files and fields) are read; nothing is copied into the repo.
2. ``embed-sample``: ``--embed-sample`` of them are embedded with the cache disabled; the
   throughput (records per wall second and per CPU second) is projected to 1M records.
3. ``embed-real``: all real records are embedded (served from tunesift's embedding cache after
   the first run, so this phase's time is *not* an embedding throughput).
4. ``replicate``: the 1M vectors are the real embeddings, each repeated ``--n / n_real`` times
   (row ``i`` is a copy of real row ``i mod n_real``) plus i.i.d. Gaussian noise of standard
   deviation ``--noise`` per coordinate, renormalised to unit length. ``--synthetic`` instead
   draws plain clustered vectors (no real data at all).
5. ``ann-knn``: the approximate kNN pattern (:func:`tunesift.scoring.embedding.ann_knn_pattern`,
   ``method="ivf"``: inner-product IVF, list-major scan) with ``--knn`` neighbours per record,
   the record itself included, and its recall against exact kNN on ``--recall-queries`` random
   rows (exact: faiss brute force over all n rows).
6. ``kernel``: the (cos + 1) / 2 values at the pattern's entries (CSR float32).
7. ``fl-sparse``: the exact lazy greedy of :func:`facility_location` on that sparse kernel.
8. ``greedi`` (``--greedi-budget F > 0``): at budget F (small: the union must fit a dense
   kernel), the sparse FL again and :func:`partitioned_facility_location` with dense kernels
   on parts of ``--greedi-part-size`` records and a local budget of
   ``ceil(--greedi-oversample * k / m)``; both selections are scored on the dense objective
   (sampled target rows) and on the global sparse kernel.

Every phase prints its wall time, CPU time (``time.process_time``: all threads of this process,
robust to other jobs on the machine), the RSS now and the process's peak RSS so far
(``ru_maxrss``)::

    OMP_WAIT_POLICY=PASSIVE nice -n 19 .venv/bin/python bench/bench_million.py \\
        --n 1000000 --knn 16 --budget 0.1 --greedi-budget 0.01 --greedi-part-size 20000 \\
        --greedi-weighted
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import platform
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tunesift.machine import banner  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets"


def peak_rss_gb() -> float:
    """This process's peak RSS so far, GB (10^9 bytes, as :func:`rss_gb`; before session 19 it
    divided the KiB by 10^6, figures 2.4% above decimal GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux -> GB


def rss_gb() -> float:
    """This process's current RSS, GB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


PHASES: list[dict] = []


@contextmanager
def phase(name: str, **extra: object):
    """Time a phase: wall, CPU (this process, all threads), RSS now and peak RSS so far."""
    print(f"# {name} ...", flush=True)
    w, c = time.perf_counter(), time.process_time()
    row: dict = {"phase": name, **extra}
    yield row
    row.update(
        wall_s=time.perf_counter() - w,
        cpu_s=time.process_time() - c,
        rss_gb=rss_gb(),
        peak_rss_gb=peak_rss_gb(),
    )
    PHASES.append(row)
    print("PHASE " + json.dumps(row), flush=True)


# ---------------------------------------------------------------------------------------------
# real records


def _rec(prompt: str, response: str, source: str) -> SimpleNamespace | None:
    prompt, response = prompt.strip(), response.strip()
    if not prompt or not response:
        return None
    return SimpleNamespace(prompt=prompt, response=response, context=(), source=source)


def _choices(q: str, labels: list[str], texts: list[str]) -> str:
    return q + "\n" + "\n".join(f"{a}. {t}" for a, t in zip(labels, texts))


def load_real_records(root: Path) -> list[SimpleNamespace]:
    """Prompt/response pairs from the offline datasets (read in place, nothing copied).

    alpaca_random_9k and alpaca_en_demo (instruction + input, output), p3_t0_subset (prompt,
    completion without ``<|endoftext|>``), gsm8k train + test (question, answer), math (problem,
    solution), hotpotqa dev (question, answer), mmlu test (question with its four options, the
    answer letter and text). Records with an empty prompt or response are skipped.
    """
    out: list[SimpleNamespace | None] = []
    for name in ("alpaca_random_9k/random_9k.json", "alpaca_en_demo/alpaca_en_demo.json"):
        for r in json.loads((root / name).read_text()):
            inp = r.get("input") or ""
            out.append(_rec(r["instruction"] + ("\n\n" + inp if inp else ""), r["output"], name))
    for f in sorted(glob.glob(str(root / "p3_t0_subset" / "*.jsonl"))):
        for line in open(f):
            r = json.loads(line)
            out.append(_rec(r["prompt"], r["completion"].replace("<|endoftext|>", ""), "p3"))
    for split in ("train", "test"):
        for line in open(root / "gsm8k" / f"{split}.jsonl"):
            r = json.loads(line)
            out.append(_rec(r["question"], r["answer"], "gsm8k"))
    for line in open(root / "math" / "test.jsonl"):
        r = json.loads(line)
        out.append(_rec(r["problem"], r["solution"], "math"))
    for r in json.loads((root / "hotpotqa" / "hotpot_dev_v1_simplified.json").read_text()):
        out.append(_rec(r["question"], r["answer"], "hotpotqa"))
    for f in sorted(glob.glob(str(root / "mmlu" / "test" / "*.csv"))):
        with open(f, newline="") as fh:
            for row in csv.reader(fh):
                q, opts, ans = row[0], row[1:5], row[5].strip()
                text = opts["ABCD".index(ans)] if ans in ("A", "B", "C", "D") else ""
                out.append(_rec(_choices(q, list("ABCD"), opts), f"{ans}. {text}", "mmlu"))
    return [r for r in out if r is not None]


# ---------------------------------------------------------------------------------------------
# the 1M vectors


def replicate(real: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """(n, d) float32 unit rows: row i = normalise(real[i mod n_real] + noise * N(0, I))."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for r0 in range(0, n, 1 << 16):
        r1 = min(n, r0 + (1 << 16))
        blk = real[np.arange(r0, r1) % len(real)]
        blk += noise * rng.standard_normal(blk.shape, dtype=np.float32)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        out[r0:r1] = blk
    return out


def synthetic(n: int, d: int, centres: int, spread: float, seed: int) -> np.ndarray:
    """(n, d) float32 unit rows around ``centres`` random Gaussian centres."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for r0 in range(0, n, 1 << 16):
        r1 = min(n, r0 + (1 << 16))
        blk = c[rng.integers(0, centres, r1 - r0)]
        blk += spread * rng.standard_normal(blk.shape, dtype=np.float32)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        out[r0:r1] = blk
    return out


def dense_mean_coverage(x: np.ndarray, sel: np.ndarray, targets: np.ndarray) -> float:
    """Mean over ``targets`` of max_{j in sel} (cos + 1) / 2: the dense FL objective per record,
    estimated on a random sample of target rows (exact for those rows)."""
    from tunesift.selection.partitioned import fl_value_blocked

    return fl_value_blocked(x, sel, targets=targets) / len(targets)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="pool size")
    ap.add_argument("--knn", type=int, default=16, help="neighbours per record (self included)")
    ap.add_argument("--budget", type=float, default=0.1, help="fraction of n to select")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the offline datasets folder")
    ap.add_argument("--synthetic", action="store_true", help="clustered random vectors instead")
    ap.add_argument("--noise", type=float, default=0.05, help="per-coordinate std of the copies")
    ap.add_argument("--embed-sample", type=int, default=2000, help="0 skips the throughput run")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(n))")
    ap.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned (default 32)")
    ap.add_argument("--recall-queries", type=int, default=2000)
    ap.add_argument(
        "--eval-targets",
        type=int,
        default=20000,
        help="random rows on which the dense objective is evaluated",
    )
    ap.add_argument(
        "--greedi-budget",
        type=float,
        default=0.0,
        help="> 0: also run GreeDi (dense parts) and sparse FL at this budget fraction",
    )
    ap.add_argument("--greedi-part-size", type=int, default=20000)
    ap.add_argument(
        "--greedi-oversample",
        type=float,
        default=2.0,
        help="local budget = ceil(oversample * k / m), so the union holds ~oversample * k",
    )
    ap.add_argument("--greedi-weighted", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from

    import faiss
    import scipy

    from tunesift.scoring.embedding import ann_knn_pattern, cosine_similarity_kernel, embed_records
    from tunesift.selection.partitioned import partitioned_facility_location
    from tunesift.selection.submodular import facility_location

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, numpy "
        f"{np.__version__}, scipy {scipy.__version__}, faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}, loadavg at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rng = np.random.default_rng(a.seed)
    n, d = a.n, 384
    if a.synthetic:
        with phase("synthetic", n=n) as row:
            x = synthetic(n, d, centres=5000, spread=0.3, seed=a.seed)
        n_real = 0
    else:
        with phase("load") as row:
            recs = load_real_records(a.data)
            row["records"] = len(recs)
        n_real = len(recs)
        if a.embed_sample > 0:
            embed_records(recs[:16], cache_dir=False)  # loads the encoder (not timed)
            sample = rng.choice(n_real, size=min(a.embed_sample, n_real), replace=False)
            with phase("embed-sample", records=len(sample)) as row:
                embed_records([recs[i] for i in sample], cache_dir=False)
            rate_w, rate_c = len(sample) / row["wall_s"], len(sample) / row["cpu_s"]
            print(
                f"# embedding throughput: {rate_w:.1f} records/s wall, {rate_c:.1f} per CPU-s; "
                f"{n:,} records projected: {n / rate_w / 3600:.1f} h wall "
                f"({n / rate_c / 3600:.1f} CPU-h)",
                flush=True,
            )
        with phase("embed-real (cached after the first run)", records=n_real):
            real = embed_records(recs)
        del recs
        with phase("replicate", n=n, noise=a.noise):
            x = replicate(real, n, a.noise, a.seed)
        copy_cos = float(np.einsum("ij,ij->i", x[:n_real], real).mean())
        print(f"# mean cosine of a copy to its real source: {copy_cos:.3f}", flush=True)
        del real

    with phase("ann-knn", knn=a.knn) as row:
        pattern = ann_knn_pattern(
            x, x, a.knn, method="ivf", nlist=a.nlist, nprobe=a.nprobe, seed=a.seed
        )
        row["nnz"] = int(pattern.nnz)
    q = np.sort(rng.choice(n, size=min(a.recall_queries, n), replace=False))
    with phase("recall-check (exact kNN of sampled rows, not part of the selection)") as row:
        _, exact = faiss.knn(x[q], x, a.knn, metric=faiss.METRIC_INNER_PRODUCT)
        got = pattern[q]
        hits = np.array(
            [
                len(np.intersect1d(got.indices[got.indptr[t] : got.indptr[t + 1]], exact[t]))
                for t in range(len(q))
            ]
        )
        row["recall"] = float(hits.sum() / exact.size)
        row["recall_without_self"] = float((hits - 1).sum() / (exact.size - len(q)))
        if n_real:
            sib = [
                (np.asarray(exact[t]) % n_real == q[t] % n_real).sum() - 1 for t in range(len(q))
            ]
            row["sibling_share_of_exact_neighbours"] = float(np.sum(sib) / (exact.size - len(q)))
    with phase("kernel", nnz=int(pattern.nnz)):
        K = cosine_similarity_kernel(x, x, pattern)
    del pattern
    k = max(1, int(round(a.budget * n)))
    with phase("fl-sparse", budget=k) as row:
        res = facility_location(K, k)
        row["objective"] = res.objective
    targets = np.sort(rng.choice(n, size=min(a.eval_targets, n), replace=False))
    with phase("evaluate (dense objective on sampled rows)") as row:
        row["fl_dense_mean"] = dense_mean_coverage(x, res.order, targets)
        row["random_dense_mean"] = dense_mean_coverage(
            x, rng.choice(n, size=k, replace=False), targets
        )

    if a.greedi_budget > 0:
        kg = max(1, int(round(a.greedi_budget * n)))
        m = math.ceil(n / a.greedi_part_size)
        kappa = math.ceil(a.greedi_oversample * kg / m)
        with phase("fl-sparse (GreeDi budget)", budget=kg) as row:
            small = facility_location(K, kg)
            row["objective"] = small.objective
        with phase(
            "greedi-dense", budget=kg, partitions=m, local_budget=kappa, weighted=a.greedi_weighted
        ) as row:
            g = partitioned_facility_location(
                x, kg, partitions=m, local_budget=kappa, weighted=a.greedi_weighted, seed=a.seed
            )
            row.update(union=len(g.union), winner=g.winner)
        with phase("evaluate GreeDi budget") as row:
            from tunesift.selection.partitioned import fl_value

            row["sparse_fl_dense_mean"] = dense_mean_coverage(x, small.order, targets)
            row["greedi_dense_mean"] = dense_mean_coverage(x, g.order, targets)
            row["random_dense_mean"] = dense_mean_coverage(
                x, rng.choice(n, size=kg, replace=False), targets
            )
            row["sparse_fl_sparse_obj"] = small.objective
            row["greedi_sparse_obj"] = fl_value(K, g.order)

    print()
    print(f"{'phase':<58} {'wall s':>8} {'CPU s':>8} {'RSS GB':>7} {'peak GB':>8}")
    for r in PHASES:
        print(
            f"{r['phase']:<58} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['rss_gb']:>7.2f} "
            f"{r['peak_rss_gb']:>8.2f}"
        )
    sel = [r for r in PHASES if r["phase"] in ("ann-knn", "kernel", "fl-sparse")]
    print(
        f"selection (ann-knn + kernel + fl-sparse): {sum(r['wall_s'] for r in sel):.1f} s wall, "
        f"{sum(r['cpu_s'] for r in sel):.1f} s CPU"
    )
    print(f"# loadavg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
