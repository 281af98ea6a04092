"""The report's plots: matplotlib (Agg) figures returned as PNG ``data:`` URIs.

:func:`method_plots` gives the plots of one selection, each as (title, data URI, how to read
it): DON against NOD and the TOPSIS closeness for DONOD; the greedy gain curve (and the utility
histograms for DELIFT) for the greedy methods; both for DONOD + DELIFT in three colours; a
histogram of the ranking score kept vs dropped plus one scatter per ranked baseline.
:func:`retention_plot` draws the retention bars.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from .derived import closeness_function, cut_value, higher_first, prefilter
from .fmt import clip, fmt
from .hints import RANKED, SELECTIT_PROMPTS
from .read import Output

__all__ = ["CUT_COLOR", "DROPPED_COLOR", "KEPT_COLOR", "LINE_COLOR", "method_plots", "png", "retention_plot"]

KEPT_COLOR = "#1f77b4"
DROPPED_COLOR = "#ff7f0e"
CUT_COLOR = "#8c8c8c"  # donod+delift: records the DONOD prefilter cut
LINE_COLOR = "#d62728"  # a reference line of the score itself (IFD = 1)


def png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


Group = tuple[np.ndarray, str, str]  # (mask, colour, label) of one set of records in a plot


def _kept_dropped(kept: np.ndarray) -> list[Group]:
    return [(kept, KEPT_COLOR, "kept"), (~kept, DROPPED_COLOR, "dropped")]


def _hist(ax, values: np.ndarray, groups: np.ndarray | list[Group], title: str, xlabel: str,
          lines: tuple[tuple[float, str, str, str], ...] = (), log: bool = False) -> None:
    """Histogram of ``values`` stacked by group (a kept mask gives kept / dropped), with vertical
    ``lines`` (x, colour, line style, legend label); ``log``: log axis when the values span decades."""
    if isinstance(groups, np.ndarray):
        groups = _kept_dropped(groups)
    ok = np.isfinite(values)
    v = values[ok]
    if v.size == 0:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    else:
        nbins = min(40, max(5, int(np.sqrt(v.size)) * 2))
        if log and v.min() > 0 and v.max() > 30 * v.min():
            bins = np.geomspace(v.min(), v.max(), nbins + 1)
            ax.set_xscale("log")
        else:
            bins = np.histogram_bin_edges(v, bins=nbins)
        ax.hist([values[ok & m] for m, _, _ in groups], bins=bins, stacked=True,
                color=[c for _, c, _ in groups],
                label=[f"{lab} ({int((ok & m).sum())})" for m, _, lab in groups])
        for x, color, style, label in lines:
            ax.axvline(x, color=color, lw=1.2, ls=style, label=label)
        infinite = int(np.isinf(values).sum())
        if infinite:
            ax.text(0.99, 0.02, f"{infinite} infinite, not shown", ha="right", va="bottom", fontsize=8,
                    color="#555", transform=ax.transAxes)
        ax.legend(frameon=False, fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")


def _scatter(ax, x: np.ndarray, y: np.ndarray, groups: list[Group], title: str, xlabel: str,
             ylabel: str) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    for mask, color, label in groups:
        ax.scatter(x[mask & ok], y[mask & ok], s=14, alpha=0.7, color=color, edgecolors="none",
                   label=f"{label} ({int((mask & ok).sum())})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)


def method_plots(res: Output) -> list[tuple[str, str, str]]:
    """(title, data URI, how to read it) per plot of the method; :func:`no_plot_note` says why a
    method has none."""
    if res.method in ("random", "balanced-random"):
        return []
    plt = pyplot()
    if res.method == "rds" and "rds" in res.cols:
        return [_rds_plot(res, plt)]
    if res.method == "donod":
        return _donod_plots(res, plt)
    if res.method == "donod+delift":
        return _donod_delift_plots(res, plt)
    if res.method in RANKED:
        return _ranked_plots(res, plt)
    if "gain" not in res.cols:  # neither greedy nor ranked (balanced-random, rds): no method plot
        return []
    out = [_gain_curve(res, plt)]
    if res.method == "delift" and "helped_by" in res.cols:
        out += _utility_plots(res, plt, res.kept)
    return out


def no_plot_note(res: Output) -> str:
    """Why the page shows no score plot for ``res``'s method (random and balanced-random keep no
    score: their picks are seeded draws)."""
    opts = res.manifest.get("options") or {}
    if res.method == "balanced-random":
        return (f"balanced-random has no scores to plot: each value of {opts.get('by') or 'the --by field'} got an "
                "equal share of the budget (a value with fewer records gave its rest to the others), drawn at random "
                "within it by the seeded permutation.")
    if opts.get("within"):
        return (f"Random selection has no scores to plot: records matching --within {opts['within']} were drawn "
                "first, each with the same chance, by the seeded permutation; the others only once they ran out.")
    return ("Random selection has no scores to plot: every record had the same chance, and the seeded permutation "
            "alone decided.")


def _rds_plot(res: Output, plt) -> tuple[str, str, str]:
    """The RDS+ score (cosine to the target set's records, or to the pool centroid), kept vs dropped."""
    opts = res.manifest.get("options") or {}
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _hist(ax, res.cols["rds"], res.kept, "RDS+ score: kept vs dropped", "rds (cosine; higher is nearer)", ())
    if opts.get("stage") == "task":
        how = ("Each record's highest cosine to a target record. The picks are made round-robin over the target "
               "records, each taking its nearest record not yet picked, so a kept record need not have a high "
               "score overall: it was near some target.")
    else:
        how = "Each record's cosine to the pool's centroid: the kept ones are the most typical of the pool."
    return "RDS+ score", png(fig), how


def _donod_plots(res: Output, plt) -> list[tuple[str, str, str]]:
    c, kept = res.cols, res.kept
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _scatter(ax, c["don"], c["nod"], _kept_dropped(kept)[::-1], "DON against NOD",
             "DON  (change of the LM-head norm; higher is better)", "NOD  (size of the step; lower is better)")
    ax.axvline(0, color="#888", lw=0.8, ls="--")
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))
    ax.legend(frameon=False, fontsize=9)
    out.append(("DON against NOD", png(fig),
                "Each dot is one record. TOPSIS prefers the bottom right (high DON, low NOD). "
                "Dots left of the dashed line have negative DON: one training step on them shrinks "
                "the LM head's norm. The scores rank records; they do not say why a record scores "
                "low (a mismatched answer, a hard one, or an unusual style all can)."))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _hist(ax, c["closeness"], kept, "TOPSIS closeness", "closeness to the ideal (max DON, min NOD)")
    if kept.any() and (~kept).any():
        ax.axvline(np.nanmin(c["closeness"][kept]), color="#333", lw=1, ls="--")
    out.append(("Closeness", png(fig),
                "The ranking score. Records right of the dashed line (the cut at the budget) were kept."))
    return out


