"""The bench's results from its finished cells: one row per (method, budget) with the mean and
spread over seeds, the comparisons with random (computed by :mod:`tunesift.bench_stats`), selection
cost against fine-tuning cost, and the tables and their verdict lines (``results.md`` / ``.csv`` /
``.json``; the plots by :mod:`tunesift.bench_plots`). Pure functions of the cells (dicts, as
``OUT/cells/*.json`` hold them), apart from the writer; :mod:`tunesift.bench` runs the cells."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .bench_plots import plot_results
from .bench_stats import (
    MIN_MARK_SEEDS,
    REFERENCES,
    beyond_noise,
    budget_key,
    by_seed,
    full_versus_random,
    holm,
    is_control,
    lower_is_better,
    metric_names,
    paired_p,
    versus_random,
    versus_random_items,
)
from .errors import TunesiftError
from .methods.catalogue import method_names


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per (method, budget): mean and sample std (ddof=1; 0 for one seed, which the table
    prints as "1 seed", not as a spread) of each metric over seeds (every metric any of the cells
    holds: NaN for a cell without it), the number of seeds, records trained on and picked, the selection's wall time (the
    largest over all the method's cells, budgets included: its first cell computes the scores, the
    others read them from the cache), the mean training wall time, and the costs
    (:func:`add_costs`)."""
    groups: dict[tuple, list[dict]] = {}
    uncached: dict[str, float] = {}  # a method's scores are computed by its first cell, read back by the rest
    for c in cells:
        groups.setdefault((c["method"], budget_key(c["budget"])), []).append(c)
        uncached[c["method"]] = max(uncached.get(c["method"], 0.0), float(c["select_s"]))
    partly = {m for m in uncached if not cost_complete([c for c in cells if c["method"] == m])}
    rows = []
    for (method, _), cs in groups.items():
        budget = cs[0]["budget"]
        row = {"method": method, "budget": "all" if budget is None else budget, "seeds": len(cs),
               "n_train": int(np.mean([c["n_train"] for c in cs])),
               "n_selected": int(np.mean([c.get("n_selected", c["n_train"]) for c in cs])),
               "select_s": uncached[method],
               "train_s": float(np.mean([c["train_s"] for c in cs]))}
        if method in partly:
            row["select_partly_cached"] = True
        capped = [c["eval_counts"]["generations_capped"] for c in cs
                  if "generations_capped" in c.get("eval_counts", {})]
        if capped:
            row["generations_capped"] = float(np.mean(capped))
            row["generations_capped_seeds"] = len(capped)  # cells made before the count existed lack it
        for m in dict.fromkeys(m for c in cs for m in c["metrics"]):
            v = np.array([c["metrics"].get(m, np.nan) for c in cs], dtype=float)
            row[m] = float(v.mean())
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        for m, (diff, se, n) in versus_random(cells, method, budget).items():
            row[f"{m}_vs_random"], row[f"{m}_vs_random_se"], row["paired_seeds"] = diff, se, n
            row[f"{m}_vs_random_p"] = paired_p(diff, se, n)
        for m, test in versus_random_items(cells, method, budget).items():
            row.update({f"{m}_items_{k}": v for k, v in test.items()})
        rows.append(row)
    edge = {"base": 0, "full": 2}  # base first, full last, budgets in between
    rows.sort(key=lambda r: (edge.get(r["method"], 1), 0.0 if r["budget"] == "all" else float(r["budget"]),
                             method_rank(r["method"]), r["method"]))
    return add_costs(rows)


def cost_complete(cells: list[dict]) -> bool:
    """Whether a method's selection cost is measured whole: some cell selected from a cold cache
    (``score_cache.cached == 0``; see :func:`tunesift.bench.select_for_cell`), or another
    experiment sharing its cache did (``cost_from_cold``, set by the evidence bench). Cells made
    before the counts existed carry none: a method with only such cells is not questioned, but
    one with counted cells is judged by those (an old cell beside warm-cache ones proves nothing)."""
    if any(c.get("cost_from_cold") for c in cells):
        return True
    counts = [c["score_cache"] for c in cells if c.get("score_cache") is not None]
    return not counts or any(x["cached"] == 0 for x in counts)


