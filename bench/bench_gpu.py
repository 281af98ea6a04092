"""GPU check and benchmarks (run on a lent CUDA machine; never needed by the tests).

    python bench/bench_gpu.py --model MODEL --data RECORDS.jsonl   # any format tunesift reads

MODEL is anything ``tunesift.models.load_lm`` takes (the default model's GGUF file, for example).
Prints: versions; the CUDA path's
agreement (DONOD closed form vs autograd; DELIFT prefix-reuse scorer vs plain recompute, fp32);
DONOD and DELIFT tokens/s in bf16 and fp32 with the fraction of the measured matmul peak.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tunesift.machine import banner  # noqa: E402


def peak(dtype, n=8192, reps=10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def load(model: str, dtype):
    from tunesift.models import load_lm

    return load_lm(model, device="cuda", dtype=str(dtype).replace("torch.", ""))


def records(path: Path, n: int):
    """The first ``n`` records of any input tunesift reads (GSM8K's question/answer, prompt/response...)."""
    from tunesift.io.records import read_records

    return read_records(path, limit=n)


def fwd_flops(model, tokens: int) -> float:
    n_emb = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - n_emb
    return 2.0 * n * tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--donod-n", type=int, default=2048)
    ap.add_argument("--delift-n", type=int, default=128)
    args = ap.parse_args()
    print(banner(), flush=True)  # the CPU/GPU and threads these figures come from
    import transformers

    from tunesift.render import Renderer, turn_format
    from tunesift.scoring.donod import (
        DonodParams,
        autograd_don_nod,
        don_nod_from_stats,
        gradient_stats,
        lm_head_norm_sq,
    )
    from tunesift.scoring.utility import plain_utility_kernel, utility_kernel

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    pk = {"bfloat16": peak(torch.bfloat16), "float32": peak(torch.float32)}
    print(f"matmul peak (8192^3): bf16 {pk['bfloat16']:.0f} TFLOP/s, fp32 {pk['float32']:.0f} TFLOP/s")

    # --- agreement on the CUDA path, fp32
    lm = load(args.model, torch.float32)
    r = Renderer(lm.tokenizer, turn_format(lm.tokenizer))
    recs = records(args.data, 8)
    seqs = [r.sequence(x) for x in recs]
    p = DonodParams()
    st = gradient_stats(lm.model, seqs, pad_id=lm.tokenizer.pad_token_id)
    ours = don_nod_from_stats(st, lm_head_norm_sq(lm.model), p)
    ref = np.array([autograd_don_nod(lm.model, s[0], s[1], p) for s in seqs])
    print(f"cuda fp32 DONOD closed form vs autograd: max rel diff {np.max(np.abs(ours - ref) / np.abs(ref)):.2e}")
    fast = utility_kernel(lm, r, recs, recs, cache_dir=False).values("rmse")
    plain = plain_utility_kernel(lm, r, recs, recs).values("rmse")
    print(f"cuda fp32 DELIFT reuse vs plain: max |dUF| {np.nanmax(np.abs(fast - plain)):.2e}")

    # --- throughput
    for dtype in (torch.bfloat16, torch.float32):
        lm = load(args.model, dtype)
        name = str(dtype).replace("torch.", "")
        r = Renderer(lm.tokenizer, turn_format(lm.tokenizer))
        recs = records(args.data, args.donod_n)
        seqs = [r.sequence(x) for x in recs]
        toks = sum(len(s[0]) for s in seqs)
        for budget in (16384, 65536):
            gradient_stats(lm.model, seqs[:64], pad_id=lm.tokenizer.pad_token_id, token_budget=budget)
            torch.cuda.synchronize()
            t = time.perf_counter()
            gradient_stats(lm.model, seqs, pad_id=lm.tokenizer.pad_token_id, token_budget=budget)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            fl = fwd_flops(lm.model, toks) / dt / 1e12
            print(f"DONOD {name} token_budget {budget}: {len(seqs)} records, {toks} tokens in {dt:.1f} s = "
                  f"{toks / dt:.0f} tok/s, {len(seqs) / dt:.0f} records/s, {fl:.1f} TFLOP/s "
                  f"({fl / pk[name]:.1%} of {name} peak, forward FLOPs only)")
        recs = records(args.data, args.delift_n)
        for budget in (16384, 65536):
            utility_kernel(lm, r, recs[:8], recs[:8], cache_dir=False, token_budget=budget)
            torch.cuda.synchronize()
            t = time.perf_counter()
            k = utility_kernel(lm, r, recs, recs, cache_dir=False, token_budget=budget)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            n = len(recs)
            cont = [len(r.encode(x).prompt) + len(r.encode(x).response) for x in recs]
            pre = [len(r.example_prefix(x)) for x in recs]
            pair_tokens = sum(cont) * (n - 1) + sum(cont)  # continuations forwarded (+ no-example arm)
            full_tokens = sum(pre[j] + cont[i] for i in range(n) for j in range(n) if i != j)
            fl = fwd_flops(lm.model, pair_tokens + sum(pre)) / dt / 1e12
            print(f"DELIFT {name} token_budget {budget}: {n}x{n} dense, {n * (n - 1)} pairs in {dt:.1f} s = "
                  f"{n * (n - 1) / dt:.0f} pairs/s, {full_tokens / dt:.0f} full-sequence tok/s, "
                  f"{fl:.1f} TFLOP/s ({fl / pk[name]:.1%} of {name} peak, forward FLOPs actually run); "
                  f"finite {np.isfinite(k.values('rmse')).sum()}")


if __name__ == "__main__":
    main()
