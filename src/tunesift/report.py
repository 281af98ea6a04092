"""``tunesift report OUT/``: one self-contained HTML page that explains a selection.

The page reads the three files :func:`tunesift.outputs.write_selection` wrote (``manifest.json``,
``scores.parquet``, ``selected.jsonl``) and shows:

- what was run: method (and DELIFT stage), budget, counts, model, timings and every option;
- the score distributions as embedded PNG plots (matplotlib, Agg backend): DON against NOD
  coloured kept/dropped and the TOPSIS closeness for DONOD; the greedy gain curve for DELIFT and
  DELIFT (SE), with the utility histograms (``helped_by``, ``helpfulness``) for DELIFT; for
  DONOD + DELIFT the DON/NOD scatter in three colours (cut by the DONOD prefilter, passed but not
  picked, picked) with the prefilter cut, then DELIFT's plots; for the ranked baselines (loss,
  perplexity, IFD, SelectIT, and any method in :data:`_RANKED`) the histogram of the ranking
  score kept vs dropped with the cut, plus one scatter per baseline;
- the 10 first-ranked kept records and 10 dropped records with their scores and a one-line
  "why" derived from the scores;
- with ``by="meta.family"`` (a field of the original rows, dotted for nested dicts): the
  retention per category. Kept rows come from ``selected.jsonl``; dropped rows need the input
  file (``data=`` or the path recorded in the manifest).

The page has no external resources: inline CSS, images as base64 ``data:`` URIs, no script.
Every piece of text from the data is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TunesiftError

__all__ = ["render_report", "write_report", "REPORT_FILE"]

REPORT_FILE = "report.html"
TOP = 10  # records shown per table
CLIP = 200  # characters of prompt / response shown
MAX_CATEGORIES = 40  # retention rows before the rest are summed into one row
KEPT_COLOR = "#1f77b4"
DROPPED_COLOR = "#ff7f0e"
_MISSING = object()

CUT_COLOR = "#8c8c8c"  # donod+delift: records the DONOD prefilter cut
LINE_COLOR = "#d62728"  # a reference line of the score itself (IFD = 1)
SELECTIT_PROMPTS = 5  # rating prompts per record: len(tunesift.scoring.baselines.DEFAULT_PROMPTS)


@dataclass(frozen=True)
class _Ranked:
    """A method that keeps the top ``budget`` records of one score column.

    Adding a method here is all the report needs for it: its options, score columns, the
    histogram of the score kept vs dropped with the cut, the why line and the dropped list.
    """

    column: str  # the ranking score (a scores.parquet column)
    label: str  # its name in the why lines
    higher_first: bool  # direction; keep="hardest" flips it for methods with the "keep" option
    meaning: str  # what the score measures, one sentence for the plot caption
    columns: tuple[str, ...]  # every score column shown, the ranking one first
    options: tuple[str, ...] = ()  # the method's own options (after the model's)
    optional: tuple[str, ...] = ()  # further columns shown when scores.parquet has them
    words: tuple[str, str, str, str] = ("lowest", "lower", "highest", "higher")  # superlatives, comparatives
    log: bool = False  # plot on a log axis when the values span decades


_LOSS_WORDS = ("easiest", "easier", "hardest", "harder")
_RANKED = {
    "loss": _Ranked("loss", "loss", False,
                    "The mean negative log-likelihood of the response tokens given the prompt (nats per "
                    "token): low means the model already predicts the response well.",
                    ("loss", "perplexity", "n_tokens"), ("keep",), words=_LOSS_WORDS),
    "perplexity": _Ranked("perplexity", "perplexity", False,
                          "exp(loss), the response's per-token perplexity given the prompt: it ranks "
                          "exactly like the loss.", ("perplexity", "loss", "n_tokens"), ("keep",),
                          words=_LOSS_WORDS, log=True),
    "ifd": _Ranked("ifd", "IFD", True,
                   "Instruction-Following Difficulty: the response loss with the prompt divided by the "
                   "loss without it. Below 1 the prompt helps predict the response; IFD keeps the "
                   "highest IFD below 1 and drops IFD >= 1 first.",
                   ("ifd", "loss", "loss_alone", "n_tokens")),
    "selectit": _Ranked("selectit", "selectit", True,
                        "The model's own rating of the record (1 to 5, weighted by how sure it is) "
                        "averaged over the rating prompts, divided by 1 + alpha times their spread.",
                        ("selectit", "selectit_mean", "selectit_std", "selectit_digit_mass"),
                        ("selectit_alpha",)),
    "less": _Ranked("less", "LESS", True,
                    "The cosine between the record's training update (Adam direction of its LoRA "
                    "gradient after a short warm-up, randomly projected) and the target set's "
                    "gradient: higher means training on it should lower the target loss more.",
                    ("less",), ("seed", "stage", "less_dim"), optional=("less_grad_norm", "less_warmup")),
}

_LM_OPTIONS = ("model", "device", "dtype", "template", "max_length", "token_budget")

# Options that matter for each method (the rest are shown folded away).
_RELEVANT = {
    "random": ("method", "budget", "seed"),
    "donod": ("method", "budget", "model", "device", "dtype", "template", "max_length", "token_budget",
              "eta", "reduction", "weights"),
    "delift": ("method", "budget", "seed", "model", "device", "dtype", "template", "max_length",
               "token_budget", "stage", "distance", "knn", "clip_negative", "keep_diagonal", "mi_eta",
               "mi_form", "nu", "optimizer", "epsilon"),
    "delift-se": ("method", "budget", "seed", "device", "stage", "knn", "mi_eta", "mi_form", "nu",
                  "optimizer", "epsilon"),
    "donod+delift": ("method", "budget", "seed", *_LM_OPTIONS, "prefilter", "eta", "reduction", "weights",
                     "stage", "distance", "knn", "clip_negative", "keep_diagonal", "mi_eta", "mi_form", "nu",
                     "optimizer", "epsilon"),
    **{m: ("method", "budget", *_LM_OPTIONS, *r.options) for m, r in _RANKED.items()},
}
_STAGE_ONLY = {"mi_eta": "task", "mi_form": "task", "nu": "continual"}
_GREEDY = ("delift", "delift-se", "donod+delift")  # methods whose kept records are greedy picks


# ----------------------------------------------------------------------------- reading


@dataclass
class _Output:
    folder: Path
    manifest: dict
    cols: dict[str, np.ndarray]  # every scores.parquet column as a numpy array (nulls -> NaN)
    ids: list[str]
    kept: np.ndarray
    selected: list[dict]  # selected.jsonl rows, in file (= input) order
    method: str
    notes: list[str] = field(default_factory=list)
    bools: set[str] = field(default_factory=set)  # columns stored as booleans (shown yes / no)
    errors: list[str | None] = field(default_factory=list)  # why a record was not scored (error rows)

    @property
    def unscored(self) -> np.ndarray:
        """Mask of the error rows (``select --on-error skip``): never scored, never kept."""
        if not self.errors:
            return np.zeros(self.n, dtype=bool)
        return np.array([e is not None for e in self.errors], dtype=bool)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return int(self.kept.sum())


def _read_output(out_dir: str | Path) -> _Output:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    if not out.is_dir():
        raise TunesiftError(f"{out}: no such output folder (write one with tunesift select --out {out})")
    mpath, spath, jpath = out / "manifest.json", out / "scores.parquet", out / "selected.jsonl"
    for p in (mpath, spath, jpath):
        if not p.is_file():
            raise TunesiftError(f"{p}: missing; is '{out}' a tunesift select output folder?")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TunesiftError(f"{mpath}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TunesiftError(f"{mpath}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(manifest, dict):
        raise TunesiftError(f"{mpath}: not a tunesift manifest (expected a JSON object)")
    method = manifest.get("method")
    if method not in _RELEVANT:
        raise TunesiftError(f"{mpath}: unknown method {method!r}; expected one of {', '.join(_RELEVANT)}")
    try:
        table = pq.read_table(spath)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise TunesiftError(f"{spath}: cannot read scores: {_one_line(exc)}") from None
    need = {"id", "kept", "rank"} | set(_SCORE_COLUMNS[method])
    missing = sorted(need - set(table.column_names))
    if missing:
        raise TunesiftError(f"{spath}: missing column(s) {', '.join(missing)} for method {method}")
    cols: dict[str, np.ndarray] = {}
    bools = set()
    for name in table.column_names:
        col = table.column(name)
        if name == "id":
            continue
        if name == "kept":
            cols[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=bool)
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            cols[name] = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
            if pa.types.is_boolean(col.type):
                bools.add(name)
    ids = [str(x) for x in table.column("id").to_pylist()]
    selected = []
    try:
        with open(jpath, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        selected.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise TunesiftError(f"{jpath}:{lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TunesiftError(f"{jpath}: cannot read: {exc}") from None
    res = _Output(out, manifest, cols, ids, cols["kept"], selected, method, bools=bools)
    if "error" in table.column_names:
        res.errors = [str(e) if e else None for e in table.column("error").to_pylist()]
        bad = [e for e in res.errors if e is not None]
        if bad:
            res.notes.append(f"{len(bad)} record(s) could not be scored and were never kept "
                             f"(select --on-error skip), e.g. {_clip(bad[0], 300)}")
    if len(selected) != res.k:
        raise TunesiftError(f"{jpath}: {len(selected)} rows, but {spath.name} marks {res.k} records kept")
    counts = manifest.get("counts") or {}
    if counts and (counts.get("input"), counts.get("kept")) != (res.n, res.k):
        res.notes.append(f"manifest.json counts ({counts.get('kept')} of {counts.get('input')}) differ from "
                         f"scores.parquet ({res.k} of {res.n}); the page uses scores.parquet")
    return res


@dataclass
class _Input:
    texts: dict[str, tuple[str, str]]  # id -> (prompt, response)
    rows: dict[str, dict] | None  # id -> original row, for the dropped records (None: input not read)


def _read_input(res: _Output, data: str | Path | None, by: str | None) -> _Input:
    """Texts of the shown records and, when possible, the rows of the dropped ones."""
    from .records import read_records, records_from_rows

    texts: dict[str, tuple[str, str]] = {}
    kept_ids = [i for i, k in zip(res.ids, res.kept) if k]
    for rid, row in zip(kept_ids, res.selected):
        try:
            rec = records_from_rows([row], source="selected.jsonl")[0]
            texts[rid] = (rec.prompt, rec.response)
        except TunesiftError:  # a custom field mapping: show the raw row
            texts[rid] = (json.dumps(row, ensure_ascii=False, default=str), "")
    inputs = res.manifest.get("inputs") or {}
    recorded = (inputs.get("data") or {}).get("path") if isinstance(inputs, dict) else None
    path = data if data is not None else recorded
    if res.n == res.k:
        return _Input(texts, {})
    if path is None:
        reason = "manifest.json records no input path"
        if by is not None:
            raise TunesiftError(f"--by {by} needs the dropped rows: {reason}; pass the input with --data FILE")
        res.notes.append(f"dropped records are shown without their text: {reason} (pass --data FILE)")
        return _Input(texts, None)
    try:
        records = read_records(path)
    except TunesiftError as exc:
        if by is not None:
            hint = "" if data is not None else "; pass the input with --data FILE"
            raise TunesiftError(f"--by {by} needs the dropped rows from the input: {exc}{hint}") from None
        res.notes.append(f"dropped records are shown without their text: cannot read the input ({exc})")
        return _Input(texts, None)
    by_id = {r.id: r for r in records}
    dropped = [i for i, k in zip(res.ids, res.kept) if not k]
    lost = [i for i in dropped if i not in by_id]
    if lost:
        msg = (f"{path}: does not match {res.folder / 'scores.parquet'}: {len(lost)} of the {len(dropped)} "
               f"dropped record ids are not in it (e.g. '{lost[0]}')")
        if by is not None:
            raise TunesiftError(msg + "; pass the input that was selected from with --data FILE")
        res.notes.append(msg + "; dropped records are shown without their text")
        return _Input(texts, None)
    sha = (inputs.get("data") or {}).get("sha256")
    if sha and data is None:
        from .records import input_checksum

        try:
            if input_checksum(path) != sha:
                res.notes.append(f"{path} changed since the selection (sha256 differs from the manifest)")
        except TunesiftError:
            pass
    for rid in dropped:
        texts[rid] = (by_id[rid].prompt, by_id[rid].response)
    return _Input(texts, {rid: by_id[rid].row for rid in dropped})


def field_value(row: Any, name: str) -> Any:
    """``row[name]``, or with a dotted name the nested value (``meta.family``); ``_MISSING`` if absent."""
    if isinstance(row, dict) and name in row:
        return row[name]
    cur = row
    for part in name.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def _category(value: Any) -> str:
    if value is _MISSING:
        return "(missing)"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def retention(res: _Output, inp: _Input, by: str) -> list[tuple[str, int, int]]:
    """(category, input count, kept count) per value of field ``by``, largest categories first."""
    counts: dict[str, list[int]] = {}
    for row in res.selected:
        counts.setdefault(_category(field_value(row, by)), [0, 0])[1] += 1
    assert inp.rows is not None
    for row in inp.rows.values():
        counts.setdefault(_category(field_value(row, by)), [0, 0])
    for row in list(res.selected) + list(inp.rows.values()):
        counts[_category(field_value(row, by))][0] += 1
    if set(counts) == {"(missing)"}:
        raise TunesiftError(f"--by {by}: no record has the field '{by}' (use a dotted name like "
                            "meta.family for a nested field)")
    return sorted(((c, n, k) for c, (n, k) in counts.items()), key=lambda t: (-t[1], t[0]))


# ----------------------------------------------------------------------------- formatting


_SCORE_COLUMNS = {
    "random": (),
    "donod": ("don", "nod", "closeness", "n_tokens"),
    "delift": ("order", "gain", "helped_by", "helpfulness"),
    "delift-se": ("order", "gain"),
    "donod+delift": ("don", "nod", "closeness", "n_tokens", "prefiltered", "order", "gain", "helped_by",
                     "helpfulness"),
    **{m: r.columns for m, r in _RANKED.items()},
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            return "—"
        if float(x).is_integer() and abs(x) < 1e6:
            return str(int(x))
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.3e}"
        return f"{x:.4g}"
    return str(x)


def _ordinal(p: float) -> str:
    n = int(round(min(max(p, 0.0), 100.0)))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _percentiles(x: np.ndarray) -> np.ndarray:
    """Mid-rank percentile (0-100) of each finite value among the finite values; NaN elsewhere."""
    x = np.asarray(x, dtype=float)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.any():
        v = np.sort(x[ok])
        lo = np.searchsorted(v, x[ok], "left")
        hi = np.searchsorted(v, x[ok], "right")
        out[ok] = (lo + hi) / 2 / v.size * 100
    return out


def _clip(text: str, limit: int = CLIP) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ----------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
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


def _plots(res: _Output) -> list[tuple[str, str, str]]:
    """(title, data URI, how to read it) per plot of the method."""
    if res.method == "random":
        return []
    plt = _pyplot()
    if res.method == "donod":
        return _donod_plots(res, plt)
    if res.method == "donod+delift":
        return _donod_delift_plots(res, plt)
    if res.method in _RANKED:
        return _ranked_plots(res, plt)
    out = [_gain_curve(res, plt)]
    if res.method == "delift" and "helped_by" in res.cols:
        out += _utility_plots(res, plt, res.kept)
    return out


def _donod_plots(res: _Output, plt) -> list[tuple[str, str, str]]:
    c, kept = res.cols, res.kept
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _scatter(ax, c["don"], c["nod"], _kept_dropped(kept)[::-1], "DON against NOD",
             "DON  (change of the LM-head norm; higher is better)", "NOD  (size of the step; lower is better)")
    ax.axvline(0, color="#888", lw=0.8, ls="--")
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))
    ax.legend(frameon=False, fontsize=9)
    out.append(("DON against NOD", _png(fig),
                "Each dot is one record. TOPSIS prefers the bottom right (high DON, low NOD). "
                "Dots left of the dashed line have negative DON: one step on them shrinks the "
                "head, which is typical of answers that do not match their prompt."))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _hist(ax, c["closeness"], kept, "TOPSIS closeness", "closeness to the ideal (max DON, min NOD)")
    if kept.any() and (~kept).any():
        ax.axvline(np.nanmin(c["closeness"][kept]), color="#333", lw=1, ls="--")
    out.append(("Closeness", _png(fig),
                "The ranking score. Records right of the dashed line (the cut at the budget) were kept."))
    return out


def _gain_curve(res: _Output, plt) -> tuple[str, str, str]:
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
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, frameon=False, fontsize=9, loc="center right")
    return ("Greedy gain curve", _png(fig),
            "The gain each pick added to the objective, in pick order. It falls as the pool gets "
            "covered; a long flat tail means the later picks add little that the earlier ones did "
            "not already cover (the budget could be smaller).")


def _utility_plots(res: _Output, plt, groups: np.ndarray | list[Group],
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
        out.append((f"Utility: {name}", _png(fig), caption + among))
    return out


def _prefilter(res: _Output) -> tuple[np.ndarray, float]:
    """donod+delift: the mask of records DONOD let through and the closeness cut between them and
    the rest (midway between the lowest passed and the highest cut; NaN when nothing was cut)."""
    pre = res.cols["prefiltered"] > 0.5
    close = res.cols["closeness"]
    lo, hi = close[pre & np.isfinite(close)], close[~pre & np.isfinite(close)]
    cut = (float(lo.min()) + float(hi.max())) / 2 if lo.size and hi.size else float("nan")
    return pre, cut


def _closeness_function(res: _Output):
    """TOPSIS closeness of any (DON, NOD) point against this pool (its column norms, ideal and
    anti-ideal; see :mod:`tunesift.selection.topsis`), or None when it does not reproduce the
    stored closeness (then no cut curve is drawn)."""
    c = res.cols
    w = (res.manifest.get("options") or {}).get("weights") or (0.5, 0.5)
    try:
        w = np.asarray(w, dtype=float).reshape(2)
    except (TypeError, ValueError):
        return None
    don, nod, close = c["don"], c["nod"], c["closeness"]
    ok = np.isfinite(don) & np.isfinite(nod) & np.isfinite(close)
    if ok.sum() < 2:
        return None
    x = np.stack([don[ok], nod[ok]], axis=1)
    norm = np.sqrt((x ** 2).sum(axis=0))
    norm[norm == 0] = 1.0  # a zero column stays zero, as in topsis()
    v = x / norm * w
    ideal = (v[:, 0].max(), v[:, 1].min())  # DON a benefit, NOD a cost
    anti = (v[:, 0].min(), v[:, 1].max())

    def closeness(a, b):
        va, vb = np.asarray(a) / norm[0] * w[0], np.asarray(b) / norm[1] * w[1]
        dp = np.hypot(va - ideal[0], vb - ideal[1])
        dm = np.hypot(va - anti[0], vb - anti[1])
        tot = dp + dm
        return np.divide(dm, tot, out=np.full(np.shape(tot), 0.5), where=tot > 0)

    if not np.allclose(closeness(don[ok], nod[ok]), close[ok], rtol=1e-6, atol=1e-9):
        return None
    return closeness


def _donod_delift_plots(res: _Output, plt) -> list[tuple[str, str, str]]:
    from matplotlib.lines import Line2D

    c, kept = res.cols, res.kept
    pre, cut = _prefilter(res)
    groups = [(~pre, CUT_COLOR, "cut by DONOD"), (pre & ~kept, DROPPED_COLOR, "passed, not picked"),
              (kept, KEPT_COLOR, "picked by DELIFT")]
    m, share = int(pre.sum()), (res.manifest.get("options") or {}).get("prefilter")
    opt = f", option prefilter {_fmt(share)}" if share is not None else ""
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _scatter(ax, c["don"], c["nod"], groups, "DON against NOD, through both stages",
             "DON  (change of the LM-head norm; higher is better)", "NOD  (size of the step; lower is better)")
    ax.axvline(0, color="#aaa", lw=0.8, ls=":")
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))
    handles, _ = ax.get_legend_handles_labels()
    closeness = _closeness_function(res) if math.isfinite(cut) else None
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
    out.append(("DON against NOD, through both stages", _png(fig),
                f"Each dot is one record: {grey}orange ones passed it but DELIFT did not pick them, "
                f"blue ones were picked.{curve} Dots left of the dotted line have negative DON: one "
                "step on them shrinks the head, which is typical of answers that do not match their "
                "prompt."))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    lines = ((cut, "#333", "--", "prefilter cut"),) if math.isfinite(cut) else ()
    _hist(ax, c["closeness"], groups, "TOPSIS closeness", "closeness to the ideal (max DON, min NOD)",
          lines)
    passed = (f"Records right of the dashed line (the top {m} of {n_ok}) went on to DELIFT."
              if lines else f"All {m} records went on to DELIFT.")
    out.append(("Closeness and the prefilter", _png(fig),
                f"DONOD's score. {passed} The picked ones need not be the closest: DELIFT picks for "
                "coverage among the records that passed, not by closeness."))
    out.append(_gain_curve(res, plt))
    if "helped_by" in c:
        out += _utility_plots(res, plt, [(kept, KEPT_COLOR, "picked"),
                                         (pre & ~kept, DROPPED_COLOR, "passed, not picked")],
                              f" Computed among the {m} records DONOD let through; cut records have none.")
    return out


def _higher_first(res: _Output) -> bool:
    spec = _RANKED[res.method]
    flip = "keep" in spec.options and (res.manifest.get("options") or {}).get("keep") == "hardest"
    return spec.higher_first != flip


def _cut_value(res: _Output, values: np.ndarray) -> float:
    """The score of the last record kept (rank = budget); NaN when nothing was dropped."""
    at = np.flatnonzero(res.cols["rank"] == res.k)
    return float(values[at[0]]) if at.size and res.k < res.n else float("nan")


def _ranked_plots(res: _Output, plt) -> list[tuple[str, str, str]]:
    spec, c, kept = _RANKED[res.method], res.cols, res.kept
    x = c[spec.column]
    hi = _higher_first(res)
    cut = _cut_value(res, x)
    lines = [(cut, "#333", "--", f"cut ({_fmt(cut)})")] if math.isfinite(cut) else []
    if res.method == "ifd":
        lines.append((1.0, LINE_COLOR, ":", "IFD = 1"))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    title = f"{spec.label}: kept vs dropped"
    xlabel = (f"{spec.label}  ({'higher' if hi else 'lower'} is kept first)" if res.method != "ifd"
              else "IFD  (the highest below 1 is kept first)")
    _hist(ax, x, kept, title, xlabel, tuple(lines), log=spec.log)
    if res.k == res.n - int(res.unscored.sum()):
        how = "Every record was kept: the budget is the whole input."
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
    out = [(title, _png(fig), f"{spec.meaning} {how}")]
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
        out.append((f"{spec.label} against length", _png(fig),
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
        out.append(("Loss with and without the prompt", _png(fig),
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
        out.append(("Rating: mean against spread", _png(fig),
                    "Each dot is one record. Each rating is the digit the model finds most likely, "
                    "weighted by how sure it is, so an unsure 5 can score below a sure 3. The score "
                    f"is mean / (1 + alpha std), alpha {_fmt(alpha)}: a record rated inconsistently "
                    "across the prompts is pushed down." + note))
    else:
        plt.close(fig)
    return out


def _retention_plot(rows: list[tuple[str, int, int]], n: int, k: int) -> str:
    plt = _pyplot()
    rows = rows[:30]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    labels = [_clip(r[0], 30) for r in rows][::-1]
    vals = [100 * r[2] / r[1] if r[1] else 0 for r in rows][::-1]
    ax.barh(range(len(rows)), vals, color=KEPT_COLOR)
    for y, (v, r) in enumerate(zip(vals, rows[::-1])):
        ax.text(v + 1, y, f"{r[2]}/{r[1]}", va="center", fontsize=8, color="#333")
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.axvline(100 * k / n if n else 0, color="#333", lw=1, ls="--", label="overall")
    ax.set_xlim(0, 100)
    ax.set_xlabel("kept (% of the category)")
    ax.legend(frameon=False, fontsize=9, loc="lower right")
    return _png(fig)


# ----------------------------------------------------------------------------- why


class _Why:
    """One-line explanations of why a record was kept or dropped, from its scores."""

    def __init__(self, res: _Output):
        self.res, c = res, res.cols
        self.n, self.k = res.n - int(res.unscored.sum()), res.k  # ranks are among the scored records
        self.seed = (res.manifest.get("options") or {}).get("seed")
        if "don" in c and "nod" in c:
            self.pd, self.pn = _percentiles(c["don"]), _percentiles(c["nod"])
        if res.method in _GREEDY:
            g = c["gain"][c["order"] > 0]
            self.total = float(np.nansum(g))
            self.min_gain = float(np.nanmin(g)) if g.size else float("nan")
        if "helpfulness" in c:
            self.ph = _percentiles(c["helpfulness"])
        if res.method == "donod+delift":
            from .selection.topsis import rank_desc

            self.pre, _ = _prefilter(res)
            self.m = int(self.pre.sum())
            self.crank = rank_desc(c["closeness"])
        if res.method in _RANKED:
            self.spec = _RANKED[res.method]
            self.x = c[self.spec.column]
            self.px = _percentiles(self.x)
            self.hi = _higher_first(res)
            self.cut = _cut_value(res, self.x)

    def __call__(self, i: int) -> str:
        if self.res.errors and self.res.errors[i] is not None:
            return f"not scored: {_clip(self.res.errors[i], 160)}"
        name = "_" + self.res.method.replace("-", "_").replace("+", "_")
        if self.res.method in _RANKED and not hasattr(self, name):
            name = "_ranked"
        return getattr(self, name)(i)

    def _random(self, i: int) -> str:
        r = int(self.res.cols["rank"][i])
        if self.res.kept[i]:
            return f"drawn #{r} by the seeded sample (seed {self.seed})"
        return f"not drawn: position {r} of {self.n} in the seeded permutation, past the budget of {self.k}"

    def _don_nod(self, i: int) -> tuple[str, str]:
        don, pd, pn = self.res.cols["don"][i], self.pd[i], self.pn[i]
        if don < 0:
            d = f"negative DON ({_ordinal(pd)} pct)"
        else:
            d = f"{'high' if pd >= 67 else 'low' if pd < 33 else 'middling'} DON ({_ordinal(pd)} pct)"
        nd = f"{'high' if pn >= 67 else 'low' if pn < 33 else 'middling'} NOD ({_ordinal(pn)} pct)"
        return d, nd

    def _donod(self, i: int) -> str:
        c = self.res.cols
        don, pd, pn = c["don"][i], self.pd[i], self.pn[i]
        d, nd = self._don_nod(i)
        r = int(c["rank"][i])
        head = f"rank {r} of {self.n}: " if self.res.kept[i] else f"rank {r} of {self.n} (cut at {self.k}): "
        if don < 0:
            tail = "the step shrinks the head, typical of mismatched answers"
        elif pn >= 67 and not self.res.kept[i]:
            tail = "a large step: a noisy or hard-to-learn target"
        elif pd >= 67 and pn < 33:
            tail = "a small step that strengthens what the model already does"
        elif not self.res.kept[i]:
            tail = "others sit closer to the ideal (max DON, min NOD)"
        else:
            tail = ""
        return head + d + ", " + nd + (f": {tail}" if tail else "")

    def _picked(self, i: int) -> str:
        c = self.res.cols
        o, g = int(c["order"][i]), float(c["gain"][i])
        share = 100 * g / self.total if self.total else float("nan")
        return f"picked #{o}: covers gain {_fmt(g)} of the pool ({share:.1f}% of the objective)"

    def _not_picked(self, i: int, among: str = "") -> str:
        c = self.res.cols
        line = f"not picked: its best coverage was already provided by the {self.k} picks"
        if "helpfulness" in c:
            h = c["helpfulness"][i]
            line += (f" (helpfulness {_fmt(h)}, {_ordinal(self.ph[i])} pct{among})" if np.isfinite(h)
                     else " (never scored as an example)")
        return line

    def _delift(self, i: int) -> str:
        if self.res.kept[i]:
            line = self._picked(i)
            if int(self.res.cols["order"][i]) == 1:
                line += ", the record that best represents the others on its own"
            return line
        return self._not_picked(i)

    _delift_se = _delift

    def _donod_delift(self, i: int) -> str:
        where = f"closeness rank {int(self.crank[i])} of {self.n}"
        if not self.pre[i]:
            d, nd = self._don_nod(i)
            return f"cut by DONOD's prefilter ({where}; the top {self.m} went on to DELIFT): {d}, {nd}"
        if self.res.kept[i]:
            return f"{self._picked(i)}; passed DONOD at {where}"
        return f"passed DONOD at {where}, then {self._not_picked(i, f' of the {self.m} passed')}"

    def _head(self, i: int) -> str:
        r = self.res.cols["rank"][i]
        if not np.isfinite(r):
            return "not ranked: "
        cut = "" if self.res.kept[i] else f" (cut at {self.k})"
        return f"rank {int(r)} of {self.n}{cut}: "

    def _versus_cut(self, i: int) -> str:
        """How a dropped record's score compares with the cut."""
        if self.x[i] == self.cut:
            return f"tied with the cut ({_fmt(self.cut)}), ranked after it in input order"
        low_cmp, high_cmp = self.spec.words[1], self.spec.words[3]
        return f"{low_cmp if self.hi else high_cmp} than the kept (cut at {_fmt(self.cut)})"

    def _ranked(self, i: int) -> str:
        spec, v = self.spec, self.x[i]
        if np.isnan(v):
            return self._head(i) + f"no {spec.label} score, ranked last"
        line = self._head(i) + f"{spec.label} {_fmt(v)} ({_ordinal(self.px[i])} pct), "
        if self.res.kept[i]:
            return line + f"among the {spec.words[2] if self.hi else spec.words[0]}"
        return line + self._versus_cut(i)

    def _ifd(self, i: int) -> str:
        v = self.x[i]
        if np.isnan(v):
            return self._head(i) + "no IFD score, ranked last"
        val = "inf" if np.isinf(v) else _fmt(v)
        below = int((self.x < 1).sum())
        if v >= 1:
            if self.res.kept[i]:
                return (self._head(i) + f"IFD {val} >= 1, kept only because just {below} records have "
                        f"IFD < 1, fewer than the budget of {self.k}")
            return f"dropped first: IFD {val} >= 1, the prompt does not help predict the response"
        if self.res.kept[i]:
            if below > self.k:
                return self._head(i) + f"IFD {val}, the prompt helps but the response is still hard to predict"
            return (self._head(i) + f"IFD {val} < 1, the prompt helps predict the response (all {below} "
                    "records with IFD < 1 fit the budget)")
        return (self._head(i) + f"IFD {val}, below the cut ({_fmt(self.cut)}): the prompt makes the "
                "response easy to predict, less left to learn than in the kept")

    def _selectit(self, i: int) -> str:
        c = self.res.cols
        v, mean, std = self.x[i], c["selectit_mean"][i], c["selectit_std"][i]
        if np.isnan(v):
            return self._head(i) + "no rating, ranked last"
        line = (self._head(i) + f"rated {mean:.2f} on average over {SELECTIT_PROMPTS} prompts "
                f"(std {std:.2f}): selectit {_fmt(v)} ({_ordinal(self.px[i])} pct)")
        return line if self.res.kept[i] else line + ", " + self._versus_cut(i)


