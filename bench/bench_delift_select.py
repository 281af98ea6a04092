"""A DELIFT instruction-stage selection on real data: dense kernel vs k-nearest-neighbour kernel.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_delift_select.py --n 300 --knn 16 --budget 0.3

Selects from the first N records of ../shared/datasets/alpaca_random_9k with the default model and
reports, for the dense (all pairs) and the sparse (k nearest candidates per record) kernel: wall
time of the whole selection (kernel + greedy), pairs scored, and the overlap of the two picks.
``--skip-dense`` runs only the sparse kernel; ``--device cuda`` runs on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tunesift.machine import banner  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ALPACA = Path("../shared/datasets/alpaca_random_9k/random_9k.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--knn", type=int, default=16)
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--data", type=Path, default=ALPACA)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--cache-dir", default=None, help="score cache (default: a fresh folder, so nothing is reused)")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--token-budget", type=int, default=4096)
    args = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from

    import tempfile

    import torch

    from tunesift.models import load_lm
    from tunesift.pipeline import select

    rows = json.loads(args.data.read_text())[: args.n]
    cache = args.cache_dir or tempfile.mkdtemp(prefix="delift-bench-")
    t = time.perf_counter()
    lm = load_lm(args.model, device=args.device, dtype=args.dtype)
    print(f"model {lm.source} on {lm.device} {lm.dtype}, loaded in {time.perf_counter() - t:.1f} s; "
          f"torch threads {torch.get_num_threads()}; {len(rows)} records of {args.data}")
    runs = {}
    for name, knn in ([] if args.skip_dense else [("dense", 0)]) + [(f"knn{args.knn}", args.knn)]:
        t = time.perf_counter()
        sel = select(rows, method="delift", stage="instruction", budget=args.budget, knn=knn, lm=lm,
                     cache_dir=cache, device=args.device, token_budget=args.token_budget)
        wall = time.perf_counter() - t
        n = len(rows)
        pairs = n * (n - 1) if knn == 0 else n * knn
        runs[name] = set(sel.ids)
        tm = {k: round(v, 1) for k, v in sel.timings.items()}
        print(f"{name}: {sel.kept.sum()} kept, {pairs} pairs, wall {wall:.1f} s "
              f"({pairs / max(tm.get('kernel_s', wall), 1e-9):.1f} pairs/s in the kernel); timings {tm}")
    if len(runs) == 2:
        a, b = runs.values()
        print(f"overlap of the sparse pick with the dense pick: {len(a & b)} of {len(a)} ({len(a & b) / len(a):.0%})")
        import numpy as np

        rng = np.random.default_rng(0)
        k = len(a)
        exp = np.mean([len(set(rng.choice(len(rows), k, replace=False)) & set(range(k))) for _ in range(2000)])
        print(f"(two random picks of {k} overlap by {exp / k:.0%} on average)")


if __name__ == "__main__":
    main()
