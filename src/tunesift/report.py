"""``tunesift report OUT/``: one self-contained HTML page that explains a selection.

The page reads the three files :func:`tunesift.outputs.write_selection` wrote (``manifest.json``,
``scores.parquet``, ``selected.jsonl``) and shows:

- what was run: method (and DELIFT stage), budget, counts, model, timings and every option;
- the score distributions as embedded PNG plots (matplotlib, Agg backend): DON against NOD
  coloured kept/dropped and the TOPSIS closeness for DONOD; the greedy gain curve for DELIFT and
  DELIFT (SE), with the utility histograms (``helped_by``, ``helpfulness``) for DELIFT;
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
}
_STAGE_ONLY = {"mi_eta": "task", "mi_form": "task", "nu": "continual"}


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
    for name in table.column_names:
        col = table.column(name)
        if name == "id":
            continue
        if name == "kept":
            cols[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=bool)
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            cols[name] = np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
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
    res = _Output(out, manifest, cols, ids, cols["kept"], selected, method)
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


def _hist(ax, values: np.ndarray, kept: np.ndarray, title: str, xlabel: str) -> None:
    ok = np.isfinite(values)
    v = values[ok]
    if v.size == 0:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    else:
        bins = np.histogram_bin_edges(v, bins=min(40, max(5, int(np.sqrt(v.size)) * 2)))
        ax.hist([values[ok & kept], values[ok & ~kept]], bins=bins, stacked=True,
                color=[KEPT_COLOR, DROPPED_COLOR],
                label=[f"kept ({int((ok & kept).sum())})", f"dropped ({int((ok & ~kept).sum())})"])
        ax.legend(frameon=False, fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")


def _plots(res: _Output) -> list[tuple[str, str, str]]:
    """(title, data URI, how to read it) per plot of the method."""
    if res.method == "random":
        return []
    plt = _pyplot()
    c, kept = res.cols, res.kept
    out = []
    if res.method == "donod":
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for mask, color, label in ((~kept, DROPPED_COLOR, "dropped"), (kept, KEPT_COLOR, "kept")):
            ax.scatter(c["don"][mask], c["nod"][mask], s=14, alpha=0.7, color=color, edgecolors="none",
                       label=f"{label} ({int(mask.sum())})")
        ax.axvline(0, color="#888", lw=0.8, ls="--")
        ax.set_xlabel("DON  (change of the LM-head norm; higher is better)")
        ax.set_ylabel("NOD  (size of the step; lower is better)")
        ax.set_title("DON against NOD", fontsize=11)
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
    order, gain = c["order"], c["gain"]
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
    out.append(("Greedy gain curve", _png(fig),
                "The gain each pick added to the objective, in pick order. It falls as the pool gets "
                "covered; a long flat tail means the later picks add little that the earlier ones did "
                "not already cover (the budget could be smaller)."))
    if res.method == "delift" and "helped_by" in c:
        for name, xlabel, caption in (
                ("helped_by", "mean utility as a target",
                 "How much the other records, shown as an in-context example, lower this record's "
                 "distance on average (raw utility, before scaling; negative: examples hurt it)."),
                ("helpfulness", "mean utility as an example",
                 "How much this record, shown as an in-context example, lowers the other records' "
                 "distances on average (raw utility; negative: it hurts them). Greedy coverage favours "
                 "helpful records, but skips helpful ones whose targets are already covered.")):
            fig, ax = plt.subplots(figsize=(6.4, 4.6))
            _hist(ax, c[name], kept, name, xlabel)
            out.append((f"Utility: {name}", _png(fig), caption))
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
        self.n, self.k = res.n, res.k
        self.seed = (res.manifest.get("options") or {}).get("seed")
        if res.method == "donod":
            self.pd, self.pn = _percentiles(c["don"]), _percentiles(c["nod"])
        if res.method in ("delift", "delift-se"):
            g = c["gain"][c["order"] > 0]
            self.total = float(np.nansum(g))
            self.min_gain = float(np.nanmin(g)) if g.size else float("nan")
        if "helpfulness" in c:
            self.ph = _percentiles(c["helpfulness"])

    def __call__(self, i: int) -> str:
        return getattr(self, "_" + self.res.method.replace("-", "_"))(i)

    def _random(self, i: int) -> str:
        r = int(self.res.cols["rank"][i])
        if self.res.kept[i]:
            return f"drawn #{r} by the seeded sample (seed {self.seed})"
        return f"not drawn: position {r} of {self.n} in the seeded permutation, past the budget of {self.k}"

    def _donod(self, i: int) -> str:
        c = self.res.cols
        don, pd, pn = c["don"][i], self.pd[i], self.pn[i]
        if don < 0:
            d = f"negative DON ({_ordinal(pd)} pct)"
        else:
            d = f"{'high' if pd >= 67 else 'low' if pd < 33 else 'middling'} DON ({_ordinal(pd)} pct)"
        nd = f"{'high' if pn >= 67 else 'low' if pn < 33 else 'middling'} NOD ({_ordinal(pn)} pct)"
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

    def _delift(self, i: int) -> str:
        c = self.res.cols
        if self.res.kept[i]:
            o, g = int(c["order"][i]), float(c["gain"][i])
            share = 100 * g / self.total if self.total else float("nan")
            line = f"picked #{o}: covers gain {_fmt(g)} of the pool ({share:.1f}% of the objective)"
            if o == 1:
                line += ", the record that best represents the others on its own"
            return line
        line = f"not picked: its best coverage was already provided by the {self.k} picks"
        if "helpfulness" in c:
            h = c["helpfulness"][i]
            line += (f" (helpfulness {_fmt(h)}, {_ordinal(self.ph[i])} pct)" if np.isfinite(h)
                     else " (never scored as an example)")
        return line

    _delift_se = _delift


def _dropped_order(res: _Output) -> tuple[np.ndarray, str]:
    idx = np.flatnonzero(~res.kept)
    c = res.cols
    if res.method in ("random", "donod"):
        idx = idx[np.argsort(-c["rank"][idx], kind="stable")]
        what = "last in the seeded permutation" if res.method == "random" else "lowest-ranked (lowest closeness)"
        return idx[:TOP], what
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
    stage = opts.get("stage") if method in ("delift", "delift-se") else None
    cards = [("method", method + (f" · {stage}" if stage else "")),
             ("kept", f"{res.k}"), ("dropped", f"{res.n - res.k}"), ("input", f"{res.n}"),
             ("budget", f"{_fmt(m.get('budget', res.k))} (option {_option_value(opts.get('budget'))})")]
    if method in ("delift", "delift-se") and m.get("objective") is not None:
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


def _records_table(res: _Output, idx: np.ndarray, texts: dict[str, tuple[str, str]] | None,
                   why: _Why) -> str:
    names = list(_SCORE_COLUMNS[res.method]) or ["rank"]
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
        scores = "<br>".join(f"{_e(n)} {_e(_fmt(res.cols[n][i]))}" for n in names if n in res.cols)
        rows.append(f'<tr data-id="{_e(rid)}"><td class=num>{_e(_fmt(rank))}</td><td class="id">{_e(rid)}</td>'
                    f'<td class="txt">{ptxt}</td><td class="txt">{rtxt}</td>'
                    f'<td class="scores">{scores}</td><td class="why">{_e(why(i))}</td></tr>')
    if not rows:
        return '<p class="muted">none</p>'
    return f'<div class="wide"><table>{head}{"".join(rows)}</table></div>'


def _records_section(res: _Output, inp: _Input) -> str:
    why = _Why(res)
    kept_what = "first picks" if res.method in ("delift", "delift-se") else "first-ranked"
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