def _dropped_order(res: _Output) -> tuple[np.ndarray, str]:
    """The dropped records shown (at most TOP) and how they were chosen; error rows come last."""
    idx, what = _dropped_scored(res)
    bad = np.flatnonzero(res.unscored)
    if bad.size and len(idx) < TOP:
        bad = bad[:TOP - len(idx)]
        idx = np.concatenate([idx, bad]).astype(int)
        what += f", then {len(bad)} that could not be scored"
    return idx, what


def _dropped_scored(res: _Output) -> tuple[np.ndarray, str]:
    idx = np.flatnonzero(~res.kept & ~res.unscored)
    c = res.cols
    if res.method in ("random", "donod") or res.method in _RANKED:
        idx = idx[np.argsort(-c["rank"][idx], kind="stable")]
        if res.method == "random":
            what = "last in the seeded permutation"
        elif res.method == "donod":
            what = "lowest-ranked (lowest closeness)"
        elif res.method == "ifd":
            above = int((c["ifd"][idx[:TOP]] >= 1).sum())
            what = ("lowest-ranked: IFD >= 1 (dropped first), the highest first" if above == len(idx[:TOP])
                    else "lowest-ranked: IFD >= 1 first, then the lowest IFD below 1" if above
                    else "lowest-ranked (lowest IFD)")
        else:
            spec = _RANKED[res.method]
            what = f"lowest-ranked ({'lowest' if _higher_first(res) else 'highest'} {spec.label})"
        return idx[:TOP], what
    if res.method == "donod+delift":
        pre, _ = _prefilter(res)
        cut = idx[~pre[idx]]
        cut = cut[np.argsort(np.nan_to_num(c["closeness"][cut], nan=np.inf), kind="stable")]
        passed = idx[pre[idx]]
        h = c["helpfulness"][passed] if "helpfulness" in c else np.full(len(passed), np.nan)
        passed = passed[np.argsort(np.where(np.isfinite(h), -h, np.inf), kind="stable")]
        n_cut = min(len(cut), max(TOP // 2, TOP - len(passed)))
        n_passed = min(len(passed), TOP - n_cut)
        parts = ([f"{n_cut} cut by DONOD (lowest closeness first)"] if n_cut else []) + \
            ([f"{n_passed} that passed it but DELIFT did not pick (most helpful first)"] if n_passed else [])
        what = " and ".join(parts) or "none"
        return np.concatenate([cut[:n_cut], passed[:n_passed]]).astype(int), what
    if "helpfulness" in c:
        h = c["helpfulness"][idx]
        idx = idx[np.argsort(np.where(np.isfinite(h), -h, np.inf), kind="stable")]
        return idx[:TOP], "most helpful on average, yet not picked (redundant with the picks)"
    return idx[:TOP], "first in input order (no per-record score for records not picked)"


def _kept_order(res: _Output) -> np.ndarray:
    idx = np.flatnonzero(res.kept)
    return idx[np.argsort(res.cols["rank"][idx], kind="stable")][:TOP]


# ----------------------------------------------------------------------------- HTML

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1d2330;font:15px/1.45 system-ui,-apple-system,"Segoe UI",
 "DejaVu Sans",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:0 0 12px}h3{font-size:16px;margin:18px 0 8px}
.sub{color:#5b6475;margin:0 0 18px;word-break:break-all}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:18px 20px;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 14px}
.card{border:1px solid #dde1e8;border-radius:6px;padding:8px 12px;min-width:120px;background:#fafbfc}
.card b{display:block;font-size:20px}.card span{color:#5b6475;font-size:12px;text-transform:uppercase}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e6e9ef;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv{width:auto;min-width:360px}table.kv td:first-child{color:#5b6475;white-space:nowrap}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
.plots>*{min-width:0}.wide{overflow-x:auto}
table.kv td:last-child{word-break:break-all}
figure{margin:0}figure img{max-width:100%;height:auto;display:block;border:1px solid #eef0f4}
figcaption{color:#5b6475;font-size:13px;margin-top:6px}
.txt{white-space:pre-wrap;word-break:break-word;max-width:300px}
.id{font-family:"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all;max-width:140px}
.why{color:#233a66;max-width:260px}.scores{white-space:nowrap;font-size:12px}
.kept{color:#1f77b4;font-weight:600}.dropped{color:#c25a00;font-weight:600}
.note{background:#fff7e0;border:1px solid #f0d58a;border-radius:6px;padding:8px 12px;margin:0 0 12px}
.muted{color:#5b6475}details summary{cursor:pointer;color:#5b6475;margin-top:8px}
footer{color:#7a8294;font-size:12px}
"""


def _kv(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v) if not isinstance(v, str) else v)}</td></tr>"
                   for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _option_value(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if v is None:
        return "—"
    return _fmt(v) if not isinstance(v, str) else v


def _header(res: _Output) -> str:
    m = res.manifest
    opts = m.get("options") or {}
    method = res.method
    stage = opts.get("stage") if method in _GREEDY else None
    if method in _RANKED and "keep" in _RANKED[method].options and opts.get("keep"):
        stage = f"keep {opts['keep']}"
    cards = [("method", method + (f" · {stage}" if stage else "")),
             ("kept", f"{res.k}"), ("dropped", f"{res.n - res.k}"), ("input", f"{res.n}"),
             ("budget", f"{_fmt(m.get('budget', res.k))} (option {_option_value(opts.get('budget'))})")]
    if method == "donod+delift":
        share = opts.get("prefilter")
        cards.append(("passed DONOD", f"{int(_prefilter(res)[0].sum())}"
                      + (f" (option {_option_value(share)})" if share is not None else "")))
    if res.unscored.any():
        cards.append(("not scored", f"{int(res.unscored.sum())}"))
    if method in _GREEDY and m.get("objective") is not None:
        cards.append(("objective", _fmt(m["objective"])))
    parts = ['<section id="summary"><h2>Selection</h2><div class="cards">']
    parts += [f'<div class="card"><span>{_e(k)}</span><b>{_e(v)}</b></div>' for k, v in cards]
    parts.append("</div>")
    if res.notes:
        parts += [f'<p class="note">{_e(n)}</p>' for n in res.notes]
    model = m.get("model")
    left = ["<h3>Model</h3>"]
    if isinstance(model, dict):
        left.append(_kv([(k, str(model.get(k))) for k in ("name", "fingerprint", "dtype", "device", "path")
                         if model.get(k) is not None]))
    else:
        left.append('<p class="muted">no model: this method does not use one</p>')
    inputs = m.get("inputs") or {}
    if inputs:
        left.append("<h3>Inputs</h3>")
        left.append(_kv([(f"{name} {k}", str(v)) for name, info in inputs.items() if isinstance(info, dict)
                         for k, v in info.items()]))
    timings = m.get("timings") or {}
    if timings:
        left.append("<h3>Timings</h3>")
        left.append(_kv([(k, f"{_fmt(v)} s") for k, v in timings.items()]))
    relevant = [k for k in _RELEVANT[method] if k in opts
                and (k not in _STAGE_ONLY or _STAGE_ONLY[k] == opts.get("stage"))]
    other = [k for k in opts if k not in relevant]
    right = ["<h3>Options</h3>", _kv([(k, _option_value(opts[k])) for k in relevant])]
    if other:
        right.append(f"<details><summary>{len(other)} options this run did not use</summary>"
                     + _kv([(k, _option_value(opts[k])) for k in other]) + "</details>")
    parts.append('<div class="plots"><div>' + "".join(left) + "</div><div>" + "".join(right) + "</div></div>")
    parts.append("</section>")
    return "".join(parts)


def _plots_section(res: _Output) -> str:
    plots = _plots(res)
    parts = ['<section id="plots"><h2>Score distributions</h2>']
    if not plots:
        parts.append('<p class="muted">Random selection has no scores to plot: every record had the same '
                     "chance, and the seeded permutation alone decided.</p>")
    else:
        parts.append('<div class="plots">')
        for title, uri, caption in plots:
            parts.append(f'<figure><img src="{uri}" alt="{_e(title)}"><figcaption><b>{_e(title)}.</b> '
                         f"{_e(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _score(res: _Output, name: str, i: int) -> str:
    v = res.cols[name][i]
    if name in res.bools and np.isfinite(v):
        return "yes" if v else "no"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return _fmt(v)


def _records_table(res: _Output, idx: np.ndarray, texts: dict[str, tuple[str, str]] | None,
                   why: _Why) -> str:
    names = list(_SCORE_COLUMNS[res.method]) or ["rank"]
    if res.method in _RANKED:
        names += _RANKED[res.method].optional
    head = "<tr><th class=num>#</th><th>id</th><th>prompt</th><th>response</th><th>scores</th><th>why</th></tr>"
    rows = []
    for i in idx:
        rid = res.ids[i]
        rank = res.cols["rank"][i]
        prompt, response = (texts or {}).get(rid, (None, None))
        if prompt is None:
            ptxt = '<span class="muted">(input not available)</span>'
            rtxt = ""
        else:
            ptxt, rtxt = _e(_clip(prompt)), _e(_clip(response))
        scores = "<br>".join(f"{_e(n)} {_e(_score(res, n, i))}" for n in names if n in res.cols)
        rows.append(f'<tr data-id="{_e(rid)}"><td class=num>{_e(_fmt(rank))}</td><td class="id">{_e(rid)}</td>'
                    f'<td class="txt">{ptxt}</td><td class="txt">{rtxt}</td>'
                    f'<td class="scores">{scores}</td><td class="why">{_e(why(i))}</td></tr>')
    if not rows:
        return '<p class="muted">none</p>'
    return f'<div class="wide"><table>{head}{"".join(rows)}</table></div>'


def _records_section(res: _Output, inp: _Input) -> str:
    why = _Why(res)
    kept_what = "first picks" if res.method in _GREEDY else "first-ranked"
    dropped_idx, dropped_what = _dropped_order(res)
    kept_idx = _kept_order(res)
    return (f'<section id="kept"><h2>Kept: the {len(kept_idx)} {kept_what} of {res.k}</h2>'
            f"{_records_table(res, kept_idx, inp.texts, why)}</section>"
            f'<section id="dropped"><h2>Dropped: {len(dropped_idx)} of {res.n - res.k}, '
            f"{_e(dropped_what)}</h2>{_records_table(res, dropped_idx, inp.texts, why)}</section>")


def _retention_section(res: _Output, inp: _Input, by: str) -> str:
    rows = retention(res, inp, by)
    n, k = res.n, res.k
    shown, rest = rows[:MAX_CATEGORIES], rows[MAX_CATEGORIES:]

    def line(cat: str, cn: int, ck: int, attrs: str = "", cls: str = "") -> str:
        return (f"<tr{attrs}{cls}><td>{_e(cat)}</td><td class=num>{cn}</td><td class=num>{ck}</td>"
                f"<td class=num>{cn - ck}</td><td class=num>{100 * ck / cn if cn else 0:.1f}%</td>"
                f"<td class=num>{100 * cn / n if n else 0:.1f}%</td>"
                f"<td class=num>{100 * ck / k if k else 0:.1f}%</td></tr>")

    body = [line(c, cn, ck, f' data-category="{_e(c)}" data-input="{cn}" data-kept="{ck}"')
            for c, cn, ck in shown]
    if rest:
        body.append(line(f"({len(rest)} other categories)", sum(r[1] for r in rest), sum(r[2] for r in rest)))
    body.append(line("all", n, k, cls=' style="font-weight:600"'))
    head = ("<tr><th>" + _e(by) + "</th><th class=num>input</th><th class=num>kept</th>"
            "<th class=num>dropped</th><th class=num>retention</th><th class=num>share of input</th>"
            "<th class=num>share of kept</th></tr>")
    img = _retention_plot(rows, n, k)
    return (f'<section id="retention"><h2>Retention by {_e(by)}</h2>'
            f'<p class="muted">Retention is the share of a category that was kept; compare it with the '
            f"overall {100 * k / n if n else 0:.1f}%. A category far below it was judged worse (or "
            "more redundant) than the rest.</p>"
            f'<div class="wide"><table>{head}{"".join(body)}</table></div>'
            f'<figure style="margin-top:16px;max-width:760px"><img src="{img}" '
            f'alt="retention by {_e(by)}"></figure></section>')


def render_report(out_dir: str | Path, *, by: str | None = None, data: str | Path | None = None) -> str:
    """The report page of a ``tunesift select`` output folder, as an HTML string."""
    res = _read_output(out_dir)
    if by is not None and not by.strip():
        raise TunesiftError("--by needs a field name, e.g. meta.family")
    inp = _read_input(res, data, by)
    sections = [_header(res), _plots_section(res)]
    if by is not None:
        sections.append(_retention_section(res, inp, by))
    sections.append(_records_section(res, inp))
    versions = res.manifest.get("versions") or {}
    vtext = ", ".join(f"{k} {v}" for k, v in versions.items())
    title = f"tunesift report: {res.method} on {res.n} records"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=\"sub\">{_e(res.folder)}</p>"
            + "".join(sections)
            + f"<footer>{_e(vtext)}</footer></main></body></html>\n")


def write_report(out_dir: str | Path, *, by: str | None = None, data: str | Path | None = None) -> Path:
    """Write ``OUT/report.html`` (atomically) for a ``tunesift select`` output folder; returns its path."""
    from .store import write_text

    page = render_report(out_dir, by=by, data=data)
    path = Path(out_dir) / REPORT_FILE
    try:
        write_text(path, page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # mkstemp made it 0600; a report is meant to be shared
    except OSError as exc:
        raise TunesiftError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
    return path
