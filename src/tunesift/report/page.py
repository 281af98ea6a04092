"""The report page: the data each section shows, rendered with the jinja2 templates in
``templates/`` (autoescaped: every value from the data is HTML-escaped on output)."""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TunesiftError
from ..folders import has_marker
from ..outputs import REPORT_MARKER
from .compare import comparison
from .derived import prefilter
from .fmt import clip, fmt
from .hints import GREEDY, RANKED, SCORE_COLUMNS, options_read
from .plots import method_plots, no_plot_note, retention_plot
from .read import Input, Output, read_input, read_output
from .retention import retention
from .why import Why, dropped_order, kept_order

__all__ = ["REPORT_FILE", "render_report", "write_report"]

REPORT_FILE = "report.html"
MAX_CATEGORIES = 40  # retention rows before the rest are summed into one row


def _escape(value: Any) -> Any:
    """Every ``{{ value }}`` is escaped like :func:`html.escape` (quotes too); markup the templates
    built themselves (macros) passes through."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


@lru_cache(maxsize=1)
def environment():
    """The jinja2 environment of the report templates (package data of ``tunesift.report``)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("tunesift.report", "templates"),
                              autoescape=True, finalize=_escape, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def _option_value(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    if v is None:
        return "—"
    return fmt(v) if not isinstance(v, str) else v


def _summary(res: Output) -> dict[str, Any]:
    """Cards, notes, model, inputs, timings and options of the summary section."""
    m = res.manifest
    opts = m.get("options") or {}
    method = res.method
    stage = opts.get("stage") if method in GREEDY else None
    if method in RANKED and "keep" in RANKED[method].options and opts.get("keep"):
        stage = f"keep {opts['keep']}"
    cards = [("method", method + (f" · {stage}" if stage else "")),
             ("kept", f"{res.k}"), ("dropped", f"{res.n - res.k}"), ("input", f"{res.n}"),
             ("budget", f"{fmt(m.get('budget', res.k))} (option {_option_value(opts.get('budget'))})")]
    if method == "donod+delift":
        share = opts.get("prefilter")
        cards.append(("passed DONOD", f"{int(prefilter(res)[0].sum())}"
                      + (f" (option {_option_value(share)})" if share is not None else "")))
    if res.unscored.any():
        cards.append(("not scored", f"{int(res.unscored.sum())}"))
    if method in GREEDY and m.get("objective") is not None:
        cards.append(("objective", fmt(m["objective"])))
    model = m.get("model")
    inputs = m.get("inputs") or {}
    relevant = options_read(method, opts)
    return {
        "cards": cards,
        "notes": list(res.notes) + [surrogate_note(name, rep) for name, rep in (m.get("surrogate") or {}).items()
                                    if isinstance(rep, dict)],
        "model": ([(k, str(model.get(k))) for k in ("name", "fingerprint", "dtype", "device", "path")
                   if model.get(k) is not None] if isinstance(model, dict) else None),
        "inputs": [(f"{name} {k}", str(v)) for name, info in inputs.items() if isinstance(info, dict)
                   for k, v in info.items()],
        "timings": [(k, f"{fmt(v)} s") for k, v in (m.get("timings") or {}).items()],
        "options": [(k, _option_value(opts[k])) for k in relevant],
        "other_options": [(k, _option_value(opts[k])) for k in opts if k not in relevant],
    }


def surrogate_note(name: str, rep: dict) -> str:
    """One line on a learned utility kernel (``--utility learned``): how much of it was scored
    exactly and how well the surrogate predicted the held-out exact pairs."""
    kernel = {"pool": "pool x pool", "cross": "pool and second set"}.get(name, name)

    def f(key: str) -> str:
        v = rep.get(key)
        return "n/a" if v is None else f"{v:.2f}"

    # single held-out pairs sit among the labelled ones (with nearest labels: the nearest pairs),
    # where the model was fitted: an optimistic reading of the pairs it fills
    held = (" (whole target rows, unseen in the fit)" if rep.get("heldout_by") == "row"
            else " (single pairs among the labelled ones: an optimistic reading of the predicted pairs)")
    def count(key: str) -> str:  # a hand-edited manifest may hold null
        v = rep.get(key)
        return f"{v:,}" if isinstance(v, (int, float)) else "n/a"

    return (f"Learned utility ({kernel}): {count('labelled_pairs')} of {count('candidate_pairs')} "
            f"candidate pairs scored exactly, the rest predicted. On {count('heldout_pairs')} held-out exact "
            f"pairs{held}: Spearman {f('spearman')}, R² {f('r2')}, within-target Spearman {f('within_row_spearman')}.")


def _score(res: Output, name: str, i: int) -> str:
    v = res.cols[name][i]
    if name in res.bools and np.isfinite(v):
        return "yes" if v else "no"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return fmt(v)


def _shown(res: Output, name: str, i: int) -> bool:
    """Whether record ``i`` has a value for score ``name``: no placeholders (``order -1``,
    ``gain —``) for the scores a record does not have (a greedy score of a record not picked,
    a score of a record that could not be scored)."""
    v = res.cols[name][i]
    return not np.isnan(v) and not (name == "order" and v < 0)


def _record_rows(res: Output, idx: np.ndarray, texts: dict[str, tuple[str, str]] | None,
                 why: Why) -> list[dict[str, Any]]:
    """One dict per record shown: rank, id, clipped prompt / response (None: input not read),
    (score name, value) pairs of the scores it has and the why line."""
    names = list(SCORE_COLUMNS[res.method]) or ["rank"]
    if res.method in RANKED:
        names += RANKED[res.method].optional
    if res.method in GREEDY and res.covered_by:
        names.append("coverage")
    rows = []
    for i in idx:
        rid = res.ids[i]
        prompt, response = (texts or {}).get(rid, (None, None))
        rows.append({"id": rid, "rank": fmt(res.cols["rank"][i]),
                     "prompt": None if prompt is None else clip(prompt),
                     "response": None if prompt is None else clip(response),
                     "scores": [(n, _score(res, n, i)) for n in names if n in res.cols and _shown(res, n, i)],
                     "why": why(i)})
    return rows


def _records(res: Output, inp: Input) -> dict[str, Any]:
    why = Why(res)
    dropped_idx, dropped_what = dropped_order(res)
    return {"kept": {"rows": _record_rows(res, kept_order(res), inp.texts, why), "total": res.k,
                     "what": "first picks" if res.method in GREEDY else "first-ranked"},
            "dropped": {"rows": _record_rows(res, dropped_idx, inp.texts, why), "total": res.n - res.k,
                        "what": dropped_what}}


def _retention(res: Output, inp: Input, by: str) -> dict[str, Any]:
    rows = retention(res, inp, by)
    n, k = res.n, res.k
    shown, rest = rows[:MAX_CATEGORIES], rows[MAX_CATEGORIES:]

    def line(cat: str, cn: int, ck: int, data: bool = False, total: bool = False) -> dict[str, Any]:
        return {"category": clip(cat), "input": cn, "kept": ck, "dropped": cn - ck, "data": data, "total": total,
                "retention": f"{100 * ck / cn if cn else 0:.1f}%", "share_input": f"{100 * cn / n if n else 0:.1f}%",
                "share_kept": f"{100 * ck / k if k else 0:.1f}%"}

    body = [line(c, cn, ck, data=True) for c, cn, ck in shown]
    if rest:
        body.append(line(f"({len(rest)} other categories)", sum(r[1] for r in rest), sum(r[2] for r in rest)))
    body.append(line("all", n, k, total=True))
    return {"by": by, "rows": body, "overall": f"{100 * k / n if n else 0:.1f}%",
            "img": retention_plot(rows, n, k)}


def render_report(out_dir: str | Path, *, by: str | None = None, data: str | Path | None = None,
                  compare: str | Path | None = None, shown_as: str | Path | None = None) -> str:
    """The report page of a ``tunesift select`` output folder, as an HTML string; with ``compare``
    (a second output folder of the same input) a side-by-side comparison section too. ``shown_as``:
    the folder the page names, when ``out_dir`` is where the set is staged before it is published."""
    res = read_output(out_dir)
    if by is not None and not by.strip():
        raise TunesiftError("--by needs a field name, e.g. meta.family")
    other = read_output(compare) if compare is not None else None
    inp = read_input(res, data, by)
    versions = res.manifest.get("versions") or {}
    ctx = {"title": f"tunesift report: {res.method} on {res.n} records", "folder": str(shown_as or res.folder),
           **_summary(res), "compare": comparison(res, other, inp) if other is not None else None,
           "plots": method_plots(res), "no_plot_note": no_plot_note(res),
           "retention": _retention(res, inp, by) if by is not None else None,
           **_records(res, inp), "footer": ", ".join(f"{k} {v}" for k, v in versions.items())}
    return environment().get_template("report.html.j2").render(ctx)


def write_report(out_dir: str | Path, *, by: str | None = None, data: str | Path | None = None,
                 compare: str | Path | None = None) -> Path:
    """Write ``OUT/report.html`` (atomically) for a ``tunesift select`` output folder; returns its path.
    ``compare``: a second output folder of the same input, shown side by side (see :func:`render_report`)."""
    from ..store import write_text

    path = Path(out_dir) / REPORT_FILE
    if path.is_file() and not has_marker(path, REPORT_MARKER):  # a page of the user's own: never written over
        raise TunesiftError(f"{path}: not a tunesift report (a file of your own?); move it away to write the report")
    page = render_report(out_dir, by=by, data=data, compare=compare)
    try:
        write_text(path, page)  # umask permissions: a report is meant to be shared
    except OSError as exc:
        raise TunesiftError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
    return path
