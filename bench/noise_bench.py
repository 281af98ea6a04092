"""DONOD's claim under test (issue 18): which selectors drop corrupted records and keep hard-but-clean ones?

For each set (four kinds: math word problems, general instructions, short QA, multi-task prompts)
one pool of ``--records`` records is built from ``--data-dir`` (default ../shared/datasets):

- 65% regular records of the set, 15% **hard-but-clean** records (long, correct, high-loss: from a
  harder sibling source of the same kind (HARD_SOURCE), the highest-loss quarter of 4x as many
  candidates under the scoring model, because per token a long correct answer is rarely high-loss
  on its own), and 20% of the regular ones then **corrupted**, once per
  corruption type (the same records for every type, so the pools differ only in the corruption):
  ``swap`` (another corrupted record's answer, a cycle), ``subtle`` (math: the final number after
  ``####`` changed by one digit, worked solution kept; QA: another question's answer from the same
  passage; multi-task: another answer of the same task; otherwise one number, entity or word of the
  response replaced), ``truncate`` (cut mid-sentence at 30-60% of its words) and ``repeat`` (a
  degenerate loop: its first phrase repeated).
- Ground truth lives in each row's ``meta`` (``group``: clean / hard / corrupt, ``defect``); the
  selectors read only prompt and response.

Every unique record (pool plus its corrupted versions) is scored ONCE per scorer with the library's
scoring functions: DONOD's eta-free terms (r_dot_z, grad_norm_sq, n_tokens: ``gradient_stats``),
IFD (whose ``loss`` column is the loss filter's score, ``ifd_scores``) and SelectIT
(``selectit_scores``). Every variant (random, loss, IFD, SelectIT, DONOD with its eta / reduction /
DON-alone / NOD-alone / TOPSIS-weights variants) is then a ranking of cached numbers. For each
(set, corruption, method, budget) the result is the share of the corrupted records kept and the
share of the hard-but-clean records kept (random keeps the budget share of both).

Resumable: scores are cached per (set, scorer) under ``--out/scores`` (saved every chunk of
records), results per (set, corruption) under ``--out/results`` with one entry per method
variant; a rerun skips what is there. The markdown table goes to ``--out/table.md``.

    python bench/noise_bench.py                                # full grid (4 sets x 4 corruptions x 500)
    python bench/noise_bench.py --records 40 --sets gsm8k      # smoke run
    python bench/noise_bench.py --pack .gpu_data               # copy the needed source files (git-ignored)
    python bench/noise_bench.py --data-dir .gpu_data --out bench/out/noise   # on a machine without ../shared
    python bench/noise_bench.py --out bench/out/noise --table-only           # the table from the JSON results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

CORRUPTIONS = ("swap", "subtle", "truncate", "repeat")
HARD_SHARE, CORRUPT_SHARE = 0.15, 0.20
HARD_CANDIDATES = 4  # hard-but-clean: the highest-loss quarter of 4x as many candidates
BUDGETS = (0.3, 0.7)
RANDOM_SEEDS = 20

# ----------------------------------------------------------------------------- corruptions
# Every function is pure: (text, ..., rng) -> (new text, ground-truth dict). rng is random.Random.

_TERMINAL = ".!?"
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_DIGITS = re.compile(r"\d+")


def change_digit(number: str, rng: random.Random) -> str:
    """The number with one digit changed (the last digit preferred; a leading digit never becomes 0).

    Keeps separators (``1,250`` -> ``1,257``), sign and length, so the edit is as small as it gets.
    """
    pos = [i for i, ch in enumerate(number) if ch.isdigit()]
    if not pos:
        raise ValueError(f"no digit in {number!r}")
    i = pos[-1] if rng.random() < 0.7 or len(pos) == 1 else rng.choice(pos)
    lead = i == pos[0] and len(pos) > 1
    choices = [d for d in "0123456789" if d != number[i] and not (lead and d == "0")]
    return number[:i] + rng.choice(choices) + number[i + 1:]


def subtle_math(text: str, rng: random.Random) -> tuple[str, dict]:
    """GSM8K style: the final answer after ``####`` gets one digit changed, the worked solution is kept.

    Without a ``####`` line, the last number of the text is changed instead.
    """
    m = re.search(r"####\s*(-?[\d,]*\d(?:\.\d+)?)\s*$", text)
    if m is None:
        nums = list(_DIGITS.finditer(text))
        if not nums:
            raise ValueError("no number to change")
        m = nums[-1]
        s, e = m.span()
    else:
        s, e = m.span(1)
    old = text[s:e]
    new = change_digit(old, rng)
    return text[:s] + new + text[e:], {"what": "final_number", "old": old, "new": new}


def entity_spans(text: str) -> list[tuple[int, int]]:
    """Capitalised words that do not start a sentence or line (a cheap named-entity guess)."""
    out = []
    for m in _WORD.finditer(text):
        w = m.group()
        if not w[0].isupper() or len(w) < 2 or w == "I":
            continue
        before = text[: m.start()].rstrip(" \t\"'(")
        if before and before[-1] not in _TERMINAL + "\n:":
            out.append(m.span())
    return out


def fact_vocabulary(texts: list[str]) -> dict[str, list[str]]:
    """Replacement candidates from other records: ``entity`` (capitalised, not sentence-initial) and
    ``word`` (lower-case words of 4+ letters), deduplicated, in first-seen order."""
    ents: dict[str, None] = {}
    words: dict[str, None] = {}
    for t in texts:
        for s, e in entity_spans(t):
            ents[t[s:e]] = None
        for m in _WORD.finditer(t):
            w = m.group()
            if len(w) >= 4 and w.islower():
                words[w] = None
    return {"entity": list(ents), "word": list(words)}


def replace_fact(text: str, vocab: dict[str, list[str]], rng: random.Random) -> tuple[str, dict]:
    """One fact of the response replaced, the rest kept: a number (one digit changed), else a named
    entity (another record's), else a content word (another record's), else any word."""
    nums = list(_DIGITS.finditer(text))
    if nums:
        m = rng.choice(nums)
        new = change_digit(m.group(), rng)
        return text[: m.start()] + new + text[m.end():], {"what": "number", "old": m.group(), "new": new}
    words = list(_WORD.finditer(text))
    for what, spans in (("entity", entity_spans(text)),
                        ("word", [m.span() for m in words if len(m.group()) >= 4 and m.group().islower()]),
                        ("any word", [m.span() for m in words if len(m.group()) >= 2])):
        if not spans:
            continue
        s, e = rng.choice(spans)
        old = text[s:e]
        pool = vocab.get("entity" if what == "entity" or (what == "any word" and old[0].isupper()) else "word", [])
        cands = [w for w in pool if w.lower() != old.lower()]
        if cands:
            new = rng.choice(cands)
            if what == "any word" and old[0].isupper():
                new = new[0].upper() + new[1:]
            return text[:s] + new + text[e:], {"what": what, "old": old, "new": new}
    raise ValueError(f"no fact to replace in {text[:60]!r}")


def truncate(text: str, rng: random.Random) -> tuple[str, dict]:
    """Cut mid-sentence: keep the first 30-60% of the words (one word of 2-3, half the characters of
    one), drop trailing punctuation so it never ends a sentence. A strict prefix of the text."""
    words = list(re.finditer(r"\S+", text))
    if len(words) >= 4:
        keep = rng.randint(max(1, math.ceil(0.3 * len(words))), max(1, int(0.6 * len(words))))
        cut = text[: words[keep - 1].end()]
    elif len(words) >= 2:
        cut = text[: words[0].end()]
    else:
        w = text.strip()
        if len(w) < 2:
            raise ValueError(f"too short to truncate: {text!r}")
        cut = text[: text.index(w) + max(1, len(w) // 2)]
    trimmed = cut.rstrip(" \t\n.!?,;:")
    cut = trimmed if trimmed else cut
    return cut, {"what": "truncated", "kept_chars": len(cut), "of": len(text)}


def repeat(text: str, rng: random.Random) -> tuple[str, dict]:
    """A degenerate loop: the first sentence (at most 12 words; half the words of a one-sentence
    response) repeated at least 3 times and to about 1.5x the original word count."""
    words = text.split()
    if not words:
        raise ValueError("empty text")
    first = re.split(r"(?<=[.!?\n])\s", text.strip(), maxsplit=1)[0].split()
    unit = first[:12] if len(first) < len(words) else words[: max(1, min(12, len(words) // 2))]
    reps = max(3, min(20, math.ceil(1.5 * len(words) / len(unit))))
    phrase = " ".join(unit)
    return " ".join([phrase] * reps), {"what": "repeated", "unit": phrase, "times": reps}


def swap_cycle(responses: list[str]) -> list[int]:
    """Source index of each record's new response: the next one's (a cycle), then, where that text
    equals the record's own (two records with the same label), exchanged with another record's
    source so that no record keeps its own text."""
    n = len(responses)
    src = [(i + 1) % n for i in range(n)]
    for i in range(n):
        if responses[src[i]] == responses[i]:
            for j in range(n):
                if (j != i and responses[src[j]] != responses[i] and responses[src[i]] != responses[j]):
                    src[i], src[j] = src[j], src[i]
                    break
            else:
                raise ValueError("cannot swap: (nearly) all responses are the same")
    return src


# ----------------------------------------------------------------------------- sets

Row = dict  # {"prompt", "response", "meta": {...}}


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(x) for x in fh if x.strip()]


def _row(prompt: str, response: str, **meta) -> Row:
    return {"prompt": prompt.strip(), "response": response.strip(), "meta": meta}


def load_gsm8k(d: Path) -> tuple[list[Row], list[Row]]:
    reg = [_row(r["question"], r["answer"]) for r in _jsonl(d / "gsm8k" / "train.jsonl")]
    hard = [_row(r["problem"], r["solution"], source="math", level=r["level"])
            for r in _jsonl(d / "math" / "test.jsonl")
            if r["level"] in ("Level 4", "Level 5") and 400 <= len(r["solution"]) <= 2500]
    return reg, hard


def load_alpaca(d: Path) -> tuple[list[Row], list[Row]]:
    def fold(r):
        return r["instruction"] + (("\n\n" + r["input"]) if r.get("input") else "")

    al = json.loads((d / "alpaca_random_9k" / "random_9k.json").read_text(encoding="utf-8"))
    reg = [_row(fold(r), r["output"]) for r in al if 2 <= len(r["output"].strip()) <= 1200 and len(fold(r)) <= 2000]
    hard = []  # human-written answers to real user tasks (Self-Instruct's seed and user-oriented sets)
    for f in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        for r in _jsonl(d / "self_instruct" / f):
            for x in r["instances"]:
                prompt = r["instruction"] + (("\n\n" + x["input"]) if x.get("input") else "")
                if 100 <= len(x["output"].strip()) <= 3000 and len(prompt) <= 2000:
                    hard.append(_row(prompt, x["output"], source=f"self_instruct/{r['id']}"))
    return reg, hard


def load_squad(d: Path) -> tuple[list[Row], list[Row]]:
    with zipfile.ZipFile(d / "squad_v1.1" / "dev-v1.1.json.zip") as z:
        data = json.loads(z.read("dev-v1.1.json"))["data"]
    reg = []
    for a, art in enumerate(data):
        for p, par in enumerate(art["paragraphs"]):
            if len(par["context"]) > 2000:
                continue
            for qa in par["qas"]:
                ans = qa["answers"][0]["text"]
                if len(ans.strip()) >= 2:
                    reg.append(_row(f"{par['context']}\n\nQuestion: {qa['question']}", ans, group_key=f"{a}/{p}"))
    hard = []
    for r in _jsonl(d / "hotpotqa" / "dev_subsampled.jsonl"):
        sup = [c for c in r["contexts"] if c["is_supporting"]]
        other = [c for c in r["contexts"] if not c["is_supporting"]][:2]
        ctx = sorted(sup + other, key=lambda c: int(c["id"]))
        text = "\n\n".join(f"{c['title']}: {c['paragraph_text']}" for c in ctx)
        ans = r["answers_objects"][0]["spans"][0] if r["answers_objects"][0]["spans"] else ""
        if len(ans.strip()) >= 2 and ans.strip().lower() not in ("yes", "no") and len(text) <= 3500:
            hard.append(_row(f"{text}\n\nQuestion: {r['question_text']}", ans, source="hotpotqa"))
    return reg, hard


def load_p3(d: Path) -> tuple[list[Row], list[Row]]:
    reg = []
    for f in sorted((d / "p3_t0_subset").glob("*.jsonl")):
        for r in _jsonl(f):
            resp = r["completion"].replace("<|endoftext|>", "")
            if 2 <= len(resp.strip()) <= 1200 and len(r["prompt"]) <= 2500:
                reg.append(_row(r["prompt"], resp, group_key=f.stem))
    hard = []
    for f in sorted((d / "bbh").glob("*.json")):
        for r in json.loads(f.read_text(encoding="utf-8"))["examples"]:
            if len(r["input"]) <= 3000 and len(str(r["target"]).strip()) >= 1:
                hard.append(_row(r["input"], str(r["target"]), source=f"bbh/{f.stem}"))
    return reg, hard


# name -> (kind, loader, source paths under --data-dir (for --pack))
SETS: dict[str, tuple[str, Callable[[Path], tuple[list[Row], list[Row]]], tuple[str, ...]]] = {
    "gsm8k": ("math", load_gsm8k, ("gsm8k/train.jsonl", "math/test.jsonl")),
    "alpaca": ("instructions", load_alpaca, ("alpaca_random_9k/random_9k.json", "self_instruct")),
    "squad": ("short QA", load_squad, ("squad_v1.1/dev-v1.1.json.zip", "hotpotqa/dev_subsampled.jsonl")),
    "p3": ("multi-task", load_p3, ("p3_t0_subset", "bbh")),
}
HARD_SOURCE = {"gsm8k": "MATH levels 4-5 (worked solutions)", "alpaca": "Self-Instruct seed and user-oriented tasks (human-written answers)",
               "squad": "HotpotQA multi-hop (2 supporting + 2 distractor paragraphs)", "p3": "BIG-Bench Hard"}


def subtle_fn(kind: str, regular: list[Row]) -> Callable[[Row, random.Random], tuple[str, dict]]:
    """The set's subtle corruption of one regular row, with what it needs from the other rows."""
    if kind == "math":
        return lambda row, rng: subtle_math(row["response"], rng)
    vocab = fact_vocabulary([r["response"] for r in regular[:3000]])
    groups: dict[str, list[str]] = defaultdict(list)
    for r in regular:
        if r["meta"].get("group_key") is not None:
            groups[r["meta"]["group_key"]].append(r["response"])

    def same_group(row: Row, rng: random.Random) -> tuple[str, dict] | None:
        old = row["response"].strip().lower()
        # QA: no answer that contains the right one or is contained in it (still right); labels: any other
        cands = sorted({a for a in groups.get(row["meta"].get("group_key"), []) if a.strip().lower() != old
                        and (kind != "short QA" or (a.strip().lower() not in old and old not in a.strip().lower()))})
        if not cands:
            return None
        new = rng.choice(cands)
        return new, {"what": "same_group_answer", "old": row["response"], "new": new}

    def fn(row: Row, rng: random.Random) -> tuple[str, dict]:
        # QA: another answer from the same passage; multi-task: another answer of the same task
        # (a label flip) when the answer is short; otherwise one fact replaced
        if kind == "short QA" or (kind == "multi-task" and len(row["response"].split()) <= 5):
            got = same_group(row, rng)
            if got is not None:
                return got
        return replace_fact(row["response"], vocab, rng)

    return fn


