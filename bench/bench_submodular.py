"""Benchmark tunesift's facility-location greedy against submodlib.

Dense: random float32 kernels n x n (``--kernel uniform``: i.i.d. U[0, 1), the default;
``cosine``: clustered embedding similarities), budget n/10, our "lazy" vs submodlib LazyGreedy
(same kernel object; submodlib's dense FL takes the numpy array directly). Each size runs in a
fresh child process so peak-RSS figures are not polluted by earlier sizes; inside the child ours
runs first, then submodlib, so the ratio comes from one process on one machine state.
Sparse: a CSR kernel with ``--sparse-degree`` random neighbours per row (n x n), budget n/10,
ours only; wall time and peak RSS of the child.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_submodular.py \\
        --sizes 5000,10000,20000 --sparse-n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time

import numpy as np

from tunesift.machine import banner  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_million import peak_rss_gb  # noqa: E402


def _emit(obj: dict) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def make_dense(n: int, kernel: str, seed: int) -> np.ndarray:
    """uniform: i.i.d. U[0, 1). cosine: (1 + cos) / 2 of 64-d embeddings drawn around 50
    random centres (a clustered, embedding-like kernel). Both float32, n x n."""
    rng = np.random.default_rng(seed)
    if kernel == "uniform":
        return rng.random((n, n), dtype=np.float32)
    centres = rng.standard_normal((50, 64)).astype(np.float32)
    X = centres[rng.integers(0, 50, n)] + 0.8 * rng.standard_normal((n, 64), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    S += 1.0
    S *= 0.5
    np.clip(S, 0.0, 1.0, out=S)
    return S


def child_dense(n: int, frac: float, seed: int, skip_submodlib: bool, kernel: str) -> None:
    from tunesift.selection.submodular import facility_location

    k = max(1, int(n * frac))
    S = make_dense(n, kernel, seed)
    base = peak_rss_gb()
    t = time.perf_counter()
    res = facility_location(S, k, optimizer="lazy")
    ours = time.perf_counter() - t
    _emit(
        {
            "part": "ours",
            "n": n,
            "k": k,
            "time": ours,
            "kernel_gb": S.nbytes / 1e9,
            "rss_base_gb": base,
            "rss_peak_gb": peak_rss_gb(),
            "objective": res.objective,
        }
    )
    if skip_submodlib:
        return
    from submodlib import FacilityLocationFunction

    t = time.perf_counter()
    f = FacilityLocationFunction(n, mode="dense", sijs=S, separate_rep=False)
    out = f.maximize(
        budget=k,
        optimizer="LazyGreedy",
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    theirs = time.perf_counter() - t
    order = [int(j) for j, _ in out]
    gains = np.array([g for _, g in out])
    ours_order = res.order.tolist()
    tie_at = None
    if order != ours_order:
        # submodlib breaks exact ties toward the highest index, we toward the lowest: check
        # whether the first difference is an exact tie of the from-scratch float64 gains.
        t = next(i for i, (a, b) in enumerate(zip(order, ours_order, strict=True)) if a != b)
        cur = np.zeros(n)
        for j in ours_order[:t]:
            np.maximum(cur, S[:, j], out=cur)
        g = [float(np.maximum(S[:, j] - cur, 0.0).sum()) for j in (ours_order[t], order[t])]
        tie_at = t if g[0] == g[1] else None
    m = min(len(order), len(ours_order))

    def objective_f64(cols: list[int]) -> float:  # f(A) from scratch, float64: the two picks compared whole
        cur = np.zeros(n)
        for j in cols:
            np.maximum(cur, S[:, j], out=cur)
        return float(cur.sum())

    f_ours, f_theirs = objective_f64(ours_order), objective_f64(order)
    _emit(
        {
            "part": "submodlib",
            "n": n,
            "time": theirs,
            "identical": order == ours_order,
            "tie_at": tie_at,
            # past a tie the orders part: the whole picks compared by their objective and overlap
            "objective_f64": {"ours": f_ours, "submodlib": f_theirs},
            "objective_rel_diff": abs(f_ours - f_theirs) / max(abs(f_theirs), 1e-300),
            "same_records": len(set(order) & set(ours_order)) / max(1, len(ours_order)),
            "max_gain_diff": float(np.max(np.abs(gains[:m] - res.gains[:m]))),
            "rss_peak_gb": peak_rss_gb(),
        }
    )


def child_sparse(n: int, degree: int, frac: float, seed: int) -> None:
    import scipy.sparse as sp

    from tunesift.selection.submodular import facility_location

    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n, size=(n, degree), dtype=np.int64)
    cols.sort(axis=1)
    vals = rng.random((n, degree), dtype=np.float32)
    indptr = np.arange(0, n * degree + 1, degree, dtype=np.int64)
    S = sp.csr_matrix((vals.ravel(), cols.ravel().astype(np.int32), indptr), shape=(n, n))
    S.sum_duplicates()  # duplicate random neighbours are merged (summed)
    del cols, vals
    k = max(1, int(n * frac))
    base = peak_rss_gb()
    t = time.perf_counter()
    res = facility_location(S, k, optimizer="lazy")
    ours = time.perf_counter() - t
    _emit(
        {
            "part": "sparse",
            "n": n,
            "nnz": int(S.nnz),
            "k": k,
            "time": ours,
            "input_gb": (S.data.nbytes + S.indices.nbytes + S.indptr.nbytes) / 1e9,
            "rss_base_gb": base,
            "rss_peak_gb": peak_rss_gb(),
            "picked": len(res.order),
            "objective": res.objective,
        }
    )


def run_child(args: list[str], timeouts: list[float]) -> tuple[list[dict], bool]:
    """Run this script as a child and collect its RESULT lines; the i-th result must arrive
    within ``timeouts[i]`` seconds of the previous one, else the child is killed.
    Returns (results, timed_out)."""
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    results: list[dict] = []
    for limit in timeouts:
        deadline = time.monotonic() + limit
        got = False
        while not got:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                proc.wait()
                return results, True
            if line is None:
                proc.wait()
                if proc.returncode != 0:
                    raise SystemExit(f"child {' '.join(args)} failed with code {proc.returncode}")
                return results, False
            if line.startswith("RESULT "):
                results.append(json.loads(line[7:]))
                got = True
    proc.wait()
    return results, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="5000,10000,20000", help="dense n values, comma separated")
    ap.add_argument("--budget-frac", type=float, default=0.1, help="budget = n * this")
    ap.add_argument("--sparse-n", type=int, default=1_000_000, help="0 skips the sparse run")
    ap.add_argument("--sparse-degree", type=int, default=20, help="neighbours per row")
    ap.add_argument("--skip-submodlib", action="store_true")
    ap.add_argument(
        "--submodlib-timeout",
        type=float,
        default=900.0,
        help="seconds per size for submodlib; beyond it the time is projected from smaller sizes",
    )
    ap.add_argument("--kernel", choices=["uniform", "cosine"], default="uniform")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["dense", "sparse"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from

    if a.child == "dense":
        child_dense(a.n, a.budget_frac, a.seed, a.skip_submodlib, a.kernel)
        return
    if a.child == "sparse":
        child_sparse(a.n, a.sparse_degree, a.budget_frac, a.seed)
        return

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"numpy {np.__version__}, kernel {a.kernel}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"loadavg at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    measured: list[tuple[int, float]] = []
    for n in [int(x) for x in a.sizes.split(",") if x.strip()]:
        extra = ["--skip-submodlib"] if a.skip_submodlib else []
        args = ["--child", "dense", "--n", str(n), "--budget-frac", str(a.budget_frac)]
        args += ["--seed", str(a.seed), "--kernel", a.kernel, *extra]
        limits = [600.0] if a.skip_submodlib else [600.0, a.submodlib_timeout]
        res, timed_out = run_child(args, limits)
        ours = next(r for r in res if r["part"] == "ours")
        sub = next((r for r in res if r["part"] == "submodlib"), None)
        row = {"n": n, "k": ours["k"], "ours": ours["time"], "ours_rss": ours["rss_peak_gb"]}
        row["kernel_gb"] = ours["kernel_gb"]
        if sub is not None:
            row.update(sub=sub["time"], identical=sub["identical"], gdiff=sub["max_gain_diff"])
            row["tie_at"] = sub["tie_at"]
            row["f_diff"], row["same"] = sub["objective_rel_diff"], sub["same_records"]
            measured.append((n, sub["time"]))
        elif timed_out:
            row["sub_timeout"] = True
        rows.append(row)
        print(f"# n={n}: {json.dumps(row)}", flush=True)

    if measured and any(r.get("sub_timeout") for r in rows):
        xs = np.log([m[0] for m in measured])
        ys = np.log([m[1] for m in measured])
        slope = np.polyfit(xs, ys, 1)[0] if len(measured) > 1 else 3.0
        for r in rows:
            if r.get("sub_timeout"):
                n0, t0 = measured[-1]
                r["sub_proj"] = t0 * (r["n"] / n0) ** slope
                r["slope"] = slope

    print()
    hdr = (
        f"{'n':>7} {'budget':>7} {'ours s':>8} {'submodlib s':>14} {'ratio':>8} "
        f"{'identical':>9} {'max|dgain|':>10} {'|df|/f':>8} {'same recs':>9} {'kernel GB':>9} "
        f"{'ours peak RSS GB':>16}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if "sub" in r:
            sub_s, ratio = f"{r['sub']:.2f}", f"{r['sub'] / r['ours']:.0f}x"
            ident = "yes" if r["identical"] else "NO"
            if not r["identical"] and r["tie_at"] is not None:
                ident = f"tie@{r['tie_at']}"
            gd = f"{r['gdiff']:.1e}" if r["identical"] else "-"
            fd, same = f"{r['f_diff']:.1e}", f"{r['same']:.1%}"
        elif "sub_proj" in r:
            sub_s = f"~{r['sub_proj']:.0f} (proj.)"
            ratio = f"~{r['sub_proj'] / r['ours']:.0f}x"
            ident, gd, fd, same = "n/a", "n/a", "n/a", "n/a"
        else:
            sub_s, ratio, ident, gd, fd, same = "skipped", "-", "-", "-", "-", "-"
        print(
            f"{r['n']:>7} {r['k']:>7} {r['ours']:>8.2f} {sub_s:>14} {ratio:>8} {ident:>9} "
            f"{gd:>10} {fd:>8} {same:>9} {r['kernel_gb']:>9.2f} {r['ours_rss']:>16.2f}"
        )
    if any("sub_proj" in r for r in rows):
        r = next(r for r in rows if "sub_proj" in r)
        print(
            f"(proj.) submodlib exceeded {a.submodlib_timeout:g} s; projected as "
            f"t ~ n^{r['slope']:.2f} fitted to the measured sizes"
        )
    if any(r.get("tie_at") is not None for r in rows):
        print(
            "tie@t: the orders first differ at pick t between two candidates whose gains are"
            " exactly equal; submodlib breaks ties toward the highest index, tunesift the lowest;"
            " past it the picks are compared whole: |df|/f, their float64 objectives' relative"
            " difference, and the share of records both picked"
        )

    if a.sparse_n > 0:
        args = ["--child", "sparse", "--n", str(a.sparse_n), "--budget-frac", str(a.budget_frac)]
        args += ["--sparse-degree", str(a.sparse_degree), "--seed", str(a.seed)]
        res, timed_out = run_child(args, [3600.0])
        if timed_out or not res:
            print(f"\nsparse n={a.sparse_n}: did not finish")
        else:
            s = res[0]
            print(
                f"\nsparse CSR n={s['n']:,} nnz={s['nnz']:,} budget={s['k']:,}: "
                f"{s['time']:.1f} s, peak RSS {s['rss_peak_gb']:.2f} GB "
                f"(input CSR {s['input_gb']:.2f} GB; RSS before the call {s['rss_base_gb']:.2f} GB)"
            )
    print(f"# loadavg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
