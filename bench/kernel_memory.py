"""Peak RSS of the same DELIFT labelling work at several pool sizes (is the kernel flat in n?).

For each n, a fresh process reads the first n records of a file, drops those the default model
cannot score, and scores ``--pairs`` row labels (``pairs / 16`` seeded random targets x 16 seeded
random examples) with :func:`tunesift.scoring.utility.utility_kernel`: the work is the same at
every n, only the pool around it grows. Printed per n: RSS after the set-up (records, model,
the kernel's token ids), the process's peak RSS (``ru_maxrss``), and pairs/s.

    python bench/large_pool.py --n 100000 --out pool100k.jsonl
    OMP_WAIT_POLICY=PASSIVE python bench/kernel_memory.py --data pool100k.jsonl --n 3000,30000,100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_million import peak_rss_gb, rss_gb  # noqa: E402


def one(data: str, n: int, pairs: int, dtype: str, seed: int) -> dict:
    """The measurement for one pool size, in this process."""
    import numpy as np
    import scipy.sparse as sp

    from tunesift.backends.blocks import record_errors
    from tunesift.io.records import read_records
    from tunesift.models import load_lm
    from tunesift.render import renderer_for
    from tunesift.scoring.utility import utility_kernel

    recs = [r for r in read_records(data, limit=n, on_error="skip") if not r.error]
    lm = load_lm("default", dtype=dtype)
    renderer = renderer_for(lm)
    bad = record_errors("loss", renderer, recs)
    recs = [r for i, r in enumerate(recs) if i not in bad]
    m = len(recs)
    rng = np.random.default_rng(seed)
    rows = np.repeat(rng.choice(m, pairs // 16, replace=False), 16)
    cols = rng.choice(m, len(rows))
    pattern = sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(m, m))
    before = None

    def progress(done: int, total: int) -> None:
        nonlocal before
        if before is None:  # called once the job is prepared, before any forward
            before = rss_gb()

    t = time.perf_counter()
    k = utility_kernel(lm, renderer, recs, recs, pairs=pattern, cache_dir=False, progress=progress)
    dt = time.perf_counter() - t
    return {"n": n, "records": m, "pairs": k.info["pairs"], "rss_before_gb": round(before or 0.0, 2),
            "peak_gb": round(peak_rss_gb(), 2),
            "pairs_per_s": round(k.info["pairs"] / dt, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a JSONL pool (bench/large_pool.py)")
    ap.add_argument("--n", default="3000,30000,100000", help="pool sizes, comma-separated")
    ap.add_argument("--pairs", type=int, default=320, help="row labels scored at every n (a multiple of 16)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure this n here
    a = ap.parse_args()
    if a.pairs < 16 or a.pairs % 16:
        ap.error("--pairs must be a positive multiple of 16")
    if a.one is not None:
        print(json.dumps(one(a.data, a.one, a.pairs, a.dtype, a.seed)))
        return
    print(f"{'n':>8} {'records':>8} {'pairs':>6} {'RSS before':>11} {'peak RSS':>9} {'pairs/s':>8}")
    for n in (int(x) for x in a.n.split(",")):
        cmd = [sys.executable, __file__, "--data", a.data, "--pairs", str(a.pairs), "--dtype", a.dtype,
               "--seed", str(a.seed), "--one", str(n)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{r['n']:>8} {r['records']:>8} {r['pairs']:>6} {r['rss_before_gb']:>9.2f} GB "
              f"{r['peak_gb']:>6.2f} GB {r['pairs_per_s']:>8.2f}")


if __name__ == "__main__":
    main()
