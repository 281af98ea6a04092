"""The evidence grid of issue 17: five benches at 1,000 records, 3 seeds, budgets 10% and 30%.

    python bench/evidence.py prepare                    # inputs from ../shared/datasets -> bench/work/evidence/data
    python bench/evidence.py run instruction [--device cuda] [--only random,rds]
    python bench/evidence.py run all                    # every experiment, in the order below
    python bench/evidence.py plan                       # cells per experiment, how many are done
    python bench/evidence.py summary                    # tables from every finished cell + bench/results/evidence/summary.md
    python bench/evidence.py items                      # per-question exact match into cells made before cells kept it
    python bench/evidence.py run all --smoke            # 40 records, 1 seed, random + rds: does it start?
    python bench/evidence.py precompute task --only delift --device cuda   # a kernel on a lent GPU, for the CPU's cells
    python bench/evidence.py precompute continual --only delift --device cuda  # with the CPU's stage1/ folder carried

Experiments (each one ``tunesift bench`` folder under bench/results/evidence/, resumable: a finished
cell is never rerun, so the grid may span sessions and machines; the settings are pinned per folder).
The finished cells (``<exp>/cells/*.json``, a few kB each) and the settings (``<exp>/bench.json``)
are kept under version control: a fresh clone resumes the grid where the last session stopped.
A GPU run keeps its own grid in bench/results/evidence-cuda/ (its cells are pinned to the device).
The cells' generations and the continual bench's stage-1 models beside them are git-ignored; the
inputs (rebuilt by ``prepare`` from ../shared/datasets and checked against the digests in
bench.json) and most score caches stay under the git-ignored bench/work/evidence/. The caches that
take hours to rebuild and little room to keep (:data:`KEPT_CACHES`: exact DELIFT's model kernel, the
learned utility's labels, the per-record scores) live beside the cells in ``<root>/cache/`` and are
committed with them, so a fresh clone resumes a half-computed kernel instead of starting it again.

1. ``instruction``: 1,000 Alpaca records, 300 held-out Alpaca records, and AlpacaEval's 805
   instructions as a second held-out set (``<metric>@alpaca_eval``).
2. ``task``: a 1,000-record mixed pool (Alpaca 250, GSM8K 250, SVAMP 200, MAWPS 150, P3 150;
   ``meta.source``), target 100 other GSM8K train records, evaluated on 300 GSM8K test records
   (loss and exact-match accuracy of greedy generations of up to 256 tokens).
3. ``noise``: 1,000 GSM8K train records, 20% with another record's answer (``meta.swapped``),
   evaluated on the same 300 GSM8K test records.
4. ``continual``: fine-tune on 300 other GSM8K records first (the existing data, once per seed),
   then on each method's pick of a 1,000-record pool of new domains (Alpaca 400, SVAMP 200, MAWPS
   200, P3 200: the mixed pool's sources less GSM8K); every selector that scores with a model scores
   with the seed's stage-1 model, the one its pick trains; evaluated on both domains: Alpaca (test)
   and GSM8K (``<metric>@gsm8k``: what the pick made the model forget).
5. ``transfer``: the picks of experiment 1 (SmolLM2-135M selects; same cache, so the same picks),
   trained and evaluated on Gemma 3 270M.

Methods: base and full (the references), random, balanced-random (``--by meta.source``, mixed
pools only: on a one-source pool it is random), random-gsm8k (task stage: random among the pool's
GSM8K records, the target's own source; a control that knows the source labels), random-alpaca
(continual stage: random among the pool's Alpaca records, the Alpaca test's own domain), rds, delift (the
model's utilities on the 16 nearest candidates per record; ``--dense-delift``: every pair, on a
GPU), delift-learned (the learned surrogate, 10% of the pairs scored), delift-se, donod,
donod+delift, ifd, less in the task stage, and the loss filter (``loss``, keep the easiest) in the noise
stage, DONOD's rival there. Training: LoRA, 2 epochs, batches of 8, lr 5e-4, no activation
checkpointing (``--checkpointing on`` gives the same cells bit for bit with less memory, 1.5x
slower; the noise bench's first 8 cells ran with it on); float32 on a CPU, but bfloat16 autocast in
task and noise, begun on a Xeon with AMX (:data:`CPU_AUTOCAST`); bfloat16 on a GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

from tunesift.bench import (
    BenchConfig,
    backfill_items,
    cell_name,
    grid_cells,
    has_stage1,
    load_cells,
    run_bench,
    stage1_done,
)
from tunesift.bench_tables import (
    FULL_NOTE,
    ITEM_NOTE,
    PARTLY_CACHED,
    aggregate,
    cost_complete,
    cost_text,
    family_lines,
    full_lines,
    glance_table,
    item_lines,
    provenance_table,
    select_text,
    verdict_lines,
    write_results,
)
from tunesift.errors import TunesiftError
from tunesift.finetune import TrainConfig
from tunesift.io.files import input_checksum
from tunesift.machine import banner
from tunesift.methods.options import resolve_budget

EXPERIMENTS = ("instruction", "task", "noise", "continual", "transfer")
BUDGETS = [0.1, 0.3]
SELECTORS = ["random", "rds", "delift", "delift-learned", "delift-se", "donod", "donod+delift", "ifd"]
METHODS = {
    "instruction": ["base", *SELECTORS, "full"],
    "task": ["base", "random", "balanced-random", "random-gsm8k", *SELECTORS[1:], "less", "full"],
    # the loss filter too: DONOD's claim is that it beats the plain loss filter on noisy data
    "noise": ["base", *SELECTORS, "loss", "full"],
    # random-alpaca: a control for a pick that is mostly Alpaca (the domain the Alpaca test measures)
    "continual": ["base", "random", "balanced-random", "random-alpaca", *SELECTORS[1:], "full"],
    # the issue names these four selectors and no budget or full-data row for transfer: one budget
    "transfer": ["base", "random", "rds", "delift", "delift-se", "donod"],
}
BUDGETS_OF = {"transfer": [0.3]}  # the default budgets where an experiment has fewer
VARIANTS = {"delift-learned": {"method": "delift", "utility": "learned", "label_fraction": 0.1},
            "balanced-random": {"by": "meta.source"},
            "random-gsm8k": {"method": "random", "within": "meta.source=gsm8k"},
            "random-alpaca": {"method": "random", "within": "meta.source=alpaca"}}
GLANCE_MACHINES = ("Columns of different experiments may come from different machines and precisions (each "
                   "table's \"Where the cells were made\"): compare within a column.")
# CPU training precision per experiment, pinned in each folder's settings. task and noise began on a
# Xeon with AMX, where bfloat16 autocast trains ~2.2x faster; on a CPU without AVX512-BF16 or AMX
# (the sessions' AMD EPYC) bfloat16 is emulated and trains 9.5x slower than float32, and which CPU a
# session gets varies, so the experiments begun later train in float32 ("none"): one speed on both.
CPU_AUTOCAST = {"task": "bfloat16", "noise": "bfloat16"}
SMOKE = {"train": 40, "test": 10, "target": 10, "existing": 20, "seeds": 1, "methods": ["random", "rds"]}


# -- inputs ------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


#: the files prepare writes under the data folder (stems)
INPUTS = ("alpaca_pool", "alpaca_test", "alpaca_eval", "gsm8k_test", "gsm8k_noisy", "mixed_pool", "gsm8k_target",
          "gsm8k_existing", "continual_pool")


def _write(path: Path, rows: list[dict]) -> None:
    """JSONL; a row without an id gets ``<file stem>-<line>`` (readable ids in the bench cells)."""
    from tunesift.store import write_text

    # atomic: a kill while prepare writes leaves the file missing (run then prepares again), never cut short
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(json.dumps({"id": f"{path.stem}-{i + 1:04d}", **r}, ensure_ascii=False) + "\n"
                             for i, r in enumerate(rows)))
    print(f"{path}: {len(rows)} records")


def _alpaca(row: dict) -> dict:
    prompt = row["instruction"] + (("\n\n" + row["input"]) if row.get("input") else "")
    return {"prompt": prompt, "response": row["output"]}


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _first_of_each(rows: list[dict]) -> list[dict]:
    """``rows`` without repeats of a prompt: compared on its letters and digits only, lower case
    (``"90,171 people"`` and ``"90171  People"`` are one problem)."""
    seen, out = set(), []
    for r in rows:
        key = re.sub(r"[\W_]+", "", r["prompt"].lower())
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def prepare(shared: Path, out: Path, seed: int = 0) -> None:
    """Write the grid's inputs (prompt/response JSONL) under ``out``; disjoint draws from seeded
    shuffles of each source, so every file is the same on every machine."""
    rng = random.Random(seed)
    al = [_alpaca(r) for r in json.loads((shared / "alpaca_random_9k" / "random_9k.json").read_text("utf-8"))
          if r["output"].strip()]
    rng.shuffle(al)
    gs = [{"prompt": r["question"], "response": r["answer"]} for r in _jsonl(shared / "gsm8k" / "train.jsonl")]
    rng.shuffle(gs)
    gt = [{"prompt": r["question"], "response": r["answer"]} for r in _jsonl(shared / "gsm8k" / "test.jsonl")]
    rng.shuffle(gt)
    sv = [{"prompt": f"{r['Body'].strip()} {r['Question'].strip()}", "response": _number(r["Answer"])}
          for r in json.loads((shared / "svamp" / "SVAMP.json").read_text("utf-8"))]
    rng.shuffle(sv)
    mw = [{"prompt": r["input"], "response": _number(r["target"])} for r in _jsonl(shared / "mawps" / "test.jsonl")]
    rng.shuffle(mw)
    # MAWPS repeats problems across its parts (AddSub, SingleEq: 215 of 2,065): keep the first of
    # each after the shuffle (dropping them before it would change every later draw, the noise
    # pool's included)
    mw = _first_of_each(mw)
    p3 = [{"prompt": r["prompt"].strip(), "response": r["completion"].replace("<|endoftext|>", "").strip()}
          for f in sorted((shared / "p3_t0_subset").glob("*.jsonl")) for r in _jsonl(f)]
    p3 = [r for r in p3 if r["prompt"] and r["response"]]
    rng.shuffle(p3)

    _write(out / "alpaca_pool.jsonl", al[:1000])
    _write(out / "alpaca_test.jsonl", al[1000:1300])
    ev = [{"prompt": r["instruction"], "response": r["output"]} for r in _jsonl(shared / "alpaca_eval" / "alpaca_eval.jsonl")]
    # the file runs sub-set by sub-set (helpful_base first): shuffled, so the first generate_limit
    # records a bench generates for sample all five; its own generator leaves rng's draws as they were
    random.Random(seed + 1).shuffle(ev)
    _write(out / "alpaca_eval.jsonl", ev)
    _write(out / "gsm8k_test.jsonl", gt[:300])
    noisy = [dict(r, meta={"swapped": False}) for r in gs[:1000]]
    swap = sorted(rng.sample(range(1000), 200))  # 20%: a cyclic shift of answers among the chosen
    answers = [noisy[i]["response"] for i in swap]
    for n, i in enumerate(swap):
        noisy[i] = {"prompt": noisy[i]["prompt"], "response": answers[(n + 1) % len(swap)], "meta": {"swapped": True}}
    _write(out / "gsm8k_noisy.jsonl", noisy)
    mixed = ([dict(r, meta={"source": "alpaca"}) for r in al[1300:1550]]
             + [dict(r, meta={"source": "gsm8k"}) for r in gs[1000:1250]]
             + [dict(r, meta={"source": "svamp"}) for r in sv[:200]]
             + [dict(r, meta={"source": "mawps"}) for r in mw[:150]]
             + [dict(r, meta={"source": "p3"}) for r in p3[:150]])
    rng.shuffle(mixed)
    _write(out / "mixed_pool.jsonl", mixed)
    _write(out / "gsm8k_target.jsonl", gs[1250:1350])
    _write(out / "gsm8k_existing.jsonl", gs[1350:1650])
    # the continual bench's new pool: the mixed pool's sources less GSM8K, the existing data's own
    # domain (a pick that trains on GSM8K again would look as if it forgot less); later slices of
    # the same shuffles and its own generator, so every file above stays as it was
    new = ([dict(r, meta={"source": "alpaca"}) for r in al[1550:1950]]
           + [dict(r, meta={"source": "svamp"}) for r in sv[200:400]]
           + [dict(r, meta={"source": "mawps"}) for r in mw[150:350]]
           + [dict(r, meta={"source": "p3"}) for r in p3[150:350]])
    random.Random(seed + 2).shuffle(new)
    _write(out / "continual_pool.jsonl", new)


def smoke_inputs(data: Path, out: Path) -> Path:
    """The first records of every input (SMOKE sizes) under ``out``: a grid that starts in minutes."""
    sizes = {"alpaca_pool": "train", "mixed_pool": "train", "continual_pool": "train", "gsm8k_noisy": "train",
             "alpaca_test": "test",
             "alpaca_eval": "test", "gsm8k_test": "test", "gsm8k_target": "target", "gsm8k_existing": "existing"}
    for name, kind in sizes.items():
        rows = _jsonl(data / f"{name}.jsonl")
        if name in ("mixed_pool", "continual_pool"):  # keep every source in the small pool
            by = {}
            for r in rows:
                by.setdefault(r["meta"]["source"], []).append(r)
            rows = [r for i in range(SMOKE["train"]) for g in by.values() if i < len(g) for r in [g[i]]]
        _write(out / f"{name}.jsonl", rows[:SMOKE[kind]])
    return out


# -- the experiments -----------------------------------------------------------------------------


#: methods whose score caches are kept with the cells (``<root>/cache/<exp>/<method>``, committed):
#: hours of model passes to rebuild (exact DELIFT's kernel: 2-3 h per pool on a 2-core CPU, more
#: than a session has for the grid; the learned utility's labels; DONOD, the loss filter and IFD:
#: one or two passes per record), kilobytes to a few megabytes to keep (the pairs' utilities, one
#: score per record, the kNN's MiniLM embeddings). rds's hidden states, LESS's gradient features
#: (tens of MB) and DELIFT (SE)'s embeddings (seconds) stay in the git-ignored cache.
KEPT_CACHES = ("delift", "delift-learned", "donod", "donod+delift", "loss", "ifd")


def config(exp: str, data: Path, caches: Path, a, kept: Path | None = None) -> BenchConfig:
    """The bench settings of one experiment (``a``: the command line; ``caches``: the score caches'
    folder; ``kept``: the folder of the caches kept with the cells, for :data:`KEPT_CACHES`;
    None: those too under ``caches``)."""
    pools = {"instruction": "alpaca_pool", "transfer": "alpaca_pool", "task": "mixed_pool", "noise": "gsm8k_noisy",
             "continual": "continual_pool"}
    tests = {"instruction": "alpaca_test", "transfer": "alpaca_test", "task": "gsm8k_test", "noise": "gsm8k_test",
             "continual": "alpaca_test"}
    share = "instruction" if exp == "transfer" else exp  # transfer reuses experiment 1's picks
    cache = caches / share
    math = exp in ("task", "noise")
    methods = METHODS[exp]
    if a.smoke:
        methods = [m for m in SMOKE["methods"] if m in methods]
    if a.only:
        keep = [m.strip() for m in a.only.split(",")]
        methods = [m for m in methods if m in keep]
    opts = {k: v for k, v in VARIANTS.items() if k in methods}
    if a.dense_delift:
        opts["delift"] = {"knn": 0}
    # each method its own score cache: methods that share scores (donod+delift runs DONOD; delift
    # and delift-learned share model pairs) would otherwise read another's and report a selection
    # cost near zero; transfer keeps reading experiment 1's, method by method
    def home(m: str) -> Path:  # not a pinned setting: a method whose scores move keeps its cells
        return (kept if kept is not None and m in KEPT_CACHES else caches) / share / m

    opts = {m: {**opts.get(m, {}), "cache_dir": str(home(m))} for m in methods if m not in ("base", "full")}
    device = resolved_device(a.device)
    return BenchConfig(
        train=str(data / f"{pools[exp]}.jsonl"), test=str(data / f"{tests[exp]}.jsonl"), methods=methods,
        budgets=budgets_of(exp, a),
        seeds=SMOKE["seeds"] if a.smoke else a.seeds,
        stage={"task": "task", "continual": "continual"}.get(exp, "instruction"),
        target=str(data / "gsm8k_target.jsonl") if exp == "task" else None,
        existing=str(data / "gsm8k_existing.jsonl") if exp == "continual" else None,
        # the continual design scores with the stage-1 model, which is the train model's: with
        # other --select-model / --train-model it selects with the select model as given
        continual="sequential", select_with_stage1=exp == "continual" and (a.select_model or "default") == (
            a.train_model or "default"),
        select_model=a.select_model or "default",
        train_model=a.train_model or ("gemma3-270m" if exp == "transfer" else "default"),
        select_options={"knn": a.knn, "max_length": 1024, "cache_dir": str(cache)},
        method_options=opts,
        training=TrainConfig(epochs=1 if a.smoke else 2, batch_size=8, lr=5e-4, autocast=autocast_of(exp, a.autocast, device),
                             max_length=1024, checkpointing=a.checkpointing == "on"),
        metrics=None,  # per set: loss, perplexity, ROUGE-L, MiniLM cosine (+ exact match on GSM8K)
        max_new_tokens=32 if a.smoke else (256 if math else 128),
        generate_limit=4 if a.smoke else (300 if math else 100),
        also_test={"instruction": {"alpaca_eval": str(data / "alpaca_eval.jsonl")},
                   "continual": {"gsm8k": str(data / "gsm8k_test.jsonl")}}.get(exp, {}),
        # the continual bench's GSM8K set (forgetting) gets the task and noise benches' generation:
        # all 300 answers, 256 tokens (a worked solution runs past 128 before its "####")
        also_generation={"gsm8k": {"max_new_tokens": 32 if a.smoke else 256,
                                   "generate_limit": 4 if a.smoke else 300}} if exp == "continual" else {},
        device=device)


def autocast_of(exp: str, given: str | None, device: str) -> str:
    """An experiment's training precision: ``given`` (``--autocast``) where given, else bfloat16 on
    a GPU and, on a CPU, :data:`CPU_AUTOCAST`'s (float32, ``none``, for the experiments not in it)."""
    if given:
        return given
    return "bfloat16" if device != "cpu" else CPU_AUTOCAST.get(exp, "none")


