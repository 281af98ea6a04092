"""The statistics of the bench's comparisons with random, as pure functions of its finished cells
(dicts, as ``OUT/cells/*.json`` hold them) and of the rows :func:`tunesift.bench_tables.aggregate`
makes from them: the seed-paired difference per metric with its standard error and t-test, the
question-by-question test (sign test / token-weighted t-test over the test questions), the mark
"beyond two standard errors", and Holm's adjustment over a family of comparisons."""

from __future__ import annotations

import numpy as np

#: the rows that are references, not selectors compared with random
REFERENCES = frozenset({"base", "full", "random"})


#: random drawn with knowledge of a field no selector reads (balanced-random: stratified by ``--by``)
CONTROLS = frozenset({"balanced-random"})


def is_control(method: str) -> bool:
    """A variant of random that knows labels no selector reads: :data:`CONTROLS` and the bench's
    ``random-*`` rows (``random-gsm8k``: random within a field's value). Compared with random like
    a selector, but a control, so it stays out of the Holm family of selector comparisons."""
    return method in CONTROLS or method.startswith("random-")


def budget_key(budget) -> tuple:
    """A budget as a grouping key: ``1`` (one record) and ``1.0`` (the whole pool) are different
    budgets (:func:`~tunesift.methods.options.parse_budget`), though ``1 == 1.0`` in Python."""
    return (type(budget).__name__, budget)


def paired_p(diff: float, se: float, n: int) -> float:
    """Two-sided p-value of the paired t-test: t = diff / se with n - 1 degrees of freedom (NaN
    below 2 seeds, and NaN when every seed moved by the same amount, se 0: with no spread the test
    has nothing to measure against, e.g. one exact match fewer of 300 in each seed). With 3
    seeds, the mark's 2 SE is p = 0.18: the mark says "beyond the seed spread", p says how firmly."""
    if n < 2 or not np.isfinite(se) or se == 0:
        return float("nan")
    from scipy.stats import t

    return float(2 * t.sf(abs(diff) / se, n - 1))


def by_seed(cells: list[dict], method: str, budget) -> dict[int, dict]:
    """``method``'s cells at ``budget``, keyed by seed: what a paired comparison pairs."""
    key = budget_key(budget)
    return {c["seed"]: c for c in cells if c["method"] == method and budget_key(c["budget"]) == key}


def versus_random(cells: list[dict], method: str, budget) -> dict[str, tuple[float, float, int]]:
    """Paired differences of ``method`` from ``random`` at the same budget, per metric
    (:func:`paired_differences`; each seed's random draw and training seed are shared, so pairing
    removes most of the seed noise). Empty for random itself, base, full and unpaired methods.
    :func:`paired_p` turns one into a p-value."""
    if method in REFERENCES:
        return {}
    return paired_differences(by_seed(cells, method, budget), by_seed(cells, "random", budget))


def full_versus_random(cells: list[dict]) -> dict:
    """Training on the whole pool (``full``, budget None) against random at each budget random
    ran, paired by seed (:func:`paired_differences`): ``{budget: {metric: (diff, se, n)}}``, in
    the budgets' order, empty without full or random cells. The seed shares the training seed and,
    in a sequential continual bench, the stage-1 model; the pool is the same for every seed, so
    what pairs is less than for a selector, and the spread is mostly random's draw. A reference
    against a reference: kept out of the selectors' Holm family."""
    full = by_seed(cells, "full", None)
    if not full:
        return {}
    budgets = sorted(dict.fromkeys(budget_key(c["budget"]) for c in cells
                                   if c["method"] == "random" and c["budget"] is not None),
                     key=lambda k: float(k[1]))
    out = {}
    for _, b in budgets:
        if diffs := paired_differences(full, by_seed(cells, "random", b)):
            out[b] = diffs
    return out


def paired_differences(mine: dict[int, dict], ref: dict[int, dict]) -> dict[str, tuple[float, float, int]]:
    """Per metric, ``(mean_s d_s, std(d, ddof=1) / sqrt(n), n)`` with ``d_s = metric(mine[s]) -
    metric(ref[s])`` over the n seeds both hold (``{seed: cell}``, as :func:`by_seed` makes them),
    for the metrics ``mine`` reports that ``ref`` has in some seed. A metric missing from a cell
    counts as NaN there. Differences equal in every seed up to rounding (a discrete metric such as
    exact match moves in steps of 1/n) get se exactly 0, so :func:`paired_p` and
    :func:`beyond_noise` give no verdict rather than a float-noise one. Empty with no shared seed."""
    seeds = sorted(set(mine) & set(ref))
    out = {}
    for m in dict.fromkeys(m for s in seeds for m in mine[s]["metrics"]):
        if not any(m in ref[s]["metrics"] for s in seeds):
            continue
        d = np.array([mine[s]["metrics"].get(m, np.nan) - ref[s]["metrics"].get(m, np.nan) for s in seeds],
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
    mine, rand = by_seed(cells, method, budget), by_seed(cells, "random", budget)
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


def metric_names(rows: list[dict]) -> list[str]:
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