def method_rank(name: str) -> float:
    """Where a row sorts: the registry's order of methods; a bench variant named after a method
    (``random-gsm8k``, ``delift-learned``) right after that method (the
    earliest one its ``-``/``+``-separated name contains); anything else last."""
    order = {m: i for i, m in enumerate(method_names())}
    if name in order:
        return float(order[name])
    inside = [i for m, i in order.items() if f"-{m}-" in f"-{name.replace('+', '-')}-"]
    return min(inside) + 0.5 if inside else 99.0


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


def item_lines(rows: list[dict]) -> list[str]:
    """One line per (row, metric) compared with random question by question
    (:func:`versus_random_items`): for pass/fail metrics the questions it gets right more often and
    less often than random's models with the sign test's p; for the loss the token-weighted
    difference over the questions with its standard error and p."""
    out = []
    for r in rows:
        for m in metric_names([r]):
            if f"{m}_items_n" not in r:
                continue
            who = _who(r["method"])
            p, seeds = r[f"{m}_items_p"], _seeds(r[f"{m}_items_seeds"])
            if f"{m}_items_better" in r:
                test = f"sign test p {_p_is(p)}" if np.isfinite(p) else "no question differs: nothing to test"
                out.append(f"- {who} at budget {r['budget']}, {m}: {r[f'{m}_items_better']} questions answered more "
                           f"often than random's models, {r[f'{m}_items_worse']} less often (of {r[f'{m}_items_n']}, "
                           f"{seeds} paired; {test})")
            else:
                diff, se = r[f"{m}_items_diff"], r[f"{m}_items_se"]
                if not np.isfinite(diff):
                    out.append(f"- {who} at budget {r['budget']}, {m}: the difference over the questions is not a "
                               f"number (a per-question value is NaN; {seeds} paired)")
                    continue
                how = ("no different from random" if diff == 0 else
                       f"{'better' if (diff < 0) == lower_is_better(m) else 'worse'} than random by {abs(diff):.4f}")
                test = f"t-test over the questions p {_p_is(p)}" if np.isfinite(p) else "no spread: nothing to test"
                out.append(f"- {who} at budget {r['budget']}, {m}: {how} ± {se:.4f} over {r[f'{m}_items_n']} "
                           f"questions ({seeds} paired; {test})")
    return out


def full_lines(cells: list[dict]) -> list[str]:
    """One line per budget random ran at: training on the whole pool against random's pick of that
    size, paired by seed (:func:`full_versus_random`), each metric as "Δ ± se" with \\* beyond
    two standard errors (:data:`MIN_MARK_SEEDS`+ seeds), which way it points and the paired
    t-test's p. Empty without full or random cells."""
    out = []
    n_full = {c["n_train"] for c in cells if c["method"] == "full"}
    size = f"all {n_full.pop()} records" if len(n_full) == 1 else "the whole pool"
    full = by_seed(cells, "full", None)
    for budget, diffs in full_versus_random(cells).items():
        seeds = max(n for *_, n in diffs.values())
        parts = []
        for m in metric_names([dict.fromkeys(diffs)]):
            d, se, n = diffs[m]
            if not np.isfinite(d):
                parts.append(f"{m} not a number (NaN or missing in some seed)")
                continue
            way = "no different" if d == 0 else "better" if (d < 0) == lower_is_better(m) else "worse"
            if n < MIN_MARK_SEEDS or not np.isfinite(se):
                parts.append(f"{m} {d:+.4f} ({way}; {_seeds(n)}, no test)")
            elif se == 0:
                parts.append(f"{m} {d:+.4f} ({way}; the same in every seed, nothing to test)")
            else:
                mark = " \\*" if abs(d) > 2 * se else ""
                parts.append(f"{m} {d:+.4f} ± {se:.4f}{mark} ({way}, p {_p(paired_p(d, se, n))})")
        span = pair_changes(full, by_seed(cells, "random", budget))
        out.append(f"- full data ({size}) against random at budget {budget} ({_seeds(seeds)} paired"
                   + (f", across {' and '.join(span)}: the difference includes that change" if span else "")
                   + "): " + "; ".join(parts))
    return out


