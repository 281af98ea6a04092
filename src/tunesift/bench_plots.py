"""The bench's plots from its rows (:func:`tunesift.bench_tables.aggregate`): ``results.png`` (a
bar per method with the seed spread, then each method's paired difference from random with two
standard errors) and ``curve.png`` (the data-efficiency curves: metric against records picked, one
line per method, a band for the seed spread, the untuned model and the whole pool for reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bench_stats import beyond_noise, lower_is_better, metric_names


def plot_results(out: Path, rows: list[dict], base_label: str = "base (no fine-tuning)") -> None:
    """results.png: one panel per metric, a bar per method (first budget) with std error bars on an
    axis from zero, ``*`` over a bar whose paired difference from random exceeds two standard errors;
    under it, when random ran too, each method's paired difference from random with ± 2 SE error
    bars (red: beyond the seed spread, grey: within it). curve.png: each method's metric against
    the budget (error bars: std over seeds) when there are several budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metric_names(rows)
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
