"""Select -> fine-tune -> evaluate, for every method, budget and seed; then tables and plots.

A *cell* is one (method, budget, seed): select ``budget`` records of the training pool with the
method (seeded), fine-tune a fresh copy of the training model on them (same seed), evaluate on the
test set. ``full`` trains on the whole pool and ``base`` evaluates the model without fine-tuning
(one cell each per seed / once). Each finished cell is written to ``OUT/cells/<cell>.json`` at
once, so a rerun skips it (resume); the settings are pinned in ``OUT/bench.json`` and a rerun
with other settings is refused rather than mixing results.

Outputs: ``results.md`` / ``results.csv`` / ``results.json`` (mean and sample std over seeds per
method and budget, plus the mean selection wall time) and ``results.png`` (bars with error bars;
plus ``curve.png``, metric against budget, when several budgets are given).
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


def _check(cfg: BenchConfig) -> None:
    bad = [m for m in cfg.methods if m not in BENCH_METHODS]
    if bad or not cfg.methods:
        raise OptionError(f"unknown bench method '{(bad or [''])[0]}': use any of {', '.join(BENCH_METHODS)}")
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


def _cells(cfg: BenchConfig) -> list[tuple[str, object, int]]:
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


def _config_key(cfg: BenchConfig, digests: dict) -> str:
    d = asdict(cfg)
    d.pop("methods"), d.pop("budgets"), d.pop("seeds")  # adding methods/budgets/seeds extends a bench
    d["inputs"] = digests
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    entry = get_method(method)
    lm = load_lm(cfg.select_model, device=cfg.device,
                 dtype=cfg.select_options.get("dtype", "auto")) if entry.needs_lm else None
    side = {}
    if entry.uses(cfg.stage) == "target":
        side["target"] = data["target"]
    if entry.uses(cfg.stage) == "existing":
        side["existing"] = data["existing"]
    opts = {**cfg.select_options, "model": cfg.select_model, "device": cfg.device}
    opts["stage"] = cfg.stage if entry.stages else "instruction"
    sel = select(data["train"], method=method, budget=budget, seed=seed, progress=progress, lm=lm, **side, **opts)
    return [r for r, k in zip(sel.records, sel.kept) if k], round(sel.timings.get("score_select_s", 0.0), 3)


def run_cell(cfg: BenchConfig, method: str, budget, seed: int, data: dict, *,
             progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict:
    """Run one cell and return its record (what ``OUT/cells/<cell>.json`` holds).

    ``data``: the records under ``train``, ``test``, ``target`` and ``existing`` (None when not
    given). Memory: at most one model is alive at a time. The selection model lives only inside
    the selection; the training model is loaded after it, and once LoRA is merged the training
    result (peft wrapper, optimizer state, LoRA weights and their gradients) is dropped before
    the evaluation. Nothing of the cell's models is reachable after the return (call
    :func:`release_memory` to free it before the next cell loads its models)."""
    from .evaluate import evaluate
    from .finetune import finetune, merged
    from .models import load_lm

    t0 = time.perf_counter()
    info: dict = {"method": method, "budget": budget, "seed": seed}
    if method in ("base", "full"):
        chosen = data["train"] if method == "full" else []
        info["select_s"] = 0.0
    else:
        chosen, info["select_s"] = _select_for_cell(cfg, method, budget, seed, data, progress)
    existing = data["existing"]
    fit_on = chosen + (existing if cfg.stage == "continual" and cfg.train_with_existing and method != "base"
                       else [])
    info["n_selected"] = len(chosen)
    info["n_train"] = len(fit_on)
    info["selected_ids"] = [r.id for r in chosen]
    lm = load_lm(cfg.train_model, device=cfg.device)
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
    ev = evaluate(lm, data["test"], metrics=cfg.metrics, template=cfg.training.template,
                  max_length=cfg.training.max_length, max_new_tokens=cfg.max_new_tokens,
                  generate_limit=cfg.generate_limit, progress=progress)
    info["eval_s"] = round(time.perf_counter() - t2, 3)
    info["metrics"] = ev.metrics
    info["generations"] = [g for g in ev.generations if g is not None]
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
    digests = {k: input_checksum(v) for k, v in (("train", cfg.train), ("test", cfg.test), ("target", cfg.target),
                                                  ("existing", cfg.existing)) if v}
    key = _config_key(cfg, digests)
    out.mkdir(parents=True, exist_ok=True)
    pinned = out / "bench.json"
    if pinned.exists():
        old = json.loads(pinned.read_text(encoding="utf-8"))
        if old.get("key") != key:
            raise OptionError(f"{out} holds a bench run with other settings or inputs; use another --out")
    (out / "cells").mkdir(exist_ok=True)
    pinned.write_text(json.dumps({"key": key, "config": asdict(cfg), "inputs": digests}, indent=2,
                                 default=str) + "\n", encoding="utf-8")
    todo = [c for c in _cells(cfg) if not (out / "cells" / f"{cell_name(*c)}.json").exists()]
    log.info("bench: %d cells, %d to run (%d train / %d test records)", len(_cells(cfg)), len(todo),
             len(train), len(test))
    data = {"train": train, "test": test, "target": target, "existing": existing}
    for method, budget, seed in todo:
        info = run_cell(cfg, method, budget, seed, data, progress=progress)
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
    for c in _cells(cfg):
        p = out / "cells" / f"{cell_name(*c)}.json"
        if p.exists():
            cells.append(json.loads(p.read_text(encoding="utf-8")))
    return cells


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per (method, budget): mean and sample std (ddof=1; 0 for one seed) of each metric
    over seeds, the number of seeds, records trained on, the selection's wall time (the largest over
    seeds: later seeds of a deterministic selector read its scores from the cache) and the mean
    training wall time."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["method"], c["budget"]), []).append(c)
    rows = []
    for (method, budget), cs in groups.items():
        row = {"method": method, "budget": "all" if budget is None else budget, "seeds": len(cs),
               "n_train": int(np.mean([c["n_train"] for c in cs])),
               "select_s": float(np.max([c["select_s"] for c in cs])),
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


def beyond_noise(row: dict, metric: str) -> bool | None:
    """Whether the row's paired difference from random exceeds two standard errors of the paired
    seed differences (None: no paired difference, or one seed, so no spread to compare with)."""
    diff, se = row.get(f"{metric}_vs_random"), row.get(f"{metric}_vs_random_se")
    if diff is None or se is None or not np.isfinite(se):
        return None
    return bool(abs(diff) > 2 * se)


def _metric_names(rows: list[dict]) -> list[str]:
    from .evaluate import METRICS

    return [m for m in METRICS if any(m in r for r in rows)]


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std per metric (arrows say which direction is better), seeds, size and costs."""
    from .evaluate import LOWER_IS_BETTER

    metrics = _metric_names(rows)
    head = ["method", "budget", "seeds", "records"] + [
        f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics] + ["select s (uncached)", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paired = False
    for r in rows:
        vals = [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" + _versus_cell(r, m) if m in r else "" for m in metrics]
        paired |= any(f"{m}_vs_random" in r for m in metrics)
        lines.append("| " + " | ".join([r["method"], str(r["budget"]), str(r["seeds"]), str(r["n_train"]), *vals,
                                        f"{r['select_s']:.1f}", f"{r['train_s']:.1f}"]) + " |")
    if paired:
        lines += ["", "Δ: the mean paired difference from random at the same budget (same seeds) ± its standard "
                  "error. **\\*** marks a difference larger than two standard errors (beyond the seed "
                  "spread); without it the difference is within noise. One seed gives no spread: no mark."]
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
    write_text(out / "results.md", title + note + markdown_table(rows))
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
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            for method in dict.fromkeys(r["method"] for r in rows if r["budget"] != "all"):
                pts = sorted((float(r["budget"]), r[m], r[f"{m}_std"]) for r in rows
                              if r["method"] == method and r["budget"] != "all")
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=2, label=method)
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("budget", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "curve.png", dpi=110)
        plt.close(fig)