FULL_NOTE = ("Paired by seed (the training seed, and in a sequential continual bench the stage-1 model); "
             "Δ: full data minus random, ± its standard error, \\* beyond two standard errors, p: the paired "
             "t-test's. A reference against a reference: not in the selectors' Holm family.")


ITEM_NOTE = ("Each test question's result averaged over the paired seeds, the method's models against "
             "random's: for pass/fail metrics a sign test over the questions that differ, for the loss a "
             "paired t-test over the questions (token-weighted, as the loss is). The seed-paired test above "
             "holds the questions fixed; this one holds the trained models fixed and asks whether other "
             "questions would show the same difference. Each line is one comparison, not corrected for the "
             "table's many (no Holm here). Cells without their per-question results (made on "
             "another machine before cells kept them; per-question losses from session 21 on) are left out.")


def beyond_noise_lines(rows: list[dict]) -> list[str]:
    """One line per (method, budget, metric) whose paired difference from random exceeds two
    standard errors, saying whether it is better or worse than random."""
    out = []
    for r in rows:
        for m in metric_names([r]):
            if beyond_noise(r, m):
                d = r[f"{m}_vs_random"]
                better = (d < 0) == lower_is_better(m)
                who = _who(r["method"])
                out.append(f"- {who} at budget {r['budget']}: {m} {'better' if better else 'worse'} than "
                           f"random by {abs(d):.4f} (± {r[f'{m}_vs_random_se']:.4f}, {r['paired_seeds']} paired seeds, "
                           f"paired t-test p {_p_is(r.get(f'{m}_vs_random_p'))})")
    return out


def no_verdict_lines(rows: list[dict]) -> list[str]:
    """The selector rows that get no verdict either way, and why, so that an empty list of marks
    never hides them: not paired with random (no random cells at that budget), fewer than
    :data:`MIN_MARK_SEEDS` paired seeds, a paired difference that is not a number (a metric NaN
    or missing in some seed), or one with no seed spread (the same difference in every seed)."""
    unpaired, few, nan, flat = [], [], [], []
    for r in rows:
        if r["method"] in REFERENCES:
            continue
        name = f"{r['method']} @ {r['budget']}"
        metrics = [m for m in metric_names([r]) if f"{m}_vs_random" in r]
        if not metrics:
            unpaired.append(name)
        elif r.get("paired_seeds", 0) < MIN_MARK_SEEDS:
            few.append(name)
        else:
            bad = [m for m in metrics if not (np.isfinite(r[f"{m}_vs_random"]) and np.isfinite(r[f"{m}_vs_random_se"]))]
            if bad:
                nan.append(f"{name} ({', '.join(bad)})")
            same = [m for m in metrics if m not in bad and r[f"{m}_vs_random_se"] == 0]
            if same:
                flat.append(f"{name} ({', '.join(same)})")
    out = []
    if few:
        out.append(f"- no verdict yet (fewer than {MIN_MARK_SEEDS} paired seeds): {', '.join(sorted(few))}")
    if unpaired:
        out.append(f"- no verdict (no random cells at the same budget to pair with): {', '.join(sorted(unpaired))}")
    if nan:
        out.append("- no verdict (a paired difference is not a number: the metric is NaN or missing in some "
                   f"seed): {', '.join(sorted(nan))}")
    if flat:
        out.append("- no verdict (no seed spread: the same paired difference in every seed, nothing to test it "
                   f"against): {', '.join(sorted(flat))}")
    return out


def verdict_lines(rows: list[dict]) -> list[str]:
    """What the tables say against random: the marks (:func:`beyond_noise_lines`), then the rows
    without a verdict (:func:`no_verdict_lines`); ``["none"]`` only when every selector row was
    tested and none is beyond the seed spread."""
    if all(r["method"] in REFERENCES for r in rows):
        return ["- no verdict yet: no selector has a finished cell"]
    return beyond_noise_lines(rows) + no_verdict_lines(rows) or ["none"]


