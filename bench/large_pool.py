"""A large mixed instruction pool from ../shared/datasets, for scale runs (time and memory).

Every source in ../shared/datasets that has a prompt and a reference answer, as prompt/response
records (about 79,000 distinct ones): Alpaca (both sets), Self-Instruct, P3, GSM8K, MATH, SVAMP,
ASDiv, MAWPS, HotpotQA, SQuAD, ARC, CommonsenseQA, MMLU, BBH, AlpacaEval. Shuffled with a seed.
Asked for more records than that, the pool repeats them, each repeat's prompt tagged
"(variant r)" so that no two records (and no two scored pairs) are identical: a stand-in for a
pool of that size, right for measuring time and memory, not for judging a pick.

    python bench/large_pool.py --n 100000 --out pool100k.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import zipfile
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _choices(c: dict) -> str:
    return "\n".join(f"{label}. {text}" for label, text in zip(c["label"], c["text"], strict=True))


def sources(shared: Path) -> dict[str, list[dict]]:
    """{source name: [{"prompt", "response"}]} for every usable source."""
    out: dict[str, list[dict]] = {}

    def alpaca(r: dict) -> dict:
        inp = r.get("input") or ""
        return {"prompt": r["instruction"] + (f"\n\n{inp}" if inp else ""), "response": r["output"]}

    out["alpaca"] = [alpaca(r) for r in json.loads((shared / "alpaca_random_9k/random_9k.json").read_text("utf-8"))]
    out["alpaca_en_demo"] = [alpaca(r) for r in
                             json.loads((shared / "alpaca_en_demo/alpaca_en_demo.json").read_text("utf-8"))]
    out["self_instruct"] = [alpaca({"instruction": r["instruction"], **r["instances"][0]})
                            for r in _jsonl(shared / "self_instruct/seed_tasks.jsonl")]
    out["p3"] = [{"prompt": r["prompt"], "response": r["completion"]}
                 for f in sorted((shared / "p3_t0_subset").glob("*.jsonl")) for r in _jsonl(f)]
    out["gsm8k"] = [{"prompt": r["question"], "response": r["answer"]}
                    for f in ("train", "test") for r in _jsonl(shared / f"gsm8k/{f}.jsonl")]
    out["math"] = [{"prompt": r["problem"], "response": r["solution"]} for r in _jsonl(shared / "math/test.jsonl")]
    out["svamp"] = [{"prompt": f"{r['Body']} {r['Question']}", "response": str(r["Answer"])}
                    for r in json.loads((shared / "svamp/SVAMP.json").read_text("utf-8"))]
    out["asdiv"] = [{"prompt": f"{r['body']} {r['question']}", "response": r["answer"]}
                    for r in _jsonl(shared / "asdiv/test.jsonl")]
    out["mawps"] = [{"prompt": r["input"], "response": str(r["target"])} for r in _jsonl(shared / "mawps/test.jsonl")]
    out["hotpotqa"] = [{"prompt": r["question"], "response": r["answer"]}
                       for r in json.loads((shared / "hotpotqa/hotpot_dev_v1_simplified.json").read_text("utf-8"))]
    with zipfile.ZipFile(shared / "squad_v1.1/dev-v1.1.json.zip") as z:
        squad = json.loads(z.read(z.namelist()[0]))
    out["squad"] = [{"prompt": f"{p['context']}\n\nQuestion: {q['question']}", "response": q["answers"][0]["text"]}
                    for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]]
    for name in ("arc_challenge", "commonsense_qa"):
        out[name] = [{"prompt": f"{r['question']}\n{_choices(r['choices'])}", "response": r["answerKey"]}
                     for r in _jsonl(shared / f"{name}/test.jsonl")]
    out["mmlu"] = [{"prompt": f"{row[0]}\nA. {row[1]}\nB. {row[2]}\nC. {row[3]}\nD. {row[4]}", "response": row[5]}
                   for split in ("test", "val") for f in sorted((shared / "mmlu" / split).glob("*.csv"))
                   for row in csv.reader(f.open(encoding="utf-8")) if len(row) == 6]
    out["bbh"] = [{"prompt": e["input"], "response": e["target"]}
                  for f in sorted((shared / "bbh").glob("*.json"))
                  for e in json.loads(f.read_text("utf-8"))["examples"]]
    out["alpaca_eval"] = [{"prompt": r["instruction"], "response": r["output"]}
                          for r in _jsonl(shared / "alpaca_eval/alpaca_eval.jsonl")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shared", default="../shared/datasets")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src = sources(Path(a.shared))
    rows = [{"source": name, **r} for name, rs in src.items() for r in rs
            if str(r["prompt"]).strip() and str(r["response"]).strip()]
    random.Random(a.seed).shuffle(rows)
    print(", ".join(f"{k} {len(v):,}" for k, v in src.items()), f"-> {len(rows):,} usable")
    with open(a.out, "w", encoding="utf-8") as fh:
        for i in range(a.n):
            r = dict(rows[i % len(rows)])
            rep = i // len(rows)
            if rep:
                r["prompt"] = f"(variant {rep}) {r['prompt']}"
            fh.write(json.dumps({"id": f"p{i}", **r}) + "\n")
    print(f"wrote {a.n:,} records to {a.out} ({min(a.n, len(rows)):,} distinct sources rows)")


if __name__ == "__main__":
    main()
