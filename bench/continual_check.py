"""Does FL conditional gain avoid what the model already knows? (issue 4, experiment 3)

Selects 30% of the mixed pool (Alpaca + GSM8K + SVAMP, from bench/prepare_data.py) with and
without the existing data (60 other GSM8K records) and prints what each pick is made of, plus how
close the picks sit to the existing data (mean over picks of the max MiniLM cosine to an existing
record). FLCG should take fewer GSM8K records and sit farther from the existing set than the
instruction-stage pick.

    python bench/continual_check.py [--work bench/work] [--knn 16] [--max-length 1024]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from tunesift.io.records import read_records
from tunesift.machine import banner  # noqa: E402
from tunesift.models import load_lm
from tunesift.pipeline import select
from tunesift.scoring.embedding import embed_records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--knn", type=int, default=16)
    ap.add_argument("--budget", default="0.3")
    ap.add_argument("--max-length", type=int, default=1024,
                    help="as tunesift bench (its training max_length), so the pool kernel is shared")
    ap.add_argument("--only", default=None, help="comma list of row-name prefixes to run, e.g. random,delift-se")
    a = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from
    pool = read_records(f"{a.work}/mixed_pool.jsonl")
    existing = read_records(f"{a.work}/gsm8k_existing.jsonl")
    cache = f"{a.work}/cache"
    lm = load_lm("default")
    e_pool = embed_records(pool, cache_dir=cache)
    e_ext = embed_records(existing, cache_dir=cache)
    near = (e_pool @ e_ext.T).max(axis=1)  # closeness of each pool record to the existing data
    runs = {
        "random (mean of 3 seeds)": [dict(method="random", seed=s) for s in range(3)],
        "delift-se instruction (FL)": [dict(method="delift-se")],
        "delift-se continual (FLCG)": [dict(method="delift-se", stage="continual", existing=existing)],
        "delift instruction (FL)": [dict(method="delift", knn=a.knn)],
        "delift continual (FLCG)": [dict(method="delift", knn=a.knn, stage="continual", existing=existing)],
    }
    if a.only:
        keep = [p.strip() for p in a.only.split(",")]
        runs = {k: v for k, v in runs.items() if any(k.startswith(p) for p in keep)}
    print(f"pool {len(pool)}: {dict(Counter(r.row['meta']['source'] for r in pool))}; "
          f"existing {len(existing)} GSM8K; budget {a.budget}\n")
    print("| selection | alpaca | gsm8k | svamp | mean max-cos to existing | select s |")
    print("|---|---|---|---|---|---|")
    out = {}
    for name, variants in runs.items():
        counts, closeness, secs = Counter(), [], []
        for kw in variants:
            sel = select(pool, budget=a.budget, cache_dir=cache, max_length=a.max_length, lm=lm if kw["method"] == "delift" else None, **kw)
            counts.update(r.row["meta"]["source"] for r, k in zip(sel.records, sel.kept) if k)
            closeness.append(float(near[sel.kept].mean()))
            secs.append(sel.timings.get("score_select_s", 0.0))
        m = len(variants)
        row = {s: counts[s] / m for s in ("alpaca", "gsm8k", "svamp")}
        row.update(closeness=float(np.mean(closeness)), select_s=float(np.mean(secs)))
        out[name] = row
        print(f"| {name} | {row['alpaca']:.1f} | {row['gsm8k']:.1f} | {row['svamp']:.1f} | "
              f"{row['closeness']:.3f} | {row['select_s']:.1f} |")
    print("\n" + json.dumps(out))


if __name__ == "__main__":
    main()
