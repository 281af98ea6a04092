"""Build the bench experiments' input files from ../shared/datasets (read there, written to
bench/work/, which git ignores; the data is never copied into the repository).

    python bench/prepare_data.py [--shared ../shared/datasets] [--out bench/work] [--seed 0]

Writes, all as prompt/response JSONL (alpaca input folded into the prompt):

- ``alpaca_pool.jsonl`` (160) / ``alpaca_test.jsonl`` (80): disjoint random draws of alpaca_random_9k.
- ``gsm8k_noisy.jsonl`` (160 GSM8K train records, 20% with another record's answer; ``meta.swapped``)
  and ``gsm8k_test.jsonl`` (80 of the GSM8K test split).
- ``mixed_pool.jsonl``: 60 alpaca + 50 GSM8K + 50 SVAMP (``meta.source``); ``gsm8k_target.jsonl``:
  30 other GSM8K train records (the task stage's target set); ``gsm8k_existing.jsonl``: 60 other
  GSM8K train records (the continual stage's data already trained on).
- ``alpaca_eval_test.jsonl`` (80 of AlpacaEval's 805 instructions with their reference outputs).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def alpaca(row: dict) -> dict:
    prompt = row["instruction"] + (("\n\n" + row["input"]) if row.get("input") else "")
    return {"prompt": prompt, "response": row["output"]}


def svamp(row: dict) -> dict:
    ans = row["Answer"]
    ans = int(ans) if float(ans).is_integer() else ans
    return {"prompt": f"{row['Body'].strip()} {row['Question'].strip()}", "response": str(ans)}


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} records")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/datasets")
    ap.add_argument("--out", default="bench/work")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src, out = Path(a.shared), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)

    al = json.loads((src / "alpaca_random_9k" / "random_9k.json").read_text(encoding="utf-8"))
    al = [alpaca(r) for r in al if r["output"].strip()]
    rng.shuffle(al)
    write(out / "alpaca_pool.jsonl", al[:160])
    write(out / "alpaca_test.jsonl", al[160:240])

    gs = [json.loads(x) for x in (src / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    gs = [{"prompt": r["question"], "response": r["answer"]} for r in gs]
    rng.shuffle(gs)
    noisy = [dict(r, meta={"swapped": False}) for r in gs[:160]]
    swap = rng.sample(range(160), 32)  # 20%: a cyclic shift of answers among the chosen records
    answers = [noisy[i]["response"] for i in swap]
    for n, i in enumerate(swap):
        noisy[i] = {"prompt": noisy[i]["prompt"], "response": answers[(n + 1) % len(swap)],
                    "meta": {"swapped": True}}
    write(out / "gsm8k_noisy.jsonl", noisy)
    gt = [json.loads(x) for x in (src / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    rng.shuffle(gt)
    write(out / "gsm8k_test.jsonl", [{"prompt": r["question"], "response": r["answer"]} for r in gt[:80]])

    sv = [svamp(r) for r in json.loads((src / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))]
    rng.shuffle(sv)
    mixed = ([dict(r, meta={"source": "alpaca"}) for r in al[240:300]]
             + [dict(r, meta={"source": "gsm8k"}) for r in gs[160:210]]
             + [dict(r, meta={"source": "svamp"}) for r in sv[:50]])
    rng.shuffle(mixed)
    write(out / "mixed_pool.jsonl", mixed)
    write(out / "gsm8k_target.jsonl", gs[210:240])
    write(out / "gsm8k_existing.jsonl", gs[240:300])

    # AlpacaEval (other instructions than Alpaca's, references by text-davinci-003): a second
    # held-out set for the instruction stage; its own generator, so the files above do not change
    ev = [json.loads(x) for x in (src / "alpaca_eval" / "alpaca_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    random.Random(a.seed + 1).shuffle(ev)
    write(out / "alpaca_eval_test.jsonl", [{"prompt": r["instruction"], "response": r["output"],
                                            "meta": {"dataset": r["dataset"]}} for r in ev[:80]])


if __name__ == "__main__":
    main()