def _gain_curve(res: Output, plt) -> tuple[str, str, str]:
    order, gain = res.cols["order"], res.cols["gain"]
    picked = np.flatnonzero(order > 0)
    picked = picked[np.argsort(order[picked])]
    g = gain[picked]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    x = np.arange(1, len(g) + 1)
    ax.plot(x, g, color=KEPT_COLOR, marker="o" if len(g) <= 60 else None, ms=3, lw=1.2,
            label="marginal gain")
    ax.set_xlabel("pick order")
    ax.set_ylabel("marginal gain", color=KEPT_COLOR)
    ax.set_title("Greedy gain curve", fontsize=11)
    ax2 = ax.twinx()
    ax2.plot(x, np.nancumsum(g), color="#555", lw=1, ls="--", label="objective so far")
    ax2.set_ylabel("objective so far", color="#555")
    # from zero: gains of 11.5 down to 11.3 on an autoscaled axis look like a collapse
    finite = g[np.isfinite(g)]
    ax.set_ylim(bottom=min(0.0, float(finite.min())) if len(finite) else 0.0)
    ax2.set_ylim(bottom=min(0.0, float(np.nanmin(np.nancumsum(g)))) if len(g) else 0.0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, frameon=False, fontsize=9, loc="center right")
    return ("Greedy gain curve", png(fig),
            "The gain each pick added to the objective, in pick order. It falls as the pool gets "
            "covered; a long flat tail means the later picks add little that the earlier ones did "
            "not already cover (the budget could be smaller).")


def _utility_plots(res: Output, plt, groups: np.ndarray | list[Group],
                   among: str = "") -> list[tuple[str, str, str]]:
    out = []
    for name, xlabel, caption in (
            ("helped_by", "mean utility as a target",
             "How much the other records, shown as an in-context example, lower this record's "
             "distance on average (raw utility, before scaling; negative: examples hurt it)."),
            ("helpfulness", "mean utility as an example",
             "How much this record, shown as an in-context example, lowers the other records' "
             "distances on average (raw utility; negative: it hurts them). Greedy coverage favours "
             "helpful records, but skips helpful ones whose targets are already covered.")):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        _hist(ax, res.cols[name], groups, name, xlabel)
        out.append((f"Utility: {name}", png(fig), caption + among))
    return out