def make_pools(regular: list[Row], hard: list[Row], n: int, seed: int | str, subtle,
               corruptions=CORRUPTIONS, hard_loss: Callable[[list[Row]], np.ndarray] | None = None) -> dict:
    """The pool of one set: ``base`` rows (clean and hard, meta.group says which) and, per corruption,
    {index: corrupted row} for the same ``corrupt_idx`` (20% of n, regular rows only).

    ``regular`` and ``hard`` are candidate lists, shuffled here with the seed. The hard-but-clean
    records are the ``round(0.15 n)`` highest by ``hard_loss`` (the scoring model's mean response
    loss) among the first ``HARD_CANDIDATES`` times as many hard candidates, so they are high-loss by
    construction and correct by their source; without ``hard_loss`` the first ones are taken.
    Deterministic in (candidates, n, seed, hard_loss).
    """
    rng = random.Random(f"noise-bench:{seed}")
    n_hard = round(HARD_SHARE * n)
    n_reg = n - n_hard
    n_corr = round(CORRUPT_SHARE * n)
    reg, hrd = list(regular), list(hard)
    rng.shuffle(reg)
    rng.shuffle(hrd)
    if len(reg) < n_reg or len(hrd) < n_hard:
        raise SystemExit(f"not enough records: need {n_reg} regular and {n_hard} hard, have {len(reg)} and {len(hrd)}")
    if hard_loss is not None:
        cand = hrd[: HARD_CANDIDATES * n_hard]
        loss = np.asarray(hard_loss(cand), dtype=np.float64)
        top = np.argsort(-loss, kind="stable")[:n_hard]
        hrd = [dict(cand[i], meta=dict(cand[i]["meta"], hard_loss_rank=int(r + 1), hard_candidates=len(cand)))
               for r, i in enumerate(top)]
    base = [dict(r, meta=dict(r["meta"], group="clean", defect=None)) for r in reg[:n_reg]]
    base += [dict(r, meta=dict(r["meta"], group="hard", defect=None)) for r in hrd[:n_hard]]
    rng.shuffle(base)
    reg_idx = [i for i, r in enumerate(base) if r["meta"]["group"] == "clean"]
    corrupt_idx = sorted(rng.sample(reg_idx, n_corr)) if n_corr >= 2 else []
    versions: dict[str, dict[int, Row]] = {}
    for c in corruptions:
        crng = random.Random(f"noise-bench:{seed}:{c}")
        rows: dict[int, Row] = {}
        if c == "swap":
            src = swap_cycle([base[i]["response"] for i in corrupt_idx])
            for j, i in enumerate(corrupt_idx):
                rows[i] = _corrupt(base[i], base[corrupt_idx[src[j]]]["response"], c,
                                   {"what": "swapped", "from_index": corrupt_idx[src[j]]})
        else:
            fn = {"subtle": subtle, "truncate": lambda r, g: truncate(r["response"], g),
                  "repeat": lambda r, g: repeat(r["response"], g)}[c]
            for i in corrupt_idx:
                text, info = fn(base[i], crng)
                rows[i] = _corrupt(base[i], text, c, info)
        versions[c] = rows
    return {"base": base, "corrupt_idx": corrupt_idx, "versions": versions}