def family_adjusted(rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """The family :func:`family_lines` corrects: every paired comparison with random that has
    :data:`MIN_MARK_SEEDS` seeds and a finite p (selector rows x budgets x metrics; controls and
    references apart), as ``(method, str(budget), metric) -> Holm-adjusted p`` (:func:`holm`)."""
    tests = [(r, m, r[f"{m}_vs_random_p"]) for r in rows if r["method"] not in REFERENCES
             and not is_control(r["method"])
             and r.get("paired_seeds", 0) >= MIN_MARK_SEEDS for m in metric_names([r])
             if np.isfinite(r.get(f"{m}_vs_random_p", float("nan")))]
    if not tests:
        return {}
    adj = holm(np.array([p for _, _, p in tests]))
    return {(r["method"], str(r["budget"]), m): float(a) for (r, m, _), a in zip(tests, adj)}


def family_lines(rows: list[dict], alpha: float = 0.05) -> list[str]:
    """One line on how the marks hold up as a family (:func:`family_adjusted`): how many
    comparisons, and the ones still below ``alpha``. Conservative where metrics move together
    (loss and perplexity are one measurement). Empty when there is nothing to compare."""
    adj = family_adjusted(rows)
    if not adj:
        return []
    firm = [f"{m} @ {b} {metric} (adjusted p {_p(a)})" for (m, b, metric), a in adj.items() if a < alpha]
    head = (f"- as a family (Holm over the {len(adj)} paired comparisons of selectors with {MIN_MARK_SEEDS}+ "
            "seeds, all metrics; controls apart): ")
    return [head + (f"{len(firm)} stay below {alpha}: " + ", ".join(firm) if firm
                    else f"none stays below {alpha}; read each mark as suggestive")]


#: the legend under :func:`glance_table` (``metric``, ``better`` and ``alpha`` filled in)
GLANCE_LEGEND = ("Each column: a selector's mean paired difference from random at that budget (same seeds) ± "
                 "its standard error, in the held-out {metric} ({better} is better); \\* beyond two standard "
                 "errors, **bold** where the paired t-test's p is also below {alpha}, ‡ where p stays below "
                 "{alpha} after Holm's correction over its experiment's whole table (every selector and metric). "
                 "select / train: the selection's wall time over the method's fine-tuning on its pick.")


def _glance_cell(row: dict, metric: str, adjusted: dict, alpha: float) -> str:
    """One comparison of :func:`glance_table`: "Δ ± se", \\* beyond 2 SE, bold where p < alpha too,
    ‡ where the Holm-adjusted p is below alpha."""
    if f"{metric}_vs_random" not in row:
        return "not paired with random"
    diff, se, n = row[f"{metric}_vs_random"], row[f"{metric}_vs_random_se"], row.get("paired_seeds", 0)
    if n < MIN_MARK_SEEDS or not np.isfinite(se):
        return f"{diff:+.4f} ({_seeds(n)}, no mark)"
    p = row.get(f"{metric}_vs_random_p", float("nan"))
    marked = beyond_noise(row, metric)
    text = f"{diff:+.4f} ± {se:.4f}" + (" \\*" if marked else "")
    if marked and p < alpha:
        text = f"**{text}**"
    firm = adjusted.get((row["method"], str(row["budget"]), metric), 1.0) < alpha
    return text + (f" (p {_p(p)})" if np.isfinite(p) else "") + (" ‡" if firm else "")


def glance_table(tables: dict[str, list[dict]], metric: str = "loss", alpha: float = 0.05) -> str:
    """One table across experiments: a row per selector, a column pair per (experiment, budget) that
    has selector rows: the paired difference of ``metric`` from random (:func:`_glance_cell`, ‡
    from the Holm family of *its own* experiment's table) and the selection's cost over the
    method's fine-tuning (select s / train s, "≥ x †" where only part of the selection ran).
    ``tables``: experiment name -> its :func:`aggregate` rows. The table is followed by its
    legend (:data:`GLANCE_LEGEND`, and :data:`PARTLY_CACHED` where a † is in it). Empty string
    when no selector ran."""
    columns = []  # (experiment, budget, random's mean, {method: row}, Holm family)
    for exp, rows in tables.items():
        adjusted = family_adjusted(rows)
        budgets = dict.fromkeys(r["budget"] for r in rows if r["method"] not in REFERENCES)
        for b in budgets:
            ref = [r for r in rows if r["method"] == "random" and r["budget"] == b and metric in r]
            picked = {r["method"]: r for r in rows if r["budget"] == b and r["method"] not in REFERENCES}
            columns.append((exp, b, ref[0][metric] if ref else None, picked, adjusted))
    if not columns:
        return ""
    methods = sorted({m for *_, picked, _ in columns for m in picked}, key=lambda m: (method_rank(m), m))
    head = ["method"]
    for exp, b, ref, _, _ in columns:
        head += [f"{exp} @ {b}" + (f" (random {ref:.4f})" if ref is not None else ""), "select / train"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    partly = False
    for m in methods:
        cells = [_who(m)]
        for _, _, _, picked, adjusted in columns:
            r = picked.get(m)
            cells += ["", ""] if r is None else [_glance_cell(r, metric, adjusted, alpha),
                                                 cost_text(r, "cost_ratio", _ratio)]
            partly |= r is not None and "select_partly_cached" in r
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", GLANCE_LEGEND.format(
        metric=metric, alpha=alpha, better="negative" if lower_is_better(metric) else "positive")] + (["", PARTLY_CACHED] if partly else [])
    return "\n".join(lines) + "\n"


