"""Select -> fine-tune -> evaluate, for every method, budget and seed; then tables and plots.

A *cell* is one (method, budget, seed): select ``budget`` records of the training pool with the
method (seeded), fine-tune a fresh copy of the training model on them (same seed), evaluate on the
test set. ``full`` trains on the whole pool and ``base`` evaluates the model without fine-tuning
(one cell each per seed / once). Each finished cell is written to ``OUT/cells/<cell>.json`` at
once, so a rerun skips it (resume); the settings are pinned in ``OUT/bench.json`` and a rerun
with other settings is refused rather than mixing results. Methods, budgets and seeds may be added
to a bench later; each method's own options (``method_options``) are pinned per method, so adding a
variant leaves the cells already run valid, and rerunning a method with other options is refused.

Outputs: ``results.md`` / ``results.csv`` / ``results.json`` (mean and sample std over seeds per
method and budget; the paired difference from ``random`` with its standard error and a mark where it
exceeds two; the selection's and the fine-tuning's wall time and their ratio) and ``results.png``
(bars with error bars), plus ``curve.png`` (data efficiency: each metric against the records
picked, one line per method with a band for the seed spread) when several budgets are given.

Beyond the plain grid: ``method_options`` gives a bench method its own selection options, or makes
it a named variant of a registry method (``{"delift-learned": {"method": "delift", "utility":
"learned"}}``); ``also_test`` evaluates every cell on further held-out sets (metrics named
``<metric>@<name>``); ``continual="sequential"`` fine-tunes on the existing data first (once per
seed, saved under ``OUT/stage1/``) and then continues on each method's pick.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import OptionError, TunesiftError
from .finetune import TrainConfig
from .methods.catalogue import get_method, method_names
from .methods.options import parse_budget

log = logging.getLogger("tunesift")

BENCH_METHODS = ("base", *method_names(), "full")
DEFAULT_METHODS = ("base", "random", "delift-se", "delift", "donod", "donod+delift", "full")
# --quick: a smoke profile that finishes in minutes on a laptop CPU
QUICK = {"train_limit": 120, "test_limit": 40, "generate_limit": 16, "max_new_tokens": 32, "epochs": 1}


@dataclass
class BenchConfig:
    """Everything that defines a bench's results (pinned in OUT/bench.json)."""

    train: str
    test: str
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    budgets: list[float | int] = field(default_factory=lambda: [0.3])
    seeds: int = 3
    stage: str = "instruction"
    target: str | None = None
    existing: str | None = None
    train_with_existing: bool = True  # continual stage: fine-tune on existing + selection
    select_model: str = "default"
    train_model: str = "default"
    select_options: dict = field(default_factory=dict)  # extra pipeline Options (knn, distance, ...)
    training: TrainConfig = field(default_factory=TrainConfig)
    metrics: list[str] | None = None
    max_new_tokens: int = 128
    generate_limit: int | None = 100
    train_limit: int | None = None
    test_limit: int | None = None
    device: str = "auto"
    # per bench method: its own selection options; {"method": m, ...} makes the name a variant of m
    method_options: dict = field(default_factory=dict)
    also_test: dict = field(default_factory=dict)  # name -> path: further held-out sets ("<metric>@<name>")
    continual: str = "joint"  # continual stage: joint (existing + pick at once) | sequential (existing, then pick)


# fields added after benches were run: left out of the settings key while at their default, so those
# benches still resume
LATER_FIELDS = {"method_options": {}, "also_test": {}, "continual": "joint"}
CONTINUAL_MODES = ("joint", "sequential")


def registry_name(cfg: BenchConfig, name: str) -> str:
    """The registry method behind a bench method name (itself, or a variant's ``method``)."""
    return cfg.method_options.get(name, {}).get("method", name)


def selection_stage(cfg: BenchConfig, entry) -> str:
    """The stage a method selects in: the bench's stage where the method supports it; the
    instruction stage for a method that ignores stages, or that has no form for the bench's stage
    but an instruction-stage one (``rds`` in a continual bench: its pool-only variant)."""
    if entry.stages is None:
        return "instruction"
    if cfg.stage in entry.stages:
        return cfg.stage
    if "instruction" in entry.stages:
        return "instruction"
    raise OptionError(f"{entry.name} does not select in the {cfg.stage} stage: it runs in the "
                      f"{', '.join(entry.stages)} stage; drop it from --methods")