def _corrupt(row: Row, response: str, defect: str, info: dict) -> Row:
    if response.strip() == row["response"].strip():
        raise ValueError(f"{defect} left the response unchanged: {response[:60]!r}")
    return {"prompt": row["prompt"], "response": response,
            "meta": dict(row["meta"], group="corrupt", defect=defect, detail=info, original=row["response"])}


def pool_rows(pool: dict, corruption: str) -> list[Row]:
    rows = list(pool["base"])
    for i, r in pool["versions"][corruption].items():
        rows[i] = r
    return rows


def build_set(name: str, data_dir: Path, n: int, seed: int, corruptions=CORRUPTIONS, hard_loss=None) -> dict:
    kind, loader, _ = SETS[name]
    reg, hard = loader(data_dir)
    return make_pools(reg, hard, n, f"{seed}:{name}", subtle_fn(kind, reg), corruptions, hard_loss)


def pack(sets: list[str], src: Path, dst: Path) -> None:
    """Copy the source files the sets need from ``src`` into ``dst`` (same relative paths)."""
    total = 0
    for s in sets:
        for rel in SETS[s][2]:
            a, b = src / rel, dst / rel
            if a.is_dir():
                shutil.copytree(a, b, dirs_exist_ok=True)
                total += sum(f.stat().st_size for f in b.rglob("*") if f.is_file())
            else:
                b.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(a, b)
                total += b.stat().st_size
    print(f"packed {', '.join(sets)} into {dst} ({total / 2**20:.1f} MiB)")