def machine_kind(cell: dict) -> str:
    """The machine a cell ran on, as the cell recorded it: CPU model, the features that change
    numerics (AVX-512, AMX), cores and GPU."""
    m = (cell.get("ran_with") or {}).get("machine") or {}
    if not m:
        return "not recorded"
    feats = ", ".join(m.get("features") or []) or "no AVX-512/AMX"
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return f"{m.get('cpu', '?')} ({feats}; {m.get('cores', '?')} cores{gpu})"


def _code(cell: dict) -> str:
    return (cell.get("ran_with") or {}).get("code") or "not recorded"


def pair_changes(mine: dict[int, dict], ref: dict[int, dict]) -> list[str]:
    """What changes between a seed's cell and the reference's cell of that seed (``{seed: cell}``
    each), over the seeds both hold: ``"machines"`` (:func:`machine_kind`) and ``"stage-1 models"``
    (``stage1_digest``, where both cells record one). A row made on two machines, each seed beside
    its reference cell, compares like with like: empty."""
    seeds = set(mine) & set(ref)
    out = []
    if any(machine_kind(mine[s]) != machine_kind(ref[s]) for s in seeds):
        out.append("machines")
    if any(None not in (d := (mine[s].get("stage1_digest"), ref[s].get("stage1_digest"))) and d[0] != d[1]
           for s in seeds):
        out.append("stage-1 models")
    return out


def provenance_table(cells: list[dict]) -> str:
    """Which machines, code versions and training settings made each row's cells, and the paired
    comparisons with random that span more than one machine or stage-1 model (a seed's cell and
    random's of the same seed made on different ones): such a difference
    also holds that change (bfloat16 autocast runs other kernels with and without AMX). Code
    versions are counted, not flagged: the fingerprint covers all of tunesift's source, so nearly
    every pair of sessions differs. Cells of a grid span sessions and machines; this says where, so
    a reader can weigh a small difference. Empty for no cells."""
    if not cells:
        return ""
    kinds = list(dict.fromkeys(machine_kind(c) for c in cells))
    label = {k: chr(65 + i) if i < 26 else f"M{i}" for i, k in enumerate(kinds)}
    codes = list(dict.fromkeys(_code(c) for c in cells))
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["method"], budget_key(c["budget"])), []).append(c)
    lines = ["| method | budget | seeds | machines | code versions | checkpointing | paired with random across |",
             "|---|---|---|---|---|---|---|"]
    flagged = []
    for (method, _), cs in groups.items():
        budget = "all" if cs[0]["budget"] is None else cs[0]["budget"]
        seeds = sorted(c["seed"] for c in cs)
        across = [] if method in REFERENCES else pair_changes(
            {c["seed"]: c for c in cs}, by_seed(cells, "random", cs[0]["budget"]))
        if across:
            flagged.append(f"{method} @ {budget} ({', '.join(across)})")
        ckpt = sorted({str(c.get("checkpointing", "not recorded")).replace("True", "on").replace("False", "off")
                       for c in cs})
        lines.append(f"| {method} | {budget} | {', '.join(map(str, seeds))} | "
                     f"{', '.join(sorted({label[machine_kind(c)] for c in cs}))} | "
                     f"{len({_code(c) for c in cs})} | {', '.join(ckpt)} | {', '.join(across)} |")
    lines += ["", "Machines: " + "; ".join(f"{label[k]} = {k}" for k in kinds) + ".",
              f"Code versions: {len(codes)} over all cells (fingerprints of all of tunesift's source, so "
              "most changes between them touch neither selection, training nor evaluation; each cell's "
              "`ran_with.code` says which)."]
    if flagged:
        lines += ["", "Paired with random across machines or stage-1 models (the difference includes that "
                  "change): " + "; ".join(flagged) + "."]
    return "\n".join(lines) + "\n"


