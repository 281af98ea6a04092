"""What the report knows about each method: views of the method registry
(:mod:`tunesift.methods.registry`), where each method declares its score columns, the options it
reads, whether its kept records are greedy picks and, for methods that keep the top of one score
column, how to plot and explain that score."""

from __future__ import annotations

from ..methods.catalogue import get_method, method_names
from ..methods.registry import RankedHint
from ..scoring.baselines import DEFAULT_PROMPTS

__all__ = ["GREEDY", "RANKED", "RELEVANT", "SCORE_COLUMNS", "SELECTIT_PROMPTS", "STAGE_ONLY", "RankedHint"]

SELECTIT_PROMPTS = len(DEFAULT_PROMPTS)  # rating prompts per record ("over 5 prompts")

_METHODS = [get_method(m) for m in method_names()]
RANKED = {m.name: m.ranked for m in _METHODS if m.ranked is not None}
RELEVANT = {m.name: m.options for m in _METHODS}  # options that matter (the rest are shown folded away)
STAGE_ONLY = {"mi_eta": "task", "mi_form": "task", "nu": "continual"}  # options used by one stage only
GREEDY = tuple(m.name for m in _METHODS if m.greedy)  # methods whose kept records are greedy picks
SCORE_COLUMNS = {m.name: m.columns for m in _METHODS}  # the scores.parquet columns each method must have