# ----------------------------------------------------------------------------- scoring (cached)

SCORER_COLUMNS = {
    "donod": ("r_dot_z", "grad_norm_sq", "n_tokens"),
    "ifd": ("loss", "loss_alone", "ifd", "n_tokens"),
    "selectit": ("selectit", "selectit_mean", "selectit_std", "selectit_digit_mass"),
}


def row_key(row: Row) -> str:
    return hashlib.sha1((row["prompt"] + "\x00" + row["response"]).encode("utf-8")).hexdigest()[:20]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def device_line(lm) -> str:
    import torch

    dev = str(lm.device)
    if dev.startswith("cuda"):
        return (f"{torch.cuda.get_device_name(torch.device(dev))}, torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, {lm.dtype}")
    from tunesift.machine import cpu_model

    cpu = cpu_model()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {lm.dtype}"


class Scorer:
    """Loads the model on first use; scores rows with the library's scoring functions."""

    def __init__(self, args):
        self.args = args
        self.lm = None

    def load(self):
        if self.lm is None:
            from tunesift.models import load_lm
            from tunesift.render import renderer_for
            from tunesift.scoring.logprobs import auto_token_budget

            t = time.perf_counter()
            self.lm = load_lm(self.args.model, device=self.args.device, dtype=self.args.dtype)
            self.renderer = renderer_for(self.lm, "auto", self.args.max_length)
            self.token_budget = self.args.token_budget or auto_token_budget(self.lm)
            self.device = device_line(self.lm)
            print(f"model {self.lm.source} on {self.device}; token budget {self.token_budget} "
                  f"(loaded in {time.perf_counter() - t:.1f} s)", flush=True)
        return self.lm

    def w_sq(self) -> float:
        from tunesift.scoring.donod import lm_head_norm_sq

        return lm_head_norm_sq(self.load().model)

    def score(self, scorer: str, rows: list[Row]) -> np.ndarray:
        from tunesift.backends.blocks import record_errors
        from tunesift.io.records import records_from_rows
        from tunesift.scoring import baselines as bl
        from tunesift.scoring.donod import gradient_stats

        lm = self.load()
        recs = records_from_rows([{"prompt": r["prompt"], "response": r["response"]} for r in rows], source="<noise pool>")
        errs = record_errors("selectit" if scorer == "selectit" else "donod", self.renderer, recs)
        if errs:
            raise SystemExit(f"noise bench: a record cannot be scored: {next(iter(errs.values()))}")
        if scorer == "donod":
            return gradient_stats(lm.model, [self.renderer.sequence(r) for r in recs],
                                  pad_id=lm.tokenizer.pad_token_id, token_budget=self.token_budget)
        fn = bl.ifd_scores if scorer == "ifd" else bl.selectit_scores
        cols = fn(lm, self.renderer, recs, token_budget=self.token_budget)
        return np.stack([np.asarray(cols[c], dtype=np.float64) for c in SCORER_COLUMNS[scorer]], axis=1)


