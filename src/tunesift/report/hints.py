"""What the report knows about each method: views of the method registry
(:mod:`tunesift.methods.registry`), where each method declares its score columns, the options it
reads, whether its kept records are greedy picks and, for methods that keep the top of one score
column, how to plot and explain that score."""

from __future__ import annotations

from ..methods.catalogue import get_method, method_names
from ..methods.registry import RankedHint
from ..scoring.baselines import DEFAULT_PROMPTS

__all__ = ["GREEDY", "RANKED", "RELEVANT", "SCORE_COLUMNS", "SELECTIT_PROMPTS", "RankedHint", "options_read"]

SELECTIT_PROMPTS = len(DEFAULT_PROMPTS)  # rating prompts per record ("over 5 prompts")

_METHODS = [get_method(m) for m in method_names()]
RANKED = {m.name: m.ranked for m in _METHODS if m.ranked is not None}
RELEVANT = {m.name: m.options for m in _METHODS}  # options that matter (the rest are shown folded away)


def options_read(method: str, options: dict) -> list[str]:
    """The names in ``options`` (a manifest's, as saved) that ``method`` read under those settings,
    in its declaration order then the pipeline's (--limit, --sample, --on-error, --cache-dir): the
    registry's own rule (:meth:`~tunesift.methods.registry.Method.reads`), so ``--epsilon`` with
    the lazy optimizer or ``--nu`` outside the continual stage is folded away as unread."""
    from types import SimpleNamespace

    from ..methods.options import Options
    from ..methods.registry import COMMON_OPTIONS

    entry = get_method(method)
    defaults = vars(Options())
    opt = SimpleNamespace(**{**defaults, **options})  # a manifest's values over the defaults
    try:
        read = entry.reads(opt)
    except TypeError:  # a hand-edited manifest's value of another type: show every declared option
        read = set(entry.options)
    # the pipeline's own options are shown where they were set (a --limit, --on-error skip)
    quiet = {k for k in (*COMMON_OPTIONS, "seed") if k not in entry.options and options.get(k) == defaults.get(k)}
    order = dict.fromkeys((*entry.options, *COMMON_OPTIONS, "seed"))
    return [k for k in order if k in options and k in read and k not in quiet]
GREEDY = tuple(m.name for m in _METHODS if m.greedy)  # methods whose kept records are greedy picks
SCORE_COLUMNS = {m.name: m.columns for m in _METHODS}  # the scores.parquet columns each method must have