def _donod_delift_plots(res: Output, plt) -> list[tuple[str, str, str]]:
    from matplotlib.lines import Line2D

    c, kept = res.cols, res.kept
    pre, cut = prefilter(res)
    groups = [(~pre, CUT_COLOR, "cut by DONOD"), (pre & ~kept, DROPPED_COLOR, "passed, not picked"),
              (kept, KEPT_COLOR, "picked by DELIFT")]
    m, share = int(pre.sum()), (res.manifest.get("options") or {}).get("prefilter")
    opt = f", option prefilter {fmt(share)}" if share is not None else ""
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _scatter(ax, c["don"], c["nod"], groups, "DON against NOD, through both stages",
             "DON  (change of the LM-head norm; higher is better)", "NOD  (size of the step; lower is better)")
    ax.axvline(0, color="#aaa", lw=0.8, ls=":")
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))
    handles, _ = ax.get_legend_handles_labels()
    closeness = closeness_function(res) if math.isfinite(cut) else None
    if closeness is not None:
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        gx, gy = np.meshgrid(np.linspace(x0, x1, 240), np.linspace(y0, y1, 240))
        ax.contour(gx, gy, closeness(gx, gy), levels=[cut], colors="#333", linestyles="--", linewidths=1)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        handles.append(Line2D([], [], color="#333", ls="--", lw=1, label="prefilter cut"))
    ax.legend(handles=handles, frameon=False, fontsize=9)
    curve = (" The dashed curve is the prefilter cut: points on it have the closeness of the last record "
             "let through, and DONOD keeps the side towards the bottom right." if closeness is not None
             else "")
    n_ok = res.n - int(res.unscored.sum())
    grey = (f"grey ones were cut by DONOD's prefilter (all but the top {m} of {n_ok} by TOPSIS "
            f"closeness{opt}), " if m < n_ok else f"DONOD's prefilter cut none{opt}; ")
    out.append(("DON against NOD, through both stages", png(fig),
                f"Each dot is one record: {grey}orange ones passed it but DELIFT did not pick them, "
                f"blue ones were picked.{curve} Dots left of the dotted line have negative DON: one "
                "training step on them shrinks the LM head's norm."))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    lines = ((cut, "#333", "--", "prefilter cut"),) if math.isfinite(cut) else ()
    _hist(ax, c["closeness"], groups, "TOPSIS closeness", "closeness to the ideal (max DON, min NOD)",
          lines)
    passed = (f"Records right of the dashed line (the top {m} of {n_ok}) went on to DELIFT."
              if lines else f"All {m} records went on to DELIFT.")
    out.append(("Closeness and the prefilter", png(fig),
                f"DONOD's score. {passed} The picked ones need not be the closest: DELIFT picks for "
                "coverage among the records that passed, not by closeness."))
    out.append(_gain_curve(res, plt))
    if "helped_by" in c:
        out += _utility_plots(res, plt, [(kept, KEPT_COLOR, "picked"),
                                         (pre & ~kept, DROPPED_COLOR, "passed, not picked")],
                              f" Computed among the {m} records DONOD let through; cut records have none.")
    return out