def selection_options(cfg: BenchConfig, name: str) -> dict:
    """Every option of the selection of bench method ``name`` (less the budget and seed of a cell)."""
    entry = get_method(registry_name(cfg, name))
    own = {k: v for k, v in cfg.method_options.get(name, {}).items() if k != "method"}
    return {**cfg.select_options, "model": cfg.select_model, "device": cfg.device, **own,
            "method": entry.name, "stage": selection_stage(cfg, entry)}


def _check(cfg: BenchConfig) -> None:
    from .methods.options import Options

    names = set(BENCH_METHODS) | {n for n, o in cfg.method_options.items() if "method" in o}
    bad = [m for m in cfg.methods if m not in names]
    if bad or not cfg.methods:
        raise OptionError(f"unknown bench method '{(bad or [''])[0]}': use any of {', '.join(BENCH_METHODS)}")
    for name in cfg.methods:
        if name not in ("base", "full"):  # every option of every selection, before any cell runs
            Options(**selection_options(cfg, name)).validate()
    if cfg.continual not in CONTINUAL_MODES:
        raise OptionError(f"unknown continual mode '{cfg.continual}': use joint or sequential")
    if cfg.seeds < 1:
        raise OptionError(f"seeds must be at least 1, got {cfg.seeds}")
    for b in cfg.budgets:
        parse_budget(b)
    if cfg.stage == "task" and not cfg.target:
        raise OptionError("bench --stage task needs --target")
    if cfg.stage == "continual" and not cfg.existing:
        raise OptionError("bench --stage continual needs --existing")
    cfg.training.validate()


def cell_name(method: str, budget, seed: int) -> str:
    b = "all" if method in ("base", "full") else str(budget)
    return f"{method}__b{b}__s{seed}".replace("+", "-plus-")


def grid_cells(cfg: BenchConfig) -> list[tuple[str, object, int]]:
    cells = []
    for method in cfg.methods:
        if method == "base":
            cells.append((method, None, 0))  # deterministic: once
            continue
        budgets = [None] if method == "full" else cfg.budgets
        for b in budgets:
            for s in range(cfg.seeds):
                cells.append((method, b, s))
    return cells


def _config_key(cfg: BenchConfig, digests: dict, *, legacy: bool = False) -> str:
    """The settings key pinned in bench.json. ``legacy``: as benches pinned it before method options
    were pinned per method (options in the key when any were given), so those benches still resume."""
    d = asdict(cfg)
    # adding methods/budgets/seeds extends a bench; a method's own options are pinned per method
    # (pin_method_options), so adding a variant does not change the key of the methods already run
    for name in ("methods", "budgets", "seeds") if legacy else ("methods", "budgets", "seeds", "method_options"):
        d.pop(name)
    for name, default in LATER_FIELDS.items():
        if name in d and d[name] == default:
            d.pop(name)
    d["inputs"] = digests
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pin_method_options(pinned: dict | None, cfg: BenchConfig, out: Path) -> dict[str, dict]:
    """Each method's own options (``cfg.method_options``, ``{}`` for none) over every method run in
    ``out``: those ``pinned`` (the folder's bench.json) records, extended with this run's methods.

    A method that ran here before with other options is refused: its cells would mix two settings
    under one name. A bench.json written before this map existed records only its last run's methods.
    """
    def norm(opts: dict) -> dict:  # as JSON reads it back (tuples become lists)
        return json.loads(json.dumps(opts, sort_keys=True, default=str))

    if pinned is None:
        have = {}
    elif "method_options" in pinned:
        have = pinned["method_options"]
    else:
        c = pinned["config"]
        have = {m: c.get("method_options", {}).get(m, {}) for m in c["methods"]}
    mine = {m: norm(cfg.method_options.get(m, {})) for m in cfg.methods}
    for m, opts in mine.items():
        if m in have and have[m] != opts:
            raise OptionError(f"{out}: method {m!r} ran here with options {have[m]}, now {opts}; use another --out")
    return {**have, **mine}


def _limit(records, n: int | None):
    return records if n is None else records[:n]


def release_memory() -> None:
    """Free what the last cell left unreachable: collect reference cycles (torch modules and peft
    wrappers hold some, so reference counting alone does not free a model), then hand the
    heap's free pages back to the OS (:func:`tunesift.heap.trim_heap`)."""
    import gc

    from .heap import trim_heap

    gc.collect()
    trim_heap()


