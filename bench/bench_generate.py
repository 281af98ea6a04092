"""Greedy generation speed: the default (dynamic) KV cache vs a static one, at several batch sizes.

Every variant runs :func:`tunesift.evaluate.generate` (what ``tunesift evaluate`` and the bench
use) on the same prompts and is compared text for text with the first; printed per variant: wall
seconds, the speed-up over the first and how many generations equal the first's.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_generate.py --data gsm8k_test.jsonl --n 32
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="JSONL (any schema tunesift reads)")
    ap.add_argument("--n", type=int, default=32, help="first N records")
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--variants", default="dynamic:16,static:16,static:32",
                    help="comma list of cache:batch (cache: dynamic or static)")
    a = ap.parse_args(argv)

    import torch

    from tunesift.evaluate import generate
    from tunesift.io.records import read_records
    from tunesift.machine import banner
    from tunesift.models import load_lm
    from tunesift.render import renderer_for

    print(banner(), flush=True)
    lm = load_lm(a.model, dtype=a.dtype)
    rend = renderer_for(lm)
    recs = read_records(a.data, limit=a.n)
    print(f"{len(recs)} prompts, {a.model} {a.dtype}, up to {a.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    first, first_s = None, None
    for v in a.variants.split(","):
        cache, batch = v.split(":")
        t = time.perf_counter()
        got = generate(lm, rend, recs, max_new_tokens=a.max_new_tokens, batch_size=int(batch),
                       static_cache=cache == "static")
        dt = time.perf_counter() - t
        first, first_s = first or got, first_s or dt
        same = sum(x == y for x, y in zip(got, first))
        print(f"{cache:8s} batch {batch:>3s}: {dt:7.1f} s  {first_s / dt:5.2f}x the first  "
              f"same text as the first: {same}/{len(got)}", flush=True)


if __name__ == "__main__":
    main()
