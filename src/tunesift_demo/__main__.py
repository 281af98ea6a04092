"""``make demo`` (``python -m tunesift_demo``): the main job on the embedded defaults, explained.

1. Writes the synthetic demo set (``tunesift demo-data``): 240 records from 8 task families,
   10% near-duplicates and 20% corrupted records whose response belongs to another prompt
   (marked in ``meta.corrupted``, a field the selectors never read).
2. Runs DONOD selection at budget 0.3 with the default model (SmolLM2-135M-Instruct) and reports
   how many corrupted records it kept, next to random selection at the same budget.
3. Runs DELIFT (instruction stage, k-nearest-neighbour utility kernel) and shows what it picked
   and why: the first greedy picks with their marginal gains, family coverage and corruption.

Outputs land in ``out/demo/`` (override with ``TUNESIFT_DEMO_OUT``).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BUDGET = 0.3


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _kept(out: Path) -> list[dict]:
    return _load(out / "selected.jsonl")


def main() -> int:
    from tunesift.cli import main as cli
    from tunesift_demo.data import write_demo

    root = Path(os.environ.get("TUNESIFT_DEMO_OUT", "out/demo"))
    data = root / "demo.jsonl"
    write_demo(data, n=240, corrupt=0.2, seed=0)
    rows = _load(data)
    n_bad = sum(r["meta"]["corrupted"] for r in rows)
    k = round(BUDGET * len(rows))
    print(f"\n== demo set: {len(rows)} records, {n_bad} corrupted ({n_bad / len(rows):.0%}), budget {BUDGET} -> {k} kept\n")

    runs = {
        "donod": ["--method", "donod"],
        "random": ["--method", "random", "--seed", "0"],
        "delift": ["--method", "delift", "--stage", "instruction", "--knn", "8"],
    }
    for name, args in runs.items():
        print(f"-- tunesift select {data} {' '.join(args)} --budget {BUDGET} --out {root / name}")
        code = cli(["select", str(data), *args, "--budget", str(BUDGET), "--out", str(root / name)])
        if code:
            return code

    print("\n== what each selection kept")
    print(f"{'method':<8} {'kept':>5} {'corrupted kept':>15} {'share':>7} {'families':>9} {'near-dups':>10}")
    for name in runs:
        kept = _kept(root / name)
        bad = sum(r["meta"]["corrupted"] for r in kept)
        fam = len({r["meta"]["family"] for r in kept})
        dups = sum(r["meta"]["duplicate_of"] is not None for r in kept)
        print(f"{name:<8} {len(kept):>5} {bad:>15} {bad / len(kept):>7.0%} {fam:>9} {dups:>10}")
    import numpy as np

    rng_bad = [np.random.default_rng(s).permutation(len(rows))[:k] for s in range(200)]
    exp = np.mean([sum(rows[i]["meta"]["corrupted"] for i in idx) for idx in rng_bad])
    print(f"(random over 200 seeds keeps {exp:.1f} corrupted records on average: {exp / k:.0%})")

    import pyarrow.parquet as pq

    s = pq.read_table(root / "donod" / "scores.parquet").to_pandas()
    meta = {r["id"]: r["meta"] for r in rows}
    s["corrupted"] = [meta[i]["corrupted"] for i in s["id"]]
    print("\n== DONOD: why records were dropped (means over the demo set)")
    print(s.groupby("corrupted")[["don", "nod", "closeness"]].mean().to_string())
    print("corrupted records push the LM head's norm down (negative DON) with large steps (high NOD).")

    d = pq.read_table(root / "delift" / "scores.parquet").to_pandas()
    picks = d[d["order"] > 0].sort_values("order").head(8)
    by_id = {r["id"]: r for r in rows}
    print("\n== DELIFT: the first greedy picks (gain = how much more of the pool it helps predict)")
    for _, p in picks.iterrows():
        r = by_id[p["id"]]
        text = (r["instruction"] + " " + r["input"]).strip().replace("\n", " ")
        print(f"#{int(p['order']):<2} gain {p['gain']:.3f}  [{r['meta']['family']}] {text[:60]!r} -> {r['output'][:30]!r}")
    fam_counts = Counter(by_id[i]["meta"]["family"] for i in d.loc[d.kept, "id"])
    print("families covered:", dict(sorted(fam_counts.items())))
    print(f"\nall outputs under {root}/ (selected.jsonl, scores.parquet, manifest.json per method)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
