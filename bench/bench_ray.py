"""The Ray backend against the local one on real records: same selection, and the wall time of
each (Ray's includes starting a local instance and loading the model on every worker).

    python bench/bench_ray.py [--data bench/work/alpaca_pool.jsonl] [--n 40] [--knn 8] [--method delift]

Each backend scores into its own fresh cache folder under /tmp, so both compute everything.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from tunesift.io.records import read_records
from tunesift.machine import banner  # noqa: E402
from tunesift.models import load_lm
from tunesift.pipeline import select


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="bench/work/alpaca_pool.jsonl")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--knn", type=int, default=8)
    ap.add_argument("--method", default="delift")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from
    recs = read_records(a.data)[: a.n]
    lm = load_lm("default")
    kw = dict(method=a.method, budget=0.3, knn=a.knn, lm=lm)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("local", "ray"):
            extra = dict(backend="ray", ray_workers=a.workers) if backend == "ray" else {}
            t = time.perf_counter()
            out[backend] = select(recs, cache_dir=f"{tmp}/{backend}", **kw, **extra)
            print(f"{backend}: {time.perf_counter() - t:.1f} s")
    loc, ray = out["local"], out["ray"]
    print(f"{a.method}, {a.n} records, knn {a.knn}: same order {np.array_equal(loc.order, ray.order)}, "
          f"same picks {np.array_equal(loc.kept, ray.kept)}")
    for name in loc.columns:
        x, y = np.asarray(loc.columns[name]), np.asarray(ray.columns[name])
        if x.dtype.kind == "f":
            print(f"  max |{name} local - ray| = {np.nanmax(np.abs(x - y)):.2e}")


if __name__ == "__main__":
    main()