def _select_for_cell(cfg: BenchConfig, method: str, budget, seed: int, data: dict,
                     progress: Callable[[str, int], Callable[[int], None]] | None) -> tuple[list, float]:
    """(chosen records in pool order, selection wall seconds) of one cell.

    A method that scores with a model loads the selection model here and drops it on return, so
    it is never alive next to the training model (reloading it from the converted cache takes
    well under a second; its scores come from the score cache on later seeds)."""
    from .models import load_lm
    from .pipeline import select

    opts = selection_options(cfg, method)
    entry = get_method(opts["method"])
    lm = load_lm(cfg.select_model, device=cfg.device,
                 dtype=opts.get("dtype", "auto")) if entry.needs_lm else None
    side = {}
    uses = entry.second_set.get(opts["stage"]) if entry.stages is not None else None
    if uses in ("target", "existing"):
        side[uses] = data[uses]
    sel = select(data["train"], budget=budget, seed=seed, progress=progress, lm=lm, **side, **opts)
    return [r for r, k in zip(sel.records, sel.kept) if k], round(sel.timings.get("score_select_s", 0.0), 3)


def stage_one(cfg: BenchConfig, seed: int, data: dict, out: Path, *,
              progress: Callable[[str, int], Callable[[int], None]] | None = None) -> Path:
    """Continual stage, sequential: the training model fine-tuned on the existing data with
    ``seed``, saved once under ``OUT/stage1/s<seed>/`` (adapter or model, ``tunesift_train.json``)
    and reused by every cell of that seed; a rerun finds it there (resume)."""
    from .finetune import TRAIN_META, finetune, save
    from .models import load_lm

    path = out / "stage1" / f"s{seed}"
    if (path / TRAIN_META).exists():
        return path
    lm = load_lm(cfg.train_model, device=cfg.device)
    bar = progress(f"stage 1: existing data, seed {seed}", len(data["existing"]) * cfg.training.epochs) \
        if progress else None
    res = finetune(lm, data["existing"], replace(cfg.training, seed=seed), progress=bar)
    save(res, lm, path, {"stage1": {"existing": len(data["existing"]), "seed": seed}})
    del res, lm
    release_memory()
    return path


def _training_model(cfg: BenchConfig, seed: int, data: dict, out: Path | None, progress) -> tuple[object, float]:
    """(the model a cell fine-tunes, seconds its stage 1 took): the train model, or in a sequential
    continual bench the model after the existing data (:func:`stage_one`)."""
    from .models import load_lm

    if cfg.stage != "continual" or cfg.continual != "sequential":
        return load_lm(cfg.train_model, device=cfg.device), 0.0
    from .finetune import TRAIN_META, load_trained

    if out is None:
        raise TunesiftError("a sequential continual bench cell needs the bench folder (out)")
    path = stage_one(cfg, seed, data, out, progress=progress)
    meta = json.loads((path / TRAIN_META).read_text(encoding="utf-8"))
    return load_trained(path, device=cfg.device), float(meta.get("seconds", 0.0))


def also_metrics(metrics: list[str] | None, records) -> list[str] | None:
    """The metrics of a further held-out set: the bench's (None: each set's defaults), less
    ``exact_match`` where the set's references are not math answers."""
    from .evaluate import is_math

    if metrics is None or "exact_match" not in metrics or is_math([r.response for r in records]):
        return metrics
    return [m for m in metrics if m != "exact_match"] or None