def _ranked_plots(res: Output, plt) -> list[tuple[str, str, str]]:
    spec, c, kept = RANKED[res.method], res.cols, res.kept
    x = c[spec.column]
    hi = higher_first(res)
    cut = cut_value(res, x)
    lines = [(cut, "#333", "--", f"cut ({fmt(cut)})")] if math.isfinite(cut) else []
    if res.method == "ifd":
        lines.append((1.0, LINE_COLOR, ":", "IFD = 1"))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    title = f"{spec.label}: kept vs dropped"
    xlabel = (f"{spec.label}  ({'higher' if hi else 'lower'} is kept first)" if res.method != "ifd"
              else "IFD  (the highest below 1 is kept first)")
    _hist(ax, x, kept, title, xlabel, tuple(lines), log=spec.log)
    if res.k == res.n - int(res.unscored.sum()):
        how = ("Every record was kept: the budget is the whole input." if not res.unscored.any() else
               f"Every scored record was kept (the budget covers them); the {int(res.unscored.sum())} not scored "
               "were never kept.")
    elif res.method == "ifd":
        below = int((x < 1).sum())
        how = ("The kept records lie between the dashed cut and the dotted IFD = 1 line; the rest "
               "right of it (IFD >= 1: the prompt does not help) were dropped first."
               if below >= res.k else
               f"Only {below} records have IFD < 1, fewer than the budget of {res.k}: all of them "
               "were kept, then the lowest IFD >= 1 up to the dashed cut.")
    else:
        side = "right" if hi else "left"
        sup, extreme = spec.words[2 if hi else 0], "highest" if hi else "lowest"
        kept_what = (f"the {res.k} with the {extreme} {spec.label}" if sup == extreme
                     else f"the {res.k} {sup} records (the {extreme} {spec.label})")
        how = f"Kept: {kept_what}" + (f", {side} of the dashed cut." if lines else ".")
    out = [(title, png(fig), f"{spec.meaning} {how}")]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    groups = _kept_dropped(kept)[::-1]
    if res.method in ("loss", "perplexity"):
        _scatter(ax, c["n_tokens"], x, groups, f"{spec.label} against response length",
                 "response tokens scored", spec.label)
        if np.nanmin(c["n_tokens"]) > 0 and np.nanmax(c["n_tokens"]) > 30 * np.nanmin(c["n_tokens"]):
            ax.set_xscale("log")
        if spec.log and np.nanmin(x) > 0:
            ax.set_yscale("log")
        ax.legend(frameon=False, fontsize=9)
        out.append((f"{spec.label} against length", png(fig),
                    f"Each dot is one record. If the kept dots gather at one end of the length axis, "
                    f"selecting by {spec.label} is partly a length filter."))
    elif res.method == "ifd":
        a, b = c["loss_alone"], c["loss"]
        _scatter(ax, a, b, groups, "Loss with and without the prompt", "loss without the prompt",
                 "loss with the prompt")
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.any():
            lo, hi_ = float(min(a[ok].min(), b[ok].min())), float(max(a[ok].max(), b[ok].max()))
            ax.plot([lo, hi_], [lo, hi_], color=LINE_COLOR, lw=1.2, ls=":", label="IFD = 1")
        ax.legend(frameon=False, fontsize=9)
        out.append(("Loss with and without the prompt", png(fig),
                    "Each dot is one record; IFD is the ratio y / x. Below the dotted diagonal the "
                    "prompt makes the response easier to predict (IFD < 1); on or above it, it does "
                    "not (IFD >= 1). IFD keeps the dots just below the diagonal: the prompt helps, but "
                    "only a little."))
    elif res.method == "selectit":
        _scatter(ax, c["selectit_mean"], c["selectit_std"], groups, "Rating: mean against spread",
                 f"mean rating over the {SELECTIT_PROMPTS} prompts", "std of the ratings")
        ax.legend(frameon=False, fontsize=9)
        alpha = (res.manifest.get("options") or {}).get("selectit_alpha")
        mass = c["selectit_digit_mass"]
        note = ""
        if np.isfinite(mass).any():
            m = float(np.nanmean(mass))
            note = (f" On average {100 * m:.1f}% of the model's next-token probability went to the "
                    "digits 1 to 5" + (" (little: the model mostly answers with other tokens, so its "
                                       "ratings are a weak signal)." if m < 0.5 else "."))
        out.append(("Rating: mean against spread", png(fig),
                    "Each dot is one record. Each rating is the digit the model finds most likely, "
                    "weighted by how sure it is, so an unsure 5 can score below a sure 3. The score "
                    f"is mean / (1 + alpha std), alpha {fmt(alpha)}: a record rated inconsistently "
                    "across the prompts is pushed down." + note))
    else:
        plt.close(fig)
    return out


def retention_plot(rows: list[tuple[str, int, int]], n: int, k: int) -> str:
    plt = pyplot()
    total = len(rows)
    rows = rows[:30]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    # a category's text is data: "$" would start matplotlib's math mode (a ValueError on "$\\foo$")
    labels = [clip(r[0], 30).replace("$", r"\$") for r in rows][::-1]
    vals = [100 * r[2] / r[1] if r[1] else 0 for r in rows][::-1]
    ax.barh(range(len(rows)), vals, color=KEPT_COLOR)
    for y, (v, r) in enumerate(zip(vals, rows[::-1])):
        ax.text(v + 1, y, f"{r[2]}/{r[1]}", va="center", fontsize=8, color="#333")
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.axvline(100 * k / n if n else 0, color="#333", lw=1, ls="--", label="overall")
    ax.set_xlim(0, 100)
    ax.set_xlabel("kept (% of the category)")
    if total > len(rows):  # the table lists more: say the chart does not
        ax.set_title(f"the {len(rows)} largest of {total} categories", fontsize=10)
    ax.legend(frameon=False, fontsize=9, loc="lower right")
    return png(fig)
