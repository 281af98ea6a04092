"""The Python API: ``tunesift.select(data, *, method=..., budget=..., ...)`` (docs/python.md).

The keywords of :func:`select` are the fields of :class:`~tunesift.methods.options.Options`, in
their order, with their defaults and types, written out so that ``help()``, IDEs and notebook
autocompletion show them; their documentation is generated from the options' own help texts (the
CLI's). ``tests/test_api.py`` fails when the two differ. Then come what the ``select`` command
takes besides options (the second sets, field names, output folder) and the model to reuse
(``lm``) and the progress bars (``progress``).

The result is a :class:`Selection` (:class:`tunesift.pipeline.Selection` plus :meth:`~Selection.save`):
``sel.subset`` keeps the input's type, ``sel.indices`` / ``sel.mask`` locate the kept records,
``sel.scores()`` / ``sel.table()`` hold every record's scores (pandas / Arrow), and
``sel.save(folder)`` or ``select(..., out=folder)`` writes the files ``tunesift select --out``
writes, under the same rules (:func:`tunesift.outputs.save_selection`).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from functools import partial
from pathlib import Path

from . import pipeline
from .errors import OptionError
from .io.schema import FieldMap
from .methods.catalogue import get_method
from .methods.options import Options
from .outputs import (
    check_cache_apart,
    check_output_folder,
    check_save,
    input_info,
    manifest,
    save_selection,
)
from .progress import interactive, progress_bars
from .row_values import check_rows_writable

__all__ = ["API_ONLY", "Selection", "select"]

#: The keywords of :func:`select` that are not fields of Options.
API_ONLY = ("target", "existing", "prompt_field", "response_field", "messages_field", "id_field", "lm",
            "progress", "out", "out_format", "report")


class Selection(pipeline.Selection):
    __doc__ = (pipeline.Selection.__doc__ or "") + """
    From :func:`tunesift.select`: :meth:`save` writes it as ``tunesift select --out`` does.
    """

    def save(self, out: str | os.PathLike, *, out_format: str = "jsonl", report: bool = False) -> Path:
        """Write the kept records (``selected.jsonl``, or ``selected.parquet`` / ``selected/``
        with ``out_format="parquet"`` / ``"hf"``), ``scores.parquet`` and ``manifest.json`` into
        the folder ``out``, and ``report.html`` when ``report``: the files ``tunesift select
        --out`` writes, swapped into place as one unit. The folder must be new, empty or an
        earlier selection's, and must not hold an input (:class:`~tunesift.errors.OptionError`
        otherwise, nothing written). Returns the folder."""
        return save_selection(self, out, out_format=out_format, report=report)

    def manifest(self) -> dict:
        """What ``manifest.json`` would hold (method, every option, the model and its fingerprint,
        the inputs, counts, versions, timings), without writing anything; ``files`` (the SHA-256
        of each file written) stays empty."""
        return manifest(self, input_info(self))


def select(
    data,
    *,
    method: str = "donod",
    budget: float | int | str = 0.3,
    seed: int = 0,
    limit: int | None = None,
    sample: int | None = None,
    model: str = "default",
    device: str = "auto",
    dtype: str = "auto",
    template: str = "auto",
    max_length: int = 2048,
    token_budget: int = 0,
    cache_dir: str | None = None,
    eta: float = 1e-3,
    reduction: str = "sqrt",
    weights: tuple[float, float] = (0.5, 0.5),
    stage: str = "instruction",
    distance: str = "rmse",
    knn: int = 16,
    utility: str = "exact",
    label_fraction: float = 0.1,
    labels: str = "nearest",
    clip_negative: bool = False,
    scale: str = "joint",
    keep_diagonal: bool = False,
    mi_eta: float = 1.0,
    mi_form: str = "min",
    nu: float = 1.0,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    prefilter: float = 0.7,
    ann: str = "auto",
    partitions: int = 1,
    local_budget: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    ray_workers: int = 2,
    ray_gpus: float | None = None,
    on_error: str = "fail",
    keep: str = "easiest",
    selectit_alpha: float = 0.2,
    less_dim: int = 8192,
    by: str | None = None,
    within: str | None = None,
    target=None,
    existing=None,
    prompt_field: str | None = None,
    response_field: str | None = None,
    messages_field: str | None = None,
    id_field: str | None = None,
    lm=None,
    progress: bool | Callable | None = None,
    out: str | os.PathLike | None = None,
    out_format: str = "jsonl",
    report: bool = False,
) -> Selection:
    """Select the records of ``data`` worth training on.

    ``data``: a path (JSONL, JSON, CSV, Parquet or a saved HF dataset folder), a list of dicts,
    a pandas DataFrame or a ``datasets.Dataset`` (a DatasetDict: its train split). The result's
    ``subset`` has the input's type (a list of dicts for a path).

    >>> sel = tunesift.select(df, method="loss", budget=0.3)
    >>> sel                 # Selection(method='loss', kept=300/1000, budget=300, model='...')
    >>> sel.subset          # a DataFrame: df.iloc[sel.indices], original index kept
    >>> sel.scores()        # one row per record: id, line, scores, rank, kept (sel.table(): Arrow)

    Every option is checked before anything is read; a bad one raises
    :class:`~tunesift.errors.OptionError` (one line, as the CLI prints it), a bad record
    :class:`~tunesift.errors.InputError` naming its row and field.

    Options (the ``tunesift select`` flags of the same names, docs/options.md):

        {options}

    Besides the options:

        target, existing: the DELIFT task stage's target set / the continual stage's data
            already trained on (same kinds as ``data``).
        prompt_field, response_field, messages_field, id_field: field names overriding the
            detected schema (``prompt_field`` may be comma-separated to join several).
        lm: a model already loaded with :func:`tunesift.models.load_lm`, reused (then ``model``,
            ``device`` and ``dtype`` are not read).
        progress: True / False: progress bars on stderr, or not; None (default): when they can
            be seen (a Jupyter notebook or a terminal); or a factory
            ``progress(label, total) -> advance(n)`` of your own.
        out: also write the selection into this folder (:meth:`Selection.save`); its checks run
            before any scoring.
        out_format: jsonl | parquet | hf, the kept records' file (with ``out``).
        report: also write ``out/report.html`` (with ``out``; needs ``out_format="jsonl"``).
    """
    given = locals()
    options = {f.name: given[f.name] for f in dataclass_fields(Options) if f.name in given}
    if isinstance(weights, list):
        options["weights"] = tuple(weights)
    opt = Options(**options)
    opt.validate()  # every check that needs no data, before anything is read
    options = {name: getattr(opt, name) for name in options}  # as checked: a Path as text, numpy as Python
    get_method(opt.method).warn_unread(opt)
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise OptionError(f"progress must be True, False, None or a factory progress(label, total), got {progress!r}")
    paths = [p for p in (data, target, existing) if isinstance(p, (str, os.PathLike))]
    check_save(out_format, report)
    if out is not None:
        check_output_folder(out, paths)
        if get_method(opt.method).uses_cache():
            from .store import default_cache_dir

            check_cache_apart(out, opt.cache_dir or default_cache_dir())
    elif out_format != "jsonl" or report:
        raise OptionError("out_format and report are read only with out=FOLDER (or sel.save(FOLDER, ...)); "
                          "they would be ignored here")
    fields = FieldMap.given(prompt_field, response_field, messages_field, id_field)
    data, target, existing = (str(p) if isinstance(p, os.PathLike) else p for p in (data, target, existing))
    # with out: the kept-records file can hold every record, checked before any scoring
    check = partial(check_rows_writable, out_format=out_format) if out is not None else None
    if callable(progress) and not isinstance(progress, bool):
        sel = pipeline.select(data, target=target, existing=existing, fields=fields, progress=progress, lm=lm,
                              check_rows=check, **options)
    else:
        with progress_bars(interactive() if progress is None else bool(progress)) as bars:
            sel = pipeline.select(data, target=target, existing=existing, fields=fields, progress=bars, lm=lm,
                                  check_rows=check, **options)
    result = Selection(**{f.name: getattr(sel, f.name) for f in dataclass_fields(sel)})
    if out is not None:
        result.save(out, out_format=out_format, report=report)
    return result


def options_doc(width: int = 88) -> str:
    """Each option as ``name (type, default ...): help``, wrapped, for :func:`select`'s docstring
    (indented as its ``{options}`` line)."""
    parts = [textwrap.fill(f"{f.name} ({f.type}, default {f.default!r}): {f.metadata['help']}", width,
                           subsequent_indent="    ") for f in dataclass_fields(Options)]
    return textwrap.indent("\n".join(parts), " " * 8).lstrip()


if select.__doc__:  # None under python -OO
    select.__doc__ = select.__doc__.replace("{options}", options_doc())