def run_cell(cfg: BenchConfig, method: str, budget, seed: int, data: dict, *,
             progress: Callable[[str, int], Callable[[int], None]] | None = None, out: Path | None = None) -> dict:
    """Run one cell and return its record (what ``OUT/cells/<cell>.json`` holds).

    ``data``: the records under ``train``, ``test``, ``target`` and ``existing`` (None when not
    given) and ``also`` ({name: records} of the further held-out sets). Memory: at most one model
    is alive at a time. The selection model lives only inside the selection; the training model is
    loaded after it, and once LoRA is merged the training result (peft wrapper, optimizer state,
    LoRA weights and their gradients) is dropped before the evaluation. Nothing of the cell's
    models is reachable after the return (call :func:`release_memory` to free it before the next
    cell loads its models).

    Continual stage: ``joint`` trains on existing + selection (``train_with_existing``);
    ``sequential`` starts from the seed's stage-1 model (:func:`stage_one`, which needs ``out``)
    and trains on the selection only; ``base`` is then the stage-1 model itself."""
    from .evaluate import evaluate
    from .finetune import finetune, merged

    t0 = time.perf_counter()
    info: dict = {"method": method, "budget": budget, "seed": seed}
    if method in ("base", "full"):
        chosen = data["train"] if method == "full" else []
        info["select_s"] = 0.0
    else:
        chosen, info["select_s"] = _select_for_cell(cfg, method, budget, seed, data, progress)
    existing = data["existing"]
    joint = cfg.stage == "continual" and cfg.continual == "joint" and cfg.train_with_existing
    fit_on = chosen + (existing if joint and method != "base" else [])
    info["n_selected"] = len(chosen)
    info["n_train"] = len(fit_on)
    info["selected_ids"] = [r.id for r in chosen]
    lm, stage1_s = _training_model(cfg, seed, data, out, progress)
    if stage1_s:
        info["stage1_s"] = round(stage1_s, 3)
    t1 = time.perf_counter()
    if fit_on:
        bar = progress(f"fine-tuning {cell_name(method, budget, seed)}", len(fit_on) * cfg.training.epochs) \
            if progress else None
        res = finetune(lm, fit_on, replace(cfg.training, seed=seed), progress=bar)
        info["train_losses"] = res.losses
        lm = merged(lm, res)
        del res  # optimizer state, peft wrapper and LoRA gradients: not needed to evaluate
    info["train_s"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    kw = {"metrics": cfg.metrics, "template": cfg.training.template, "max_length": cfg.training.max_length,
          "max_new_tokens": cfg.max_new_tokens, "generate_limit": cfg.generate_limit, "progress": progress}
    ev = evaluate(lm, data["test"], **kw)
    info["metrics"] = dict(ev.metrics)
    info["generations"] = [g for g in ev.generations if g is not None]
    for name, records in (data.get("also") or {}).items():  # further held-out sets: "<metric>@<name>"
        more = evaluate(lm, records, **{**kw, "metrics": also_metrics(cfg.metrics, records)})
        info["metrics"].update({f"{m}@{name}": v for m, v in more.metrics.items()})
    info["eval_s"] = round(time.perf_counter() - t2, 3)
    info["total_s"] = round(time.perf_counter() - t0, 3)
    return info


def run_bench(cfg: BenchConfig, out: str | Path, *,
              progress: Callable[[str, int], Callable[[int], None]] | None = None) -> list[dict]:
    """Run every missing cell, then write the tables and plots. Returns the aggregated rows."""
    from .evaluate import parse_metrics
    from .io.files import input_checksum
    from .io.records import read_records
    from .store import write_text

    _check(cfg)
    parse_metrics(cfg.metrics)
    out = Path(out)
    train = _limit(read_records(cfg.train), cfg.train_limit)
    test = _limit(read_records(cfg.test), cfg.test_limit)
    target = read_records(cfg.target) if cfg.target else None
    existing = read_records(cfg.existing) if cfg.existing else None
    also = {name: _limit(read_records(path), cfg.test_limit) for name, path in cfg.also_test.items()}
    digests = {k: input_checksum(v) for k, v in (("train", cfg.train), ("test", cfg.test), ("target", cfg.target),
                                                  ("existing", cfg.existing)) if v}
    digests.update({f"also:{name}": input_checksum(path) for name, path in cfg.also_test.items()})
    key = _config_key(cfg, digests)
    out.mkdir(parents=True, exist_ok=True)
    pinned = out / "bench.json"
    old = json.loads(pinned.read_text(encoding="utf-8")) if pinned.exists() else None
    if old is not None and old.get("key") not in (key, _config_key(cfg, digests, legacy=True)):
        raise OptionError(f"{out} holds a bench run with other settings or inputs; use another --out")
    per_method = pin_method_options(old, cfg, out)
    (out / "cells").mkdir(exist_ok=True)
    pinned.write_text(json.dumps({"key": key, "config": asdict(cfg), "inputs": digests,
                                  "method_options": per_method}, indent=2, default=str) + "\n", encoding="utf-8")
    todo = [c for c in grid_cells(cfg) if not (out / "cells" / f"{cell_name(*c)}.json").exists()]
    log.info("bench: %d cells, %d to run (%d train / %d test records)", len(grid_cells(cfg)), len(todo),
             len(train), len(test))
    data = {"train": train, "test": test, "target": target, "existing": existing, "also": also}
    for method, budget, seed in todo:
        info = run_cell(cfg, method, budget, seed, data, progress=progress, out=out)
        write_text(out / "cells" / f"{cell_name(method, budget, seed)}.json", json.dumps(info, indent=1) + "\n")
        log.info("%s: %s", cell_name(method, budget, seed),
                 ", ".join(f"{k} {v:.4g}" for k, v in info["metrics"].items()))
        release_memory()  # the cell's models are unreachable now: free them before the next cell loads
    rows = aggregate(load_cells(out, cfg))
    write_results(out, rows, cfg)
    return rows


def load_cells(out: Path, cfg: BenchConfig) -> list[dict]:
    """The finished cells of this bench's grid (cells of other grids in OUT are ignored)."""
    cells = []
    for c in grid_cells(cfg):
        p = out / "cells" / f"{cell_name(*c)}.json"
        if p.exists():
            cells.append(json.loads(p.read_text(encoding="utf-8")))
    return cells


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per (method, budget): mean and sample std (ddof=1; 0 for one seed) of each metric
    over seeds, the number of seeds, records trained on and picked, the selection's wall time (the
    largest over all the method's cells, budgets included: its first cell computes the scores, the
    others read them from the cache), the mean training wall time, and the costs
    (:func:`add_costs`)."""
    groups: dict[tuple, list[dict]] = {}
    uncached: dict[str, float] = {}  # a method's scores are computed by its first cell, read back by the rest
    for c in cells:
        groups.setdefault((c["method"], c["budget"]), []).append(c)
        uncached[c["method"]] = max(uncached.get(c["method"], 0.0), float(c["select_s"]))
    rows = []
    for (method, budget), cs in groups.items():
        row = {"method": method, "budget": "all" if budget is None else budget, "seeds": len(cs),
               "n_train": int(np.mean([c["n_train"] for c in cs])),
               "n_selected": int(np.mean([c.get("n_selected", c["n_train"]) for c in cs])),
               "select_s": uncached[method],
               "train_s": float(np.mean([c["train_s"] for c in cs]))}
        for m in cs[0]["metrics"]:
            v = np.array([c["metrics"][m] for c in cs], dtype=float)
            row[m] = float(v.mean())
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        for m, (diff, se, n) in versus_random(cells, method, budget).items():
            row[f"{m}_vs_random"], row[f"{m}_vs_random_se"], row["paired_seeds"] = diff, se, n
        rows.append(row)
    order = {m: i for i, m in enumerate(BENCH_METHODS)}
    edge = {"base": 0, "full": 2}  # base first, full last, budgets in between
    rows.sort(key=lambda r: (edge.get(r["method"], 1), 0.0 if r["budget"] == "all" else float(r["budget"]),
                             order.get(r["method"], 99)))
    return add_costs(rows)


def add_costs(rows: list[dict]) -> list[dict]:
    """Selection cost against fine-tuning cost, per row (in place; returns ``rows``):

    - ``cost_ratio = select_s / train_s``: what choosing the records cost per second of training on
      them (NaN without training, i.e. ``base``);
    - ``total_vs_full = (select_s + train_s) / train_s(full)``: selecting then training on the pick,
      as a share of training on the whole pool (present when ``full`` ran; below 1 the selection
      saves compute overall).

    Wall seconds on the bench's machine; ``select_s`` is the uncached selection (the largest over
    seeds), so a deterministic selector's cost is counted once, not per seed."""
    full = [r["train_s"] for r in rows if r["method"] == "full" and r["train_s"] > 0]
    for r in rows:
        r["cost_ratio"] = r["select_s"] / r["train_s"] if r["train_s"] > 0 else float("nan")
        if full:
            r["total_vs_full"] = (r["select_s"] + r["train_s"]) / full[0]
    return rows


