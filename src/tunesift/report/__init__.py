"""``tunesift report OUT/``: one self-contained HTML page that explains a selection.

The page reads the three files :func:`tunesift.outputs.write_selection` wrote (``manifest.json``,
``scores.parquet``, ``selected.jsonl``) and shows:

- what was run: method (and DELIFT stage), budget, counts, model, timings and every option;
- the score distributions as embedded PNG plots (matplotlib, Agg backend): DON against NOD
  coloured kept/dropped and the TOPSIS closeness for DONOD; the greedy gain curve for DELIFT and
  DELIFT (SE), with the utility histograms (``helped_by``, ``helpfulness``) for DELIFT; for
  DONOD + DELIFT the DON/NOD scatter in three colours (cut by the DONOD prefilter, passed but not
  picked, picked) with the prefilter cut, then DELIFT's plots; for the ranked baselines (loss,
  perplexity, IFD, SelectIT, and any method in :data:`hints.RANKED`) the histogram of the ranking
  score kept vs dropped with the cut, plus one scatter per baseline;
- the 10 first-ranked kept records and 10 dropped records with their scores and a one-line
  "why" derived from the scores;
- with ``by="meta.family"`` (a field of the original rows, dotted for nested dicts): the
  retention per category. Kept rows come from ``selected.jsonl``; dropped rows need the input
  file (``data=`` or the path recorded in the manifest).

The page has no external resources: inline CSS, images as base64 ``data:`` URIs, no script.
It is rendered from jinja2 templates with autoescaping, so every piece of text from the data is
escaped.

Modules: :mod:`.read` (output folder and input), :mod:`.retention`, :mod:`.plots`, :mod:`.why`
(the why lines and which records are listed), :mod:`.hints` (what the report knows per method),
:mod:`.page` (the templates' data and rendering), :mod:`.fmt` and :mod:`.derived` (helpers).
"""

from .hints import SELECTIT_PROMPTS
from .page import REPORT_FILE, render_report, write_report
from .plots import CUT_COLOR, DROPPED_COLOR, KEPT_COLOR
from .retention import field_value, retention

__all__ = ["CUT_COLOR", "DROPPED_COLOR", "KEPT_COLOR", "REPORT_FILE", "SELECTIT_PROMPTS", "field_value",
           "render_report", "retention", "write_report"]