def _ratio(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.2f}" if v >= 0.01 else "< 0.01"


def floor_digits(v: float, digits: int = 2) -> str:
    """``v`` > 0 rounded *down* to ``digits`` significant digits (0.126 -> "0.12", 0.0096 ->
    "0.0096", 1500.4 -> "1500"): a lower bound printed shorter stays a lower bound."""
    e = math.floor(math.log10(v)) - digits + 1
    return f"{math.floor(v / 10 ** e + 1e-9) * 10 ** e:.{max(0, -e)}f}"


#: the footnote of a † on a selection's cost (:func:`select_text`, :func:`cost_text`)
PARTLY_CACHED = ("†: no selection of this method started from an empty score cache (an earlier, interrupted "
                 "run computed part of the scores), so the full cost is higher than shown and its ratios are "
                 "lower bounds (≥).")


def select_text(row: dict) -> str:
    """A row's ``select_s`` (one decimal), marked "†" where it is only the part that ran."""
    return f"{row['select_s']:.1f}" + (" †" if "select_partly_cached" in row else "")


def cost_text(row: dict, key: str, fmt: Callable[[float], str]) -> str:
    """A cost column of ``row`` (``cost_ratio``, ``total_vs_full``) as ``fmt`` writes it, or as a
    lower bound, "≥ x †" (rounded down: :func:`floor_digits`), where part of the method's selection
    was read from a cache an earlier run filled (``select_partly_cached``): its ``select_s`` is
    then only the part that ran."""
    v = row.get(key)
    text = "" if v is None else fmt(float(v))
    if not text or "select_partly_cached" not in row:
        return text
    return f"≥ {floor_digits(float(v)) if v > 0 else '0'} †"


def markdown_table(rows: list[dict]) -> str:
    """Mean ± std per metric (arrows say which direction is better), seeds, size and costs."""
    metrics = metric_names(rows)
    capped = any("generations_capped" in r for r in rows)
    head = ["method", "budget", "seeds", "records"] + [
        f"{m} {'↓' if lower_is_better(m) else '↑'}" for m in metrics] + (["generations capped"] if capped else []) + [
        "select s (uncached)", "train s", "select / train"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paired = partly = False
    for r in rows:
        vals = [f"{r[m]:.4f}" + (f" ± {r[m + '_std']:.4f}" if r["seeds"] > 1 else " (1 seed)")
                + _versus_cell(r, m) if m in r else "" for m in metrics]
        if capped:
            n = r.get("generations_capped_seeds", r["seeds"])
            vals.append(f"{r['generations_capped']:.0f}" + (f" ({n} of {r['seeds']} seeds)" if n < r["seeds"] else "")
                        if "generations_capped" in r else "")
        paired |= any(f"{m}_vs_random" in r for m in metrics)
        partly |= "select_partly_cached" in r
        lines.append("| " + " | ".join([r["method"], str(r["budget"]), str(r["seeds"]), str(r["n_train"]), *vals,
                                        select_text(r), f"{r['train_s']:.1f}",
                                        cost_text(r, "cost_ratio", _ratio)]) + " |")
    if paired:
        lines += ["", "Δ: the mean paired difference from random at the same budget (same seeds) ± its standard "
                  "error. **\\*** marks a difference larger than two standard errors (beyond the seed "
                  "spread); without it the difference is within noise. Fewer than "
                  f"{MIN_MARK_SEEDS} paired seeds: no mark (the spread is not estimated). p: the paired "
                  "t-test's two-sided p-value (n - 1 degrees of freedom); with 3 seeds a mark at exactly "
                  "2 SE is p = 0.18, so read p < 0.05 as firm and a mark alone as suggestive."]
    lines += ["", "select / train: the selection's wall time (uncached) over the fine-tuning's on its pick."]
    if partly:
        lines += ["", PARTLY_CACHED]
    if capped:
        lines += ["", "generations capped: test generations (mean over seeds) that ran to the token limit "
                  "without ending; they weigh on ROUGE-L, cosine and exact match."]
    return "\n".join(lines) + "\n"


def _who(method: str) -> str:
    """A row's method as a verdict line names it: a control says so."""
    return f"{method} (a control)" if is_control(method) else method


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _p(p) -> str:
    return "" if p is None or not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p) -> str:
    """``p`` in running text: "= 0.063", "< 0.001"."""
    text = _p(p)
    return text if text.startswith("<") else f"= {text}"


