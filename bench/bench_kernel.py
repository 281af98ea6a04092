"""Benchmark the DELIFT utility kernel: prefix-reuse scorer vs the plain full-recompute scorer.

Run from the repository root (prints figures; not a test)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_kernel.py --n 12 --dtype float32

Both scorers score the same n x n dense pairs (diagonal excluded) plus the n no-example
sequences. Reported: wall time, pairs/s, sequence tokens/s (the tokens of all full sequences,
the same numerator for both scorers), the speed ratio, the largest |UF| difference, and achieved
GFLOP/s as a fraction of this machine's measured matmul peak (2048 x 2048, same dtype, measured
in the same run). FLOPs executed by a scorer are counted as::

    2 * n_params_non_embedding * tokens_forwarded + 2 * d * V * logit_positions
      + 4 * n_layers * d_attn * sum_over_queries(keys visible)          (attention, causal)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tunesift.machine import banner  # noqa: E402
from tunesift.models import load_lm  # noqa: E402
from tunesift.render import Renderer, turn_format  # noqa: E402
from tunesift.scoring.utility import plain_utility_kernel, utility_kernel  # noqa: E402

DATA = {
    "gsm8k": "../shared/datasets/gsm8k/train.jsonl",
    "alpaca": "../shared/datasets/alpaca_random_9k/random_9k.json",
}


def load_records(name: str, n: int, offset: int = 0) -> list:
    """The first n records after ``offset`` as (id, prompt, response, context, line) objects."""
    path = Path(DATA[name])
    if name == "gsm8k":
        rows = [json.loads(x) for x in path.read_text().splitlines()[offset : offset + n]]
        pairs = [(r["question"], r["answer"]) for r in rows]
    else:
        rows = json.loads(path.read_text())[offset : offset + n]
        pairs = [
            ((r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")), r["output"])
            for r in rows
        ]
    return [
        SimpleNamespace(
            id=f"{name}-{offset + k}", prompt=p, response=a, context=(), line=offset + k + 1
        )
        for k, (p, a) in enumerate(pairs)
    ]


def matmul_peak(dtype: torch.dtype, reps: int = 10) -> float:
    """Median GFLOP/s of a 2048 x 2048 matmul in ``dtype``."""
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def model_shape(model) -> dict:
    cfg = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    skip = {emb.data_ptr(), head.data_ptr()}
    non_emb = sum(p.numel() for p in model.parameters() if p.data_ptr() not in skip)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "non_emb": non_emb,
        "d": cfg.hidden_size,
        "V": head.shape[0],
        "L": cfg.num_hidden_layers,
        "d_attn": cfg.num_attention_heads * head_dim,
    }


def attn_pairs(q_start: int, q_len: int) -> int:
    """sum over queries of visible keys, for queries at positions q_start..q_start+q_len-1."""
    return q_len * q_start + q_len * (q_len + 1) // 2


def work(renderer, targets, examples, shape) -> dict:
    """Tokens, logit positions and FLOPs each scorer executes on the dense pairs (i != j)."""
    encs = [renderer.encode(t) for t in targets]
    conts = [e.prompt + e.response for e in encs]
    h = len(renderer.header)
    pre = [renderer.example_prefix(e) for e in examples]
    seq_tokens = sum(h + len(c) for c in conts)  # the no-example sequences
    plain = {
        "tokens": seq_tokens,
        "logits": seq_tokens,
        "attn": sum(attn_pairs(0, h + len(c)) for c in conts),
    }
    fast = {
        "tokens": seq_tokens,
        "logits": sum(len(e.response) for e in encs),
        "attn": plain["attn"],
    }
    for j, p in enumerate(pre):
        longest = 0
        for i, c in enumerate(conts):
            if i == j:
                continue
            fp = renderer.fit_prefix(p, len(c))
            seq_tokens += len(fp) + len(c)
            plain["tokens"] += len(fp) + len(c)
            plain["logits"] += len(fp) + len(c)
            plain["attn"] += attn_pairs(0, len(fp) + len(c))
            fast["tokens"] += len(c)
            fast["logits"] += len(encs[i].response)
            fast["attn"] += attn_pairs(len(fp), len(c))
            longest = max(longest, len(fp))
        fast["tokens"] += longest
        fast["attn"] += attn_pairs(0, longest)
    for w in (plain, fast):
        w["flops"] = (
            2 * shape["non_emb"] * w["tokens"]
            + 2 * shape["d"] * shape["V"] * w["logits"]
            + 4 * shape["L"] * shape["d_attn"] * w["attn"]
        )
    return {"seq_tokens": seq_tokens, "plain": plain, "fast": fast}


def load_avg() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:  # pragma: no cover
        return "?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(DATA), default="gsm8k")
    ap.add_argument(
        "--n", type=int, default=12, help="records (n x n dense kernel, diagonal excluded)"
    )
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--plain-budget", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="alternate fast and plain this many times; the best time of each counts",
    )
    args = ap.parse_args(argv)
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    print(
        f"machine: {os.cpu_count()} cpus, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(f"load before: {load_avg()}")
    lm = load_lm(args.model, device=args.device, dtype=args.dtype)
    renderer = Renderer(lm.tokenizer, turn_format(lm.tokenizer), max_length=args.max_length)
    recs = load_records(args.data, args.n, args.offset)
    shape = model_shape(lm.model)
    w = work(renderer, recs, recs, shape)
    n_pairs = args.n * (args.n - 1)
    print(
        f"data: {args.data} x {args.n} records, {n_pairs} pairs + {args.n} no-example sequences, "
        f"{w['seq_tokens']} sequence tokens; model {args.model} {args.dtype}, "
        f"{shape['non_emb'] / 1e6:.1f}M non-embedding params"
    )
    peak = matmul_peak(dtype)
    print(f"matmul peak (2048^2, {args.dtype}): {peak:.0f} GFLOP/s")
    utility_kernel(lm, renderer, recs[:2], recs[:2], cache_dir=False)  # warm-up

    runs = {
        "fast": lambda: utility_kernel(
            lm, renderer, recs, recs, cache_dir=False, token_budget=args.token_budget
        ),
        "plain": lambda: plain_utility_kernel(
            lm, renderer, recs, recs, token_budget=args.plain_budget
        ),
    }
    if args.skip_plain:
        del runs["plain"]
    res: dict = {name: [] for name in runs}
    for _ in range(args.repeat):  # alternate the scorers so load changes hit both alike
        for name, fn in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            kern = fn()
            res[name].append((time.perf_counter() - w0, time.process_time() - c0, kern))
    print(f"load after: {load_avg()}")
    print(
        f"{'scorer':<7} {'wall s':>8} {'cpu s':>8} {'pairs/s':>8} {'seq tok/s':>10} {'exec tok':>9} "
        f"{'GFLOP':>8} {'GFLOP/s':>8} {'of peak':>8}"
    )
    best = {}
    for name, rows in res.items():
        secs, cpu = min(r[0] for r in rows), min(r[1] for r in rows)
        best[name] = (secs, cpu, rows[0][2])
        ww = w[name]
        gf = ww["flops"] / 1e9
        print(
            f"{name:<7} {secs:8.2f} {cpu:8.2f} {n_pairs / secs:8.2f} {w['seq_tokens'] / secs:10.0f} "
            f"{ww['tokens']:9d} {gf:8.0f} {gf / secs:8.1f} {gf / secs / peak:8.1%}"
        )
    fast = best["fast"][2]
    res = best
    if "plain" in res:
        (t_fast, c_fast, _), (t_plain, c_plain, plain) = res["fast"], res["plain"]
        print(
            f"speed ratio plain/fast: {t_plain / t_fast:.2f}x wall, {c_plain / c_fast:.2f}x cpu time "
            f"(FLOP ratio {w['plain']['flops'] / w['fast']['flops']:.2f}x)"
        )
        for dist in ("rmse", "pmi"):
            a, b = fast.values(dist), plain.values(dist)
            print(
                f"max |UF_fast - UF_plain| ({dist}): {np.nanmax(np.abs(a - b)):.2e} "
                f"(UF range {np.nanmin(b):.3f}..{np.nanmax(b):.3f})"
            )
    print(f"fast scorer info: {fast.info}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