def cached_scores(scorer_obj: Scorer, scorer: str, rows: list[Row], path: Path, chunk: int) -> dict:
    """{row_key: [columns]} for every row, computing the missing ones a chunk at a time (saved after
    each chunk, so a killed run loses at most one chunk)."""
    store = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if store.get("model") not in (None, scorer_obj.args.model) or store.get("max_length") not in (None, scorer_obj.args.max_length):
        store = {}
    got = store.setdefault("rows", {})
    todo, seen = [], set()
    for r in rows:
        k = row_key(r)
        if k not in got and k not in seen:
            todo.append(r)
            seen.add(k)
    if todo:
        scorer_obj.load()
        store.update(model=scorer_obj.args.model, max_length=scorer_obj.args.max_length,
                     columns=list(SCORER_COLUMNS[scorer]), device=scorer_obj.device)
        if scorer == "donod":
            store["w_sq"] = scorer_obj.w_sq()
        todo.sort(key=lambda r: len(r["prompt"]) + len(r["response"]))  # similar lengths batch together
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            t = time.perf_counter()
            out = scorer_obj.score(scorer, part)
            store["seconds"] = store.get("seconds", 0.0) + time.perf_counter() - t
            store["scored"] = store.get("scored", 0) + len(part)
            for r, v in zip(part, out):
                got[row_key(r)] = [float(x) for x in v]
            _write_json(path, store)
            print(f"  {path.stem}: {min(s + chunk, len(todo))}/{len(todo)} records "
                  f"({store['scored'] / store['seconds']:.1f} records/s)", flush=True)
    return store


# ----------------------------------------------------------------------------- method variants


def donod_variants() -> dict[str, dict]:
    """Every DONOD variant the grid reports, by name. Reductions (DonodParams): ``mean`` c = 1/T,
    ``sum`` c = 1, ``sqrt`` c = 1/sqrt(T) (per-token normalised); ``rank``: topsis | don | nod."""
    v: dict[str, dict] = {}
    for red in ("mean", "sum", "sqrt"):
        for eta in (1e-4, 1e-3, 1e-2):
            v[f"donod {red} eta={eta:g}"] = dict(eta=eta, reduction=red, weights=(0.5, 0.5), rank="topsis")
        v[f"DON alone {red}"] = dict(eta=1e-3, reduction=red, rank="don")
        v[f"NOD alone {red}"] = dict(eta=1e-3, reduction=red, rank="nod")
    v["donod mean eta=0.1"] = dict(eta=0.1, reduction="mean", weights=(0.5, 0.5), rank="topsis")
    for w in ((0.7, 0.3), (0.3, 0.7), (0.9, 0.1)):
        v[f"donod mean eta=0.001 w={w[0]:g}/{w[1]:g}"] = dict(eta=1e-3, reduction="mean", weights=w, rank="topsis")
    return v


DEFAULT_DONOD = "donod sqrt eta=0.001"
BASELINES = ("random", "length (longest)", "loss (easiest)", "ifd", "selectit")