def budgets_of(exp: str, a) -> list[float]:
    """The budgets an experiment runs: its own (:data:`BUDGETS_OF`, else :data:`BUDGETS`), or those
    of ``--budgets`` among them (transfer's design has 30% only: ``--budgets 0.1`` runs none of it)."""
    own = list(BUDGETS_OF.get(exp, BUDGETS))
    if not a.budgets:
        return own
    given = [float(b) for b in a.budgets.split(",")]
    return [b for b in given if b in own] if exp in BUDGETS_OF else given


def skipped(cfg: BenchConfig) -> str | None:
    """Why an experiment has nothing to run under ``--only`` / ``--budgets``, or None."""
    if not cfg.methods:
        return "none of --only's methods is one of its methods"
    if not cfg.budgets:
        return "none of --budgets is one of its budgets"
    return None


def resolved_device(device: str) -> str:
    """``auto`` as the device it means here: pinned in the bench settings, so that a CPU run (float32)
    and a GPU run (bfloat16) of the grid never mix their cells in one folder."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def folders(a) -> tuple[Path, Path, Path, Path]:
    """(data folder, bench root, score caches, kept caches): the root is bench/results/evidence (kept
    under version control; bench/results/evidence-cuda for a GPU run, whose cells are pinned to
    another device and never mix with the CPU's) or, with --smoke, bench/work/evidence-smoke; data
    and caches are git-ignored, apart from :data:`KEPT_CACHES`', which live beside the cells under
    ``<root>/cache``."""
    work = Path(a.work) / ("evidence-smoke" if a.smoke else "evidence")
    device = resolved_device(a.device)
    root = work if a.smoke else Path(a.results) / ("evidence" if device == "cpu" else f"evidence-{device.split(':')[0]}")
    return Path(a.work) / "evidence" / "data", root, work / "cache", root / "cache"


def prepared(a, data: Path) -> None:
    """Prepare the inputs from ../shared/datasets where any is missing (a fresh clone): each file
    is written atomically, and the benches' bench.json digests refuse a different draw."""
    if not all((data / f"{name}.jsonl").exists() for name in INPUTS):
        prepare(Path(a.shared), data)


def run(a) -> None:
    data, root, caches, kept = folders(a)
    prepared(a, data)
    if a.smoke:
        data = smoke_inputs(data, root / "data")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for exp in (EXPERIMENTS if a.experiment == "all" else [a.experiment]):
        cfg = config(exp, data, caches, a, kept)
        if why := skipped(cfg):
            print(f"\n== {exp}: skipped ({why})", flush=True)
            continue
        print(f"\n== {exp}: {len(cfg.methods)} methods x {cfg.budgets} x {cfg.seeds} seeds -> {root / exp}", flush=True)
        rows = run_bench(cfg, root / exp)
        print((root / exp / "results.md").read_text(encoding="utf-8"))
        print(f"{exp}: {len(rows)} rows", flush=True)


def selection_sets(cfg: BenchConfig) -> dict:
    """The records a selection reads, as :func:`tunesift.bench.select_for_cell` takes them: the pool
    (``train``) and the target or existing set where the experiment has one (else None)."""
    from tunesift.io.records import read_records

    return {"train": read_records(cfg.train), "target": read_records(cfg.target) if cfg.target else None,
            "existing": read_records(cfg.existing) if cfg.existing else None}


def precompute(a) -> None:
    """Fill the kept score caches (:data:`KEPT_CACHES`) that an experiment's cells will read by
    running each method's selection alone, on ``--device``, at the experiment's first budget for
    each of ``--seeds`` (a seeded method, such as learned DELIFT's label draw, scores per seed;
    exact DELIFT's kernel is scored once and read by the other seeds); no cell is written. For a
    lent GPU: exact DELIFT's kernel takes it minutes where the 2-core CPU takes an hour. The
    models score in float32, as the CPU grid's do, and the caches go where the CPU grid keeps
    them: their keys cover the model, dtype, token ids and candidate pattern, not the device, so
    the CPU's cells read these scores (each cell's ``score_cache`` counts say its selection was
    cached). Settings the CPU grid's folder pinned (``--knn``, the select model, a method's
    options or revision) must match, or nothing runs. Prints each selection's wall time.

    Continual's selectors score with each seed's stage-1 model: precompute reads the ones the CPU's
    cells trained (``<root>/continual/stage1/s<seed>/``, git-ignored: carry them to the GPU) and skips
    a seed without one rather than train another model there (its adapter's weights are in the score
    cache's key, so a GPU-trained stage 1 would fill caches the CPU's cells never read)."""
    import time
    from types import SimpleNamespace

    from tunesift.bench import pin_method_options, select_for_cell, stage1_selects

    data, root, caches, kept = folders(SimpleNamespace(**{**vars(a), "device": "cpu"}))  # the CPU grid's folders
    prepared(a, data)
    for exp in (EXPERIMENTS if a.experiment == "all" else [a.experiment]):
        cfg = config(exp, data, caches, a, kept)
        cfg.methods = [m for m in cfg.methods if m in KEPT_CACHES]
        if why := (skipped(cfg) if cfg.methods else "no method of it keeps its scores"):
            print(f"== {exp}: skipped ({why})", flush=True)
            continue
        # continual: a selector that scores with its seed's stage-1 model reads the one the CPU's cells
        # trained (carried here under <root>/continual/stage1/); one trained here would be another
        # model, whose scores the CPU's cells never read, so a seed without it is skipped, not trained
        stage1_seeds = [s for s in range(cfg.seeds) if stage1_done(root / exp, s)]
        missing = [s for s in range(cfg.seeds) if s not in stage1_seeds]
        if missing and any(stage1_selects(cfg, m) for m in cfg.methods):
            print(f"== {exp}: seed {', '.join(map(str, missing))} skipped for the methods that score with the "
                  f"seed's stage-1 model: none under {root / exp / 'stage1'} (the CPU's cells train them; carry "
                  "that folder)", flush=True)
        pinned = root / exp / "bench.json"
        if pinned.exists():  # the CPU grid's settings: a kernel under other keys would never be read
            old = json.loads(pinned.read_text(encoding="utf-8"))
            pin_method_options(old, cfg, root / exp)  # a method's other options or revision: refused
            for key, mine in (("knn", cfg.select_options["knn"]), ("max_length", cfg.select_options["max_length"]),
                              ("select_model", cfg.select_model)):
                theirs = old["config"]["select_options"].get(key) if key != "select_model" else old["config"][key]
                if theirs != mine:
                    raise TunesiftError(f"{pinned}: the grid selects with {key} {theirs}, precompute with {mine}")
        cfg.select_options["dtype"] = "float32"
        sets = selection_sets(cfg)
        for m in cfg.methods:
            for seed in (stage1_seeds if stage1_selects(cfg, m) else range(cfg.seeds)):
                t = time.perf_counter()
                chosen, select_s, counts = select_for_cell(cfg, m, cfg.budgets[0], seed, sets, None, out=root / exp)
                print(f"{exp} {m} seed {seed}: {len(chosen)} picked at {cfg.budgets[0]}, selection {select_s:.1f} s "
                      f"(wall {time.perf_counter() - t:.1f} s) on {cfg.device}; cache blocks read {counts['cached']}, "
                      f"written {counts['written']}", flush=True)


def records_trained(method: str, budget, pool: int) -> int:
    """Records a cell fine-tunes on: none for base, the pool for full, else the budget's share
    (a fraction of the pool, or a count)."""
    if method == "base":
        return 0
    if method == "full":
        return pool
    return resolve_budget(budget, pool)


def hours_left(todo: list[int], finished: list[dict], extra_records: int = 0) -> float | None:
    """Hours the cells still to run will take to fine-tune and evaluate, at the rates ``finished``
    cells measured (this machine's): training seconds per trained record
    (sum train_s / sum n_train), plus the mean evaluation time per cell. ``todo``: records each
    remaining cell trains on; ``extra_records``: training outside the cells (a continual bench's
    stage 1 not yet trained). Selections are not counted (cached, or a method's own cost); None
    without a finished cell that trained to measure from."""
    trained = [c for c in finished if c.get("n_train")]
    if not trained:
        return None
    per_record = sum(c["train_s"] for c in trained) / sum(c["n_train"] for c in trained)
    evaluate = sum(c["eval_s"] for c in finished) / len(finished)
    return (sum(per_record * n + evaluate for n in todo) + per_record * extra_records) / 3600


def plan(a) -> None:
    data, root, caches, kept = folders(a)
    prepared(a, data)  # the pools' sizes set the records each cell trains on
    total = done = 0
    measured = {exp: load_cells(root / exp) for exp in EXPERIMENTS}
    everything = [c for cells in measured.values() for c in cells]
    left_total = 0.0
    for exp in EXPERIMENTS:
        cfg = config(exp, data, caches, a, kept)
        if why := skipped(cfg):
            print(f"{exp:12s} skipped ({why})")
            continue
        cells = grid_cells(cfg)
        missing = [c for c in cells if not (root / exp / "cells" / f"{cell_name(*c)}.json").exists()]
        have = len(cells) - len(missing)
        total, done = total + len(cells), done + have
        pool = len(_jsonl(Path(cfg.train)))
        # stage 1 of a sequential continual bench: the existing data, once per seed not yet trained
        stage1 = 0
        if has_stage1(cfg) and missing:
            untrained = sum(not stage1_done(root / exp, s) for s in range(cfg.seeds))
            stage1 = untrained * len(_jsonl(Path(cfg.existing))) * cfg.training.epochs
        # an experiment's own rates once it has a cell that trained (base alone does not)
        rates = measured[exp] if any(c.get("n_train") for c in measured[exp]) else everything
        hours = hours_left([records_trained(m, b, pool) for m, b, _ in missing], rates, stage1)
        left_total += hours or 0.0
        eta = "" if hours is None or not missing else f"   ~{hours:.0f} h left"
        print(f"{exp:12s} {have:4d} of {len(cells):4d} cells done{eta}   methods: {', '.join(cfg.methods)}")
    print(f"{'all':12s} {done:4d} of {total:4d}" + (f"   ~{left_total:.0f} h of fine-tuning and evaluation left at "
                                                     "this machine's measured rates (selections not counted; "
                                                     "an experiment without cells uses the others' rates: a lower bound for transfer's larger model)"
                                                     if left_total else ""))


def composition(cells: list[dict], pool: Path, key: str) -> dict[str, dict[str, float]]:
    """Per (method, budget): the mean share of each value of ``meta.<key>`` among the records each
    cell (a finished cell's JSON) picked."""
    meta = {r["id"]: str(r.get("meta", {}).get(key)) for r in _jsonl(pool)}
    shares: dict[str, list[Counter]] = {}
    for c in cells:
        if c["method"] in ("base", "full") or not c["selected_ids"]:
            continue
        got = Counter(meta.get(i, "?") for i in c["selected_ids"])
        shares.setdefault(f"{c['method']} @ {c['budget']}", []).append(
            Counter({k: v / len(c["selected_ids"]) for k, v in got.items()}))
    return {k: {v: round(sum(c[v] for c in cs) / len(cs), 3) for v in sorted({x for c in cs for x in c})}
            for k, cs in shares.items()}


def shared_selection_cost(*experiments: list[dict]) -> None:
    """Experiments that share one score cache (``transfer`` reads ``instruction``'s) pay a
    method's selection once, in whichever ran it first; the other reads its picks back in a
    second. Every cell of a method gets the largest ``select_s`` measured in any of them (in place),
    so that each table shows what the pick costs, not what reading it back costs."""
    most: dict[str, float] = {}
    every = [c for cells in experiments for c in cells]
    for c in every:
        most[c["method"]] = max(most.get(c["method"], 0.0), float(c["select_s"]))
    for c in every:
        c["select_s"] = most[c["method"]]
        # the cost is whole if any experiment's cell of the method selected from a cold cache
        c["cost_from_cold"] = cost_complete([x for x in every if x["method"] == c["method"]])


def same_picks(transfer: list[dict], instruction: list[dict]) -> str:
    """A line on whether transfer's cells trained on experiment 1's picks (the same ids for the
    same method, budget and seed), as the design says: a changed setting or a lost score cache
    recomputed elsewhere would make them differ silently."""
    theirs = {(c["method"], c["budget"], c["seed"]): c["selected_ids"] for c in instruction}
    keyed = [((c["method"], c["budget"], c["seed"]), c["selected_ids"]) for c in transfer if c["method"] != "base"]
    both = [(k, ids) for k, ids in keyed if k in theirs]
    differ = [f"{m} @ {b} seed {s}" for (m, b, s), ids in both if sorted(ids) != sorted(theirs[(m, b, s)])]
    if differ:
        return ("\n**Transfer's picks differ from instruction's** (the design trains Gemma on experiment 1's "
                f"picks): {', '.join(differ)}.\n")
    return (f"\nTransfer's picks are instruction's: {len(both)} of {len(keyed)} cells checked "
            "(the others have no instruction cell yet).\n")


def _num(v) -> str:
    return "" if v is None or v != v else f"{v:.3g}"  # v != v: NaN


def summary(a) -> None:
    data, root, caches, kept = folders(a)
    prepared(a, data)  # the picks' composition reads the pools
    parts = ["# Evidence grid: what is done\n\nEach experiment's table says on which machines and code "
             "versions its cells were made (results.md, \"Where the cells were made\").\n"]
    # every finished cell of the grid, whichever run made it (load_cells reads the whole folder)
    configs = {exp: config(exp, data, caches, a, kept) for exp in EXPERIMENTS}
    done = {exp: load_cells(root / exp) for exp in EXPERIMENTS}
    shared_selection_cost(done["instruction"], done["transfer"])  # one score cache: see config()
    tables = {exp: aggregate(done[exp]) for exp in EXPERIMENTS}
    if glance := glance_table({exp: rows for exp, rows in tables.items() if rows}):
        parts.append(f"## At a glance: held-out loss against random\n\n{glance}\n{GLANCE_MACHINES}\n")
    for exp in EXPERIMENTS:
        cfg, cells, rows = configs[exp], done[exp], tables[exp]
        if not rows:
            parts.append(f"## {exp}\n\nnot run yet\n")
            continue
        write_results(root / exp, rows, cfg, cells)
        parts.append(f"## {exp}\n\nFull table: `{root / exp / 'results.md'}`.\n\nBeyond the seed spread:\n\n"
                     + "\n".join(verdict_lines(rows) + family_lines(rows)) + "\n")
        if items := item_lines(rows):
            parts.append("Question by question:\n\n" + "\n".join(items) + f"\n\n{ITEM_NOTE}\n")
        if whole := full_lines(cells):
            parts.append("Full data against random:\n\n" + "\n".join(whole) + f"\n\n{FULL_NOTE}\n")
        parts.append("| method | budget | select s | train s | select / train | (select + train) / full train |\n"
                     "|---|---|---|---|---|---|\n" + "".join(
                         f"| {r['method']} | {r['budget']} | {select_text(r)} | {r['train_s']:.1f} | "
                         f"{cost_text(r, 'cost_ratio', _num)} | {cost_text(r, 'total_vs_full', _num)} |\n"
                         for r in rows if r["method"] != "base"))
        if any("select_partly_cached" in r for r in rows):
            parts.append(f"\n{PARTLY_CACHED}\n")
        parts.append(f"\nWhere the cells were made:\n\n{provenance_table(cells)}")
        if exp == "transfer":
            parts.append(same_picks(cells, done["instruction"]))
        key = {"noise": "swapped", "task": "source", "continual": "source"}.get(exp)
        pinned = json.loads((root / exp / "bench.json").read_text("utf-8")).get("inputs", {}).get("train")
        if key and pinned != input_checksum(cfg.train):
            parts.append(f"\nWhat the picks are made of: not shown, {cfg.train} is not the pool the cells were "
                         "made from (its digest differs from bench.json's).\n")
        elif key:
            comp = composition(cells, Path(cfg.train), key)
            parts.append(f"\nWhat the picks are made of (`meta.{key}`, mean share over seeds):\n\n"
                         + "\n".join(f"- {k}: {v}" for k, v in comp.items()) + "\n")
    out = root / "summary.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    print(out.read_text(encoding="utf-8"))


def items(a) -> None:
    """Per-question exact match (``cell["items"]``) for the cells made before cells kept it, from
    their generations on this machine (:func:`tunesift.bench.backfill_items`; each is checked
    against the cell's own exact-match share): the test set's only (a further set's generations
    are not saved). An experiment whose folder is refused gets nothing written, the others go on,
    and the exit status is 2. Then run ``summary``."""
    data, root, caches, kept = folders(a)
    prepared(a, data)
    failed = False
    for exp in EXPERIMENTS:
        cfg = config(exp, data, caches, a, kept)
        if not (root / exp / "cells").is_dir():
            continue
        try:  # each folder is checked whole before any of its cells is written
            updated, missing = backfill_items(root / exp, cfg.test)
        except TunesiftError as e:
            print(f"{exp}: nothing written: {e}")
            failed = True
            continue
        print(f"{exp}: per-question results added to {len(updated)} cell{'' if len(updated) == 1 else 's'}"
              + (f"; {len(missing)} without generations on this machine: {', '.join(missing)}" if missing else ""))
    if failed:
        sys.exit(2)


def arg_parser() -> argparse.ArgumentParser:
    """The command line of this script (also how bench/pick_objective.py gets the grid's settings)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("prepare", "run", "precompute", "plan", "summary", "items"))
    ap.add_argument("experiment", nargs="?", default="all", choices=(*EXPERIMENTS, "all"))
    ap.add_argument("--work", default="bench/work", help="inputs, score caches, generations (git-ignored)")
    ap.add_argument("--results", default="bench/results",
                    help="the grid's finished cells and tables, under <results>/evidence (version-controlled)")
    ap.add_argument("--shared", default="../shared/datasets")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--knn", type=int, default=16, help="DELIFT / DELIFT (SE): nearest candidates per record")
    ap.add_argument("--dense-delift", action="store_true", help="delift scores every pair (knn 0): for a GPU")
    ap.add_argument("--only", default=None, help="comma list: run only these methods of each experiment")
    ap.add_argument("--budgets", default=None,
                    help=f"comma list: run only these budgets (default {','.join(map(str, BUDGETS))}); cells join the same grid")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--autocast", choices=("none", "bfloat16"), default=None,
                    help="training precision (default: bfloat16 on a GPU; on a CPU bfloat16 for task and noise, "
                         "which began so, float32 (none) for the others, as bfloat16 is emulated ~9.5x slower "
                         "on a CPU without AVX512-BF16 or AMX); pinned per folder")
    ap.add_argument("--checkpointing", choices=("on", "off"), default="off",
                    help="recompute decoder layers in backward: the same cells bit for bit, ~1.5x slower "
                         "training, less memory (off: ~3.3 GB peak at 2,048-token micro-batches)")
    ap.add_argument("--smoke", action="store_true", help="40 records, 1 seed, random + rds, 1 epoch")
    ap.add_argument("--select-model", default=None, help="instead of SmolLM2-135M (default)")
    ap.add_argument("--train-model", default=None, help="instead of SmolLM2-135M (Gemma 3 270M for transfer)")
    return ap


def main(argv=None) -> None:
    ap = arg_parser()
    a = ap.parse_args(argv)
    if a.only and (unknown := [m for m in (x.strip() for x in a.only.split(",")) if m
                               and not any(m in methods for methods in METHODS.values())]):
        ap.error(f"--only: no experiment has the method(s) {', '.join(unknown)} "
                 f"(methods: {', '.join(dict.fromkeys(m for ms in METHODS.values() for m in ms))})")
    print(banner(), flush=True)
    if a.command == "prepare":
        prepare(Path(a.shared), folders(a)[0])
    else:
        {"run": run, "precompute": precompute, "plan": plan, "summary": summary, "items": items}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