def _versus_cell(row: dict, metric: str) -> str:
    if f"{metric}_vs_random" not in row:
        return ""
    diff, se = row[f"{metric}_vs_random"], row[f"{metric}_vs_random_se"]
    spread = f" ± {se:.4f}" if np.isfinite(se) else ""
    mark = " \\*" if beyond_noise(row, metric) else ""
    p = _p(row.get(f"{metric}_vs_random_p")) if row.get("paired_seeds", 0) >= MIN_MARK_SEEDS else ""
    n = row.get("paired_seeds", 0)  # the mean is over every seed of the row, Δ over those random ran too
    paired = f", {n} paired" if n != row["seeds"] else ""
    return f" (Δ {diff:+.4f}{spread}{mark}" + (f", p {p}" if p else "") + paired + ")"


def has_stage1(cfg) -> bool:
    """Whether the bench (a ``BenchConfig``) trains a stage-1 model per seed: a sequential
    continual bench. Here, below ``bench``, so that the tables and the runner share it."""
    return cfg.stage == "continual" and getattr(cfg, "continual", None) == "sequential"


def write_results(out: Path, rows: list[dict], cfg, cells: list[dict] | None = None) -> None:
    """results.md / .csv / .json and the plots; ``cfg``: the :class:`~tunesift.bench.BenchConfig`
    (its inputs, stage, models and training make the title); ``cells``: the cells behind the rows,
    for results.md's provenance section (:func:`provenance_table`)."""
    from .store import write_text

    if not rows:
        raise TunesiftError(f"{out}: no finished cells to tabulate")
    title = f"# tunesift bench: {Path(cfg.train).name} -> {Path(cfg.test).name} ({cfg.stage} stage)\n\n"
    note = (f"select model `{cfg.select_model}`, train model `{cfg.train_model}` ({cfg.training.mode}, "
            f"{cfg.training.epochs} epochs), mean ± std over seeds.\n\n")
    lines = verdict_lines(rows)
    selectors = any(r["method"] not in REFERENCES for r in rows)
    verdict = ("\n## Beyond the seed spread (paired differences from random > 2 SE)\n\n"
               + ("\n".join(lines) if lines != ["none"] else "None: every difference from random is within two "
                  "standard errors of the paired seed differences.") + "\n"
               + "".join(line + "\n" for line in family_lines(rows))) if selectors else ""
    items = item_lines(rows)
    if items:
        verdict += "\n## Question by question\n\n" + "\n".join(items) + f"\n\n{ITEM_NOTE}\n"
    if cells and (whole := full_lines(cells)):
        verdict += "\n## Full data against random\n\n" + "\n".join(whole) + f"\n\n{FULL_NOTE}\n"
    full = [r for r in rows if r["method"] == "full"]
    cost = (f"\nFine-tuning on the whole pool took {full[0]['train_s']:.1f} s; `total_vs_full` in results.json is "
            "(select + train) / that.\n") if full else ""
    made = f"\n## Where the cells were made\n\n{provenance_table(cells)}" if cells else ""
    write_text(out / "results.md", title + note + markdown_table(rows) + verdict + cost + made)
    write_text(out / "results.json", json.dumps(rows, indent=1) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    # in a sequential continual bench "base" is the model after stage 1 (the existing data)
    plot_results(out, rows, base_label="base (stage 1 only)" if has_stage1(cfg) else "base (no fine-tuning)")