def method_names(scorers: list[str]) -> list[str]:
    out = ["random"]
    if "ifd" in scorers:
        out += ["length (longest)", "loss (easiest)", "ifd"]
    if "selectit" in scorers:
        out += ["selectit"]
    if "donod" in scorers:
        out += list(donod_variants())
    return out


def donod_matrix(stats: np.ndarray, w_sq: float, eta: float, reduction: str) -> np.ndarray:
    """(n, 2) DON, NOD from cached (n, 3) eta-free terms, with the library's ``don_nod_from_stats``."""
    from tunesift.scoring.donod import DonodParams, don_nod_from_stats

    return don_nod_from_stats(stats, w_sq, DonodParams(eta, reduction))


def rank(name: str, n: int, cols: dict, w_sq: float) -> list[np.ndarray]:
    """Preference orders (best first) of one method over a pool; several for random (its seeds)."""
    from tunesift.scoring import baselines as bl
    from tunesift.selection.topsis import rank_desc, topsis

    if name == "random":  # as pipeline._random: a seeded permutation
        return [np.random.default_rng(s).permutation(n) for s in range(RANDOM_SEEDS)]
    if name == "length (longest)":  # a control: sum-reduced scores grow with the response length
        return [np.argsort(-cols["n_tokens"], kind="stable")]
    if name == "loss (easiest)":
        return [bl.loss_order(cols["loss"], "easiest")]
    if name == "ifd":
        return [bl.ifd_order(cols["ifd"])]
    if name == "selectit":
        s = cols["selectit"]
        return [np.argsort(np.where(np.isnan(s), np.inf, -s), kind="stable")]
    v = donod_variants()[name]
    dn = donod_matrix(cols["donod"], w_sq, v["eta"], v["reduction"])
    if v["rank"] == "don":
        return [np.argsort(-dn[:, 0], kind="stable")]
    if v["rank"] == "nod":
        return [np.argsort(dn[:, 1], kind="stable")]
    close = topsis(dn, v["weights"], [True, False])
    return [np.argsort(rank_desc(close), kind="stable")]  # as pipeline._donod


def retention(orders: list[np.ndarray], corrupt: np.ndarray, hard: np.ndarray, budget: float) -> dict:
    n = len(corrupt)
    k = max(1, min(n, int(round(budget * n))))
    ck, hk, ca = [], [], []
    for o in orders:
        kept = np.zeros(n, dtype=bool)
        kept[o[:k]] = True
        ck.append(kept[corrupt].mean() if corrupt.any() else float("nan"))
        hk.append(kept[hard].mean() if hard.any() else float("nan"))
        ca.append(kept[corrupt].sum() / k)
    return {"corrupt_kept": float(np.mean(ck)), "hard_kept": float(np.mean(hk)),
            "corrupt_among_kept": float(np.mean(ca)), "k": k}


# ----------------------------------------------------------------------------- the grid


def run_set(name: str, args, scorer_obj: Scorer) -> None:
    out = Path(args.out)
    corrs = [c for c in args.corruptions if c in CORRUPTIONS]
    methods = method_names(args.scorers)
    res_paths = {c: out / "results" / f"{name}.{c}.json" for c in corrs}
    done = {c: json.loads(p.read_text(encoding="utf-8")) if p.exists() else None for c, p in res_paths.items()}
    todo = {c: [m for m in methods if not (done[c] and (done[c].get("records"), done[c].get("seed")) == (args.records, args.seed)
                                           and m in done[c]["methods"])] for c in corrs}
    if not any(todo.values()):
        print(f"{name}: all {len(corrs)} corruptions x {len(methods)} methods done (skipped)")
        return
    t = time.perf_counter()
    ifd_path = out / "scores" / f"{name}.ifd.json"

    def hard_loss(rows: list[Row]) -> np.ndarray:  # the loss column of the (cached) IFD pass
        st = cached_scores(scorer_obj, "ifd", rows, ifd_path, args.chunk)
        return np.array([st["rows"][row_key(r)][0] for r in rows])

    pool = build_set(name, Path(args.data_dir), args.records, args.seed, corrs, hard_loss)
    _write_json(out / "pools" / f"{name}.json", {"base": pool["base"], "corrupt_idx": pool["corrupt_idx"],
                                                "versions": {c: {str(i): r for i, r in v.items()}
                                                             for c, v in pool["versions"].items()}})
    print(f"{name}: pool of {len(pool['base'])} built in {time.perf_counter() - t:.1f} s "
          f"({len(pool['corrupt_idx'])} corrupted per type, "
          f"{sum(r['meta']['group'] == 'hard' for r in pool['base'])} hard-but-clean)", flush=True)
    union = list(pool["base"]) + [r for c in corrs for r in pool["versions"][c].values()]
    needed = sorted({s for c in corrs for m in todo[c] for s in scorers_of(m)})
    stores = {s: cached_scores(scorer_obj, s, union, out / "scores" / f"{name}.{s}.json", args.chunk) for s in needed}
    w_sq = stores["donod"]["w_sq"] if "donod" in stores else float("nan")
    for c in corrs:
        if not todo[c]:
            continue
        rows = pool_rows(pool, c)
        group = np.array([r["meta"]["group"] for r in rows])
        corrupt, hard = group == "corrupt", group == "hard"
        cols = {}
        for s, st in stores.items():
            arr = np.array([st["rows"][row_key(r)] for r in rows], dtype=np.float64)
            if s == "donod":
                cols["donod"] = arr
            else:
                cols.update({cn: arr[:, j] for j, cn in enumerate(SCORER_COLUMNS[s])})
        rec = done[c] if done[c] and (done[c].get("records"), done[c].get("seed")) == (args.records, args.seed) else {
            "set": name, "kind": SETS[name][0], "corruption": c, "records": args.records, "seed": args.seed,
            "n": len(rows), "n_corrupt": int(corrupt.sum()), "n_hard": int(hard.sum()), "methods": {}}
        if "loss" in cols:  # is "hard" really high-loss? mean response loss and length per group
            rec["groups"] = {g: {"loss": float(cols["loss"][group == g].mean()),
                                 "n_tokens": float(cols["n_tokens"][group == g].mean())} for g in ("clean", "hard", "corrupt")}
        rec["model"] = args.model
        rec["device"] = next((st.get("device") for st in stores.values() if st.get("device")), rec.get("device"))
        rec["throughput"] = dict(rec.get("throughput", {}), **{
            s: round(st["scored"] / st["seconds"], 2) for s, st in stores.items() if st.get("seconds")})
        for m in todo[c]:
            orders = rank(m, len(rows), cols, w_sq)
            rec["methods"][m] = {f"{b:g}": retention(orders, corrupt, hard, b) for b in args.budgets}
        _write_json(res_paths[c], rec)
        print(f"{name}/{c}: {len(todo[c])} method variants written", flush=True)