def versus_random(cells: list[dict], method: str, budget) -> dict[str, tuple[float, float, int]]:
    """Paired differences of ``method`` from ``random`` at the same budget, per metric:
    ``(mean_s d_s, std(d, ddof=1) / sqrt(n), n)`` with ``d_s = metric(method, s) - metric(random, s)``
    over the n seeds both ran (each seed's random draw and training seed are shared, so pairing
    removes most of the seed noise). Empty for random itself, base, full and unpaired methods."""
    if method in ("random", "base", "full"):
        return {}
    mine = {c["seed"]: c for c in cells if c["method"] == method and c["budget"] == budget}
    rand = {c["seed"]: c for c in cells if c["method"] == "random" and c["budget"] == budget}
    seeds = sorted(set(mine) & set(rand))
    if not seeds:
        return {}
    out = {}
    for m in mine[seeds[0]]["metrics"]:
        if not all(m in rand[s]["metrics"] for s in seeds):
            continue
        d = np.array([mine[s]["metrics"][m] - rand[s]["metrics"][m] for s in seeds], dtype=float)
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out[m] = (float(d.mean()), se, len(d))
    return out


# paired seeds a mark needs: the standard error of two differences has one degree of freedom, so
# "beyond 2 SE" would flag 2 of 300 exact matches (measured on the evidence grid's task bench)
MIN_MARK_SEEDS = 3


