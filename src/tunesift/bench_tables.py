"""The bench's results from its finished cells: mean and spread over seeds, the paired difference
from random with its standard error and the mark where it exceeds two, selection cost against
fine-tuning cost, and the tables and plots (``results.md`` / ``.csv`` / ``.json``, ``results.png``,
``curve.png``). Pure functions of the cells (dicts, as ``OUT/cells/*.json`` hold them), apart from
the writers; :mod:`tunesift.bench` runs the cells."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import TunesiftError
from .methods.catalogue import method_names

#: the rows that are references, not selectors compared with random
REFERENCES = frozenset({"base", "full", "random"})


#: random drawn with knowledge of a field no selector reads (balanced-random: stratified by ``--by``)
CONTROLS = frozenset({"balanced-random"})


def is_control(method: str) -> bool:
    """A variant of random that knows labels no selector reads: :data:`CONTROLS` and the bench's
    ``random-*`` rows (``random-gsm8k``: random within a field's value). Compared with random like
    a selector, but a control, so it stays out of the Holm family of selector comparisons."""
    return method in CONTROLS or method.startswith("random-")


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
        groups.setdefault((c["method"], _budget_key(c["budget"])), []).append(c)
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
    (``score_cache.cached == 0``; see :func:`tunesift.bench._select_for_cell`), or another
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


def _budget_key(budget) -> tuple:
    """A budget as a grouping key: ``1`` (one record) and ``1.0`` (the whole pool) are different
    budgets (:func:`~tunesift.methods.options.parse_budget`), though ``1 == 1.0`` in Python."""
    return (type(budget).__name__, budget)


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


def paired_p(diff: float, se: float, n: int) -> float:
    """Two-sided p-value of the paired t-test: t = diff / se with n - 1 degrees of freedom (NaN
    below 2 seeds, and NaN when every seed moved by the same amount, se 0: with no spread the test
    has nothing to measure against, e.g. one exact match fewer of 300 in each seed). With 3
    seeds, the mark's 2 SE is p = 0.18: the mark says "beyond the seed spread", p says how firmly."""
    if n < 2 or not np.isfinite(se) or se == 0:
        return float("nan")
    from scipy.stats import t

    return float(2 * t.sf(abs(diff) / se, n - 1))


def _by_seed(cells: list[dict], method: str, budget) -> dict[int, dict]:
    """``method``'s cells at ``budget``, keyed by seed: what a paired comparison pairs."""
    key = _budget_key(budget)
    return {c["seed"]: c for c in cells if c["method"] == method and _budget_key(c["budget"]) == key}


def versus_random(cells: list[dict], method: str, budget) -> dict[str, tuple[float, float, int]]:
    """Paired differences of ``method`` from ``random`` at the same budget, per metric:
    ``(mean_s d_s, std(d, ddof=1) / sqrt(n), n)`` with ``d_s = metric(method, s) - metric(random, s)``
    over the n seeds both ran (each seed's random draw and training seed are shared, so pairing
    removes most of the seed noise). Empty for random itself, base, full and unpaired methods.
    A metric missing from a cell counts as NaN there. Differences equal in every seed up to
    rounding (a discrete metric such as exact match moves in steps of 1/n) get se exactly 0, so
    :func:`paired_p` and :func:`beyond_noise` give no verdict rather than a float-noise one.
    :func:`paired_p` turns one into a p-value."""
    if method in REFERENCES:
        return {}
    mine, rand = _by_seed(cells, method, budget), _by_seed(cells, "random", budget)
    seeds = sorted(set(mine) & set(rand))
    if not seeds:
        return {}
    out = {}
    for m in dict.fromkeys(m for s in seeds for m in mine[s]["metrics"]):
        if not any(m in rand[s]["metrics"] for s in seeds):
            continue
        d = np.array([mine[s]["metrics"].get(m, np.nan) - rand[s]["metrics"].get(m, np.nan) for s in seeds],
                     dtype=float)
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        if np.isfinite(se) and np.ptp(d) <= 1e-9 * np.abs(d).max():  # the same move in every seed
            se = 0.0
        out[m] = (float(d.mean()), se, len(d))
    return out


def versus_random_items(cells: list[dict], method: str, budget) -> dict[str, dict]:
    """Question-by-question comparison of ``method`` with ``random`` at the same budget, per metric
    the cells keep per test question (``cell["items"]``, :func:`tunesift.bench.item_results`), over
    the n seeds both ran with the same questions kept; each question's result is averaged over
    those seeds first (``x_i = mean_s x_si``), so the questions are the units:

    - pass/fail (exact match, a ``"0"``/``"1"`` string): ``d_i = m_i - r_i``; ``better = #{d_i > 0}``
      (the method's models answer it more often), ``worse = #{d_i < 0}``, and the two-sided sign
      test's ``p = binomtest(better, better + worse, 1/2)``;
    - loss (per-question mean token loss, with ``n_tokens`` per question): ``d_i = w_i (m_i - r_i)``
      with ``w_i`` the question's response tokens, so ``diff = sum d / sum w`` is the token-weighted
      loss difference the table's loss is built from; ``se = std(d, ddof=1) / sqrt(N) / mean(w)``
      over the N questions and the paired t-test's two-sided p (N - 1 degrees of freedom).

    Returns ``{metric: {"better", "worse", "n", "seeds", "p"}}`` (pass/fail) or ``{metric: {"diff",
    "se", "n", "seeds", "p"}}`` (loss); empty where there is nothing to pair.

    :func:`versus_random` holds the test questions fixed and asks whether other training seeds
    would repeat a difference; this holds the trained models fixed and asks whether other test
    questions would: at 1-8 exact matches in 300 the second is the weaker link, and a difference
    firm under both holds either way."""
    if method in REFERENCES:
        return {}
    mine, rand = _by_seed(cells, method, budget), _by_seed(cells, "random", budget)
    out = {}
    for m in dict.fromkeys(m for c in mine.values() for m in c.get("items", {}) if not m.startswith("n_tokens")):
        tokens = "n_tokens" + m[len(m.partition("@")[0]):]  # loss@gsm8k's weights: n_tokens@gsm8k
        # pair a seed only where both cells kept the same questions, and only seeds that agree on
        # them: the largest such group (more questions on a tie)
        groups: dict[tuple, list[int]] = {}
        for s in sorted(set(mine) & set(rand)):
            if (kind := _kept(mine[s], m, tokens)) is not None and kind == _kept(rand[s], m, tokens):
                groups.setdefault(kind, []).append(s)
        if not groups:
            continue
        seeds = max(groups.values(), key=lambda ss: (len(ss), _kept(mine[ss[0]], m, tokens)[0]))
        if isinstance(mine[seeds[0]]["items"][m], str):  # pass/fail
            a = np.array([[c == "1" for c in mine[s]["items"][m]] for s in seeds], dtype=float)  # (n, questions)
            b = np.array([[c == "1" for c in rand[s]["items"][m]] for s in seeds], dtype=float)
            d = a.mean(axis=0) - b.mean(axis=0)  # (questions,)
            if lower_is_better(m):
                d = -d
            better, worse = int((d > 0).sum()), int((d < 0).sum())
            p = float("nan")
            if better + worse:
                from scipy.stats import binomtest

                p = float(binomtest(better, better + worse, 0.5).pvalue)
            out[m] = {"better": better, "worse": worse, "n": len(d), "seeds": len(seeds), "p": p}
        else:  # per-question values, weighted by their tokens where the cells keep them
            a = np.array([mine[s]["items"][m] for s in seeds], dtype=float)  # (n, questions)
            b = np.array([rand[s]["items"][m] for s in seeds], dtype=float)
            w = np.asarray(mine[seeds[0]]["items"].get(tokens) or np.ones(a.shape[1]), dtype=float)
            live = w > 0  # a question without response tokens has no loss to compare (evaluate's 0)
            a, b, w = a[:, live], b[:, live], w[live]
            d = w * (a.mean(axis=0) - b.mean(axis=0))  # (questions,)
            diff = float(d.sum() / w.sum()) if w.sum() > 0 else float("nan")
            se = float(d.std(ddof=1) / np.sqrt(len(d)) / w.mean()) if len(d) > 1 and w.sum() > 0 else float("nan")
            out[m] = {"diff": diff, "se": se, "n": len(d), "seeds": len(seeds), "p": paired_p(diff, se, len(d))}
    return out


def _kept(cell: dict, metric: str, tokens: str) -> tuple | None:
    """Which questions a cell kept ``metric`` for: (how many, their token counts: per-question
    values only, the weights of a loss; a pass/fail string's cell may have been backfilled without
    them), None for none."""
    items = cell.get("items", {})
    if metric not in items:
        return None
    return len(items[metric]), () if isinstance(items[metric], str) else tuple(items.get(tokens) or ())


def item_lines(rows: list[dict]) -> list[str]:
    """One line per (row, metric) compared with random question by question
    (:func:`versus_random_items`): for pass/fail metrics the questions it gets right more often and
    less often than random's models with the sign test's p; for the loss the token-weighted
    difference over the questions with its standard error and p."""
    out = []
    for r in rows:
        for m in _metric_names([r]):
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


ITEM_NOTE = ("Each test question's result averaged over the paired seeds, the method's models against "
             "random's: for pass/fail metrics a sign test over the questions that differ, for the loss a "
             "paired t-test over the questions (token-weighted, as the loss is). The seed-paired test above "
             "holds the questions fixed; this one holds the trained models fixed and asks whether other "
             "questions would show the same difference. Each line is one comparison, not corrected for the "
             "table's many (no Holm here). Cells without their per-question results (made on "
             "another machine before cells kept them; per-question losses from session 21 on) are left out.")


# paired seeds a mark needs: the standard error of two differences has one degree of freedom, so
# "beyond 2 SE" would flag 2 of 300 exact matches (measured on the evidence grid's task bench)
MIN_MARK_SEEDS = 3


def beyond_noise(row: dict, metric: str) -> bool | None:
    """Whether the row's paired difference from random exceeds two standard errors of the paired
    seed differences (None: no paired difference, fewer than :data:`MIN_MARK_SEEDS` paired seeds,
    too few for the spread to be estimated, or no spread at all: se 0)."""
    diff, se = row.get(f"{metric}_vs_random"), row.get(f"{metric}_vs_random_se")
    if diff is None or se is None or not np.isfinite(se) or se == 0 \
            or row.get("paired_seeds", 0) < MIN_MARK_SEEDS:
        return None
    return bool(abs(diff) > 2 * se)


STAT_SUFFIXES = ("_std", "_vs_random", "_vs_random_se", "_vs_random_p", "_items_better", "_items_worse",
                 "_items_diff", "_items_se", "_items_p", "_items_n", "_items_seeds")


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
        metrics = [m for m in _metric_names([r]) if f"{m}_vs_random" in r]
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


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of m p-values (m,) -> (m,): with p sorted ascending,
    ``adj_(j) = max_{i <= j} min(1, (m - i) p_(i))`` (i, j from 0), returned in the input order. An
    adjusted p below alpha keeps the chance of any false mark over the family at most alpha."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def family_lines(rows: list[dict], alpha: float = 0.05) -> list[str]:
    """One line on how the marks hold up as a family: every paired comparison with random that has
    :data:`MIN_MARK_SEEDS` seeds and a finite p (selector rows x budgets x metrics), Holm-adjusted
    (:func:`holm`), and the ones still below ``alpha``. Conservative where metrics move together
    (loss and perplexity are one measurement). Empty when there is nothing to compare."""
    tests = [(r, m, r[f"{m}_vs_random_p"]) for r in rows if r["method"] not in REFERENCES
             and not is_control(r["method"])
             and r.get("paired_seeds", 0) >= MIN_MARK_SEEDS for m in _metric_names([r])
             if np.isfinite(r.get(f"{m}_vs_random_p", float("nan")))]
    if not tests:
        return []
    adj = holm(np.array([p for _, _, p in tests]))
    firm = [f"{r['method']} @ {r['budget']} {m} (adjusted p {_p(a)})" for (r, m, _), a in zip(tests, adj) if a < alpha]
    head = (f"- as a family (Holm over the {len(tests)} paired comparisons of selectors with {MIN_MARK_SEEDS}+ "
            "seeds, all metrics; controls apart): ")
    return [head + (f"{len(firm)} stay below {alpha}: " + ", ".join(firm) if firm
                    else f"none stays below {alpha}; read each mark as suggestive")]


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


def provenance_table(cells: list[dict]) -> str:
    """Which machines, code versions and training settings made each row's cells, and the paired
    comparisons with random that span more than one machine or stage-1 model: such a difference
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
        groups.setdefault((c["method"], _budget_key(c["budget"])), []).append(c)
    lines = ["| method | budget | seeds | machines | code versions | checkpointing | paired with random across |",
             "|---|---|---|---|---|---|---|"]
    flagged = []
    for (method, _), cs in groups.items():
        budget = "all" if cs[0]["budget"] is None else cs[0]["budget"]
        seeds = sorted(c["seed"] for c in cs)
        rand = [c for s, c in _by_seed(cells, "random", cs[0]["budget"]).items() if s in seeds]
        both = cs + (rand if method not in REFERENCES else [])
        across = ["machines"] if rand and method not in REFERENCES and len({machine_kind(c) for c in both}) > 1 else []
        stage1 = {}
        for c in both:
            if "stage1_digest" in c:
                stage1.setdefault(c["seed"], set()).add(c["stage1_digest"])
        if any(len(v) > 1 for v in stage1.values()):
            across.append("stage-1 models")
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
    metrics = _metric_names(rows)
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
    sequential = cfg.stage == "continual" and getattr(cfg, "continual", None) == "sequential"
    plot_results(out, rows, base_label="base (stage 1 only)" if sequential else "base (no fine-tuning)")


def plot_results(out: Path, rows: list[dict], base_label: str = "base (no fine-tuning)") -> None:
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
        have = [r for r in shown if m in r]  # a row from cells without this metric has no bar
        names = [r["method"] for r in have]
        ax.bar(range(len(have)), [r[m] for r in have], yerr=[r[f"{m}_std"] for r in have], capsize=3,
               color=["#999999" if n in ("base", "full") else "#4c72b0" for n in names])
        ax.set_xticks(range(len(have)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(m, fontsize=9)
        # bars start at zero (no truncated axis that makes noise look decisive)
        ends = [v for r in have for v in (r[m] - r[f"{m}_std"], r[m] + r[f"{m}_std"]) if np.isfinite(v)]
        lo, hi = min([0.0, *ends]), max([0.0, *ends])
        ax.set_ylim(lo * 1.1, hi * 1.12 or 0.01)
        for x, r in enumerate(have):
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
        plot_curves(out / "curve.png", rows, metrics, base_label)


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
    vals = [v for v in vals if np.isfinite(v)]  # a row missing the metric in a seed is NaN: not drawn
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if metric.partition("@")[0] in BOUNDED:
        lo = min(0.0, lo)
    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
    return (lo if lo == 0.0 else lo - pad), hi + pad


def plot_curves(path: Path, rows: list[dict], metrics: list[str], base_label: str = "base (no fine-tuning)") -> None:
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
            ax.axhline(data["base"], color="#888", ls="--", lw=0.9, label=base_label)
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