def scorers_of(method: str) -> tuple[str, ...]:
    if method == "random":
        return ()
    if method in ("length (longest)", "loss (easiest)", "ifd"):
        return ("ifd",)
    if method == "selectit":
        return ("selectit",)
    return ("donod",)


# ----------------------------------------------------------------------------- tables and the rule


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "results").glob("*.json"))]


def utility(r: dict) -> float:
    """Per cell: share of hard-but-clean kept minus share of corrupted kept (random ~ 0, ideal 1)."""
    return r["hard_kept"] - r["corrupt_kept"]


def summary(results: list[dict], ref: str = "loss (easiest)") -> list[dict]:
    """Per method over every (set, corruption, budget) cell: mean corrupted and hard kept, and the
    margin over ``ref`` (utility difference): worst case, mean, cells won."""
    cells = defaultdict(dict)
    for rec in results:
        for m, per_b in rec["methods"].items():
            for b, r in per_b.items():
                cells[m][(rec["set"], rec["corruption"], b)] = r
    refc = cells.get(ref, {})
    out = []
    for m, cs in cells.items():
        keys = [k for k in cs if k in refc]
        margins = [utility(cs[k]) - utility(refc[k]) for k in keys]
        out.append({"method": m, "cells": len(cs),
                    "corrupt_kept": float(np.mean([r["corrupt_kept"] for r in cs.values()])),
                    "hard_kept": float(np.mean([r["hard_kept"] for r in cs.values()])),
                    "worst_margin": float(min(margins)) if margins else float("nan"),
                    "mean_margin": float(np.mean(margins)) if margins else float("nan"),
                    "won": sum(x > 0 for x in margins), "of": len(margins)})
    return sorted(out, key=lambda d: (-np.nan_to_num(d["worst_margin"], nan=-9), -d["mean_margin"]))


def choose_donod(summ: list[dict]) -> dict | None:
    """The rule: among DONOD variants, the best worst-case margin over the loss filter (ties: the
    best mean margin)."""
    dv = [d for d in summ if d["method"] in donod_variants() and not math.isnan(d["worst_margin"])]
    return max(dv, key=lambda d: (round(d["worst_margin"], 6), d["mean_margin"])) if dv else None


def _pct(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}"