def beyond_noise(row: dict, metric: str) -> bool | None:
    """Whether the row's paired difference from random exceeds two standard errors of the paired
    seed differences (None: no paired difference, or fewer than :data:`MIN_MARK_SEEDS` paired
    seeds, too few for the spread to be estimated)."""
    diff, se = row.get(f"{metric}_vs_random"), row.get(f"{metric}_vs_random_se")
    if diff is None or se is None or not np.isfinite(se) or row.get("paired_seeds", 0) < MIN_MARK_SEEDS:
        return None
    return bool(abs(diff) > 2 * se)


STAT_SUFFIXES = ("_std", "_vs_random", "_vs_random_se")


def _metric_names(rows: list[dict]) -> list[str]:
    """The metrics the rows hold: the test set's in METRICS order, then each further held-out
    set's (``<metric>@<name>``), set by set."""
    from .evaluate import METRICS

    keys = list(dict.fromkeys(k for r in rows for k in r))
    extra = [k for k in keys if "@" in k and k.partition("@")[0] in METRICS and not k.endswith(STAT_SUFFIXES)]
    sets = list(dict.fromkeys(k.partition("@")[2] for k in extra))
    return [m for m in METRICS if m in keys] + [f"{m}@{name}" for name in sets for m in METRICS
                                                  if f"{m}@{name}" in extra]


def lower_is_better(metric: str) -> bool:
    from .evaluate import LOWER_IS_BETTER

    return metric.partition("@")[0] in LOWER_IS_BETTER


def beyond_noise_lines(rows: list[dict]) -> list[str]:
    """One line per (method, budget, metric) whose paired difference from random exceeds two
    standard errors, saying whether it is better or worse than random."""
    out = []
    for r in rows:
        for m in _metric_names([r]):
            if beyond_noise(r, m):
                d = r[f"{m}_vs_random"]
                better = (d < 0) == lower_is_better(m)
                out.append(f"- {r['method']} at budget {r['budget']}: {m} {'better' if better else 'worse'} than "
                           f"random by {abs(d):.4f} (± {r[f'{m}_vs_random_se']:.4f}, {r['paired_seeds']} paired seeds)")
    return out


