"""Which selectors keep the corrupted records? (issue 4, experiment 4, the selection side)

GSM8K train records with 20% of the answers swapped between records (``meta.swapped``, from
bench/prepare_data.py); every method selects the same budget; the table gives the share of
swapped records among the kept ones (random keeps 20% on average) and the selection's wall time.

    python bench/noise_check.py [--work bench/work] [--budget 0.3] [--knn 16]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tunesift.io.records import read_records
from tunesift.machine import banner  # noqa: E402
from tunesift.models import load_lm
from tunesift.pipeline import select


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="bench/work")
    ap.add_argument("--budget", default="0.3")
    ap.add_argument("--knn", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="first N records only")
    ap.add_argument("--only", default=None, help="comma list of row names to run (prefix match), e.g. ifd,loss")
    a = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from
    records = read_records(f"{a.work}/gsm8k_noisy.jsonl")[: a.limit]
    swapped = np.array([bool(r.row["meta"]["swapped"]) for r in records])
    lm = load_lm("default")
    runs = {
        "random (mean of 3 seeds)": [dict(method="random", seed=s) for s in range(3)],
        "donod": [dict(method="donod")],
        "delift (FL, k=16)": [dict(method="delift", knn=a.knn)],
        "delift-se (FL)": [dict(method="delift-se")],
        "donod+delift": [dict(method="donod+delift", knn=a.knn)],
        "ifd": [dict(method="ifd")],
        "loss (easiest)": [dict(method="loss")],
        "loss (hardest)": [dict(method="loss", keep="hardest")],
        "selectit": [dict(method="selectit")],
    }
    if a.only:
        keep = [p.strip() for p in a.only.split(",")]
        runs = {k: v for k, v in runs.items() if any(k.startswith(p) for p in keep)}
    print(f"{len(records)} GSM8K records, {swapped.sum()} swapped ({100 * swapped.mean():.1f}%), "
          f"budget {a.budget}\n")
    print("| method | swapped among kept | kept | select s (cached scores: ~0) |")
    print("|---|---|---|---|")
    out = {}
    for name, variants in runs.items():
        shares, secs = [], []
        for kw in variants:
            sel = select(records, budget=a.budget, cache_dir=f"{a.work}/cache", lm=lm, **kw)
            shares.append(float(swapped[sel.kept].mean()))
            secs.append(sel.timings.get("score_select_s", 0.0))
        out[name] = {"swapped_kept": float(np.mean(shares)), "select_s": float(np.mean(secs))}
        print(f"| {name} | {100 * np.mean(shares):.1f}% | {int(sel.kept.sum())} | {np.mean(secs):.1f} |")
    print("\n" + json.dumps(out))


if __name__ == "__main__":
    main()