def render_table(results: list[dict], main_only: bool = False) -> str:
    if not results:
        return "no results yet\n"
    sets = list(dict.fromkeys(r["set"] for r in results))
    corrs = [c for c in CORRUPTIONS if any(r["corruption"] == c for r in results)]
    budgets = sorted({b for r in results for per_b in r["methods"].values() for b in per_b}, key=float)
    by = {(r["set"], r["corruption"]): r for r in results}
    summ = summary(results)
    chosen = choose_donod(summ)
    lines = []
    dev = sorted({r.get("device") or "?" for r in results})
    lines.append(f"Model `{results[0].get('model')}` on {'; '.join(dev)}. Records per pool: "
                 f"{sorted({r['n'] for r in results})}, of which 20% corrupted and 15% hard-but-clean. "
                 f"Cells: % of the corrupted records kept / % of the hard-but-clean records kept "
                 f"(random keeps the budget share of both; lower / higher is better).\n")
    thr = defaultdict(list)
    for r in results:
        for s, v in r.get("throughput", {}).items():
            thr[s].append(v)
    if thr:
        lines.append("Scoring throughput (records/s, mean over sets): "
                     + ", ".join(f"{s} {np.mean(v):.1f}" for s, v in sorted(thr.items())) + "\n")
    lines.append("**Summary over every set, corruption and budget** (margin = (hard kept - corrupted kept) "
                 "minus the loss filter's, in points; worst case over all cells):\n")
    lines.append("| method | corrupted kept | hard kept | worst margin vs loss | mean margin vs loss | cells won |")
    lines.append("|---|---|---|---|---|---|")
    for d in summ:
        if main_only and d["method"] not in BASELINES + (DEFAULT_DONOD,) and (not chosen or d["method"] != chosen["method"]) \
                and not d["method"].startswith(("DON alone mean", "NOD alone mean")):
            continue
        star = " (default)" if d["method"] == DEFAULT_DONOD else ""
        star += " (chosen)" if chosen and d["method"] == chosen["method"] else ""
        lines.append(f"| {d['method']}{star} | {_pct(d['corrupt_kept'])}% | {_pct(d['hard_kept'])}% | "
                     f"{100 * d['worst_margin']:+.0f} | {100 * d['mean_margin']:+.1f} | {d['won']}/{d['of']} |")
    if chosen:
        lines.append(f"\nRule (best worst-case margin over the loss filter among DONOD variants): "
                     f"**{chosen['method']}**, worst case {100 * chosen['worst_margin']:+.0f} points, "
                     f"mean {100 * chosen['mean_margin']:+.1f}.\n")
    groups = [(r["set"], r["groups"]) for r in results if r.get("groups") and r["corruption"] == corrs[0]]
    if groups:
        lines.append("Mean response loss (nats/token) and length (tokens) per group, "
                     f"{corrs[0]} pools:\n")
        lines.append("| set | clean | hard-but-clean | corrupted |")
        lines.append("|---|---|---|---|")
        for s, g in groups:
            lines.append(f"| {s} | " + " | ".join(f"{g[k]['loss']:.2f} ({g[k]['n_tokens']:.0f})" for k in ("clean", "hard", "corrupt")) + " |")
        lines.append("")
    methods = list(dict.fromkeys(m for r in results for m in r["methods"]))
    if main_only:
        keep = set(BASELINES) | {DEFAULT_DONOD, "DON alone mean", "NOD alone mean"} | ({chosen["method"]} if chosen else set())
        methods = [m for m in methods if m in keep]
    for b in budgets:
        for s in sets:
            lines.append(f"\n**{s}** ({SETS.get(s, ('?',))[0]}; hard-but-clean: {HARD_SOURCE.get(s, '?')}), budget {float(b):.0%}:\n")
            lines.append("| method | " + " | ".join(corrs) + " |")
            lines.append("|---|" + "---|" * len(corrs))
            for m in methods:
                cells = []
                for c in corrs:
                    r = by.get((s, c), {}).get("methods", {}).get(m, {}).get(b)
                    cells.append(f"{_pct(r['corrupt_kept'])} / {_pct(r['hard_kept'])}" if r else "")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/datasets", help="folder holding the source datasets")
    ap.add_argument("--out", default="bench/out/noise", help="scores, results and table.md go here")
    ap.add_argument("--records", type=int, default=500, help="records per pool")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma list of {', '.join(SETS)}")
    ap.add_argument("--corruptions", default=",".join(CORRUPTIONS), help=f"comma list of {', '.join(CORRUPTIONS)}")
    ap.add_argument("--scorers", default="donod,ifd,selectit", help="donod, ifd (also the loss filter), selectit")
    ap.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--token-budget", type=int, default=0, help="padded tokens per batch; 0 = auto")
    ap.add_argument("--chunk", type=int, default=256, help="records scored between two cache saves")
    ap.add_argument("--pack", default=None, metavar="DIR", help="copy the source files of --sets into DIR and exit")
    ap.add_argument("--table-only", action="store_true", help="only (re)write the table from the JSON results")
    ap.add_argument("--full-table", action="store_true", help="every DONOD variant in the per-set tables")
    a = ap.parse_args(argv)
    a.sets = [s.strip() for s in a.sets.split(",") if s.strip()]
    a.corruptions = [c.strip() for c in a.corruptions.split(",") if c.strip()]
    a.scorers = [s.strip() for s in a.scorers.split(",") if s.strip()]
    a.budgets = [float(b) for b in a.budgets.split(",")]
    for name, got, allowed in (("set", a.sets, SETS), ("corruption", a.corruptions, CORRUPTIONS),
                               ("scorer", a.scorers, SCORER_COLUMNS)):
        bad = [x for x in got if x not in allowed]
        if bad:
            ap.error(f"unknown {name} '{bad[0]}': use {', '.join(allowed)}")
    if a.records < 10:
        ap.error("--records must be at least 10")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    out = Path(a.out)
    if a.pack:
        pack(a.sets, Path(a.data_dir), Path(a.pack))
        return
    if not a.table_only:
        if not Path(a.data_dir).is_dir():
            sys.exit(f"noise bench: data folder {a.data_dir} not found (use --data-dir, or --pack it first)")
        t0 = time.perf_counter()
        scorer = Scorer(a)
        for s in a.sets:
            run_set(s, a, scorer)
        print(f"grid done in {time.perf_counter() - t0:.1f} s")
    results = [r for r in load_results(out) if r["set"] in a.sets and r["corruption"] in a.corruptions]
    table = render_table(results, main_only=not a.full_table)
    print(table)
    try:
        (out / "table.md").write_text(table, encoding="utf-8")
        (out / "table_full.md").write_text(render_table(results, main_only=False), encoding="utf-8")
        print(f"written {out / 'table.md'} and {out / 'table_full.md'}")
    except OSError as exc:  # e.g. results fetched into a read-only folder: the table is printed above
        print(f"table not written ({exc.strerror}: {out}); --full-table prints every variant")


if __name__ == "__main__":
    main()
