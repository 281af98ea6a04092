"""Peak memory of every command, against the number of records (issue 12's targets).

Each case runs as its own process (the real ``tunesift`` CLI) and its peak resident set size is
read from the kernel (``os.wait4``'s ``ru_maxrss``), so nothing of one case leaks into another.
Records are the first N of ../shared/datasets/alpaca_random_9k (real Alpaca instructions). Targets:
``finetune`` (default model, LoRA) <= 2 GB at 10, 100 and 1,000 records; ``bench --quick`` <= 3 GB;
``select`` with each method on 1,000 records <= 2 GB plus its kernel.

    python bench/bench_memory.py                        # the whole table (long on 2 cores)
    python bench/bench_memory.py --only finetune --records 10,100
    python bench/bench_memory.py --only select --methods donod,loss --records 1000

Prints one markdown row per case as soon as it finishes (command, records, peak RSS, wall time)
and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunesift.machine import banner

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "alpaca_random_9k" / "random_9k.json"
TUNESIFT = [sys.executable, "-m", "tunesift"]


def write_records(n: int, folder: Path, offset: int = 0) -> Path:
    """The records offset..offset+n of the Alpaca 9k subset as JSONL."""
    rows = json.loads(DATA.read_text(encoding="utf-8"))[offset:offset + n]
    path = folder / f"alpaca-{offset}-{n}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def peak_rss(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(peak RSS in GB, wall seconds, exit code) of ``cmd`` run as a child process."""
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    # KiB -> GB (10^9 bytes); before session 19 this was KiB / 2^20, GiB printed as "GB" (7.4% less)
    return usage.ru_maxrss * 1024 / 1e9, time.perf_counter() - t, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="finetune,bench,select", help="comma list of finetune, bench, select")
    ap.add_argument("--records", default="10,100,1000", help="record counts for finetune and select")
    ap.add_argument("--methods", default="random,donod,loss,ifd,delift-se,delift",
                    help="select methods (delift uses --knn 8)")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    ap.add_argument("--max-length", type=int, default=512, help="longest sequence in tokens")
    ap.add_argument("--out", default=None, help="keep logs and outputs here (default: a temp folder)")
    ap.add_argument("--lock", default=None, help="run each case under `flock LOCK` (shared 2-core machines)")
    args = ap.parse_args()
    print(banner(), flush=True)
    only = args.only.split(",")
    counts = [int(x) for x in args.records.split(",")]
    work = Path(args.out or tempfile.mkdtemp(prefix="tunesift-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = ["--cache-dir", str(work / "cache")]
    cases = []
    if "finetune" in only:
        for n in counts:
            cases.append((f"finetune (LoRA, {args.epochs} epochs)", n,
                          ["finetune", str(write_records(n, work)), "--out", str(work / f"adapter-{n}"),
                           "--epochs", str(args.epochs), "--max-length", str(args.max_length)]))
    if "bench" in only:
        train, test = write_records(30, work), write_records(10, work, offset=5000)
        cases.append(("bench --quick (30 train / 10 test)", 40,
                      ["bench", "--quick", "--train", str(train), "--test", str(test), "--out", str(work / "bench"),
                       "--methods", "base,random,donod,full", "--seeds", "1"]))
    if "select" in only:
        for n in counts:
            for m in args.methods.split(","):
                extra = ["--knn", "8"] if m in ("delift", "donod+delift") else []
                cases.append((f"select --method {m}", n,
                              ["select", str(write_records(n, work)), "--method", m, "--budget", "0.3",
                               "--max-length", str(args.max_length), "--out", str(work / f"sel-{m}-{n}"),
                               *cache, *extra]))
    print("| command | records | peak RSS (GB) | wall (s) | exit |")
    print("|---|---|---|---|---|", flush=True)
    for label, n, argv in cases:
        cmd = (["flock", args.lock] if args.lock else []) + TUNESIFT + argv  # wait4 reports the max over descendants
        gb, sec, rc = peak_rss(cmd, work / f"log-{len(os.listdir(work))}.txt")
        print(f"| `{label}` | {n} | {gb:.2f} | {sec:.0f} | {rc} |", flush=True)
        if rc != 0:
            print(f"  failed: {shlex.join(argv)} (log in {work})", flush=True)


if __name__ == "__main__":
    main()