def _ratio(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.2f}" if v >= 0.01 else "< 0.01"


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std per metric (arrows say which direction is better), seeds, size and costs."""
    metrics = _metric_names(rows)
    head = ["method", "budget", "seeds", "records"] + [
        f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in metrics] + [
        "select s (uncached)", "train s", "select / train"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paired = False
    for r in rows:
        vals = [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" + _versus_cell(r, m) if m in r else "" for m in metrics]
        paired |= any(f"{m}_vs_random" in r for m in metrics)
        lines.append("| " + " | ".join([r["method"], str(r["budget"]), str(r["seeds"]), str(r["n_train"]), *vals,
                                        f"{r['select_s']:.1f}", f"{r['train_s']:.1f}",
                                        _ratio(r.get("cost_ratio", float("nan")))]) + " |")
    if paired:
        lines += ["", "Δ: the mean paired difference from random at the same budget (same seeds) ± its standard "
                  "error. **\\*** marks a difference larger than two standard errors (beyond the seed "
                  "spread); without it the difference is within noise. Fewer than "
                  f"{MIN_MARK_SEEDS} paired seeds: no mark (the spread is not estimated)."]
    lines += ["", "select / train: the selection's wall time (uncached) over the fine-tuning's on its pick."]
    return "\n".join(lines) + "\n"


def _versus_cell(row: dict, metric: str) -> str:
    if f"{metric}_vs_random" not in row:
        return ""
    diff, se = row[f"{metric}_vs_random"], row[f"{metric}_vs_random_se"]
    spread = f" ± {se:.4f}" if np.isfinite(se) else ""
    mark = " \\*" if beyond_noise(row, metric) else ""
    return f" (Δ {diff:+.4f}{spread}{mark})"


def write_results(out: Path, rows: list[dict], cfg: BenchConfig) -> None:
    """results.md / .csv / .json and the plots."""
    from .store import write_text

    if not rows:
        raise TunesiftError(f"{out}: no finished cells to tabulate")
    title = f"# tunesift bench: {Path(cfg.train).name} -> {Path(cfg.test).name} ({cfg.stage} stage)\n\n"
    note = (f"select model `{cfg.select_model}`, train model `{cfg.train_model}` ({cfg.training.mode}, "
            f"{cfg.training.epochs} epochs), mean ± std over seeds.\n\n")
    marks = beyond_noise_lines(rows)
    paired = any(k.endswith("_vs_random") for r in rows for k in r)
    verdict = ("\n## Beyond the seed spread (paired differences from random > 2 SE)\n\n"
               + ("\n".join(marks) if marks else "None: every difference from random is within two standard "
                  "errors of the paired seed differences.") + "\n") if paired else ""
    full = [r for r in rows if r["method"] == "full"]
    cost = (f"\nFine-tuning on the whole pool took {full[0]['train_s']:.1f} s; `total_vs_full` in results.json is "
            "(select + train) / that.\n") if full else ""
    write_text(out / "results.md", title + note + markdown_table(rows) + verdict + cost)
    write_text(out / "results.json", json.dumps(rows, indent=1) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    plot_results(out, rows)


def plot_results(out: Path, rows: list[dict]) -> None:
    """results.png: one panel per metric, a bar per method (first budget) with std error bars on an
    axis from zero, ``*`` over a bar whose paired difference from random exceeds two standard errors;
    under it, when random ran too, each method's paired difference from random with ± 2 SE error
    bars (red: beyond the seed spread, grey: within it). curve.png: each method's metric against
    the budget (error bars: std over seeds) when there are several budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metric_names(rows)
    budgets = sorted({r["budget"] for r in rows if r["budget"] != "all"}, key=float)
    first = budgets[0] if budgets else "all"
    shown = [r for r in rows if r["budget"] in (first, "all")]
    paired = [r for r in shown if any(f"{m}_vs_random" in r for m in metrics)]
    nrow = 2 if paired else 1
    fig, axes = plt.subplots(nrow, len(metrics), figsize=(3.2 * len(metrics), 3.4 * nrow), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        names = [r["method"] for r in shown]
        ax.bar(range(len(shown)), [r[m] for r in shown], yerr=[r[f"{m}_std"] for r in shown], capsize=3,
               color=["#999999" if n in ("base", "full") else "#4c72b0" for n in names])
        ax.set_xticks(range(len(shown)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(m, fontsize=9)
        # bars start at zero (no truncated axis that makes noise look decisive)
        lo = min(0.0, min(r[m] - r[f"{m}_std"] for r in shown))
        hi = max(0.0, max(r[m] + r[f"{m}_std"] for r in shown))
        ax.set_ylim(lo * 1.1, hi * 1.12 or 0.01)
        for x, r in enumerate(shown):
            if beyond_noise(r, m):
                ax.text(x, r[m] + r[f"{m}_std"], "*", ha="center", va="bottom", fontsize=12)
    if paired:  # the paired differences from random with two standard errors: the spread is visible
        for ax, m in zip(axes[1], metrics):
            rs = [r for r in paired if f"{m}_vs_random" in r]
            diffs = [r[f"{m}_vs_random"] for r in rs]
            errs = [2 * r[f"{m}_vs_random_se"] if np.isfinite(r[f"{m}_vs_random_se"]) else 0.0 for r in rs]
            for x, (r, d, e) in enumerate(zip(rs, diffs, errs)):
                ax.errorbar([x], [d], yerr=[e], fmt="o", capsize=3,
                            color="#c44e52" if beyond_noise(r, m) else "#8c8c8c")
            ax.axhline(0, color="#333", lw=0.8)
            ax.set_xticks(range(len(rs)), [r["method"] for r in rs], rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{m}: minus random (± 2 SE)", fontsize=9)
    fig.suptitle(f"budget {first}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)
    if len(budgets) > 1:
        plot_curves(out / "curve.png", rows, metrics)


BOUNDED = ("rougeL", "exact_match", "cosine")  # metrics in [0, 1]: their curves start at zero


def curve_data(rows: list[dict], metric: str) -> dict:
    """The data-efficiency curve of ``metric``: per selector, the metric against the records it
    picked, with the seed spread.

    Returns ``{"lines": {method: {"x", "mean", "lo", "hi", "seeds"}}, "base": float | None,
    "full": {"x", "mean", "lo", "hi"} | None}``: ``x`` the mean records picked (``n_selected``;
    budgets given as fractions and counts land on one axis), sorted; the band ``lo``/``hi`` =
    mean -+ sample std over seeds (zero width for one seed); ``base`` the untuned model's value and
    ``full`` the whole pool's point, the two references every selector sits between."""
    lines: dict[str, dict] = {}
    for r in rows:
        if r["budget"] == "all" or metric not in r:
            continue
        ln = lines.setdefault(r["method"], {"x": [], "mean": [], "lo": [], "hi": [], "seeds": []})
        ln["x"].append(float(r.get("n_selected", r["n_train"])))
        ln["mean"].append(r[metric])
        ln["lo"].append(r[metric] - r[f"{metric}_std"])
        ln["hi"].append(r[metric] + r[f"{metric}_std"])
        ln["seeds"].append(r["seeds"])
    for ln in lines.values():
        idx = np.argsort(ln["x"], kind="stable")
        for k in ln:
            ln[k] = [ln[k][i] for i in idx]
    base = next((r[metric] for r in rows if r["method"] == "base" and metric in r), None)
    full = next(({"x": float(r.get("n_selected", r["n_train"])), "mean": r[metric],
                  "lo": r[metric] - r[f"{metric}_std"], "hi": r[metric] + r[f"{metric}_std"]}
                 for r in rows if r["method"] == "full" and metric in r), None)
    return {"lines": lines, "base": base, "full": full}


def curve_limits(data: dict, metric: str) -> tuple[float, float]:
    """The y range of a curve panel: everything drawn (bands, base, full) with 5% margins, and from
    zero for a metric in [0, 1] (an accuracy never gets a zoomed axis that makes noise look
    decisive); a loss axis spans at least from the full-data value to the untuned model's, so the
    gaps between selectors are read against the whole gain of fine-tuning."""
    vals = [v for ln in data["lines"].values() for v in ln["lo"] + ln["hi"]]
    if data["base"] is not None:
        vals.append(data["base"])
    if data["full"] is not None:
        vals += [data["full"]["lo"], data["full"]["hi"]]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if metric.partition("@")[0] in BOUNDED:
        lo = min(0.0, lo)
    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
    return (lo if lo == 0.0 else lo - pad), hi + pad


def plot_curves(path: Path, rows: list[dict], metrics: list[str]) -> None:
    """``path`` (curve.png): per metric, one line per selector against the records it picked, a
    band for the seed spread (mean ± std), the untuned model (dashed) and the whole pool (a point
    with its spread and a dotted line); x from 0 to the pool, y by :func:`curve_limits`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        data = curve_data(rows, m)
        for i, (method, ln) in enumerate(data["lines"].items()):
            color = "#333333" if method == "random" else plt.cm.tab10(i % 10)
            ax.plot(ln["x"], ln["mean"], marker="o", ms=3, lw=1.2, color=color, label=method)
            ax.fill_between(ln["x"], ln["lo"], ln["hi"], color=color, alpha=0.15, lw=0)
        xmax = max([x for ln in data["lines"].values() for x in ln["x"]] + [1.0])
        if data["base"] is not None:
            ax.axhline(data["base"], color="#888", ls="--", lw=0.9, label="base (no fine-tuning)")
        if data["full"] is not None:
            f = data["full"]
            xmax = max(xmax, f["x"])
            ax.errorbar([f["x"]], [f["mean"]], yerr=[[f["mean"] - f["lo"]], [f["hi"] - f["mean"]]], fmt="s",
                        color="#555", capsize=3, label="full pool")
            ax.axhline(f["mean"], color="#555", ls=":", lw=0.9)
        ax.set_xlim(0, xmax * 1.05)
        ax.set_ylim(*curve_limits(data, m))
        ax.set_title(f"{m} {'↓' if lower_is_better(m) else '↑'}", fontsize=9)
        ax.set_xlabel("records picked", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
